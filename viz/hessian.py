"""Figures of Hessian curvature: eigenvalue-ratio maps (seed 002 Fig. 4.5) and spectral densities.

Nothing is computed here: every number drawn comes from an :class:`landscape.hessian.EigenMap`,
a :class:`landscape.surface.Surface` or a :class:`landscape.hessian.Density`.
"""
from __future__ import annotations

import numpy as np

from .figure import Plot
from .surface import caption as surface_caption
from .surface import draw_contour


def _map_caption(emap) -> str:
    m = emap.meta
    return (surface_caption(emap).replace("loss (", "Hessian extremes of the training loss (", 1)
            + f" Lanczos on Hessian-vector products ({m.get('params', 'all')} parameters, {m.get('dtype', '?')}), "
              f"residual <= {m.get('tol', '?')} x spectral radius; {int(np.sum(emap.hvps))} HVPs in all, "
              f"{int(np.sum(~np.asarray(emap.converged, bool)))} points unconverged.")


def _centre_marker(ax, x: np.ndarray, y: np.ndarray) -> None:
    if x.min() <= 0 <= x.max() and y.min() <= 0 <= y.max():
        ax.plot(0.0, 0.0, marker="*", color="red", markersize=10, linestyle="none")


def draw_map(ax, emap, field: str, *, cmap: str = "viridis", vmin: float | None = None,
             vmax: float | None = None, label: str | None = None) -> dict:
    """Draw ``emap.<field>`` as a colour map with a colour bar on ``ax``; return the values drawn.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    emap : EigenMap
    field : {"ratio", "lam_min", "lam_max", "hvps"}
    cmap : str
    vmin, vmax : float, optional
        Colour limits (default: the finite range of the field).
    label : str, optional
        Colour-bar label.

    Returns
    -------
    dict
        ``{field: array, field + "_limits": [vmin, vmax]}``.
    """
    z = np.asarray(getattr(emap, field), dtype=np.float64)
    finite = z[np.isfinite(z)]
    lo = float(finite.min()) if vmin is None and finite.size else (0.0 if vmin is None else float(vmin))
    hi = float(finite.max()) if vmax is None and finite.size else (1.0 if vmax is None else float(vmax))
    if hi <= lo:
        hi = lo + 1e-12
    mesh = ax.pcolormesh(emap.x, emap.y, np.ma.masked_invalid(z), cmap=cmap, vmin=lo, vmax=hi, shading="nearest")
    ax.figure.colorbar(mesh, ax=ax, label=label or field)
    _centre_marker(ax, emap.x, emap.y)
    ax.set_xlabel("direction 1 (a)")
    ax.set_ylabel("direction 2 (b)")
    return {field: z, f"{field}_limits": [lo, hi]}


def eigen_ratio(emap, surf=None, *, levels=None, log: bool = False, vmax: float | None = None,
                title: str | None = None) -> Plot:
    """The ratio map ``|lambda_min / lambda_max|`` beside the loss contour, with maps of both extremes.

    Four panels: the ratio in viridis from 0 (blue: locally convex) to ``vmax`` (yellow: strong
    negative curvature), the loss contour of the same plane, ``lambda_min`` (a diverging map
    centred on 0) and ``lambda_max``.

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
        Upper colour limit of the ratio (default its maximum), to share a scale across models.
    title : str, optional

    Returns
    -------
    Plot
        ``values``: ``x``, ``y``, ``ratio``, ``lam_min``, ``lam_max``, their colour limits, and
        the contour's ``loss``, ``levels``, ``contour_x``, ``contour_y``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    fig, axes = plt.subplots(2, 2, figsize=(10.5, 8.4), constrained_layout=True)
    values = {"x": np.asarray(emap.x), "y": np.asarray(emap.y)}
    values.update(draw_map(axes[0, 0], emap, "ratio", vmin=0.0, vmax=vmax, label="|lambda_min / lambda_max|"))
    axes[0, 0].set_title("eigenvalue ratio (blue: convex)")
    contour = draw_contour(axes[0, 1], surf if surf is not None else emap, levels, log=log)
    values.update({"loss": contour["loss"], "levels": contour["levels"], "contour_x": contour["x"],
                   "contour_y": contour["y"]})
    fig.colorbar(contour["_artist"], ax=axes[0, 1], label="loss")
    axes[0, 1].set_title("loss contour")
    lo = np.asarray(emap.lam_min, dtype=np.float64)
    span = float(np.nanmax(np.abs(lo))) or 1.0
    mesh = axes[1, 0].pcolormesh(emap.x, emap.y, lo, cmap="RdBu_r", shading="nearest",
                                 norm=TwoSlopeNorm(0.0, -span, span))
    fig.colorbar(mesh, ax=axes[1, 0], label="lambda_min")
    _centre_marker(axes[1, 0], emap.x, emap.y)
    axes[1, 0].set_xlabel("direction 1 (a)")
    axes[1, 0].set_ylabel("direction 2 (b)")
    axes[1, 0].set_title("smallest eigenvalue")
    values.update({"lam_min": lo, "lam_min_limits": [-span, span]})
    values.update(draw_map(axes[1, 1], emap, "lam_max", cmap="magma", label="lambda_max"))
    axes[1, 1].set_title("largest eigenvalue")
    fig.suptitle(title or f"{emap.meta.get('checkpoint', '')}: Hessian eigenvalue ratio")
    return Plot(fig, values, _map_caption(emap), "eigen_ratio")


def spectral_density(dens, *, log: bool = True, title: str | None = None) -> Plot:
    """The smoothed Hessian eigenvalue density from stochastic Lanczos quadrature.

    Parameters
    ----------
    dens : Density
    log : bool
        Logarithmic density axis (default), where the bulk near 0 and the outliers both show.
    title : str, optional

    Returns
    -------
    Plot
        ``values``: ``grid``, ``density``, ``sigma``, ``nodes``, ``weights``.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    density = np.asarray(dens.density, dtype=np.float64)
    shown = np.where(density > 0, density, np.nan) if log else density
    ax.plot(dens.grid, shown, color="C0", linewidth=1.2)
    if log:
        ax.set_yscale("log")
        finite = density[density > 0]
        if finite.size:  # Gaussian tails reach 1e-300; show the 12 decades that carry the spectrum
            ax.set_ylim(max(finite.min(), finite.max() * 1e-12), finite.max() * 3)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log)" if log else "density")
    m = dens.meta
    ax.set_title(title or f"{m.get('checkpoint', '')} Hessian spectrum")
    cap = (f"Hessian eigenvalue density of {m.get('checkpoint', '?')} on {m.get('data', '?')} "
           f"({m.get('samples', '?')} samples) by stochastic Lanczos quadrature: {m.get('n_probes', '?')} Gaussian "
           f"probes x {m.get('steps', '?')} steps (seed {m.get('seed', '?')}), Gaussian smoothing sigma "
           f"{dens.sigma:.3g}; {m.get('params', 'all')} parameters, {m.get('dtype', '?')}.")
    values = {"grid": np.asarray(dens.grid), "density": density, "sigma": float(dens.sigma),
              "nodes": np.asarray(dens.nodes), "weights": np.asarray(dens.weights)}
    return Plot(fig, values, cap, "spectral_density")
