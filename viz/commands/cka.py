"""``landscape cka A [B]``: layer-by-layer centred kernel alignment (Kornblith et al. 2019) of two checkpoints.

Every layer of A (rows) is compared with every layer of B (columns) on the same examples;
without B, A is compared with itself. The default layers are each model's linear and
convolution layers, activations and blocks (``landscape.cka.default_layers``); name others with
``--layers`` / ``--layers-b``. ``--minibatch N`` uses the minibatch estimator (unbiased HSIC
accumulated over batches of N, Nguyen et al. 2021), which never forms an n x n matrix.
Written to ``--out``: ``cka.npz`` (``ls.CKAMatrix.load``), ``cka.png`` / ``cka.json`` (the heat map
and its values) and ``cka.md`` (the matrix as a table).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from landscape.io import atomic_path
from viz.cli import (add_common, check_outputs, data_spec, float_arg, input_files, int_arg, load_checkpoint,
                     stamp_threads)

EPILOG = """examples:
  landscape cka trained_models/mlp-ce.safetensors trained_models/mlp-mam-softmax.safetensors
  landscape cka trained_models/resnet-ce.safetensors trained_models/plain-ce.safetensors --kernel rbf
  landscape cka trained_models/cnn-ce.safetensors --layers body.relu1 body.relu2 body.relu3 head
  landscape cka A.safetensors B.safetensors --data cifar10:data/cifar --minibatch 512 --subset 10000
"""


def register(sub) -> None:
    p = sub.add_parser("cka", help="layer-by-layer CKA similarity of two checkpoints (or of one with itself)",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint A (rows) and optionally B (columns)")
    p.add_argument("--layers", nargs="+", default=None, metavar="NAME", help="layers of A (default: its main layers)")
    p.add_argument("--layers-b", nargs="+", default=None, metavar="NAME",
                   help="layers of B (default: its main layers; --layers when A is compared with itself)")
    p.add_argument("--kernel", default="linear", choices=("linear", "rbf"), help="kernel (default: linear)")
    p.add_argument("--threshold", type=float_arg("--threshold", min=0, include_min=False), default=0.5,
                   help="RBF bandwidth as a fraction of the median distance (default: 0.5)")
    p.add_argument("--debiased", action="store_true", help="unbiased HSIC (Song et al. 2012) for the full estimator")
    p.add_argument("--minibatch", type=int_arg("--minibatch", min=4), default=None, metavar="N",
                   help="minibatch estimator with batches of N examples (always debiased)")
    p.add_argument("--data", default=None, help="dataset spec (default: the one in A's meta, else digits)")
    p.add_argument("--split", default="test", choices=("train", "test"), help="data split (default: test)")
    p.add_argument("--subset", "--samples", dest="subset", type=int_arg("--subset", min=4), default=None,
                   help="use a seeded, stratified subset of this many examples")
    p.add_argument("--batch-size", type=int_arg("--batch-size", min=1), default=512,
                   help="forward batch size of the full estimator (default: 512)")
    p.add_argument("--arch", default=None, help="architecture, for bare state_dicts without meta")
    p.add_argument("--no-plots", action="store_true", help="write only the result file and the table")
    add_common(p, out="runs/cka")
    p.set_defaults(func=run)


def run(args) -> int:
    import landscape as ls
    from landscape.cka import cka_matrix
    from landscape.errors import ArgumentError

    if len(args.checkpoints) > 2:
        raise ArgumentError(f"cka compares two checkpoints (or one with itself), got {len(args.checkpoints)}; "
                            "run it once per pair.")
    out = Path(args.out)
    check_outputs(out, ["cka"], input_files(args))
    a = load_checkpoint(args, args.checkpoints[0])
    b = load_checkpoint(args, args.checkpoints[1]) if len(args.checkpoints) == 2 else None
    data = ls.load_dataset(data_spec(args, a), split=args.split)
    cm = stamp_threads(cka_matrix(a, b, data, layers=args.layers, layers_b=args.layers_b, kernel=args.kernel,
                                  threshold=args.threshold, debiased=True if args.debiased else None,
                                  minibatch=args.minibatch, batch_size=args.batch_size, subset=args.subset,
                                  seed=args.seed, verbose=not args.quiet and None))
    written = [cm.save(out / "cka.npz")]
    table = to_markdown(cm)
    with atomic_path(out / "cka.md") as tmp:
        tmp.write_text(table + "\n")
    written.append(out / "cka.md")
    if not args.no_plots:
        from viz.geometry import cka_heatmap

        written += cka_heatmap(cm).save(out / "cka", close=True)
    if not args.quiet:
        print(table)
        print(f"wrote {len(written)} files to {out}")
    return 0


def to_markdown(cm, digits: int = 3) -> str:
    """The matrix as a Markdown table: A's layers down, B's across."""
    head = f"| {cm.meta.get('checkpoint_a')} \\ {cm.meta.get('checkpoint_b')} | " + " | ".join(cm.layers_b) + " |"
    rule = "|---" * (len(cm.layers_b) + 1) + "|"
    rows = [f"| {name} | " + " | ".join(f"{v:.{digits}f}" for v in row) + " |"
            for name, row in zip(cm.layers_a, cm.values)]
    return "\n".join([head, rule, *rows])
