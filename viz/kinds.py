"""Figure kinds of the report builder: what each computes (through ``landscape``) and how it draws.

Each kind is a ``compute(ctx, opts) -> {key: Result}`` and a ``draw(results, opts, ctx)
-> {suffix: Plot}`` pair registered with :func:`viz.report.kind`. Compute options change
numbers and are part of the cache key; style options only change the drawing.
"""
from __future__ import annotations

import numpy as np

import landscape as ls
from landscape.directions import random_directions

from .embedding import embedding_grid, hypersphere_grid, stats_table
from .gradcam import gradcam_compare, gradcam_grid
from .hessian import eigen_ratio, spectral_density
from .phenotype import phenotype_curves, phenotype_difference, phenotype_surface
from .report import ITERATIVE, Context, kind
from .surface import compare, curve, surface3d, trajectory


def _grid(opts: dict, key: str = "grid") -> tuple:
    lo, hi = opts["range"]
    return (float(lo), float(hi), int(opts[key]))


def _surface(ctx: Context, name: str, opts: dict, grid_key: str = "grid") -> ls.Result:
    """The loss surface of model ``name`` on the spec's data (cached by digest, data, seed and grid)."""
    ck = ctx.checkpoint(name)
    g = _grid(opts, grid_key)
    inputs = {"ck": ck.digest, "data": ctx.data_spec, "seed": ctx.seed, "grid": g, "subset": opts.get("subset")}

    def compute():
        dirs = random_directions(ck.model, n=2, seed=ctx.seed)
        return ls.surface(ck, ctx.data("test"), dirs, x=g, y=g, subset=opts.get("subset"), seed=ctx.seed,
                          progress=not ctx.quiet and None)

    return ctx.cached("surface", inputs, compute)


# -- loss landscapes ------------------------------------------------------------------------
def _contour_compute(ctx, opts):
    return {m: _surface(ctx, m, opts) for m in opts["models"]}


def _contour_draw(results, opts, ctx):
    names = list(results)
    return {"": compare([results[m] for m in names], titles=names, log=opts["log"], n_levels=opts["n_levels"],
                        filled=opts["filled"])}


kind("contour", "Loss contours around the trained weights (filter-normalised random plane); filled = heat map",
     {"grid": 31, "range": [-1.0, 1.0], "subset": None},
     {"log": False, "n_levels": 20, "filled": False})((_contour_compute, _contour_draw))


def _surface3d_draw(results, opts, ctx):
    name = next(iter(results))
    surf = results[name]
    return {"": surface3d(surf, interactive=True, log=opts["log"]),
            "static": surface3d(surf, interactive=False, log=opts["log"])}


kind("surface3d", "3D loss surface (interactive and static)", {"grid": 31, "range": [-1.0, 1.0], "subset": None},
     {"log": False})((_contour_compute, _surface3d_draw))


def _interp_compute(ctx, opts):
    out = {}
    for m in opts["models"]:
        ck = ctx.checkpoint(m)
        lo, hi = opts["range"]
        inputs = {"ck": ck.digest, "data": ctx.data_spec, "seed": ctx.seed, "steps": opts["steps"], "range": [lo, hi]}
        out[m] = ctx.cached("curve", inputs, lambda ck=ck, lo=lo, hi=hi: ls.interpolate(
            ck, None, ctx.data("test"), steps=int(opts["steps"]), t=np.linspace(lo, hi, int(opts["steps"])),
            seed=ctx.seed, progress=False))
    return out


def _interp_draw(results, opts, ctx):
    return {m: curve(c, log=opts["log"], title=f"{m}: 1D interpolation") for m, c in results.items()}


kind("interpolation", "1D loss and accuracy along a filter-normalised random direction",
     {"steps": 51, "range": [-1.0, 1.0]}, {"log": False})((_interp_compute, _interp_draw))


def _trajectory_compute(ctx, opts):
    """PCA directions of the snapshots in ``opts["snapshots"]`` and the surface over the path's extent."""
    from landscape.directions import trajectory_directions

    name = opts["models"][0]
    ck = ctx.checkpoint(name)
    folder = ctx.root / opts["snapshots"]
    paths = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.pt"))
    if len(paths) < 2:
        from landscape.errors import SpecError

        raise SpecError(f"trajectory: {opts['snapshots']} holds {len(paths)} snapshots; it needs at least 2.")
    snaps = [ls.load_checkpoint(p, device="cpu", trust_code=ctx.trust_code) for p in paths]
    path = [s for s in snaps if s.digest != ck.digest] + [ck]  # the path ends at the centre
    base = {"ck": ck.digest, "snapshots": [s.digest for s in path]}
    dirs = ctx.cached("trajectory-dirs", base, lambda: trajectory_directions([s.model for s in path], n=2))
    lo, hi = dirs.coords.min(axis=0), dirs.coords.max(axis=0)
    pad = float(opts["pad"]) * (hi - lo)
    g = int(opts["grid"])
    xr, yr = (float(lo[0] - pad[0]), float(hi[0] + pad[0]), g), (float(lo[1] - pad[1]), float(hi[1] + pad[1]), g)
    surf = ctx.cached("trajectory-surface", {**base, "data": ctx.data_spec, "grid": g, "pad": opts["pad"]},
                      lambda: ls.surface(ck, ctx.data("test"), dirs, x=xr, y=yr, progress=not ctx.quiet and None))
    return {"dirs": dirs, "surface": surf}


def _trajectory_draw(results, opts, ctx):
    return {"": trajectory(results["surface"], results["dirs"].coords, log=opts["log"], n_levels=opts["n_levels"])}


kind("trajectory", "Training trajectory projected on its PCA directions, over the loss surface of that plane",
     {"snapshots": "trained_models/snapshots/mlp-ce", "grid": 31, "pad": 0.2},
     {"log": False, "n_levels": 20})((_trajectory_compute, _trajectory_draw))


# -- Hessian ------------------------------------------------------------------------------
def _eigen_compute(ctx, opts):
    out = {}
    for m in opts["models"]:
        ck = ctx.checkpoint(m)
        g = _grid(opts)
        inputs = {"ck": ck.digest, "data": ctx.data_spec, "seed": ctx.seed, "grid": g, "subset": opts["subset"],
                  "tol": opts["tol"]}

        def compute(ck=ck, g=g):
            dirs = random_directions(ck.model, n=2, seed=ctx.seed)
            return ls.eigen_ratio_map(ck, ctx.data("test"), dirs, x=g, y=g, subset=opts["subset"], seed=ctx.seed,
                                      tol=opts["tol"], progress=not ctx.quiet and None)

        out[f"{m}/eigen"] = ctx.cached("eigenmap", inputs, compute)
        out[f"{m}/surface"] = _surface(ctx, m, {**opts, "grid": opts["contour_grid"]})
    return out


def _eigen_draw(results, opts, ctx):
    plots = {}
    for m in opts["models"]:
        plots[m] = eigen_ratio(results[f"{m}/eigen"], results[f"{m}/surface"], title=f"{m}: Hessian eigenvalue ratio")
    return plots


kind("eigen_ratio", "Hessian eigenvalue-ratio |lambda_min/lambda_max| maps beside the loss contour",
     {"grid": 11, "range": [-1.0, 1.0], "subset": None, "tol": 1e-3, "contour_grid": 31}, {}, tolerance=ITERATIVE)(
    (_eigen_compute, _eigen_draw))


def _density_compute(ctx, opts):
    out = {}
    for m in opts["models"]:
        ck = ctx.checkpoint(m)
        inputs = {"ck": ck.digest, "data": ctx.data_spec, "seed": ctx.seed, "probes": opts["probes"],
                  "steps": opts["steps"], "subset": opts["subset"]}
        out[m] = ctx.cached("density", inputs, lambda ck=ck: ls.spectral_density(
            ck, ctx.data("test"), n_probes=int(opts["probes"]), steps=int(opts["steps"]), seed=ctx.seed,
            subset=opts["subset"]))
    return out


def _density_draw(results, opts, ctx):
    return {m: spectral_density(d, log=opts["log"], title=f"{m}: Hessian spectrum") for m, d in results.items()}


kind("spectral_density", "Hessian spectral density (stochastic Lanczos quadrature)",
     {"probes": 4, "steps": 60, "subset": None}, {"log": True}, tolerance=ITERATIVE)((_density_compute, _density_draw))


# -- feature geometry ---------------------------------------------------------------------
def _features(ctx, m, opts):
    ck = ctx.checkpoint(m)
    inputs = {"ck": ck.digest, "data": ctx.data_spec, "split": opts["split"], "layer": opts["layer"]}
    return ctx.cached("features", inputs, lambda: ls.extract_features(ck, ctx.data(opts["split"]), layer=opts["layer"]))


# t-SNE is chaotic: last-bit differences of the features between CPUs move points by whole units
# (measured: up to 9), so the coordinates are not pinned; the quality scores move by a point or two
# of 360 (k-NN accuracy 0.0028, trustworthiness 0.0008 measured) and the feature statistics not at all.
TSNE_TOLERANCE = {"rtol": 1e-4, "atol": 1e-6, "paths": {"panels.*.x": None, "panels.*.y": None,
                                                         "panels.*.knn_accuracy": {"atol": 0.015},
                                                         "panels.*.trustworthiness": {"atol": 0.004}}}


def _tsne_compute(ctx, opts):
    out = {}
    for m in opts["models"]:
        feat = _features(ctx, m, opts)
        inputs = {"ck": ctx.checkpoint(m).digest, "data": ctx.data_spec, "split": opts["split"],
                  "layer": opts["layer"], "seed": ctx.seed, "perplexity": opts["perplexity"]}
        out[m] = ctx.cached("tsne", inputs, lambda feat=feat: ls.tsne(feat, seed=ctx.seed,
                                                                     perplexity=float(opts["perplexity"])))
        out[f"{m}/features"] = feat
    return out


def _stats(results, opts):
    from landscape.embedding import compare_stats

    return compare_stats({m: results[f"{m}/features"] for m in opts["models"]})


def _tsne_draw(results, opts, ctx):
    table = _stats(results, opts)
    return {"": embedding_grid({m: results[m] for m in opts["models"]}, table=table,
                                    point_size=opts["point_size"])}


kind("tsne", "t-SNE maps of the penultimate features, with quality and angular statistics",
     {"split": "test", "layer": None, "perplexity": 30.0}, {"point_size": 8.0}, tolerance=TSNE_TOLERANCE)(
    (_tsne_compute, _tsne_draw))


def _sphere_compute(ctx, opts):
    out = {}
    for m in opts["models"]:
        feat = _features(ctx, m, opts)
        out[f"{m}/features"] = feat
        inputs = {"ck": ctx.checkpoint(m).digest, "data": ctx.data_spec, "split": opts["split"],
                  "layer": opts["layer"], "dim": opts["dim"], "projection": opts["projection"], "seed": ctx.seed}
        out[m] = ctx.cached("sphere", inputs, lambda feat=feat: ls.hypersphere(
            feat, dim=int(opts["dim"]), projection=opts["projection"], seed=ctx.seed))
    return out


def _sphere_draw(results, opts, ctx):
    spheres = {m: results[m] for m in opts["models"]}
    return {"": hypersphere_grid(spheres, interactive=False, table=True),
            "interactive": hypersphere_grid(spheres, interactive=True, table=False),
            "stats": stats_table(_stats(results, opts))}


kind("hypersphere", "Features on the unit sphere per class, with angular statistics",
     {"split": "test", "layer": None, "dim": 3, "projection": "auto"}, {})((_sphere_compute, _sphere_draw))


# -- loss phenotypes ----------------------------------------------------------------------
def _phenotype(ctx, loss, resolution):
    return ctx.cached("phenotype", {"loss": loss, "resolution": resolution},
                      lambda: ls.phenotype(loss, resolution=int(resolution)))


def _curves_compute(ctx, opts):
    return {loss: _phenotype(ctx, loss, opts["resolution"]) for loss in opts["losses"]}


def _curves_draw(results, opts, ctx):
    return {"": phenotype_curves(list(results.values()), reference=opts["reference"], title=opts["title"] or None)}


kind("phenotype_curves", "Binary phenotypes (y = 1) of loss functions, raw and normalised",
     {"losses": ["A2", "CE"], "resolution": 51}, {"reference": "auto", "title": ""},
     uses_models=False)((_curves_compute, _curves_draw))


def _surface_ph_compute(ctx, opts):
    return {"ph": _phenotype(ctx, opts["loss"], opts["resolution"])}


def _surface_ph_draw(results, opts, ctx):
    ph = results["ph"]
    return {"": phenotype_surface(ph, interactive=True, normalized=opts["normalized"]),
            "static": phenotype_surface(ph, interactive=False, normalized=opts["normalized"])}


kind("phenotype_surface", "3D phenotype of a loss over (y, yh)", {"loss": "A2", "resolution": 51},
     {"normalized": False}, uses_models=False)((_surface_ph_compute, _surface_ph_draw))


def _diff_compute(ctx, opts):
    key = {"a": opts["a"], "b": opts["b"], "resolution": opts["resolution"]}
    return {"diff": ctx.cached("phenotype-diff", key, lambda: ls.phenotype_difference(
        opts["a"], opts["b"], resolution=int(opts["resolution"])))}


def _diff_draw(results, opts, ctx):
    return {"": phenotype_difference(results["diff"], interactive=False)}


kind("phenotype_difference", "Difference of normalised phenotypes (seed 003 Fig. 8)",
     {"a": "A2", "b": "CE", "resolution": 51}, {}, uses_models=False)((_diff_compute, _diff_draw))


# -- Grad-CAM -----------------------------------------------------------------------------
def _cam_compute(ctx, opts):
    data = ctx.data("test").subset(int(opts["images"]), seed=ctx.seed)
    out = {}
    for m in opts["models"]:
        ck = ctx.checkpoint(m)
        inputs = {"ck": ck.digest, "data": ctx.data_spec, "images": opts["images"], "seed": ctx.seed,
                  "method": opts["method"], "layer": opts["layer"]}
        out[m] = ctx.cached("cam", inputs, lambda ck=ck: ls.gradcam(ck, data, target_layer=opts["layer"],
                                                                    method=opts["method"]))
    return out


def _cam_draw(results, opts, ctx):
    plots = {m: gradcam_grid(cam, max_images=int(opts["images"])) for m, cam in results.items()}
    if len(results) > 1:
        plots[""] = gradcam_compare(results, max_images=int(opts["images"]), guided=True)
    return plots


kind("gradcam", "Grad-CAM heat maps and Guided Grad-CAM of the same test images",
     {"images": 6, "method": "guided-gradcam", "layer": None}, {})((_cam_compute, _cam_draw))


# -- feature geometry II: neural collapse and CKA (issue 16) --------------------------------
def _collapse_compute(ctx, opts):
    """One CollapseCurve per snapshot folder and, for ``models``, the metrics of each final checkpoint."""
    from pathlib import Path

    from landscape.collapse import collapse_curve, neural_collapse, snapshot_paths

    data = ctx.data(opts["split"])
    common = {"data": ctx.data_spec, "split": opts["split"], "layer": opts["layer"], "subset": opts["subset"],
              "seed": ctx.seed}
    out = {}
    for folder in opts["snapshots"]:
        cks = [ls.load_checkpoint(p, device=ctx.device, trust_code=ctx.trust_code)
               for p in snapshot_paths(ctx.root / folder)]
        name = Path(folder).name
        out[f"curve/{name}"] = ctx.cached("collapse-curve", {"snapshots": [ck.digest for ck in cks], **common},
                                          lambda cks=cks, name=name: collapse_curve(
                                              cks, data, layer=opts["layer"], name=name, subset=opts["subset"],
                                              seed=ctx.seed, verbose=False))
    for m in opts["models"]:
        ck = ctx.checkpoint(m)
        out[f"final/{m}"] = ctx.cached("collapse", {"ck": ck.digest, **common}, lambda ck=ck: neural_collapse(
            ck, data=data, layer=opts["layer"], subset=opts["subset"], seed=ctx.seed))
    return out


def _collapse_draw(results, opts, ctx):
    from .geometry import collapse_curves, collapse_table

    curves = {k.split("/", 1)[1]: r for k, r in results.items() if k.startswith("curve/")}
    finals = {k.split("/", 1)[1]: r for k, r in results.items() if k.startswith("final/")}
    plots = {"": collapse_curves(curves, log=opts["log"])} if curves else {}
    if finals:
        plots["table"] = collapse_table(finals)
    return plots


# NC1-NC3 come from class statistics of forward-pass features (~1e-7 relative between machines); NC4 and the
# accuracy count samples, and a sample on a decision boundary may flip between CPUs: one sample of 1437 is 7e-4.
COLLAPSE_TOLERANCE = {"rtol": 1e-4, "atol": 1e-6, "paths": {"*.nc4": {"atol": 2e-3}, "*.accuracy": {"atol": 2e-3}}}

kind("collapse", "Neural collapse (Papyan et al. 2020): NC1-NC4 against epoch per loss, and of final checkpoints",
     {"snapshots": ["trained_models/snapshots/mlp-ce"], "split": "train", "layer": None, "subset": None},
     {"log": True}, uses_models=False, tolerance=COLLAPSE_TOLERANCE)((_collapse_compute, _collapse_draw))


def _cka_compute(ctx, opts):
    from landscape.errors import SpecError

    models = opts["models"]
    if len(models) not in (1, 2):
        raise SpecError(f"cka: models = {models} must name one checkpoint (compared with itself) or two.")
    a = ctx.checkpoint(models[0])
    b = ctx.checkpoint(models[-1]) if len(models) == 2 else None
    inputs = {"a": a.digest, "b": b.digest if b is not None else None, "data": ctx.data_spec,
              **{k: opts[k] for k in ("split", "layers", "layers_b", "kernel", "threshold", "debiased", "minibatch",
                                      "subset")}, "seed": ctx.seed}
    return {"cka": ctx.cached("cka", inputs, lambda: ls.cka_matrix(
        a, b, ctx.data(opts["split"]), layers=opts["layers"], layers_b=opts["layers_b"], kernel=opts["kernel"],
        threshold=float(opts["threshold"]), debiased=opts["debiased"], minibatch=opts["minibatch"],
        subset=opts["subset"], seed=ctx.seed, verbose=False))}


def _cka_draw(results, opts, ctx):
    from .geometry import cka_heatmap

    return {"": cka_heatmap(results["cka"], annotate=opts["annotate"])}


kind("cka", "Layer-by-layer CKA similarity (Kornblith et al. 2019) of two checkpoints, or of one with itself",
     {"split": "test", "layers": None, "layers_b": None, "kernel": "linear", "threshold": 0.5, "debiased": None,
      "minibatch": None, "subset": None}, {"annotate": None})((_cka_compute, _cka_draw))
