"""Feature extraction: the activations a classifier computes for a dataset.

By default the features are the model's penultimate embedding, ``model.features(x)``
(what margin losses act on and what seed 002 draws on the hypersphere). Any named
submodule can be read instead, through a forward hook that is removed afterwards, even
when the forward pass fails.

Data always reach the model through :meth:`landscape.Checkpoint.prepare`, so inputs are
normalised exactly as in training, and its output through
:func:`landscape.objective.logits_of`, so a model returning a tuple, a dict or an object with
``.logits`` is read through its output adapter.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from .checkpoint import Checkpoint
from .data import Dataset
from .errors import ArgumentError, check_scalar, did_you_mean
from .models import split_head
from .objective import logits_of
from .results import Result

DEFAULT_LAYER = "features"


@dataclasses.dataclass(repr=False)
class Features(Result):
    """Features of a dataset under one checkpoint.

    Attributes
    ----------
    x : np.ndarray
        float32 features ``(N, d)``; activations of a layer with more dimensions are flattened.
    y : np.ndarray
        int64 true labels ``(N,)``.
    pred : np.ndarray
        int64 predicted labels ``(N,)`` (argmax of the model's logits).
    classes : list of str
        Class names, indexed by label.
    meta : dict
        ``layer`` (``"features"`` for ``model.features(x)``), ``checkpoint`` (name), ``digest``,
        ``arch``, ``loss``, ``data`` (dataset name), ``shape`` (activation shape of one sample).
    """

    x: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    classes: list = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def dim(self) -> int:
        """Feature dimension ``d``."""
        return int(self.x.shape[1])

    @property
    def accuracy(self) -> float:
        """Fraction of samples whose prediction equals the label."""
        return float(np.mean(self.pred == self.y)) if len(self.y) else float("nan")

    @property
    def name(self) -> str:
        """Short label for figures and tables: the checkpoint name."""
        return str(self.meta.get("checkpoint", "features"))


def layer_names(model: nn.Module) -> list[str]:
    """Names of the submodules of ``model`` that :func:`extract_features` can read (``""``, the root, excluded)."""
    return [name for name, _ in model.named_modules() if name]


@contextlib.contextmanager
def _capture(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record the outputs of ``module`` while the block runs; the hook is removed on exit, even on error."""
    outputs: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise ArgumentError(f"layer {type(_module).__name__} returns a {type(output).__name__}, not a tensor; "
                                "pick a layer whose output is one tensor.")
        outputs.append(output.detach())

    handle = module.register_forward_hook(hook)
    try:
        yield outputs
    finally:
        handle.remove()


def _resolve_layer(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if not layer or layer not in modules:
        hint = did_you_mean(layer, layer_names(model))
        raise ArgumentError(f"model {type(model).__name__} has no layer {layer!r}; leave the layer out for the "
                            f"penultimate features, or use one of its layer names.{hint}")
    return modules[layer]


@contextlib.contextmanager
def _reader(model: nn.Module, layer: str | None) -> Iterator[Callable[[torch.Tensor], tuple[torch.Tensor, ...]]]:
    """Yield a function mapping a batch to ``(features, logits)``; any hook lives only inside the block."""
    if layer is None:
        parts = split_head(model)
        if parts is None:
            raise ArgumentError(f"model {type(model).__name__} has no `features(x)` method and linear `head`, so "
                                "there is no default feature layer; name one with layer=... ."
                                f"{did_you_mean('', layer_names(model))}")
        feats, head = parts

        def run(xb):
            f = feats(xb)
            return f, head(f)

        yield run
        return
    module = _resolve_layer(model, layer)
    with _capture(module) as seen:
        def run(xb):
            seen.clear()
            logits = logits_of(model, xb)  # the model's output adapter picks the logits
            if not seen:
                raise ArgumentError(f"layer {layer!r} is not used by {type(model).__name__}'s forward pass; "
                                    "pick a layer the model calls.")
            # a module called more than once per forward (shared weights) gives its last call
            return seen[-1], logits

        yield run


def extract_features(ck: Checkpoint, data: Dataset, layer: str | None = None, batch_size: int = 512) -> Features:
    """Activations of ``layer`` (default: the penultimate features) for every sample of ``data``.

    Parameters
    ----------
    ck : Checkpoint
        A loaded checkpoint; its model runs in eval mode on its device.
    data : Dataset
        The samples; normalised as in training by ``ck.prepare``.
    layer : str, optional
        Name of a submodule (as in ``model.named_modules()``, e.g. ``"body.3"`` or
        ``"stages.1"``). Its output is recorded with a forward hook that is removed
        afterwards and flattened to ``(N, d)``. ``None`` uses ``model.features(x)``.
    batch_size : int
        Samples per forward pass.

    Returns
    -------
    Features
        ``x`` (N, d) float32, ``y``, ``pred`` and ``meta`` naming layer, checkpoint and data.

    Raises
    ------
    ArgumentError
        If ``layer`` is not a submodule (the message lists the available names), the model
        has no default feature layer, or ``batch_size`` is not positive.
    """
    batch_size = check_scalar(batch_size, "batch_size", int, min=1)
    x, y = ck.prepare(data)
    chunks, preds, shape = [], [], None
    with torch.inference_mode(), _reader(ck.model, layer) as run:
        for i in range(0, len(x), int(batch_size)):
            f, logits = run(x[i:i + int(batch_size)])
            shape = tuple(f.shape[1:])
            chunks.append(f.flatten(1).float().cpu())
            preds.append(logits.argmax(1).cpu())
    if not chunks:
        raise ArgumentError(f"dataset {data.name!r} is empty; there are no features to extract.")
    meta = {"layer": layer or DEFAULT_LAYER, "checkpoint": ck.name, "digest": ck.digest,
            "arch": ck.meta.get("arch"), "loss": ck.meta.get("loss"), "data": data.name, "shape": list(shape)}
    return Features(x=torch.cat(chunks).numpy(), y=y.cpu().numpy().astype(np.int64),
                    pred=torch.cat(preds).numpy().astype(np.int64), classes=list(data.classes), meta=meta)


__all__ = ["Features", "extract_features", "layer_names"]
