"""Figures of loss surfaces and curves: contours, filled maps, 3D views, 1D curves, side by side; VTK export.

Every function takes a :class:`landscape.surface.Surface` (or ``Curve``) and returns a
:class:`viz.figure.Plot` whose ``values`` hold exactly the numbers drawn. Non-finite values
(a diverged loss) are masked in the figure and stored as NaN (JSON null) in ``values``.
Coordinates follow the result: ``loss[j, i]`` is drawn at ``(x[i], y[j])``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .figure import Plot

FIELDS = ("loss", "accuracy", "ce_loss")


# -- helpers ---------------------------------------------------------------------------------
def _field(result, field: str) -> np.ndarray:
    from landscape.errors import ArgumentError

    if field not in FIELDS:
        raise ArgumentError(f"field {field!r} is not one of {FIELDS}.")
    value = getattr(result, field, None)
    if value is None:
        raise ArgumentError(f"this result has no {field!r}; compute it with with_ce=True (--ce).")
    return np.asarray(value, dtype=np.float64)


def masked(values: np.ndarray, log: bool = False) -> np.ndarray:
    """A float copy with NaN where a value is not finite (or not positive on a log scale)."""
    out = np.array(values, dtype=np.float64)
    bad = ~np.isfinite(out) | ((out <= 0) if log else False)
    out[bad] = np.nan
    return out


def levels_for(arrays: Sequence[np.ndarray], n: int = 20, log: bool = False) -> np.ndarray:
    """Round contour levels covering the finite values of all ``arrays``, at most ``n + 1`` of them.

    Linear levels are equally spaced with a step of 1, 2, 2.5 or 5 times a power of ten
    (matplotlib's ``MaxNLocator``, the locator ``contour`` itself uses), from the last level at
    or below the smallest value to the first at or above the largest. Log levels are 1-2-...-9,
    1-2-5, 1-3 or 1 times powers of ten (the densest set with at most ``n + 1`` levels; every
    k-th decade for ranges wider than ``n`` decades).
    """
    finite = np.concatenate([masked(a, log)[np.isfinite(masked(a, log))] for a in arrays])
    if finite.size == 0:
        return np.array([0.0, 1.0]) if not log else np.array([1.0, 10.0])
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi)):  # a flat surface still gets distinct levels around its value
        pad = 1e-3 * (abs(lo) or 1.0)
        lo, hi = (lo / (1 + 1e-3), hi * (1 + 1e-3)) if log else (lo - pad, hi + pad)
    return _log_levels(lo, hi, n) if log else _linear_levels(lo, hi, n)


def _bracket(levels: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The levels from the last one at or below ``lo`` to the first one at or above ``hi``."""
    first = max(int(np.searchsorted(levels, lo, side="right")) - 1, 0)
    last = min(int(np.searchsorted(levels, hi, side="left")), len(levels) - 1)
    return levels[first:last + 1]


def _linear_levels(lo: float, hi: float, n: int) -> np.ndarray:
    import math

    from matplotlib.ticker import MaxNLocator

    ticks = MaxNLocator(nbins=max(int(n), 1), steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
    step = float(np.median(np.diff(ticks)))  # MaxNLocator's round step, with its float noise rounded off below
    digits = 3 - int(np.floor(np.log10(step)))
    step = round(step, digits)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    levels = np.round(np.arange(first, last + 1) * step, digits)  # exact multiples of the step, as printed
    if levels[0] > lo:  # a value within rounding of a level still lies inside the levels
        levels = np.concatenate([[round(levels[0] - step, digits)], levels])
    if levels[-1] < hi:
        levels = np.concatenate([levels, [round(levels[-1] + step, digits)]])
    return levels if len(levels) >= 2 else np.array([levels[0], round(levels[0] + step, digits)])


def _log_levels(lo: float, hi: float, n: int) -> np.ndarray:
    decades = np.arange(np.floor(np.log10(lo)), np.ceil(np.log10(hi)) + 1)
    for subs in ((1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 5), (1, 3), (1,)):
        levels = _bracket(np.outer(10.0 ** decades, subs).ravel(), lo, hi)
        if len(levels) <= n + 1:
            break
    else:  # more than n decades: every k-th power of ten
        stride = int(np.ceil((len(decades) - 1) / max(int(n), 1)))
        levels = 10.0 ** np.arange(decades[0], decades[-1] + stride, stride)
        levels = _bracket(levels, lo, hi)
    return levels if len(levels) >= 2 else np.array([levels[0], levels[0] * 10.0])


def caption(result, field: str = "loss") -> str:
    """What was computed: checkpoint, data, grid, directions, seed."""
    m = result.meta
    d = (m.get("directions") or {}).get("meta", {})
    kind = d.get("kind", "?")
    how = f"{kind} directions" + (f" (norm {d.get('norm')}, ignore {d.get('ignore')}, seed {d.get('seed')})"
                                   if kind == "random" else "")
    if hasattr(result, "t"):
        where = f"{len(result.t)} points on t in [{result.t[0]:g}, {result.t[-1]:g}]"
    else:
        where = (f"{len(result.x)} x {len(result.y)} grid over x in [{result.x[0]:g}, {result.x[-1]:g}], "
                 f"y in [{result.y[0]:g}, {result.y[-1]:g}]")
    return (f"{field} ({m.get('criterion', '?')}) of {m.get('checkpoint', '?')} on {m.get('data', '?')} "
            f"({m.get('n_samples', '?')} samples); {where}; {how}.")


def _centre(surf) -> list[float] | None:
    inside = surf.x.min() <= 0 <= surf.x.max() and surf.y.min() <= 0 <= surf.y.max()
    return [0.0, 0.0] if inside else None


def axis_labels(result) -> tuple[str, str]:
    """Axis labels of a plane: ``PC1 (62.1% of variance)`` for PCA directions, else ``direction 1 (a)``.

    PCA directions of a training trajectory are labelled with the share of its variance each
    explains, as in Li et al. (Fig. 9).
    """
    d = (result.meta.get("directions") or {}).get("meta", {})
    ratio = d.get("explained_variance_ratio")
    if d.get("kind") == "pca" and ratio is not None and len(ratio) >= 2:
        return tuple(f"PC{i + 1} ({100 * float(r):.1f}% of variance)" for i, r in enumerate(ratio[:2]))
    return "direction 1 (a)", "direction 2 (b)"


def _norm(log: bool, levels: np.ndarray):
    from matplotlib.colors import LogNorm, Normalize

    return LogNorm(levels[0], levels[-1]) if log else Normalize(levels[0], levels[-1])


# -- axes-level --------------------------------------------------------------------------------
def draw_contour(ax, surf, levels=None, *, field: str = "loss", log: bool = False, n_levels: int = 20,
                 filled: bool = False, label: bool = True, cmap: str = "viridis") -> dict:
    """Draw the contour of ``surf`` on a matplotlib ``ax`` and return the values drawn.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    surf : Surface
    levels : array-like, optional
        Contour levels; default :func:`levels_for` of the surface.
    field : {"loss", "accuracy", "ce_loss"}
    log : bool
        Geometric levels and a log colour scale.
    n_levels : int
        Number of levels when ``levels`` is not given.
    filled : bool
        Filled contours (``contourf``) instead of lines.
    label : bool
        Label the line levels inline.
    cmap : str

    Returns
    -------
    dict
        ``x``, ``y``, ``field``, ``levels``, ``centre`` and the masked array under the field's name
        (the values to put in a :class:`Plot`), plus ``"_artist"``, the matplotlib contour set
        (for a colour bar; keys starting with ``_`` are not plotted values).
    """
    z = masked(_field(surf, field), log)
    levels = levels_for([z], n_levels, log) if levels is None else np.asarray(levels, dtype=np.float64)
    zm = np.ma.masked_invalid(z)
    draw = ax.contourf if filled else ax.contour
    cs = draw(surf.x, surf.y, zm, levels=levels, cmap=cmap, norm=_norm(log, levels),
              **({} if filled else {"linewidths": 0.9}))
    if label and not filled:
        ax.clabel(cs, inline=True, fontsize=7, fmt="%.3g")
    centre = _centre(surf)
    if centre is not None:
        ax.plot(*centre, marker="*", color="red", markersize=10, linestyle="none", label="trained weights")
    xlabel, ylabel = axis_labels(surf)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_aspect("auto")
    return {"x": surf.x, "y": surf.y, "field": field, field: z, "levels": levels, "centre": centre,
            "_artist": cs}


def _plot(fig, values: dict, caption_text: str, kind: str) -> Plot:
    return Plot(fig, {k: v for k, v in values.items() if not k.startswith("_")}, caption_text, kind)


# -- figures -----------------------------------------------------------------------------------
def contour(surf, levels=None, *, field: str = "loss", log: bool = False, n_levels: int = 20,
            title: str | None = None) -> Plot:
    """Contour lines with labelled levels and the trained weights (the centre) marked.

    Parameters
    ----------
    surf : Surface
    levels : array-like, optional
        Contour levels (default: ``n_levels`` over the finite range; geometric when ``log``).
    field : {"loss", "accuracy", "ce_loss"}
    log : bool
    n_levels : int
    title : str, optional
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    values = draw_contour(ax, surf, levels, field=field, log=log, n_levels=n_levels)
    ax.set_title(title or f"{surf.meta.get('checkpoint', '')} {field}")
    return _plot(fig, values, caption(surf, field), "contour")


def contourf(surf, levels=None, *, field: str = "loss", log: bool = False, n_levels: int = 20,
             heatmap: bool = False, cmap: str = "viridis", title: str | None = None) -> Plot:
    """Filled contours (or, with ``heatmap=True``, a cell-per-point heat map) with a colour bar."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    if heatmap:
        z = masked(_field(surf, field), log)
        levels = levels_for([z], n_levels, log) if levels is None else np.asarray(levels, dtype=np.float64)
        artist = ax.pcolormesh(surf.x, surf.y, np.ma.masked_invalid(z), shading="nearest", cmap=cmap,
                               norm=_norm(log, levels))
        centre = _centre(surf)
        if centre is not None:
            ax.plot(*centre, marker="*", color="red", markersize=10, linestyle="none")
        values = {"x": surf.x, "y": surf.y, "field": field, field: z, "levels": levels, "centre": centre}
    else:
        values = draw_contour(ax, surf, levels, field=field, log=log, n_levels=n_levels, filled=True, cmap=cmap)
        artist = values["_artist"]
    fig.colorbar(artist, ax=ax, label=field)
    xlabel, ylabel = axis_labels(surf)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{surf.meta.get('checkpoint', '')} {field}")
    return _plot(fig, values, caption(surf, field), "heatmap" if heatmap else "contourf")


def surface3d(surf, interactive: bool = True, *, field: str = "loss", log: bool = False,
              title: str | None = None) -> Plot:
    """3D surface: interactive plotly (self-contained HTML on save) or a static matplotlib view.

    With ``log`` the height is ``log10`` of the field; ``values["z"]`` is the height drawn.
    """
    z = masked(_field(surf, field), log)
    height = np.log10(z) if log else z
    title = title or f"{surf.meta.get('checkpoint', '')} {field}{' (log10)' if log else ''}"
    values = {"x": surf.x, "y": surf.y, "field": field, "z": height, "log": log}
    if interactive:
        import plotly.graph_objects as go

        fig = go.Figure(go.Surface(x=surf.x, y=surf.y, z=np.where(np.isfinite(height), height, None),
                                   colorscale="Viridis", colorbar={"title": field}))
        fig.update_layout(title=title, scene={"xaxis_title": "a", "yaxis_title": "b",
                                              "zaxis_title": f"log10 {field}" if log else field},
                          margin={"l": 0, "r": 0, "t": 40, "b": 0})
    else:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(6, 4.8))
        ax = fig.add_subplot(projection="3d")
        gx, gy = np.meshgrid(surf.x, surf.y)
        ax.plot_surface(gx, gy, np.ma.masked_invalid(height), cmap="viridis", linewidth=0, antialiased=True)
        ax.set_xlabel("a")
        ax.set_ylabel("b")
        ax.set_zlabel(f"log10 {field}" if log else field)
        ax.set_title(title)
    return _plot(fig, values, caption(surf, field), "surface3d")


def _draw_line(ax_loss, ax_acc, line, log: bool, colors: tuple[str, str], name: str = "") -> dict:
    """Draw one :class:`Curve`: its loss (plain CE dashed when computed) on ``ax_loss``, accuracy on ``ax_acc``."""
    values = {"t": line.t, "loss": masked(line.loss, log), "accuracy": masked(line.accuracy)}
    prefix = f"{name}: " if name else ""
    ax_loss.plot(line.t, np.ma.masked_invalid(values["loss"]), color=colors[0],
                 label=f"{prefix}loss ({line.meta.get('criterion', '')})")
    if line.ce_loss is not None:
        values["ce_loss"] = masked(line.ce_loss, log)
        ax_loss.plot(line.t, np.ma.masked_invalid(values["ce_loss"]), color=colors[0], linestyle="--",
                     label=f"{prefix}CE")
    ax_acc.plot(line.t, np.ma.masked_invalid(values["accuracy"]), color=colors[1], label=f"{prefix}accuracy")
    return values


def _legend_outside(fig, axes) -> None:
    """One legend for all ``axes``, below them and outside every axes, so that it never covers a curve."""
    handles, labels = [], []
    for ax in axes:
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), fontsize=8, frameon=False)


def curve(line, *, log: bool = False, title: str | None = None) -> Plot:
    """1D loss curve with accuracy on a twin axis (and plain CE dashed when computed); legend below the axes."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.2), layout="constrained")
    twin = ax.twinx()
    values = _draw_line(ax, twin, line, log, ("tab:blue", "tab:red"))
    values["log"] = log
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("loss", color="tab:blue")
    twin.set_ylabel("accuracy", color="tab:red")
    twin.set_ylim(0, 1.02)
    ax.axvline(0.0, color="grey", linewidth=0.6)
    _legend_outside(fig, [ax, twin])
    ax.set_title(title or f"{line.meta.get('checkpoint', '')} along a line")
    return _plot(fig, values, caption(line), "curve")


def curves(lines, titles: Sequence[str] | None = None, *, log: bool = False, title: str | None = None) -> Plot:
    """Loss and accuracy curves of several models overlaid on one shared ``t`` range (e.g. CE, MAM, A2).

    Two panels share the x axis: the loss (plain CE dashed when computed) and the accuracy,
    one colour per model; the legend sits below the panels, outside both.

    Parameters
    ----------
    lines : sequence of Curve, or mapping of name to Curve
    titles : sequence of str, optional
        Model names in the legend (default: the mapping's keys, else each curve's checkpoint).
    log : bool
        Logarithmic loss axis.
    title : str, optional

    Returns
    -------
    Plot
        ``values``: ``t_range`` (the shared x limits), ``log`` and ``curves``, one entry per model
        with its ``title``, ``t``, ``loss``, ``accuracy`` (and ``ce_loss``).
    """
    import matplotlib.pyplot as plt

    from landscape.errors import ArgumentError

    if isinstance(lines, dict):
        titles, lines = list(lines) if titles is None else titles, list(lines.values())
    lines = list(lines)
    if not lines:
        raise ArgumentError("curves needs at least one Curve.")
    titles = list(titles) if titles is not None else [c.meta.get("checkpoint", f"#{k}") for k, c in enumerate(lines)]
    if len(titles) != len(lines):
        raise ArgumentError(f"{len(titles)} titles for {len(lines)} curves.")
    fig, (ax, acc) = plt.subplots(1, 2, figsize=(10.0, 4.2), sharex=True, layout="constrained")
    drawn = []
    for k, (line, name) in enumerate(zip(lines, titles)):
        color = f"C{k % 10}"
        drawn.append({"title": name, **_draw_line(ax, acc, line, log, (color, color), name)})
    t_range = [float(min(np.min(c.t) for c in lines)), float(max(np.max(c.t) for c in lines))]
    ax.set_xlim(*t_range)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    acc.set_ylabel("accuracy")
    acc.set_ylim(0, 1.02)
    for a in (ax, acc):
        a.set_xlabel("t")
        a.axvline(0.0, color="grey", linewidth=0.6)
    _legend_outside(fig, [ax])  # the accuracy lines share the models' colours
    fig.suptitle(title or "loss along a line: " + ", ".join(titles))
    cap = " | ".join(f"{name}: {caption(line)}" for name, line in zip(titles, lines))
    return Plot(fig, {"t_range": t_range, "log": log, "curves": drawn}, cap, "curves")


def compare(surfs: Sequence, titles: Sequence[str] | None = None, levels=None, *, field: str = "loss",
            log: bool = False, n_levels: int = 20, filled: bool = False) -> Plot:
    """Several surfaces side by side on shared contour levels (e.g. CE beside MAM-SoftMax).

    ``values["levels"]`` are the shared levels and ``values["panels"]`` the per-panel arrays.
    """
    import matplotlib.pyplot as plt

    from landscape.errors import ArgumentError

    surfs = list(surfs)
    if not surfs:
        raise ArgumentError("compare needs at least one surface.")
    titles = list(titles) if titles is not None else [s.meta.get("checkpoint", f"#{k}") for k, s in enumerate(surfs)]
    if len(titles) != len(surfs):
        raise ArgumentError(f"{len(titles)} titles for {len(surfs)} surfaces.")
    shared = levels_for([_field(s, field) for s in surfs], n_levels, log) if levels is None \
        else np.asarray(levels, dtype=np.float64)
    fig, axes = plt.subplots(1, len(surfs), figsize=(4.6 * len(surfs), 4.2), squeeze=False, layout="constrained")
    panels = []
    for ax, s, t in zip(axes[0], surfs, titles):
        v = draw_contour(ax, s, shared, field=field, log=log, filled=filled)
        ax.set_title(t)
        panels.append({"title": t, "x": v["x"], "y": v["y"], field: v[field]})
    if filled:
        fig.colorbar(v["_artist"], ax=list(axes[0]), label=field)
    return Plot(fig, {"field": field, "levels": shared, "panels": panels, "log": log},
                " | ".join(caption(s, field) for s in surfs), "compare")


def trajectory(surf, coords: np.ndarray, levels=None, *, log: bool = False, n_levels: int = 20) -> Plot:
    """Contour of a surface over PCA directions with the training path (``Directions.coords``) drawn on it.

    The axes are labelled ``PC1``/``PC2`` with the share of the trajectory's variance each
    explains, from the directions' meta (:func:`landscape.trajectory_directions`), as Li et al. do.
    """
    import matplotlib.pyplot as plt

    coords = np.asarray(coords, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    values = draw_contour(ax, surf, levels, log=log, n_levels=n_levels)
    ax.plot(coords[:, 0], coords[:, 1], "-o", color="black", markersize=2.5, linewidth=1, label="trajectory")
    values["path"] = coords
    return _plot(fig, values, caption(surf) + f" Path of {len(coords)} snapshots.", "trajectory")


# -- export ------------------------------------------------------------------------------------
def to_vtk(surf, path, *, field: str = "loss", log: bool = False) -> Path:
    """Write the surface as a legacy-VTK structured grid (``.vtk``) for ParaView.

    Points are ``(x[i], y[j], height)`` with the height the field (``log10`` of it with
    ``log``); non-finite heights are placed at the largest finite height and flagged 0 in the
    point array ``valid``. Point arrays: the field, ``accuracy`` and ``valid``.
    """
    from landscape.io import atomic_path

    path = Path(path)
    if path.suffix != ".vtk":
        path = path.with_name(path.name + ".vtk")
    z = masked(_field(surf, field), log)
    height = np.log10(z) if log else z
    valid = np.isfinite(height)
    top = float(height[valid].max()) if valid.any() else 0.0
    height = np.where(valid, height, top)
    gx, gy = np.meshgrid(surf.x, surf.y)  # VTK's x index varies fastest, as in loss[j, i]
    n = gx.size
    lines = ["# vtk DataFile Version 3.0", f"landscape {field} surface of {surf.meta.get('checkpoint', '')}", "ASCII",
             "DATASET STRUCTURED_GRID", f"DIMENSIONS {len(surf.x)} {len(surf.y)} 1", f"POINTS {n} double"]
    lines += [f"{a:.10g} {b:.10g} {c:.10g}" for a, b, c in zip(gx.ravel(), gy.ravel(), height.ravel())]
    lines += [f"POINT_DATA {n}"]
    arrays = {field: np.where(valid, z, -1.0).ravel(), "accuracy": masked(surf.accuracy).ravel(),
              "valid": valid.astype(float).ravel()}
    for name, arr in arrays.items():
        lines += [f"SCALARS {name} double 1", "LOOKUP_TABLE default"]
        lines += [f"{v:.10g}" for v in np.nan_to_num(arr, nan=-1.0)]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


__all__ = ["contour", "contourf", "surface3d", "curve", "curves", "compare", "trajectory", "to_vtk", "draw_contour",
           "levels_for", "masked", "caption", "axis_labels"]
