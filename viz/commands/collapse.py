"""``landscape collapse RUN [RUN ...]``: neural collapse (Papyan, Han & Donoho 2020) across training.

Each RUN is a folder of training snapshots (one curve: every metric against epoch) or a single
checkpoint file (one point). The features are the penultimate ones (or ``--layer``) on the
training split by default, as Papyan et al. measured; the classifier is each checkpoint's head.
Written to ``--out``: ``<name>-collapse.npz`` per run (``ls.CollapseCurve.load``), the curves
``collapse.png`` / ``collapse.json`` (log scale, one line per run), and ``collapse.md`` with the
metrics of every run's last snapshot.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from landscape.io import atomic_path
from viz.cli import add_common, check_outputs, data_spec, input_files, int_arg, load_checkpoint, stamp_threads

EPILOG = """examples:
  landscape collapse trained_models/snapshots/mlp-ce trained_models/snapshots/mlp-mam-softmax
  landscape collapse trained_models/snapshots/mlp-* --out runs/collapse
  landscape collapse trained_models/mlp-ce.safetensors trained_models/mlp-focal.safetensors --split test
  landscape collapse trained_models/snapshots/mlp-ce --layer body.3 --subset 500
"""
COLUMNS = ("accuracy", "nc1", "nc2_equinorm", "nc2_equiangular", "nc2_max_angle_gap", "nc3", "nc4")


def register(sub) -> None:
    p = sub.add_parser("collapse", help="neural-collapse metrics (NC1-NC4) against epoch, one line per run",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="snapshot folders (curves) or checkpoint files (points)")
    p.add_argument("--layer", default=None,
                   help="feature layer (default: the penultimate features, with the head as classifier)")
    p.add_argument("--data", default=None, help="dataset spec (default: the one in the checkpoints' meta, else digits)")
    p.add_argument("--split", default="train", choices=("train", "test"),
                   help="data split (default: train, where Papyan et al. measure collapse)")
    p.add_argument("--subset", "--samples", dest="subset", type=int_arg("--subset", min=1), default=None,
                   help="use a seeded, stratified subset of this many samples")
    p.add_argument("--batch-size", type=int_arg("--batch-size", min=1), default=4096,
                   help="samples per forward pass and per statistics batch (default: 4096)")
    p.add_argument("--linear", action="store_true", help="linear instead of log y axes")
    p.add_argument("--arch", default=None, help="architecture, for bare state_dicts without meta")
    p.add_argument("--no-plots", action="store_true", help="write only the result files and the table")
    add_common(p, out="runs/collapse")
    p.set_defaults(func=run)


def _runs(args) -> dict[str, list[Path]]:
    """Each RUN's checkpoint files by a unique name (the folder's name or the file's stem)."""
    from landscape.collapse import snapshot_paths
    from landscape.errors import ArgumentError

    runs: dict[str, list[Path]] = {}
    for item in map(Path, args.runs):
        if not item.exists():
            raise ArgumentError(f"{item} does not exist; give snapshot folders or checkpoint files.")
        paths = snapshot_paths(item) if item.is_dir() else [item]
        name, i = item.stem if item.is_file() else item.name, 2
        while name in runs:
            name, i = f"{item.name}-{i}", i + 1
        runs[name] = paths
    return runs


def run(args) -> int:
    import landscape as ls
    from landscape.collapse import collapse_curve

    out = Path(args.out)
    runs = _runs(args)
    inputs = [*input_files(args), *(p for paths in runs.values() for p in paths)]
    check_outputs(out, ["collapse", *(f"{name}-collapse" for name in runs)], inputs)
    first = load_checkpoint(args, next(iter(runs.values()))[0])
    data = ls.load_dataset(data_spec(args, first), split=args.split).subset(args.subset, seed=args.seed)
    curves, written = {}, []
    for name, paths in runs.items():
        cks = [load_checkpoint(args, p) for p in paths]
        curves[name] = stamp_threads(collapse_curve(cks, data, layer=args.layer, name=name,
                                                    batch_size=args.batch_size, verbose=not args.quiet and None))
        written.append(curves[name].save(out / f"{name}-collapse.npz"))
    table = to_markdown(curves)
    with atomic_path(out / "collapse.md") as tmp:
        tmp.write_text(table + "\n")
    written.append(out / "collapse.md")
    if not args.no_plots:
        from viz.geometry import collapse_curves

        written += collapse_curves(curves, log=not args.linear).save(out / "collapse", close=True)
    if not args.quiet:
        print(table)
        print(f"wrote {len(written)} files to {out}")
    return 0


def to_markdown(curves: dict, digits: int = 4) -> str:
    """The metrics of every run's last snapshot as a Markdown table."""
    head = "| run | epoch | " + " | ".join(COLUMNS) + " |"
    rule = "|---" * (len(COLUMNS) + 2) + "|"
    rows = [f"| {name} | {int(c.epoch[-1])} | " + " | ".join(f"{c.metrics[k][-1]:.{digits}g}" for k in COLUMNS) + " |"
            for name, c in curves.items()]
    return "\n".join([head, rule, *rows])
