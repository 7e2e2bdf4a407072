"""The loss protocol, the registry of loss names and the combined-loss spec strings.

Protocol shared by every loss: a :class:`Loss` is an ``nn.Module`` called as
``loss(logits, target, features=None, weight=None)`` returning the batch-mean loss.
Losses with ``needs_features = True`` (margin losses) also get the penultimate
``features`` (N, d) and the classifier ``weight`` (C, d) from
:func:`landscape.objective.loss_and_logits`.

Losses that are functions of the target and the softmax probabilities
(:class:`ProbabilityLoss`) also expose that function, :meth:`ProbabilityLoss.of_probabilities`,
which is what loss phenotypes evaluate.
"""
from __future__ import annotations

import ast
import inspect
import re
from typing import Callable, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import LossError, did_you_mean

#: The ``eps`` of the seeds' protected operators (``ln(|x| + eps)``, ``a / (b + eps)``).
EPS = 1e-7


class Loss(nn.Module):
    """Base class of every loss.

    Subclasses implement ``forward(logits, target, features=None, weight=None)`` returning
    the mean over the batch. ``needs_features`` tells the caller to pass the penultimate
    features and the classifier weight.
    """

    needs_features: ClassVar[bool] = False

    def forward(self, logits, target, features=None, weight=None):  # pragma: no cover - abstract
        """Batch-mean loss of ``logits`` for ``target`` (implemented by subclasses)."""
        raise NotImplementedError

    @property
    def spec(self) -> str:
        """The name (with parameters) that rebuilds this loss with :func:`build`."""
        return getattr(self, "_spec", type(self).__name__)


class ProbabilityLoss(Loss):
    """A loss that is a function of the target distribution and the softmax probabilities.

    Subclasses implement :meth:`of_probabilities`; the forward pass feeds it the one-hot
    (optionally label-smoothed) target and ``softmax(logits)``. Losses with a more stable
    form on the logits (CE, focal, Adma) override :meth:`forward` and keep
    :meth:`of_probabilities` for phenotypes.
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise LossError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.label_smoothing = float(label_smoothing)

    def of_probabilities(self, target: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Per-sample loss for target distributions and probabilities, both ``(..., C)``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def soft_target(self, target: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
        """One-hot targets, smoothed as ``(1 - s) * onehot + s / C`` when ``label_smoothing = s``."""
        y = F.one_hot(target, num_classes).to(dtype)
        if self.label_smoothing:
            y = y * (1.0 - self.label_smoothing) + self.label_smoothing / num_classes
        return y

    def forward(self, logits, target, features=None, weight=None):
        """Batch-mean of :meth:`of_probabilities` on the soft target and ``softmax(logits)``."""
        y = self.soft_target(target, logits.shape[-1], logits.dtype)
        return self.of_probabilities(y, torch.softmax(logits, dim=-1)).mean()


class ElementwiseLoss(ProbabilityLoss):
    """A loss ``sum_j L(y_j, yh_j)`` of an elementwise function ``L`` (seed 003's form).

    Subclasses implement :meth:`elementwise`.
    """

    def elementwise(self, y: torch.Tensor, yh: torch.Tensor) -> torch.Tensor:
        """``L(y, yh)`` elementwise; finite for every ``y, yh`` in ``[0, 1]``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def of_probabilities(self, target, probs):
        """Per-sample loss: :meth:`elementwise` summed over the classes."""
        return self.elementwise(target, probs).sum(-1)


# -- registry ------------------------------------------------------------------------------
_LOSSES: dict[str, Callable[..., Loss]] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    """Lookup key of a name: case, spaces, '-' and '_' do not matter ('L_Softmax' == 'l-softmax')."""
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


def register(name: str, factory: Callable[..., Loss] | None = None, aliases: tuple[str, ...] = ()):
    """Register a loss factory under ``name`` (usable as a decorator).

    Parameters
    ----------
    name : str
        Canonical name, lower case (``"am-softmax"``).
    factory : callable, optional
        Called as ``factory(**params)``; returns a :class:`Loss`.
    aliases : tuple of str
        Other names that resolve to ``name`` (case-insensitive, ``-``/``_`` ignored).
    """
    def deco(fn):
        _LOSSES[name] = fn
        for alias in (name, *aliases):
            _ALIASES[_key(alias)] = name
        return fn

    return deco(factory) if factory is not None else deco


def names() -> list[str]:
    """Canonical names of the registered losses, sorted."""
    return sorted(_LOSSES)


def canonical(name: str) -> str:
    """The canonical registered name of ``name`` or an alias of it.

    Raises
    ------
    LossError
        If no loss is registered under that name; the message lists the names that exist.
    """
    found = _ALIASES.get(_key(name))
    if found is None:
        raise LossError(f"unknown loss {name!r}.{did_you_mean(str(name).lower(), _LOSSES)}")
    return found


def _accepted(factory: Callable) -> list[str]:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def get(name: str, **params) -> Loss:
    """Build the registered loss ``name`` (or an alias) with ``params``.

    Parameters
    ----------
    name : str
        A name from :func:`names` or an alias (``"CE"``, ``"cross-entropy"``, ``"A2"``).
    **params
        The loss's parameters (``get("am-softmax", m=0.35, s=30)``).

    Returns
    -------
    Loss

    Raises
    ------
    LossError
        Unknown name (the message lists what exists) or a parameter the loss does not take
        or whose value is out of range.

    Examples
    --------
    Cross-entropy of the logits ``(2, 0)`` for class 0 is ``log(1 + e^-2)``:

    >>> import math, torch
    >>> import landscape as ls
    >>> ce = ls.losses.get("ce")
    >>> loss = ce(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    >>> math.isclose(float(loss), math.log1p(math.exp(-2.0)), rel_tol=1e-6)
    True
    """
    canon = canonical(name)
    factory = _LOSSES[canon]
    accepted = _accepted(factory)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise LossError(f"loss {canon!r} has no parameter {', '.join(map(repr, unknown))}; "
                        f"it takes: {', '.join(accepted) or 'no parameters'}.")
    try:
        loss = factory(**params)
    except (TypeError, ValueError) as exc:
        raise LossError(f"loss {canon!r} rejected parameters {params}: {exc}") from exc
    loss._spec = canon + (f"({', '.join(f'{k}={v!r}' for k, v in params.items())})" if params else "")
    return loss


# -- combined losses and spec strings ------------------------------------------------------
class Combined(Loss):
    """Weighted sum ``sum_i w_i L_i`` of losses (seed 000's combined objective).

    Each part gets the features and the classifier weight only when it needs them.
    """

    def __init__(self, terms: list[tuple[float, Loss]]):
        super().__init__()
        if not terms:
            raise LossError("a combined loss needs at least one term, e.g. '0.5*ce + 0.5*hinge'.")
        self.weights = [float(w) for w, _ in terms]
        self.parts = nn.ModuleList([loss for _, loss in terms])
        self.needs_features = any(p.needs_features for p in self.parts)
        self._spec = " + ".join(f"{w:g}*{p.spec}" for w, p in zip(self.weights, self.parts))

    def forward(self, logits, target, features=None, weight=None):
        """Weighted sum of the parts' batch losses (features and weight only to the parts that need them)."""
        total = 0.0
        for w, part in zip(self.weights, self.parts):
            value = part(logits, target, features, weight) if part.needs_features else part(logits, target)
            total = total + w * value
        return total

    @property
    def has_phenotype(self) -> bool:
        """Whether every part is a :class:`ProbabilityLoss` (so the sum has a phenotype)."""
        return all(isinstance(p, ProbabilityLoss) for p in self.parts)

    def of_probabilities(self, target, probs):
        """Weighted sum of the parts' per-sample losses (only when every part has one)."""
        if not self.has_phenotype:
            raise LossError(f"the combined loss {self.spec!r} has a part that is not a function of target and "
                            "probabilities (a margin or logit loss), so it has no phenotype.")
        return sum(w * p.of_probabilities(target, probs) for w, p in zip(self.weights, self.parts))


_NUMBER = r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_TERM = re.compile(rf"\s*(?:(?P<w>{_NUMBER})\s*\*\s*)?(?P<name>[A-Za-z][\w\-]*)\s*(?:\((?P<args>[^()]*)\))?\s*")


def _parse_args(text: str, spec: str) -> dict:
    """``"m=4, s=30"`` -> ``{"m": 4, "s": 30}``, values as Python literals."""
    try:
        call = ast.parse(f"f({text})", mode="eval").body
        if not isinstance(call, ast.Call) or call.args:
            raise ValueError("positional argument")
        return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError) as exc:
        raise LossError(f"loss spec {spec!r}: cannot read the parameters ({text}); write them as "
                        "name(key=value, ...), e.g. 'l-softmax(m=4)'.") from exc


def parse_spec(spec: str) -> list[tuple[float | None, str, dict]]:
    """Split a spec string into ``(weight or None, name, params)`` terms.

    ``"0.25*hinge + 0.65*l-softmax(m=4)"`` -> ``[(0.25, "hinge", {}), (0.65, "l-softmax", {"m": 4})]``.

    Raises
    ------
    LossError
        When the string does not have the form ``w*name(k=v) + w*name + ...``.
    """
    terms, pos = [], 0
    text = str(spec)
    while True:
        m = _TERM.match(text, pos)
        if not m or not m.group("name"):
            raise LossError(f"cannot read loss spec {spec!r} at position {pos}; expected terms like "
                            "'0.25*hinge + 0.65*l-softmax(m=4)'.")
        weight = float(m.group("w")) if m.group("w") else None
        args = _parse_args(m.group("args"), spec) if m.group("args") is not None else {}
        terms.append((weight, m.group("name"), args))
        pos = m.end()
        if pos == len(text):
            return terms
        if text[pos] != "+":
            raise LossError(f"cannot read loss spec {spec!r} at position {pos} ({text[pos:]!r}); terms are "
                            "joined with '+', e.g. '0.25*hinge + 0.65*l-softmax(m=4)'.")
        pos += 1


def build(spec: str, **params) -> Loss:
    """Build a loss from a name or a combined spec string.

    Parameters
    ----------
    spec : str
        A registered name (``"ce"``), a name with parameters (``"am-softmax(m=0.2)"``) or a
        weighted sum (``"0.25*hinge + 0.65*l-softmax(m=4) + 0.34*a-softmax(m=4)"``).
    **params
        Parameters of a single-loss spec (merged over those in the string). A combined
        spec takes its parameters inside the string only.

    Returns
    -------
    Loss
        The loss itself for a single unweighted name, else a :class:`Combined`.

    Raises
    ------
    LossError
        Unknown names, bad parameters or an unreadable spec.
    """
    terms = parse_spec(spec)
    if len(terms) == 1 and terms[0][0] is None:
        _, name, args = terms[0]
        return get(name, **{**args, **params})
    if params:
        raise LossError(f"combined loss {spec!r} got extra parameters {params}; put each term's parameters in the "
                        "spec string, e.g. '0.5*ce + 0.5*l-softmax(m=4)'.")
    return Combined([(1.0 if w is None else w, get(name, **args)) for w, name, args in terms])
