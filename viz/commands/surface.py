"""``landscape surface``: the loss surface (or a 1D line) of a checkpoint, with figures.

Writes ``surface.npz`` (the :class:`landscape.surface.Surface`, directions included) and its
figures (``contour.png``, ``contourf.png``, ``surface3d.html``) to ``--out``; with ``--line``
writes ``line.npz`` and ``line.png``. Work is flushed chunk by chunk; ``--resume`` continues
a killed run, ``--overwrite`` replaces a finished one (a rerun without either is refused, so a
finished surface is never replaced by accident). Under ``torchrun`` the grid is sharded over the
ranks (NCCL on GPUs, gloo on CPU). Nothing the run reads (checkpoints, ``--dirs``, data files)
is ever written over.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from landscape.errors import ArgumentError
from viz.cli import add_common, add_plane_options, check_outputs, input_files, load_checkpoint, parse_grid, parse_range

EPILOG = """examples:
  landscape surface trained_models/mlp-ce.safetensors --grid 51 --out runs/ce
  landscape surface trained_models/cnn-ce.safetensors --grid 41x21 --range -1 1 -0.5 0.5 --samples 200
  landscape surface trained_models/mlp-ce.safetensors --line --between \
trained_models/snapshots/mlp-ce/epoch005.safetensors
  landscape surface trained_models/mlp-ce.safetensors --out runs/ce --resume     # continue a killed run
  landscape surface trained_models/mlp-ce.safetensors --out runs/ce --overwrite  # compute it again
  torchrun --nproc_per_node 2 -m viz.cli surface trained_models/resnet-ce.safetensors --grid 51
"""


def register(sub) -> None:
    p = sub.add_parser("surface", help="loss surface / 1D line of a checkpoint, with contour and 3D figures",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plane_options(p, grid="51", chunk_size=64)
    p.add_argument("--line", action="store_true", help="a 1D line instead of a plane")
    p.add_argument("--between", nargs="+", metavar="CKPT",
                   help="directions through these checkpoints (1 for a line, 2 for a plane) instead of random ones")
    p.add_argument("--dirs", metavar="FILE.npz", help="directions saved earlier (Directions.save or a surface file)")
    p.add_argument("--norm", default="filter", choices=("filter", "layer", "weight", "none"),
                   help="normalisation of random directions (default: filter)")
    p.add_argument("--keep-biasbn", action="store_true", help="do not zero the directions of biases and batchnorm")
    p.add_argument("--ce", action="store_true", help="also compute plain cross-entropy beside the training loss")
    p.add_argument("--log", action="store_true", help="log colour scale in the figures")
    add_common(p, out="runs/surface")
    p.set_defaults(func=run)

# the figures each kind of run writes (stems: each writes <stem>.png or .html and <stem>.json)
FIGURES = {False: ("contour", "contourf", "surface3d"), True: ("line",)}


def _directions(args, ck, n: int):
    import landscape as ls
    from landscape.directions import Directions, directions_between

    if sum(x is not None for x in (args.between, args.dirs)) > 1:
        raise ArgumentError("give either --between or --dirs, not both.")
    if args.between:
        if len(args.between) != n:
            raise ArgumentError(f"--between needs {n} checkpoint{'s' if n > 1 else ''} "
                                f"for a {'line' if n == 1 else 'plane'}.")
        return directions_between(ck, *[load_checkpoint(args, p, "cpu") for p in args.between])
    if args.dirs:
        from landscape.results import Result

        obj = Result.load(args.dirs)
        dirs = obj if isinstance(obj, Directions) else getattr(obj, "dirs", None)
        if dirs is None:
            raise ArgumentError(f"{args.dirs} holds a {type(obj).__name__}, which carries no directions.")
        if dirs.n < n:
            raise ArgumentError(f"{args.dirs} holds {dirs.n} direction(s); {n} are needed.")
        return dirs
    return ls.random_directions(ck.model, n=n, seed=args.seed, norm=args.norm,
                                ignore=None if args.keep_biasbn else "biasbn")


def run(args) -> int:
    import landscape as ls
    from landscape.distributed import init_distributed
    from landscape.surface import interpolate, surface

    rank, _, device = init_distributed(args.device)
    nx, ny = parse_grid(args.grid, args.line, plots=not args.no_plots)
    xr, yr = parse_range(args.range, args.line)
    out = Path(args.out)
    target = out / ("line.npz" if args.line else "surface.npz")
    check_outputs(out, [target.name, *FIGURES[args.line]], input_files(args))
    ck = load_checkpoint(args, args.checkpoint, device)
    data = ls.load_dataset(args.data, split=args.split).subset(args.subset, seed=args.seed)
    common = dict(seed=args.seed, with_ce=args.ce, batch_size=args.batch_size, resume=args.resume,
                  chunk_size=args.chunk_size, verbose=False if args.quiet else None)
    dirs = _directions(args, ck, 1 if args.line else 2)
    if args.line:
        result = interpolate(ck, dirs, data, t=(xr[0], xr[1], nx), out=target, **common)
    else:
        result = surface(ck, data, dirs, x=(*xr, nx), y=(*yr, ny), out=target, **common)
    if rank != 0:
        return 0
    written = [target]
    if not args.no_plots:
        written += _figures(result, out, args.line, args.log)
    if not args.quiet:
        # meta["centre"] is the checkpoint itself (coordinates 0), whether or not the grid contains it
        centre, threads = result.meta["centre"], result.meta.get("threads")
        print(f"{ck.name}: {'line' if args.line else 'surface'} of {len(data)} samples on {threads} CPU "
              f"thread{'' if threads == 1 else 's'}; at the centre loss {centre['loss']:.4g}, "
              f"accuracy {centre['accuracy']:.4g}")
        for path in written:
            print(f"  wrote {path}")
    return 0


def _figures(result, out: Path, line: bool, log: bool) -> list[Path]:
    from viz import surface as vs

    plots = {"line": vs.curve(result, log=log)} if line else {
        "contour": vs.contour(result, log=log), "contourf": vs.contourf(result, log=log),
        "surface3d": vs.surface3d(result, interactive=True, log=log)}
    written = []
    for name, plot in plots.items():
        written += plot.save(out / name)
        plot.close()
    return written
