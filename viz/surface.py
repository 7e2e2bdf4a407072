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
    """``n`` contour levels spanning the finite values of all ``arrays`` (geometric when ``log``)."""
    finite = np.concatenate([masked(a, log)[np.isfinite(masked(a, log))] for a in arrays])
    if finite.size == 0:
        return np.array([0.0, 1.0]) if not log else np.array([1.0, 10.0])
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:  # a flat surface still gets two distinct levels
        hi = lo + 1e-9 * max(1.0, abs(lo))
    return np.geomspace(lo, hi, n) if log else np.linspace(lo, hi, n)


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
    ax.set_xlabel("direction 1 (a)")
    ax.set_ylabel("direction 2 (b)")
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
    ax.set_xlabel("direction 1 (a)")
    ax.set_ylabel("direction 2 (b)")
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


def curve(line, *, log: bool = False, title: str | None = None) -> Plot:
    """1D loss curve with accuracy on a twin axis (and plain CE dashed when computed)."""
    import matplotlib.pyplot as plt

    loss = masked(line.loss, log)
    acc = masked(line.accuracy)
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    ax.plot(line.t, np.ma.masked_invalid(loss), color="tab:blue", label=f"loss ({line.meta.get('criterion', '')})")
    values = {"t": line.t, "loss": loss, "accuracy": acc, "log": log}
    if line.ce_loss is not None:
        values["ce_loss"] = masked(line.ce_loss, log)
        ax.plot(line.t, np.ma.masked_invalid(values["ce_loss"]), color="tab:blue", linestyle="--", label="CE")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("loss", color="tab:blue")
    twin = ax.twinx()
    twin.plot(line.t, acc, color="tab:red", label="accuracy")
    twin.set_ylabel("accuracy", color="tab:red")
    twin.set_ylim(0, 1.02)
    ax.axvline(0.0, color="grey", linewidth=0.6)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or f"{line.meta.get('checkpoint', '')} along a line")
    return _plot(fig, values, caption(line), "curve")


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
    """Contour of a surface over PCA directions with the training path (``Directions.coords``) drawn on it."""
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
