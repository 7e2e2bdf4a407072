"""Feature geometry: t-SNE maps, hypersphere embeddings and angular statistics.

Seed 002 argues with pictures (t-SNE maps, Fig. 4.6; features on the unit hypersphere,
Figs. 5.1, 5.4, 5.7) that margin losses make classes tighter and push them apart. This
module computes those pictures and measures the claim:

* :func:`tsne`: an openTSNE map of :class:`~landscape.features.Features`, with its quality
  (scikit-learn trustworthiness, k-nearest-neighbour accuracy in the map);
  :meth:`Embedding.transform` places new points (e.g. the test set) onto a fitted map.
* :func:`hypersphere`: features on the unit circle (``dim=2``) or sphere (``dim=3``), by PCA,
  LDA or an angle-preserving spherical embedding (:func:`spherical_embedding`), with what the
  picture keeps of the full space (:func:`projection_fidelity`: stress and rank correlation of
  the pairwise angles) and :func:`separation_ranking`, which warns when the pictures of several
  checkpoints rank their class separation otherwise than the full feature space does.
* :func:`angular_stats`: compactness, separation, their ratio and the cosine silhouette,
  always computed in the full feature space (an :class:`AngularStats`); :func:`compare_stats`
  tabulates checkpoints.

Angles are in degrees throughout.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Mapping

import numpy as np

from .errors import ArgumentError, check_choice, check_scalar
from .features import Features
from .results import Result

PROJECTIONS = ("auto", "pca", "lda", "stress", "none")
STAT_COLUMNS = ("accuracy", "compactness", "separation", "ratio", "silhouette", "zero_fraction")


# -- geometry helpers ----------------------------------------------------------------------
def normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (float64); an all-zero row stays zero."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


def has_direction(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Boolean mask of the rows with a direction (L2 norm above ``eps``).

    A ReLU feature layer can output the zero vector for some samples; these have no angle to
    anything, so the angular statistics leave them out and count them instead.
    """
    return np.linalg.norm(np.asarray(x, dtype=np.float64), axis=1) > eps


def angle_between(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angle in degrees between unit vectors along the last axis (broadcasting).

    Uses ``2 atan2(|u - v|, |u + v|)``, which stays accurate for tiny and near-180 degree
    angles, where ``arccos`` of the dot product loses half the digits.
    """
    return np.degrees(2.0 * np.arctan2(np.linalg.norm(u - v, axis=-1), np.linalg.norm(u + v, axis=-1)))


def class_centers(u: np.ndarray, y: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Normalised mean of the unit rows ``u`` of each class in ``labels`` -> ``(len(labels), d)``."""
    return normalize_rows(np.stack([u[y == k].mean(axis=0) for k in labels]))


def by_name(items) -> dict[str, Any]:
    """Key objects with a ``.name`` (Features, Embedding, Sphere, Checkpoint) by it, in order.

    A mapping is returned as a dict unchanged; a repeated name (the same checkpoint twice,
    e.g. for two layers) gets a suffix ``-2``, ``-3``, ... so that no entry is lost.
    """
    if isinstance(items, Mapping):
        return {str(k): v for k, v in items.items()}
    named: dict[str, Any] = {}
    for item in items:
        name, i = item.name, 2
        while name in named:
            name, i = f"{item.name}-{i}", i + 1
        named[name] = item
    return named


# -- angular statistics --------------------------------------------------------------------
@dataclasses.dataclass(repr=False)
class AngularStats(Result):
    """Angular statistics of features in their full space (see :func:`angular_stats`).

    Read as a mapping too (``stats["separation"]``, ``dict(stats)``, ``{**stats}``), as the
    statistics were a dict before; :meth:`to_dict` gives plain JSON-ready values.

    Attributes
    ----------
    accuracy, compactness, separation, mean_separation, ratio, silhouette, zero_fraction : float
        Degrees for the angles; ``separation`` is the smallest angle between two class centres,
        ``mean_separation`` the mean over classes of the angle to the nearest other centre.
    n, n_zero, dim : int
        Samples, samples with a zero feature vector, feature dimension.
    labels : list of int
        Classes with a centre, in the order of the per-class arrays.
    class_names : list of str
    class_compactness, class_separation : np.ndarray (C,)
    center_angles : np.ndarray (C, C)
    collapsed : list of int
        Classes whose samples are all zero vectors.
    meta : dict
        ``checkpoint``, ``seed``, ``max_silhouette``.
    """

    accuracy: float = float("nan")
    compactness: float = float("nan")
    separation: float = float("nan")
    mean_separation: float = float("nan")
    ratio: float = float("nan")
    silhouette: float = float("nan")
    zero_fraction: float = 0.0
    n: int = 0
    n_zero: int = 0
    dim: int = 0
    labels: list = dataclasses.field(default_factory=list)
    class_names: list = dataclasses.field(default_factory=list)
    class_compactness: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    class_separation: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    center_angles: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    collapsed: list = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)

    kind = "angular_stats"

    def keys(self) -> list[str]:
        """The statistics' names (every field but ``meta``)."""
        return [f.name for f in dataclasses.fields(self) if f.name != "meta"]

    def __getitem__(self, key: str):
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def get(self, key: str, default=None):
        """``self[key]``, or ``default`` for a name that is not a statistic."""
        return self[key] if key in self else default

    def to_dict(self) -> dict:
        """The statistics as plain Python values (arrays as lists), ready for JSON."""
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in ((k, self[k]) for k in self.keys())}


def angular_stats(feat: Features, max_silhouette: int = 5000, seed: int = 0) -> AngularStats:
    """Angular compactness and separation of the classes, in the full feature space.

    With ``u_i = f_i / |f_i|`` the L2-normalised features and, for each class ``k``, the
    class centre ``c_k = normalize(mean of u_i over the class)``:

    * ``compactness[k]``: mean angle (degrees) between the class's samples and ``c_k``;
      ``compactness`` is the mean over classes (each class counts once). Smaller is tighter.
    * ``separation[k]``: angle from ``c_k`` to the nearest other class centre;
      ``separation`` is the smallest angle between any two class centres, ``mean_separation``
      the mean of ``separation[k]``. Larger is better.
    * ``ratio = compactness / separation``: below 1 when classes are tighter than the gap
      between their closest centres. Smaller is better.
    * ``silhouette``: :func:`sklearn.metrics.silhouette_score` with ``metric="cosine"`` on the
      features (in [-1, 1], larger is better); on a seeded random sample of
      ``max_silhouette`` points when there are more, as it costs O(N^2).
    * ``accuracy``: fraction of predictions equal to the labels.

    Samples whose feature vector is zero (all ReLU units off) have no direction: they are
    left out of every angular statistic and the silhouette, and counted in ``n_zero`` and
    ``zero_fraction`` (shown in tables, as the other numbers describe only the remaining
    samples); a class whose samples are all zero has no centre and is listed in ``collapsed``
    instead of ``labels``.

    Parameters
    ----------
    feat : Features
        Features with labels; only classes present in ``feat.y`` are used.
    max_silhouette : int
        Largest number of samples the silhouette is computed on.
    seed : int
        Seed of that sample.

    Returns
    -------
    AngularStats
        Also readable as a dict of these statistics.

    Raises
    ------
    ArgumentError
        With fewer than two classes with a direction (no separation is defined).

    Examples
    --------
    Two classes on perpendicular axes: each is perfectly compact and their centres are 90
    degrees apart (the length of a feature does not matter, only its direction):

    >>> import numpy as np
    >>> from landscape.features import Features
    >>> from landscape.embedding import angular_stats
    >>> x = np.array([[1, 0], [2, 0], [0, 1], [0, 3]], dtype=np.float32)
    >>> y = np.array([0, 0, 1, 1])
    >>> stats = angular_stats(Features(x=x, y=y, pred=y))
    >>> round(stats.separation, 6), round(stats.compactness, 6)
    (90.0, 0.0)
    """
    from sklearn.metrics import silhouette_score

    x, y = np.asarray(feat.x), np.asarray(feat.y)
    keep = has_direction(x)
    x, y = x[keep], y[keep]
    labels = np.unique(y)
    if len(labels) < 2:
        raise ArgumentError(f"angular statistics need at least two classes with non-zero features, but "
                            f"{feat.name!r} has {labels.tolist()} ({int((~keep).sum())} zero feature vectors); "
                            "use more samples.")
    u = normalize_rows(x)
    centers = class_centers(u, y, labels)
    compact = np.array([angle_between(u[y == k], c).mean() for k, c in zip(labels, centers)])
    between = angle_between(centers[:, None, :], centers[None, :, :])
    off = between + np.diag(np.full(len(labels), np.inf))
    sample = None if len(y) <= max_silhouette else int(max_silhouette)
    silhouette = float(silhouette_score(x, y, metric="cosine", sample_size=sample, random_state=seed))
    with np.errstate(divide="ignore"):  # two coinciding centres: the ratio is honestly infinite
        ratio = float(np.divide(compact.mean(), off.min()))
    names = [feat.classes[k] if k < len(feat.classes) else str(k) for k in labels]
    return AngularStats(
        accuracy=float(feat.accuracy), compactness=float(compact.mean()), separation=float(off.min()),
        mean_separation=float(off.min(axis=1).mean()), ratio=ratio, silhouette=silhouette,
        zero_fraction=float(np.mean(~keep)), n=int(len(keep)), n_zero=int((~keep).sum()), dim=int(x.shape[1]),
        labels=labels.tolist(), class_names=names, class_compactness=compact, class_separation=off.min(axis=1),
        center_angles=between, collapsed=sorted(set(np.asarray(feat.y).tolist()) - set(labels.tolist())),
        meta={"checkpoint": feat.meta.get("checkpoint"), "seed": seed, "max_silhouette": max_silhouette})


@dataclasses.dataclass(repr=False)
class StatsTable(Result):
    """Angular statistics of several checkpoints, one row each (see :func:`angular_stats`).

    Attributes
    ----------
    rows : dict
        ``{name: {accuracy, compactness, separation, ratio, silhouette, n, dim, layer, ...}}``.
    meta : dict
    """

    rows: dict
    meta: dict = dataclasses.field(default_factory=dict)

    columns = STAT_COLUMNS

    def to_markdown(self, digits: int = 3) -> str:
        """The table as Markdown: one row per checkpoint, angles in degrees."""
        head = "| model | " + " | ".join(self.columns) + " |"
        rule = "|---" * (len(self.columns) + 1) + "|"
        body = ["| " + name + " | " + " | ".join(f"{row[c]:.{digits}f}" for c in self.columns) + " |"
                for name, row in self.rows.items()]
        return "\n".join([head, rule, *body])


def compare_stats(feats: Mapping[str, Features] | list[Features], max_silhouette: int = 5000,
                  seed: int = 0) -> StatsTable:
    """:func:`angular_stats` of several checkpoints side by side (e.g. CE against MAM-SoftMax).

    Parameters
    ----------
    feats : mapping of name to Features, or list of Features
        A list is keyed by each ``Features.name`` (the checkpoint name), made unique by :func:`by_name`.
    max_silhouette, seed : int
        As in :func:`angular_stats`.

    Returns
    -------
    StatsTable
        One row per entry, in the given order.
    """
    feats = by_name(feats)
    if not feats:
        raise ArgumentError("compare_stats needs at least one Features object.")
    rows = {}
    for name, f in feats.items():
        stats = angular_stats(f, max_silhouette=max_silhouette, seed=seed).to_dict()
        rows[str(name)] = {**stats, "layer": f.meta.get("layer"), "data": f.meta.get("data")}
    return StatsTable(rows=rows, meta={"seed": seed, "max_silhouette": max_silhouette})


# -- hypersphere ---------------------------------------------------------------------------
@dataclasses.dataclass(repr=False)
class Sphere(Result):
    """Features on the unit circle (``dim`` 2) or sphere (``dim`` 3), with angular statistics.

    Attributes
    ----------
    points : np.ndarray
        ``(N, dim)`` unit vectors; a zero feature vector (no direction) stays at the origin.
    y, pred : np.ndarray
        Labels and predictions ``(N,)``.
    centers : np.ndarray
        ``(C, dim)`` class-centre directions in the drawn space: normalised mean of the
        class's points, for the classes ``stats["labels"]``.
    classes : list of str
    projection : str
        How the features reached ``dim`` dimensions: ``"none"``, ``"pca"``, ``"lda"`` or ``"stress"``.
    stats : dict
        :func:`angular_stats` of the features in their full space (not of ``points``), as a dict.
    fidelity : dict
        What the picture keeps of the full space (:func:`projection_fidelity`): ``stress``,
        ``spearman``, ``kendall`` (pairwise angles, drawn against full), ``pairs``,
        ``explained_variance`` (PCA and LDA: the fraction of variance kept; 1 for ``"none"``;
        ``None`` for ``"stress"``) and the drawn points' own ``separation``, ``mean_separation``,
        ``compactness`` and ``ratio`` (``*_drawn``).
    meta : dict
        The features' meta plus ``dim``, ``feature_dim`` and, for a projection, the
        explained variance ratio (``pca``, ``lda``) or the optimiser's report (``stress``).
    """

    points: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    centers: np.ndarray
    classes: list = dataclasses.field(default_factory=list)
    projection: str = "none"
    stats: dict = dataclasses.field(default_factory=dict)
    fidelity: dict = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Dimension of the drawn space (2 or 3)."""
        return int(self.points.shape[1])

    @property
    def name(self) -> str:
        """The checkpoint's name from the meta, else ``"features"``."""
        return str(self.meta.get("checkpoint", "features"))


def _unit_angles(a, b):
    """Angles (radians) between the rows of ``a`` and of ``b`` (torch, unit rows), with a finite gradient.

    ``atan2(sin, cos)`` with ``sin = sqrt(1 - cos^2 + 1e-12)``: exact to 1e-6 rad where ``arccos``
    loses digits, and differentiable at coinciding and opposite points.
    """
    import torch

    cos = (a @ b.T).clamp(-1.0, 1.0)
    return torch.atan2(torch.sqrt((1.0 - cos * cos).clamp_min(0.0) + 1e-12), cos)


def _angles(u: np.ndarray, v: np.ndarray | None = None) -> np.ndarray:
    """Angle matrix (radians) between the unit rows of ``u`` and ``v`` (default ``u``), float64."""
    v = u if v is None else v
    cos = np.clip(u @ v.T, -1.0, 1.0)
    return np.arctan2(np.sqrt(np.clip(1.0 - cos * cos, 0.0, None)), cos)


def _svd_directions(u: np.ndarray, dim: int) -> np.ndarray:
    """The ``dim`` leading right singular vectors of ``u`` (uncentred), signs fixed (largest entry positive)."""
    _, _, vt = np.linalg.svd(u, full_matrices=False)
    vt = vt[:dim]
    signs = np.sign(vt[np.arange(dim), np.argmax(np.abs(vt), axis=1)])
    return vt * signs[:, None]


def _minimise_stress(free: np.ndarray, theta: np.ndarray, fixed: np.ndarray | None, max_iter: int) -> tuple:
    """L-BFGS on ``sum (angle - theta)^2`` over free rows (pairs among them, or against ``fixed`` rows)."""
    import torch
    from scipy.optimize import minimize

    n, dim = free.shape
    target = torch.as_tensor(theta, dtype=torch.float64)
    anchor = None if fixed is None else torch.as_tensor(fixed, dtype=torch.float64)
    pairs = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1) if fixed is None else None
    scale = float((theta[pairs.numpy()] ** 2).sum() if fixed is None else (theta ** 2).sum()) or 1.0

    def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
        v = torch.as_tensor(flat.reshape(n, dim), dtype=torch.float64).requires_grad_(True)
        w = v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(1e-12)
        if anchor is None:
            err = (_unit_angles(w, w) - target)[pairs]
        else:
            err = _unit_angles(w, anchor) - target
        value = (err * err).sum() / scale
        (grad,) = torch.autograd.grad(value, v)
        return float(value.detach()), grad.numpy().ravel()

    result = minimize(objective, free.ravel(), jac=True, method="L-BFGS-B",
                      options={"maxiter": int(max_iter), "gtol": 1e-10, "ftol": 1e-14})
    out = normalize_rows(result.x.reshape(n, dim))
    return out, {"iterations": int(result.nit), "converged": bool(result.success), "stress": float(np.sqrt(result.fun))}


def spherical_embedding(u: np.ndarray, dim: int = 3, seed: int = 0, max_iter: int = 500, landmarks: int = 1000,
                        init: str | np.ndarray = "svd") -> tuple[np.ndarray, dict]:
    """Unit vectors in ``dim`` dimensions whose pairwise angles match those of the unit rows ``u``.

    Minimises the angular stress ``sum_{i<j} (phi_ij - theta_ij)^2 / sum theta_ij^2`` over points on
    the unit sphere (``phi`` the angles drawn, ``theta`` those of ``u``), the metric MDS of angles
    on the sphere, by L-BFGS (scipy) with torch gradients in float64. Hand-written: scikit-learn's
    MDS is Euclidean and does not constrain the points to the sphere. With more than ``landmarks``
    points, a seeded subset of ``landmarks`` points is embedded first and every other point is then
    placed against those fixed landmarks (its own stress to them), so the cost stays
    ``O(landmarks^2)``. Deterministic: one thread, a fixed start.

    Parameters
    ----------
    u : np.ndarray (N, d)
        Unit rows (L2-normalised features with a direction).
    dim : {2, 3}
        Circle or sphere.
    seed : int
        Seed of the landmark subset and of a random start.
    max_iter : int
        L-BFGS iterations per stage.
    landmarks : int
        Largest number of points embedded jointly.
    init : {"svd", "random"} or np.ndarray (N, dim)
        Start at the normalised projection onto the ``dim`` leading (uncentred) singular vectors
        of ``u``, the best linear start for angles, at seeded random unit vectors, or at given
        points. The stress is not convex: from perturbed starts (stress 0.4) on points that lie on a
        3-D great sphere the optimiser returns to stress 1e-7, but a random start can stop in a
        local minimum (stress 0.05 there).

    Returns
    -------
    (np.ndarray, dict)
        ``(N, dim)`` unit vectors and the optimiser's report: ``stress`` (stress-1 of the
        optimised points, landmarks only when there are more points), ``iterations``,
        ``converged``, ``landmarks``, ``init``.
    """
    from .train import deterministic

    u = normalize_rows(u)
    dim = check_scalar(dim, "dim", int, min=2, max=3)
    landmarks = check_scalar(landmarks, "landmarks", int, min=dim + 1)
    n = len(u)
    rng = np.random.default_rng(seed)
    land = np.sort(rng.choice(n, landmarks, replace=False)) if n > landmarks else np.arange(n)
    rest = np.setdiff1d(np.arange(n), land)
    if isinstance(init, np.ndarray):
        if init.shape != (n, dim):
            raise ArgumentError(f"init has shape {init.shape}; give ({n}, {dim}) starting points or 'svd'/'random'.")
        start, init = normalize_rows(init), "given"
    elif check_choice(init, "init", ("svd", "random")) == "svd":
        start = normalize_rows(u @ _svd_directions(u[land], dim).T)
    else:
        start = normalize_rows(rng.normal(size=(n, dim)))
    out = np.zeros((n, dim))
    with deterministic(1):
        out[land], report = _minimise_stress(start[land], _angles(u[land]), None, max_iter)
        if len(rest):
            out[rest], _ = _minimise_stress(start[rest], _angles(u[rest], u[land]), out[land], max_iter)
    return out, {**report, "landmarks": int(len(land)), "init": init, "max_iter": int(max_iter)}


def projection_fidelity(full: np.ndarray, drawn: np.ndarray, seed: int = 0, max_pairs: int = 200_000) -> dict:
    """How well the drawn directions keep the pairwise angles of the full-space directions.

    Parameters
    ----------
    full, drawn : np.ndarray (N, d) and (N, dim)
        The same samples' unit vectors in the full space and in the picture.
    seed : int
        Seed of the pair sample when there are more than ``max_pairs`` pairs.
    max_pairs : int
        Largest number of pairs compared.

    Returns
    -------
    dict
        ``stress`` (stress-1: ``sqrt(sum (phi - theta)^2 / sum theta^2)``, 0 when every angle is
        kept), ``spearman`` and ``kendall`` (rank correlation of drawn against full angles, 1 when
        their order is kept; scipy), ``pairs`` (pairs compared).
    """
    from scipy.stats import kendalltau, spearmanr

    full, drawn = normalize_rows(full), normalize_rows(drawn)
    n = len(full)
    i, j = np.triu_indices(n, k=1)
    if len(i) > max_pairs:
        pick = np.sort(np.random.default_rng(seed).choice(len(i), max_pairs, replace=False))
        i, j = i[pick], j[pick]
    theta = np.arctan2(np.linalg.norm(full[i] - full[j], axis=1), np.linalg.norm(full[i] + full[j], axis=1)) * 2
    phi = np.arctan2(np.linalg.norm(drawn[i] - drawn[j], axis=1), np.linalg.norm(drawn[i] + drawn[j], axis=1)) * 2
    return {"stress": float(np.sqrt(np.sum((phi - theta) ** 2) / np.sum(theta ** 2))),
            "spearman": float(spearmanr(phi, theta)[0]), "kendall": float(kendalltau(phi, theta)[0]),
            "pairs": int(len(i))}


def _project(u: np.ndarray, y: np.ndarray, dim: int, projection: str, seed: int,
             stress: dict) -> tuple[np.ndarray, dict]:
    """Project unit feature rows to ``dim`` dimensions; returns the projection and what to record."""
    if projection == "stress":
        points, report = spherical_embedding(u, dim, seed=seed, **stress)
        return points, {"stress_fit": report}
    if projection == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=dim, svd_solver="full").fit(u)
        return pca.transform(u), {"explained_variance_ratio": pca.explained_variance_ratio_.tolist()}
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    n_classes = len(np.unique(y))
    if dim > n_classes - 1:
        raise ArgumentError(f"LDA gives at most n_classes - 1 = {n_classes - 1} dimensions, not {dim}; "
                            "use projection='pca' or 'stress'.")
    lda = LinearDiscriminantAnalysis(n_components=dim, solver="svd").fit(u, y)
    return lda.transform(u), {"explained_variance_ratio": lda.explained_variance_ratio_.tolist()}


def hypersphere(feat: Features, dim: int | None = None, projection: str = "auto",
                max_silhouette: int = 5000, seed: int = 0, stress_iter: int = 500, landmarks: int = 1000,
                max_pairs: int = 200_000) -> Sphere:
    """Features on the unit circle or sphere, with their angular statistics and what the picture keeps.

    Features that already have ``dim`` dimensions are only L2-normalised. Otherwise they are
    L2-normalised in the full space (so every sample counts by its direction only), brought to
    ``dim`` dimensions and L2-normalised again: by centred PCA (label-free, keeps the most
    variance), LDA (uses the labels; spreads the classes apart), or ``"stress"``, an
    angle-preserving spherical embedding (:func:`spherical_embedding`) that keeps the pairwise
    angles as well as ``dim`` dimensions allow. A PCA picture can reverse the statistic it
    illustrates: on the shipped digits models it keeps 40 % of the variance, and the drawn class
    separation ranks CE above MAM-SoftMax while the full space ranks them the other way. So every
    sphere records, and every figure prints, ``fidelity``: the stress and rank correlation of the
    pairwise angles, drawn against full (:func:`projection_fidelity`), and the drawn points' own
    separation; compare several with :func:`separation_ranking`. The statistics in
    ``Sphere.stats`` are always those of the full feature space. Zero feature vectors have no
    direction: they are drawn at the centre and left out of the projection fit.

    Parameters
    ----------
    feat : Features
    dim : {2, 3}, optional
        Circle or sphere. Default: the feature dimension when it is 2 or 3, else 3.
    projection : {"auto", "pca", "lda", "stress", "none"}
        ``"auto"`` is ``"none"`` when the features have ``dim`` dimensions, else ``"pca"``.
        ``"none"`` requires features of dimension ``dim``.
    max_silhouette, seed : int
        As in :func:`angular_stats`; ``seed`` also seeds the stress embedding's landmarks and the
        pair sample of the fidelity measures.
    stress_iter, landmarks : int
        L-BFGS iterations and landmark count of :func:`spherical_embedding`.
    max_pairs : int
        Pairs compared by :func:`projection_fidelity`.

    Returns
    -------
    Sphere

    Raises
    ------
    ArgumentError
        For a ``dim`` other than 2 or 3, an unknown projection, ``"none"`` on features of
        another dimension, or LDA asked for more than ``n_classes - 1`` dimensions.
    """
    d = feat.dim
    dim = (d if d in (2, 3) else 3) if dim is None else int(dim)
    if dim not in (2, 3):
        raise ArgumentError(f"dim must be 2 (unit circle) or 3 (unit sphere), got {dim}.")
    if projection not in PROJECTIONS:
        raise ArgumentError(f"projection {projection!r} is not one of {', '.join(PROJECTIONS)}.")
    if projection == "auto":
        projection = "none" if d == dim else "pca"
    if projection == "none" and d != dim:
        raise ArgumentError(f"features of {feat.name!r} have {d} dimensions, so they cannot be drawn in {dim} "
                            "without a projection; use projection='pca', 'lda' or 'stress'.")
    stats = angular_stats(feat, max_silhouette=max_silhouette, seed=seed)
    keep = has_direction(feat.x)
    full = normalize_rows(feat.x)
    u, extra = full, {}
    if projection != "none":
        # fitted on the samples with a direction; zero features stay at the origin
        u = np.zeros((len(full), dim))
        u[keep], extra = _project(full[keep], feat.y[keep], dim, projection, seed,
                                  {"max_iter": stress_iter, "landmarks": landmarks})
    points = normalize_rows(u)
    centers = class_centers(points[keep], feat.y[keep], np.asarray(stats["labels"]))
    fidelity = projection_fidelity(full[keep], points[keep], seed=seed, max_pairs=max_pairs)
    ratio = extra.get("explained_variance_ratio")
    fidelity["explained_variance"] = (float(np.sum(ratio)) if ratio is not None
                                      else (1.0 if projection == "none" else None))
    drawn = angular_stats(dataclasses.replace(feat, x=points), max_silhouette=max_silhouette, seed=seed)
    fidelity.update({f"{k}_drawn": drawn[k] for k in ("separation", "mean_separation", "compactness", "ratio")})
    meta = {**feat.meta, "dim": dim, "feature_dim": d, **extra}
    return Sphere(points=points.astype(np.float32), y=feat.y, pred=feat.pred, centers=centers,
                  classes=list(feat.classes), projection=projection, stats=stats.to_dict(), fidelity=fidelity,
                  meta=meta)


def separation_ranking(spheres: Mapping[str, Sphere] | list[Sphere], statistic: str = "separation",
                       warn: bool = True) -> dict:
    """Whether the pictures rank the checkpoints' class separation as their full feature spaces do.

    Parameters
    ----------
    spheres : mapping of name to Sphere, or list of Sphere
    statistic : {"separation", "mean_separation"}
        The class separation compared (larger is better): drawn (``Sphere.fidelity``) against
        full space (``Sphere.stats``).
    warn : bool
        Issue a ``UserWarning`` when the two orders differ.

    Returns
    -------
    dict
        ``statistic``, ``full`` and ``drawn`` (names from largest to smallest), ``values``
        (``{name: {"full": ..., "drawn": ...}}``), ``agree`` and ``message`` (empty when they agree).
    """
    statistic = check_choice(statistic, "statistic", ("separation", "mean_separation"))
    spheres = by_name(spheres)
    values = {name: {"full": float(s.stats[statistic]), "drawn": float(s.fidelity[f"{statistic}_drawn"])}
              for name, s in spheres.items()}
    full = sorted(values, key=lambda n: -values[n]["full"])
    drawn = sorted(values, key=lambda n: -values[n]["drawn"])
    agree = full == drawn
    def listed(order: list[str], where: str) -> str:
        return ", ".join(f"{n} {values[n][where]:.1f}" for n in order)

    message = "" if agree else (
        f"the pictures rank the class {statistic.replace('_', ' ')} {' > '.join(drawn)} ({listed(drawn, 'drawn')} deg "
        f"drawn), but the full feature space ranks it {' > '.join(full)} ({listed(full, 'full')} deg): trust the "
        "statistics, not the picture, or draw with projection='stress'")
    if message and warn:
        warnings.warn(message, UserWarning, stacklevel=2)
    return {"statistic": statistic, "full": full, "drawn": drawn, "values": values, "agree": agree,
            "message": message}


# -- t-SNE ---------------------------------------------------------------------------------
def _knn_accuracy(coords: np.ndarray, y: np.ndarray, k: int, ref: tuple[np.ndarray, np.ndarray] | None) -> float:
    """k-NN classification accuracy in the map.

    Without ``ref``: leave-one-out on the map itself (each point's neighbours exclude it).
    With ``ref = (coords, labels)``: new points classified by their neighbours in the reference map.
    """
    from sklearn.neighbors import KNeighborsClassifier

    if ref is None:
        knn = KNeighborsClassifier(n_neighbors=k).fit(coords, y)
        idx = knn.kneighbors(return_distance=False)  # X=None: excludes each query point itself
        votes = y[idx]
        n_classes = int(y.max()) + 1
        counts = np.apply_along_axis(np.bincount, 1, votes, minlength=n_classes)
        return float(np.mean(counts.argmax(axis=1) == y))
    knn = KNeighborsClassifier(n_neighbors=k).fit(*ref)
    return float(knn.score(coords, y))


def _quality(feat: Features, coords: np.ndarray, k: int, ref=None) -> dict[str, float]:
    from sklearn.manifold import trustworthiness

    k_trust = min(k, (len(coords) - 1) // 2)
    return {"trustworthiness": float(trustworthiness(feat.x, coords, n_neighbors=k_trust)),
            "knn_accuracy": _knn_accuracy(coords, feat.y, min(k, len(coords) - 1), ref)}


@dataclasses.dataclass(repr=False)
class Embedding(Result):
    """A 2-D t-SNE map of features, with its quality.

    A map made by :func:`tsne` keeps what :meth:`transform` needs to place new points, and saves
    it: the features it was fitted on (``reference``) and openTSNE's parameters
    (``meta["opentsne"]``). :meth:`load` gives a map that can still be extended: the openTSNE
    embedding is rebuilt from those (its affinities recomputed from the reference features, with
    the same parameters and seed), never unpickled. A map of placed points (from
    :meth:`transform`) has no reference and cannot be extended further.

    Attributes
    ----------
    coords : np.ndarray
        ``(N, 2)`` map coordinates.
    y, pred : np.ndarray
        Labels and predictions ``(N,)``.
    classes : list of str
    trustworthiness : float
        :func:`sklearn.manifold.trustworthiness` of the map with ``meta["k"]`` neighbours
        (1 = every neighbour in the map is a neighbour in feature space).
    knn_accuracy : float
        k-NN accuracy in the map (leave-one-out; for transformed points, classified by the
        reference map's points).
    reference : np.ndarray
        ``(N, d)`` the features the map was fitted on (empty for placed points).
    meta : dict
        Features' meta plus ``perplexity``, ``seed``, ``k``, ``n_iter``, ``opentsne`` (the
        affinity and optimiser parameters) and, for added points, ``placed_on`` (the reference
        map's data).
    """

    coords: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    classes: list = dataclasses.field(default_factory=list)
    trustworthiness: float = float("nan")
    knn_accuracy: float = float("nan")
    reference: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.float32))
    meta: dict = dataclasses.field(default_factory=dict)

    # the fitted openTSNE embedding: a plain attribute (not a dataclass field), rebuilt after load
    _fitted = None

    @property
    def name(self) -> str:
        """The checkpoint's name from the meta, else ``"features"``."""
        return str(self.meta.get("checkpoint", "features"))

    @property
    def can_transform(self) -> bool:
        """Whether new points can be placed onto this map (a map from :func:`tsne`, fresh or loaded)."""
        return self._fitted is not None or (self.reference.size > 0 and "opentsne" in self.meta)

    def fitted(self):
        """The openTSNE ``TSNEEmbedding`` of this map, rebuilt from ``reference`` and ``meta`` after a load.

        Raises
        ------
        ArgumentError
            For a map of placed points, or a file saved without its reference features.
        """
        if self._fitted is None:
            if not self.can_transform:
                raise ArgumentError("this Embedding holds placed points or a map saved without its reference "
                                    "features, so points cannot be added to it; make the map with landscape.tsne.")
            from openTSNE import TSNEEmbedding
            from openTSNE.affinity import MultiscaleMixture

            params = self.meta["opentsne"]
            with _one_blas_thread():
                affinities = MultiscaleMixture(np.asarray(self.reference, dtype=np.float64), params["perplexity"],
                                               method=params["neighbors"], metric=params["metric"],
                                               n_jobs=params["n_jobs"], random_state=params["random_state"],
                                               verbose=False)
            self._fitted = TSNEEmbedding(np.asarray(self.coords, dtype=np.float64), affinities,
                                         random_state=params["random_state"], **params["gradient_descent"])
        return self._fitted

    def transform(self, feat: Features, perplexity: float = 5.0, n_iter: int = 250) -> "Embedding":
        """Place new points (e.g. the test set) onto this map, which stays fixed.

        Uses :meth:`openTSNE.TSNEEmbedding.transform`: each new point starts at the median
        of its nearest reference points and is optimised against the fixed map.

        Parameters
        ----------
        feat : Features
            Features of the same layer and dimension as the map's.
        perplexity : float
            Perplexity of the new points' affinities to the map (openTSNE's default, 5).
        n_iter : int
            Optimisation steps.

        Returns
        -------
        Embedding
            Coordinates of the new points only; quality: trustworthiness among the new points
            and k-NN accuracy of classifying them by the reference map.
        """
        fitted = self.fitted()
        expected = int(self.meta.get("feature_dim", feat.dim))
        if feat.dim != expected:
            raise ArgumentError(f"the map was fitted on {expected}-dimensional features, but {feat.name!r} has "
                                f"{feat.dim}; extract them from the same layer.")
        with _one_blas_thread():
            new = fitted.transform(np.asarray(feat.x, dtype=np.float64), perplexity=perplexity, n_iter=n_iter)
        # openTSNE's FFT transform re-centres the reference map in place; express the new points
        # in the frame of self.coords (a translation; zero for maps made by tsne(), which centres them)
        shift = (np.asarray(fitted) - self.coords).mean(axis=0)
        coords = np.array(new, dtype=np.float64) - shift
        k = int(self.meta["k"])
        quality = _quality(feat, coords, k, ref=(np.asarray(self.coords), np.asarray(self.y)))
        meta = {**feat.meta, **{key: self.meta[key] for key in ("perplexity", "seed", "k")},
                "placed_on": self.meta.get("data"), "transform_perplexity": perplexity, "n_iter": n_iter,
                "feature_dim": feat.dim}
        return Embedding(coords=coords, y=feat.y, pred=feat.pred, classes=list(feat.classes), meta=meta, **quality)


def _one_blas_thread():
    """Run numpy's BLAS on one thread.

    t-SNE amplifies the last bits of a threaded reduction (its PCA initialisation and affinities)
    into different maps, so the map would depend on the thread count. openTSNE's own threads are
    set by ``n_jobs``.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def tsne(feat: Features, seed: int = 0, perplexity: float = 30.0, n_jobs: int = 1, n_iter: int = 500,
         k: int = 10, method: str = "auto") -> Embedding:
    """A 2-D t-SNE map of the features (openTSNE), with its quality.

    The map is centred on its bounding box (t-SNE is translation invariant).
    PCA initialisation and a fixed ``random_state`` make the map reproducible: same seed,
    same features, ``n_jobs=1`` give the same coordinates on one machine, whatever the BLAS
    thread count. (With ``n_jobs > 1`` the Barnes-Hut gradient sums in a thread-dependent
    order.) t-SNE is chaotic: features that differ in the last bits, as they do between CPUs,
    give visibly different maps with the same quality scores, so compare maps across machines
    by ``trustworthiness`` and ``knn_accuracy``, not by coordinates.

    Parameters
    ----------
    feat : Features
    seed : int
        ``random_state`` of openTSNE (nearest-neighbour search and PCA sign conventions).
    perplexity : float
        Effective number of neighbours; must be below ``(N - 1) / 3``.
    n_jobs : int
        Threads.
    n_iter : int
        Optimisation steps after the 250 steps of early exaggeration.
    k : int
        Neighbours for the quality measures (trustworthiness and k-NN accuracy).
    method : {"auto", "bh", "fft"}
        Negative-gradient method: Barnes-Hut (used by seed 002), FFT interpolation, or
        openTSNE's choice by size (Barnes-Hut below 10,000 points).

    Returns
    -------
    Embedding
        Coordinates, labels, quality; holds (and saves) what :meth:`Embedding.transform` needs.
    """
    from openTSNE import TSNE

    n = len(feat)
    if not 0 < perplexity < (n - 1) / 3:
        raise ArgumentError(f"perplexity must be in (0, (N - 1) / 3) = (0, {(n - 1) / 3:.1f}) for {n} points, "
                            f"got {perplexity}; lower it or use more points.")
    if method not in ("auto", "bh", "fft"):
        raise ArgumentError(f"method {method!r} is not one of auto, bh, fft.")
    model = TSNE(n_components=2, perplexity=perplexity, initialization="pca", random_state=seed, n_jobs=n_jobs,
                 n_iter=n_iter, negative_gradient_method=method, verbose=False)
    with _one_blas_thread():
        fitted = model.fit(np.asarray(feat.x, dtype=np.float64))
    # centre the map on its bounding box, as openTSNE's transform would do in place later
    fitted -= (fitted.max(axis=0) + fitted.min(axis=0)) / 2
    coords = np.array(fitted, dtype=np.float64)
    quality = _quality(feat, coords, k)
    # what rebuilds the fitted map after a load (Embedding.fitted): the affinity and optimiser parameters
    opentsne = {"perplexity": perplexity, "neighbors": model.neighbors, "metric": model.metric, "n_jobs": n_jobs,
                "random_state": seed,
                "gradient_descent": {k_: v for k_, v in fitted.gradient_descent_params.items() if k_ != "callbacks"}}
    meta = {**feat.meta, "perplexity": perplexity, "seed": seed, "k": k, "n_iter": n_iter, "method": method,
            "initialization": "pca", "feature_dim": feat.dim, "opentsne": opentsne}
    emb = Embedding(coords=coords, y=feat.y, pred=feat.pred, classes=list(feat.classes), meta=meta,
                    reference=np.array(feat.x), **quality)
    emb._fitted = fitted
    return emb


__all__ = ["Embedding", "Sphere", "StatsTable", "AngularStats", "angular_stats", "by_name", "compare_stats",
           "hypersphere", "tsne", "normalize_rows", "has_direction", "angle_between", "class_centers",
           "spherical_embedding", "projection_fidelity", "separation_ranking"]
