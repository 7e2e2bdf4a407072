"""Figure kinds of the report builder: their options, their cached computations, and how they compute and draw.

Each kind is registered with :func:`viz.report.kind`: a table of declared options
(:class:`viz.report.Option`: type, range or choices, default, compute or style), the
:class:`viz.report.Step` s whose results it caches (a step's cache key is derived from the
options it declares), and a ``compute(ctx, fig) -> {key: Result}`` / ``draw(results, fig) ->
{suffix: Plot}`` pair. A computation reads its options only from the parameters
:meth:`viz.report.Context.cached` hands it, so that its key covers everything it depends on
(tests/test_report_cache.py checks this for every option of every kind).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

import landscape as ls
from landscape.cka import KERNELS as CKA_KERNELS
from landscape.embedding import PROJECTIONS
from landscape.faithfulness import METRICS
from landscape.gradcam import METHODS
from landscape.hessian import DIRECTION_SCALES

from .embedding import embedding_grid, hypersphere_grid, stats_table
from .gradcam import faithfulness_plot, gradcam_compare, gradcam_grid
from .hessian import eigen_ratio, spectral_density
from .phenotype import phenotype_curves, phenotype_difference, phenotype_surface
from .report import (ITERATIVE, Context, Figure, Option, Step, choice, flag, folder, folders, integer, interval,
                     kind, layer, loss_spec, loss_specs, names, number, text)
from .surface import compare, curves, levels_for, surface3d, trajectory

# -- shared options and steps ---------------------------------------------------------------
GRID_MAX = 1001  # points per axis of a surface: a million evaluations
RANGE = interval([-1.0, 1.0], help="coordinates [low, high] on both directions")
SUBSET = integer(None, 1, optional=True, help="a seeded random subset of this many test samples")
LOG = flag(False, style=True, help="logarithmic loss scale")
N_LEVELS = integer(20, 2, 100, style=True, help="at most this many round contour levels")
SPLIT = choice("test", ("train", "test"), help="data split of the features")

SURFACE = Step("surface", {"grid": "grid", "range": "range", "subset": "subset"})
FEATURES = Step("features", {"split": "split", "layer": "layer"}, seed=False)


def _axis(p: dict) -> tuple[float, float, int]:
    """``(lo, hi, n)`` of a square plane from a step's ``range`` and ``grid``."""
    lo, hi = p["range"]
    return (lo, hi, p["grid"])


def _surface(ctx: Context, fig: Figure, m: str) -> ls.Result:
    """The loss surface of model ``m`` on a filter-normalised random plane (the spec's seed)."""
    ck = ctx.checkpoint(m)

    def compute(p):
        dirs = ls.random_directions(ck.model, n=2, seed=ctx.seed)
        return ls.surface(ck, ctx.data(fig), dirs, x=_axis(p), y=_axis(p), subset=p["subset"], seed=ctx.seed,
                          verbose=ctx.verbose)

    return ctx.cached(fig, "surface", m, compute)


# -- loss landscapes ------------------------------------------------------------------------
def _contour_compute(ctx, fig):
    return {m: _surface(ctx, fig, m) for m in fig.models}


def _contour_draw(results, fig):
    o = fig.opts
    return {"": compare([results[m] for m in fig.models], titles=fig.models, log=o["log"], n_levels=o["n_levels"],
                        filled=o["filled"])}


kind("contour", "Loss contours around the trained weights (filter-normalised random plane); filled = heat map",
     {"grid": integer(31, 2, GRID_MAX, help="points per axis"), "range": RANGE, "subset": SUBSET, "log": LOG,
      "n_levels": N_LEVELS, "filled": flag(False, style=True, help="filled contours (heat map)")},
     [SURFACE])((_contour_compute, _contour_draw))


def _surface3d_draw(results, fig):
    surf = results[fig.models[0]]
    return {"": surface3d(surf, interactive=True, log=fig.opts["log"]),
            "static": surface3d(surf, interactive=False, log=fig.opts["log"])}


kind("surface3d", "3D loss surface (interactive and static)",
     {"grid": integer(31, 2, GRID_MAX, help="points per axis"), "range": RANGE, "subset": SUBSET, "log": LOG},
     [SURFACE], max_models=1)((_contour_compute, _surface3d_draw))


def _interp_compute(ctx, fig):
    def compute(ck):
        def run(p):
            lo, hi = p["range"]
            return ls.interpolate(ck, None, ctx.data(fig), steps=p["steps"], t=np.linspace(lo, hi, p["steps"]),
                                  seed=ctx.seed, verbose=ctx.verbose)
        return run

    return {m: ctx.cached(fig, "curve", m, compute(ctx.checkpoint(m))) for m in fig.models}


def _interp_draw(results, fig):
    return {"": curves({m: results[m] for m in fig.models}, log=fig.opts["log"],
                       title="1D loss along a filter-normalised random direction: " + ", ".join(fig.models))}


kind("interpolation", "1D loss and accuracy along a filter-normalised random direction, the models overlaid",
     {"steps": integer(51, 2, 10001, help="points on the line"), "range": RANGE, "log": LOG},
     [Step("curve", {"steps": "steps", "range": "range"})])((_interp_compute, _interp_draw))


def _trajectory_compute(ctx, fig):
    """PCA directions of the snapshots and the surface over the path's extent (the path ends at the model)."""
    m = fig.models[0]
    ck = ctx.checkpoint(m)

    def directions(p):
        snaps = ctx.snapshots[str(ctx.path(p["snapshots"]))]
        path = [s for s in snaps if s.digest != ck.digest] + [ck]
        return ls.trajectory_directions([s.model for s in path], n=2)

    dirs = ctx.cached(fig, "trajectory-dirs", m, directions)

    def surface(p):
        lo, hi = dirs.coords.min(axis=0), dirs.coords.max(axis=0)
        pad = p["pad"] * (hi - lo)
        xr = (float(lo[0] - pad[0]), float(hi[0] + pad[0]), p["grid"])
        yr = (float(lo[1] - pad[1]), float(hi[1] + pad[1]), p["grid"])
        return ls.surface(ck, ctx.data(fig), dirs, x=xr, y=yr, verbose=ctx.verbose)

    return {"dirs": dirs, "surface": ctx.cached(fig, "trajectory-surface", m, surface)}


def _trajectory_draw(results, fig):
    return {"": trajectory(results["surface"], results["dirs"].coords, log=fig.opts["log"],
                           n_levels=fig.opts["n_levels"])}


kind("trajectory", "Training trajectory projected on its PCA directions, over the loss surface of that plane",
     {"snapshots": folder("trained_models/snapshots/mlp-ce", help="folder of the training run's snapshots"),
      "grid": integer(31, 2, GRID_MAX, help="points per axis"),
      "pad": number(0.2, 0.0, 10.0, help="margin around the path, as a fraction of its extent"),
      "log": LOG, "n_levels": N_LEVELS},
     [Step("trajectory-dirs", {"snapshots": "snapshots"}, data=False, seed=False),
      Step("trajectory-surface", {"grid": "grid", "pad": "pad"}, seed=False, after=("trajectory-dirs",))],
     max_models=1)((_trajectory_compute, _trajectory_draw))


# -- Hessian ------------------------------------------------------------------------------
def _eigen_compute(ctx, fig):
    out = {}
    for m in fig.models:
        ck = ctx.checkpoint(m)

        def compute(p, ck=ck):
            dirs = ls.random_directions(ck.model, n=2, seed=ctx.seed)
            return ls.eigen_ratio_map(ck, ctx.data(fig), dirs, x=_axis(p), y=_axis(p), subset=p["subset"],
                                      seed=ctx.seed, tol=p["tol"], verbose=ctx.verbose)

        out[f"{m}/eigen"] = ctx.cached(fig, "eigenmap", m, compute)
        out[f"{m}/surface"] = _surface(ctx, fig, m)
    return out


def _eigen_draw(results, fig):
    from .hessian import shared_limits

    # the models are compared side by side: one set of round contour levels and one colour scale for all of them,
    # so that equal colours mean equal values
    levels = levels_for([results[f"{m}/surface"].loss for m in fig.models])
    limits = shared_limits([results[f"{m}/eigen"] for m in fig.models])
    return {m: eigen_ratio(results[f"{m}/eigen"], results[f"{m}/surface"], levels=levels, limits=limits,
                           title=f"{m}: Hessian eigenvalue ratio") for m in fig.models}


kind("eigen_ratio", "Hessian eigenvalue-ratio |lambda_min/lambda_max| maps beside the loss contour",
     {"grid": integer(11, 2, 201, help="points per axis of the eigenvalue map"), "range": RANGE, "subset": SUBSET,
      "tol": number(1e-3, 0.0, 0.5, open_min=True, help="Lanczos residual relative to the spectral radius"),
      "contour_grid": integer(31, 2, GRID_MAX, help="points per axis of the loss contour")},
     [Step("eigenmap", {"grid": "grid", "range": "range", "subset": "subset", "tol": "tol"}),
      dataclasses.replace(SURFACE, options={"grid": "contour_grid", "range": "range", "subset": "subset"})],
     tolerance=ITERATIVE)((_eigen_compute, _eigen_draw))


def _density_compute(ctx, fig):
    def compute(ck):
        return lambda p: ls.spectral_density(ck, ctx.data(fig), n_probes=p["probes"], steps=p["steps"],
                                             seed=ctx.seed, subset=p["subset"])

    return {m: ctx.cached(fig, "density", m, compute(ctx.checkpoint(m))) for m in fig.models}


def _density_draw(results, fig):
    # every model's density in one figure, on a shared x range
    return {"": spectral_density({m: results[m] for m in fig.models}, log=fig.opts["log"], title="Hessian spectra")}


kind("spectral_density", "Hessian spectral density (stochastic Lanczos quadrature)",
     {"probes": integer(4, 1, 1000, help="Gaussian probe vectors"),
      "steps": integer(60, 2, 1000, help="Lanczos steps per probe"), "subset": SUBSET,
      "log": flag(True, style=True, help="logarithmic density axis")},
     [Step("density", {"probes": "probes", "steps": "steps", "subset": "subset"})],
     tolerance=ITERATIVE)((_density_compute, _density_draw))


def _hessian_plane_compute(ctx, fig):
    """Per model: the Hessian's eigenvectors at the centre (cached Directions) and the surface along them."""
    out = {}
    for m in fig.models:
        ck = ctx.checkpoint(m)

        def directions(p, ck=ck):
            return ls.hessian_directions(ck, ctx.data(fig), k=2, which=p["which"], scale=p["scale"],
                                         subset=p["subset"], seed=ctx.seed, tol=p["tol"])

        dirs = ctx.cached(fig, "hessian-dirs", m, directions)

        def surface(p, ck=ck, dirs=dirs):
            return ls.surface(ck, ctx.data(fig), dirs, x=_axis(p), y=_axis(p), subset=p["subset"], seed=ctx.seed,
                              verbose=ctx.verbose)

        out[m] = ctx.cached(fig, "hessian-plane", m, surface)
    return out


def _hessian_plane_draw(results, fig):
    from .hessian import hessian_plane

    return {"": hessian_plane({m: results[m] for m in fig.models}, log=fig.opts["log"],
                              n_levels=fig.opts["n_levels"])}


# ITERATIVE: eigenvectors from Lanczos move with last-bit differences, and the surface along them with them.
# Log levels by default: the saddle at the centre is shallow (lambda_min ~ -0.6 against lambda_max ~ 9 on digits).
# tol 1e-6: the bottom of the spectrum is a cluster (-0.594, -0.587, -0.572 for mlp-ce), and an eigenvector's error is
# about residual / gap, so 1e-3 would leave v_min a mixture of the cluster that moves between machines.
_HESSIAN_DIRS = Step("hessian-dirs", {"which": "which", "scale": "scale", "subset": "subset", "tol": "tol"})
kind("hessian_plane", "Loss over the plane of the Hessian's extreme eigenvectors (v_max, v_min), where saddles show",
     {"grid": integer(31, 2, GRID_MAX, help="points per axis"),
      "range": interval([-0.5, 0.5], help="coordinates [low, high] on both eigenvectors"), "subset": SUBSET,
      "which": choice("BE", ("BE", "LA", "SA"), help="both ends (v_max, v_min), the top two or the bottom two"),
      "tol": number(1e-6, 0.0, 0.5, open_min=True, help="Lanczos residual relative to the spectral radius"),
      "scale": choice("unit", DIRECTION_SCALES, help="unit eigenvectors or scaled to the weights' norm"),
      "log": flag(True, style=True, help="logarithmic loss levels"), "n_levels": N_LEVELS},
     [_HESSIAN_DIRS, Step("hessian-plane", {"grid": "grid", "range": "range", "subset": "subset"},
                          after=("hessian-dirs",))],
     tolerance=ITERATIVE)((_hessian_plane_compute, _hessian_plane_draw))


def _layers_compute(ctx, fig):
    def compute(ck):
        return lambda p: ls.layer_spectra(ck, ctx.data(fig), groups=p["groups"], subset=p["subset"], seed=ctx.seed,
                                          n_probes=p["probes"], steps=p["steps"], trace_probes=p["trace_probes"],
                                          tol=p["tol"], verbose=ctx.verbose)

    return {m: ctx.cached(fig, "layer-spectra", m, compute(ctx.checkpoint(m))) for m in fig.models}


def _layers_draw(results, fig):
    from .hessian import layer_spectra, layer_table

    res = {m: results[m] for m in fig.models}
    return {"": layer_spectra(res, log=fig.opts["log"]), "table": layer_table(res)}


kind("layer_spectra", "Per-layer Hessian spectra: densities of each layer's block stacked by depth, and a table",
     {"groups": choice("layer", ("layer", "parameter"), help="one block per layer or per parameter tensor"),
      "subset": SUBSET, "probes": integer(4, 1, 1000, help="Gaussian probe vectors of each density"),
      "steps": integer(60, 2, 1000, help="Lanczos steps per probe"),
      "trace_probes": integer(100, 1, 100000, help="Hutchinson probes of each block's trace"),
      "tol": number(1e-3, 0.0, 0.5, open_min=True, help="Lanczos residual of each block's extremes"),
      "log": flag(True, style=True, help="logarithmic density axis")},
     [Step("layer-spectra", {"groups": "groups", "subset": "subset", "probes": "probes", "steps": "steps",
                             "trace_probes": "trace_probes", "tol": "tol"})],
     tolerance=ITERATIVE)((_layers_compute, _layers_draw))


# -- feature geometry ---------------------------------------------------------------------
def _features(ctx, fig, m):
    ck = ctx.checkpoint(m)
    return ctx.cached(fig, "features", m, lambda p: ls.extract_features(ck, ctx.data(fig, p["split"]),
                                                                       layer=p["layer"]))


# t-SNE is chaotic: last-bit differences of the features between CPUs move points by whole units
# (measured: up to 9), so the coordinates are not pinned; the quality scores move by a point or two
# of 360 (k-NN accuracy 0.0028, trustworthiness 0.0008 measured) and the feature statistics not at all.
TSNE_TOLERANCE = {"rtol": 1e-4, "atol": 1e-6, "paths": {"panels.*.x": None, "panels.*.y": None,
                                                         "panels.*.knn_accuracy": {"atol": 0.015},
                                                         "panels.*.trustworthiness": {"atol": 0.004}}}


def _tsne_compute(ctx, fig):
    out = {}
    for m in fig.models:
        feat = _features(ctx, fig, m)
        out[m] = ctx.cached(fig, "tsne", m, lambda p, feat=feat: ls.tsne(feat, seed=ctx.seed,
                                                                        perplexity=p["perplexity"]))
        out[f"{m}/features"] = feat
    return out


def _stats(results, fig):
    from landscape.embedding import compare_stats

    return compare_stats({m: results[f"{m}/features"] for m in fig.models})


def _tsne_draw(results, fig):
    return {"": embedding_grid({m: results[m] for m in fig.models}, table=_stats(results, fig),
                               point_size=fig.opts["point_size"])}


FEATURE_OPTIONS = {"split": SPLIT, "layer": layer(help="layer whose output is the feature (default: penultimate)")}

kind("tsne", "t-SNE maps of the penultimate features, with quality and angular statistics",
     {**FEATURE_OPTIONS, "perplexity": number(30.0, 0.0, 1000.0, open_min=True, help="t-SNE perplexity"),
      "point_size": number(8.0, 0.0, 100.0, open_min=True, style=True, help="marker area")},
     [FEATURES, Step("tsne", {"perplexity": "perplexity"}, data=False, after=("features",))],
     tolerance=TSNE_TOLERANCE)((_tsne_compute, _tsne_draw))


def _sphere_compute(ctx, fig):
    out = {}
    for m in fig.models:
        feat = _features(ctx, fig, m)
        out[f"{m}/features"] = feat
        out[m] = ctx.cached(fig, "sphere", m, lambda p, feat=feat: ls.hypersphere(
            feat, dim=p["dim"], projection=p["projection"], seed=ctx.seed))
    return out


def _sphere_draw(results, fig):
    spheres = {m: results[m] for m in fig.models}
    return {"": hypersphere_grid(spheres, interactive=False, table=True),
            "interactive": hypersphere_grid(spheres, interactive=True, table=False),
            "stats": stats_table(_stats(results, fig))}


kind("hypersphere", "Features on the unit sphere per class, with angular statistics",
     {**FEATURE_OPTIONS, "dim": integer(3, 2, 3, help="circle (2) or sphere (3)"),
      "projection": choice("auto", PROJECTIONS, help="how features reach dim dimensions")},
     [FEATURES, Step("sphere", {"dim": "dim", "projection": "projection"}, data=False, after=("features",))])(
    (_sphere_compute, _sphere_draw))


# -- loss phenotypes ----------------------------------------------------------------------
RESOLUTION = integer(51, 2, 1001, help="points per axis of the (y, yh) grid")
PHENOTYPE = Step("phenotype", {"loss": "loss", "resolution": "resolution"}, per=None, data=False, seed=False)


def _curves_compute(ctx, fig):
    return {loss: ctx.cached(fig, "phenotype", loss, lambda p: ls.phenotype(p["loss"], resolution=p["resolution"]))
            for loss in fig.opts["losses"]}


def _curves_draw(results, fig):
    reference = None if fig.opts["reference"] == "none" else fig.opts["reference"]
    return {"": phenotype_curves(list(results.values()), reference=reference, title=fig.opts["title"] or None)}


def _check_reference(opts: dict) -> tuple[str, str] | None:
    if opts["reference"] not in ("auto", "none", *opts["losses"]):
        return "reference", (f"reference={opts['reference']!r} must be 'auto' (CE when listed), 'none' or one of "
                             f"losses {opts['losses']}.")
    return None


kind("phenotype_curves", "Binary phenotypes (y = 1) of loss functions, raw and normalised",
     {"losses": loss_specs(["A2", "CE"], help="the losses drawn"), "resolution": RESOLUTION,
      "reference": text("auto", style=True, help="loss drawn as the dashed reference: auto, none or a listed loss"),
      "title": text("", style=True, help="figure title")},
     [dataclasses.replace(PHENOTYPE, options={"resolution": "resolution"}, per="losses", item="loss")],
     uses_models=False, check=_check_reference)((_curves_compute, _curves_draw))


def _surface_ph_compute(ctx, fig):
    return {"ph": ctx.cached(fig, "phenotype", None, lambda p: ls.phenotype(p["loss"], resolution=p["resolution"]))}


def _surface_ph_draw(results, fig):
    ph = results["ph"]
    return {"": phenotype_surface(ph, interactive=True, normalized=fig.opts["normalized"]),
            "static": phenotype_surface(ph, interactive=False, normalized=fig.opts["normalized"])}


kind("phenotype_surface", "3D phenotype of a loss over (y, yh)",
     {"loss": loss_spec("A2", help="the loss drawn"), "resolution": RESOLUTION,
      "normalized": flag(False, style=True, help="min-max normalised height")},
     [PHENOTYPE], uses_models=False)((_surface_ph_compute, _surface_ph_draw))


def _diff_compute(ctx, fig):
    return {"diff": ctx.cached(fig, "phenotype-diff", None, lambda p: ls.phenotype_difference(
        p["a"], p["b"], resolution=p["resolution"]))}


def _diff_draw(results, fig):
    return {"": phenotype_difference(results["diff"], interactive=False)}


kind("phenotype_difference", "Difference of normalised phenotypes (seed 003 Fig. 8)",
     {"a": loss_spec("A2", help="minuend loss"), "b": loss_spec("CE", help="subtrahend loss"),
      "resolution": RESOLUTION},
     [Step("phenotype-diff", {"a": "a", "b": "b", "resolution": "resolution"}, per=None, data=False, seed=False)],
     uses_models=False)((_diff_compute, _diff_draw))


# -- Grad-CAM -----------------------------------------------------------------------------
def _cam_compute(ctx, fig):
    def compute(ck):
        def run(p):
            images = ctx.data(fig).subset(p["images"], seed=ctx.seed)
            return ls.gradcam(ck, images, target_layer=p["layer"], method=p["method"])
        return run

    return {m: ctx.cached(fig, "cam", m, compute(ctx.checkpoint(m))) for m in fig.models}


def _cam_draw(results, fig):
    n = fig.opts["images"]
    plots = {m: gradcam_grid(results[m], max_images=n) for m in fig.models}
    if len(fig.models) > 1:
        cams = {m: results[m] for m in fig.models}
        plots[""] = gradcam_compare(cams, max_images=n, guided=all(c.guided is not None for c in cams.values()))
    return plots


kind("gradcam", "Grad-CAM heat maps and Guided Grad-CAM of the same test images",
     {"images": integer(6, 1, 64, help="test images explained"),
      "method": choice("guided-gradcam", METHODS, help="the explanation"),
      "layer": layer(help="target layer (default: the last convolution)")},
     [Step("cam", {"images": "images", "method": "method", "layer": "layer"})])((_cam_compute, _cam_draw))


# -- feature geometry II: neural collapse and CKA (issue 16) --------------------------------
def _collapse_compute(ctx, fig):
    """One CollapseCurve per snapshot folder, and the metrics of each of the figure's (final) checkpoints."""
    def curve(p):
        return ls.collapse_curve(ctx.snapshots[str(ctx.path(p["folder"]))], ctx.data(fig), layer=p["layer"],
                              name=Path(p["folder"]).name, subset=p["subset"], seed=ctx.seed, verbose=False)

    out = {f"curve/{Path(f).name}": ctx.cached(fig, "collapse-curve", f, curve) for f in fig.opts["snapshots"]}
    for m in fig.models:
        ck = ctx.checkpoint(m)
        out[f"final/{m}"] = ctx.cached(fig, "collapse", m, lambda p, ck=ck: ls.neural_collapse(
            ck, data=ctx.data(fig), layer=p["layer"], subset=p["subset"], seed=ctx.seed))
    return out


def _collapse_draw(results, fig):
    from .geometry import collapse_curves, collapse_table

    curves = {k.split("/", 1)[1]: r for k, r in results.items() if k.startswith("curve/")}
    finals = {k.split("/", 1)[1]: r for k, r in results.items() if k.startswith("final/")}
    return {"": collapse_curves(curves, log=fig.opts["log"]), "table": collapse_table(finals)}


def _check_collapse(opts):
    stems = [Path(f).name for f in opts["snapshots"]]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:  # the curves are named by their folders' names
        return "snapshots", f"two snapshot folders are named {twice[0]!r}; rename one so that their curves differ."
    return None


# NC1-NC3 come from class statistics of forward-pass features (~1e-7 relative between machines); NC4 and the
# accuracy count samples, and a sample on a decision boundary may flip between CPUs: one sample of 1437 is 7e-4.
COLLAPSE_TOLERANCE = {"rtol": 1e-4, "atol": 1e-6, "paths": {"*.nc4": {"atol": 2e-3}, "*.accuracy": {"atol": 2e-3}}}
_COLLAPSE_OPTIONS = {"layer": "layer", "subset": "subset"}

kind("collapse", "Neural collapse (Papyan et al. 2020): NC1-NC4 against epoch per loss, and of final checkpoints",
     {"snapshots": folders(["trained_models/snapshots/mlp-ce"], help="snapshot folders of training runs"),
      "split": choice("train", ("train", "test"), help="data split (Papyan et al. use the training set)"),
      "layer": layer(help="feature layer (default: the penultimate features, with the head as classifier)"),
      "subset": SUBSET, "log": flag(True, style=True, help="logarithmic metric axes")},
     [Step("collapse-curve", _COLLAPSE_OPTIONS, per="snapshots", item="folder"), Step("collapse", _COLLAPSE_OPTIONS)],
     check=_check_collapse, tolerance=COLLAPSE_TOLERANCE)((_collapse_compute, _collapse_draw))


def _cka_compute(ctx, fig):
    a = ctx.checkpoint(fig.models[0])
    b = ctx.checkpoint(fig.models[1]) if len(fig.models) == 2 else None

    def compute(p):
        return ls.cka_matrix(a, b, ctx.data(fig), layers=p["layers"], layers_b=p["layers_b"], kernel=p["kernel"],
                             threshold=p["threshold"], debiased=p["debiased"], minibatch=p["minibatch"],
                             subset=p["subset"], seed=ctx.seed, verbose=False)

    return {"cka": ctx.cached(fig, "cka", None, compute)}


def _cka_draw(results, fig):
    from .geometry import cka_heatmap

    return {"": cka_heatmap(results["cka"], annotate=fig.opts["annotate"])}


_CKA_OPTIONS = ("split", "layers", "layers_b", "kernel", "threshold", "debiased", "minibatch", "subset")
kind("cka", "Layer-by-layer CKA similarity (Kornblith et al. 2019) of two checkpoints, or of one with itself",
     {"split": choice("test", ("train", "test"), help="data split of the examples"),
      "layers": names(help="layers of the first model (default: every weighted layer)"),
      "layers_b": names(help="layers of the second model (default: as layers)"),
      "kernel": choice("linear", CKA_KERNELS, help="linear or RBF kernel"),
      "threshold": number(0.5, 0.0, open_min=True, help="RBF bandwidth, a fraction of the median distance"),
      "debiased": Option(None, "bool", optional=True, help="unbiased HSIC (default: with minibatches only)"),
      "minibatch": integer(None, 4, optional=True, help="examples per batch of the minibatch estimator"),
      "subset": SUBSET,
      "annotate": Option(None, "bool", optional=True, style=True, help="write the values in the cells")},
     [Step("cka", {k: k for k in _CKA_OPTIONS}, per=None)], max_models=2)((_cka_compute, _cka_draw))


# -- faithfulness of the maps ------------------------------------------------------------------
FAITHFULNESS_METHODS = ("gradcam", "gradcam++", "guided-gradcam")  # Grad-CAM, Grad-CAM++ and the guided map
FAITHFULNESS_OPTIONS = {"images": "images", "steps": "steps"}


def _faith_step(method: str, metric: str) -> str:
    return f"faithfulness-{method.replace('+', 'p')}-{metric}"


def _faith_compute(ctx, fig):
    def compute(ck, method, metric):
        def run(p):
            images = ctx.data(fig).subset(p["images"], seed=ctx.seed)
            cam = ls.gradcam(ck, images, method=method)
            return ls.faithfulness(ck, cam, metric=metric, steps=p["steps"], seed=ctx.seed, verbose=ctx.verbose)
        return run

    return {f"{m}/{method}/{metric}": ctx.cached(fig, _faith_step(method, metric), m,
                                                 compute(ctx.checkpoint(m), method, metric))
            for m in fig.models for method in FAITHFULNESS_METHODS for metric in METRICS}


def _faith_draw(results, fig):
    return {"": faithfulness_plot(list(results.values()))}


def _faith_steps():
    return [Step(_faith_step(method, metric), FAITHFULNESS_OPTIONS) for method in FAITHFULNESS_METHODS
            for metric in METRICS]


kind("faithfulness", "Faithfulness of Grad-CAM, Grad-CAM++ and Guided Grad-CAM maps (deletion, insertion, ROAD) "
     "per checkpoint, beside random maps",
     {"images": integer(32, 2, 512, help="test images scored"),
      "steps": integer(None, 1, optional=True, help="deletion/insertion steps (default: one per pixel, at most 100)")},
     _faith_steps(), tolerance={"rtol": 1e-3, "atol": 1e-4})((_faith_compute, _faith_draw))


# -- mode connectivity (issue 17) ---------------------------------------------------------------
def _connectivity_compute(ctx, fig):
    """The line's barrier, the trained curve and its plane for the figure's two models (A first)."""
    from landscape.errors import ArgumentError

    if len(fig.models) != 2:
        raise ArgumentError(f"figure {fig.id!r}: a connectivity figure joins exactly two models, got "
                            f"{len(fig.models)}; list two in models.")
    a, b = (ctx.checkpoint(m) for m in fig.models)
    train, test = ctx.load_data(fig.data, "train"), ctx.data(fig)

    def line(p):
        return ls.barrier(a, b, train, n=p["points"], bn=p["bn"], test=test, subset=p["subset"], seed=ctx.seed,
                          verbose=ctx.verbose)

    def curve(p):
        return ls.connect(a, b, train, curve=p["curve"], bends=p["bends"], epochs=p["epochs"], n=p["points"],
                          bn=p["bn"], test=test, subset=p["subset"], seed=ctx.seed, verbose=ctx.verbose)

    out = {"line": ctx.cached(fig, "connect-line", None, line),
           "curve": ctx.cached(fig, "connect-curve", None, curve)}
    out["plane"] = ctx.cached(fig, "connect-plane", None, lambda p: ls.curve_plane(
        a, out["curve"], train, grid=p["grid"], subset=p["subset"], seed=ctx.seed, verbose=ctx.verbose))
    return out


def _connectivity_draw(results, fig):
    from .connectivity import paths, plane

    return {"": paths(results["line"], results["curve"], log=fig.opts["log"]),
            "plane": plane(results["plane"], n_levels=fig.opts["n_levels"])}


# Curve training is SGD over hundreds of steps: last-bit differences between CPUs grow through it, as through the
# zoo's training (weights ~2e-4 apart after 40 epochs, trained_models/README.md), so the values get 20x the EXACT
# tolerance (an estimate; not measured between machines). Errors count samples: one test sample of 360 is 2.8e-3.
# The maximisers t* may move by a grid step where two points nearly tie, so they are left out.
CONNECT_TOLERANCE = {"rtol": 2e-3, "atol": 2e-4, "paths": {"*.t_max": None, "*.t_gap": None,
                                                           "*error*": {"rtol": 0.0, "atol": 6e-3}}}
_LINE = {"points": "points", "bn": "bn", "subset": "subset"}
_CURVE = {**_LINE, "curve": "curve", "bends": "bends", "epochs": "epochs"}
kind("connectivity", "Mode connectivity of two models: loss and error on the straight line and along a trained "
     "low-loss curve, and the plane through the endpoints and the middle bend (Garipov et al. 2018, Fig. 1)",
     {"curve": choice("bezier", ("bezier", "polychain"), help="curve family"),
      "bends": integer(1, 1, 16, help="trainable bends"),
      "epochs": integer(20, 1, 10000, help="epochs of curve training"),
      "points": integer(61, 2, 10001, help="evaluation points on [0, 1]"),
      "bn": choice("recompute", ("recompute", "interpolate"), help="batchnorm statistics at each point"),
      "grid": integer(21, 2, 401, help="points per axis of the plane"), "subset": SUBSET,
      "log": LOG, "n_levels": N_LEVELS},
     [Step("connect-line", _LINE, per=None), Step("connect-curve", _CURVE, per=None),
      Step("connect-plane", {"grid": "grid", "subset": "subset"}, per=None, after=("connect-curve",))],
     max_models=2, tolerance=CONNECT_TOLERANCE)((_connectivity_compute, _connectivity_draw))


# -- sharpness and generalisation: the geometry card (issue 15) -----------------------------
def _card_compute(ctx, fig):
    """One GeometryCard per model: measures on the train split, accuracies and gap on both splits."""
    out = {}
    for m in fig.models:
        ck = ctx.checkpoint(m)
        out[m] = ctx.cached(fig, "geometry-card", m, lambda p, ck=ck: ls.geometry_card(
            ck, ctx.data(fig, "train"), ctx.data(fig, "test"), measures=p["measures"],
            seed=ctx.seed, subset=p["subset"], eval_subset=p["eval_subset"], bn=p["bn"], verbose=ctx.verbose))
    return out


def _card_draw(results, fig):
    from .sharpness import card_table, sharpness_vs_gap

    cmp = ls.compare_cards([results[m] for m in fig.models])
    cmp.names = list(fig.models)
    return {"": card_table(cmp), "gap": sharpness_vs_gap(cmp)}


def _check_card(opts):
    from landscape.sharpness import MEASURES, PRESETS

    bad = [m for m in opts["measures"] if m not in (*MEASURES, *PRESETS)]
    if bad:
        return "measures", f"{bad[0]!r} is not a measure; use {', '.join((*MEASURES, *PRESETS))}."
    return None


# Monte Carlo and Auto-PGD run through float32 sums whose last bits differ between CPUs, and PAC-Bayes counts
# samples (a flipped sample moves sigma* by one bisection step): values are pinned loosely, the gap exactly.
CARD_TOLERANCE = {"rtol": 2e-3, "atol": 1e-6, "paths": {"*pac-bayes*": {"rtol": 0.1}, "*p_value*": {"rtol": 0.1}}}
kind("geometry-card", "Geometry card per model: sharpness measures, accuracies, generalisation gap and Kendall tau",
     {"measures": Option(["hessian", "epsilon", "adaptive-average", "adaptive-worst", "plain-average", "plain-worst",
                          "pac-bayes", "flatness-radius"], "names",
                         help="sharpness measures and presets (see landscape.sharpness)"),
      "subset": integer(1024, 1, optional=True, help="seeded training examples the measures use"),
      "eval_subset": integer(None, 1, optional=True, help="seeded examples per split for accuracy and loss"),
      "bn": choice("eval", ("eval", "recompute"), help="batchnorm statistics at perturbed weights")},
     [Step("geometry-card", {"measures": "measures", "subset": "subset", "eval_subset": "eval_subset", "bn": "bn"},
           splits=("train", "test"))],
     check=_check_card, tolerance=CARD_TOLERANCE)((_card_compute, _card_draw))
