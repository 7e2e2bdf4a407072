"""Grad-CAM figures (seed 002, Figs. 3.7 and 5.8): where the classifier looks.

* :func:`gradcam_grid`: per image, the original, the heat map over it and Guided Grad-CAM,
  titled with the predicted class and its confidence.
* :func:`gradcam_compare`: the same images under several checkpoints (e.g. CE beside
  MAM-SoftMax), one row of heat maps per checkpoint.
* :func:`faithfulness_plot` and :func:`faithfulness_table`: how faithful the maps are (deletion,
  insertion, ROAD), per method and per checkpoint, beside the random-map baseline.

Digits are 8x8, so images and maps are drawn with nearest interpolation (every computed
pixel stays visible) on large panels. Only display scaling happens here: guided gradients
are shown on a symmetric colour scale set by each image's largest absolute value.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from landscape.errors import ArgumentError, check_scalar
from landscape.faithfulness import METRICS, Faithfulness
from landscape.gradcam import CAM

from .figure import Plot

_ROW_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "guided-backprop": "|guided backprop|",
              "guided-gradcam": "Grad-CAM"}
_GUIDED_NAMES = {"guided-backprop": "guided backprop", "guided-gradcam": "Guided Grad-CAM"}


def _check(cam: CAM, max_images: int) -> int:
    if not isinstance(cam, CAM):
        raise ArgumentError(f"expected a landscape CAM (from ls.gradcam), got {type(cam).__name__}.")
    return min(len(cam), check_scalar(max_images, "max_images", int, min=1))


def _title(cam: CAM, i: int) -> tuple[str, bool]:
    """``"<class> (97.1%)"``, plus the true label when the prediction is wrong; and whether it is wrong."""
    text = f"{cam.classes[cam.pred[i]]} ({cam.confidence[i]:.1%})"
    wrong = cam.labels is not None and cam.labels[i] != cam.pred[i]
    if wrong:
        text += f"\ntrue {cam.classes[cam.labels[i]]}"
    if cam.target[i] != cam.pred[i]:
        text += f"\nmap for {cam.classes[cam.target[i]]}"
    return text, bool(wrong)


def _show_image(ax, image: np.ndarray) -> None:
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(np.clip(image.transpose(1, 2, 0), 0, 1), interpolation="nearest")


def _show_overlay(ax, image: np.ndarray, heat: np.ndarray, cmap: str, alpha: float) -> None:
    _show_image(ax, image)
    ax.imshow(heat, cmap=cmap, vmin=0, vmax=1, alpha=alpha, interpolation="nearest")


def _guided_scale(guided: np.ndarray) -> np.ndarray:
    """Per-image largest absolute value (1 for all-zero images), the half-range of the colour scale."""
    peak = np.abs(guided).reshape(len(guided), -1).max(axis=1)
    return np.where(peak > 0, peak, 1.0)


def _show_guided(ax, guided: np.ndarray, scale: float) -> None:
    if guided.shape[0] == 1:
        ax.imshow(guided[0], cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
    else:  # colour images: zero is mid-grey, as in the Grad-CAM paper
        ax.imshow(np.clip(0.5 + guided.transpose(1, 2, 0) / (2 * scale), 0, 1), interpolation="nearest")


def _colorbar(fig, axes, cmap: str) -> None:
    """One opaque colour bar for the heat maps (the overlays themselves are translucent)."""
    from matplotlib import cm, colors

    mappable = cm.ScalarMappable(norm=colors.Normalize(0, 1), cmap=cmap)
    fig.colorbar(mappable, ax=axes, fraction=0.03, pad=0.02, shrink=0.9, label="map (scaled per image)")


def _draw_row(axes, label: str, what: str, cam: CAM, n: int, cmap: str, alpha: float) -> np.ndarray | None:
    """Draw the first ``n`` images of ``cam`` as ``what`` ("image", "map" or "guided") into one row.

    Returns the guided colour-scale half-ranges for a guided row, else None.
    """
    scale = _guided_scale(cam.guided[:n]) if what == "guided" else None
    for i, ax in enumerate(axes[:n]):
        if what == "image":
            _show_image(ax, cam.images[i])
        elif what == "map":
            _show_overlay(ax, cam.images[i], cam.maps[i], cmap, alpha)
        else:
            _show_guided(ax, cam.guided[i], scale[i])
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_ylabel(label, fontsize=10)
    return scale


def _title_predictions(axes, cam: CAM, n: int, fontsize: int) -> list[str]:
    titles = []
    for i, ax in enumerate(axes[:n]):
        text, wrong = _title(cam, i)
        ax.set_title(text, fontsize=fontsize, color="tab:red" if wrong else "black")
        titles.append(text)
    return titles


def _caption(cam: CAM, n: int) -> str:
    m = cam.meta
    where = f"layer {m.get('layer')} ({'x'.join(map(str, m.get('layer_shape') or []))} map, bilinear upsampling)" \
        if m.get("layer") else "input gradients"
    return (f"{_ROW_NAMES.get(m.get('method'), m.get('method'))} of checkpoint {m.get('checkpoint')} on {n} of "
            f"{len(cam)} images of {m.get('data')}: {where}; maps scaled to [0, 1] per image; target class = "
            f"{'predicted' if np.array_equal(cam.target, cam.pred) else 'given'}.")


def gradcam_grid(cams: CAM, max_images: int = 8, alpha: float = 0.5, cmap: str = "jet",
                 panel: float = 1.9, title: str | None = None) -> Plot:
    """Original image, heat-map overlay and (when computed) Guided Grad-CAM, one column per image.

    Parameters
    ----------
    cams : CAM
        From :func:`landscape.gradcam`; use ``method="guided-gradcam"`` for the third row.
    max_images : int
        Draw the first ``max_images`` images.
    alpha : float
        Opacity of the heat map over the image.
    cmap : str
        Matplotlib colour map of the heat map.
    panel : float
        Size of one panel in inches (digits are 8x8: keep panels large).
    title : str, optional
        Figure title (default: method and checkpoint).

    Returns
    -------
    Plot
        ``values``: ``images``, ``maps``, ``guided`` (when drawn), ``guided_scale``, ``pred``,
        ``confidence``, ``target``, ``labels`` (when known) and the panel ``titles``.
    """
    import matplotlib.pyplot as plt

    n = _check(cams, max_images)
    method = cams.meta.get("method", "gradcam")
    rows = [("image", "image"), (_ROW_NAMES.get(method, method), "map")]
    if cams.guided is not None:
        rows.append((_GUIDED_NAMES.get(method, "guided"), "guided"))
    fig, axes = plt.subplots(len(rows), n, figsize=(panel * n + 0.9, panel * len(rows) + 0.8), squeeze=False)
    scales = [_draw_row(axes[r], label, what, cams, n, cmap, alpha) for r, (label, what) in enumerate(rows)]
    titles = _title_predictions(axes[0], cams, n, fontsize=10)
    _colorbar(fig, axes[1, :].tolist(), cmap)
    fig.suptitle(title or f"{_ROW_NAMES.get(method, method)}: {cams.meta.get('checkpoint', '')}", fontsize=12)
    values = {"images": cams.images[:n], "maps": cams.maps[:n], "pred": cams.pred[:n],
              "confidence": cams.confidence[:n], "target": cams.target[:n], "titles": titles}
    if cams.guided is not None:
        values.update(guided=cams.guided[:n], guided_scale=scales[-1])
    if cams.labels is not None:
        values["labels"] = cams.labels[:n]
    return Plot(fig, values, _caption(cams, n), kind="gradcam_grid")


def _same_images(cams: Mapping[str, CAM]) -> None:
    names = list(cams)
    first = cams[names[0]].images
    for name in names[1:]:
        other = cams[name].images
        if other.shape != first.shape or not np.array_equal(other, first):
            raise ArgumentError(f"the CAMs of {names[0]!r} and {name!r} are not of the same images; compute them with "
                                "ls.gradcam on the same images (same data, indices and seed) to compare them.")


def gradcam_compare(cams: Mapping[str, CAM], max_images: int = 8, alpha: float = 0.5, cmap: str = "jet",
                    panel: float = 1.9, guided: bool = False, title: str | None = None) -> Plot:
    """The same images explained by several checkpoints: one row of heat maps per checkpoint.

    Parameters
    ----------
    cams : mapping of str to CAM
        Checkpoint name -> its CAM, all computed on the same images (e.g. ``{"CE": ..., "MAM-SoftMax": ...}``).
    max_images : int
        Draw the first ``max_images`` images.
    alpha, cmap, panel :
        As in :func:`gradcam_grid`.
    guided : bool
        Add a Guided Grad-CAM row under each checkpoint's heat maps (needs ``method="guided-gradcam"``).
    title : str, optional
        Figure title.

    Returns
    -------
    Plot
        ``values``: ``images``, ``labels`` (when known) and, per checkpoint name, ``<name>/maps``,
        ``<name>/pred``, ``<name>/confidence`` (and ``<name>/guided``, ``<name>/guided_scale``).
    """
    import matplotlib.pyplot as plt

    if not cams:
        raise ArgumentError("gradcam_compare needs at least one CAM, e.g. {'CE': cam_ce, 'MAM-SoftMax': cam_mam}.")
    _same_images(cams)
    first = next(iter(cams.values()))
    n = min(_check(cam, max_images) for cam in cams.values())
    if guided:
        missing = [name for name, cam in cams.items() if cam.guided is None]
        if missing:
            raise ArgumentError(f"guided=True needs method='guided-gradcam', but the CAMs of {missing} have no guided "
                                "maps; recompute them or pass guided=False.")
    rows: list[tuple[str, str, str | None]] = [("image", "image", None)]  # (row label, what, checkpoint)
    for name in cams:
        rows.append((name, "map", name))
        if guided:
            rows.append((f"{name}\nguided", "guided", name))
    fig, axes = plt.subplots(len(rows), n, figsize=(panel * n + 1.2, panel * len(rows) + 0.8), squeeze=False)
    values: dict = {"images": first.images[:n]}
    if first.labels is not None:
        values["labels"] = first.labels[:n]
    for r, (label, what, name) in enumerate(rows):
        cam = cams[name] if name is not None else first
        scale = _draw_row(axes[r], label, what, cam, n, cmap, alpha)
        if what == "image" and first.labels is not None:
            for i, ax in enumerate(axes[r, :n]):
                ax.set_title(f"label {first.classes[first.labels[i]]}", fontsize=10)
        elif what == "map":
            _title_predictions(axes[r], cam, n, fontsize=9)
            values.update({f"{name}/maps": cam.maps[:n], f"{name}/pred": cam.pred[:n],
                           f"{name}/confidence": cam.confidence[:n]})
        elif what == "guided":
            values.update({f"{name}/guided": cam.guided[:n], f"{name}/guided_scale": scale})
    _colorbar(fig, axes[1:, :].ravel().tolist(), cmap)
    method = first.meta.get("method", "gradcam")
    fig.suptitle(title or f"{_ROW_NAMES.get(method, method)}: {' vs '.join(cams)}", fontsize=12)
    caption = " ".join(f"{name}: {_caption(cam, n)}" for name, cam in cams.items())
    return Plot(fig, values, caption, kind="gradcam_compare")


# -- faithfulness -----------------------------------------------------------------------------------
_METRIC_NAMES = {"deletion": "deletion AUC (lower is better)", "insertion": "insertion AUC (higher is better)",
                 "road": "ROAD (lerf - morf) / 2 (higher is better)"}


_MAP_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "guided-gradcam": "Guided Grad-CAM",
              "guided-backprop": "guided backprop"}


def _label(fa: Faithfulness) -> str:
    return f"{fa.meta.get('checkpoint', '')} {_MAP_NAMES.get(fa.meta.get('method'), fa.meta.get('method'))}"


def _check_results(results: Sequence[Faithfulness]) -> list[Faithfulness]:
    results = list(results)
    if not results or not all(isinstance(r, Faithfulness) for r in results):
        raise ArgumentError("expected a non-empty list of Faithfulness results (from ls.faithfulness).")
    return results


def faithfulness_rows(results: Sequence[Faithfulness]) -> list[dict]:
    """One row per result: checkpoint, method, metric, score and random baseline with standard errors, n."""
    return [{"checkpoint": fa.meta.get("checkpoint"), "method": fa.meta.get("method"), "metric": fa.metric,
             "score": fa.score, "se": fa.standard_error(), "random": fa.baseline,
             "random_se": fa.standard_error(random=True), "better": "higher" if fa.higher_is_better else "lower",
             "n": len(fa)} for fa in _check_results(results)]


def faithfulness_table(results: Sequence[Faithfulness]) -> str:
    """A plain-text table of :func:`faithfulness_rows` (``landscape gradcam --metrics`` prints it)."""
    rows = faithfulness_rows(results)
    header = ("checkpoint", "method", "metric", "score", "random map", "better", "n")
    lines = [[str(r["checkpoint"]), str(r["method"]), r["metric"], f"{r['score']:.4f} +- {r['se']:.4f}",
              f"{r['random']:.4f} +- {r['random_se']:.4f}", r["better"], str(r["n"])] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] +
                      [fmt.format(*line) for line in lines])


def faithfulness_plot(results: Sequence[Faithfulness], title: str | None = None, panel: float = 3.6) -> Plot:
    """Faithfulness per method and checkpoint: mean curves (top) and mean scores with the random baseline (bottom).

    One column per metric present. Curves are the mean probability of the explained class over the
    images (ROAD: MoRF solid, LeRF dotted); the random-map curve of each checkpoint is dashed grey.
    Bars give the mean score with its standard error; the hatched bar beside each checkpoint's
    group is the random-map baseline.

    Returns
    -------
    Plot
        ``values``: per ``<label>/<metric>`` the ``x``, ``curve`` (and ``lerf``), ``score`` and
        ``se``, and per ``<checkpoint>/<metric>/random`` the random-map ``curve`` and ``score``.
    """
    import matplotlib.pyplot as plt

    results = _check_results(results)
    metrics = [m for m in METRICS if any(fa.metric == m for fa in results)]
    fig, axes = plt.subplots(2, len(metrics), figsize=(panel * len(metrics) + 0.6, 2 * panel), squeeze=False)
    values: dict = {}
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = list(dict.fromkeys(_label(fa) for fa in results))
    for col, metric in enumerate(metrics):
        chosen = [fa for fa in results if fa.metric == metric]
        _faithfulness_curves(axes[0, col], chosen, metric, labels, colours, values)
        _faithfulness_bars(axes[1, col], chosen, metric, labels, colours, values)
    fig.suptitle(title or "Faithfulness of the maps against random maps", fontsize=12)
    fig.tight_layout()
    n = sorted({len(fa) for fa in results})
    caption = (f"{', '.join(metrics)} of {len(labels)} map methods/checkpoints on {'/'.join(map(str, n))} images "
               f"(seed {results[0].meta.get('seed')}); random-map baseline hatched/dashed; bars: mean +- standard "
               "error.")
    return Plot(fig, values, caption, kind="faithfulness")


def _faithfulness_curves(ax, chosen, metric, labels, colours, values) -> None:
    randoms: dict[str, Faithfulness] = {}
    for fa in chosen:
        label = _label(fa)
        colour = colours[labels.index(label) % len(colours)]
        ax.plot(fa.x, fa.curves.mean(0), color=colour, label=label + (" MoRF" if metric == "road" else ""))
        entry = {"x": fa.x, "curve": fa.curves.mean(0), "score": fa.score, "se": fa.standard_error()}
        if metric == "road":
            ax.plot(fa.x, fa.curves_lerf.mean(0), color=colour, linestyle=":", label=label + " LeRF")
            entry["lerf"] = fa.curves_lerf.mean(0)
        values.update({f"{label}/{metric}/{k}": v for k, v in entry.items()})
        randoms.setdefault(str(fa.meta.get("checkpoint")), fa)
    for name, fa in randoms.items():
        ax.plot(fa.x, fa.random.mean(0), color="grey", linestyle="--", label=f"{name} random")
        values[f"{name}/{metric}/random/curve"] = fa.random.mean(0)
    ax.set_xlabel({"deletion": "fraction of pixels removed", "insertion": "fraction of pixels restored",
                   "road": "fraction of pixels imputed"}[metric])
    ax.set_ylabel("probability of the explained class")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(metric)
    ax.legend(fontsize=6)


def _faithfulness_bars(ax, chosen, metric, labels, colours, values) -> None:
    position, ticks, names = 0.0, [], []
    by_checkpoint: dict[str, list[Faithfulness]] = {}
    for fa in chosen:
        by_checkpoint.setdefault(str(fa.meta.get("checkpoint")), []).append(fa)
    for name, group in by_checkpoint.items():
        for fa in group:
            colour = colours[labels.index(_label(fa)) % len(colours)]
            ax.bar(position, fa.score, yerr=fa.standard_error(), color=colour, capsize=3)
            ticks.append(position)
            names.append(_label(fa))
            position += 1
        random = group[0]
        ax.bar(position, random.baseline, yerr=random.standard_error(random=True), color="white", edgecolor="grey",
               hatch="//", capsize=3)
        values[f"{name}/{metric}/random/score"] = random.baseline
        ticks.append(position)
        names.append(f"{name} random")
        position += 1.6
    ax.set_xticks(ticks)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(_METRIC_NAMES[metric], fontsize=8)
    ax.axhline(0, color="black", linewidth=0.5)


__all__ = ["gradcam_grid", "gradcam_compare", "faithfulness_plot", "faithfulness_table", "faithfulness_rows"]
