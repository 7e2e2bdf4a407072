"""``landscape sharpness CKPT [CKPT ...]``: the geometry card of each checkpoint and how its measures rank the gap.

Every measure of :mod:`landscape.sharpness` (or those named by ``--measures``) is computed on the
same seeded subset of the training split, with the same batchnorm treatment (``--bn``), beside
the train and test accuracy and loss. Written to ``--out``: ``<name>-card.npz`` per checkpoint
(``ls.GeometryCard.load``), ``sharpness.csv`` / ``sharpness.json`` / ``sharpness.md`` (the table
with Kendall's tau of each measure against the generalisation gap and its p-value), and the
figure ``sharpness.png`` (each measure against the gap, one point per checkpoint, tau in the title).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from landscape.io import atomic_path, write_json
from viz.cli import add_common, check_outputs, data_spec, float_arg, input_files, int_arg, load_checkpoint

EPILOG = """examples:
  landscape sharpness trained_models/mlp-ce.safetensors trained_models/mlp-mam-softmax.safetensors
  landscape sharpness trained_models/mlp-*.safetensors --measures adaptive-worst plain-worst pac-bayes
  landscape sharpness trained_models/cnn-ce.safetensors --bn recompute --subset 512 --out runs/sharpness
"""


def register(sub) -> None:
    from landscape.sharpness import CARD_MEASURES, MEASURES, PRESETS

    p = sub.add_parser("sharpness", help="geometry card per checkpoint: sharpness measures, accuracy, gap, Kendall tau",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint files (one card each)")
    p.add_argument("--measures", nargs="+", default=list(CARD_MEASURES), choices=(*MEASURES, *PRESETS),
                   metavar="MEASURE", help=f"measures and presets (default: {' '.join(CARD_MEASURES)})")
    p.add_argument("--data", default=None, help="dataset spec (default: the checkpoints' meta, else digits); its "
                   "train split feeds the measures, its test split the gap")
    p.add_argument("--subset", type=int_arg("--subset", min=1), default=1024,
                   help="seeded training examples the measures use (default: 1024)")
    p.add_argument("--eval-subset", type=int_arg("--eval-subset", min=1), default=None,
                   help="seeded examples of each split for the accuracies and losses (default: all)")
    p.add_argument("--batch-size", type=int_arg("--batch-size", min=1), default=None,
                   help="evaluation batch size of the accuracies and losses (default: all at once)")
    p.add_argument("--bn", default="eval", choices=("eval", "recompute"),
                   help="batchnorm at perturbed weights: stored statistics, or re-estimated on the train split")
    p.add_argument("--bn-subset", type=int_arg("--bn-subset", min=2), default=2048,
                   help="training samples per batchnorm re-estimate (default: 2048)")
    p.add_argument("--against", default="gap", choices=("gap", "loss_gap"),
                   help="rank against the accuracy gap (Jiang et al., default) or the loss gap")
    p.add_argument("--confidence", type=float_arg("--confidence", min=0, max=1, include_min=False), default=0.95,
                   help="level of the bootstrap intervals (default: 0.95)")
    p.add_argument("--arch", default=None, help="architecture, for bare state_dicts without meta")
    p.add_argument("--no-plots", action="store_true", help="write only the result files and the tables")
    add_common(p, out="runs/sharpness")
    p.set_defaults(func=run)


def _names(paths: list[Path]) -> list[str]:
    names, seen = [], {}
    for p in paths:
        seen[p.stem] = seen.get(p.stem, 0) + 1
        names.append(p.stem if seen[p.stem] == 1 else f"{p.stem}-{seen[p.stem]}")
    return names


def run(args) -> int:
    import landscape as ls

    out = Path(args.out)
    paths = [Path(p) for p in args.checkpoints]
    names = _names(paths)
    check_outputs(out, ["sharpness", *(f"{n}-card" for n in names)], input_files(args) + paths)
    cards, written = [], []
    for path, name in zip(paths, names):
        ck = load_checkpoint(args, path)
        card = ls.geometry_card(ck, data_spec(args, ck), measures=args.measures, seed=args.seed, subset=args.subset,
                                eval_subset=args.eval_subset, batch_size=args.batch_size, bn=args.bn,
                                bn_subset=args.bn_subset, confidence=args.confidence,
                                verbose=not args.quiet and None)
        cards.append(card)
        written.append(card.save(out / f"{name}-card.npz"))
    cmp = ls.compare_cards(cards, against=args.against)
    cmp.names = names  # rows named as the files are
    written.append(out / "sharpness.csv")
    cmp.to_csv(out / "sharpness.csv")
    table = cmp.to_markdown()
    with atomic_path(out / "sharpness.md") as tmp:
        tmp.write_text(table + "\n\n" + "\n\n".join(c.to_markdown() for c in cards) + "\n")
    written.append(out / "sharpness.md")
    write_json(out / "sharpness.json", {"names": names, "measures": cmp.measures, "values": cmp.values,
                                        "against": args.against, "gap": cmp.gap, "tau": cmp.tau,
                                        "p_value": cmp.p_value, "quantities": cmp.quantities,
                                        "cards": {n: {"values": c.values, "lower": c.lower, "upper": c.upper,
                                                      "details": c.details, "meta": c.meta}
                                                  for n, c in zip(names, cards)}})
    written.append(out / "sharpness.json")
    if not args.no_plots:
        from viz.sharpness import sharpness_vs_gap

        plot = sharpness_vs_gap(cmp)
        try:
            written += plot.save(out / "sharpness-gap")
        finally:
            plot.close()
    if not args.quiet:
        print(table)
        print(f"wrote {len(written)} files to {out}")
    return 0
