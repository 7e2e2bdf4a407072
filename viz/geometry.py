"""Figures of feature geometry II: neural-collapse curves and tables, and CKA heat maps.

Nothing is computed here: every number drawn comes from a
:class:`landscape.collapse.CollapseCurve`, a :class:`landscape.collapse.NeuralCollapse` or a
:class:`landscape.cka.CKAMatrix`.

* :func:`collapse_curves`: Papyan et al.'s figures in one grid, each metric against epoch on a
  log scale, one colour per training run (loss); class means solid, classifier rows dashed.
* :func:`collapse_table`: the metrics of final checkpoints side by side.
* :func:`cka_heatmap`: layer-by-layer CKA of two checkpoints (Kornblith et al. 2019, Fig. 3 style).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from landscape.cka import CKAMatrix
from landscape.collapse import EXTRA, METRICS, CollapseCurve, NeuralCollapse
from landscape.embedding import by_name
from landscape.errors import ArgumentError

from .embedding import class_colors
from .figure import Plot

# (title, metric of the class means, metric of the classifier rows or None), in Papyan et al.'s order
PANELS = (
    ("NC1: tr(Σ_W Σ_B⁺) / C", "nc1", None),
    ("NC2 equinorm: std / mean of norms", "nc2_equinorm", "nc2_equinorm_w"),
    ("NC2 equiangularity: mean |cos + 1/(C-1)|", "nc2_equiangular", "nc2_equiangular_w"),
    ("NC2 maximal-angle gap (degrees)", "nc2_max_angle_gap", "nc2_max_angle_gap_w"),
    ("NC3 self-duality: ‖W/‖W‖ - M/‖M‖‖²", "nc3", None),
    ("NC4: NCC mismatch rate", "nc4", None),
)
TABLE_COLUMNS = ("accuracy", "nc1", "nc2_equinorm", "nc2_equiangular", "nc2_max_angle_gap", "nc3", "nc4")


def _named(items, kind: type, what: str) -> dict:
    items = by_name([items] if isinstance(items, kind) else items)
    if not items:
        raise ArgumentError(f"nothing to draw: give at least one {what}.")
    for name, item in items.items():
        if not isinstance(item, kind):
            raise ArgumentError(f"{name!r} is a {type(item).__name__}, not a {kind.__name__}.")
    return items


def _curve_values(c: CollapseCurve) -> dict:
    return {"epoch": c.epoch, **{k: c.metrics[k] for k in (*METRICS, *EXTRA) if k in c.metrics}}


def collapse_curves(curves: Mapping[str, CollapseCurve] | Sequence[CollapseCurve] | CollapseCurve, *,
                    log: bool = True, title: str | None = None) -> Plot:
    """Neural-collapse metrics against epoch, one line per training run (Papyan et al. 2020, Figs. 2-7).

    Six panels: NC1, NC2 equinorm, NC2 equiangularity, NC2 maximal-angle gap, NC3 and NC4.
    In the NC2 panels the class means are solid lines and the classifier rows dashed lines of the
    same colour. NC4 is drawn on a symmetric-log axis, linear below one sample in ``N`` (the
    smallest rate that is not 0), so that a rate of exactly 0 stays visible.

    Parameters
    ----------
    curves : mapping of name to CollapseCurve, or sequence of CollapseCurve
        One per run (loss); a sequence is keyed by each curve's name.
    log : bool
        Log-scale y axes (symmetric-log for NC4).
    title : str, optional
        Figure title.

    Returns
    -------
    Plot
        ``values``: ``{"curves": {name: {"epoch": [...], metric: [...]}}, "log": bool}``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    curves = _named(curves, CollapseCurve, "CollapseCurve")
    colors = class_colors(len(curves))
    fig, axes = plt.subplots(2, 3, figsize=(13.5, 7.2), layout="constrained")
    n_min = min(int(c.meta.get("n_samples") or 1) for c in curves.values())
    for ax, (label, key, key_w) in zip(axes.ravel(), PANELS):
        for color, (name, c) in zip(colors, curves.items()):
            ax.plot(c.epoch, c.metrics[key], "-o", color=color, markersize=2.5, linewidth=1.3, label=name)
            if key_w is not None and np.isfinite(c.metrics[key_w]).any():
                ax.plot(c.epoch, c.metrics[key_w], "--", color=color, linewidth=1.1)
        if log and key == "nc4":
            # linear up to the power of ten below 1/N, so every non-zero rate (>= 1/N) is on the log part
            ax.set_yscale("symlog", linthresh=10.0 ** np.floor(np.log10(1.0 / n_min)), linscale=0.5)
            ax.set_ylim(bottom=0)
        elif log:
            ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], color=col, marker="o", markersize=3, label=name) for col, name in zip(colors, curves)]
    handles += [Line2D([], [], color="gray", linestyle="-", label="class means"),
                Line2D([], [], color="gray", linestyle="--", label="classifier rows")]
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    values = {"curves": {name: _curve_values(c) for name, c in curves.items()}, "log": bool(log)}
    return Plot(fig, values, _curves_caption(curves), kind="collapse_curves")


def _curves_caption(curves: Mapping[str, CollapseCurve]) -> str:
    runs = "; ".join(f"{name}: {len(c)} snapshots (epochs {int(c.epoch[0])}-{int(c.epoch[-1])}), loss "
                     f"{c.meta.get('loss')}" for name, c in curves.items())
    first = next(iter(curves.values())).meta
    return (f"Neural collapse (Papyan, Han & Donoho 2020) of the {first.get('layer', 'features')} features on "
            f"{first.get('data', '?')} ({first.get('n_samples', '?')} samples) across training: {runs}. "
            "NC1 = tr(Sigma_W Sigma_B^+)/C (implementations that omit 1/C report C times this); NC2 against a "
            "simplex ETF (solid: centred class means, dashed: classifier rows); NC3 = ||W/||W|| - M/||M||||^2; "
            "NC4 = share of samples whose nearest class mean is not the network's prediction (symmetric-log "
            "axis, linear below one sample). Every metric is 0 at full collapse.")


def _table_rows(ncs: Mapping[str, NeuralCollapse]) -> dict[str, dict]:
    return {name: {c: float(getattr(nc, c)) for c in TABLE_COLUMNS} for name, nc in ncs.items()}


def collapse_table(ncs: Mapping[str, NeuralCollapse] | Sequence[NeuralCollapse] | NeuralCollapse) -> Plot:
    """Neural-collapse metrics of several checkpoints as a table, one row each.

    Parameters
    ----------
    ncs : mapping of name to NeuralCollapse, or sequence of NeuralCollapse

    Returns
    -------
    Plot
        ``values``: ``{name: {accuracy, nc1, nc2_equinorm, nc2_equiangular, nc2_max_angle_gap, nc3, nc4}}``.
    """
    import matplotlib.pyplot as plt

    ncs = _named(ncs, NeuralCollapse, "NeuralCollapse")
    rows = _table_rows(ncs)
    fig, ax = plt.subplots(figsize=(9.5, 0.7 + 0.35 * len(rows)))
    ax.axis("off")
    cells = [[name] + [f"{r[c]:.4g}" for c in TABLE_COLUMNS] for name, r in rows.items()]
    table = ax.table(cellText=cells, colLabels=["model", *TABLE_COLUMNS], loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(TABLE_COLUMNS) + 1)))
    table.scale(1.0, 1.3)
    first = next(iter(ncs.values())).meta
    caption = (f"Neural-collapse metrics of the {first.get('layer', 'features')} features on {first.get('data', '?')} "
               f"({first.get('n_samples', '?')} samples), as in the curves; 0 is full collapse. The maximal-angle gap "
               "is in degrees.")
    return Plot(fig, rows, caption, kind="collapse_table")


def cka_heatmap(cm: CKAMatrix, *, annotate: bool | None = None, cmap: str = "magma", title: str | None = None) -> Plot:
    """Layer-by-layer CKA of two checkpoints as a heat map (rows: A's layers, columns: B's), 0 to 1.

    Parameters
    ----------
    cm : CKAMatrix
    annotate : bool, optional
        Write each value in its cell (default: when both sides have at most 16 layers).
    cmap : str
        Colour map; the scale is fixed to [0, 1] so that figures compare.
    title : str, optional
        Default: ``"CKA (<kernel>): <A> vs <B>"``.

    Returns
    -------
    Plot
        ``values``: ``{"cka": matrix, "layers_a": [...], "layers_b": [...], "kernel": str, "debiased": bool}``.
    """
    import matplotlib.pyplot as plt

    if not isinstance(cm, CKAMatrix):
        raise ArgumentError(f"cka_heatmap draws a CKAMatrix (landscape.cka_matrix), got {type(cm).__name__}.")
    v = np.asarray(cm.values, dtype=np.float64)
    na, nb = v.shape
    fig, ax = plt.subplots(figsize=(1.6 + 0.55 * nb, 1.4 + 0.5 * na), layout="constrained")
    image = ax.imshow(v, cmap=cmap, vmin=0.0, vmax=1.0, origin="lower", aspect="auto")
    fig.colorbar(image, ax=ax, label="CKA")
    ax.set_xticks(range(nb), cm.layers_b, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(na), cm.layers_a, fontsize=8)
    m = cm.meta
    ax.set_xlabel(f"{m.get('checkpoint_b', 'B')} layer")
    ax.set_ylabel(f"{m.get('checkpoint_a', 'A')} layer")
    if annotate if annotate is not None else max(na, nb) <= 16:
        for i in range(na):
            for j in range(nb):
                if np.isfinite(v[i, j]):
                    ax.text(j, i, f"{v[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if v[i, j] > 0.6 else "white")
    kernel = m.get("kernel", "linear") + (f", threshold {m['threshold']}" if m.get("threshold") else "")
    ax.set_title(title or f"CKA ({kernel}): {cm.name}", fontsize=10)
    values = {"cka": v, "layers_a": list(cm.layers_a), "layers_b": list(cm.layers_b), "kernel": m.get("kernel"),
              "debiased": bool(m.get("debiased"))}
    return Plot(fig, values, _cka_caption(cm), kind="cka_heatmap")


def _cka_caption(cm: CKAMatrix) -> str:
    m = cm.meta
    est = (f"minibatch estimator (unbiased HSIC accumulated over {m.get('batches')} batches of {m.get('minibatch')}, "
           f"seed {m.get('seed')})" if m.get("estimator") == "minibatch"
           else f"full {'debiased' if m.get('debiased') else 'biased'} estimator")
    kernel = "linear kernel" if m.get("kernel") == "linear" else \
        f"RBF kernel (bandwidth {m.get('threshold')} x median distance)"
    return (f"Centred kernel alignment (Kornblith et al. 2019) between the layers of {m.get('checkpoint_a')} (rows) "
            f"and {m.get('checkpoint_b')} (columns) on {m.get('data')} ({m.get('n_samples')} examples), {kernel}, "
            f"{est}. Layer outputs are flattened.")


__all__ = ["collapse_curves", "collapse_table", "cka_heatmap"]
