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
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Union

import numpy as np
import torch

from . import losses
from .errors import ArgumentError, LossError
from .results import Result

LossLike = Union[str, "losses.ProbabilityLoss", "losses.Combined", Callable]


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
        ``loss`` (the name or spec), ``label`` (for legends), ``resolution``, ``convention``.
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
        ``loss_a``, ``loss_b`` (labels), ``resolution``, ``max``/``argmax`` of the difference.
    """

    y: np.ndarray
    yhat: np.ndarray
    difference: np.ndarray
    binary_difference: np.ndarray
    a: np.ndarray
    b: np.ndarray
    meta: dict = dataclasses.field(default_factory=dict)

    kind = "phenotype_difference"


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


def phenotype(loss: LossLike, resolution: int = 51, label: str | None = None, **params) -> Phenotype:
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
    **params
        Parameters of a registered loss (``phenotype("adma", a=0.1)``).

    Returns
    -------
    Phenotype

    Raises
    ------
    LossError
        Unknown name, or a loss with no phenotype (margin and logit losses).
    ArgumentError
        Bad resolution, or a user function that is not finite on the grid.
    """
    if int(resolution) != resolution or resolution < 2:
        raise ArgumentError(f"resolution must be an integer >= 2, got {resolution!r}.")
    fn, default_label = _resolve(loss, params)
    label = default_label if label is None else str(label)
    grid = np.linspace(0.0, 1.0, int(resolution))
    y, yh = np.meshgrid(grid, grid)  # rows: yhat, columns: y
    raw = np.asarray(fn(y, yh), dtype=np.float64)
    if not np.isfinite(raw).all():
        bad = np.argwhere(~np.isfinite(raw))[0]
        raise ArgumentError(f"loss {label!r} is not finite at y={grid[bad[1]]:g}, yh={grid[bad[0]]:g}; protect its "
                            "logs and divisions with eps (ln(|x| + 1e-7), a / (b + 1e-7)).")
    binary = raw[:, -1].copy()  # the y = 1 column
    meta = {"loss": loss if isinstance(loss, str) else default_label, "label": label, "params": dict(params),
            "resolution": int(resolution), "convention": "two-class: targets (y, 1-y), predictions (yh, 1-yh), summed",
            "axes": "raw[i, j] = L(y[j], yhat[i])"}
    return Phenotype(y=grid, yhat=grid.copy(), raw=raw, normalized=minmax(raw), binary_raw=binary,
                     binary_normalized=minmax(binary), meta=meta)


def phenotype_difference(a: LossLike | Phenotype, b: LossLike | Phenotype = "ce", resolution: int = 51
                         ) -> PhenotypeDifference:
    """``normalized(a) - normalized(b)`` on the same grid (seed 003 Fig. 8: A2 - CE).

    Parameters
    ----------
    a, b : str, Loss, callable or Phenotype
        Anything :func:`phenotype` takes, or phenotypes already computed on one grid.
    resolution : int
        Points per axis when a loss (not a phenotype) is given.

    Returns
    -------
    PhenotypeDifference
    """
    pa = a if isinstance(a, Phenotype) else phenotype(a, resolution)
    pb = b if isinstance(b, Phenotype) else phenotype(b, resolution)
    if pa.raw.shape != pb.raw.shape or not (np.allclose(pa.y, pb.y) and np.allclose(pa.yhat, pb.yhat)):
        raise ArgumentError(f"phenotypes {pa.label!r} and {pb.label!r} are on different grids "
                            f"({pa.raw.shape} vs {pb.raw.shape}); compute both with the same resolution.")
    diff = pa.normalized - pb.normalized
    i, j = np.unravel_index(np.argmax(diff), diff.shape)
    meta = {"loss_a": pa.label, "loss_b": pb.label, "resolution": len(pa.y),
            "max": float(diff[i, j]), "argmax": {"y": float(pa.y[j]), "yhat": float(pa.yhat[i])},
            "min": float(diff.min())}
    return PhenotypeDifference(y=pa.y, yhat=pa.yhat, difference=diff,
                               binary_difference=pa.binary_normalized - pb.binary_normalized,
                               a=pa.normalized, b=pb.normalized, meta=meta)
