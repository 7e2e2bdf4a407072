"""Mode connectivity: loss barriers on the line between two checkpoints, and trained low-loss curves.

"Are two minima in the same basin?" is answered two ways in the field:

* :func:`barrier`: the loss and accuracy along the straight line ``(1 - t) theta_A + t theta_B``
  and its barriers (Frankle et al. 2020, "Linear mode connectivity and the lottery ticket
  hypothesis"; Entezari et al. 2022), on the training and the test data;
* :func:`connect`: a Bezier curve or polygonal chain between the two checkpoints whose bends are
  trained, with the endpoints fixed, by sampling ``t ~ U(0, 1)`` at every step and minimising the
  training objective at the curve point ``phi(t)`` (Garipov et al. 2018, "Loss surfaces, mode
  connectivity, and fast ensembling of DNNs"; Draxler et al. 2018). It works for any model
  through ``torch.func.functional_call`` on flat parameter vectors: no layer is rewritten as a
  "curve module", as the reference code of Garipov et al. requires;
* :func:`curve_plane`: the loss over the plane through the two endpoints and the middle bend, with
  the curve's projection on it (Garipov et al., Fig. 1), computed by :func:`landscape.surface.surface`
  along :func:`landscape.directions.directions_between` made orthonormal.

Curves. With nodes ``theta_0 = A, theta_1 .. theta_n (the bends), theta_{n+1} = B``:
Bezier ``phi(t) = sum_k C(n+1, k) t^k (1 - t)^(n+1-k) theta_k``; polygonal chain: linear between
consecutive nodes, placed at ``t = k / (n + 1)``. A coefficient that is exactly 1 returns its node
itself, so ``phi(0)`` and ``phi(1)`` are the checkpoints bit for bit.

Batchnorm. Weights on a path are not those any running statistics were measured for. ``bn="recompute"``
(the default for nets with batchnorm, and what Garipov et al. do) re-estimates them at every point
on the training data with :class:`landscape.batchnorm.StatisticsEstimator`; ``"interpolate"``
interpolates the endpoints' statistics linearly in ``t`` with the weights (Li et al.'s ``states``
line; along a curve, whose bends have no statistics, the same ``(1 - t, t)`` mix). Copied or
interpolated statistics are what makes barriers of batchnorm nets look higher than they are.
A net without batchnorm ignores ``bn``.

Barriers, for a loss (or error) ``L`` on the grid ``t_i`` (``t = 0`` and ``t = 1`` included):
``barrier = L(t*) - ((1 - t*) L(0) + t* L(1))`` with ``t* = argmax_t L(t)`` (the issue's formula);
``barrier_endpoints = max_t L(t) - max(L(0), L(1))``; ``barrier_gap = max_t [L(t) - ((1 - t) L(0) + t L(1))]``
(Entezari et al.'s definition); and Frankle et al.'s ``instability = max_t L(t) - (L(0) + L(1)) / 2``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from . import grid
from . import grid as _grid  # curve_plane's own ``grid`` is its number of points
from .batchnorm import DEFAULT_BN_BATCH_SIZE, DEFAULT_BN_SUBSET, StatisticsEstimator, statistics_names
from .checkpoint import Checkpoint, as_checkpoint
from .data import Dataset, as_dataset
from .errors import ArgumentError, ResumeError, check_choice, check_scalar
from .results import Result

CURVES = ("bezier", "polychain")
BN_MODES = ("recompute", "interpolate")
SPLITS = ("train", "test")
DEFAULT_POINTS = 61  # Garipov et al. evaluate their curves at 61 points
METRICS = ("loss", "error")


# -- curves ----------------------------------------------------------------------------------------
def coefficients(curve: str, n_nodes: int, t) -> np.ndarray:
    """Weights of the nodes at positions ``t``: ``(len(t), n_nodes)`` float64, each row summing to 1.

    Parameters
    ----------
    curve : {"bezier", "polychain"}
        Bezier: Bernstein polynomials ``C(n, k) t^k (1 - t)^(n - k)`` with ``n = n_nodes - 1``;
        polychain: piecewise linear between consecutive nodes placed at ``k / n``.
    n_nodes : int
        Number of nodes (endpoints included), at least 2.
    t : float or array of float in [0, 1]

    Returns
    -------
    np.ndarray
        Rows are exactly ``e_0`` at ``t = 0`` and ``e_{n}`` at ``t = 1``.
    """
    curve = check_choice(curve, "curve", CURVES)
    n_nodes = check_scalar(n_nodes, "number of nodes", int, min=2)
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    if not np.all((t >= 0) & (t <= 1)):
        raise ArgumentError(f"curve positions t must lie in [0, 1], got {t.min():g} .. {t.max():g}.")
    n = n_nodes - 1
    out = np.zeros((len(t), n_nodes))
    if curve == "bezier":
        for k in range(n_nodes):
            out[:, k] = math.comb(n, k) * t ** k * (1 - t) ** (n - k)
        return out
    seg = np.minimum(np.floor(t * n), n - 1).astype(int)
    u = t * n - seg
    rows = np.arange(len(t))
    out[rows, seg] = 1 - u
    out[rows, seg + 1] += u
    return out


def combine(coef: Sequence[float], nodes: torch.Tensor) -> torch.Tensor:
    """``sum_k coef[k] * nodes[k]`` for ``nodes`` of shape ``(K, P)``; a coefficient of exactly 1 returns that node."""
    coef = np.asarray(coef, dtype=np.float64)
    exact = np.flatnonzero(coef == 1.0)
    if exact.size:  # the endpoints (and polychain bends) bit for bit: 1 * a + 0 * b can differ from a in its sign of 0
        return nodes[int(exact[0])]
    return torch.as_tensor(coef, dtype=nodes.dtype, device=nodes.device) @ nodes


def parameter_layout(model: nn.Module) -> tuple[list[str], list[list[int]]]:
    """Names and shapes of ``model.named_parameters()``: the coordinates a curve lives in."""
    named = list(model.named_parameters())
    return [n for n, _ in named], [list(p.shape) for _, p in named]


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """Every parameter of ``model`` flattened into one vector (its device and dtype), in ``named_parameters`` order."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def unflatten(vector: torch.Tensor, names: Sequence[str], shapes: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """``{name: view of vector}`` with the given shapes (views keep gradients flowing into ``vector``)."""
    sizes = [math.prod(s) for s in shapes]
    return {n: part.view(*s) for n, part, s in zip(names, torch.split(vector, sizes), shapes)}


def _float_buffers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Batchnorm running statistics of ``model`` that interpolate (the floating ones)."""
    names = set(statistics_names(model))
    return [(n, b.detach()) for n, b in model.named_buffers() if n in names and b.is_floating_point()]


# -- barriers --------------------------------------------------------------------------------------
def barrier_values(t, values) -> dict[str, float]:
    """The barriers of ``values`` (a loss or an error) along a path sampled at ``t`` (see the module docstring).

    Parameters
    ----------
    t : array of float
        Increasing positions from 0 to 1 (both included).
    values : array of float
        The loss (or error) at ``t``; ``values[0]`` and ``values[-1]`` are the endpoints.

    Returns
    -------
    dict
        ``t_max`` (``t*``, the first maximiser), ``max``, ``barrier``, ``barrier_endpoints``,
        ``barrier_gap``, ``t_gap`` (its maximiser) and ``instability``. Non-finite values
        (a diverged point) make every barrier ``inf`` (or NaN), never a silently smaller number.
    """
    t = np.asarray(t, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.ndim != 1 or t.shape != v.shape or len(t) < 2:
        raise ArgumentError(f"barrier_values needs t and values of one length >= 2, got {t.shape} and {v.shape}.")
    if t[0] != 0.0 or t[-1] != 1.0:
        raise ArgumentError(f"a barrier needs the endpoints: t must run from 0 to 1, got {t[0]:g} .. {t[-1]:g}.")
    chord = (1 - t) * v[0] + t * v[-1]
    if not np.all(np.isfinite(v)):
        bad = float("nan") if np.isnan(v).any() else float("inf")
        return {"t_max": float(t[np.argmax(np.where(np.isfinite(v), -np.inf, 1.0))]), "max": bad, "barrier": bad,
                "barrier_endpoints": bad, "barrier_gap": bad, "t_gap": float("nan"), "instability": bad}
    i, j = int(np.argmax(v)), int(np.argmax(v - chord))
    return {"t_max": float(t[i]), "max": float(v[i]), "barrier": float(v[i] - chord[i]),
            "barrier_endpoints": float(v[i] - max(v[0], v[-1])), "barrier_gap": float(v[j] - chord[j]),
            "t_gap": float(t[j]), "instability": float(v[i] - (v[0] + v[-1]) / 2)}


def path_barriers(t, loss: Mapping[str, np.ndarray], accuracy: Mapping[str, np.ndarray]) -> dict:
    """``{split: {"loss": barrier_values, "error": barrier_values of 1 - accuracy}}``."""
    return {s: {"loss": barrier_values(t, loss[s]), "error": barrier_values(t, 1.0 - np.asarray(accuracy[s]))}
            for s in loss}


class _PathResult:
    """What a Barrier and a LowLossCurve share: values along ``t`` per split and their barriers."""

    t: np.ndarray
    loss: dict
    accuracy: dict
    barriers: dict

    @property
    def splits(self) -> list[str]:
        """The data splits evaluated (``train``, and ``test`` when given)."""
        return [s for s in SPLITS if s in self.loss] + [s for s in self.loss if s not in SPLITS]

    def barrier(self, split: str = "train", metric: str = "loss", which: str = "barrier") -> float:
        """One barrier, e.g. ``barrier("test", "error", "barrier_endpoints")``."""
        check_choice(split, "split", self.splits)
        check_choice(metric, "metric", METRICS)
        row = self.barriers[split][metric]
        return float(check_choice(which, "which", sorted(row)) and row[which])


@dataclasses.dataclass(repr=False)
class Barrier(_PathResult, Result):
    """Loss and accuracy on the straight line between two checkpoints, with its barriers.

    Attributes
    ----------
    t : np.ndarray
        ``(n,)`` positions, 0 (checkpoint A) to 1 (checkpoint B).
    loss, accuracy : dict of np.ndarray
        ``{split: (n,)}`` for ``"train"`` (and ``"test"``): the training objective and the accuracy.
    barriers : dict
        ``{split: {"loss": {...}, "error": {...}}}`` from :func:`barrier_values`.
    meta : dict
        Both checkpoints (``checkpoint``/``digest`` of A, ``checkpoint_b``/``digest_b``), the data,
        ``bn`` and its options, ``criterion``, ``seed``.
    """

    t: np.ndarray
    loss: dict
    accuracy: dict
    barriers: dict
    meta: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(repr=False)
class LowLossCurve(_PathResult, Result):
    """A trained curve between two checkpoints, its training log, and its values at ``t``.

    Named ``LowLossCurve`` because ``landscape.Curve`` is the loss along a line (:class:`landscape.surface.Curve`).

    Attributes
    ----------
    t : np.ndarray
        ``(n,)`` positions where the curve was evaluated (61 by default, as Garipov et al.).
    loss, accuracy : dict of np.ndarray
        ``{split: (n,)}`` along the curve, batchnorm statistics as ``meta["bn"]`` says.
    barriers : dict
        As :attr:`Barrier.barriers`, along the curve.
    nodes : np.ndarray
        ``(bends + 2, P)``: checkpoint A, the trained bends, checkpoint B (flat parameters in
        ``names`` order, the parameters' dtype). Stored as plain arrays (no pickle), as safely as
        a checkpoint.
    names, shapes : list
        The parameter layout of ``nodes``.
    log : dict of np.ndarray
        Per epoch: ``epoch``, ``loss`` (mean objective at the sampled points, regulariser
        included), ``objective`` (without it), ``accuracy`` (on the batches), ``lr``, ``seconds``.
    meta : dict
        ``curve``, ``bends``, the training options, provenance of both checkpoints, the data.
    """

    t: np.ndarray
    loss: dict
    accuracy: dict
    barriers: dict
    nodes: np.ndarray
    names: list
    shapes: list
    log: dict
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def curve(self) -> str:
        """``"bezier"`` or ``"polychain"``."""
        return str(self.meta.get("curve"))

    @property
    def bends(self) -> np.ndarray:
        """``(bends, P)`` the trained bend points."""
        return self.nodes[1:-1]

    def coefficients(self, t) -> np.ndarray:
        """The nodes' weights at ``t`` (see :func:`coefficients`)."""
        return coefficients(self.curve, len(self.nodes), t)

    def point(self, t: float, device=None) -> dict[str, torch.Tensor]:
        """The parameters ``phi(t)`` as ``{name: tensor}`` (for ``functional_call`` or ``load_state_dict``)."""
        nodes = torch.from_numpy(np.ascontiguousarray(self.nodes)).to(device)
        flat = combine(self.coefficients([t])[0], nodes)
        return {k: v.clone() for k, v in unflatten(flat, self.names, self.shapes).items()}


# -- inputs ----------------------------------------------------------------------------------------
def _pair(ck_a, ck_b, criterion) -> tuple[Checkpoint, Checkpoint]:
    """Both checkpoints, of one parameter layout, on A's device; A's criterion is the objective."""
    a = as_checkpoint(ck_a, criterion=None if criterion in (None, "train") else criterion)
    b = as_checkpoint(ck_b, device=a.device)
    if parameter_layout(a.model) != parameter_layout(b.model):
        raise ArgumentError(f"checkpoints {a.name!r} and {b.name!r} have different architectures (parameter names or "
                            "shapes differ); a path between them needs checkpoints of one architecture.")
    if a.meta.get("normalization") != b.meta.get("normalization"):
        raise ArgumentError(f"checkpoints {a.name!r} and {b.name!r} normalise their inputs differently; a path "
                            "between them feeds both the same inputs, so give checkpoints trained on the same data.")
    return a, b


def _datasets(data, test, subset: int | None, seed: int) -> dict[str, Dataset]:
    """``{"train": ..., "test": ...}``: a spec string gives both splits; a Dataset is the training data."""
    out = {"train": as_dataset(data, subset, seed, split="train")}
    if test is None and isinstance(data, str):
        test = data
    if test is not None and test is not False:
        out["test"] = as_dataset(test, subset, seed, split="test")
    return out


def _bn_mode(model: nn.Module, bn: str) -> str:
    """``bn`` checked; ``"none"`` for a net without batchnorm statistics (nothing to recompute or interpolate)."""
    bn = check_choice(bn, "bn", BN_MODES)
    return bn if statistics_names(model) else "none"


def _criterion_name(ck: Checkpoint) -> str:
    return str(ck.meta.get("loss") or type(ck.criterion).__name__)


# -- evaluation along a path -----------------------------------------------------------------------
class PathEvaluator:
    """Loss and accuracy of a model at the points of a path through weight space.

    Parameters
    ----------
    ck : Checkpoint
        Architecture, criterion, normalisation and device (checkpoint A).
    nodes : Tensor
        ``(K, P)`` flat parameters of the path's nodes (``nodes[0]`` is A, ``nodes[-1]`` is B).
    curve : {"bezier", "polychain"}
        How the nodes combine (two nodes: the straight line either way).
    data : dict of str to Dataset
        The evaluation splits; ``data["train"]`` is where statistics are re-estimated.
    bn : {"recompute", "interpolate", "none"}
    buffers : tuple of (dict, dict)
        The endpoints' running statistics, for ``"interpolate"``.
    bn_subset, bn_batch_size, seed
        Options of the re-estimate (:class:`landscape.batchnorm.StatisticsEstimator`).
    batch_size : int, optional
        Evaluate in batches (default: each split as one batch).
    """

    def __init__(self, ck: Checkpoint, nodes: torch.Tensor, curve: str, data: Mapping[str, Dataset], bn: str,
                 buffers: tuple[dict, dict] = ({}, {}), *, bn_subset: int | None = DEFAULT_BN_SUBSET,
                 bn_batch_size: int = DEFAULT_BN_BATCH_SIZE, seed: int = 0, batch_size: int | None = None):
        from .objective import Objective

        self.ck, self.nodes, self.curve, self.bn = ck, nodes, curve, bn
        self.names, self.shapes = parameter_layout(ck.model)
        self.batch_size = check_scalar(batch_size, "batch_size", int, min=1, allow_none=True)
        self.data = {s: ck.prepare(d) for s, d in data.items()}
        self.objective = Objective(ck.model, ck.criterion, metrics=True)
        self.buffers = buffers
        self.estimator = (StatisticsEstimator(ck.model, data["train"], n=bn_subset, seed=seed,
                                              batch_size=bn_batch_size, transform=ck.normalize, device=ck.device)
                          if bn == "recompute" else None)

    @property
    def fields(self) -> dict[str, tuple]:
        """The values per point: ``<split>_loss`` and ``<split>_accuracy``."""
        return {f"{s}_{f}": () for s in self.data for f in ("loss", "accuracy")}

    def state(self, t: float) -> dict[str, torch.Tensor]:
        """Parameters at ``t`` and the running statistics the evaluation uses there (``functional_call`` keys)."""
        coef = coefficients(self.curve, len(self.nodes), [t])[0]
        state = unflatten(combine(coef, self.nodes), self.names, self.shapes)
        if self.estimator is not None:
            state.update(self.estimator(state))
        elif self.bn == "interpolate":
            a, b = self.buffers
            state.update({k: combine([1 - t, t], torch.stack([a[k], b[k]])) for k in a})
        return state

    def values(self, t: float) -> dict[str, float]:
        """Loss and accuracy on every split at ``t`` (eval mode, no gradients)."""
        from .objective import batches_of, mean_over_batches

        state = {f"model.{k}": v for k, v in self.state(t).items()}
        out = {}
        for split, (x, y) in self.data.items():
            out[f"{split}_loss"], out[f"{split}_accuracy"] = mean_over_batches(
                self.objective, batches_of(x, y, self.batch_size), state)
        return out

    def __call__(self, idx: np.ndarray, coords: np.ndarray) -> dict[str, np.ndarray]:
        """The grid engine's ``evaluate``: one row of ``coords`` is one ``t``."""
        was_training = self.ck.model.training
        self.ck.model.eval()
        try:
            rows = [self.values(float(c[0])) for c in coords]
        finally:
            self.ck.model.train(was_training)
        return {k: np.array([r[k] for r in rows]) for k in self.fields}


def _fingerprint(a: Checkpoint, b: Checkpoint, data: Mapping[str, Dataset], kind: str, **extra) -> dict:
    from .threads import current_threads

    return {"kind": kind, "a": a.digest, "b": b.digest, "device": a.device.type,
            "threads": current_threads() if a.device.type == "cpu" else None,
            "data": {s: [d.name, len(d), grid.array_digest(d.y)] for s, d in data.items()}, **extra}


def _meta(a: Checkpoint, b: Checkpoint, data: Mapping[str, Dataset], seed: int, **extra) -> dict:
    from .threads import current_threads

    return {"checkpoint": a.name, "digest": a.digest, "path": str(a.path) if a.path else None,
            "checkpoint_b": b.name, "digest_b": b.digest, "path_b": str(b.path) if b.path else None,
            "arch": a.meta.get("arch"), "loss": a.meta.get("loss"), "loss_b": b.meta.get("loss"),
            "data": data["train"].name, "n_samples": len(data["train"]),
            **({"test_data": data["test"].name, "n_test": len(data["test"])} if "test" in data else {}),
            "seed": seed, "threads": current_threads(), **extra}


def _bn_meta(ev: PathEvaluator) -> dict:
    if ev.estimator is None:
        return {"bn": ev.bn}
    est = ev.estimator
    return {"bn": ev.bn, "bn_data": est.data.name, "bn_subset": est.n, "bn_batch_size": est.batch_size}


def _evaluate_path(ev: PathEvaluator, ts: np.ndarray, *, out, resume, overwrite, verbose, desc: str,
                   fingerprint: dict) -> tuple[dict, dict]:
    """Run ``ev`` over ``ts`` through the resumable grid engine; ``({split: loss}, {split: accuracy})``."""
    values = grid.run_grid(ts[:, None], ev, ev.fields, out=out, fingerprint=fingerprint, resume=resume,
                           chunk_size=8, progress=verbose, desc=desc, overwrite=overwrite)
    splits = list(ev.data)
    return {s: values[f"{s}_loss"] for s in splits}, {s: values[f"{s}_accuracy"] for s in splits}


# -- public: barrier -------------------------------------------------------------------------------
def barrier(ck_a, ck_b, data="digits", n: int = DEFAULT_POINTS, bn: str = "recompute", *, test=None,
            subset: int | None = None, seed: int = 0, criterion="train", batch_size: int | None = None,
            bn_subset: int | None = DEFAULT_BN_SUBSET, bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
            out: str | os.PathLike | None = None, resume: bool = False, overwrite: bool | None = None,
            verbose: bool | None = None) -> Barrier:
    """Loss and accuracy on the straight line from ``ck_a`` (``t = 0``) to ``ck_b`` (``t = 1``), and its barriers.

    Parameters
    ----------
    ck_a, ck_b : Checkpoint, path or nn.Module
        Two checkpoints of one architecture. A's training objective is the loss (``criterion``).
    data : str or Dataset
        The training data: a spec string loads its train split (and its test split, see ``test``);
        a Dataset is used as the training data. Running statistics are re-estimated on it.
    n : int
        Points on ``[0, 1]``, endpoints included (61, as Garipov et al.).
    bn : {"recompute", "interpolate"}
        Batchnorm running statistics at each point: re-estimated on the training data at that
        point's weights, or the endpoints' statistics interpolated with the weights (see the
        module docstring). Ignored for a net without batchnorm.
    test : str, Dataset or False, optional
        Test data (default: the test split when ``data`` is a spec string; ``False``: none).
    subset : int, optional
        Seeded, stratified subsets of this many samples of each split.
    seed : int
        Seed of the subsets and of the statistics' subset.
    criterion : "train", str or nn.Module
        The loss evaluated (default: A's own training objective).
    batch_size : int, optional
        Evaluate in batches (default: each split in one batch).
    bn_subset, bn_batch_size : int
        Samples per re-estimate (None: all) and its batch size (see :mod:`landscape.batchnorm`).
    out : path, optional
        Save the result there; progress is flushed beside it and ``resume=True`` continues a killed run.
    resume, overwrite : bool
        As in :func:`landscape.grid.run_grid`.
    verbose : bool or None
        Progress with ETA (False: silent).

    Returns
    -------
    Barrier
    """
    n = check_scalar(n, "n", int, min=2)
    a, b = _pair(ck_a, ck_b, criterion)
    datasets = _datasets(data, test, subset, seed)
    mode = _bn_mode(a.model, bn)
    nodes = torch.stack([flat_parameters(a.model), flat_parameters(b.model).to(a.device)])
    buffers = (dict(_float_buffers(a.model)), {k: v.to(a.device) for k, v in _float_buffers(b.model)})
    ev = PathEvaluator(a, nodes, "polychain", datasets, mode, buffers, bn_subset=bn_subset,
                       bn_batch_size=bn_batch_size, seed=seed, batch_size=batch_size)
    ts = np.linspace(0.0, 1.0, n)
    out = grid.result_path(out)
    fp = _fingerprint(a, b, datasets, "barrier", n=n, criterion=_criterion_name(a), batch_size=batch_size,
                      **_bn_meta(ev))
    loss, acc = _evaluate_path(ev, ts, out=out, resume=resume, overwrite=overwrite, verbose=verbose,
                               desc="barrier", fingerprint=fp)
    result = Barrier(ts, loss, acc, path_barriers(ts, loss, acc),
                     _meta(a, b, datasets, seed, criterion=_criterion_name(a), n=n, **_bn_meta(ev)))
    grid.save_result(result, out)
    return result


# -- public: connect -------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainOptions:
    """How the bends are trained (defaults: checkpoint A's recipe in ``meta["train"]``, else Garipov et al.'s)."""

    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    seed: int

    @classmethod
    def of(cls, ck: Checkpoint, epochs, lr, momentum, weight_decay, batch_size, seed) -> "TrainOptions":
        """The options given, the missing ones from ``ck``'s recipe or the defaults, checked."""
        recipe = ck.meta.get("train") if isinstance(ck.meta.get("train"), dict) else {}

        def pick(value, key, default):
            return value if value is not None else recipe.get(key, default)

        return cls(epochs=check_scalar(epochs, "epochs", int, min=1),
                   lr=check_scalar(pick(lr, "lr", 0.015), "lr", float, min=0, include_min=False),
                   momentum=check_scalar(momentum, "momentum", float, min=0, max=1, include_max=False),
                   weight_decay=check_scalar(pick(weight_decay, "weight_decay", 5e-4), "weight_decay", float, min=0),
                   batch_size=check_scalar(pick(batch_size, "batch_size", 128), "batch_size", int, min=2),
                   seed=check_scalar(seed, "seed", int, min=0))

    def lr_at(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (from 0) under Garipov et al.'s ``learning_rate_schedule``.

        Constant for the first half of the epochs, then linear down to 1% of ``lr`` at 90%, then 1%.
        """
        alpha = epoch / self.epochs
        factor = 1.0 if alpha <= 0.5 else (1.0 - (alpha - 0.5) / 0.4 * 0.99 if alpha <= 0.9 else 0.01)
        return self.lr * factor


def _epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's data order, curve positions and dropout: a resumed run redraws them exactly."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class _TrainingState:
    """The training state of a curve, written atomically after every epoch as one safetensors file.

    The tensors (bends, momentum buffer) are safetensors; the JSON header holds the epoch, the
    log and the fingerprint of the run. Nothing is pickled.
    """

    KEY = "landscape_connect"

    def __init__(self, path: Path | None, fingerprint: dict):
        self.path, self.fingerprint = path, json.loads(json.dumps(fingerprint, sort_keys=True, default=str))

    def write(self, bends: torch.Tensor, momentum: torch.Tensor | None, epoch: int, log: dict) -> None:
        if self.path is None or grid.dist_info()[0] != 0:
            return
        from safetensors.torch import save_file

        from .io import atomic_path

        tensors = {"bends": bends.detach().cpu().contiguous().clone()}
        if momentum is not None:
            tensors["momentum"] = momentum.detach().cpu().contiguous().clone()
        header = json.dumps({"epoch": epoch, "log": log, "fingerprint": self.fingerprint})
        with atomic_path(self.path) as tmp:
            save_file(tensors, str(tmp), metadata={self.KEY: header})

    def read(self) -> tuple[dict[str, torch.Tensor], int, dict] | None:
        if self.path is None or not self.path.exists():
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(str(self.path), framework="pt") as fh:
                header = json.loads((fh.metadata() or {})[self.KEY])
            tensors = load_file(str(self.path))
        except (OSError, ValueError, KeyError, SafetensorError) as exc:
            raise ResumeError(f"training state {self.path} is corrupt or truncated ({exc}); pass --overwrite "
                              "(overwrite=True) to start over, or delete the file.") from exc
        if header.get("fingerprint") != self.fingerprint:
            theirs, ours = header.get("fingerprint") or {}, self.fingerprint
            diff = ", ".join(f"{k} {theirs.get(k)!r} there, {ours.get(k)!r} here"
                             for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k))
            raise ResumeError(f"{self.path} belongs to a different run ({diff or 'other inputs'}); pass --overwrite "
                              "(overwrite=True) to start over, or choose another output path.")
        return tensors, int(header["epoch"]), header["log"]


def _check_state(state: _TrainingState, out: Path | None, resume: bool, overwrite: bool) -> None:
    """Refuse an earlier run's training state unless it is resumed or overwritten (as run_grid does for progress)."""
    grid.check_output(out, resume=resume, overwrite=overwrite)
    if state.path is None or not state.path.exists():
        return
    if overwrite:
        state.path.unlink()
    elif not resume:
        raise ResumeError(f"{state.path} holds the training state of an earlier run; pass --resume (resume=True) "
                          "to continue it, or --overwrite (overwrite=True) to start over.")


def _init_bends(a: torch.Tensor, b: torch.Tensor, bends: int) -> torch.Tensor:
    """Bends on the straight line at ``k / (bends + 1)`` (Garipov et al.'s ``init_linear``)."""
    alphas = torch.arange(1, bends + 1, dtype=torch.float64) / (bends + 1)
    return torch.stack([torch.lerp(a, b, float(al)) for al in alphas])


def _train(a: Checkpoint, nodes_ab: torch.Tensor, bends: torch.Tensor, curve: str, x: torch.Tensor, y: torch.Tensor,
           opts: TrainOptions, state: _TrainingState, start: tuple | None, verbose) -> tuple[torch.Tensor, dict]:
    """Train the bends; return them and the log. ``start``: (tensors, epoch, log) of a resumed run."""
    import copy

    from torch.func import functional_call

    from .objective import Objective
    from .progress import bar

    names, shapes = parameter_layout(a.model)
    model = copy.deepcopy(a.model).train()  # a private copy: batch statistics and dropout as in training
    objective = Objective(model, a.criterion, metrics=True)
    bends = nn.Parameter(bends.clone())
    optimizer = torch.optim.SGD([bends], lr=opts.lr, momentum=opts.momentum)
    log = {k: [] for k in ("epoch", "loss", "objective", "accuracy", "lr", "seconds")}
    first = 0
    if start is not None:
        tensors, first, log = start
        with torch.no_grad():
            bends.copy_(tensors["bends"].to(bends))
        if "momentum" in tensors:
            optimizer.state[bends]["momentum_buffer"] = tensors["momentum"].to(bends).clone()
    n_nodes = bends.shape[0] + 2
    n = len(y)
    with bar(opts.epochs, "connect", verbose, unit="epoch", initial=first) as progress:
        for epoch in range(first, opts.epochs):
            t0 = time.perf_counter()
            lr = opts.lr_at(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            gen = torch.Generator().manual_seed(_epoch_seed(opts.seed, epoch))
            order = torch.randperm(n, generator=gen)
            positions = torch.rand(math.ceil(n / opts.batch_size), generator=gen, dtype=torch.float64)
            sums = np.zeros(4)  # objective + l2, objective, correct, samples
            with torch.random.fork_rng(devices=[a.device] if a.device.type == "cuda" else []):
                torch.manual_seed(_epoch_seed(opts.seed, epoch))  # dropout masks, also on CUDA
                for k, i in enumerate(range(0, n, opts.batch_size)):
                    idx = order[i:i + opts.batch_size].to(x.device)
                    if len(idx) < 2:  # batchnorm needs two samples, as in training
                        continue
                    coef = torch.as_tensor(coefficients(curve, n_nodes, [float(positions[k])])[0], dtype=bends.dtype,
                                           device=bends.device)
                    flat = coef[0] * nodes_ab[0] + coef[-1] * nodes_ab[1] + coef[1:-1] @ bends
                    loss, correct = functional_call(objective, unflatten(flat, [f"model.{m}" for m in names], shapes),
                                                    (x[idx], y[idx]), strict=False)
                    total = loss + 0.5 * opts.weight_decay * flat.pow(2).sum()  # Garipov et al.'s l2 at the point
                    optimizer.zero_grad(set_to_none=True)
                    total.backward()
                    optimizer.step()
                    sums += np.array([float(total.detach()) * len(idx), float(loss.detach()) * len(idx),
                                      float(correct), len(idx)])
            seen = max(sums[3], 1.0)
            for key, value in zip(("epoch", "loss", "objective", "accuracy", "lr", "seconds"),
                                  (epoch + 1, sums[0] / seen, sums[1] / seen, sums[2] / seen, lr,
                                   time.perf_counter() - t0)):
                log[key].append(float(value))
            state.write(bends, optimizer.state[bends].get("momentum_buffer"), epoch + 1, log)
            progress.update(1)
    return bends.detach(), log


def connect(ck_a, ck_b, data="digits", curve: str = "bezier", bends: int = 1, epochs: int = 20, seed: int = 0, *,
            test=None, subset: int | None = None, criterion="train", lr: float | None = None, momentum: float = 0.9,
            weight_decay: float | None = None, batch_size: int | None = None, n: int = DEFAULT_POINTS,
            bn: str = "recompute", bn_subset: int | None = DEFAULT_BN_SUBSET,
            bn_batch_size: int = DEFAULT_BN_BATCH_SIZE, eval_batch_size: int | None = None,
            out: str | os.PathLike | None = None, resume: bool = False, overwrite: bool | None = None,
            verbose: bool | None = None) -> LowLossCurve:
    """Train a low-loss curve from ``ck_a`` to ``ck_b`` (Garipov et al. 2018) and evaluate it at ``n`` points.

    The endpoints stay fixed; the bends start on the straight line and are trained by SGD with
    momentum: at every step one ``t ~ U(0, 1)`` is drawn and the training objective of A (its own
    criterion, margins included) is minimised at ``phi(t)`` on a batch, in train mode (batch
    statistics and dropout as in training), plus Garipov et al.'s ``weight_decay / 2 * ||phi(t)||^2``.
    The learning rate follows their schedule (:meth:`TrainOptions.lr_at`).

    Parameters
    ----------
    ck_a, ck_b : Checkpoint, path or nn.Module
        The endpoints (one architecture).
    data : str or Dataset
        The training data (a spec string: its train split, and its test split for evaluation).
    curve : {"bezier", "polychain"}
    bends : int
        Number of trainable bends (1 or 3 in Garipov et al.; any number from 1 works).
    epochs : int
        Passes over the training data.
    seed : int
        Seed of the data order, the sampled ``t``, dropout and the statistics' subset.
    test : str, Dataset or False, optional
        As in :func:`barrier`.
    subset : int, optional
        Train and evaluate on seeded, stratified subsets of this many samples.
    criterion : "train", str or nn.Module
        The objective (default: A's own).
    lr, weight_decay, batch_size : optional
        Default: A's recipe (``meta["train"]``), else Garipov et al.'s 0.015, 5e-4 and 128.
    momentum : float
    n : int
        Evaluation points on ``[0, 1]`` (61, as Garipov et al.).
    bn : {"recompute", "interpolate"}
        Statistics at the evaluation points (see the module docstring); recomputed by default, as
        in the reference code.
    bn_subset, bn_batch_size, eval_batch_size
        Options of the re-estimate and of the evaluation batches.
    out : path, optional
        Save the result there. The training state is written beside it after every epoch
        (``<out>.train.safetensors``), so a killed run loses at most one epoch: ``resume=True``
        continues it, and then the evaluation (flushed in chunks like a line).
    resume, overwrite : bool
        Continue an interrupted run; replace a finished one (see :func:`landscape.grid.check_output`).
    verbose : bool or None
        Progress with ETA (False: silent).

    Returns
    -------
    LowLossCurve
    """
    curve = check_choice(curve, "curve", CURVES)
    bends = check_scalar(bends, "bends", int, min=1)
    n = check_scalar(n, "n", int, min=2)
    overwrite = grid._OVERWRITE.get() if overwrite is None else bool(overwrite)
    a, b = _pair(ck_a, ck_b, criterion)
    datasets = _datasets(data, test, subset, seed)
    mode = _bn_mode(a.model, bn)
    opts = TrainOptions.of(a, epochs, lr, momentum, weight_decay, batch_size, seed)
    out = grid.result_path(out)
    state = _TrainingState(Path(f"{out}.train.safetensors") if out is not None else None,
                           _fingerprint(a, b, datasets, "connect", curve=curve, bends=bends,
                                        criterion=_criterion_name(a), **dataclasses.asdict(opts)))
    _check_state(state, out, resume, overwrite)
    start = state.read() if resume else None

    flat_a, flat_b = flat_parameters(a.model), flat_parameters(b.model).to(a.device)
    nodes_ab = torch.stack([flat_a, flat_b])
    x, y = a.prepare(datasets["train"])
    if start is not None and start[1] >= opts.epochs:
        trained, log = start[0]["bends"].to(flat_a), start[2]
    else:
        trained, log = _train(a, nodes_ab, _init_bends(flat_a, flat_b, bends), curve, x, y, opts, state, start,
                              verbose)
    del x, y
    nodes = torch.cat([flat_a[None], trained, flat_b[None]])
    buffers = (dict(_float_buffers(a.model)), {k: v.to(a.device) for k, v in _float_buffers(b.model)})
    ev = PathEvaluator(a, nodes, curve, datasets, mode, buffers, bn_subset=bn_subset, bn_batch_size=bn_batch_size,
                       seed=seed, batch_size=eval_batch_size)
    ts = np.linspace(0.0, 1.0, n)
    fp = dict(state.fingerprint, kind="connect-eval", n=n, bends_digest=grid.array_digest(trained.cpu().numpy()),
              batch_size=eval_batch_size, **_bn_meta(ev))
    loss, acc = _evaluate_path(ev, ts, out=out, resume=resume or start is not None, overwrite=overwrite,
                               verbose=verbose, desc="connect: evaluate", fingerprint=fp)
    names, shapes = parameter_layout(a.model)
    result = LowLossCurve(ts, loss, acc, path_barriers(ts, loss, acc), nodes.cpu().numpy(), names, shapes,
                          {k: np.asarray(v, dtype=np.float64) for k, v in log.items()},
                          _meta(a, b, datasets, seed, criterion=_criterion_name(a), curve=curve, bends=bends, n=n,
                                **{k: v for k, v in dataclasses.asdict(opts).items() if k != "seed"}, **_bn_meta(ev)))
    grid.save_result(result, out)
    if state.path is not None and grid.dist_info()[0] == 0:
        state.path.unlink(missing_ok=True)
    return result


# -- public: the plane through the endpoints and the middle bend ----------------------------------
def _node_model(like: nn.Module, curve: LowLossCurve, k: int) -> nn.Module:
    """A CPU copy of ``like`` with the parameters of node ``k`` of ``curve``."""
    import copy

    model = copy.deepcopy(like).cpu()
    flat = torch.from_numpy(np.ascontiguousarray(curve.nodes[k]))
    model.load_state_dict(unflatten(flat, curve.names, curve.shapes), strict=False)
    return model


def plane_directions(ck_a, curve: LowLossCurve):
    """Orthonormal directions of the plane through A, B and the middle bend (Garipov et al.'s ``plane.py``).

    ``u = (B - A) / |B - A|``; ``v`` is the middle bend minus A with its ``u`` part removed, normalised.
    Built with :func:`landscape.directions.directions_between` (which checks the architecture),
    then orthonormalised, so that distances on the figure are distances in weight space.

    Returns
    -------
    (Directions, np.ndarray)
        The directions, and the coordinates ``(K, 2)`` of the curve's nodes on them (A at the origin).
    """
    from .directions import Directions, directions_between

    a = as_checkpoint(ck_a)
    if parameter_layout(a.model) != (curve.names, [list(s) for s in curve.shapes]):
        raise ArgumentError(f"this curve was trained for another architecture than {a.name!r}.")
    last = len(curve.nodes) - 1
    between = directions_between(a.model, _node_model(a.model, curve, last), _node_model(a.model, curve, last // 2))
    u, v = between.vectors.astype(np.float64)
    du = np.linalg.norm(u)
    if du == 0:
        raise ArgumentError("the two endpoints are the same weights; there is no plane through them.")
    u = u / du
    v = v - (u @ v) * u
    if np.linalg.norm(v) <= 1e-9 * du:
        raise ArgumentError("the middle bend lies on the line between the endpoints (an untrained curve); train the "
                            "curve for some epochs first.")
    v = v / np.linalg.norm(v)
    dirs = Directions(np.stack([u, v]), between.names, between.shapes,
                      meta={**between.meta, "basis": "orthonormal", "norm": "unit"})
    return dirs, _project(curve.nodes, curve.nodes[0], dirs)[0]


def _project(points: np.ndarray, origin: np.ndarray, dirs) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of ``points - origin`` on orthonormal ``dirs`` (parameter part) and the distance to the plane."""
    basis = dirs.vectors.astype(np.float64)[:, :points.shape[1]]
    diff = points.astype(np.float64) - origin.astype(np.float64)
    xy = diff @ basis.T
    return xy, np.linalg.norm(diff - xy @ basis, axis=1)


def curve_plane(ck_a, curve: LowLossCurve, data="digits", grid: int = 21, margin: float = 0.2, *,
                subset: int | None = None, seed: int = 0, criterion="train",
                bn_subset: int | None = DEFAULT_BN_SUBSET, bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
                out: str | os.PathLike | None = None, resume: bool = False, verbose: bool | None = None):
    """The training loss over the plane through A, B and the middle bend, with the curve on it (Garipov et al. Fig. 1).

    Computed by :func:`landscape.surface.surface` along :func:`plane_directions` (coordinates are
    distances in weight space, A at the origin, B on the first axis), batchnorm statistics
    re-estimated at every grid point for nets with batchnorm.

    Parameters
    ----------
    ck_a : Checkpoint or path
        The curve's first endpoint.
    curve : LowLossCurve
    data : str or Dataset
        Training data (a spec string loads its train split).
    grid : int
        Points per axis.
    margin : float
        Margin around the nodes and the curve, as a fraction of their extent on each axis.
    subset, seed, criterion, bn_subset, bn_batch_size, out, resume, verbose
        As in :func:`landscape.surface.surface`.

    Returns
    -------
    Surface
        With ``meta["curve"]``: the curve's ``t``, its projection ``xy`` (``(n, 2)``), each point's
        ``distance`` to the plane (0 for one bend, where the curve lies in the plane), the nodes'
        coordinates ``nodes_xy`` and the curve's kind.
    """
    from .surface import surface

    grid = check_scalar(grid, "grid", int, min=2)
    margin = check_scalar(margin, "margin", float, min=0)
    a = as_checkpoint(ck_a, criterion=None if criterion in (None, "train") else criterion)
    dirs, nodes_xy = plane_directions(a, curve)
    ts = np.asarray(curve.t, dtype=np.float64)
    points = curve.coefficients(ts) @ curve.nodes.astype(np.float64)
    xy, distance = _project(points, curve.nodes[0], dirs)
    both = np.concatenate([xy, nodes_xy])
    lo, hi = both.min(axis=0), both.max(axis=0)
    pad = margin * (hi - lo)
    train = as_dataset(data, subset, seed, split="train")
    bn = "recompute" if statistics_names(a.model) else "eval"
    out = _grid.result_path(out)
    if resume and _grid.finished(out):  # the surface of an interrupted run is done; its curve is attached again
        surf = Result.load(out)
    else:
        surf = surface(a, train, dirs, x=(float(lo[0] - pad[0]), float(hi[0] + pad[0]), grid),
                       y=(float(lo[1] - pad[1]), float(hi[1] + pad[1]), grid), seed=seed, bn=bn, bn_data=train,
                       bn_subset=bn_subset, bn_batch_size=bn_batch_size, out=out, resume=resume, verbose=verbose)
    surf.meta["curve"] = {"t": ts.tolist(), "xy": xy.tolist(), "distance": distance.tolist(),
                          "nodes_xy": nodes_xy.tolist(), "curve": curve.curve, "bends": len(curve.nodes) - 2,
                          "checkpoint_b": curve.meta.get("checkpoint_b"), "digest_b": curve.meta.get("digest_b")}
    if out is not None and _grid.dist_info()[0] == 0:
        surf.save(out)
    return surf
