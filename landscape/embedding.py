"""Feature geometry: t-SNE maps, hypersphere embeddings and angular statistics.

Seed 002 argues with pictures (t-SNE maps, Fig. 4.6; features on the unit hypersphere,
Figs. 5.1, 5.4, 5.7) that margin losses make classes tighter and push them apart. This
module computes those pictures and measures the claim:

* :func:`tsne`: an openTSNE map of :class:`~landscape.features.Features`, with its quality
  (scikit-learn trustworthiness, k-nearest-neighbour accuracy in the map);
  :meth:`Embedding.transform` places new points (e.g. the test set) onto a fitted map.
* :func:`hypersphere`: features on the unit circle (``dim=2``) or sphere (``dim=3``).
* :func:`angular_stats`: compactness, separation, their ratio and the cosine silhouette,
  always computed in the full feature space; :func:`compare_stats` tabulates checkpoints.

Angles are in degrees throughout.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from .errors import ArgumentError
from .features import Features
from .results import Result

PROJECTIONS = ("auto", "pca", "lda", "none")
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
def angular_stats(feat: Features, max_silhouette: int = 5000, seed: int = 0) -> dict[str, Any]:
    """Angular compactness and separation of the classes, in the full feature space.

    With ``u_i = f_i / |f_i|`` the L2-normalised features and, for each class ``k``, the
    class centre ``c_k = normalize(mean of u_i over the class)``:

    * ``compactness[k]``: mean angle (degrees) between the class's samples and ``c_k``;
      ``compactness`` is the mean over classes (each class counts once). Smaller is tighter.
    * ``separation[k]``: angle from ``c_k`` to the nearest other class centre;
      ``separation`` is the smallest angle between any two class centres. Larger is better.
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
    dict
        Scalars ``accuracy, compactness, separation, ratio, silhouette, zero_fraction, n, n_zero,
        dim``;
        per-class lists, aligned with ``labels`` (classes with a centre): ``class_names,
        class_compactness, class_separation`` and ``center_angles`` (C x C, degrees);
        ``collapsed``: labels of classes with only zero features.

    Raises
    ------
    ArgumentError
        With fewer than two classes with a direction (no separation is defined).
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
    return {"accuracy": feat.accuracy, "compactness": float(compact.mean()), "separation": float(off.min()),
            "ratio": ratio, "silhouette": silhouette, "zero_fraction": float(np.mean(~keep)),
            "n": int(len(keep)), "n_zero": int((~keep).sum()),
            "dim": int(x.shape[1]), "labels": labels.tolist(), "class_names": names,
            "class_compactness": compact.tolist(), "class_separation": off.min(axis=1).tolist(),
            "center_angles": between.tolist(),
            "collapsed": sorted(set(np.asarray(feat.y).tolist()) - set(labels.tolist()))}


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
        stats = angular_stats(f, max_silhouette=max_silhouette, seed=seed)
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
        How the features reached ``dim`` dimensions: ``"none"``, ``"pca"`` or ``"lda"``.
    stats : dict
        :func:`angular_stats` of the features in their full space (not of ``points``).
    meta : dict
        The features' meta plus ``dim``, ``feature_dim`` and, for a projection, the
        explained variance ratio (``pca``).
    """

    points: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    centers: np.ndarray
    classes: list = dataclasses.field(default_factory=list)
    projection: str = "none"
    stats: dict = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Dimension of the drawn space (2 or 3)."""
        return int(self.points.shape[1])

    @property
    def name(self) -> str:
        """The checkpoint's name from the meta, else ``"features"``."""
        return str(self.meta.get("checkpoint", "features"))


def _project(u: np.ndarray, y: np.ndarray, dim: int, projection: str) -> tuple[np.ndarray, dict]:
    """Project unit feature rows to ``dim`` dimensions; returns the projection and what to record."""
    if projection == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=dim, svd_solver="full").fit(u)
        return pca.transform(u), {"explained_variance_ratio": pca.explained_variance_ratio_.tolist()}
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    n_classes = len(np.unique(y))
    if dim > n_classes - 1:
        raise ArgumentError(f"LDA gives at most n_classes - 1 = {n_classes - 1} dimensions, not {dim}; "
                            "use projection='pca'.")
    lda = LinearDiscriminantAnalysis(n_components=dim, solver="svd").fit(u, y)
    return lda.transform(u), {"explained_variance_ratio": lda.explained_variance_ratio_.tolist()}


def hypersphere(feat: Features, dim: int | None = None, projection: str = "auto",
                max_silhouette: int = 5000, seed: int = 0) -> Sphere:
    """Features on the unit circle or sphere, with their angular statistics.

    Features that already have ``dim`` dimensions are only L2-normalised. Otherwise they are
    L2-normalised in the full space (so every sample counts by its direction only), projected
    to ``dim`` dimensions by centred PCA (label-free) or LDA (uses the labels; spreads the
    classes apart), and L2-normalised again. The projection is named on the figure; the
    statistics in ``Sphere.stats`` are always those of the full feature space. Zero feature
    vectors have no direction: they are drawn at the centre and left out of the projection fit.

    Parameters
    ----------
    feat : Features
    dim : {2, 3}, optional
        Circle or sphere. Default: the feature dimension when it is 2 or 3, else 3.
    projection : {"auto", "pca", "lda", "none"}
        ``"auto"`` is ``"none"`` when the features have ``dim`` dimensions, else ``"pca"``.
        ``"none"`` requires features of dimension ``dim``.
    max_silhouette, seed : int
        As in :func:`angular_stats`.

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
                            "without a projection; use projection='pca' or 'lda'.")
    stats = angular_stats(feat, max_silhouette=max_silhouette, seed=seed)
    keep = has_direction(feat.x)
    u = normalize_rows(feat.x)
    extra: dict = {}
    if projection != "none":
        # fitted on the samples with a direction; zero features stay at the origin
        u = np.zeros((len(u), dim))
        u[keep], extra = _project(normalize_rows(feat.x[keep]), feat.y[keep], dim, projection)
    points = normalize_rows(u)
    centers = class_centers(points[keep], feat.y[keep], np.asarray(stats["labels"]))
    meta = {**feat.meta, "dim": dim, "feature_dim": d, **extra}
    return Sphere(points=points.astype(np.float32), y=feat.y, pred=feat.pred, centers=centers,
                  classes=list(feat.classes), projection=projection, stats=stats, meta=meta)


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

    Only the coordinates and numbers are saved; the fitted openTSNE embedding that
    :meth:`transform` needs is kept in memory only (``Embedding.load`` gives a map that
    can be drawn but not extended).

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
    meta : dict
        Features' meta plus ``perplexity``, ``seed``, ``k``, ``n_iter`` and, for added
        points, ``placed_on`` (the reference map's data).
    """

    coords: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    classes: list = dataclasses.field(default_factory=list)
    trustworthiness: float = float("nan")
    knn_accuracy: float = float("nan")
    meta: dict = dataclasses.field(default_factory=dict)

    # the fitted openTSNE embedding: a plain attribute (not a dataclass field), so it is never saved
    _fitted = None

    @property
    def name(self) -> str:
        """The checkpoint's name from the meta, else ``"features"``."""
        return str(self.meta.get("checkpoint", "features"))

    @property
    def can_transform(self) -> bool:
        """Whether this map still holds the fitted openTSNE embedding (False after ``load``)."""
        return self._fitted is not None

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
        if self._fitted is None:
            raise ArgumentError("this Embedding was loaded from a file and holds only coordinates; points can be "
                                "added only to a map fitted in this session by landscape.tsne.")
        expected = int(self.meta.get("feature_dim", feat.dim))
        if feat.dim != expected:
            raise ArgumentError(f"the map was fitted on {expected}-dimensional features, but {feat.name!r} has "
                                f"{feat.dim}; extract them from the same layer.")
        with _one_blas_thread():
            new = self._fitted.transform(np.asarray(feat.x, dtype=np.float64), perplexity=perplexity, n_iter=n_iter)
        # openTSNE's FFT transform re-centres the reference map in place; express the new points
        # in the frame of self.coords (a translation; zero for maps made by tsne(), which centres them)
        shift = (np.asarray(self._fitted) - self.coords).mean(axis=0)
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
        Coordinates, labels, quality; holds the fitted map for :meth:`Embedding.transform`.
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
    meta = {**feat.meta, "perplexity": perplexity, "seed": seed, "k": k, "n_iter": n_iter, "method": method,
            "initialization": "pca", "feature_dim": feat.dim}
    emb = Embedding(coords=coords, y=feat.y, pred=feat.pred, classes=list(feat.classes), meta=meta, **quality)
    emb._fitted = fitted
    return emb


__all__ = ["Embedding", "Sphere", "StatsTable", "angular_stats", "by_name", "compare_stats", "hypersphere", "tsne",
           "normalize_rows", "has_direction", "angle_between", "class_centers"]
