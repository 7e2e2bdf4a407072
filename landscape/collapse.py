"""Neural collapse (Papyan, Han & Donoho 2020): how far features and classifier are from a simplex ETF.

In the terminal phase of training, Papyan et al. observed four effects on the training set:

* **NC1**, within-class variability collapse: every feature approaches its class mean;
* **NC2**, the centred class means (and the classifier rows) approach a simplex equiangular tight
  frame (ETF): equal norms, and pairwise cosines all equal to ``-1/(C-1)``, the largest possible
  equal angle between ``C`` vectors;
* **NC3**, self-duality: the classifier rows align with the centred class means;
* **NC4**, the network's decision approaches the nearest-class-centre (NCC) rule.

:func:`neural_collapse` measures all four on features of any layer (classifier weights from the
checkpoint's ``head``); :func:`collapse_curve` follows them across training snapshots, as in
Papyan et al.'s figures (each metric against epoch on a log scale, one line per loss).

Statistics are accumulated over batches in float64 on the device (Chan, Golub & LeVeque's
pairwise update of the within-class scatter, so a within-class spread that is tiny next to the
class means, which is exactly the collapsed regime, is not lost to cancellation), and the NCC
rule is applied in a second pass with the final class means.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from .checkpoint import Checkpoint, as_checkpoint, load_checkpoint
from .data import as_dataset
from .device import resolve_device
from .embedding import angle_between, normalize_rows
from .errors import ArgumentError, check_scalar
from .features import DEFAULT_LAYER, Features, extract_features
from .models import split_head
from .results import Result

# The metrics every NeuralCollapse holds and every CollapseCurve follows, in figure order.
METRICS = ("nc1", "nc2_equinorm", "nc2_equinorm_w", "nc2_equiangular", "nc2_equiangular_w",
           "nc2_max_angle_gap", "nc2_max_angle_gap_w", "nc3", "nc4")
# More numbers recorded per snapshot (Papyan et al.'s Fig. 3 standard deviation of the cosines,
# the traces behind NC1, and the accuracy of the network's predictions).
EXTRA = ("nc2_cos_std", "nc2_cos_std_w", "trace_sw", "trace_sb", "accuracy")
SNAPSHOT_SUFFIXES = (".safetensors", ".pt", ".pth")


@dataclasses.dataclass(repr=False)
class NeuralCollapse(Result):
    """Neural-collapse metrics of one set of features (and classifier), see :func:`neural_collapse`.

    Every metric is 0 for features that have collapsed to a simplex ETF with a self-dual
    classifier; metrics of the classifier (suffix ``_w``) and ``nc3`` are NaN without weights,
    and ``nc4`` is NaN without predictions.

    Attributes
    ----------
    nc1 : float
        ``tr(Sigma_W Sigma_B^+) / C``.
    nc2_equinorm, nc2_equinorm_w : float
        ``std / mean`` of the norms of the centred class means / of the classifier rows.
    nc2_equiangular, nc2_equiangular_w : float
        Mean over class pairs of ``|cos + 1/(C-1)|`` (Papyan et al.'s "maximal-angle equiangularity").
    nc2_max_angle_gap, nc2_max_angle_gap_w : float
        ``arccos(-1/(C-1))`` minus the smallest angle between two class means (rows), in degrees:
        how much closer the nearest two classes are than a simplex ETF allows. Always >= 0.
    nc2_cos_std, nc2_cos_std_w : float
        Standard deviation of the pairwise cosines (Papyan et al.'s Fig. 3 equiangularity).
    nc3 : float
        ``|| W / ||W||_F - M / ||M||_F ||_F^2`` (self-duality), ``M`` the centred class means.
    nc4 : float
        Fraction of samples whose nearest class mean is not the network's prediction.
    trace_sw, trace_sb : float
        ``tr(Sigma_W)`` and ``tr(Sigma_B)``.
    accuracy : float
        Fraction of predictions equal to the labels (NaN without predictions).
    labels : np.ndarray
        The ``C`` labels present, in order; every per-class array follows it.
    counts : np.ndarray
        Samples per class.
    class_means : np.ndarray
        ``(C, d)`` class means (not centred), float64.
    global_mean : np.ndarray
        ``(d,)`` mean of the class means (the centre of the frame).
    mean_cosines, weight_cosines : np.ndarray
        ``(C, C)`` cosines between centred class means / classifier rows (``(0, 0)`` without weights).
    classes : list of str
    meta : dict
        The features' provenance (``checkpoint``, ``digest``, ``layer``, ``data``, ...) plus
        ``n_samples``, ``n_classes``, ``dim``, ``weights`` (where the classifier came from),
        ``predictions`` and ``epoch`` (from a checkpoint's meta).
    """

    nc1: float
    nc2_equinorm: float
    nc2_equiangular: float
    nc2_max_angle_gap: float
    nc2_cos_std: float
    nc2_equinorm_w: float
    nc2_equiangular_w: float
    nc2_max_angle_gap_w: float
    nc2_cos_std_w: float
    nc3: float
    nc4: float
    trace_sw: float
    trace_sb: float
    accuracy: float
    labels: np.ndarray
    counts: np.ndarray
    class_means: np.ndarray
    global_mean: np.ndarray
    mean_cosines: np.ndarray
    weight_cosines: np.ndarray
    classes: list = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        # NaN travels through JSON as null (landscape.io.to_jsonable); read it back as NaN
        for name in (*METRICS, *EXTRA):
            if getattr(self, name) is None:
                setattr(self, name, float("nan"))

    @property
    def name(self) -> str:
        """The checkpoint's name from the meta, else ``"features"``."""
        return str(self.meta.get("checkpoint", "features"))

    def metrics(self) -> dict[str, float]:
        """The metrics of :data:`METRICS` and :data:`EXTRA` as a plain dict."""
        return {k: float(getattr(self, k)) for k in (*METRICS, *EXTRA)}


# -- inputs ---------------------------------------------------------------------------------
def _labels_array(y, n: int) -> np.ndarray:
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y.shape != (n,) or y.dtype.kind not in "iu":
        raise ArgumentError(f"labels must be {n} integers (one per feature row), got an array of shape {y.shape} "
                            f"and dtype {y.dtype}.")
    if n and y.min() < 0:
        raise ArgumentError(f"labels must be >= 0, got {int(y.min())}.")
    return y.astype(np.int64)


def _feature_array(x) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if x.ndim != 2 or x.dtype.kind not in "fiu" or x.shape[0] == 0:
        raise ArgumentError(f"features must be a non-empty (N, d) array of numbers, got shape {x.shape}; flatten "
                            "activations with more axes, or pass a Features object.")
    return x


def _as_features(features, data, layer, batch_size: int, subset, seed: int,
                 device) -> tuple[Features, Any, np.ndarray | None, str | None]:
    """``(features, checkpoint or None, predictions or None, where the predictions come from)``."""
    if isinstance(features, Features):
        if data is not None or layer is not None:
            raise ArgumentError("data and layer apply when neural_collapse is given a checkpoint; these features "
                                "were already extracted (leave data and layer out).")
        return features, None, features.pred, "network"
    if isinstance(features, (Checkpoint, str, os.PathLike, nn.Module)):
        if data is None:
            raise ArgumentError("neural_collapse of a checkpoint needs data=...: the samples whose features are "
                                "measured (Papyan et al. measure the training set).")
        ck = as_checkpoint(features, device=device)
        feat = extract_features(ck, as_dataset(data, subset, seed), layer=layer, batch_size=batch_size)
        if ck.meta.get("epoch") is not None:
            feat.meta["epoch"] = ck.meta["epoch"]
        return feat, ck, feat.pred, "network"
    if isinstance(features, (tuple, list)) and len(features) in (2, 3):
        x = _feature_array(features[0])
        y = _labels_array(features[1], len(x))
        pred = None if len(features) == 2 or features[2] is None else _labels_array(features[2], len(x))
        feat = Features(x=x, y=y, pred=pred if pred is not None else np.full(len(y), -1, dtype=np.int64),
                        meta={"layer": "given", "data": "arrays"})
        return feat, None, pred, "given" if pred is not None else None
    raise ArgumentError(f"features must be a Features object, an (x, y) or (x, y, pred) tuple of arrays, or a "
                        f"checkpoint with data=..., got {type(features).__name__}.")


def _classifier(weights, dim: int) -> tuple[np.ndarray | None, np.ndarray | None, str | None, str | None]:
    """``(W (K, d), bias or None, description, digest or None)`` from any form of classifier weights."""
    if weights is None:
        return None, None, None, None
    digest, what = None, "array"
    if isinstance(weights, (str, os.PathLike)):
        weights = load_checkpoint(weights, device="cpu")
    if isinstance(weights, Checkpoint):
        digest, what = weights.digest, f"head of {weights.name}"
        weights = weights.model
    if isinstance(weights, nn.Module) and not isinstance(weights, nn.Linear):
        parts = split_head(weights)
        if parts is None:
            raise ArgumentError(f"model {type(weights).__name__} has no linear `head`; pass the classifier's weight "
                                "matrix (C, d) as weights=... .")
        what = what if what != "array" else f"head of {type(weights).__name__}"
        weights = parts[1]
    bias = None
    if isinstance(weights, nn.Linear):
        what = what if what != "array" else "nn.Linear"
        bias = None if weights.bias is None else weights.bias.detach().cpu().double().numpy()
        weights = weights.weight
    elif isinstance(weights, tuple) and len(weights) == 2:
        weights, bias = weights
        bias = None if bias is None else np.asarray(torch.as_tensor(bias).detach().cpu(), dtype=np.float64)
    w = np.asarray(torch.as_tensor(weights).detach().cpu(), dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != dim:
        raise ArgumentError(f"classifier weights of shape {w.shape} do not fit features of dimension {dim}: they "
                            f"must be (C, {dim}), one row per class; the head reads the penultimate features "
                            "(layer=None), so leave weights out for another layer.")
    if bias is not None and bias.shape != (w.shape[0],):
        raise ArgumentError(f"classifier bias of shape {bias.shape} does not fit weights of shape {w.shape}.")
    return w, bias, what, digest


# -- streamed statistics ----------------------------------------------------------------------
def _batches(x: np.ndarray, batch_size: int, device: torch.device) -> Iterable[tuple[int, torch.Tensor]]:
    for i in range(0, len(x), batch_size):
        yield i, torch.as_tensor(x[i:i + batch_size]).to(device=device, dtype=torch.float64)


def class_statistics(x: np.ndarray, y: np.ndarray, n_classes: int, batch_size: int = 4096,
                     device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts, class means and total within-class scatter of ``x``, accumulated over batches in float64.

    Each batch's own class means and scatter are merged into the running ones with the pairwise
    update of Chan, Golub & LeVeque (1979): ``S += S_b + (n_a n_b / n) delta delta^T`` per class,
    ``delta`` the difference of the class means. Summed over classes this needs only one
    ``(d, d)`` matrix, and it never forms ``E[h h^T] - mu mu^T``, which would cancel away a
    within-class spread far below the class means.

    Parameters
    ----------
    x : np.ndarray
        ``(N, d)`` features.
    y : np.ndarray
        ``(N,)`` integer labels in ``[0, n_classes)``.
    n_classes : int
    batch_size : int
        Rows per batch on the device.
    device : str or torch.device

    Returns
    -------
    counts : np.ndarray
        ``(n_classes,)`` samples per class.
    means : np.ndarray
        ``(n_classes, d)`` class means (zero for an absent class).
    scatter : np.ndarray
        ``(d, d)`` within-class scatter ``sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T``.
    """
    device = torch.device(device)
    d = x.shape[1]
    counts = torch.zeros(n_classes, dtype=torch.float64, device=device)
    means = torch.zeros(n_classes, d, dtype=torch.float64, device=device)
    scatter = torch.zeros(d, d, dtype=torch.float64, device=device)
    for i, h in _batches(x, batch_size, device):
        yb = torch.as_tensor(y[i:i + batch_size]).to(device)
        nb = torch.bincount(yb, minlength=n_classes).to(torch.float64)
        mb = torch.zeros_like(means).index_add_(0, yb, h) / nb.clamp(min=1)[:, None]
        z = h - mb[yb]
        total = counts + nb
        delta = mb - means
        merge = torch.where(nb > 0, counts * nb / total.clamp(min=1), 0.0)
        scatter += z.T @ z + (delta * merge[:, None]).T @ delta
        means += delta * torch.where(nb > 0, nb / total.clamp(min=1), 0.0)[:, None]
        counts = total
    return counts.cpu().numpy(), means.cpu().numpy(), scatter.cpu().numpy()


def _ncc_pass(x: np.ndarray, means: np.ndarray, labels: np.ndarray, w: np.ndarray | None, b: np.ndarray | None,
              batch_size: int, device: torch.device) -> tuple[np.ndarray, np.ndarray | None]:
    """Nearest-class-centre labels of every row and, with a classifier, its own argmax labels."""
    mu = torch.as_tensor(means, device=device)
    sq = (mu * mu).sum(1)
    lab = torch.as_tensor(labels, device=device)
    ncc, lin = [], []
    wt = None if w is None else torch.as_tensor(w, device=device)
    bt = None if b is None or wt is None else torch.as_tensor(b, device=device)
    for _, h in _batches(x, batch_size, device):
        # ||h - mu||^2 = ||h||^2 - 2 h.mu + ||mu||^2; the first term is the same for every class
        ncc.append(lab[torch.argmin(sq[None, :] - 2.0 * h @ mu.T, dim=1)].cpu())
        if wt is not None:
            logits = h @ wt.T + (bt if bt is not None else 0.0)
            lin.append(logits.argmax(1).cpu())
    return torch.cat(ncc).numpy(), (torch.cat(lin).numpy() if lin else None)


# -- the metrics ----------------------------------------------------------------------------
def _frame_metrics(v: np.ndarray) -> tuple[float, float, float, float, np.ndarray]:
    """Equinorm, equiangularity, maximal-angle gap (degrees), cosine std and cosines of the rows of ``v``."""
    c = len(v)
    norms = np.linalg.norm(v, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        equinorm = float(np.std(norms, ddof=1) / np.mean(norms))
    u = normalize_rows(v)
    cos = u @ u.T
    iu = np.triu_indices(c, k=1)
    off = cos[iu]
    equiangular = float(np.mean(np.abs(off + 1.0 / (c - 1))))
    angles = angle_between(u[:, None, :], u[None, :, :])[iu]
    gap = float(math.degrees(math.acos(-1.0 / (c - 1))) - angles.min())
    cos_std = float(np.std(off, ddof=1)) if len(off) > 1 else 0.0
    return equinorm, equiangular, gap, cos_std, cos


def _nc1(centred: np.ndarray, sigma_w: np.ndarray) -> float:
    """``tr(Sigma_W Sigma_B^+) / C`` with ``Sigma_B = M^T M / C``, from the SVD of the centred means ``M``.

    With ``M = U S V^T``, ``Sigma_B^+ = V diag(C / s^2) V^T`` over the singular values above
    numpy's rank tolerance (``s_max * max(C, d) * eps``), so ``nc1 = sum_k v_k^T Sigma_W v_k / s_k^2``.
    """
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    keep = s > (s.max() if s.size else 0.0) * max(centred.shape) * np.finfo(np.float64).eps
    if not keep.any():  # every class mean coincides: no between-class spread at all
        return float("inf") if np.trace(sigma_w) > 0 else float("nan")
    v = vt[keep]
    return float(np.sum(np.einsum("kd,de,ke->k", v, sigma_w, v) / s[keep] ** 2))


def neural_collapse(features, weights=None, *, data=None, layer: str | None = None, batch_size: int = 4096,
                    subset: int | None = None, seed: int = 0, device: str | torch.device = "auto") -> NeuralCollapse:
    """The neural-collapse metrics of Papyan, Han & Donoho (2020) of features and their classifier.

    With features ``h_i`` of labels ``y_i`` in ``C`` classes present, class means ``mu_c``, their
    mean ``mu_G = mean_c mu_c`` (the centre of the frame; with balanced classes the global mean),
    the centred means ``M = [mu_c - mu_G]`` (``C x d``) and classifier rows ``W`` (``C x d``):

    * ``nc1 = tr(Sigma_W Sigma_B^+) / C``, with ``Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T``
      and ``Sigma_B = (1/C) sum_c (mu_c - mu_G)(mu_c - mu_G)^T``, ``+`` the Moore-Penrose
      pseudo-inverse. This is the normalisation of Papyan et al.'s Fig. 6 (and of Zhu et al. 2021);
      many public implementations descended from Papyan et al.'s notebook report
      ``tr(Sigma_W Sigma_B^+)`` without the ``1/C``, i.e. ``C`` times this value.
    * ``nc2_equinorm`` = std/mean of ``||mu_c - mu_G||`` (std with ``ddof=1``, as ``torch.std`` in
      those implementations); ``nc2_equiangular`` = mean over pairs ``c < c'`` of
      ``|cos(mu_c - mu_G, mu_c' - mu_G) + 1/(C-1)|``; ``nc2_max_angle_gap`` = ``arccos(-1/(C-1))``
      minus the smallest pairwise angle, in degrees; ``nc2_cos_std`` = std of the pairwise cosines.
      The same four with suffix ``_w`` for the rows of ``W`` (taken as they are, not centred: the
      bias absorbs a common offset).
    * ``nc3 = || W/||W||_F - M/||M||_F ||_F^2``.
    * ``nc4`` = fraction of samples whose nearest class mean (Euclidean) is not the network's
      prediction.

    Every metric is 0 at a simplex ETF, invariant to a global rotation of the features (with the
    classifier rotated alike), to a global scaling and to a translation of the features.

    Parameters
    ----------
    features : Features, (x, y) or (x, y, pred) arrays, or a checkpoint
        Features of any layer (:func:`landscape.extract_features`) with their labels and the
        network's predictions; arrays ``x (N, d)``, integer labels ``y`` and optionally
        predictions; or a checkpoint (a :class:`~landscape.Checkpoint`, a path or an
        ``nn.Module``) whose features of ``layer`` on ``data`` are extracted.
    weights : Checkpoint, nn.Module, nn.Linear, array (C, d) or (W, b), optional
        The classifier. A checkpoint or model gives its ``head``. Given a checkpoint as
        ``features`` with the default layer, its own head is used. Without weights the classifier
        metrics and ``nc3`` are NaN. For arrays without ``pred``, the classifier (with its bias)
        provides the predictions of ``nc4``; with neither, ``nc4`` is NaN.
    data : dataset, optional
        Samples for a checkpoint (anything :func:`landscape.data.as_dataset` takes). Papyan et
        al. measure the training set.
    layer : str, optional
        Layer of a checkpoint (default: the penultimate features, the input of ``head``).
    batch_size : int
        Rows per batch, for the forward passes and on the device for the statistics.
    subset : int, optional
        A seeded, stratified subset of ``data`` of this many samples.
    seed : int
        Seed of ``subset``.
    device : str or torch.device
        Where the statistics are accumulated (float64); a checkpoint's own device when given one.

    Returns
    -------
    NeuralCollapse

    Raises
    ------
    ArgumentError
        Fewer than two classes, non-finite features, weights that do not fit the features, or
        weights from another checkpoint than the features.
    """
    batch_size = check_scalar(batch_size, "batch_size", int, min=1)
    feat, ck, pred, source = _as_features(features, data, layer, batch_size, subset, seed, device)
    x, y = _feature_array(feat.x), _labels_array(feat.y, len(feat.x))
    if not np.isfinite(x).all():
        raise ArgumentError(f"the features of {feat.name!r} hold NaN or inf values (a diverged model?); neural "
                            "collapse is defined for finite features only.")
    if weights is None and ck is not None and feat.meta.get("layer") == DEFAULT_LAYER and split_head(ck.model):
        weights = ck
    w, b, what, w_digest = _classifier(weights, x.shape[1])
    if w_digest and feat.meta.get("digest") and w_digest != feat.meta["digest"]:
        raise ArgumentError(f"the weights come from another checkpoint ({w_digest}) than the features of "
                            f"{feat.name!r} ({feat.meta['digest']}); pass the checkpoint the features came from.")
    dev = ck.device if ck is not None else resolve_device(device)
    n_classes = int(y.max()) + 1
    counts, means, scatter = class_statistics(x, y, n_classes, batch_size, dev)
    labels = np.flatnonzero(counts > 0)
    if len(labels) < 2:
        raise ArgumentError(f"neural collapse needs at least two classes, but the features of {feat.name!r} have "
                            f"only label(s) {labels.tolist()}; use more samples.")
    if w is not None and w.shape[0] <= labels.max():
        raise ArgumentError(f"the classifier has {w.shape[0]} rows but the labels go up to {int(labels.max())}; "
                            "give one row per class.")
    mu = means[labels]
    mu_g = mu.mean(axis=0)
    centred = mu - mu_g
    n, c = len(y), len(labels)
    sigma_w = scatter / n
    nc1 = _nc1(centred, sigma_w)
    m_norm, m_angle, m_gap, m_std, m_cos = _frame_metrics(centred)
    nan = float("nan")
    w_norm = w_angle = w_gap = w_std = nc3 = nan
    w_cos = np.zeros((0, 0))
    if w is not None:
        wc = w[labels]
        w_norm, w_angle, w_gap, w_std, w_cos = _frame_metrics(wc)
        nc3 = float(np.sum((wc / np.linalg.norm(wc) - centred / np.linalg.norm(centred)) ** 2))
    ncc, linear = _ncc_pass(x, mu, labels, w if pred is None else None, b, batch_size, dev)
    if pred is None and linear is not None:
        pred, source = linear, "linear classifier"
    nc4 = float(np.mean(ncc != pred)) if pred is not None else nan
    accuracy = float(np.mean(pred == y)) if pred is not None else nan
    meta = {**feat.meta, "n_samples": int(n), "n_classes": int(c),
            "dim": int(x.shape[1]), "weights": what, "predictions": source,
            "nc1_normalisation": "tr(Sigma_W Sigma_B^+)/C"}
    return NeuralCollapse(
        nc1=nc1, nc2_equinorm=m_norm, nc2_equiangular=m_angle, nc2_max_angle_gap=m_gap, nc2_cos_std=m_std,
        nc2_equinorm_w=w_norm, nc2_equiangular_w=w_angle, nc2_max_angle_gap_w=w_gap, nc2_cos_std_w=w_std,
        nc3=nc3, nc4=nc4, trace_sw=float(np.trace(sigma_w)), trace_sb=float(np.sum(centred ** 2) / c),
        accuracy=accuracy, labels=labels.astype(np.int64), counts=counts[labels].astype(np.int64),
        class_means=mu, global_mean=mu_g, mean_cosines=m_cos, weight_cosines=w_cos,
        classes=list(feat.classes), meta=meta)


# -- across training ----------------------------------------------------------------------------
@dataclasses.dataclass(repr=False)
class CollapseCurve(Result):
    """Neural-collapse metrics of the snapshots of one training run, by epoch (see :func:`collapse_curve`).

    Attributes
    ----------
    epoch : np.ndarray
        ``(T,)`` epochs, increasing.
    metrics : dict
        ``{name: (T,) array}`` for every name of :data:`METRICS` and :data:`EXTRA`.
    meta : dict
        ``name`` (the run), ``loss``, ``arch``, ``data``, ``layer``, ``n_samples``, ``snapshots``
        (file names) and ``digests``, in epoch order.
    """

    epoch: np.ndarray
    metrics: dict
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        """The run's name (the snapshot folder), else its loss."""
        return str(self.meta.get("name") or self.meta.get("loss") or "run")

    def __len__(self) -> int:
        return len(self.epoch)


def snapshot_paths(folder: str | os.PathLike) -> list[Path]:
    """The checkpoint files of a snapshot folder (``.safetensors``, ``.pt``, ``.pth``), by name.

    Raises
    ------
    ArgumentError
        The folder does not exist or holds no checkpoint.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ArgumentError(f"snapshot folder {folder} does not exist; give a folder of checkpoints such as "
                            "trained_models/snapshots/mlp-ce.")
    paths = sorted(p for p in folder.iterdir() if p.suffix in SNAPSHOT_SUFFIXES and p.is_file())
    if not paths:
        raise ArgumentError(f"snapshot folder {folder} holds no checkpoint ({', '.join(SNAPSHOT_SUFFIXES)}).")
    return paths


def collapse_curve(snapshots, data, *, layer: str | None = None, name: str | None = None, batch_size: int = 4096,
                   subset: int | None = None, seed: int = 0, device: str | torch.device = "auto",
                   trust_code: bool = False, verbose: bool | None = None) -> CollapseCurve:
    """:func:`neural_collapse` of every snapshot of a training run, ordered by epoch.

    Parameters
    ----------
    snapshots : path of a folder, or sequence of checkpoints or paths
        The run's checkpoints (``trained_models/snapshots/mlp-ce``). Each one's epoch is
        ``meta["epoch"]``; without one, its position in the (name-sorted) sequence, counted from 1.
    data : dataset
        The same samples for every snapshot (Papyan et al. use the training set).
    layer : str, optional
        Feature layer (default: the penultimate features, with the head as classifier).
    name : str, optional
        Name of the run (default: the folder's name, else the loss).
    batch_size, subset, seed, device
        As in :func:`neural_collapse`.
    trust_code : bool
        Let the snapshots' meta name a ``module:Class`` architecture.
    verbose : bool, optional
        Progress over the snapshots (:func:`landscape.progress.bar`).

    Returns
    -------
    CollapseCurve

    Raises
    ------
    ArgumentError
        No snapshots, two snapshots of the same epoch, or any error of :func:`neural_collapse`.
    """
    from .progress import bar

    if isinstance(snapshots, (str, os.PathLike)):
        name = name or Path(snapshots).name
        snapshots = snapshot_paths(snapshots)
    snapshots = list(snapshots)
    if not snapshots:
        raise ArgumentError("collapse_curve needs at least one snapshot.")
    data = as_dataset(data, subset, seed)
    rows: list[tuple[int, dict, dict]] = []
    with bar(len(snapshots), "collapse", verbose, unit="ckpt") as progress:
        for i, item in enumerate(snapshots):
            ck = item if isinstance(item, Checkpoint) else (
                load_checkpoint(item, device=device, trust_code=trust_code)
                if isinstance(item, (str, os.PathLike)) else as_checkpoint(item, device=device))
            nc = neural_collapse(ck, data=data, layer=layer, batch_size=batch_size)
            epoch = ck.meta.get("epoch")
            rows.append((int(epoch) if epoch is not None else i + 1, nc.metrics(),
                         {"snapshot": ck.path.name if ck.path else ck.name, "digest": ck.digest, "meta": ck.meta,
                          "nc": nc.meta}))
            progress.update(1)
    rows.sort(key=lambda r: r[0])
    epochs = [r[0] for r in rows]
    if len(set(epochs)) != len(epochs):
        dup = sorted({e for e in epochs if epochs.count(e) > 1})
        raise ArgumentError(f"the snapshots hold epoch(s) {dup} more than once; give one run's snapshots.")
    first = rows[-1][2]
    losses = sorted({str(r[2]["meta"].get("loss")) for r in rows})
    meta = {"name": name or (losses[0] if len(losses) == 1 else "run"), "loss": ", ".join(losses),
            "arch": first["meta"].get("arch"), "data": first["nc"].get("data"), "layer": first["nc"].get("layer"),
            "n_samples": first["nc"].get("n_samples"), "weights": first["nc"].get("weights"), "seed": seed,
            "subset": subset, "snapshots": [r[2]["snapshot"] for r in rows], "digests": [r[2]["digest"] for r in rows]}
    metrics = {k: np.array([r[1][k] for r in rows], dtype=np.float64) for k in (*METRICS, *EXTRA)}
    return CollapseCurve(epoch=np.array(epochs, dtype=np.int64), metrics=metrics, meta=meta)


__all__ = ["METRICS", "EXTRA", "NeuralCollapse", "CollapseCurve", "neural_collapse", "collapse_curve",
           "class_statistics", "snapshot_paths"]
