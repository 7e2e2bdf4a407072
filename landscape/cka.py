"""Centred kernel alignment (CKA; Kornblith, Norouzi, Lee & Hinton 2019): how alike two representations are.

For two representations ``X (n, d1)`` and ``Y (n, d2)`` of the same ``n`` examples, with Gram
matrices ``K`` and ``L`` of a kernel,

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)),

``HSIC`` the Hilbert-Schmidt independence criterion. Estimators:

* **biased** (Kornblith et al.): ``HSIC_0 = tr(K H L H) / (n - 1)^2``, ``H = I - 11^T/n``;
* **debiased**: the unbiased ``HSIC_1`` of Song et al. (2012), computed as the inner product of
  U-centred Gram matrices (Szekely & Rizzo 2014), as in Kornblith et al.'s reference code;
* **minibatch** (Nguyen, Raghu & Kornblith 2021): ``HSIC_1`` accumulated over random minibatches
  of the examples, then the ratio above. It never forms an ``n x n`` matrix, and since each batch
  term is unbiased it converges to the same value as the full debiased estimator.

Kernels: linear (``K = X X^T``; the full estimators then work in feature space, ``O(n d^2)``,
whenever that is cheaper than ``O(n^2 d)``) and RBF, ``exp(-|x - x'|^2 / (2 sigma^2))`` with
``sigma = threshold x the median distance`` between examples, the median of all ``n^2`` squared
distances (diagonal included), exactly as ``gram_rbf`` of Kornblith et al.'s reference code.

Linear CKA is invariant to orthogonal transforms and isotropic scaling of either
representation, but not to arbitrary invertible linear maps (unlike CCA). All sums run in
float64 on the device. :func:`cka_matrix` compares every layer of one checkpoint with every
layer of another (or of itself), streaming the data through both models in batches.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoint import Checkpoint, as_checkpoint
from .data import as_dataset
from .device import format_bytes, resolve_device
from .errors import ArgumentError, check_choice, check_scalar
from .features import DEFAULT_LAYER, Features, _capture, _resolve_layer, layer_names
from .models import split_head
from .results import Result

KERNELS = ("linear", "rbf")
# Above this many bytes of Gram matrices the full estimator of cka_matrix refuses and points to minibatches.
FULL_MEMORY_LIMIT = 4 * 2 ** 30


# -- kernels and HSIC ---------------------------------------------------------------------
def _matrix(a, name: str, device: torch.device) -> torch.Tensor:
    """``a`` (array, tensor or Features) as a float64 ``(n, d)`` tensor on ``device``; more axes are flattened."""
    if isinstance(a, Features):
        a = a.x
    t = a.detach() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    if t.ndim < 2 or t.shape[0] == 0 or t.is_complex() or t.dtype == torch.bool:
        raise ArgumentError(f"{name} must be an (n, d) array of n examples, got shape {tuple(t.shape)}.")
    t = t.to(device=device, dtype=torch.float64).flatten(1)
    if not torch.isfinite(t).all():
        raise ArgumentError(f"{name} holds NaN or inf values; CKA is defined for finite representations only.")
    return t


def gram_linear(x: torch.Tensor) -> torch.Tensor:
    """Linear-kernel Gram matrix ``X X^T``."""
    return x @ x.T


def _sq_distances(x: torch.Tensor) -> torch.Tensor:
    sq = (x * x).sum(1)
    return (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_(min=0.0)  # clamp: round-off below zero


def _median(t: torch.Tensor) -> float:
    """Median of every entry, numpy's convention (mean of the two middle values for an even count)."""
    flat = t.reshape(-1)
    m = flat.numel()
    hi = flat.kthvalue(m // 2 + 1).values
    return float(hi if m % 2 else (hi + flat.kthvalue(m // 2).values) / 2)


def median_sq_distance(x: torch.Tensor) -> float:
    """Median of the ``n^2`` squared distances between the rows of ``x``, zero diagonal included (reference code)."""
    return _median(_sq_distances(x))


def gram_rbf(x: torch.Tensor, threshold: float = 0.5, sq_median: float | None = None) -> torch.Tensor:
    """RBF Gram matrix with ``sigma^2 = threshold^2 x median squared distance`` (Kornblith et al.'s ``gram_rbf``).

    ``sq_median`` fixes the median (used by the minibatch estimator, so every batch has the same kernel).
    """
    sq = _sq_distances(x)
    med = _median(sq) if sq_median is None else float(sq_median)
    if med <= 0:
        raise ArgumentError("the RBF bandwidth is zero: more than half of the pairwise distances are 0 (repeated "
                            "examples); use the linear kernel or distinct examples.")
    return torch.exp(-sq / (2.0 * threshold ** 2 * med))


def center_gram(k: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """Double-centred ``H K H`` (biased), or the U-centred Gram matrix (unbiased, zero diagonal).

    The U-centring is Kornblith et al.'s ``center_gram(unbiased=True)``: with the diagonal set to
    zero, ``<U(K), U(L)> / (n (n - 3))`` is the unbiased estimator ``HSIC_1`` of Song et al. (2012).
    """
    k = k.clone()
    n = k.shape[0]
    if unbiased:
        k.fill_diagonal_(0.0)
        means = k.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        k -= means[:, None]
        k -= means[None, :]
        k.fill_diagonal_(0.0)
        return k
    means = k.mean(0)
    k -= means[:, None]
    k -= means[None, :]
    k += means.mean()
    return k


def _hsic_scale(n: int, unbiased: bool) -> float:
    """``<centred K, centred L> x scale`` is ``HSIC_1`` (unbiased) or ``HSIC_0 = tr(KHLH)/(n-1)^2`` (biased)."""
    return 1.0 / (n * (n - 3)) if unbiased else 1.0 / (n - 1) ** 2


def _min_samples(unbiased: bool) -> int:
    return 4 if unbiased else 2


class _HSICSums:
    """Weighted sums of ``HSIC(K_i, L_j)``, ``HSIC(K_i, K_i)`` and ``HSIC(L_j, L_j)`` over batches of examples.

    One batch of all ``n`` examples gives the full estimator; many batches the minibatch estimator.
    """

    def __init__(self, n_a: int, n_b: int | None, unbiased: bool, device: torch.device):
        self.unbiased, self.same = unbiased, n_b is None
        self.ab = torch.zeros(n_a, n_a if n_b is None else n_b, dtype=torch.float64, device=device)
        self.aa = torch.zeros(n_a, dtype=torch.float64, device=device)
        self.bb = self.aa if n_b is None else torch.zeros(n_b, dtype=torch.float64, device=device)
        self.batches = 0

    def add(self, grams_a: Sequence[torch.Tensor], grams_b: Sequence[torch.Tensor] | None, weight: float) -> None:
        n = grams_a[0].shape[0]
        scale = weight * _hsic_scale(n, self.unbiased)
        # each centred Gram is flattened into one row: all inner products are then one matrix product
        a = torch.stack([center_gram(k, self.unbiased).reshape(-1) for k in grams_a])
        b = a if grams_b is None else torch.stack([center_gram(k, self.unbiased).reshape(-1) for k in grams_b])
        self.ab += scale * (a @ b.T)
        self.aa += scale * (a * a).sum(1)
        if not self.same:
            self.bb += scale * (b * b).sum(1)
        self.batches += 1

    def value(self) -> np.ndarray:
        den = self.aa[:, None] * self.bb[None, :]
        if (den <= 0).any():
            warnings.warn("an HSIC estimate of a representation with itself is not positive (too few examples per "
                          "batch for the unbiased estimator); those CKA values are NaN. Use more examples.",
                          RuntimeWarning, stacklevel=3)
        with np.errstate(invalid="ignore"):
            return (self.ab / den.clamp(min=0).sqrt()).cpu().numpy()


def _linear_feature_space(x: torch.Tensor, y: torch.Tensor, unbiased: bool) -> float:
    """Full linear CKA without ``n x n`` matrices (Kornblith et al.'s ``feature_space_linear_cka``).

    With centred ``X``, ``Y``: ``<HKH, HLH> = ||X^T Y||_F^2``; the unbiased form subtracts
    ``n/(n-2) r_x . r_y`` and adds ``|X|^2 |Y|^2 / ((n-1)(n-2))``, ``r`` the squared row norms, which
    equals ``<U(K), U(L)>`` exactly.
    """
    n = x.shape[0]
    x = x - x.mean(0)
    y = y - y.mean(0)

    def dot(a, b, ab):
        value = (ab * ab).sum()
        if unbiased:
            ra, rb = (a * a).sum(1), (b * b).sum(1)
            value = value - n / (n - 2) * (ra @ rb) + ra.sum() * rb.sum() / ((n - 1) * (n - 2))
        return value

    xy = dot(x, y, x.T @ y)
    xx = dot(x, x, x.T @ x)
    yy = dot(y, y, y.T @ y)
    den = xx * yy
    if den <= 0:
        warnings.warn("an HSIC estimate of a representation with itself is not positive (too few examples for "
                      "the unbiased estimator); CKA is NaN. Use more examples.", RuntimeWarning, stacklevel=3)
        return float("nan")
    return float(xy / den.sqrt())


def _gram(x: torch.Tensor, kernel: str, threshold: float, sq_median: float | None = None) -> torch.Tensor:
    return gram_linear(x) if kernel == "linear" else gram_rbf(x, threshold, sq_median)


def _check_options(kernel: str, threshold, debiased, minibatch, n: int | None = None) -> tuple[float, bool, int | None]:
    check_choice(kernel, "kernel", KERNELS)
    threshold = check_scalar(threshold, "threshold", float, min=0, include_min=False)
    minibatch = check_scalar(minibatch, "minibatch", int, min=4, allow_none=True)
    if minibatch is not None and debiased is False:
        raise ArgumentError("the minibatch estimator accumulates the unbiased HSIC of each batch (Nguyen et al. "
                            "2021), so it is always debiased; leave debiased out (or True) with minibatch=..., or "
                            "drop minibatch for the biased full estimator.")
    unbiased = bool(debiased) or minibatch is not None
    if n is not None and n < _min_samples(unbiased):
        raise ArgumentError(f"CKA needs at least {_min_samples(unbiased)} examples for the "
                            f"{'debiased' if unbiased else 'biased'} estimator, got {n}.")
    return threshold, unbiased, minibatch


def _batch_slices(n: int, minibatch: int, seed: int) -> list[np.ndarray]:
    """A seeded shuffle of ``range(n)`` cut into consecutive batches of ``minibatch`` (the last one smaller).

    A last batch of fewer than 4 examples has no unbiased HSIC and is left out.
    """
    order = np.random.default_rng(seed).permutation(n)
    cuts = [order[i:i + minibatch] for i in range(0, n, minibatch)]
    return [c for c in cuts if len(c) >= 4]


def cka(x, y, kernel: str = "linear", threshold: float = 0.5, debiased: bool | None = None, *,
        minibatch: int | None = None, seed: int = 0, device: str | torch.device = "auto") -> float:
    """Centred kernel alignment of two representations of the same examples.

    Parameters
    ----------
    x, y : array-like, torch.Tensor or Features
        ``(n, d1)`` and ``(n, d2)``, row ``i`` of both the same example (more axes are flattened).
    kernel : {"linear", "rbf"}
    threshold : float
        RBF bandwidth as a fraction of the median distance between examples (Kornblith et al.
        use 0.2 to 0.8).
    debiased : bool, optional
        Use the unbiased ``HSIC_1`` (Song et al. 2012) instead of the biased ``HSIC_0``. Default:
        biased for the full estimator, and the minibatch estimator is always debiased.
    minibatch : int, optional
        Examples per batch of the minibatch estimator (Nguyen et al. 2021): the rows are
        shuffled (``seed``) and cut into batches; each batch's ``HSIC_1`` is accumulated,
        weighted by its size; no ``n x n`` matrix is formed. For the RBF kernel the bandwidth
        comes from the first batch and is kept for all. Default: the full estimator.
    seed : int
        Seed of the minibatch shuffle.
    device : str or torch.device
        Where the float64 computation runs (``"auto"``: CUDA when present).

    Returns
    -------
    float
        CKA in [0, 1] for the biased estimator (the debiased one can be slightly negative for
        unrelated representations).

    Raises
    ------
    ArgumentError
        Different numbers of examples, too few examples, an unknown kernel, a threshold that is
        not positive, or ``debiased=False`` with ``minibatch``.
    """
    dev = resolve_device(device)
    xt, yt = _matrix(x, "x", dev), _matrix(y, "y", dev)
    if xt.shape[0] != yt.shape[0]:
        raise ArgumentError(f"x and y must hold the same examples, but x has {xt.shape[0]} rows and y has "
                            f"{yt.shape[0]}.")
    n = xt.shape[0]
    threshold, unbiased, minibatch = _check_options(kernel, threshold, debiased, minibatch, n)
    seed = check_scalar(seed, "seed", int, min=0)
    if minibatch is None:
        d1, d2 = xt.shape[1], yt.shape[1]
        if kernel == "linear" and n * (d1 + d2) > d1 * d1 + d2 * d2 + d1 * d2:
            return _linear_feature_space(xt, yt, unbiased)
        sums = _HSICSums(1, 1, unbiased, dev)
        sums.add([_gram(xt, kernel, threshold)], [_gram(yt, kernel, threshold)], 1.0)
        return float(sums.value()[0, 0])
    batches = _batch_slices(n, minibatch, seed)
    sums = _HSICSums(1, 1, True, dev)
    medians = (None, None)
    for idx in batches:
        i = torch.as_tensor(idx, device=dev)
        xb, yb = xt[i], yt[i]
        if kernel == "rbf" and medians[0] is None:
            medians = (median_sq_distance(xb), median_sq_distance(yb))
        sums.add([_gram(xb, kernel, threshold, medians[0])], [_gram(yb, kernel, threshold, medians[1])], len(idx))
    return float(sums.value()[0, 0])


# -- layer by layer --------------------------------------------------------------------------
@dataclasses.dataclass(repr=False)
class CKAMatrix(Result):
    """CKA between every layer of checkpoint A (rows) and every layer of checkpoint B (columns).

    Attributes
    ----------
    values : np.ndarray
        ``(len(layers_a), len(layers_b))`` CKA values.
    layers_a, layers_b : list of str
        Layer names, in forward order.
    dims_a, dims_b : list of int
        Feature dimension of each layer (its output flattened).
    meta : dict
        ``checkpoint_a``/``checkpoint_b``, ``digest_a``/``digest_b``, ``arch_*``, ``loss_*``,
        ``data``, ``n_samples``, ``kernel``, ``threshold``, ``debiased``, ``estimator``
        (``"full"`` or ``"minibatch"``), ``minibatch``, ``seed``, ``same`` (one checkpoint with itself).
    """

    values: np.ndarray
    layers_a: list
    layers_b: list
    dims_a: list = dataclasses.field(default_factory=list)
    dims_b: list = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        """``"<A> vs <B>"``."""
        return f"{self.meta.get('checkpoint_a', 'A')} vs {self.meta.get('checkpoint_b', 'B')}"


_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def default_layers(model: nn.Module) -> list[str]:
    """The layers :func:`cka_matrix` compares by default, in registration (usually forward) order.

    Every linear and convolution layer, every activation-function module, and every block of a
    class defined outside ``torch.nn`` (a residual block, say) as a whole, without its inside.
    For the zoo's ``mlp`` that is ``body.1, body.3, body.5, body.7, head``.
    """
    names: list[str] = []
    blocks: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(b + ".") for b in blocks):
            continue
        cls = type(module)
        if not cls.__module__.startswith("torch."):
            names.append(name)
            blocks.append(name)
        elif isinstance(module, _WEIGHTED) or (cls.__module__ == "torch.nn.modules.activation"
                                               and not isinstance(module, nn.MultiheadAttention)):
            names.append(name)
    return names


@contextlib.contextmanager
def _layer_reader(model: nn.Module, layers: Sequence[str]) -> Iterator[Callable[[torch.Tensor], dict]]:
    """Yield ``run(x) -> {layer: output}`` with a forward hook on each layer, all removed on exit.

    ``"features"`` is the penultimate representation ``model.features(x)`` (the input of ``head``).
    """
    parts = split_head(model)
    if DEFAULT_LAYER in layers and parts is None:
        raise ArgumentError(f"model {type(model).__name__} has no `features(x)` method and linear `head`, so there "
                            f"is no layer {DEFAULT_LAYER!r}; name its modules instead.")
    with contextlib.ExitStack() as stack:
        seen = {name: stack.enter_context(_capture(_resolve_layer(model, name)))
                for name in layers if name != DEFAULT_LAYER}

        def run(xb: torch.Tensor) -> dict[str, torch.Tensor]:
            for s in seen.values():
                s.clear()
            out = {}
            if parts is not None:
                feats, head = parts
                out[DEFAULT_LAYER] = feats(xb)
                head(out[DEFAULT_LAYER])
            else:
                model(xb)
            out.update({name: s[-1] for name, s in seen.items() if s})
            return {name: out[name] for name in layers if name in out}

        yield run


def _check_layers(model: nn.Module, layers, what: str) -> tuple[list[str], bool]:
    """The layer list and whether it was chosen by default (unused defaults are dropped, not refused)."""
    if layers is None:
        found = default_layers(model)
        if not found:
            raise ArgumentError(f"found no default layers in {type(model).__name__}; pass {what}=[...] "
                                f"with layer names.{' Available: ' + ', '.join(layer_names(model))}")
        return found, True
    if isinstance(layers, str):
        layers = [layers]
    layers = [str(v) for v in layers]
    if not layers:
        raise ArgumentError(f"{what} is empty; name at least one layer, or leave it out for the default layers.")
    for name in layers:
        if name != DEFAULT_LAYER:
            _resolve_layer(model, name)
    return layers, False


def _keep_used(names: list[str], outs: dict, default: bool, model: nn.Module) -> list[str]:
    """``names`` less the default layers the forward pass did not call; an uncalled named layer is an error."""
    missing = [n for n in names if n not in outs]
    if missing and not default:
        raise ArgumentError(f"layer(s) {missing} are not used by {type(model).__name__}'s forward pass; pick layers "
                            "the model calls.")
    return [n for n in names if n in outs]


class _Side:
    """One model's layers in :func:`cka_matrix`: its forward reader, kept outputs and RBF bandwidths."""

    def __init__(self, ck: Checkpoint, names: list[str], default: bool):
        self.ck, self.names, self.default = ck, names, default
        self.dims: list[int] = []
        self.kept: list[list[torch.Tensor]] = []
        self.medians: dict[str, float] = {}

    def settle(self, outs: dict) -> None:
        """After the first batch: drop unused default layers, record the dimensions."""
        self.names = _keep_used(self.names, outs, self.default, self.ck.model)
        self.dims = [int(outs[k][0].numel()) for k in self.names]

    def grams(self, outs: dict, kernel: str, threshold: float, device: torch.device) -> list[torch.Tensor]:
        """Gram matrices of the layers' outputs in float64; the RBF bandwidth is fixed by the first call."""
        out = []
        for name in self.names:
            h = outs[name].flatten(1).to(device=device, dtype=torch.float64)
            if kernel == "rbf" and name not in self.medians:
                self.medians[name] = median_sq_distance(h)
            out.append(_gram(h, kernel, threshold, self.medians.get(name)))
        return out

    def keep(self, outs: dict) -> None:
        self.kept.append([outs[k].flatten(1).float().cpu() for k in self.names])

    def all_kept(self) -> dict[str, torch.Tensor]:
        full = {k: torch.cat([batch[i] for batch in self.kept]) for i, k in enumerate(self.names)}
        self.kept.clear()
        return full


def cka_matrix(ck_a, ck_b=None, data=None, *, layers: Sequence[str] | None = None,
               layers_b: Sequence[str] | None = None, kernel: str = "linear", threshold: float = 0.5,
               debiased: bool | None = None, minibatch: int | None = None, batch_size: int = 512,
               subset: int | None = None, seed: int = 0, device: str | torch.device = "auto",
               verbose: bool | None = None) -> CKAMatrix:
    """Layer-by-layer CKA of two checkpoints on the same examples (or of one checkpoint with itself).

    The data stream through both models in batches (each normalised as its checkpoint was
    trained); forward hooks read the layers' outputs, flattened to ``(batch, d)``. The full
    estimator keeps every layer's outputs (float32, on the CPU) and compares ``n x n`` Gram
    matrices; the minibatch estimator (``minibatch=``) accumulates each batch's unbiased HSIC
    and holds only one batch.

    Parameters
    ----------
    ck_a : Checkpoint, path or nn.Module
        Rows of the matrix.
    ck_b : Checkpoint, path or nn.Module, optional
        Columns; ``None`` (or ``ck_a`` again) compares ``ck_a`` with itself.
    data : dataset
        Anything :func:`landscape.data.as_dataset` takes (a spec string loads its test split).
    layers, layers_b : sequence of str, optional
        Layer names of A and B (module names, or ``"features"`` for the penultimate features).
        Default: :func:`default_layers` of each model (``layers_b``: ``layers`` when comparing a
        model with itself).
    kernel, threshold, debiased
        As in :func:`cka`.
    minibatch : int, optional
        Examples per batch of the minibatch estimator (the shuffle is seeded by ``seed``); also the
        forward batch size. Default: the full estimator.
    batch_size : int
        Forward batch size of the full estimator.
    subset : int, optional
        A seeded, stratified subset of the data of this many examples.
    seed : int
        Seed of ``subset`` and of the minibatch shuffle.
    device : str or torch.device
        Device of checkpoints loaded from files; CKA runs in float64 on A's device.
    verbose : bool, optional
        Progress over the batches.

    Returns
    -------
    CKAMatrix

    Raises
    ------
    ArgumentError
        Unknown or unused layer names, bad options, or a full estimator whose Gram matrices or
        kept outputs would exceed :data:`FULL_MEMORY_LIMIT` (use ``minibatch``).
    """
    from .progress import bar

    if data is None:
        raise ArgumentError("cka_matrix needs data: the examples both checkpoints see, e.g. "
                            "cka_matrix(ck_a, ck_b, 'digits').")
    a = as_checkpoint(ck_a, device=device)
    b = a if ck_b is None or ck_b is ck_a else as_checkpoint(ck_b, device=device)
    same = b is a
    seed = check_scalar(seed, "seed", int, min=0)
    ds = as_dataset(data, subset, seed)
    threshold, unbiased, minibatch = _check_options(kernel, threshold, debiased, minibatch, len(ds))
    batch_size = check_scalar(batch_size, "batch_size", int, min=1)
    names_a, default_a = _check_layers(a.model, layers, "layers")
    names_b, default_b = (names_a, default_a) if same and layers_b is None else \
        _check_layers(b.model, layers_b, "layers_b")
    for ck in ((a,) if same else (a, b)):
        ck.check_data(ds)
    data_name = ds.name
    if minibatch is not None:
        ds = ds.take(np.random.default_rng(seed).permutation(len(ds)))
    n, step, dev = len(ds), minibatch or batch_size, a.device
    # one model with itself: one forward pass reads the union of both layer lists
    side_a = _Side(a, list(dict.fromkeys([*names_a, *names_b])) if same else names_a, default_a and default_b)
    side_b = None if same else _Side(b, names_b, default_b)
    n_grams = len(side_a.names) + (len(side_b.names) if side_b else 0)
    if minibatch is None and 2 * n_grams * n * n * 8 > FULL_MEMORY_LIMIT:
        raise ArgumentError(f"the full CKA estimator of {n} examples over {n_grams} layers needs about "
                            f"{format_bytes(2 * n_grams * n * n * 8)} of Gram matrices; pass minibatch=... (e.g. "
                            "512) for the minibatch estimator, or use a subset.")
    sums = None
    with contextlib.ExitStack() as stack, torch.inference_mode():
        run_a = stack.enter_context(_layer_reader(a.model, side_a.names))
        run_b = stack.enter_context(_layer_reader(b.model, side_b.names)) if side_b else None
        progress = stack.enter_context(bar(math.ceil(n / step), "cka", verbose, unit="batch"))
        batches_b = None if same else ds.batches(step, b.device, transform=b.normalize)
        for i, (xa, _) in enumerate(ds.batches(step, a.device, transform=a.normalize)):
            outs_a = run_a(xa)
            outs_b = run_b(next(batches_b)[0]) if side_b else None
            if i == 0:
                side_a.settle(outs_a)
                if side_b:
                    side_b.settle(outs_b)
                kept = n * (sum(side_a.dims) + (sum(side_b.dims) if side_b else 0)) * 4
                if minibatch is None and kept > FULL_MEMORY_LIMIT:
                    raise ArgumentError(f"the full CKA estimator would keep {format_bytes(kept)} of layer outputs; "
                                        "pass minibatch=... (e.g. 512), or use a subset.")
                sums = _HSICSums(len(side_a.names), len(side_b.names) if side_b else None, unbiased, dev)
            if minibatch is None:
                side_a.keep(outs_a)
                if side_b:
                    side_b.keep(outs_b)
            elif len(xa) >= 4:  # a last batch of fewer has no unbiased HSIC
                sums.add(side_a.grams(outs_a, kernel, threshold, dev),
                         side_b.grams(outs_b, kernel, threshold, dev) if side_b else None, len(xa))
            progress.update(1)
        if minibatch is None:
            sums.add(side_a.grams(side_a.all_kept(), kernel, threshold, dev),
                     side_b.grams(side_b.all_kept(), kernel, threshold, dev) if side_b else None, 1.0)
    values = sums.value()
    if same:  # rows and columns of the union
        names_a = [k for k in names_a if k in side_a.names]
        names_b = [k for k in names_b if k in side_a.names]
        pos = {k: j for j, k in enumerate(side_a.names)}
        values = values[np.ix_([pos[k] for k in names_a], [pos[k] for k in names_b])]
        dims_a = [side_a.dims[pos[k]] for k in names_a]
        dims_b = [side_a.dims[pos[k]] for k in names_b]
    else:
        names_a, names_b, dims_a, dims_b = side_a.names, side_b.names, side_a.dims, side_b.dims
    meta = {"checkpoint_a": a.name, "checkpoint_b": b.name, "digest_a": a.digest, "digest_b": b.digest,
            "arch_a": a.meta.get("arch"), "arch_b": b.meta.get("arch"), "loss_a": a.meta.get("loss"),
            "loss_b": b.meta.get("loss"), "data": data_name, "n_samples": n, "kernel": kernel,
            "threshold": threshold if kernel == "rbf" else None, "debiased": unbiased,
            "estimator": "full" if minibatch is None else "minibatch", "minibatch": minibatch,
            "batches": sums.batches, "batch_size": batch_size if minibatch is None else minibatch, "seed": seed,
            "subset": subset, "same": same}
    return CKAMatrix(values=values, layers_a=names_a, layers_b=names_b, dims_a=dims_a, dims_b=dims_b, meta=meta)


__all__ = ["KERNELS", "CKAMatrix", "cka", "cka_matrix", "default_layers", "gram_linear", "gram_rbf",
           "center_gram", "median_sq_distance"]
