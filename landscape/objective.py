"""The training objective of a checkpoint, evaluated on a batch, and the one place a model's output becomes logits.

One place knows how to feed a model's outputs to a :class:`~landscape.losses.Loss`:
margin losses get the penultimate features and the classifier weights, every other loss
only the logits. Accuracy is always measured on the plain logits.

**The output adapter.** A model whose forward returns a tuple (auxiliary heads), a dict or an
object with ``.logits`` (Hugging Face style) says which part are the logits with ``output``:

* an ``int``: a position in a tuple or list (``output=0``);
* a ``str``: a key of a mapping or, failing that, an attribute (``output="logits"``);
* a callable ``f(out) -> logits`` (through the API only: it is code, so never read from a file).

The choice lives on the model (the attribute :data:`OUTPUT_ATTRIBUTE`, set by
:func:`set_output`; a class may also define it), so that everything that reaches the model's
output through :func:`logits_of` honours it: :func:`loss_and_logits` and :class:`Objective`
(hence surfaces, lines, ratio maps, Hessians and training), feature extraction and accuracy.
:func:`landscape.load_checkpoint` sets it from ``output=`` or from a key/attribute string in
``meta["output"]``. Without an adapter a tensor is the logits, and a mapping with a
``"logits"`` key or an object with a ``.logits`` tensor gives those (the Hugging Face
convention); anything else is refused with a message asking for ``output=``.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Union

import torch
from torch import nn
from torch.nn import functional as F

from .errors import ArchitectureError, ArgumentError, LossError
from .models import split_head

OUTPUT_ATTRIBUTE = "landscape_output"
OutputSpec = Union[int, str, Callable[[Any], torch.Tensor], None]


def check_output(output: Any) -> OutputSpec:
    """Return ``output`` if it is a valid adapter (None, an int, a non-empty str or a callable); else raise.

    Raises
    ------
    ArgumentError
        Any other value.
    """
    if output is None or callable(output) or (isinstance(output, str) and output):
        return output
    if isinstance(output, int) and not isinstance(output, bool):
        return int(output)
    raise ArgumentError(f"output must be a tuple position (int), a key or attribute name (str) or a function "
                        f"out -> logits, got {output!r}.")


def set_output(model: nn.Module, output: OutputSpec) -> nn.Module:
    """Make ``output`` the model's output adapter (``None`` removes it) and return the model.

    Only this plain attribute is set; weights, buffers and devices are untouched.
    """
    output = check_output(output)
    if output is None:
        model.__dict__.pop(OUTPUT_ATTRIBUTE, None)
    else:
        object.__setattr__(model, OUTPUT_ATTRIBUTE, output)
    return model


def output_of(model: nn.Module) -> OutputSpec:
    """The model's output adapter (its attribute :data:`OUTPUT_ATTRIBUTE`), or None."""
    return getattr(model, OUTPUT_ATTRIBUTE, None)


def select_logits(out: Any, output: OutputSpec = None, name: str = "the model") -> torch.Tensor:
    """The logits inside a model's raw output ``out``, chosen by the adapter ``output`` (see the module docstring).

    Raises
    ------
    ArchitectureError
        The output holds no logits where ``output`` says, or it is not a tensor and no adapter is given.
    """
    if output is None:
        if isinstance(out, torch.Tensor):
            return out
        found = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
        if isinstance(found, torch.Tensor):
            return found
        what = (f"a {type(out).__name__} of {len(out)}" if isinstance(out, (Sequence, Mapping))
                and not isinstance(out, str) else f"a {type(out).__name__}")
        keys = f" with keys {sorted(map(str, out))[:6]}" if isinstance(out, Mapping) else ""
        raise ArchitectureError(f"{name} returns {what}{keys}, not a tensor of logits; say which part are the "
                                "logits with output= (a tuple position such as 0, a key or attribute name such as "
                                "'logits', or a function out -> logits).")
    if callable(output):
        value = output(out)
    elif isinstance(output, int):
        if not isinstance(out, Sequence) or isinstance(out, (str, torch.Tensor)) or not -len(out) <= output < len(out):
            raise ArchitectureError(f"{name} returns a {type(out).__name__}, which has no position {output}; fix "
                                    "output= (a tuple position, a key or attribute name, or a function).")
        value = out[output]
    elif isinstance(out, Mapping) and output in out:
        value = out[output]
    elif not isinstance(out, Mapping) and hasattr(out, output) and not isinstance(out, torch.Tensor):
        value = getattr(out, output)
    else:
        keys = f" (keys {sorted(map(str, out))[:6]})" if isinstance(out, Mapping) else ""
        raise ArchitectureError(f"{name} returns a {type(out).__name__}{keys} without key or attribute {output!r}; "
                                "fix output= (a tuple position, a key or attribute name, or a function).")
    if not isinstance(value, torch.Tensor):
        raise ArchitectureError(f"output={output!r} picks a {type(value).__name__} from {name}'s output, not a tensor "
                                "of logits; point it at the logits.")
    return value


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` reduced to its logits by the model's output adapter; every caller of a model goes through it."""
    return select_logits(model(x), output_of(model), type(model).__name__)


def outputs(model: nn.Module, x: torch.Tensor, with_features: bool = False):
    """Return ``(logits, features, head_weight)``; the last two are None unless asked for."""
    if not with_features:
        return logits_of(model, x), None, None
    parts = split_head(model)
    if parts is None:
        raise LossError(f"this loss needs the model's penultimate features, but {type(model).__name__} has no "
                        "`features(x)` method and linear `head`; add them (see landscape.models) or use a "
                        "loss that needs only logits.")
    feats, head = parts
    f = feats(x)
    return head(f), f, head.weight


def loss_and_logits(model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """The criterion's batch loss and the logits, with gradients flowing as usual."""
    needs = bool(getattr(criterion, "needs_features", False))
    logits, f, w = outputs(model, x, needs)
    if needs:
        return criterion(logits, y, features=f, weight=w), logits
    return criterion(logits, y), logits


class Objective(nn.Module):
    """A model and its criterion as one module, so ``torch.func.functional_call`` can swap their weights.

    Every computation that evaluates a checkpoint at other weights (surfaces, Hessians, sharpness)
    calls this one module with a state whose keys are ``model.<name>`` and ``criterion.<name>``.

    Parameters
    ----------
    model, criterion : nn.Module
    metrics : bool
        ``forward`` returns ``(loss, correct)`` (number of correct top-1 predictions) instead of
        the loss alone.
    with_ce : bool
        With ``metrics``, also return plain cross-entropy: ``(loss, correct, ce)``.
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, *, metrics: bool = False, with_ce: bool = False):
        super().__init__()
        self.model, self.criterion = model, criterion
        self.metrics, self.with_ce = bool(metrics), bool(with_ce)

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        """The batch loss, or ``(loss, correct[, ce])`` with ``metrics``."""
        loss, logits = loss_and_logits(self.model, self.criterion, x, y)
        if not self.metrics:
            return loss
        correct = (logits.argmax(1) == y).sum()
        return (loss, correct, F.cross_entropy(logits, y)) if self.with_ce else (loss, correct)


def mean_over_batches(objective: Objective, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                      state: Mapping[str, torch.Tensor] | None = None, *, grad: bool = False):
    """Mean loss (weighted by batch size) and accuracy of ``objective`` over ``batches``, at weights ``state``.

    The one accumulation behind :func:`evaluate`, mode connectivity and sharpness. ``objective``
    is an :class:`Objective` with ``metrics=True``; ``state`` (``model.<name>`` keys) is swapped
    in with ``torch.func.functional_call`` (None: the module's own weights). With ``grad`` the
    mean loss is a tensor that keeps its graph, else a float.
    """
    from torch.func import functional_call

    total, correct, count = 0.0, 0, 0
    with torch.set_grad_enabled(grad):
        for xb, yb in batches:
            loss, right = (objective(xb, yb) if state is None
                           else functional_call(objective, dict(state), (xb, yb), strict=False))
            total = total + (loss * len(yb) if grad else float(loss) * len(yb))
            correct += int(right)
            count += len(yb)
    return total / count, correct / count


def batches_of(x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None):
    """``(x, y)`` cut into consecutive batches of ``batch_size`` (None: one batch)."""
    bs = len(y) if batch_size is None else int(batch_size)
    return ((x[i:i + bs], y[i:i + bs]) for i in range(0, len(y), bs))


def evaluate(model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int | None = None) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``(x, y)`` without gradients.

    With ``batch_size`` the batch losses are averaged weighted by batch size, which equals
    the full-batch loss for every loss that is a mean over samples (batch-adaptive margins
    such as MAM-SoftMax see each batch on its own, as in training).
    """
    with torch.inference_mode():
        return mean_over_batches(Objective(model, criterion, metrics=True), batches_of(x, y, batch_size))
