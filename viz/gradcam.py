"""Grad-CAM figures (seed 002, Figs. 3.7 and 5.8): where the classifier looks.

* :func:`gradcam_grid`: per image, the original, the heat map over it and Guided Grad-CAM,
  titled with the predicted class and its confidence.
* :func:`gradcam_compare`: the same images under several checkpoints (e.g. CE beside
  MAM-SoftMax), one row of heat maps per checkpoint.

Digits are 8x8, so images and maps are drawn with nearest interpolation (every computed
pixel stays visible) on large panels. Only display scaling happens here: guided gradients
are shown on a symmetric colour scale set by each image's largest absolute value.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from landscape.errors import ArgumentError
from landscape.gradcam import CAM

from .figure import Plot

_ROW_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "guided-backprop": "|guided backprop|",
              "guided-gradcam": "Grad-CAM"}
_GUIDED_NAMES = {"guided-backprop": "guided backprop", "guided-gradcam": "Guided Grad-CAM"}


def _check(cam: CAM, max_images: int) -> int:
    if not isinstance(cam, CAM):
        raise ArgumentError(f"expected a landscape CAM (from ls.gradcam), got {type(cam).__name__}.")
    if max_images < 1:
        raise ArgumentError(f"max_images must be at least 1, got {max_images}.")
    return min(len(cam), int(max_images))


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


__all__ = ["gradcam_grid", "gradcam_compare"]
