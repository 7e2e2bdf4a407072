"""Loss phenotypes (seed 003, section 4.1 and appendix A): the loss as a function of target and prediction.

Two-class convention of ``losses.md``: a target ``y`` and a prediction ``yh`` stand for the
distributions ``(y, 1 - y)`` and ``(yh, 1 - yh)``, and the loss is summed over the two
classes. The 3D phenotype is that sum on a grid of ``y`` (x axis) by ``yh`` (y axis); the
binary phenotype is its ``y = 1`` slice; normalised values are min-max scaled over the
plotted grid; a difference is ``normalised(A) - normalised(B)`` on the same grid::

    import landscape as ls
    ph = ls.phenotype("A2")                           # Phenotype
    ph = ls.phenotype("adma", a=0.1)                  # a registered loss with parameters
    ph = ls.phenotype(lambda y, yh: (y - yh) ** 2)    # a user's own elementwise function
    diff = ls.phenotype_difference("A2", "CE")        # PhenotypeDifference
    ph = ls.phenotype("c1", reading="literal", grid="open")   # Table 4 as printed, the authors' grid

Grids: ``"closed"`` (default) has ``resolution`` points from 0 to 1, so its first and last
``yhat`` rows are predictions of exactly 0 and 1, where one class's probability is exactly zero
(a softmax reaches it only by underflow) and the ``eps`` guards of the formulas decide the value;
``"open"`` runs the predictions from ``eps`` to ``1 - eps`` as the authors' search code does
(``linspace(eps, 1 - eps, 1000)`` in its phenotype check); targets always run from 0 to 1, as a
one-hot target is exactly 0 or 1. Min-max normalisation is over the whole
grid, endpoints included, as seed 003's Fig. 8 needs (its 0.188 at ``yh = 0.02`` is relative to
the values at the corners). :attr:`Phenotype.edges` marks the two endpoint rows, which figures
leave out by default.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Union

import numpy as np
import torch

from . import losses
from .errors import ArgumentError, LossError, check_choice, check_scalar
from .results import Result

LossLike = Union[str, "losses.ProbabilityLoss", "losses.Combined", Callable]
GRIDS = ("closed", "open")
EDGE = 2e-7  # a prediction within this of 0 or 1 is an endpoint row (the grids' ends are 0, 1 or eps, 1 - eps)


def edge_rows(yhat: np.ndarray) -> np.ndarray:
    """Boolean mask of the ``yhat`` rows at a probability endpoint (0, 1, ``eps`` or ``1 - eps``)."""
    yhat = np.asarray(yhat, dtype=np.float64)
    return (yhat <= EDGE) | (yhat >= 1.0 - EDGE)


@dataclasses.dataclass(repr=False)
class Phenotype(Result):
    """A loss's phenotype on the grid ``y`` x ``yhat``.

    Attributes
    ----------
    y : ndarray (ny,)
        Target values (the x axis of the 3D plot).
    yhat : ndarray (nyh,)
        Predicted probabilities (the y axis).
    raw : ndarray (nyh, ny)
        ``raw[i, j] = L(y_j, yhat_i)`` summed over the two classes.
    normalized : ndarray (nyh, ny)
        ``raw`` min-max scaled to ``[0, 1]`` over the grid.
    binary_raw, binary_normalized : ndarray (nyh,)
        The ``y = 1`` slice, raw and min-max scaled over itself.
    meta : dict
        ``loss`` (the name or spec), ``label`` (for legends), ``resolution``, ``grid``,
        ``convention``.
    """

    y: np.ndarray
    yhat: np.ndarray
    raw: np.ndarray
    normalized: np.ndarray
    binary_raw: np.ndarray
    binary_normalized: np.ndarray
    meta: dict = dataclasses.field(default_factory=dict)

    kind = "phenotype"

    @property
    def label(self) -> str:
        """Legend label: ``meta["label"]``, else the loss name."""
        return str(self.meta.get("label", self.meta.get("loss", "loss")))

    @property
    def edges(self) -> np.ndarray:
        """Boolean mask over ``yhat``: the endpoint rows (a prediction of 0 or 1, or ``eps`` from it)."""
        return edge_rows(self.yhat)


@dataclasses.dataclass(repr=False)
class PhenotypeDifference(Result):
    """``normalized(A) - normalized(B)`` of two phenotypes on the same grid (seed 003 Fig. 8).

    Attributes
    ----------
    y, yhat : ndarray
        The shared grid.
    difference : ndarray (nyh, ny)
        ``a.normalized - b.normalized``.
    binary_difference : ndarray (nyh,)
        ``a.binary_normalized - b.binary_normalized`` (the ``y = 1`` slice).
    a, b : ndarray (nyh, ny)
        The two normalised phenotypes.
    meta : dict
        ``loss_a``, ``loss_b`` (labels), ``resolution``, ``grid``; ``max`` and ``argmax`` of the
        difference away from the endpoint rows (:attr:`edges`), ``ties`` (every other grid point
        within 1e-9 of that maximum: the two-class sum is symmetric under ``(y, yh) -> (1 - y,
        1 - yh)``, and the largest ``y`` is reported first), ``min``, and ``max_all`` over every row.
    """

    y: np.ndarray
    yhat: np.ndarray
    difference: np.ndarray
    binary_difference: np.ndarray
    a: np.ndarray
    b: np.ndarray
    meta: dict = dataclasses.field(default_factory=dict)

    kind = "phenotype_difference"

    @property
    def edges(self) -> np.ndarray:
        """Boolean mask over ``yhat``: the endpoint rows (a prediction of 0 or 1, or ``eps`` from it)."""
        return edge_rows(self.yhat)


def minmax(values: np.ndarray) -> np.ndarray:
    """``(v - min) / (max - min)``; a constant array maps to zeros (nothing to scale)."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 0:
        return np.zeros_like(values)
    return (values - lo) / (hi - lo)


def _resolve(loss: LossLike, params: dict) -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], str]:
    """A function of two-class ``(y, yh)`` grids returning the summed loss, and a label."""
    if callable(loss) and not isinstance(loss, (str, torch.nn.Module)):
        if params:
            raise ArgumentError(f"parameters {params} only apply to registered losses; bind them in your function.")
        label = getattr(loss, "__name__", "custom")
        return (lambda y, yh: _call_user(loss, y, yh) + _call_user(loss, 1 - y, 1 - yh)), label
    module = losses.build(loss, **params) if isinstance(loss, str) else loss
    if not hasattr(module, "of_probabilities") or (isinstance(module, losses.Combined) and not module.has_phenotype):
        spec = getattr(module, "spec", type(module).__name__)
        raise LossError(f"loss {spec!r} is not a function of target and probability (a margin loss on features "
                        "or logits), so it has no phenotype; use one of the probability losses "
                        f"({', '.join(phenotype_names())}) or your own function of (y, yh).")
    label = loss if isinstance(loss, str) and not params else module.spec

    def two_class(y, yh):
        yt = torch.as_tensor(np.stack([y, 1 - y], -1), dtype=torch.float64)
        ht = torch.as_tensor(np.stack([yh, 1 - yh], -1), dtype=torch.float64)
        with torch.no_grad():
            return module.of_probabilities(yt, ht).numpy()

    return two_class, label


def _call_user(fn: Callable, y: np.ndarray, yh: np.ndarray) -> np.ndarray:
    """Call a user's ``fn(y, yh)`` with numpy arrays, or with torch tensors if it wants those."""
    try:
        with np.errstate(all="ignore"):  # a non-finite result is reported by phenotype() itself
            out = fn(y, yh)
    except (TypeError, AttributeError):
        with torch.no_grad():
            out = fn(torch.as_tensor(y), torch.as_tensor(yh))
    out = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, dtype=np.float64)
    return np.broadcast_to(out, y.shape).astype(np.float64)


def phenotype_names() -> list[str]:
    """Registered losses that have a phenotype (functions of target and probability)."""
    return [n for n in losses.names() if isinstance(losses.get(n), losses.ProbabilityLoss)]


def phenotype_grid(resolution: int, grid: str = "closed") -> np.ndarray:
    """The ``resolution`` predictions ``yhat``: from 0 to 1 (``"closed"``) or ``eps`` to ``1 - eps`` (``"open"``)."""
    resolution = check_scalar(resolution, "resolution", int, min=2)
    grid = check_choice(grid, "grid", GRIDS)
    lo = 0.0 if grid == "closed" else losses.EPS
    return np.linspace(lo, 1.0 - lo, resolution)


def phenotype(loss: LossLike, resolution: int = 51, label: str | None = None, grid: str = "closed",
              **params) -> Phenotype:
    """The 3D and binary phenotype of ``loss`` on a ``resolution`` x ``resolution`` grid over ``[0, 1]^2``.

    Parameters
    ----------
    loss : str, Loss or callable
        A registered probability loss or spec (``"A2"``, ``"adma(a=0.1)"``,
        ``"0.5*ce + 0.5*a2"``), such a loss object, or a function ``fn(y, yh)`` of the
        elementwise target and prediction (numpy arrays, or torch tensors when it needs
        them) returning the elementwise loss.
    resolution : int
        Points per axis, ``>= 2`` (default 51, endpoints included).
    label : str, optional
        Legend label (default: the name or spec as given, or the function's name).
    grid : {"closed", "open"}
        Predictions from 0 to 1, or from ``eps`` to ``1 - eps`` as the authors' search code
        evaluates its phenotypes (module docstring); targets always from 0 to 1.
    **params
        Parameters of a registered loss (``phenotype("adma", a=0.1)``,
        ``phenotype("c1", reading="literal")``).

    Returns
    -------
    Phenotype

    Raises
    ------
    LossError
        Unknown name, or a loss with no phenotype (margin and logit losses).
    ArgumentError
        Bad resolution or grid, or a user function that is not finite on the grid.
    """
    yhat = phenotype_grid(resolution, grid)
    targets = np.linspace(0.0, 1.0, len(yhat))  # targets are one-hot in training: 0 and 1 are real values
    fn, default_label = _resolve(loss, params)
    label = default_label if label is None else str(label)
    y, yh = np.meshgrid(targets, yhat)  # rows: yhat, columns: y
    raw = np.asarray(fn(y, yh), dtype=np.float64)
    if not np.isfinite(raw).all():
        bad = np.argwhere(~np.isfinite(raw))[0]
        raise ArgumentError(f"loss {label!r} is not finite at y={targets[bad[1]]:g}, yh={yhat[bad[0]]:g}; protect "
                            "its logs and divisions with eps (ln(|x| + 1e-7), a / (b + 1e-7)).")
    binary = raw[:, -1].copy()  # the y = 1 column
    meta = {"loss": loss if isinstance(loss, str) else default_label, "label": label, "params": dict(params),
            "resolution": len(yhat), "grid": grid,
            "convention": "two-class: targets (y, 1-y), predictions (yh, 1-yh), summed",
            "axes": "raw[i, j] = L(y[j], yhat[i])"}
    return Phenotype(y=targets, yhat=yhat, raw=raw, normalized=minmax(raw), binary_raw=binary,
                     binary_normalized=minmax(binary), meta=meta)


def _largest(diff: np.ndarray, y: np.ndarray, yhat: np.ndarray, rows: np.ndarray) -> tuple[float, list[dict]]:
    """The largest value of ``diff`` over ``rows`` and every grid point within 1e-9 of it, largest ``y`` first."""
    top = float(diff[rows].max())
    where = [(float(y[j]), float(yhat[i])) for i, j in np.argwhere(diff >= top - 1e-9) if rows[i]]
    where.sort(key=lambda p: (-p[0], p[1]))
    return top, [{"y": a, "yhat": b} for a, b in where]


def phenotype_difference(a: LossLike | Phenotype, b: LossLike | Phenotype = "ce", resolution: int = 51,
                         grid: str = "closed") -> PhenotypeDifference:
    """``normalized(a) - normalized(b)`` on the same grid (seed 003 Fig. 8: A2 - CE).

    Parameters
    ----------
    a, b : str, Loss, callable or Phenotype
        Anything :func:`phenotype` takes, or phenotypes already computed on one grid.
    resolution : int
        Points per axis when a loss (not a phenotype) is given.
    grid : {"closed", "open"}
        As in :func:`phenotype`, when a loss is given.

    Returns
    -------
    PhenotypeDifference
    """
    pa = a if isinstance(a, Phenotype) else phenotype(a, resolution, grid=grid)
    pb = b if isinstance(b, Phenotype) else phenotype(b, resolution, grid=grid)
    if pa.raw.shape != pb.raw.shape or not (np.allclose(pa.y, pb.y) and np.allclose(pa.yhat, pb.yhat, rtol=0,
                                                                                      atol=1e-9)):
        raise ArgumentError(f"phenotypes {pa.label!r} and {pb.label!r} are on different grids "
                            f"({pa.raw.shape} vs {pb.raw.shape}); compute both with the same resolution and grid.")
    diff = pa.normalized - pb.normalized
    inner = ~edge_rows(pa.yhat)
    top, where = _largest(diff, pa.y, pa.yhat, inner if inner.any() else ~inner)
    meta = {"loss_a": pa.label, "loss_b": pb.label, "resolution": len(pa.y), "grid": pa.meta.get("grid", "closed"),
            "max": top, "argmax": where[0], "ties": where[1:], "min": float(diff.min()),
            "max_all": float(diff.max())}
    return PhenotypeDifference(y=pa.y, yhat=pa.yhat, difference=diff,
                               binary_difference=pa.binary_normalized - pb.binary_normalized,
                               a=pa.normalized, b=pb.normalized, meta=meta)
