"""Figures of feature geometry: t-SNE maps, unit circle and sphere, angular-statistics tables.

Seed 002 draws t-SNE maps (Fig. 4.6) and features on the hypersphere (Figs. 5.1, 5.4, 5.7)
with standard softmax beside MAM-SoftMax. Every function here takes results from
:mod:`landscape.embedding` (nothing is computed) and returns a :class:`viz.figure.Plot`:

* :func:`embedding` / :func:`embedding_grid`: t-SNE scatter, one colour per class, with a
  legend of class names; several checkpoints side by side.
* :func:`hypersphere` / :func:`hypersphere_grid`: points on the unit circle (matplotlib or
  plotly) or sphere (interactive plotly by default), class-centre directions drawn to the
  sphere, the projection and what it keeps of the full space (variance, stress, rank
  correlation of the pairwise angles) under every panel's title; the statistics table beside
  the panels of a grid, and a warning on the figure when the pictures rank the checkpoints'
  class separation otherwise than the full feature space does.
* :func:`stats_table`: the angular statistics of several checkpoints.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from landscape.embedding import STAT_COLUMNS, Embedding, Sphere, StatsTable, by_name, separation_ranking
from landscape.errors import ArgumentError

from .figure import Plot

# report pages show interactive figures in iframes 640 px high (viz/report.py); a figure this high
# fits with the page margins, so the frame neither scrolls nor cuts the legend
FRAME_HEIGHT = 600

STAT_LABELS = {"accuracy": "accuracy", "compactness": "compactness (deg)", "separation": "separation (deg)",
               "ratio": "ratio", "silhouette": "cosine silhouette", "zero_fraction": "zero features"}


# -- shared helpers ------------------------------------------------------------------------
def class_colors(n: int) -> list[str]:
    """``n`` distinguishable hex colours: tab10 up to 10 classes, tab20 up to 20, then evenly spaced hues."""
    import matplotlib
    from matplotlib.colors import to_hex

    if n <= 10:
        cmap, pos = matplotlib.colormaps["tab10"], range(n)
    elif n <= 20:
        cmap, pos = matplotlib.colormaps["tab20"], range(n)
    else:
        cmap, pos = matplotlib.colormaps["hsv"], np.linspace(0, 1, n, endpoint=False)
    return [to_hex(cmap(p)) for p in pos]


def _as_dict(items, kind) -> dict:
    """A mapping of name to result from a mapping, a list (keyed by unique ``.name``) or one result."""
    items = by_name([items] if isinstance(items, kind) else items)
    if not items:
        raise ArgumentError(f"nothing to draw: give at least one {kind.__name__}.")
    return items


def _class_name(classes: Sequence[str], k: int) -> str:
    return str(classes[k]) if k < len(classes) else str(k)


def _source(meta: dict) -> str:
    """``"<layer> features of <checkpoint> on <data>"`` from a result's meta."""
    return f"{meta.get('layer', 'features')} features of {meta.get('checkpoint', '?')} on {meta.get('data', '?')}"


def _summary(stats: dict) -> dict:
    return {c: stats[c] for c in STAT_COLUMNS if c in stats}


# -- t-SNE ---------------------------------------------------------------------------------
def _emb_caption(emb: Embedding) -> str:
    m = emb.meta
    placed = f", placed onto the map of {m['placed_on']}" if m.get("placed_on") else ""
    return (f"t-SNE (openTSNE, PCA init, perplexity {m.get('perplexity')}, seed {m.get('seed')}) of "
            f"{_source(m)} ({len(emb.y)} points{placed}); trustworthiness {emb.trustworthiness:.3f}, "
            f"{m.get('k')}-NN accuracy in the map {emb.knn_accuracy:.3f}.")


def _emb_values(emb: Embedding) -> dict:
    return {"x": emb.coords[:, 0], "y": emb.coords[:, 1], "label": emb.y, "classes": list(emb.classes),
            "trustworthiness": emb.trustworthiness, "knn_accuracy": emb.knn_accuracy}


def _draw_embedding(ax, emb: Embedding, title: str, point_size: float, legend: bool) -> None:
    colors = class_colors(max(len(emb.classes), int(emb.y.max()) + 1))
    for k in np.unique(emb.y):
        sel = emb.y == k
        ax.scatter(emb.coords[sel, 0], emb.coords[sel, 1], s=point_size, color=colors[k], alpha=0.8,
                   linewidths=0, label=_class_name(emb.classes, k))
    ax.set_title(f"{title}\ntrust {emb.trustworthiness:.3f}, kNN acc {emb.knn_accuracy:.3f}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    if legend:
        ax.legend(title="class", fontsize=7, title_fontsize=8, markerscale=1.5, loc="center left",
                  bbox_to_anchor=(1.0, 0.5), frameon=False)


def embedding(emb: Embedding, title: str | None = None, point_size: float = 10.0) -> Plot:
    """t-SNE scatter of one map, coloured by class, with a legend of class names.

    Parameters
    ----------
    emb : landscape.Embedding
    title : str, optional
        Panel title (default: the checkpoint name).
    point_size : float
        Marker area in points squared.

    Returns
    -------
    Plot
        matplotlib figure; ``values`` holds the coordinates, labels and map quality.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    _draw_embedding(ax, emb, title or emb.name, point_size, legend=True)
    return Plot(fig, _emb_values(emb), _emb_caption(emb), kind="embedding")


def embedding_grid(embs: Mapping[str, Embedding] | Sequence[Embedding], table: StatsTable | None = None,
                   point_size: float = 8.0) -> Plot:
    """t-SNE maps of several checkpoints side by side (e.g. softmax beside MAM-SoftMax, Fig. 4.6).

    Parameters
    ----------
    embs : mapping of name to Embedding, or sequence of Embedding
        Panels, left to right; a sequence is titled by checkpoint names.
    table : landscape.embedding.StatsTable, optional
        Angular statistics drawn under the maps (from :func:`landscape.embedding.compare_stats`).
    point_size : float

    Returns
    -------
    Plot
        ``values``: ``{"panels": {name: map values as in embedding()}, "table": {name: stats} or None}``.
    """
    import matplotlib.pyplot as plt

    embs = _as_dict(embs, Embedding)
    n = len(embs)
    rows = _table_rows(table) if table is not None else None
    fig = plt.figure(figsize=(3.6 * n + 1.0, 3.8 + (0.5 + 0.3 * len(rows) if rows else 0)))
    grid = fig.add_gridspec(2 if rows else 1, n, height_ratios=[3.8, 0.5 + 0.3 * len(rows)] if rows else None)
    for i, (name, emb) in enumerate(embs.items()):
        _draw_embedding(fig.add_subplot(grid[0, i]), emb, name, point_size, legend=i == n - 1)
    if rows:
        _mpl_table(fig.add_subplot(grid[1, :]), rows)
    caption = " | ".join(f"{name}: {_emb_caption(e)}" for name, e in embs.items())
    if rows:
        caption += " | " + _TABLE_CAPTION
    values = {"panels": {name: _emb_values(e) for name, e in embs.items()}, "table": rows}
    return Plot(fig, values, caption, kind="embedding_grid")


# -- hypersphere ---------------------------------------------------------------------------
def _projection_label(sph: Sphere) -> str:
    if sph.projection == "none":
        return f"{sph.dim}-d features, L2-normalised"
    return f"{sph.projection.upper()} {sph.meta.get('feature_dim', '?')}->{sph.dim}, L2-normalised"


def _fidelity_label(sph: Sphere) -> str:
    """What the picture keeps of the full space, for panel titles: variance, stress, angle rank correlation."""
    fid = sph.fidelity
    if not fid:
        return ""
    kept = f"{100 * fid['explained_variance']:.0f}% variance, " if fid.get("explained_variance") is not None else ""
    return f"{kept}stress {fid['stress']:.2f}, angle rank corr {fid['spearman']:.2f}"


def _panel_title(name: str, sph: Sphere, sep: str = "\n") -> str:
    return sep.join(t for t in (name, _projection_label(sph), _fidelity_label(sph)) if t)


def _plotly_title(name: str, sph: Sphere) -> str:
    return name + "".join(f"<br><sub>{t}</sub>" for t in (_projection_label(sph), _fidelity_label(sph)) if t)


def _sph_caption(sph: Sphere) -> str:
    st, fid = sph.stats, sph.fidelity
    shape = "circle" if sph.dim == 2 else "sphere"
    how = ("as they are" if sph.projection == "none" else
           f"L2-normalised, projected by {sph.projection.upper()} to {sph.dim} dimensions and normalised again"
           if sph.projection != "stress" else
           f"L2-normalised and embedded on the {shape} by minimising the stress of the pairwise angles")
    if st.get("n_zero"):
        how += f"; {st['n_zero']} zero feature vectors (no direction) drawn at the centre"
    kept = ""
    if fid:
        variance = (f"{100 * fid['explained_variance']:.1f} % of the variance, "
                    if fid.get("explained_variance") is not None else "")
        kept = (f" The picture keeps {variance}pairwise angles with stress {fid['stress']:.3f} and rank "
                f"correlation {fid['spearman']:.3f} (Spearman; Kendall {fid['kendall']:.3f}) against the full space; "
                f"drawn separation {fid['separation_drawn']:.2f} deg, compactness {fid['compactness_drawn']:.2f} deg.")
    return (f"{_source(sph.meta)} ({len(sph.y)} points) on the unit {shape}, {how}; lines: class-centre "
            f"directions. Statistics in the full {st.get('dim')}-d space: compactness {st['compactness']:.2f} deg, "
            f"separation {st['separation']:.2f} deg, ratio {st['ratio']:.3f}, cosine silhouette "
            f"{st['silhouette']:.3f}, accuracy {st['accuracy']:.3f}.{kept}")


def _sph_values(sph: Sphere) -> dict:
    return {"points": sph.points, "label": sph.y, "centers": sph.centers, "center_labels": sph.stats.get("labels"),
            "classes": list(sph.classes), "projection": sph.projection, "dim": sph.dim, "stats": _summary(sph.stats),
            "fidelity": dict(sph.fidelity)}


def _centre_labels(sph: Sphere) -> list[int]:
    return [int(k) for k in sph.stats.get("labels", range(len(sph.centers)))]


def _draw_circle_mpl(ax, sph: Sphere, title: str, point_size: float, legend: bool) -> None:
    colors = class_colors(max(len(sph.classes), int(sph.y.max()) + 1))
    t = np.linspace(0, 2 * np.pi, 361)
    ax.plot(np.cos(t), np.sin(t), color="0.75", lw=0.8, zorder=0)
    for k in np.unique(sph.y):
        p = sph.points[sph.y == k]
        ax.scatter(p[:, 0], p[:, 1], s=point_size, color=colors[k], alpha=0.7, linewidths=0,
                   label=_class_name(sph.classes, k))
    for k, c in zip(_centre_labels(sph), sph.centers):
        ax.plot([0, c[0]], [0, c[1]], color=colors[k], lw=1.6)
    ax.set_aspect("equal")
    ax.set_xlim(-1.15, 1.15)
    ax.set_ylim(-1.15, 1.15)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(_panel_title(title, sph), fontsize=9)
    if legend:
        ax.legend(title="class", fontsize=7, title_fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5),
                  frameon=False)


def _draw_sphere_mpl(ax, sph: Sphere, title: str, point_size: float, legend: bool) -> None:
    colors = class_colors(max(len(sph.classes), int(sph.y.max()) + 1))
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 25), np.linspace(0, np.pi, 13))
    ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", lw=0.4)
    for k in np.unique(sph.y):
        p = sph.points[sph.y == k]
        ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=point_size, color=colors[k], alpha=0.8, linewidths=0,
                   label=_class_name(sph.classes, k))
    for k, c in zip(_centre_labels(sph), sph.centers):  # from the centre to the sphere, where the class lies
        ax.plot([0, c[0]], [0, c[1]], [0, c[2]], color=colors[k], lw=2.0)
    for set_lim in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
        set_lim(-1.0, 1.0)
    ax.set_box_aspect((1, 1, 1), zoom=1.25)
    ax.set_axis_off()
    ax.set_title(_panel_title(title, sph), fontsize=9)
    if legend:
        ax.legend(title="class", fontsize=7, title_fontsize=8, loc="center left", bbox_to_anchor=(1.05, 0.5),
                  frameon=False)


def _sphere_traces(sph: Sphere, point_size: float, showlegend: bool) -> list:
    """Plotly traces of one panel: the unit circle or sphere, points by class, centre directions."""
    import plotly.graph_objects as go

    colors = class_colors(max(len(sph.classes), int(sph.y.max()) + 1))
    traces = []
    if sph.dim == 3:
        u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 41), np.linspace(0, np.pi, 21))
        traces.append(go.Surface(x=np.cos(u) * np.sin(v), y=np.sin(u) * np.sin(v), z=np.cos(v), opacity=0.12,
                                 showscale=False, colorscale=[[0, "#999999"], [1, "#999999"]], hoverinfo="skip"))
    else:
        t = np.linspace(0, 2 * np.pi, 361)
        traces.append(go.Scatter(x=np.cos(t), y=np.sin(t), mode="lines", line=dict(color="#bbbbbb", width=1),
                                 hoverinfo="skip", showlegend=False))
    for k in np.unique(sph.y):
        p = sph.points[sph.y == k]
        name = _class_name(sph.classes, k)
        common = dict(mode="markers", name=name, legendgroup=name, showlegend=showlegend,
                      marker=dict(size=point_size, color=colors[k], opacity=0.8))
        traces.append(go.Scatter3d(x=p[:, 0], y=p[:, 1], z=p[:, 2], **common) if sph.dim == 3
                      else go.Scatter(x=p[:, 0], y=p[:, 1], **common))
    for k, c in zip(_centre_labels(sph), sph.centers):
        name = _class_name(sph.classes, k)
        line = dict(mode="lines", name=f"centre {name}", legendgroup=name, showlegend=False,
                    line=dict(color=colors[k], width=6 if sph.dim == 3 else 3))
        ends = np.stack([np.zeros_like(c), c])  # the centre line stops at the sphere
        traces.append(go.Scatter3d(x=ends[:, 0], y=ends[:, 1], z=ends[:, 2], **line) if sph.dim == 3
                      else go.Scatter(x=ends[:, 0], y=ends[:, 1], **line))
    return traces


def _scene_layout() -> dict:
    axis = dict(range=[-1.1, 1.1], showbackground=False, showticklabels=False, title="")
    return dict(xaxis=axis, yaxis=axis, zaxis=axis, aspectmode="cube")


def _frame_layout(fig, top: int = 90) -> None:
    """Size a plotly figure for a report iframe: full width, ``FRAME_HEIGHT`` high, the legend below the panels."""
    fig.update_layout(autosize=True, width=None, height=FRAME_HEIGHT, margin=dict(l=10, r=10, t=top, b=10),
                      legend=dict(title="class", itemsizing="constant", orientation="h", x=0.5, xanchor="center",
                                  y=0.0, yanchor="top"),
                      template="plotly_white")


def hypersphere(sph: Sphere, interactive: bool | None = None, title: str | None = None,
                point_size: float | None = None) -> Plot:
    """Features on the unit circle or sphere, coloured by class, with class-centre directions.

    Parameters
    ----------
    sph : landscape.Sphere
    interactive : bool, optional
        plotly (rotatable; saved as self-contained HTML that works offline) or matplotlib.
        Default: interactive for the sphere, static for the circle.
    title : str, optional
        Default: the checkpoint name; the projection is always named under it.
    point_size : float, optional
        Marker size (matplotlib area or plotly diameter).

    Returns
    -------
    Plot
        ``values`` holds the points, labels, centre directions, projection and statistics.
    """
    interactive = sph.dim == 3 if interactive is None else bool(interactive)
    title = title or sph.name
    values, caption = _sph_values(sph), _sph_caption(sph)
    if interactive:
        import plotly.graph_objects as go

        fig = go.Figure(_sphere_traces(sph, point_size or 3.0, showlegend=True))
        fig.update_layout(title=dict(text=_plotly_title(title, sph)))
        _frame_layout(fig)
        if sph.dim == 3:
            fig.update_layout(scene=_scene_layout())
        else:
            fig.update_xaxes(range=[-1.25, 1.25], visible=False)
            fig.update_yaxes(range=[-1.25, 1.25], visible=False, scaleanchor="x")
        return Plot(fig, values, caption, kind="hypersphere")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(5.2, 4.4))
    ax = fig.add_subplot(projection="3d" if sph.dim == 3 else None)
    draw = _draw_sphere_mpl if sph.dim == 3 else _draw_circle_mpl
    draw(ax, sph, title, point_size or 8.0, legend=True)
    return Plot(fig, values, caption, kind="hypersphere")


# -- tables and grids ----------------------------------------------------------------------
def _table_rows(source) -> dict[str, dict]:
    """``{name: stats}`` from a StatsTable or from Spheres (whose stats are already computed)."""
    if isinstance(source, StatsTable):
        return {name: _summary(row) for name, row in source.rows.items()}
    return {name: _summary(s.stats) for name, s in _as_dict(source, Sphere).items()}


def _cells(rows: dict[str, dict]) -> list[list[str]]:
    fmt = {"accuracy": "{:.3f}", "compactness": "{:.2f}", "separation": "{:.2f}", "ratio": "{:.3f}",
           "silhouette": "{:.3f}", "zero_fraction": "{:.1%}"}
    return [[name] + [fmt[c].format(r[c]) for c in STAT_COLUMNS] for name, r in rows.items()]


def _mpl_table(ax, rows: dict[str, dict]) -> None:
    ax.axis("off")
    table = ax.table(cellText=_cells(rows), colLabels=["model"] + [STAT_LABELS[c] for c in STAT_COLUMNS],
                     loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(STAT_COLUMNS) + 1)))
    table.scale(1.0, 1.3)


def _plotly_table(rows: dict[str, dict]):
    import plotly.graph_objects as go

    columns = list(zip(*_cells(rows))) if rows else []
    return go.Table(header=dict(values=["model"] + [STAT_LABELS[c] for c in STAT_COLUMNS]),
                    cells=dict(values=[list(col) for col in columns]))


_TABLE_CAPTION = ("Angular statistics in the full feature space (degrees): compactness = mean angle of samples to "
                  "their class centre (normalised mean of the class's unit features), averaged over classes; "
                  "separation = smallest angle between class centres; ratio = compactness / separation; cosine "
                  "silhouette from scikit-learn; zero features = fraction of samples whose feature vector is zero "
                  "(no direction; left out of the other statistics).")


def stats_table(source: StatsTable | Mapping[str, Sphere] | Sequence[Sphere], interactive: bool = False) -> Plot:
    """Table of angular statistics, one row per checkpoint (e.g. CE against MAM-SoftMax and A-Softmax).

    Parameters
    ----------
    source : landscape.embedding.StatsTable, or Spheres by name
        From :func:`landscape.embedding.compare_stats`, or spheres whose stats are shown.
    interactive : bool
        plotly table instead of matplotlib.

    Returns
    -------
    Plot
        ``values`` maps each model to its accuracy, compactness, separation, ratio, silhouette.
    """
    rows = _table_rows(source)
    if interactive:
        import plotly.graph_objects as go

        fig = go.Figure(_plotly_table(rows))
        fig.update_layout(height=120 + 30 * len(rows), margin=dict(l=10, r=10, t=10, b=10))
    else:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8.0, 0.6 + 0.35 * len(rows)))
        _mpl_table(ax, rows)
    return Plot(fig, rows, _TABLE_CAPTION, kind="stats_table")


def hypersphere_grid(spheres: Mapping[str, Sphere] | Sequence[Sphere], interactive: bool | None = None,
                     table: bool = True, point_size: float | None = None) -> Plot:
    """Several checkpoints on the circle or sphere side by side, with their statistics table below.

    With two or more panels the pictures' class separation is ranked against the full space's
    (:func:`landscape.embedding.separation_ranking`); when the orders differ the figure says so
    in red above the panels and the caption begins with the warning.

    Parameters
    ----------
    spheres : mapping of name to Sphere, or sequence of Sphere
        Panels, left to right; all of the same dimension.
    interactive : bool, optional
        plotly (default for spheres) or matplotlib (default for circles).
    table : bool
        Draw the angular-statistics table under the panels.
    point_size : float, optional

    Returns
    -------
    Plot
        ``values``: ``{"panels": {name: sphere values}, "table": {name: stats}, "ranking": ... or None}``.
    """
    spheres = _as_dict(spheres, Sphere)
    dims = {s.dim for s in spheres.values()}
    if len(dims) != 1:
        raise ArgumentError(f"all spheres of a grid need the same dimension, got {sorted(dims)}.")
    dim = dims.pop()
    interactive = dim == 3 if interactive is None else bool(interactive)
    rows = _table_rows(spheres)
    ranking = (separation_ranking(spheres) if len(spheres) > 1 and all(s.fidelity for s in spheres.values())
               else None)
    warning = f"Warning: {ranking['message']}." if ranking and not ranking["agree"] else ""
    values = {"panels": {name: _sph_values(s) for name, s in spheres.items()}, "table": rows, "ranking": ranking}
    caption = " | ".join(f"{name}: {_sph_caption(s)}" for name, s in spheres.items())
    if warning:
        caption = warning + " " + caption
    if interactive:
        fig = _plotly_grid(spheres, dim, table, point_size or 2.5, warning)
    else:
        fig = _mpl_grid(spheres, dim, table, point_size or 6.0, warning)
    return Plot(fig, values, caption, kind="hypersphere_grid")


def _plotly_grid(spheres: dict[str, Sphere], dim: int, table: bool, point_size: float, warning: str = ""):
    from plotly.subplots import make_subplots

    n = len(spheres)
    panel = {"type": "scene"} if dim == 3 else {"type": "xy"}
    specs = [[panel] * n] + ([[{"type": "table", "colspan": n}] + [None] * (n - 1)] if table else [])
    titles = [_plotly_title(name, s) for name, s in spheres.items()]
    fig = make_subplots(rows=len(specs), cols=n, specs=specs, subplot_titles=titles,
                        row_heights=[0.75, 0.25] if table else None, vertical_spacing=0.06)
    for i, s in enumerate(spheres.values(), start=1):
        for trace in _sphere_traces(s, point_size, showlegend=i == 1):
            fig.add_trace(trace, row=1, col=i)
        if dim == 2:
            fig.update_xaxes(range=[-1.25, 1.25], visible=False, row=1, col=i)
            fig.update_yaxes(range=[-1.25, 1.25], visible=False, scaleanchor=f"x{i if i > 1 else ''}", row=1, col=i)
    if dim == 3:
        fig.update_scenes(**_scene_layout())
    if table:
        fig.add_trace(_plotly_table(_table_rows(spheres)), row=2, col=1)
    _frame_layout(fig, top=125 if warning else 90)
    if warning:
        import textwrap

        fig.add_annotation(text="<br>".join(textwrap.wrap(warning, 140)), xref="paper", yref="paper", x=0.0, y=1.0,
                           yshift=105, xanchor="left", yanchor="top", showarrow=False,
                           font=dict(color="#b00020", size=11), align="left")
    return fig


def _mpl_grid(spheres: dict[str, Sphere], dim: int, table: bool, point_size: float, warning: str = ""):
    import textwrap

    import matplotlib.pyplot as plt

    n = len(spheres)
    fig = plt.figure(figsize=(3.8 * n + 1.2, 4.6 + (0.5 + 0.3 * n if table else 0)))
    grid = fig.add_gridspec(2 if table else 1, n, height_ratios=[4.0, 0.5 + 0.3 * n] if table else None)
    draw = _draw_sphere_mpl if dim == 3 else _draw_circle_mpl
    for i, (name, s) in enumerate(spheres.items()):
        ax = fig.add_subplot(grid[0, i], projection="3d" if dim == 3 else None)
        draw(ax, s, name, point_size, legend=i == n - 1)
    if table:
        _mpl_table(fig.add_subplot(grid[1, :]), _table_rows(spheres))
    if warning:
        fig.suptitle(textwrap.fill(warning, width=int(32 * n + 10)), color="#b00020", fontsize=8)
    return fig


__all__ = ["embedding", "embedding_grid", "hypersphere", "hypersphere_grid", "stats_table", "class_colors"]

