"""Loss surfaces and curves: ``f(a, b) = L(theta* + a d1 + b d2)`` over a grid, ``g(t) = L(theta* + t d)`` on a line.

The loss is the checkpoint's own training objective (margins included), evaluated in eval
mode on a dataset or a seeded subset of it; plain cross-entropy can be added beside it.
Batchnorm running statistics are those stored (``bn="eval"``, Li et al.'s default) or
re-estimated at every point on a seeded subset of the training split (``bn="recompute"``, as
Garipov et al. do along curves; see :mod:`landscape.batchnorm`); ``states`` directions move them
along with the weights. Data too large for the device is streamed batch by batch (``stream``).
The work goes through :func:`landscape.grid.run_grid`, so a run with ``out`` is flushed in
chunks, resumes after a kill (``resume=True``; a finished result of the same inputs is returned as
it is, see :func:`landscape.grid.reuse_finished`) and is sharded over torch.distributed ranks.
Points where the loss diverges keep their inf/NaN values; nothing crashes on them.

Coordinates: ``surf.loss[j, i]`` is the value at ``(surf.x[i], surf.y[j])``.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from . import grid
from .batchnorm import DEFAULT_BN_BATCH_SIZE, DEFAULT_BN_SUBSET, StatisticsEstimator, check_bn
from .checkpoint import Checkpoint, as_checkpoint
from .data import Dataset, as_dataset
from .directions import Directions, directions_between, random_directions
from .errors import ArgumentError
from .evaluator import GridEvaluator, prepare_inputs
from .progress import choice as progress_choice
from .plane import axis, plane_fingerprint, plane_meta, plane_setup, subset_argument
from .results import Result


@dataclasses.dataclass(repr=False)
class Surface(Result):
    """Loss and accuracy over a 2D grid of a plane through the weights.

    Attributes
    ----------
    x : np.ndarray
        ``(nx,)`` coordinates along the first direction.
    y : np.ndarray
        ``(ny,)`` coordinates along the second direction.
    loss : np.ndarray
        ``(ny, nx)`` training-objective loss; ``loss[j, i]`` is at ``(x[i], y[j])``.
    accuracy : np.ndarray
        ``(ny, nx)`` accuracy in [0, 1].
    ce_loss : np.ndarray or None
        ``(ny, nx)`` plain cross-entropy when asked for.
    directions : np.ndarray
        ``(2, P)`` the direction vectors (layout in ``meta["directions"]``), so the surface
        can be recomputed or extended.
    meta : dict
        Checkpoint name/digest/path, data name and size, seed, grid, criterion, directions' meta.
    """

    x: np.ndarray
    y: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    ce_loss: np.ndarray | None = None
    directions: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.float32))
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def dirs(self) -> Directions:
        """The :class:`Directions` this surface was computed along."""
        return _dirs_of(self)


@dataclasses.dataclass(repr=False)
class Curve(Result):
    """Loss and accuracy along a line ``theta* + t d``.

    Attributes
    ----------
    t : np.ndarray
        ``(n,)`` positions on the line (``t = 1`` is the other checkpoint for an interpolation).
    loss, accuracy : np.ndarray
        ``(n,)`` values at ``t``.
    ce_loss : np.ndarray or None
        Plain cross-entropy when asked for.
    directions : np.ndarray
        ``(1, P)`` the direction.
    meta : dict
    """

    t: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    ce_loss: np.ndarray | None = None
    directions: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.float32))
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def dirs(self) -> Directions:
        """The :class:`Directions` (one) this curve was computed along."""
        return _dirs_of(self)


def _dirs_of(result) -> Directions:
    d = result.meta["directions"]
    return Directions(result.directions, d["names"], d["shapes"], meta=d["meta"])


# -- inputs --------------------------------------------------------------------------------------
def _criterion(ck: Checkpoint, criterion):
    """The loss to evaluate: the checkpoint's own (``"train"``), a loss name, or a loss module."""
    if criterion in (None, "train"):
        return ck.criterion, str(ck.meta.get("loss") or "ce")
    if isinstance(criterion, str):
        from . import losses

        return losses.get(criterion).to(ck.device), criterion
    return criterion, type(criterion).__name__


@dataclasses.dataclass
class BatchNormOptions:
    """How batchnorm statistics are treated at moved weights (see :mod:`landscape.batchnorm`)."""

    mode: str = "eval"
    data: object = None
    subset: int | None = DEFAULT_BN_SUBSET
    batch_size: int = DEFAULT_BN_BATCH_SIZE

    def estimator(self, ck: Checkpoint, given_data, seed: int) -> StatisticsEstimator | None:
        """The re-estimator for ``bn="recompute"`` (None for ``"eval"``)."""
        self.mode = check_bn(self.mode)
        if self.mode == "eval":
            return None
        source = self.data if self.data is not None else (given_data if isinstance(given_data, str) else None)
        if source is None:
            raise ArgumentError("bn='recompute' re-estimates the batchnorm statistics on the training split: pass "
                                "bn_data= (a dataset spec such as 'cifar10:DIR', whose train split is used, or the "
                                "training Dataset itself).")
        return StatisticsEstimator(ck.model, source, n=self.subset, seed=seed, batch_size=self.batch_size,
                                   transform=ck.normalize, device=ck.device)

    def meta(self, est: StatisticsEstimator | None) -> dict:
        """What a result records about it."""
        if est is None:
            return {"bn": self.mode}
        return {"bn": self.mode, "bn_data": est.data.name, "bn_subset": est.n, "bn_batch_size": est.batch_size}


def _evaluate(ck: Checkpoint, data: Dataset, dirs: Directions, points: np.ndarray, fields_meta: dict, *,
              criterion, with_ce: bool, batch_size, out, resume, overwrite, chunk_size, progress, desc: str,
              points_per_batch: int | None, shortcut: bool, bn: BatchNormOptions, given_data, seed: int,
              stream: bool | None, load) -> tuple[Result | None, dict[str, np.ndarray]]:
    """Run the grid engine over ``points``: ``(None, {field: (P,)})``, or ``(finished result, {})`` to reuse.

    A finished result at ``out`` of the same inputs is returned under ``resume`` before any
    evaluation (:func:`landscape.grid.reuse_finished`); ``fields_meta`` receives what the new
    result records, its fingerprint digest included.
    """
    crit, crit_name = _criterion(ck, criterion)
    was_training = ck.model.training
    ck.model.eval()  # a surface is always of the model in eval mode (dropout off, batchnorm running statistics)
    try:
        est = bn.estimator(ck, given_data, seed)
        bn_meta = bn.meta(est)
        fields = GridEvaluator.fields_of(with_ce)
        fingerprint = plane_fingerprint(ck, data, dirs, points, "surface", criterion=crit_name,
                                        fields=list(fields), batch_size=batch_size,
                                        **(bn_meta if est is not None else {}))
        done = grid.reuse_finished(out, fingerprint, load, resume=resume, overwrite=overwrite,
                                   what="line" if points.shape[1] == 1 else "surface")
        if done is not None:
            return done, {}
        x, y = prepare_inputs(ck, data, stream=stream)
        ev = GridEvaluator(ck.model, crit, x, y, dirs, with_ce=with_ce, batch_size=batch_size,
                           shortcut=shortcut, points_per_batch=points_per_batch, recompute=est)
        del x  # the engine holds the inputs in the layout it runs on
        fields_meta.update(criterion=crit_name, **bn_meta, fingerprint=grid.fingerprint_digest(fingerprint))
        values = grid.run_grid(points, lambda idx, c: ev(c), {f: () for f in fields}, out=out,
                               fingerprint=fingerprint, resume=resume, overwrite=overwrite, chunk_size=chunk_size,
                               progress=progress, desc=desc)
        # the true centre theta* (coordinates 0): a grid point of odd grids, evaluated on its own otherwise
        at_zero = np.flatnonzero(np.all(points == 0, axis=1))
        centre = ({k: v[at_zero[0]] for k, v in values.items()} if at_zero.size
                  else ev(np.zeros((1, dirs.n))))
        fields_meta.update(centre={k: float(np.asarray(v).reshape(-1)[0]) for k, v in centre.items()})
        return None, values
    finally:
        ck.model.train(was_training)


# -- public ----------------------------------------------------------------------------------------
def surface(ck, data, dirs: Directions | None = None, x=(-1.0, 1.0, 51), y=(-1.0, 1.0, 51), *,
            subset: int | None = None, seed: int = 0, criterion="train", with_ce: bool = False,
            batch_size: int | None = None, out: str | os.PathLike | None = None, resume: bool = False,
            overwrite: bool | None = None, chunk_size: int = 64, verbose: bool | None = None,
            points_per_batch: int | None = None,
            shortcut: bool = True, bn: str = "eval", bn_data=None, bn_subset: int | None = DEFAULT_BN_SUBSET,
            bn_batch_size: int = DEFAULT_BN_BATCH_SIZE, stream: bool | None = None,
            n_samples: int | None = None, progress: bool | None = None) -> Surface:
    """Loss and accuracy of ``ck`` over the plane ``theta* + a d1 + b d2``.

    Parameters
    ----------
    ck : Checkpoint or path
        The centre ``theta*``; its model is used in eval mode and left unchanged.
    data : Dataset or str
        Evaluation data (a spec string loads its test split).
    dirs : Directions, optional
        Two directions; default ``random_directions(ck.model, 2, seed)`` (filter-normalised,
        biases and batchnorm zeroed).
    x, y : tuple (lo, hi, n), or list/array of coordinates
        Grid coordinates along ``d1`` and ``d2``; ``nx`` and ``ny`` are independent.
    subset : int, optional
        Evaluate on a seeded random subset of this many samples (``n_samples`` is its old,
        deprecated name).
    seed : int
        Seed of the directions (when drawn here) and of the subset.
    criterion : "train", str or nn.Module
        ``"train"``: the checkpoint's own training objective; or a loss name / module.
    with_ce : bool
        Also compute plain cross-entropy (``surf.ce_loss``).
    batch_size : int, optional
        Evaluate the data in batches (default: one batch).
    out : path, optional
        Save the surface there (``.npz``); progress is flushed beside it chunk by chunk.
    resume : bool
        Continue an interrupted run with the same ``out``; a finished surface there of the same
        inputs is loaded and returned, not recomputed (one of other inputs is refused).
    overwrite : bool, optional
        Compute again and replace a finished surface (and any progress) at ``out``; without it,
        and without ``resume``, a finished surface there is an error. Default: False, or True
        inside :func:`landscape.grid.overwriting` (the CLI's ``--overwrite``).
    chunk_size : int
        Points per flushed chunk (and per rank under torch.distributed).
    verbose : bool or None
        Progress (a bar on a terminal or in Jupyter, plain lines elsewhere; see
        :mod:`landscape.progress`); False is silent. ``progress`` is its older name.
    points_per_batch : int, optional
        Grid points per launch (``torch.func.vmap``); default 16 on CUDA, 1 on the CPU.
    shortcut : bool
        Use the exact first-layer shortcut and batchnorm folding where they apply (see
        :mod:`landscape.evaluator`).
    bn : {"eval", "recompute"}
        Batchnorm running statistics at each point: ``"eval"`` uses those stored (Li et al.'s
        default); ``"recompute"`` re-estimates them at that point's weights on ``bn_subset``
        seeded samples of the training split (Garipov et al.), then evaluates in eval mode.
    bn_data : Dataset or str, optional
        The training data for ``bn="recompute"`` (a spec string loads its train split); default:
        the train split of ``data`` when ``data`` is a spec string.
    bn_subset : int or None
        Samples of ``bn_data`` per re-estimate (seeded with ``seed``, the same for every point);
        None uses all of them.
    bn_batch_size : int
        Batch size of the re-estimate (the statistics are averages over its batches).
    stream : bool or None
        Stream the data batch by batch instead of holding it on the device (same values);
        None streams when it would take more than a quarter of the device's free memory.

    Returns
    -------
    Surface
        ``loss[j, i]`` at ``(x[i], y[j])``, identical on every rank.
    """
    given_data = data
    subset = subset_argument(subset, n_samples)
    ck, data, dirs, xs, ys = plane_setup(ck, data, dirs, x, y, subset, seed, "a surface",
                                         hint="; use interpolate() for one")
    # Row-major over (y, x): point j * nx + i is (x[i], y[j]), so reshape gives loss[j, i].
    gx, gy = np.meshgrid(xs, ys)
    points = np.stack([gx.ravel(), gy.ravel()], axis=1)
    out = grid.result_path(out)
    extra: dict = {}
    done, values = _evaluate(ck, data, dirs, points, extra, criterion=criterion, with_ce=with_ce,
                             batch_size=batch_size, out=out, resume=resume, overwrite=overwrite,
                             chunk_size=chunk_size, progress=progress_choice(verbose, progress), desc="surface",
                             points_per_batch=points_per_batch, shortcut=shortcut,
                             bn=BatchNormOptions(bn, bn_data, bn_subset, bn_batch_size), given_data=given_data,
                             seed=seed, stream=stream, load=Surface.load)
    if done is not None:
        return done
    shape = (len(ys), len(xs))
    surf = Surface(xs, ys, values["loss"].reshape(shape), values["accuracy"].reshape(shape),
                   values["ce_loss"].reshape(shape) if with_ce else None, dirs.vectors,
                   plane_meta(ck, data, dirs, seed, grid=[len(xs), len(ys)],
                         x_range=[float(xs[0]), float(xs[-1])], y_range=[float(ys[0]), float(ys[-1])], **extra))
    grid.save_result(surf, out)
    return surf


def interpolate(ck, other=None, data="digits", steps: int = 51, t=None, *, subset: int | None = None,
                seed: int = 0, criterion="train", with_ce: bool = False, batch_size: int | None = None,
                out: str | os.PathLike | None = None, resume: bool = False, overwrite: bool | None = None,
                chunk_size: int = 64, verbose: bool | None = None, shortcut: bool = True, dir_type: str = "weights",
                bn: str = "eval",
                bn_data=None, bn_subset: int | None = DEFAULT_BN_SUBSET, bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
                stream: bool | None = None, n_samples: int | None = None, progress: bool | None = None) -> Curve:
    """Loss and accuracy along a line through ``ck``.

    Parameters
    ----------
    ck : Checkpoint or path
        The point ``t = 0``.
    other : Checkpoint, path, nn.Module, Directions or None
        Another checkpoint (the line to it; ``t = 1`` is that checkpoint, default ``t`` in
        [-0.5, 1.5]), a :class:`Directions` (its first direction; default ``t`` in [-1, 1]),
        or None for one seeded random filter-normalised direction.
    data : Dataset or str
        Evaluation data.
    steps : int
        Number of points when ``t`` is not given.
    t : tuple (lo, hi, n), or list/array of coordinates, optional
        Positions on the line.
    dir_type : {"weights", "states"}
        For a line to another checkpoint: ``"states"`` interpolates the batchnorm running
        statistics too, so ``t = 1`` is exactly the other checkpoint (Li et al.'s
        ``dir_type=states``); ``"weights"`` keeps those of ``ck``. Random directions are drawn
        over the same state (random ``states`` directions leave the statistics where they are).
    subset, seed, criterion, with_ce, batch_size, out, resume, overwrite, chunk_size, verbose, shortcut
        As in :func:`surface` (a finished line of the same inputs is reused under ``resume``).
    bn, bn_data, bn_subset, bn_batch_size, stream
        As in :func:`surface`.

    Returns
    -------
    Curve
    """
    given_data = data
    ck = as_checkpoint(ck)
    data = as_dataset(data, subset_argument(subset, n_samples), seed)
    if other is None:
        dirs, default = random_directions(ck.model, n=1, seed=seed, dir_type=dir_type), (-1.0, 1.0, steps)
    elif isinstance(other, Directions):
        dirs = Directions(other.vectors[:1], other.names, other.shapes, meta=dict(other.meta, n=1))
        default = (-1.0, 1.0, steps)
    else:
        dirs, default = directions_between(ck, other, dir_type=dir_type), (-0.5, 1.5, steps)
    ts = axis(t if t is not None else default, "t")
    out = grid.result_path(out)
    extra: dict = {}
    done, values = _evaluate(ck, data, dirs, ts[:, None], extra, criterion=criterion, with_ce=with_ce,
                             batch_size=batch_size, out=out, resume=resume, overwrite=overwrite,
                             chunk_size=chunk_size, progress=progress_choice(verbose, progress), desc="line",
                             points_per_batch=None, shortcut=shortcut,
                             bn=BatchNormOptions(bn, bn_data, bn_subset, bn_batch_size), given_data=given_data,
                             seed=seed, stream=stream, load=Curve.load)
    if done is not None:
        return done
    curve = Curve(ts, values["loss"], values["accuracy"], values["ce_loss"] if with_ce else None, dirs.vectors,
                  plane_meta(ck, data, dirs, seed, steps=len(ts), t_range=[float(ts[0]), float(ts[-1])], **extra))
    grid.save_result(curve, out)
    return curve
