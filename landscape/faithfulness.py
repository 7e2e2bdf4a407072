"""How faithful a saliency map is to the model: deletion, insertion and ROAD.

A map is faithful when the pixels it ranks first are the ones the model's decision rests on.
Three standard measures, all on the probability the model gives the explained class:

* **deletion** (Petsiuk et al. 2018, RISE): remove pixels in order of decreasing saliency, in
  ``steps`` equal steps, replacing them with a baseline (default: a constant 0, black, as RISE);
  the curve ``s_0 .. s_n`` should fall fast, so a *lower* area is better.
* **insertion** (same paper): start from the baseline (default: a strongly blurred copy of the
  image, as RISE) and restore pixels in the same order; the curve should rise fast, a *higher*
  area is better. Areas use the trapezoid rule on ``[0, 1]`` (:func:`auc`):
  ``(sum_k s_k - s_0 / 2 - s_n / 2) / n``.
* **ROAD** (Rong et al. 2022, "Remove and Debias"): removed pixels are not set to a constant
  (whose sharp edges themselves leak the mask's shape to the model) but imputed from their 8
  neighbours by noisy linear imputation (:func:`noisy_linear_impute`, noise 0.01). At each
  percentile 10, 20, ..., 90 the most relevant pixels (MoRF) or the least relevant (LeRF) are
  removed; ``morf`` and ``lerf`` are the mean probabilities over the percentiles (MoRF low and
  LeRF high is good) and the per-image score is ``(lerf - morf) / 2``, as pytorch-grad-cam's
  ``ROADCombined``: *higher* is better, about 0 for a random map.

Every result carries the same measure for **random maps** (a random pixel order per image, from
``seed``), the baseline a map must beat. Ties in a map (a Grad-CAM map is often 0 over large
areas) are broken at random with the same seed, never by raster order.

Pixels are removed across all channels at once; imputation and baselines work on the raw images
in [0, 1] (the checkpoint's normalisation is applied afterwards), so noise 0.01 is 1% of the
pixel range.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .checkpoint import as_checkpoint
from .data import Dataset
from .errors import ArgumentError, check_choice, check_scalar
from .gradcam import CAM, _eval_mode
from .objective import OutputSpec, logits_of
from .progress import Progress, bar
from .results import Result

METRICS = ("deletion", "insertion", "road")
BASELINES = ("blur", "constant")
PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
DEFAULT_BASELINE = {"deletion": "constant", "insertion": "blur"}  # as RISE's evaluation code
MAX_STEPS = 100  # default steps: one per pixel up to this many
# Rong et al.'s neighbour weights: 1/6 for the four direct neighbours, 1/12 for the diagonals.
NEIGHBOURS = tuple(((dy, dx), 1 / 6 if dy == 0 or dx == 0 else 1 / 12)
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


@dataclasses.dataclass(repr=False)  # keep Result's short summary instead of dumping arrays
class Faithfulness(Result):
    """Faithfulness of a batch of saliency maps, with the random-map baseline.

    Attributes
    ----------
    x : np.ndarray
        ``(K,)``: the fraction of pixels removed (deletion), restored (insertion) or removed at
        each ROAD percentile.
    curves : np.ndarray
        ``(N, K)``: probability of the explained class along ``x`` in the map's order (ROAD: MoRF).
    random : np.ndarray
        ``(N, K)``: the same for a random map.
    curves_lerf, random_lerf : np.ndarray or None
        ``(N, K)``: ROAD's least-relevant-first curves of the map and of the random map.
    scores : np.ndarray
        ``(N,)``: per image, the area under ``curves`` (deletion, insertion) or ROAD's
        ``(lerf - morf) / 2``.
    random_scores : np.ndarray
        ``(N,)``: the same for the random maps.
    original : np.ndarray
        ``(N,)``: probability of the explained class on the intact image.
    target : np.ndarray
        ``(N,)``: the explained class.
    metric : str
        ``"deletion"``, ``"insertion"`` or ``"road"``.
    higher_is_better : bool
        False for deletion, True for insertion and ROAD.
    meta : dict
        Provenance (``checkpoint``, ``digest``, ``data``, ``n_samples``, ``seed``), the map's
        ``method`` and ``layer``, and the options (``steps``, ``baseline``, ``blur_sigma``,
        ``value``, ``percentiles``, ``noise``).
    """

    x: np.ndarray
    curves: np.ndarray
    random: np.ndarray
    curves_lerf: np.ndarray | None
    random_lerf: np.ndarray | None
    scores: np.ndarray
    random_scores: np.ndarray
    original: np.ndarray
    target: np.ndarray
    metric: str
    higher_is_better: bool
    meta: dict = dataclasses.field(default_factory=dict)

    kind = "faithfulness"

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def score(self) -> float:
        """Mean per-image score: the mean AUC (deletion, insertion) or ROAD's combined score."""
        return float(np.mean(self.scores))

    @property
    def baseline(self) -> float:
        """The same mean for the random maps."""
        return float(np.mean(self.random_scores))

    @property
    def auc(self) -> float:
        """Mean area under the deletion or insertion curve (ROAD has a score, not an area: use ``.score``)."""
        if self.metric == "road":
            raise ArgumentError("a ROAD result has no AUC; read .score (mean (lerf - morf) / 2), .morf or .lerf.")
        return self.score

    @property
    def morf(self) -> float:
        """ROAD: mean probability over images and percentiles with the most relevant pixels removed."""
        return float(np.mean(self.curves)) if self.metric == "road" else math.nan

    @property
    def lerf(self) -> float:
        """ROAD: mean probability over images and percentiles with the least relevant pixels removed."""
        return float(np.mean(self.curves_lerf)) if self.metric == "road" else math.nan

    def standard_error(self, random: bool = False) -> float:
        """Standard error of :attr:`score` (or :attr:`baseline`) over the images."""
        values = self.random_scores if random else self.scores
        return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan


# -- the pieces -----------------------------------------------------------------------------------
def auc(curve: np.ndarray) -> np.ndarray:
    """Trapezoid-rule area of curves ``s_0 .. s_n`` sampled evenly on ``[0, 1]``: ``(sum s - s_0/2 - s_n/2) / n``.

    Parameters
    ----------
    curve : np.ndarray
        ``(..., n + 1)`` with ``n >= 1``.

    Returns
    -------
    np.ndarray
        ``(...)``, the area of each curve.
    """
    s = np.asarray(curve, dtype=np.float64)
    if s.shape[-1] < 2:
        raise ArgumentError(f"a curve needs at least 2 points for an area, got {s.shape[-1]}.")
    return (s.sum(-1) - s[..., 0] / 2 - s[..., -1] / 2) / (s.shape[-1] - 1)


def saliency(cam: CAM) -> np.ndarray:
    """The map ``(N, H, W)`` that is scored: ``cam.maps``; for Guided Grad-CAM the channel maximum of ``|guided|``."""
    if cam.meta.get("method") == "guided-gradcam" and cam.guided is not None:
        return np.abs(cam.guided).max(axis=1)
    return cam.maps


def pixel_order(maps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per image, the flat pixel indices from most to least salient; ties broken at random by ``rng``."""
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    ties = rng.random(flat.shape)
    return np.stack([np.lexsort((t, -f)) for f, t in zip(flat, ties)])


def random_order(n: int, pixels: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random pixel order per image: the random-map baseline."""
    return np.stack([rng.permutation(pixels) for _ in range(n)])


def blurred(images: np.ndarray, sigma: float) -> np.ndarray:
    """Each channel of each image blurred by a Gaussian of ``sigma`` pixels (:func:`scipy.ndimage.gaussian_filter`).

    Edges are continued by their nearest pixel, so the border does not darken (RISE pads with zeros).
    """
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(np.asarray(images, dtype=np.float64), sigma=(0, 0, sigma, sigma), mode="nearest")


def noisy_linear_impute(image: np.ndarray, removed: np.ndarray, noise: float = 0.01,
                        rng: np.random.Generator | None = None) -> np.ndarray:
    """Fill the ``removed`` pixels of one image from their 8 neighbours (Rong et al. 2022), plus Gaussian noise.

    Each removed pixel takes the weighted mean of its neighbours inside the image (weights 1/6
    direct, 1/12 diagonal), known or themselves imputed: one sparse linear system for all removed
    pixels, solved by :func:`scipy.sparse.linalg.spsolve` (all channels at once); then
    ``noise * N(0, 1)`` is added to each imputed value. A constant image stays constant (with
    ``noise=0``), and so does a linear ramp away from the border.

    Parameters
    ----------
    image : np.ndarray
        ``(C, H, W)``.
    removed : np.ndarray
        ``(H, W)`` boolean: the pixels to impute (not all of them).
    noise : float
        Standard deviation of the added noise, in pixel units.
    rng : np.random.Generator, optional
        Source of the noise (required when ``noise > 0``).

    Returns
    -------
    np.ndarray
        The imputed image (float64), known pixels unchanged.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    image = np.asarray(image, dtype=np.float64)
    removed = np.asarray(removed, dtype=bool)
    channels, height, width = image.shape
    if removed.all():
        raise ArgumentError("noisy linear imputation needs at least one known pixel; remove fewer pixels.")
    out = image.copy()
    ys, xs = np.nonzero(removed)
    if len(ys) == 0:
        return out
    unknown = np.full((height, width), -1)
    unknown[ys, xs] = np.arange(len(ys))
    rows, cols, vals = [], [], []
    diagonal = np.zeros(len(ys))
    rhs = np.zeros((len(ys), channels))
    for (dy, dx), weight in NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        idx, ny, nx = np.nonzero(inside)[0], ny[inside], nx[inside]
        diagonal[idx] += weight
        other = unknown[ny, nx]
        free = other >= 0
        rows.append(idx[free])
        cols.append(other[free])
        vals.append(np.full(free.sum(), -weight))
        rhs[idx[~free]] += weight * image[:, ny[~free], nx[~free]].T
    n = len(ys)
    index = np.arange(n)
    system = coo_matrix((np.concatenate([diagonal, *vals]), (np.concatenate([index, *rows]),
                                                             np.concatenate([index, *cols]))), shape=(n, n)).tocsc()
    solved = np.asarray(spsolve(system, rhs)).reshape(n, channels)
    if noise > 0:
        if rng is None:
            raise ArgumentError("noisy_linear_impute needs rng= (a numpy Generator) when noise > 0.")
        solved = solved + noise * rng.standard_normal(solved.shape)
    out[:, ys, xs] = solved.T
    return out


# -- the public function ----------------------------------------------------------------------------
def faithfulness(ck: Any, cam: CAM | np.ndarray, images: Dataset | np.ndarray | torch.Tensor | None = None,
                 metric: str = "deletion", *, steps: int | None = None, baseline: str | None = None,
                 blur_sigma: float | None = None, value: float = 0.0,
                 percentiles: Sequence[float] = PERCENTILES, noise: float = 0.01, seed: int = 0,
                 target: int | Sequence[int] | np.ndarray | None = None, batch_size: int = 512,
                 output: OutputSpec = None, verbose: bool | None = None) -> Faithfulness:
    """Score how faithful saliency maps are to the model: deletion, insertion or ROAD (see the module docstring).

    Parameters
    ----------
    ck : Checkpoint, path or nn.Module
        The model the maps explain (through :func:`~landscape.checkpoint.as_checkpoint`; its
        normalisation is applied to the perturbed raw images).
    cam : CAM or np.ndarray
        A result of :func:`landscape.gradcam` (its ``target`` classes are scored), or saliency
        maps ``(N, H, W)`` of any method (then ``target``, by default the predicted class).
    images : Dataset, np.ndarray or torch.Tensor, optional
        The raw images ``(N, C, H, W)`` in [0, 1] the maps are of (default: ``cam.images``; a
        CAM must have been computed on these very images).
    metric : {"deletion", "insertion", "road"}
        The measure.
    steps : int, optional
        Deletion/insertion: number of equal steps ``n`` (the curve has ``n + 1`` points); default
        one step per pixel, at most 100.
    baseline : {"constant", "blur"}, optional
        Deletion/insertion: what removed pixels become (deletion) or the image starts from
        (insertion); default ``"constant"`` for deletion and ``"blur"`` for insertion, as RISE.
    blur_sigma : float, optional
        Standard deviation of the blur in pixels; default an eighth of the image side (RISE's
        sigma 5 on 224 pixels is far lighter).
    value : float
        The constant baseline's pixel value (raw units).
    percentiles : sequence of float
        ROAD: percentages of pixels removed, each in (0, 100).
    noise : float
        ROAD: standard deviation of the imputation noise.
    seed : int
        Seeds the random maps, the tie-breaking and the imputation noise.
    target : int or sequence of int, optional
        With plain maps: the class scored (default: the predicted class).
    batch_size : int
        Perturbed images per forward pass.
    output : int, str or callable, optional
        The model's output adapter (see :mod:`landscape.objective`).
    verbose : bool, optional
        Progress (False: silent).

    Returns
    -------
    Faithfulness

    Raises
    ------
    ArgumentError
        An unknown metric or baseline, an option out of range, maps that do not fit the images.
    """
    metric = check_choice(metric, "metric", METRICS)
    seed = check_scalar(seed, "seed", int, min=0)
    batch_size = check_scalar(batch_size, "batch_size", int, min=1)
    ck = as_checkpoint(ck, output=output)
    raw, maps, cam_target, info = _inputs(cam, images, ck)
    height, width = maps.shape[1:]
    pixels = height * width
    options: dict[str, Any] = {"metric": metric, "seed": seed}
    rng = np.random.default_rng(seed)
    orders = {"map": pixel_order(maps, rng), "random": random_order(len(maps), pixels, rng)}
    runs = 4 if metric == "road" else 2  # the map and the random map; ROAD: each MoRF and LeRF
    with _eval_mode(ck.model), torch.inference_mode():
        original, target = _probabilities(ck, torch.as_tensor(raw), cam_target if target is None else target,
                                          batch_size)
        if metric == "road":
            pcts = _percentiles(percentiles)
            noise = check_scalar(noise, "noise", float, min=0)
            options.update(percentiles=list(pcts), noise=noise)
            x = np.asarray(pcts) / 100
        else:
            steps = _steps(steps, pixels)
            base, options = _baseline(metric, baseline, blur_sigma, value, raw, options)
            options["steps"] = steps
            x = np.arange(steps + 1) / steps
        counts = np.rint(x * pixels).astype(int)
        with bar(runs * len(raw) * len(x), f"faithfulness {metric}", verbose, unit="img") as progress:
            if metric == "road":
                curves = {(name, lerf): _road(ck, raw, order, counts, lerf, noise, rng, target, batch_size, progress)
                          for name, order in orders.items() for lerf in (False, True)}
            else:
                curves = {(name, False): _curve(ck, raw, base, order, counts, metric, target, batch_size, progress)
                          for name, order in orders.items()}
    if metric == "road":
        def score(name):
            return ((curves[(name, True)] - curves[(name, False)]) / 2).mean(1)
    else:
        def score(name):
            return auc(curves[(name, False)])
    meta = {"checkpoint": ck.name, "digest": ck.digest, "arch": ck.meta.get("arch"), "n_samples": int(len(raw)),
            **info, **options}
    return Faithfulness(x=x, curves=curves[("map", False)], random=curves[("random", False)],
                        curves_lerf=curves.get(("map", True)), random_lerf=curves.get(("random", True)),
                        scores=score("map"), random_scores=score("random"), original=original, target=target,
                        metric=metric, higher_is_better=metric != "deletion", meta=meta)


def _inputs(cam: CAM | np.ndarray, images: Any, ck) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict]:
    """Raw images ``(N, C, H, W)``, maps ``(N, H, W)``, the CAM's classes (or None) and provenance."""
    if isinstance(cam, CAM):
        maps, cam_target = saliency(cam), np.asarray(cam.target)
        info = {"method": cam.meta.get("method"), "layer": cam.meta.get("layer"), "data": cam.meta.get("data")}
    elif isinstance(cam, (np.ndarray, torch.Tensor)):
        maps, cam_target = np.asarray(cam.cpu() if isinstance(cam, torch.Tensor) else cam), None
        info = {"method": "maps", "layer": None, "data": "images"}
    else:
        raise ArgumentError(f"cam must be a CAM (ls.gradcam) or saliency maps (N, H, W), got {type(cam).__name__}.")
    if images is None:
        if not isinstance(cam, CAM):
            raise ArgumentError("plain saliency maps need their images: pass images=(N, C, H, W) raw images.")
        raw = cam.images
    else:
        if isinstance(images, Dataset):
            info["data"] = images.name or info["data"]
            images = images.x
        raw = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images, dtype=np.float32)
        if isinstance(cam, CAM) and (raw.shape != cam.images.shape or not np.allclose(raw, cam.images, atol=1e-6)):
            raise ArgumentError("the CAM was computed on other images than those given; pass the images of "
                                "ls.gradcam (or leave images out to use cam.images).")
    if raw.ndim != 4 or maps.ndim != 3 or maps.shape != (raw.shape[0], *raw.shape[2:]):
        raise ArgumentError(f"maps {tuple(maps.shape)} do not fit images {tuple(raw.shape)}; give one (H, W) map per "
                            "(C, H, W) image.")
    if len(raw) == 0:
        raise ArgumentError("no images to score; give at least one.")
    if not np.isfinite(maps).all():
        raise ArgumentError("the saliency maps hold NaN or infinite values; fix the maps first.")
    return raw.astype(np.float32), maps, cam_target, info


def _steps(steps: int | None, pixels: int) -> int:
    if steps is None:
        return min(pixels, MAX_STEPS)
    return check_scalar(steps, "steps", int, min=1, max=pixels)


def _percentiles(percentiles: Sequence[float]) -> tuple[float, ...]:
    values = tuple(check_scalar(p, "percentiles", float, min=0, max=100, include_min=False, include_max=False)
                   for p in np.atleast_1d(np.asarray(percentiles, dtype=object)).tolist())
    if not values:
        raise ArgumentError("percentiles is empty; give at least one percentage in (0, 100), e.g. 10..90.")
    return values


def _baseline(metric: str, baseline: str | None, blur_sigma: float | None, value: float, raw: np.ndarray,
              options: dict) -> tuple[np.ndarray, dict]:
    """The baseline images and the options that made them."""
    baseline = check_choice(baseline or DEFAULT_BASELINE[metric], "baseline", BASELINES)
    if baseline == "blur":
        sigma = max(raw.shape[2:]) / 8 if blur_sigma is None else check_scalar(blur_sigma, "blur_sigma", float,
                                                                                 min=0, include_min=False)
        return blurred(raw, sigma).astype(np.float32), {**options, "baseline": "blur", "blur_sigma": sigma}
    value = check_scalar(value, "value", float)
    return np.full_like(raw, value), {**options, "baseline": "constant", "value": value}


def _probabilities(ck, raw: torch.Tensor, target: Any, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Probability of the explained class on the intact images, and those classes (default: predicted)."""
    probs = torch.cat([_softmax(ck, raw[i:i + batch_size]) for i in range(0, len(raw), batch_size)]).numpy()
    if target is None:
        return probs.max(1), probs.argmax(1)
    t = np.asarray(target).reshape(-1)
    if t.dtype.kind not in "iu" or t.size not in (1, len(raw)) or t.min() < 0 or t.max() >= probs.shape[1]:
        raise ArgumentError(f"target must be one class or one per image in [0, {probs.shape[1] - 1}], got "
                            f"{t.tolist()[:5]}.")
    t = np.broadcast_to(t, (len(raw),)).astype(np.int64)
    return probs[np.arange(len(raw)), t], t


def _softmax(ck, raw: torch.Tensor) -> torch.Tensor:
    x = ck.normalize(raw.to(ck.device, torch.float32))
    return torch.softmax(logits_of(ck.model, x).float(), dim=1).cpu()


def _batched(ck, images: Iterator[tuple[int, np.ndarray]], target: np.ndarray, batch_size: int,
             progress: Progress) -> list[np.ndarray]:
    """Probability of each image's target class on a stream of ``(image index, perturbed copies)``."""
    pending: list[tuple[int, np.ndarray]] = []
    out: list[np.ndarray] = []

    def flush():
        idx = np.concatenate([np.full(len(b), i) for i, b in pending])
        probs = _softmax(ck, torch.as_tensor(np.concatenate([b for _, b in pending]))).numpy()
        out.append(probs[np.arange(len(idx)), target[idx]])
        pending.clear()

    size = 0
    for i, batch in images:
        pending.append((i, batch))
        size += len(batch)
        if size >= batch_size:
            flush()
            progress.update(size)
            size = 0
    if pending:
        flush()
        progress.update(size)
    return out


def _curve(ck, raw: np.ndarray, base: np.ndarray, order: np.ndarray, counts: np.ndarray, metric: str,
           target: np.ndarray, batch_size: int, progress: Progress) -> np.ndarray:
    """Deletion or insertion curve ``(N, K)``: the first ``counts[k]`` pixels of ``order`` removed or restored."""
    n, channels, height, width = raw.shape

    def perturbed():
        for i in range(n):
            rank = np.empty(height * width, dtype=np.int64)
            rank[order[i]] = np.arange(height * width)
            chosen = (rank[None, :] < counts[:, None]).reshape(len(counts), 1, height, width)
            if metric == "deletion":
                yield i, np.where(chosen, base[i], raw[i]).astype(np.float32)
            else:
                yield i, np.where(chosen, raw[i], base[i]).astype(np.float32)

    flat = np.concatenate(_batched(ck, perturbed(), target, batch_size, progress))
    return flat.reshape(n, len(counts))


def _road(ck, raw: np.ndarray, order: np.ndarray, counts: np.ndarray, lerf: bool, noise: float,
          rng: np.random.Generator, target: np.ndarray, batch_size: int, progress: Progress) -> np.ndarray:
    """ROAD curve ``(N, P)``: at each count the most (or, ``lerf``, least) salient pixels imputed."""
    n, channels, height, width = raw.shape

    def imputed():
        for i in range(n):
            ranked = order[i][::-1] if lerf else order[i]
            copies = []
            for count in counts:
                removed = np.zeros(height * width, dtype=bool)
                removed[ranked[:count]] = True
                copies.append(noisy_linear_impute(raw[i], removed.reshape(height, width), noise, rng))
            yield i, np.stack(copies).astype(np.float32)

    flat = np.concatenate(_batched(ck, imputed(), target, batch_size, progress))
    return flat.reshape(n, len(counts))


__all__ = ["Faithfulness", "faithfulness", "auc", "saliency", "pixel_order", "random_order", "blurred",
           "noisy_linear_impute", "METRICS", "BASELINES", "PERCENTILES", "NEIGHBOURS"]
