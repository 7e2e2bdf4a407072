"""Directions in weight space: random filter-normalised ones, lines/planes through checkpoints, PCA of a trajectory.

A loss surface is ``f(a, b) = L(theta* + a d1 + b d2)``. This module builds the ``d_i``:

* :func:`random_directions`: Gaussian directions, seeded, rescaled filter by filter to the
  norm of the weights (Li et al. 2018, "Visualizing the loss landscape of neural nets"),
  with biases and batchnorm parameters zeroed by default;
* :func:`directions_between`: the line or plane through two or three checkpoints;
* :func:`trajectory_directions`: the top principal directions of a training trajectory,
  with the trajectory projected onto them.

By default (``dir_type="weights"``) directions cover ``model.named_parameters()`` only, so
batchnorm running statistics (buffers) are never moved. ``dir_type="states"`` (Li et al.'s
``dir_type=states``) covers the model's floating-point state as well: the parameters, then the
floating-point buffers (running means and variances) in ``named_buffers()`` order, so that a line
between two checkpoints interpolates their running statistics too and ends exactly at the
second checkpoint. A :class:`Directions` is a :class:`~landscape.results.Result`, so it is
saved with (and reloaded from) every surface computed along it.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .errors import ArgumentError, check_choice
from .results import Result

NORMS = ("filter", "layer", "weight", "none")
IGNORES = ("biasbn", "none")
DIR_TYPES = ("weights", "states")
_EPS = 1e-10  # as in Li et al.'s code: keeps an all-zero filter of the weights from dividing by zero


@dataclasses.dataclass(repr=False)
class Directions(Result):
    """``n`` directions in the parameter space of one architecture.

    Attributes
    ----------
    vectors : np.ndarray
        ``(n, P)`` float32: each direction flattened and concatenated over
        ``model.named_parameters()`` order (all parameters; ignored ones are zero), followed
        for ``dir_type="states"`` by the floating-point buffers in ``named_buffers()`` order.
    names : list of str
        Parameter (and buffer) names in that order.
    shapes : list of list of int
        Their shapes in that order.
    meta : dict
        ``kind`` ("random", "between", "pca"), ``seed``, ``norm``, ``ignore``, ``dir_type``
        ("weights" when absent) and kind-specific entries.
    coords : np.ndarray
        Keyword-only: ``(T, n)`` coordinates of the trajectory on these directions (PCA
        directions only; empty otherwise).
    """

    vectors: np.ndarray
    names: list
    shapes: list
    meta: dict = dataclasses.field(default_factory=dict)
    # keyword-only, so that Directions(vectors, names, shapes, meta) keeps the contract's order
    coords: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.float32), kw_only=True)

    def __post_init__(self):
        self.vectors = np.atleast_2d(np.asarray(self.vectors, dtype=np.float32))
        self.shapes = [list(map(int, s)) for s in self.shapes]
        sizes = sum(int(np.prod(s)) for s in self.shapes)
        if self.vectors.shape[1] != sizes or len(self.names) != len(self.shapes):
            raise ArgumentError(f"directions hold {self.vectors.shape[1]} numbers per vector but the {len(self.names)} "
                                f"parameter shapes add up to {sizes}; the file is inconsistent.")

    @property
    def n(self) -> int:
        """Number of directions."""
        return int(self.vectors.shape[0])

    @property
    def dir_type(self) -> str:
        """``"weights"`` (parameters only) or ``"states"`` (parameters and floating-point buffers)."""
        return str(self.meta.get("dir_type") or "weights")

    def tensors(self, i: int, device: str | torch.device | None = None,
                dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Direction ``i`` as ``{parameter name: tensor of the parameter's shape}``.

        Parameters
        ----------
        i : int
            Which direction.
        device, dtype : optional
            Where and in which precision (default CPU, float32).
        """
        if not 0 <= i < self.n:
            raise ArgumentError(f"direction index {i} is out of range; there are {self.n} directions.")
        flat = torch.from_numpy(self.vectors[i])
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes):
            size = int(np.prod(shape))
            out[name] = flat[start:start + size].reshape(shape).to(device=device, dtype=dtype or torch.float32)
            start += size
        return out

    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`ArgumentError` unless the model has these parameters (and buffers, for states)."""
        names, shapes = _layout(model, self.dir_type)
        have = list(zip(names, shapes))
        if have != list(zip(self.names, self.shapes)):
            mismatch = next(((a, b) for a, b in zip(have, zip(self.names, self.shapes)) if a != tuple(b)), None)
            raise ArgumentError(
                "these directions were made for another architecture "
                f"({len(self.names)} parameters vs the model's {len(have)}"
                f"{f'; first difference: model {mismatch[0]} vs directions {mismatch[1]}' if mismatch else ''}); "
                "build directions from this model.")


# -- helpers ---------------------------------------------------------------------------------
def _as_model(obj, like: nn.Module | None = None) -> nn.Module:
    """A model from an ``nn.Module``, a ``Checkpoint`` or a checkpoint path.

    A path whose file carries no meta (a bare state_dict snapshot) is loaded into a copy of
    ``like``, the architecture of the other checkpoints it is compared with.
    """
    if isinstance(obj, nn.Module):
        return obj
    if hasattr(obj, "model") and isinstance(obj.model, nn.Module):
        return obj.model
    if isinstance(obj, (str, os.PathLike)):
        from .checkpoint import load_checkpoint, read_checkpoint_file

        state, meta, _ = read_checkpoint_file(obj)
        if not meta.get("arch") and like is not None:
            model = copy.deepcopy(like).cpu()
            params = {k: v for k, v in state.items() if k in dict(model.state_dict())}
            model.load_state_dict(params, strict=False)
            return model
        return load_checkpoint(obj, device="cpu").model
    raise ArgumentError(f"expected a model, a Checkpoint or a checkpoint path, got {type(obj).__name__}.")


def _name(obj) -> str:
    return str(getattr(obj, "name", None)
               or (os.fspath(obj) if isinstance(obj, (str, os.PathLike)) else type(obj).__name__))


def state_tensors(model: nn.Module, dir_type: str = "weights") -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` that directions of ``dir_type`` cover, in their layout order.

    The parameters, then for ``"states"`` the floating-point buffers (batchnorm running
    statistics; not the integer ``num_batches_tracked``).
    """
    named = [(n, p.detach()) for n, p in model.named_parameters()]
    if dir_type == "states":
        named += [(n, b.detach()) for n, b in model.named_buffers() if b.is_floating_point()]
    return named


def flat_parameters(model: nn.Module, dir_type: str = "weights") -> np.ndarray:
    """All parameters (and for ``"states"`` floating-point buffers) of ``model`` flattened, float64 on the CPU."""
    return np.concatenate([t.cpu().double().reshape(-1).numpy() for _, t in state_tensors(model, dir_type)])


def _layout(model: nn.Module, dir_type: str = "weights") -> tuple[list[str], list[list[int]]]:
    named = state_tensors(model, dir_type)
    return [n for n, _ in named], [list(t.shape) for _, t in named]


def normalize_direction(d: torch.Tensor, w: torch.Tensor, norm: str) -> torch.Tensor:
    """Rescale one parameter's direction ``d`` against its weights ``w`` (returns a new tensor).

    ``filter``: every output filter/neuron ``d[k]`` gets the norm of ``w[k]``; ``layer``: the
    whole tensor gets the norm of ``w``; ``weight``: ``d * w`` entrywise; ``none``: unchanged.
    A one-dimensional tensor counts as a single filter.
    """
    if norm == "none":
        return d.clone()
    if norm == "weight":
        return d * w
    if norm == "layer" or d.dim() <= 1:
        return d * (w.norm() / (d.norm() + _EPS))
    dims = tuple(range(1, d.dim()))
    wn = torch.linalg.vector_norm(w, dim=dims, keepdim=True)
    dn = torch.linalg.vector_norm(d, dim=dims, keepdim=True)
    return d * (wn / (dn + _EPS))


def _dir_type_meta(dir_type: str) -> dict:
    """``{"dir_type": "states"}`` for states directions; weights directions keep their meta as it always was."""
    return {"dir_type": dir_type} if dir_type != "weights" else {}


def _check_choice(value, choices: Sequence[str], what: str) -> str:
    """:func:`landscape.errors.check_choice`, with None spelled ``"none"`` (``ignore=None``)."""
    return check_choice("none" if value is None else str(value), what, choices)


# -- random directions -----------------------------------------------------------------------
def _draw(tensors: list[tuple[str, torch.Tensor]], gen: torch.Generator, norm: str, ignore: str,
          one_d: str, out: np.ndarray) -> None:
    """One seeded Gaussian direction over ``tensors``, normalised tensor by tensor, written into ``out``.

    The draw and the normalisation are float64 on the CPU (device-independent); each tensor's
    part is rounded to float32 straight into its slice of ``out`` (the float32 row of
    :attr:`Directions.vectors`), so no float64 copy of the whole direction is ever made: on a
    WRN-28-10 (36.5M parameters) that took half of the time, and the values are the same bits.
    """
    flat = torch.from_numpy(out)
    start = 0
    for _, t in tensors:
        w = t.detach().to("cpu", torch.float64)
        d = torch.randn(w.shape, generator=gen, dtype=torch.float64)  # drawn always: later tensors keep their draws
        size = d.numel()
        if w.dim() <= 1 and ignore == "biasbn":
            flat[start:start + size].zero_()
        else:
            d = w if (w.dim() <= 1 and one_d == "li") else normalize_direction(d, w, norm)
            flat[start:start + size].copy_(d.reshape(-1))
        start += size


def random_directions(model, n: int = 2, seed: int = 0, norm: str = "filter",
                      ignore: str | None = "biasbn", one_d: str = "random", dir_type: str = "weights") -> Directions:
    """Seeded Gaussian directions, normalised against the model's weights.

    Parameters
    ----------
    model : nn.Module, Checkpoint or path
        The centre ``theta*``.
    n : int
        Number of directions (1 for a line, 2 for a plane).
    seed : int
        Seed of the Gaussian draw (same seed, same directions, on any device).
    norm : {"filter", "layer", "weight", "none"}
        How each parameter's direction is rescaled (see :func:`normalize_direction`).
    ignore : {"biasbn", None}
        ``"biasbn"`` zeroes the directions of one-dimensional parameters (biases, batchnorm
        weights and shifts), as Li et al. do; ``None`` keeps them (see ``one_d``).
    one_d : {"random", "li"}
        With ``ignore=None``, a one-dimensional parameter's direction is its normalised random
        draw (``"random"``) or, as in Li et al.'s code (``net_plotter.normalize_directions_for_weights``),
        a copy of the parameter itself (``"li"``). The random draw is made either way, so the other
        parameters' directions do not depend on this choice.
    dir_type : {"weights", "states"}
        ``"states"`` also covers the floating-point buffers (drawn after the parameters, so the
        parameter part equals the ``"weights"`` direction of the same seed; batchnorm running
        statistics are one-dimensional, so ``"biasbn"`` zeroes them as Li et al. do).

    Returns
    -------
    Directions
    """
    norm = _check_choice(norm, NORMS, "norm")
    ignore = _check_choice(ignore, IGNORES, "ignore")
    one_d = _check_choice(one_d, ("random", "li"), "one_d")
    dir_type = check_choice(dir_type, "dir_type", DIR_TYPES)
    if int(n) < 1:
        raise ArgumentError(f"n={n}: ask for at least one direction.")
    model = _as_model(model)
    names, shapes = _layout(model, dir_type)
    # The draw happens on the CPU in float64 so that the directions do not depend on the device.
    gen = torch.Generator().manual_seed(int(seed))
    params = state_tensors(model, "weights")
    buffers = state_tensors(model, dir_type)[len(params):]
    # every direction's parameters first, then (states) every direction's buffers: the parameter part of a
    # states direction is then the weights direction of the same seed
    n_params = sum(t.numel() for _, t in params)
    vectors = np.empty((int(n), n_params + sum(t.numel() for _, t in buffers)), np.float32)
    for row in vectors:
        _draw(params, gen, norm, ignore, one_d, row[:n_params])
    for row in vectors if buffers else ():
        _draw(buffers, gen, norm, ignore, one_d, row[n_params:])
    meta = {"kind": "random", "seed": int(seed), "norm": norm, "ignore": ignore, "n": int(n),
            **_dir_type_meta(dir_type)}
    if ignore == "none":  # one_d matters only when one-dimensional parameters move
        meta["one_d"] = one_d
    return Directions(vectors, names, shapes, meta=meta)


# -- through checkpoints ---------------------------------------------------------------------
def directions_between(origin, *others, dir_type: str = "weights") -> Directions:
    """The line (one other) or plane (two others) through checkpoints, centred on ``origin``.

    ``d_i = theta_i - theta_origin`` over every parameter, so the surface point ``(1, 0)`` is
    the first other checkpoint and ``(0, 1)`` the second.

    Parameters
    ----------
    origin : nn.Module, Checkpoint or path
        The centre.
    *others : nn.Module, Checkpoint or path
        One or two checkpoints of the same architecture.
    dir_type : {"weights", "states"}
        ``"weights"``: batchnorm running statistics stay those of ``origin`` (they are buffers,
        not parameters), so ``(1, 0)`` has the other's weights with the origin's statistics.
        ``"states"``: the running statistics are interpolated too, so ``(1, 0)`` *is* the
        other checkpoint (Li et al.'s ``dir_type=states``).
    """
    dir_type = check_choice(dir_type, "dir_type", DIR_TYPES)
    if len(others) not in (1, 2):
        raise ArgumentError("directions_between takes the origin and one or two other checkpoints, "
                            f"got {len(others)} others.")
    base = _as_model(origin)
    names, shapes = _layout(base, dir_type)
    theta0 = flat_parameters(base, dir_type)
    rows = []
    for other in others:
        m = _as_model(other, like=base)
        if _layout(m, dir_type) != (names, shapes):
            raise ArgumentError(f"checkpoint {_name(other)} has another architecture than {_name(origin)}; "
                                "a line or plane needs checkpoints of one architecture.")
        rows.append(flat_parameters(m, dir_type) - theta0)
    return Directions(np.stack(rows), names, shapes,
                      meta={"kind": "between", "origin": _name(origin), "others": [_name(o) for o in others],
                            "norm": "none", "ignore": "none", "seed": None, "n": len(rows),
                            **_dir_type_meta(dir_type)})


def trajectory_directions(checkpoints: Iterable, n: int = 2, ignore: str | None = None) -> Directions:
    """PCA directions of a training trajectory, with the trajectory projected onto them.

    As in Li et al. (Sec. 7): the matrix ``[theta_t - theta_final]`` over the snapshots is
    decomposed by PCA (scikit-learn); its top ``n`` components are the directions (unit
    norm, orthogonal) and ``coords[t]`` are the snapshots' coordinates on them, so the path
    can be drawn over the surface centred on the final checkpoint.

    Parameters
    ----------
    checkpoints : iterable of nn.Module, Checkpoint or path
        The snapshots in training order; the last one is the centre.
    n : int
        Number of principal directions.
    ignore : {None, "biasbn"}
        ``"biasbn"`` leaves one-dimensional parameters out of the PCA (their directions are 0).
    """
    from sklearn.decomposition import PCA

    ignore = _check_choice(ignore, IGNORES, "ignore")
    items = list(checkpoints)
    if len(items) < n + 1:
        raise ArgumentError(f"a PCA of {n} directions needs at least {n + 1} snapshots, got {len(items)}.")
    models = [_as_model(c) for c in items[-1:]]
    models = [_as_model(c, like=models[0]) for c in items[:-1]] + models
    names, shapes = _layout(models[-1])
    if any(_layout(m) != (names, shapes) for m in models):
        raise ArgumentError("the trajectory mixes architectures; give snapshots of one training run.")
    final = flat_parameters(models[-1])
    diffs = np.stack([flat_parameters(m) - final for m in models])
    keep = np.ones(diffs.shape[1], bool)
    if ignore == "biasbn":
        keep = np.concatenate([np.full(int(np.prod(s)), len(s) > 1) for s in shapes])
    pca = PCA(n_components=int(n), svd_solver="full")
    pca.fit(diffs[:, keep])
    vectors = np.zeros((int(n), diffs.shape[1]))
    vectors[:, keep] = pca.components_
    coords = diffs @ vectors.T  # directions are orthonormal: projection = dot product
    return Directions(vectors, names, shapes, coords=coords.astype(np.float32),
                      meta={"kind": "pca", "n": int(n), "norm": "none", "ignore": ignore, "seed": None,
                            "explained_variance_ratio": pca.explained_variance_ratio_.tolist(),
                            "snapshots": [_name(c) for c in items]})


# -- placing a model on the plane ------------------------------------------------------------
def offset_parameters(model: nn.Module, dirs: Directions, coords: Sequence[float]) -> dict[str, torch.Tensor]:
    """``theta* + sum_i coords[i] * d_i`` for every parameter of ``model`` (and buffer, for states directions).

    The tensors have the device and dtype of the model's parameters and are ready for
    ``torch.func.functional_call(model, {**buffers, **params}, x)``; the model itself is not changed.
    For ``dir_type="states"`` directions the floating-point buffers are included, moved too.

    Parameters
    ----------
    model : nn.Module
        The centre ``theta*``.
    dirs : Directions
        Directions made for this architecture.
    coords : sequence of float
        One coordinate per direction.
    """
    coords = [float(c) for c in np.atleast_1d(np.asarray(coords, dtype=np.float64))]
    if len(coords) != dirs.n:
        raise ArgumentError(f"{len(coords)} coordinates given for {dirs.n} directions.")
    dirs.check_model(model)
    out = {}
    for name, p in state_tensors(model, dirs.dir_type):
        out[name] = p.clone()
    for i, c in enumerate(coords):
        if c == 0.0:
            continue
        for name, d in dirs.tensors(i).items():
            out[name].add_(d.to(out[name]), alpha=c)
    return out
