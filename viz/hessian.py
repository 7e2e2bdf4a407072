"""Figures of Hessian curvature: eigenvalue-ratio maps (seed 002 Fig. 4.5), spectral densities, layer spectra.

Nothing is computed here: every number drawn comes from an :class:`landscape.hessian.EigenMap`,
a :class:`landscape.surface.Surface`, a :class:`landscape.hessian.Density` or a
:class:`landscape.hessian.LayerSpectra`.

Conventions that keep the figures honest:

* a map's cells are the grid points' neighbourhoods and stop at the grid's extent (no half
  cell beyond it), and every panel of a figure shows the same extent as its contour;
* the ratio's colours run from blue (0: locally convex, as in the thesis) to yellow (strong
  negative curvature); maps of several models share one colour scale (:func:`shared_limits`);
* a map with a one-point axis has no cells to draw: its points are drawn as coloured markers;
* curves of several models are overlaid in one axes with a shared x range, and a legend sits
  outside the axes so that it never covers data.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .figure import Plot
from .surface import caption as surface_caption
from .surface import compare as compare_surfaces
from .surface import draw_contour

AXIS_LABELS = ("direction 1 (a)", "direction 2 (b)")


def ratio_cmap():
    """The ratio's colour map: viridis from its blue (0.3) to its yellow, so that convex (0) reads as blue."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    return ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0.3, 1.0, 256)), name="viridis_from_blue")


# -- helpers -------------------------------------------------------------------------------
def _finite_range(arrays: Sequence[np.ndarray]) -> tuple[float, float] | None:
    finite = np.concatenate([np.asarray(a, np.float64)[np.isfinite(a)] for a in arrays]) if arrays else np.zeros(0)
    return (float(finite.min()), float(finite.max())) if finite.size else None


def _spread(lo: float, hi: float) -> tuple[float, float]:
    """Colour limits with a visible width: a constant field gets +-5% (or +-1 at 0), never a 1e-12 sliver."""
    if hi > lo:
        return lo, hi
    pad = 0.05 * abs(lo) or 1.0
    return lo - pad, hi + pad


def shared_limits(emaps: Sequence) -> dict[str, list[float]]:
    """Colour limits covering every map of a comparison: ratio from 0, ``lambda_min`` symmetric about 0, ``lambda_max``.

    Pass the result to :func:`eigen_ratio` (``limits=``) for each map, so that equal colours
    mean equal values across the models.
    """
    ratio = _finite_range([m.ratio for m in emaps])
    lo = _finite_range([np.abs(m.lam_min) for m in emaps])
    hi = _finite_range([m.lam_max for m in emaps])
    span = lo[1] if lo and lo[1] > 0 else 1.0
    return {"ratio": list(_spread(0.0, ratio[1] if ratio else 1.0)), "lam_min": [-span, span],
            "lam_max": list(_spread(*hi)) if hi else [0.0, 1.0]}


def _edges(c: np.ndarray) -> np.ndarray:
    """Cell edges of grid coordinates ``c`` (at least 2): midpoints inside, the end points outside."""
    c = np.asarray(c, np.float64)
    return np.concatenate([[c[0]], (c[1:] + c[:-1]) / 2, [c[-1]]])


def _extent(*grids) -> list[float]:
    """``[xlo, xhi, ylo, yhi]`` covering every ``(x, y)`` pair given (maps, surfaces)."""
    xs = np.concatenate([np.asarray(g[0], np.float64) for g in grids])
    ys = np.concatenate([np.asarray(g[1], np.float64) for g in grids])
    return [float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())]


def _frame(ax, extent: list[float]) -> None:
    """Axis limits of the extent (padded when an axis is a single point) and the centre marked."""
    x0, x1, y0, y1 = extent
    pad_x = 0.5 if x1 == x0 else 0.0
    pad_y = 0.5 if y1 == y0 else 0.0
    ax.set_xlim(x0 - pad_x, x1 + pad_x)
    ax.set_ylim(y0 - pad_y, y1 + pad_y)
    if x0 <= 0 <= x1 and y0 <= 0 <= y1:
        ax.plot(0.0, 0.0, marker="*", color="red", markersize=10, linestyle="none")
    ax.set_xlabel(AXIS_LABELS[0])
    ax.set_ylabel(AXIS_LABELS[1])


def _cells(ax, x: np.ndarray, y: np.ndarray, z: np.ndarray, cmap, norm):
    """Draw ``z[j, i]`` at ``(x[i], y[j])``: cells clipped to the grid's extent, or markers for a one-point axis."""
    if len(x) >= 2 and len(y) >= 2:
        return ax.pcolormesh(_edges(x), _edges(y), np.ma.masked_invalid(z), cmap=cmap, norm=norm, shading="flat")
    gx, gy = np.meshgrid(x, y)
    finite = np.isfinite(z)
    artist = ax.scatter(gx[finite], gy[finite], c=z[finite], cmap=cmap, norm=norm, s=260, marker="s",
                        edgecolors="black", linewidths=0.5, zorder=3)
    for a, b, v in zip(gx.ravel(), gy.ravel(), z.ravel()):
        ax.annotate(f"{v:.3g}", (a, b), textcoords="offset points", xytext=(0, 14), ha="center", fontsize=8)
    return artist


def draw_map(ax, emap, field: str, *, cmap="viridis", vmin: float | None = None, vmax: float | None = None,
             label: str | None = None, norm=None) -> dict:
    """Draw ``emap.<field>`` as cells with a colour bar on ``ax``; return the values drawn.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    emap : EigenMap
    field : {"ratio", "lam_min", "lam_max", "hvps"}
    cmap : str or Colormap
    vmin, vmax : float, optional
        Colour limits (default: the finite range of the field).
    label : str, optional
        Colour-bar label.
    norm : matplotlib.colors.Normalize, optional
        Overrides ``vmin``/``vmax`` (e.g. a diverging norm centred on 0).

    Returns
    -------
    dict
        ``{field: array, field + "_limits": [vmin, vmax]}``.
    """
    from matplotlib.colors import Normalize

    z = np.asarray(getattr(emap, field), dtype=np.float64)
    if norm is None:
        found = _finite_range([z]) or (0.0, 1.0)
        lo, hi = _spread(found[0] if vmin is None else float(vmin), found[1] if vmax is None else float(vmax))
        norm = Normalize(lo, hi)
    artist = _cells(ax, np.asarray(emap.x), np.asarray(emap.y), z, cmap, norm)
    ax.figure.colorbar(artist, ax=ax, label=label or field)
    return {field: z, f"{field}_limits": [float(norm.vmin), float(norm.vmax)]}


def _map_caption(emap, shared: bool) -> str:
    m = emap.meta
    text = (surface_caption(emap).replace("loss (", "Hessian extremes of the training loss (", 1)
            + f" Lanczos on Hessian-vector products ({m.get('params', 'all')} parameters, {m.get('dtype', '?')}), "
              f"residual <= {m.get('tol', '?')} x spectral radius; {int(np.sum(emap.hvps))} HVPs in all, "
              f"{int(np.sum(~np.asarray(emap.converged, bool)))} points unconverged")
    bad = m.get("non_finite")
    if bad:
        text += f", {bad} points with a non-finite Hessian (blank)"
    centre = emap.centre
    if centre:
        where = "a grid point" if centre.get("on_grid") else "computed there, not a grid point"
        text += (f". At the centre (0, 0) ({where}): lambda_min {centre['lam_min']:.4g}, lambda_max "
                 f"{centre['lam_max']:.4g}, ratio {centre['ratio']:.4g}")
    return text + (". Colour scales shared across the compared models." if shared else ".")


# -- eigenvalue-ratio maps -----------------------------------------------------------------
def eigen_ratio(emap, surf=None, *, levels=None, log: bool = False, vmax: float | None = None,
                limits: Mapping[str, Sequence[float]] | None = None, title: str | None = None) -> Plot:
    """The ratio map ``|lambda_min / lambda_max|`` beside the loss contour, with maps of both extremes.

    Four panels on one extent (the contour's and the map's): the ratio from blue (0: locally
    convex) to yellow (strong negative curvature), the loss contour of the same plane,
    ``lambda_min`` (a diverging map centred on 0) and ``lambda_max``.

    Parameters
    ----------
    emap : EigenMap
    surf : Surface, optional
        A (typically finer) loss surface over the same plane for the contour panel; default
        the loss that ``emap`` itself carries at its grid points.
    levels : array-like, optional
        Contour levels (see :func:`viz.surface.draw_contour`).
    log : bool
        Log colour scale for the contour.
    vmax : float, optional
        Upper colour limit of the ratio (default its maximum).
    limits : mapping, optional
        Colour limits ``{"ratio": [0, hi], "lam_min": [-s, s], "lam_max": [lo, hi]}`` shared by a
        comparison (see :func:`shared_limits`); ``vmax`` still sets the ratio's upper limit.
    title : str, optional

    Returns
    -------
    Plot
        ``values``: ``x``, ``y``, ``ratio``, ``lam_min``, ``lam_max``, their colour limits, the
        ``extent`` of every panel, and the contour's ``loss``, ``levels``, ``contour_x``, ``contour_y``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize, TwoSlopeNorm

    limits = dict(limits or {})
    own = shared_limits([emap])
    ratio_lim = list(limits.get("ratio", own["ratio"]))
    if vmax is not None:
        ratio_lim[1] = float(vmax)
    fig, axes = plt.subplots(2, 2, figsize=(10.5, 8.4), constrained_layout=True)
    contour_src = surf if surf is not None else emap
    extent = _extent((emap.x, emap.y), (contour_src.x, contour_src.y))
    values = {"x": np.asarray(emap.x), "y": np.asarray(emap.y), "extent": extent}
    values.update(draw_map(axes[0, 0], emap, "ratio", cmap=ratio_cmap(), norm=Normalize(*_spread(*ratio_lim)),
                           label="|lambda_min / lambda_max|"))
    axes[0, 0].set_title("eigenvalue ratio (blue: convex)")
    if len(contour_src.x) >= 2 and len(contour_src.y) >= 2:
        contour = draw_contour(axes[0, 1], contour_src, levels, log=log)
        values.update({"loss": contour["loss"], "levels": contour["levels"], "contour_x": contour["x"],
                       "contour_y": contour["y"]})
        fig.colorbar(contour["_artist"], ax=axes[0, 1], label="loss")
    else:  # a one-point map without a surface: its loss as a marker
        values.update(draw_map(axes[0, 1], emap, "loss", label="loss"))
        values.update({"contour_x": np.asarray(emap.x), "contour_y": np.asarray(emap.y)})
    axes[0, 1].set_title("loss contour")
    span = limits.get("lam_min", own["lam_min"])[1]
    values.update(draw_map(axes[1, 0], emap, "lam_min", cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -span, span),
                           label="lambda_min"))
    axes[1, 0].set_title("smallest eigenvalue")
    values.update(draw_map(axes[1, 1], emap, "lam_max", cmap="magma",
                           norm=Normalize(*_spread(*limits.get("lam_max", own["lam_max"]))), label="lambda_max"))
    axes[1, 1].set_title("largest eigenvalue")
    for ax in axes.ravel():
        _frame(ax, extent)
    fig.suptitle(title or f"{emap.meta.get('checkpoint', '')}: Hessian eigenvalue ratio")
    return Plot(fig, values, _map_caption(emap, bool(limits)), "eigen_ratio")


# -- spectral densities --------------------------------------------------------------------
def _named(items, what: str) -> dict:
    """``{name: result}`` from one result, a mapping, or a sequence (named by checkpoint, else by position)."""
    from landscape.errors import ArgumentError

    if isinstance(items, Mapping):
        out = dict(items)
    elif isinstance(items, (list, tuple)):
        out = {}
        for k, item in enumerate(items):
            name = str(item.meta.get("checkpoint") or f"#{k + 1}")
            out[name if name not in out else f"{name} #{k + 1}"] = item
    else:
        out = {str(items.meta.get("checkpoint") or what): items}
    if not out:
        raise ArgumentError(f"nothing to draw: give at least one {what}.")
    return out


def _legend_outside(ax) -> None:
    """A legend to the right of the axes, where it cannot cover data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, frameon=False)


def _log_scale(ax, densities: Sequence[np.ndarray]) -> None:
    """A log density axis down to twelve decades below the highest peak (Gaussian tails reach 1e-300).

    With no positive finite value (a Hessian that was not finite) the axis stays linear and says so.
    """
    found = _finite_range([d[d > 0] for d in densities])
    if not found:
        ax.text(0.5, 0.5, "no finite density", transform=ax.transAxes, ha="center", va="center", color="grey")
        return
    ax.set_yscale("log")
    ax.set_ylim(max(found[0], found[1] * 1e-12), found[1] * 3)


def spectral_density(dens, *, log: bool = True, title: str | None = None) -> Plot:
    """Smoothed Hessian eigenvalue densities from stochastic Lanczos quadrature, several models overlaid.

    Parameters
    ----------
    dens : Density, mapping of name to Density, or sequence of Density
        One curve per density, drawn on one axes with a shared x range.
    log : bool
        Logarithmic density axis (default), where the bulk near 0 and the outliers both show.
    title : str, optional

    Returns
    -------
    Plot
        ``values``: ``curves`` (per model: ``name``, ``grid``, ``density``, ``sigma``), the shared
        ``x_range``; for a single density also its ``grid``, ``density``, ``sigma``, ``nodes``, ``weights``.
    """
    import matplotlib.pyplot as plt

    items = _named(dens, "Density")
    fig, ax = plt.subplots(figsize=(7.2 if len(items) > 1 else 6.0, 4.0))
    curves, drawn = [], []
    for k, (name, d) in enumerate(items.items()):
        density = np.asarray(d.density, dtype=np.float64)
        shown = np.where(density > 0, density, np.nan) if log else density
        ax.plot(d.grid, shown, color=f"C{k}", linewidth=1.2, label=name if len(items) > 1 else None)
        curves.append({"name": name, "grid": np.asarray(d.grid), "density": density, "sigma": float(d.sigma)})
        drawn.append(density)
    x_range = list(_finite_range([c["grid"] for c in curves]) or (0.0, 1.0))
    ax.set_xlim(*x_range)
    if log:
        _log_scale(ax, drawn)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log)" if log else "density")
    _legend_outside(ax)
    first = next(iter(items.values()))
    ax.set_title(title or (f"{first.meta.get('checkpoint', '')} Hessian spectrum" if len(items) == 1
                           else "Hessian spectra"))
    caps = []
    for name, d in items.items():
        m = d.meta
        caps.append(f"{name}: {m.get('checkpoint', '?')} on {m.get('data', '?')} "
                    f"({m.get('n_samples', m.get('samples', '?'))} samples), {m.get('n_probes', '?')} Gaussian "
                    f"probes x {m.get('steps', '?')} steps (seed {m.get('seed', '?')}), sigma {d.sigma:.3g}, "
                    f"{m.get('params', 'all')} parameters, {m.get('dtype', '?')}")
    cap = ("Hessian eigenvalue density by stochastic Lanczos quadrature, Gaussian smoothing, shared x range. "
           + "; ".join(caps) + ".")
    values = {"curves": curves, "x_range": x_range, "log": log}
    if len(items) == 1:
        values.update(grid=curves[0]["grid"], density=curves[0]["density"], sigma=curves[0]["sigma"],
                      nodes=np.asarray(first.nodes), weights=np.asarray(first.weights))
    return Plot(fig, values, cap, "spectral_density")


# -- per-layer spectra ---------------------------------------------------------------------
def layer_spectra(spectra, *, log: bool = True, sharex: bool = True, title: str | None = None) -> Plot:
    """Per-layer Hessian densities stacked by depth (first layer on top), models overlaid in each row.

    Parameters
    ----------
    spectra : LayerSpectra, mapping of name to LayerSpectra, or sequence
        From :func:`landscape.layer_spectra`; rows are the union of their groups, in depth order.
    log : bool
        Logarithmic density axes.
    sharex : bool
        One eigenvalue axis for every row (default), so that the layers' scales compare directly.
    title : str, optional

    Returns
    -------
    Plot
        ``values``: ``groups``, ``models``, ``x_range`` and ``panels`` (per group and model:
        ``grid``, ``density``, ``lam_min``, ``lam_max``, ``trace``, ``size``).
    """
    import matplotlib.pyplot as plt

    items = _named(spectra, "LayerSpectra")
    groups: list[str] = []
    for sp in items.values():
        groups += [g for g in sp.names if g not in groups]
    fig, axes = plt.subplots(len(groups), 1, figsize=(7.6, 1.25 * len(groups) + 1.2), sharex=sharex, squeeze=False,
                             layout="constrained")
    panels = []
    for row, g in enumerate(groups):
        ax, drawn = axes[row, 0], []
        for k, (name, sp) in enumerate(items.items()):
            if g not in sp.names:
                continue
            i = sp.names.index(g)
            density = np.asarray(sp.density[i], np.float64)
            ax.plot(sp.grid, np.where(density > 0, density, np.nan) if log else density, color=f"C{k}",
                    linewidth=1.1, label=name if row == 0 else None)
            drawn.append(density)
            panels.append({"group": g, "model": name, "grid": np.asarray(sp.grid), "density": density,
                           "size": int(sp.sizes[i]), "lam_min": float(sp.lam_min[i]),
                           "lam_max": float(sp.lam_max[i]), "trace": float(sp.trace[i])})
        if log:
            _log_scale(ax, drawn)
        size = next(int(sp.sizes[sp.names.index(g)]) for sp in items.values() if g in sp.names)
        ax.set_ylabel(f"{g}\n({size})", rotation=0, ha="right", va="center", fontsize=8)
        ax.tick_params(labelsize=7)
    x_range = list(_finite_range([p["grid"] for p in panels]) or (0.0, 1.0))
    if sharex:
        axes[0, 0].set_xlim(*x_range)
    axes[-1, 0].set_xlabel("eigenvalue of the layer's Hessian block")
    _legend_outside(axes[0, 0])
    fig.suptitle(title or "Per-layer Hessian spectra, by depth")
    first = next(iter(items.values()))
    m = first.meta
    cap = (f"Spectral densities of the Hessian blocks H_ll of each parameter group ({m.get('groups', 'layer')}; "
           f"row label: group and its number of parameters), first layer on top, by stochastic Lanczos quadrature "
           f"({m.get('n_probes', '?')} probes x {m.get('steps', '?')} steps, seed {m.get('seed', '?')}; one Gaussian "
           f"smoothing width for all layers) on "
           f"{m.get('data', '?')} ({m.get('n_samples', '?')} samples); models: {', '.join(items)}.")
    return Plot(fig, {"groups": groups, "models": list(items), "x_range": x_range, "panels": panels}, cap,
                "layer_spectra")


TABLE_COLUMNS = ("model", "group", "size", "lambda_min", "lambda_max", "trace", "trace stderr")


def layer_table(spectra) -> Plot:
    """Table of the per-layer extremes and traces, one row per model and group.

    Returns
    -------
    Plot
        ``values["rows"]``: dicts with ``model``, ``group``, ``size``, ``lam_min``, ``lam_max``,
        ``trace``, ``trace_stderr``.
    """
    import matplotlib.pyplot as plt

    items = _named(spectra, "LayerSpectra")
    rows = [{"model": name, **row} for name, sp in items.items() for row in sp.table()]
    cells = [[r["model"], r["group"], str(r["size"]), f"{r['lam_min']:.4g}", f"{r['lam_max']:.4g}",
              f"{r['trace']:.4g}", f"{r['trace_stderr']:.2g}"] for r in rows]
    fig, ax = plt.subplots(figsize=(8.0, 0.6 + 0.3 * len(rows)))
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=list(TABLE_COLUMNS), loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(TABLE_COLUMNS))))
    m = next(iter(items.values())).meta
    cap = (f"Per-layer Hessian blocks: extremes by Lanczos (tol {m.get('tol', '?')} x spectral radius), trace by "
           f"{m.get('trace_method', 'hutchinson')} with {m.get('trace_probes', '?')} probes (stderr = standard "
           "error of the probe mean).")
    return Plot(fig, {"rows": rows}, cap, "layer_table")


# -- eigenvector planes --------------------------------------------------------------------
def _eigen_axis(dirs_meta: dict, i: int) -> str:
    """``"v_max (lambda = 9.38)"``: the eigenvector an axis follows, with its eigenvalue."""
    name = ("v_max", "v_min")[i] if dirs_meta.get("which") == "BE" else f"v_{i + 1}"
    lam = list(dirs_meta.get("eigenvalues") or [])
    return f"{name} (lambda = {lam[i]:.4g})" if i < len(lam) else name


def hessian_plane(surfs, *, log: bool = False, n_levels: int = 20, title: str | None = None) -> Plot:
    """Loss contours over planes spanned by Hessian eigenvectors (e.g. ``(v_max, v_min)``), on shared levels.

    Parameters
    ----------
    surfs : Surface, mapping of name to Surface, or sequence
        Surfaces computed along :func:`landscape.hessian_directions`.
    log : bool
    n_levels : int
    title : str, optional

    Returns
    -------
    Plot
        As :func:`viz.surface.compare`, plus ``eigenvalues`` per panel.
    """
    items = _named(surfs, "Surface")
    plot = compare_surfaces(list(items.values()), titles=list(items), log=log, n_levels=n_levels)
    for ax, (name, s), panel in zip(plot.fig.axes, items.items(), plot.values["panels"]):
        d = (s.meta.get("directions") or {}).get("meta", {})
        ax.set_xlabel(_eigen_axis(d, 0))
        ax.set_ylabel(_eigen_axis(d, 1))
        panel["eigenvalues"] = list(d.get("eigenvalues") or [])
    if title:
        plot.fig.suptitle(title)
    d = (next(iter(items.values())).meta.get("directions") or {}).get("meta", {})
    plot.caption = (f"Loss over the plane of the Hessian's eigenvectors ({d.get('which', '?')}, "
                    f"{d.get('scale', 'unit')} norm; near the centre the loss is L0 + lambda t^2 / 2 along each): "
                    + plot.caption)
    plot.kind = "hessian_plane"
    return plot
