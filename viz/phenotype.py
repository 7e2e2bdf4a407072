"""Figures of loss phenotypes.

Binary curves (seed 003 Fig. 5, seed 001 Fig. 1), 3D surfaces (seed 003 Figs. 6-7) and
normalised differences (seed 003 Fig. 8).

Every function takes :class:`landscape.phenotype.Phenotype` or
:class:`~landscape.phenotype.PhenotypeDifference` results and draws them; nothing is computed
here beyond colour limits.

Endpoints: the first and last prediction rows of a phenotype grid (``yh = 0`` and ``1``, where
one class's probability is exactly zero, or ``eps`` from it) carry the values the ``eps`` guards
give there: walls (CE's ``-ln(eps) = 16.1``) and rows of exact zeros next to the real curve
(Fig. 8's difference is 0 at ``yh = 0`` and 0.177 at ``yh = 0.02``). By default
(``endpoints="omit"``) figures leave those rows out, so axes, colours and the caption's maximum
are those of the real surface; ``"mark"`` (curves) draws them as open markers, apart from the
curve; ``"include"`` draws everything, as the paper does. Normalised values stay min-max over
the whole grid (the paper's convention, which Fig. 8's numbers need).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from landscape.errors import ArgumentError, check_choice
from landscape.phenotype import Phenotype, PhenotypeDifference

from .figure import Plot

Y_LABEL, YHAT_LABEL = "y (target)", "ŷ (predicted probability)"
_REFERENCE_NAMES = {"ce", "cross-entropy", "crossentropy"}
ENDPOINTS = ("omit", "mark", "include")


def _rows(result: Phenotype | PhenotypeDifference, endpoints: str, allowed=ENDPOINTS) -> np.ndarray:
    """Boolean mask of the ``yhat`` rows drawn as the surface or curve."""
    check_choice(endpoints, "endpoints", allowed)
    return np.ones(len(result.yhat), bool) if endpoints == "include" else ~result.edges


def _endpoint_note(result: Phenotype | PhenotypeDifference, endpoints: str) -> str:
    if endpoints == "include" or not result.edges.any():
        return ""
    left = ", ".join(f"{v:g}" for v in result.yhat[result.edges])
    how = "drawn as open markers" if endpoints == "mark" else "left out"
    return (f" The endpoint rows ŷ = {left} (a class probability of 0, or eps from it, where the eps guards set "
            f"the value) are {how}; normalisation is over the whole grid.")


def _labels(phenotypes: Sequence[Phenotype]) -> list[str]:
    """Legend labels, made unique (two curves must not share a key in ``values``)."""
    seen: dict[str, int] = {}
    out = []
    for ph in phenotypes:
        label = ph.label
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def phenotype_curves(phenotypes: Sequence[Phenotype], reference: str | None = "auto",
                     panels: Sequence[str] = ("raw", "normalized"), title: str | None = None,
                     endpoints: str = "omit") -> Plot:
    """Binary phenotypes (``y = 1``) of several losses, raw and min-max normalised side by side.

    Parameters
    ----------
    phenotypes : sequence of Phenotype
        Computed on the same ``yhat`` grid (e.g. ``[ls.phenotype(n) for n in ("A2", "CE")]``).
    reference : str or None
        Label of the loss drawn as the black dashed reference; ``"auto"`` picks CE when present.
    panels : sequence of {"raw", "normalized"}
        Which panels to draw, in order (seed 003 Fig. 5 is ``("normalized",)``).
    title : str, optional
        Figure title.
    endpoints : {"omit", "mark", "include"}
        The rows ``yh = 0`` and ``1`` (module docstring).

    Returns
    -------
    Plot
        ``values``: ``yhat`` and, per label, the ``raw`` and ``normalized`` curves as drawn; with
        ``"mark"``, ``endpoints`` holds the endpoint ``yhat`` and values.
    """
    import matplotlib.pyplot as plt

    phenotypes = list(phenotypes)
    if not phenotypes:
        raise ArgumentError("phenotype_curves needs at least one phenotype, "
                            "e.g. [ls.phenotype('A2'), ls.phenotype('CE')].")
    yhat = phenotypes[0].yhat
    if any(ph.yhat.shape != yhat.shape or not np.allclose(ph.yhat, yhat) for ph in phenotypes):
        raise ArgumentError("phenotype_curves needs every phenotype on the same yhat grid; use one resolution.")
    panels = tuple(panels)
    if not panels or set(panels) - {"raw", "normalized"}:
        raise ArgumentError(f"panels must be a non-empty selection of 'raw' and 'normalized', got {panels!r}.")
    labels = _labels(phenotypes)
    rows = _rows(phenotypes[0], endpoints)
    if reference == "auto":
        reference = next((lab for lab in labels if lab.lower() in _REFERENCE_NAMES), None)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), constrained_layout=True, squeeze=False)
    axes = axes[0]
    values = {"yhat": yhat[rows], **{key: {} for key in panels}}
    if endpoints == "mark":
        values["endpoints"] = {"yhat": yhat[~rows], **{key: {} for key in panels}}
    for ax, key in zip(axes, panels):
        title_ = "normalised" if key == "normalized" else key
        for ph, label in zip(phenotypes, labels):
            curve = ph.binary_raw if key == "raw" else ph.binary_normalized
            style = {"color": "black", "linestyle": "--", "linewidth": 2} if label == reference else {"linewidth": 1.6}
            (line,) = ax.plot(yhat[rows], curve[rows], label=label, **style)
            values[key][label] = curve[rows]
            if endpoints == "mark":
                ax.plot(yhat[~rows], curve[~rows], linestyle="none", marker="o", markerfacecolor="none",
                        color=line.get_color(), markersize=5)
                values["endpoints"][key][label] = curve[~rows]
        ax.set_title(title_)
        ax.set_xlabel(YHAT_LABEL)
        ax.set_ylabel("loss at y = 1" + (" (min-max)" if key == "normalized" else ""))
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    caption = (f"Binary phenotype (y = 1) of {', '.join(labels)} on {len(yhat)} points over ŷ in [0, 1]; "
               "two-class convention (targets (y, 1-y), predictions (ŷ, 1-ŷ), summed); normalised = min-max "
               "over each curve." + _endpoint_note(phenotypes[0], endpoints))
    return Plot(fig, values, caption, "phenotype_curves")


def _surface_caption(what: str, ph_grid: Phenotype | PhenotypeDifference) -> str:
    n = len(ph_grid.y)
    return f"{what} on a {n} x {n} grid over (y, ŷ) in [0, 1]^2; two-class convention, summed over both classes."


def phenotype_surface(ph: Phenotype, interactive: bool = True, normalized: bool = False,
                      endpoints: str = "omit") -> Plot:
    """The 3D phenotype ``L(y, yh)`` over ``[0, 1]^2`` (seed 003 Figs. 6, 7, 10-27).

    Parameters
    ----------
    ph : Phenotype
    interactive : bool
        A plotly surface (self-contained HTML when saved) or a static matplotlib 3D view.
    normalized : bool
        Draw the min-max normalised values instead of the raw loss.
    endpoints : {"omit", "include"}
        The rows ``yh = 0`` and ``1`` (module docstring).

    Returns
    -------
    Plot
        ``values``: ``y``, ``yhat`` and ``z`` as drawn (``z[i, j]`` at ``y[j], yhat[i]``).
    """
    rows = _rows(ph, endpoints, ("omit", "include"))
    z = (ph.normalized if normalized else ph.raw)[rows]
    yhat = ph.yhat[rows]
    which = "normalised" if normalized else "raw"
    values = {"y": ph.y, "yhat": yhat, "z": z, "which": which, "loss": ph.label}
    title = f"{which} phenotype of {ph.label}"
    if interactive:
        import plotly.graph_objects as go

        fig = go.Figure(go.Surface(x=ph.y, y=yhat, z=z, colorscale="Viridis", colorbar={"title": "loss"}))
        fig.update_layout(title=title, width=750, height=650, scene={
            "xaxis_title": Y_LABEL, "yaxis_title": YHAT_LABEL, "zaxis_title": f"{which} loss",
            "camera": {"eye": {"x": -1.6, "y": -1.6, "z": 1.0}}})
    else:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(6.5, 5.5), constrained_layout=True)
        ax = fig.add_subplot(projection="3d")
        yy, hh = np.meshgrid(ph.y, yhat)
        ax.plot_surface(yy, hh, z, cmap="viridis", linewidth=0, antialiased=True, rcount=len(yhat),
                        ccount=len(ph.y))
        ax.set(xlabel=Y_LABEL, ylabel=YHAT_LABEL, zlabel=f"{which} loss", title=title)
        ax.view_init(elev=25, azim=-135)
    caption = _surface_caption(f"{which.capitalize()} phenotype of {ph.label}", ph) + _endpoint_note(ph, endpoints)
    return Plot(fig, values, caption, "phenotype_surface")


def diverging_colors(lo: float, hi: float, name: str = "RdBu_r"):
    """A colour map and norm that spend the whole colour bar on ``[lo, hi]`` and keep 0 at the centre colour.

    Both signs present: the diverging map with 0 at its centre (a two-slope norm, so neither side
    wastes colours on values that do not occur). One sign only: that half of the map (white to
    red for positive values), stretched over ``[0, hi]`` or ``[lo, 0]``.

    Returns
    -------
    (matplotlib.colors.Colormap, matplotlib.colors.Normalize, list)
        The map, its norm, and the same as a plotly colour scale (``[[t, "#rrggbb"], ...]``).
    """
    import matplotlib
    from matplotlib.colors import LinearSegmentedColormap, Normalize, TwoSlopeNorm, to_hex

    base = matplotlib.colormaps[name]
    if lo < 0 < hi:
        cmap, norm = base, TwoSlopeNorm(vmin=lo, vcenter=0.0, vmax=hi)
    else:
        half = np.linspace(0.5, 1.0, 128) if hi > 0 else np.linspace(0.0, 0.5, 128)
        lo, hi = (0.0, hi) if hi > 0 else (lo, 0.0)
        if lo == hi:
            lo, hi = -1.0, 1.0
        cmap, norm = LinearSegmentedColormap.from_list(f"{name}_half", base(half)), Normalize(lo, hi)
    ticks = np.linspace(norm.vmin, norm.vmax, 11)
    scale = [[float(t), to_hex(cmap(norm(v)))] for t, v in zip(np.linspace(0, 1, 11), ticks)]
    return cmap, norm, scale


def phenotype_difference(diff: PhenotypeDifference, interactive: bool = False, endpoints: str = "omit") -> Plot:
    """``normalised(A) - normalised(B)`` over ``[0, 1]^2`` with a diverging colour map centred on 0 (seed 003 Fig. 8).

    Parameters
    ----------
    diff : PhenotypeDifference
    interactive : bool
        A plotly surface, or a static figure: the 3D surface beside a top view.
    endpoints : {"omit", "include"}
        The rows ``yh = 0`` and ``1`` (module docstring).

    Returns
    -------
    Plot
        ``values``: ``y``, ``yhat``, ``difference`` as drawn, the ``color_limits`` (the drawn
        range: the whole colour bar is used, 0 at its centre colour) and the location and size of
        the largest difference off the endpoint rows.
    """
    rows = _rows(diff, endpoints, ("omit", "include"))
    d, yhat = diff.difference[rows], diff.yhat[rows]
    lo, hi = float(d.min()), float(d.max())
    cmap, norm, scale = diverging_colors(lo, hi)
    a, b = diff.meta.get("loss_a", "A"), diff.meta.get("loss_b", "B")
    top = diff.meta.get("argmax") or {}
    largest = diff.meta.get("max")  # off the endpoint rows (PhenotypeDifference.meta)
    values = {"y": diff.y, "yhat": yhat, "difference": d, "color_limits": [float(norm.vmin), float(norm.vmax)],
              "max": largest, "argmax": top, "ties": diff.meta.get("ties", [])}
    title = f"normalised {a} - normalised {b}"
    if interactive:
        import plotly.graph_objects as go

        fig = go.Figure(go.Surface(x=diff.y, y=yhat, z=d, colorscale=scale, cmin=norm.vmin, cmax=norm.vmax,
                                   colorbar={"title": "difference"}))
        fig.update_layout(title=title, width=750, height=650, scene={
            "xaxis_title": Y_LABEL, "yaxis_title": YHAT_LABEL, "zaxis_title": "difference",
            "camera": {"eye": {"x": -1.6, "y": -1.6, "z": 1.0}}})
    else:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(11, 4.8), constrained_layout=True)
        ax3 = fig.add_subplot(1, 2, 1, projection="3d")
        yy, hh = np.meshgrid(diff.y, yhat)
        ax3.plot_surface(yy, hh, d, cmap=cmap, norm=norm, linewidth=0, rcount=len(yhat), ccount=len(diff.y))
        ax3.set(xlabel=Y_LABEL, ylabel=YHAT_LABEL, zlabel="difference", title=title)
        ax3.view_init(elev=25, azim=-135)
        ax2 = fig.add_subplot(1, 2, 2)
        mesh = ax2.pcolormesh(diff.y, yhat, d, cmap=cmap, norm=norm, shading="nearest")
        ax2.set(xlabel=Y_LABEL, ylabel=YHAT_LABEL, title="top view", aspect="equal")
        fig.colorbar(mesh, ax=ax2, label="difference")
    mirror = (f" (and at its mirror image y = {diff.meta['ties'][0]['y']:g}, ŷ = {diff.meta['ties'][0]['yhat']:g}: "
              "the two-class sum is symmetric)" if diff.meta.get("ties") else "")
    caption = (_surface_caption(f"Normalised {a} minus normalised {b}", diff)
               + (f" Largest difference {largest:.3f} at y = {top.get('y'):g}, ŷ = {top.get('yhat'):g}{mirror}."
                  if largest is not None and top else "")
               + _endpoint_note(diff, endpoints))
    return Plot(fig, values, caption, "phenotype_difference")
