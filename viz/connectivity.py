"""Figures of mode connectivity: loss and error along the line and the trained curve, and the curve's plane.

:func:`paths` draws :class:`landscape.connectivity.Barrier` (the straight line) and, when given,
:class:`landscape.connectivity.LowLossCurve` (the trained curve) over ``t`` from checkpoint A to
checkpoint B, train solid and test dashed, with the barriers in the legend; :func:`plane` draws
the training loss over the plane through A, B and the middle bend with the curve projected on it
(Garipov et al. 2018, Fig. 1), from the :class:`landscape.surface.Surface` of
:func:`landscape.connectivity.curve_plane`. Both return a :class:`viz.figure.Plot` whose ``values``
hold every number drawn.
"""
from __future__ import annotations

import numpy as np

from .figure import Plot
from .surface import caption as surface_caption
from .surface import draw_contour, masked

STYLE = {"train": "-", "test": "--"}
COLORS = {"line": "tab:red", "curve": "tab:blue"}


def _pair_name(result) -> str:
    m = result.meta
    return f"{m.get('checkpoint', 'A')} -> {m.get('checkpoint_b', 'B')}"


def _path_caption(result, what: str) -> str:
    m = result.meta
    bn = m.get("bn")
    stats = {"recompute": f"batchnorm statistics re-estimated at every point on {m.get('bn_subset')} training samples",
             "interpolate": "batchnorm statistics interpolated with the weights", "none": "no batchnorm"}.get(bn, bn)
    return (f"{what} from {m.get('checkpoint')} (t = 0) to {m.get('checkpoint_b')} (t = 1): {m.get('criterion')} "
            f"on {m.get('data')} ({m.get('n_samples')} samples)"
            + (f" and {m.get('test_data')} ({m.get('n_test')})" if m.get("test_data") else "")
            + f", {len(result.t)} points; {stats}.")


def _draw_path(ax_loss, ax_err, result, name: str, *, log: bool) -> dict:
    """One path's loss and error per split; returns its plotted values."""
    values = {"t": np.asarray(result.t, dtype=np.float64), "loss": {}, "error": {}, "barriers": result.barriers}
    for split in result.splits:
        loss = masked(result.loss[split], log)
        err = masked(1.0 - np.asarray(result.accuracy[split], dtype=np.float64))
        values["loss"][split], values["error"][split] = loss, err
        b = result.barriers[split]["loss"]["barrier"]
        ax_loss.plot(result.t, np.ma.masked_invalid(loss), STYLE.get(split, ":"), color=COLORS[name],
                     label=f"{name}, {split} (barrier {b:.3g})")
        ax_err.plot(result.t, np.ma.masked_invalid(100 * err), STYLE.get(split, ":"), color=COLORS[name],
                    label=f"{name}, {split}")
    return values


def paths(line, curve=None, *, log: bool = False, title: str | None = None) -> Plot:
    """Loss and error (%) along the straight line and the trained curve between two checkpoints.

    Parameters
    ----------
    line : Barrier
    curve : LowLossCurve, optional
    log : bool
        Logarithmic loss axis.
    title : str, optional

    Returns
    -------
    Plot
        ``values``: ``line`` (and ``curve``) with ``t``, ``loss`` and ``error`` per split and the
        ``barriers``; ``log``.
    """
    import matplotlib.pyplot as plt

    from landscape.errors import ArgumentError

    if curve is not None and (curve.meta.get("digest"), curve.meta.get("digest_b")) != (
            line.meta.get("digest"), line.meta.get("digest_b")):
        raise ArgumentError("the line and the curve join different checkpoints; draw a curve with the barrier of "
                            "its own endpoints.")
    fig, (ax, err) = plt.subplots(1, 2, figsize=(10.0, 4.2), sharex=True, layout="constrained")
    values: dict = {"log": log, "line": _draw_path(ax, err, line, "line", log=log)}
    captions = [_path_caption(line, "straight line")]
    if curve is not None:
        values["curve"] = _draw_path(ax, err, curve, "curve", log=log)
        captions.append(_path_caption(curve, f"trained {curve.meta.get('curve')} curve with "
                                             f"{curve.meta.get('bends')} bend(s), {curve.meta.get('epochs')} epochs"))
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(f"loss ({line.meta.get('criterion', '')})")
    err.set_ylabel("error (%)")
    for a in (ax, err):
        a.set_xlabel("t")
        a.set_xlim(0.0, 1.0)
    ax.legend(fontsize=7, frameon=False)
    fig.suptitle(title or f"mode connectivity: {_pair_name(line)}")
    return Plot(fig, values, " | ".join(captions), "connectivity")


def plane(surf, *, log: bool = True, n_levels: int = 20, title: str | None = None) -> Plot:
    """Training loss over the plane through A, B and the middle bend, with the trained curve on it.

    Parameters
    ----------
    surf : Surface
        From :func:`landscape.connectivity.curve_plane` (its ``meta["curve"]`` holds the curve).
    log : bool
        Geometric contour levels (the basins are deep).
    n_levels : int
    title : str, optional

    Returns
    -------
    Plot
        ``values``: the contour's ``x``, ``y``, ``loss`` and ``levels``; the curve's ``t``, ``xy``
        and ``distance`` to the plane; the nodes' ``nodes_xy``.
    """
    import matplotlib.pyplot as plt

    from landscape.errors import ArgumentError

    info = surf.meta.get("curve")
    if not info:
        raise ArgumentError("this surface carries no curve; compute it with landscape.connectivity.curve_plane.")
    fig, ax = plt.subplots(figsize=(5.8, 4.6), layout="constrained")
    drawn = draw_contour(ax, surf, log=log, n_levels=n_levels, filled=True)
    fig.colorbar(drawn["_artist"], ax=ax, label=f"train loss ({surf.meta.get('criterion', '')})")
    xy, nodes = np.asarray(info["xy"], dtype=np.float64), np.asarray(info["nodes_xy"], dtype=np.float64)
    ax.plot(xy[:, 0], xy[:, 1], color="crimson", linewidth=1.8, label=f"{info['curve']} curve")
    ax.plot(nodes[[0, -1], 0], nodes[[0, -1], 1], "o", color="black", markersize=7, label="endpoints")
    if len(nodes) > 2:
        ax.plot(nodes[1:-1, 0], nodes[1:-1, 1], "s", color="white", markeredgecolor="black", markersize=6,
                label="bends")
    for name, (px, py) in ((surf.meta.get("checkpoint", "A"), nodes[0]), (info.get("checkpoint_b") or "B", nodes[-1])):
        ax.annotate(name, (px, py), textcoords="offset points", xytext=(4, 6), fontsize=8, color="black")
    ax.set_xlabel("distance along B - A")
    ax.set_ylabel("distance towards the middle bend")
    ax.set_aspect("auto")  # a bend often moves little off the line: equal axes would flatten the plane to a strip
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=4, fontsize=7, frameon=False)
    ax.set_title(title or "plane through the endpoints and the middle bend")
    values = {"x": drawn["x"], "y": drawn["y"], "loss": drawn["loss"], "levels": drawn["levels"], "log": log,
              "t": info["t"], "xy": xy, "distance": info["distance"], "nodes_xy": nodes}
    return Plot(fig, values, surface_caption(surf) + f" Curve: {info['curve']}, {info['bends']} bend(s); "
                f"largest distance of its points from the plane {max(info['distance']):.3g}.", "connectivity_plane")
