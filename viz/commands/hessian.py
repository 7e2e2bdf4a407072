"""``landscape hessian``: Hessian eigenvalue-ratio map of a checkpoint (seed 002 Fig. 4.5), with figures.

Computes ``lambda_min``, ``lambda_max`` and ``|lambda_min / lambda_max|`` by Lanczos at every point
of a plane through the weights (random filter-normalised directions, biases and batchnorm zeroed,
as for ``landscape surface`` with the same --seed), and the loss surface of the same plane for
the contour. Writes ``eigenmap.npz``, ``surface.npz`` and ``eigen_ratio.png``/``.json`` to --out;
with --density also the SLQ spectral density (``density.npz``, ``density.png``) and a Hutchinson
trace (``trace.json``) at the centre. Work is flushed chunk by chunk; --resume continues a killed
run. Under torchrun the grid is sharded over the ranks.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from viz.cli import add_common, add_plane_options, load_checkpoint, parse_grid, parse_range

EPILOG = """examples:
  landscape hessian trained_models/mlp-ce.safetensors --grid 11 --out runs/hessian-ce
  landscape hessian trained_models/cnn-ce.safetensors --grid 9 --range -0.5 0.5 --subset 200
  landscape hessian trained_models/mlp-ce.safetensors --grid 1 --density     # centre only, plus density
  landscape hessian trained_models/mlp-ce.safetensors --out runs/hessian-ce --resume
  torchrun --nproc_per_node 2 -m viz.cli hessian trained_models/resnet-ce.safetensors --grid 11
"""


def register(sub) -> None:
    p = sub.add_parser("hessian", help="Hessian eigenvalue-ratio map (Lanczos), trace and spectral density",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plane_options(p, grid="11", chunk_size=16)
    p.add_argument("--params", default="all", choices=("all", "matrices"),
                   help="Hessian over all parameters or only weight matrices/kernels (Li et al.) (default: all)")
    p.add_argument("--tol", type=float, default=1e-3,
                   help="stop when both Ritz residuals are below TOL x spectral radius (default: 1e-3)")
    p.add_argument("--max-iter", type=int, default=100, help="Lanczos steps per point at most (default: 100)")
    p.add_argument("--float64", action="store_true", help="compute in float64 (slower, reference accuracy)")
    p.add_argument("--contour-grid", type=int, default=41,
                   help="points per axis of the loss surface drawn as the contour; 0 uses the map's own "
                        "grid (default: 41)")
    p.add_argument("--density", action="store_true",
                   help="also the spectral density (SLQ) and Hutchinson trace at the centre")
    p.add_argument("--probes", type=int, default=4, help="SLQ probes with --density (default: 4)")
    add_common(p, out="runs/hessian")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    import landscape as ls
    from landscape.distributed import init_distributed

    rank, _, device = init_distributed(args.device)
    nx, ny = parse_grid(args.grid, False)
    xr, yr = parse_range(args.range, False)
    ck = load_checkpoint(args, args.checkpoint, device)
    data = ls.load_dataset(args.data, split=args.split).subset(args.subset, seed=args.seed)
    out = Path(args.out)
    progress = False if args.quiet else None
    dtype = torch.float64 if args.float64 else torch.float32
    dirs = ls.random_directions(ck.model, n=2, seed=args.seed)
    emap = ls.eigen_ratio_map(ck, data, dirs, x=(*xr, nx), y=(*yr, ny), seed=args.seed, params=args.params,
                              dtype=dtype, batch_size=args.batch_size, tol=args.tol, max_iter=args.max_iter,
                              out=out / "eigenmap.npz", resume=args.resume, chunk_size=args.chunk_size,
                              progress=progress)
    surf = None
    if args.contour_grid > 0:
        surf = ls.surface(ck, data, dirs, x=(*xr, args.contour_grid), y=(*yr, args.contour_grid), seed=args.seed,
                          out=out / "surface.npz", resume=args.resume, progress=progress)
    if rank != 0:
        return 0
    written = [out / "eigenmap.npz"] + ([out / "surface.npz"] if surf is not None else [])
    if args.density:
        written += _density(ck, data, args, dtype, out)
    if not args.no_plots:
        from viz.hessian import eigen_ratio

        plot = eigen_ratio(emap, surf)
        written += plot.save(out / "eigen_ratio")
        plot.close()
    if not args.quiet:
        j, i = len(emap.y) // 2, len(emap.x) // 2
        print(f"{ck.name}: {nx} x {ny} Hessian map on {len(data)} samples; at the grid centre lambda_min "
              f"{emap.lam_min[j, i]:.4g}, lambda_max {emap.lam_max[j, i]:.4g}, ratio {emap.ratio[j, i]:.4g}; "
              f"{emap.hvps.mean():.1f} HVPs per point, {int((~emap.converged).sum())} unconverged")
        for path in written:
            print(f"  wrote {path}")
    return 0


def _density(ck, data, args, dtype, out: Path) -> list[Path]:
    import landscape as ls
    from landscape.io import write_json

    dens = ls.spectral_density(ck, data, n_probes=args.probes, seed=args.seed, params=args.params, dtype=dtype,
                               batch_size=args.batch_size)
    trace = ls.hessian_trace(ck, data, seed=args.seed, params=args.params, dtype=dtype, batch_size=args.batch_size)
    written = [dens.save(out / "density.npz"),
               write_json(out / "trace.json", {"trace": trace.trace, "stderr": trace.stderr,
                                               "n_probes": trace.n_probes, "checkpoint": ck.name,
                                               "samples": len(data), "params": args.params, "seed": args.seed})]
    if not args.no_plots:
        from viz.hessian import spectral_density

        plot = spectral_density(dens)
        written += plot.save(out / "density")
        plot.close()
    if not args.quiet:
        print(f"{ck.name}: Hessian trace {trace.trace:.4g} +- {trace.stderr:.2g} (Hutchinson, {trace.n_probes} probes)")
    return written
