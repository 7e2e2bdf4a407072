"""``landscape connect A B``: mode connectivity of two checkpoints, the straight line and a trained low-loss curve.

Writes to ``--out``: ``barrier.npz`` (``ls.Barrier.load``: loss and accuracy on the line, train and
test, and its barriers), ``curve.npz`` (``ls.LowLossCurve.load``: the trained bends, the training
log and the curve's values at ``--points`` points), ``plane.npz`` (the training loss over the plane
through A, B and the middle bend; ``--no-plane`` skips it) and the figures ``connectivity.png``
(loss and error along line and curve) and ``plane.png``, each with the JSON of its values.
Batchnorm statistics are re-estimated at every point on the training data (``--bn recompute``,
as Garipov et al.), or interpolated with the weights (``--bn interpolate``).

The curve's training state is saved after every epoch (``curve.npz.train.safetensors``), so a
killed run loses at most one epoch: ``--resume`` continues it, and every finished part is kept.
``--epochs 0`` computes the line only.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from viz.cli import add_common, check_outputs, data_spec, float_arg, input_files, int_arg, load_checkpoint

EPILOG = """examples:
  landscape connect trained_models/mlp-ce.safetensors trained_models/mlp-ce-seed1.safetensors --epochs 20
  landscape connect trained_models/mlp-ce.safetensors trained_models/mlp-mam-softmax.safetensors \
--curve polychain --bends 3
  landscape connect A.safetensors B.safetensors --out runs/connect --resume     # continue a killed run
"""

OUTPUTS = ("barrier.npz", "curve.npz", "plane.npz", "curve.npz.train.safetensors", "connectivity", "plane")


def register(sub) -> None:
    p = sub.add_parser("connect", help="barrier on the line between two checkpoints and a trained low-loss curve",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs=2, metavar="CKPT", help="checkpoint A (t = 0) and checkpoint B (t = 1)")
    p.add_argument("--curve", default="bezier", choices=("bezier", "polychain"), help="curve family (default: bezier)")
    p.add_argument("--bends", type=int_arg("--bends", min=1), default=1, help="trainable bends (default: 1)")
    p.add_argument("--epochs", type=int_arg("--epochs", min=0), default=20,
                   help="epochs of curve training (default: 20; 0: the line only)")
    p.add_argument("--lr", type=float_arg("--lr", min=0, include_min=False), default=None,
                   help="learning rate (default: A's recipe, else 0.015)")
    p.add_argument("--weight-decay", type=float_arg("--weight-decay", min=0), default=None,
                   help="l2 weight at the curve point (default: A's recipe, else 5e-4)")
    p.add_argument("--batch-size", type=int_arg("--batch-size", min=2), default=None,
                   help="training batch size (default: A's recipe, else 128)")
    p.add_argument("--points", type=int_arg("--points", min=2), default=61,
                   help="evaluation points on [0, 1] (default: 61)")
    p.add_argument("--bn", default="recompute", choices=("recompute", "interpolate"),
                   help="batchnorm statistics at each point (default: recompute on the training data)")
    p.add_argument("--grid", type=int_arg("--grid", min=2, max=1001), default=21,
                   help="points per axis of the plane (default: 21)")
    p.add_argument("--no-plane", action="store_true", help="skip the plane through the endpoints and the middle bend")
    p.add_argument("--data", default=None, help="dataset spec (default: the one in A's meta, else digits); its train "
                                                 "split trains the curve, its test split is evaluated too")
    p.add_argument("--subset", "--samples", dest="subset", type=int_arg("--subset", min=2), default=None,
                   help="use seeded, stratified subsets of this many samples of each split")
    p.add_argument("--arch", default=None, help="architecture, for bare state_dicts without meta")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in the same --out")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    p.add_argument("--no-plots", action="store_true", help="write only the result files")
    add_common(p, out="runs/connect")
    p.set_defaults(func=run)


def _finished(path: Path, resume: bool, cls):
    """A finished part of an interrupted run, loaded for --resume (None: compute it)."""
    from landscape import grid

    return cls.load(path) if resume and grid.finished(path) else None


def run(args) -> int:
    from landscape import connectivity as cn

    out = Path(args.out)
    check_outputs(out, OUTPUTS, input_files(args))
    a = load_checkpoint(args, args.checkpoints[0])
    b = load_checkpoint(args, args.checkpoints[1])
    data = data_spec(args, a)
    verbose = False if args.quiet else None
    common = dict(subset=args.subset, seed=args.seed, n=args.points, bn=args.bn, resume=args.resume, verbose=verbose)
    line = _finished(out / "barrier.npz", args.resume, cn.Barrier) or cn.barrier(a, b, data, out=out / "barrier.npz",
                                                                                 **common)
    curve = surf = None
    if args.epochs:
        curve = _finished(out / "curve.npz", args.resume, cn.LowLossCurve) or cn.connect(
            a, b, data, curve=args.curve, bends=args.bends, epochs=args.epochs, lr=args.lr,
            weight_decay=args.weight_decay, batch_size=args.batch_size, out=out / "curve.npz", **common)
        if not args.no_plane:
            surf = cn.curve_plane(a, curve, data, grid=args.grid, subset=args.subset, seed=args.seed,
                                  out=out / "plane.npz", resume=args.resume, verbose=verbose)
    written = [out / "barrier.npz"] + ([out / "curve.npz"] if curve is not None else []) + (
        [out / "plane.npz"] if surf is not None else [])
    if not args.no_plots:
        from viz import connectivity as vc

        plots = {"connectivity": vc.paths(line, curve)}
        if surf is not None:
            plots["plane"] = vc.plane(surf)
        for name, plot in plots.items():
            written += plot.save(out / name, close=True)
    if not args.quiet:
        for what, result in (("line", line), ("curve", curve)):
            if result is None:
                continue
            parts = [f"{s}: barrier {result.barrier(s):.4g} (loss), {100 * result.barrier(s, 'error'):.3g}% (error)"
                     for s in result.splits]
            print(f"{a.name} -> {b.name}, {what}: " + "; ".join(parts))
        for path in written:
            print(f"  wrote {path}")
    return 0
