"""Figures of loss phenotypes.

Binary curves (seed 003 Fig. 5, seed 001 Fig. 1), 3D surfaces (seed 003 Figs. 6-7) and
normalised differences (seed 003 Fig. 8).

Every function takes :class:`landscape.phenotype.Phenotype` or
:class:`~landscape.phenotype.PhenotypeDifference` results and draws them; nothing is computed
here beyond colour limits.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from landscape.errors import ArgumentError
from landscape.phenotype import Phenotype, PhenotypeDifference

from .figure import Plot

Y_LABEL, YHAT_LABEL = "y (target)", "ŷ (predicted probability)"
_REFERENCE_NAMES = {"ce", "cross-entropy", "crossentropy"}


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
                     panels: Sequence[str] = ("raw", "normalized"), title: str | None = None) -> Plot:
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

    Returns
    -------
    Plot
        ``values``: ``yhat`` and, per label, the ``raw`` and ``normalized`` curves.
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
    if reference == "auto":
        reference = next((lab for lab in labels if lab.lower() in _REFERENCE_NAMES), None)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), constrained_layout=True, squeeze=False)
    axes = axes[0]
    values = {"yhat": yhat, **{key: {} for key in panels}}
    for ax, key in zip(axes, panels):
        title_ = "normalised" if key == "normalized" else key
        for ph, label in zip(phenotypes, labels):
            curve = ph.binary_raw if key == "raw" else ph.binary_normalized
            style = {"color": "black", "linestyle": "--", "linewidth": 2} if label == reference else {"linewidth": 1.6}
            ax.plot(yhat, curve, label=label, **style)
            values[key][label] = curve
        ax.set_title(title_)
        ax.set_xlabel(YHAT_LABEL)
        ax.set_ylabel("loss at y = 1" + (" (min-max)" if key == "normalized" else ""))
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    caption = (f"Binary phenotype (y = 1) of {', '.join(labels)} on {len(yhat)} points over ŷ in [0, 1]; "
               "two-class convention (targets (y, 1-y), predictions (ŷ, 1-ŷ), summed); normalised = min-max "
               "over each curve.")
    return Plot(fig, values, caption, "phenotype_curves")


def _surface_caption(what: str, ph_grid: Phenotype | PhenotypeDifference) -> str:
    n = len(ph_grid.y)
    return f"{what} on a {n} x {n} grid over (y, ŷ) in [0, 1]^2; two-class convention, summed over both classes."


def phenotype_surface(ph: Phenotype, interactive: bool = True, normalized: bool = False) -> Plot:
    """The 3D phenotype ``L(y, yh)`` over ``[0, 1]^2`` (seed 003 Figs. 6, 7, 10-27).

    Parameters
    ----------
    ph : Phenotype
    interactive : bool
        A plotly surface (self-contained HTML when saved) or a static matplotlib 3D view.
    normalized : bool
        Draw the min-max normalised values instead of the raw loss.

    Returns
    -------
    Plot
        ``values``: ``y``, ``yhat`` and ``z`` (``z[i, j]`` at ``y[j], yhat[i]``).
    """
    z = ph.normalized if normalized else ph.raw
    which = "normalised" if normalized else "raw"
    values = {"y": ph.y, "yhat": ph.yhat, "z": z, "which": which, "loss": ph.label}
    title = f"{which} phenotype of {ph.label}"
    if interactive:
        import plotly.graph_objects as go

        fig = go.Figure(go.Surface(x=ph.y, y=ph.yhat, z=z, colorscale="Viridis", colorbar={"title": "loss"}))
        fig.update_layout(title=title, width=750, height=650, scene={
            "xaxis_title": Y_LABEL, "yaxis_title": YHAT_LABEL, "zaxis_title": f"{which} loss",
            "camera": {"eye": {"x": -1.6, "y": -1.6, "z": 1.0}}})
    else:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(6.5, 5.5), constrained_layout=True)
        ax = fig.add_subplot(projection="3d")
        yy, hh = np.meshgrid(ph.y, ph.yhat)
        ax.plot_surface(yy, hh, z, cmap="viridis", linewidth=0, antialiased=True, rcount=len(ph.yhat),
                        ccount=len(ph.y))
        ax.set(xlabel=Y_LABEL, ylabel=YHAT_LABEL, zlabel=f"{which} loss", title=title)
        ax.view_init(elev=25, azim=-135)
    return Plot(fig, values, _surface_caption(f"{which.capitalize()} phenotype of {ph.label}", ph), "phenotype_surface")


def phenotype_difference(diff: PhenotypeDifference, interactive: bool = False) -> Plot:
    """``normalised(A) - normalised(B)`` over ``[0, 1]^2`` with a diverging colour map centred on 0 (seed 003 Fig. 8).

    Parameters
    ----------
    diff : PhenotypeDifference
    interactive : bool
        A plotly surface, or a static figure: the 3D surface beside a top view.

    Returns
    -------
    Plot
        ``values``: ``y``, ``yhat``, ``difference``, the symmetric ``color_limits`` and the
        location and size of the largest difference.
    """
    d = diff.difference
    bound = float(np.abs(d).max()) or 1.0
    a, b = diff.meta.get("loss_a", "A"), diff.meta.get("loss_b", "B")
    values = {"y": diff.y, "yhat": diff.yhat, "difference": d, "color_limits": [-bound, bound],
              "max": diff.meta.get("max"), "argmax": diff.meta.get("argmax")}
    title = f"normalised {a} - normalised {b}"
    if interactive:
        import plotly.graph_objects as go

        fig = go.Figure(go.Surface(x=diff.y, y=diff.yhat, z=d, colorscale="RdBu", reversescale=True,
                                   cmin=-bound, cmax=bound, colorbar={"title": "difference"}))
        fig.update_layout(title=title, width=750, height=650, scene={
            "xaxis_title": Y_LABEL, "yaxis_title": YHAT_LABEL, "zaxis_title": "difference",
            "camera": {"eye": {"x": -1.6, "y": -1.6, "z": 1.0}}})
    else:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(11, 4.8), constrained_layout=True)
        ax3 = fig.add_subplot(1, 2, 1, projection="3d")
        yy, hh = np.meshgrid(diff.y, diff.yhat)
        ax3.plot_surface(yy, hh, d, cmap="RdBu_r", vmin=-bound, vmax=bound, linewidth=0, rcount=len(diff.yhat),
                         ccount=len(diff.y))
        ax3.set(xlabel=Y_LABEL, ylabel=YHAT_LABEL, zlabel="difference", title=title)
        ax3.view_init(elev=25, azim=-135)
        ax2 = fig.add_subplot(1, 2, 2)
        mesh = ax2.pcolormesh(diff.y, diff.yhat, d, cmap="RdBu_r", vmin=-bound, vmax=bound, shading="nearest")
        ax2.set(xlabel=Y_LABEL, ylabel=YHAT_LABEL, title="top view", aspect="equal")
        fig.colorbar(mesh, ax=ax2, label="difference")
    top = diff.meta.get("argmax") or {}
    caption = (_surface_caption(f"Normalised {a} minus normalised {b}", diff)
               + (f" Largest difference {diff.meta['max']:.3f} at y = {top.get('y'):g}, ŷ = {top.get('yhat'):g}."
                  if "max" in diff.meta else ""))
    return Plot(fig, values, caption, "phenotype_difference")
