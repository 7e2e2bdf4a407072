"""``landscape hessian``: Hessian eigenvalue-ratio map of a checkpoint (seed 002 Fig. 4.5), with figures.

Computes ``lambda_min``, ``lambda_max`` and ``|lambda_min / lambda_max|`` by Lanczos at every point
of a plane through the weights (random filter-normalised directions, biases and batchnorm zeroed,
as for ``landscape surface`` with the same --seed), and the loss surface of the same plane for
the contour. Writes ``eigenmap.npz``, ``surface.npz`` and ``eigen_ratio.png``/``.json`` to --out;
with --density also the SLQ spectral density (``density.npz``, ``density.png``) and a Hutchinson
trace (``trace.npz``) at the centre; with --layers the per-layer spectra (``layers.npz``,
``layers.png``, ``layers-table.png``); with --eigvecs the Hessian's extreme eigenvectors
``(v_max, v_min)`` as directions (``eigvecs.npz``, for ``landscape surface --dirs``).

The values printed are those at the plane's centre (0, 0), computed there when the grid does not
contain it. Work is flushed chunk by chunk; --resume continues a killed run, reusing every stage
that had finished. A finished run is never overwritten without --overwrite. Under torchrun the
grid is sharded over the ranks.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from landscape.errors import OutputError, check_scalar
from viz.cli import add_common, add_plane_options, load_checkpoint, parse_grid, parse_range

EPILOG = """examples:
  landscape hessian trained_models/mlp-ce.safetensors --grid 11 --out runs/hessian-ce
  landscape hessian trained_models/cnn-ce.safetensors --grid 9 --range -0.5 0.5 --subset 200
  landscape hessian trained_models/mlp-ce.safetensors --grid 1 --density     # centre only, plus density
  landscape hessian trained_models/mlp-ce.safetensors --grid 1 --contour-grid 0 --layers --eigvecs
  landscape hessian trained_models/mlp-ce.safetensors --out runs/hessian-ce --resume
  torchrun --nproc_per_node 2 -m viz.cli hessian trained_models/resnet-ce.safetensors --grid 11
"""

# what each stage writes (a rerun without --resume or --overwrite must not replace any of them)
OUTPUTS = {"map": "eigenmap.npz", "surface": "surface.npz", "density": "density.npz", "trace": "trace.npz",
           "layers": "layers.npz", "eigvecs": "eigvecs.npz"}


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
    p.add_argument("--layers", action="store_true",
                   help="also the per-layer spectra at the centre (extremes, trace, density of each layer's block)")
    p.add_argument("--eigvecs", action="store_true",
                   help="also save the extreme eigenvectors (v_max, v_min) at the centre as directions")
    if not any("--overwrite" in a.option_strings for a in p._actions):  # the shared options may provide it
        p.add_argument("--overwrite", action="store_true", help="replace the results of a finished run in --out")
    add_common(p, out="runs/hessian")
    p.set_defaults(func=run)


def _check(args) -> None:
    """The command's own options, checked before any work (one line, exit 2)."""
    check_scalar(args.max_iter, "--max-iter", int, min=1)
    check_scalar(args.tol, "--tol", float, min=0, max=1, include_min=False, include_max=False)
    check_scalar(args.probes, "--probes", int, min=1)
    check_scalar(args.contour_grid, "--contour-grid", int, min=0)
    check_scalar(args.chunk_size, "--chunk-size", int, min=1)
    check_scalar(args.subset, "--subset", int, min=1, allow_none=True)
    check_scalar(args.batch_size, "--batch-size", int, min=1, allow_none=True)


def _stages(args) -> list[str]:
    return (["map"] + (["surface"] if args.contour_grid > 0 else []) + (["density", "trace"] if args.density else [])
            + (["layers"] if args.layers else []) + (["eigvecs"] if args.eigvecs else []))


def _refuse_overwrite(out: Path, stages: list[str], args) -> None:
    """A rerun into a finished --out needs --resume (reuse) or --overwrite (replace); say so before any work."""
    if args.resume or getattr(args, "overwrite", False):
        return
    done = [OUTPUTS[s] for s in stages if (out / OUTPUTS[s]).exists()]
    if done:
        raise OutputError(f"{out} holds results of a finished run ({', '.join(done)}); pass --resume to reuse them or "
                          "--overwrite to compute them again.")


def _stage(path: Path, args, fingerprint: dict, compute, what: str):
    """A stage's result: under --resume the finished one at ``path`` when it has the same inputs, else computed.

    The resume rule is :func:`landscape.grid.reuse_finished`, the one of surfaces and maps; a
    computed result records the digest of ``fingerprint`` in its meta and is saved at ``path``.
    """
    from landscape import grid
    from landscape.results import Result

    done = grid.reuse_finished(path, fingerprint, Result.load, resume=args.resume,
                               overwrite=getattr(args, "overwrite", False), what=what)
    if done is not None:
        return done
    result = compute()
    result.meta["fingerprint"] = grid.fingerprint_digest(fingerprint)
    result.save(path)
    return result


def run(args) -> int:
    import torch

    import landscape as ls
    from landscape.distributed import init_distributed

    _check(args)
    rank, _, device = init_distributed(args.device)
    nx, ny = parse_grid(args.grid, False)
    xr, yr = parse_range(args.range, False)
    out = Path(args.out)
    stages = _stages(args)
    _refuse_overwrite(out, stages, args)
    ck = load_checkpoint(args, args.checkpoint, device)
    data = ls.load_dataset(args.data, split=args.split).subset(args.subset, seed=args.seed)
    verbose = False if args.quiet else None
    dtype = torch.float64 if args.float64 else torch.float32
    dirs = ls.random_directions(ck.model, n=2, seed=args.seed)
    overwrite = getattr(args, "overwrite", False)
    emap = ls.eigen_ratio_map(ck, data, dirs, x=(*xr, nx), y=(*yr, ny), seed=args.seed, params=args.params,
                              dtype=dtype, batch_size=args.batch_size, tol=args.tol, max_iter=args.max_iter,
                              out=out / OUTPUTS["map"], resume=args.resume, overwrite=overwrite,
                              chunk_size=args.chunk_size, verbose=verbose)
    surf = None
    if "surface" in stages:  # a finished contour surface of the same inputs is reused under --resume
        gx, gy = (*xr, args.contour_grid), (*yr, args.contour_grid)
        surf = ls.surface(ck, data, dirs, x=gx, y=gy, seed=args.seed, out=out / OUTPUTS["surface"],
                          resume=args.resume, overwrite=overwrite, verbose=verbose)
    if rank != 0:
        return 0
    written = [out / OUTPUTS[s] for s in ("map", "surface") if s in stages]
    options = _inputs(ck, data, args, dtype)
    if args.density:
        written += _density(ck, data, args, dtype, out, options)
    if args.layers:
        written += _layers(ck, data, args, dtype, out, options)
    if args.eigvecs:
        written += _eigvecs(ck, data, args, dtype, out, options)
    if not args.no_plots:
        from viz.hessian import eigen_ratio

        written += eigen_ratio(emap, surf).save(out / "eigen_ratio", close=True)
    if not args.quiet:
        _summary(ck, data, emap, nx, ny)
        for path in written:
            print(f"  wrote {path}")
    return 0


def _summary(ck, data, emap, nx: int, ny: int) -> None:
    c = emap.centre
    where = "a grid point" if c["on_grid"] else "computed there"
    bad = emap.meta.get("non_finite", 0)
    print(f"{ck.name}: {nx} x {ny} Hessian map on {len(data)} samples; at the centre (0, 0) ({where}) lambda_min "
          f"{c['lam_min']:.4g}, lambda_max {c['lam_max']:.4g}, ratio {c['ratio']:.4g}; {emap.hvps.mean():.1f} HVPs per "
          f"point, {int((~emap.converged).sum())} unconverged" + (f", {bad} non-finite (NaN)" if bad else ""))


def _inputs(ck, data, args, dtype) -> dict:
    """What the centre stages (density, trace, layers, eigenvectors) are computed from: their fingerprint."""
    import torch

    from landscape.grid import array_digest

    return {"checkpoint": ck.digest, "data": data.name, "n": len(data), "labels": array_digest(data.y),
            "seed": args.seed, "dtype": str(dtype).replace("torch.", ""), "params": args.params,
            "batch_size": args.batch_size, "device": ck.device.type,
            "threads": torch.get_num_threads() if ck.device.type == "cpu" else None}


def _density(ck, data, args, dtype, out: Path, options: dict) -> list[Path]:
    import landscape as ls

    common = dict(seed=args.seed, params=args.params, dtype=dtype, batch_size=args.batch_size)
    dens = _stage(out / OUTPUTS["density"], args, {**options, "stage": "density", "n_probes": args.probes},
                  lambda: ls.spectral_density(ck, data, n_probes=args.probes, **common), "spectral density")
    trace = _stage(out / OUTPUTS["trace"], args, {**options, "stage": "trace"},
                   lambda: ls.hessian_trace(ck, data, **common), "trace")
    written = [out / OUTPUTS["density"], out / OUTPUTS["trace"]]
    if not args.no_plots:
        from viz.hessian import spectral_density

        written += spectral_density(dens).save(out / "density", close=True)
    if not args.quiet:
        lo, hi = trace.interval
        print(f"{ck.name}: Hessian trace {trace.trace:.4g} +- {trace.stderr:.2g} (95% interval [{lo:.4g}, {hi:.4g}], "
              f"Hutchinson, {trace.n_probes} probes)")
    return written


def _layers(ck, data, args, dtype, out: Path, options: dict) -> list[Path]:
    import landscape as ls

    spectra = _stage(out / OUTPUTS["layers"], args,
                     {**options, "stage": "layers", "tol": args.tol, "max_iter": args.max_iter},
                     lambda: ls.layer_spectra(ck, data, seed=args.seed, dtype=dtype, batch_size=args.batch_size,
                                              tol=args.tol, max_iter=args.max_iter,
                                              verbose=False if args.quiet else None), "layer spectra")
    written = [out / OUTPUTS["layers"]]
    if not args.no_plots:
        from viz.hessian import layer_spectra, layer_table

        for name, plot in (("layers", layer_spectra(spectra)), ("layers-table", layer_table(spectra))):
            written += plot.save(out / name, close=True)
    if not args.quiet:
        for row in spectra.table():
            print(f"  {row['group']:<24} {row['size']:>8} parameters: lambda_min {row['lam_min']:.4g}, lambda_max "
                  f"{row['lam_max']:.4g}, trace {row['trace']:.4g} +- {row['trace_stderr']:.2g}")
    return written


def _eigvecs(ck, data, args, dtype, out: Path, options: dict) -> list[Path]:
    import landscape as ls

    dirs = _stage(out / OUTPUTS["eigvecs"], args, {**options, "stage": "eigvecs", "tol": args.tol},
                  lambda: ls.hessian_directions(ck, data, k=2, which="BE", seed=args.seed, params=args.params,
                                                dtype=dtype, batch_size=args.batch_size, tol=args.tol),
                  "eigenvector directions")
    if not args.quiet:
        lam = dirs.meta["eigenvalues"]
        print(f"{ck.name}: eigenvectors v_max (lambda {lam[0]:.4g}) and v_min (lambda {lam[1]:.4g}) saved; draw the "
              f"loss along them with `landscape surface {args.checkpoint} --dirs {out / OUTPUTS['eigvecs']}`")
    return [out / OUTPUTS["eigvecs"]]
