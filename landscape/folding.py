"""Eval-mode batchnorm folded into the layer before it, as an exact rewrite of a model's forward pass.

In eval mode a batchnorm layer with running statistics is the per-channel affine map
``y = x * s + t`` with ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``. After a
convolution or linear layer it folds into that layer's weight and bias,
``conv(x, W) * s + t = conv(x, W * s) + (b * s + t)``: the same function of the same parameters
(``W``, ``b``, ``gamma``, ``beta``), so gradients and Hessians are unchanged, but the
activation-sized batchnorm operations disappear from the forward pass, from its backward pass
and from the double backward of Hessian-vector products, where PyTorch's batchnorm double
backward costs as much as a convolution (profiled on a ResNet-20, ``landscape bench hessian``).
A batchnorm that follows anything else becomes the two elementwise operations of its affine form.

The rewrite works on a ``torch.fx`` trace of the model (:func:`fold_batchnorm`); a model that
fx cannot trace is used as it is. The folded module shares the model's parameter and buffer
tensors under the same names, so ``torch.func.functional_call`` with the model's state runs it.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import fx, nn
from torch.nn import functional as F

_CONVS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` (and all their submodules) in eval mode, and restore every module's own mode after.

    The caller's model is left exactly in the mode it came in, submodule by submodule.
    """
    saved = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, training in saved:
            m.training = training


def _scale_shift(mean, var, gamma, beta, eps: float, bias=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``s`` and ``t`` of an eval-mode batchnorm, with a preceding layer's bias folded into ``t``."""
    s = torch.rsqrt(var + eps)
    if gamma is not None:
        s = s * gamma
    t = -mean * s if bias is None else (bias - mean) * s
    if beta is not None:
        t = t + beta
    return s, t


def folded_conv(x, weight, bias, mean, var, gamma, beta, eps: float, conv: str, kwargs: dict) -> torch.Tensor:
    """``batchnorm(conv(x, weight, bias))`` in eval mode computed as one convolution with folded weight and bias."""
    s, t = _scale_shift(mean, var, gamma, beta, eps, bias)
    w = weight * s.reshape((-1,) + (1,) * (weight.dim() - 1))
    if conv == "linear":
        return F.linear(x, w, t)
    return getattr(F, conv)(x, w, t, **kwargs)


def affine_batchnorm(x, mean, var, gamma, beta, eps: float) -> torch.Tensor:
    """An eval-mode batchnorm as its per-channel affine map (channels on dimension 1)."""
    s, t = _scale_shift(mean, var, gamma, beta, eps)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return x * s.reshape(shape) + t.reshape(shape)


class _Call(nn.Module):
    """``model.<method>(x)`` as a module, so fx can trace a method other than ``forward``."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x):
        return getattr(self.model, self.method)(x)


def _trace(model: nn.Module, method: str) -> fx.Graph:
    """The fx graph of ``model.<method>``, its targets named as in ``model`` (no wrapper prefix)."""
    graph = fx.Tracer().trace(_Call(model, method))
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr") and isinstance(node.target, str):
            assert node.target.startswith("model.")
            node.target = node.target[len("model."):]
    return graph


def _is_eval_affine(bn: nn.Module) -> bool:
    return (isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.track_running_stats
            and bn.running_mean is not None and bn.running_var is not None)


def _fold(graph: fx.Graph, modules: dict[str, nn.Module]) -> int:
    """Rewrite every eval-mode batchnorm call in ``graph``; returns how many were rewritten."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_module" or not _is_eval_affine(modules.get(node.target)) or len(node.args) != 1:
            continue
        bn, name = modules[node.target], node.target
        prev = node.args[0]
        layer = modules.get(prev.target) if isinstance(prev, fx.Node) and prev.op == "call_module" else None
        foldable = (layer is not None and len(prev.users) == 1 and len(prev.args) == 1 and not prev.kwargs
                    and ((type(layer) in _CONVS and layer.padding_mode == "zeros") or type(layer) is nn.Linear))
        with graph.inserting_before(node):
            stats = [graph.get_attr(f"{name}.running_mean"), graph.get_attr(f"{name}.running_var")]
            affine = [graph.get_attr(f"{name}.{p}") if bn.affine else None for p in ("weight", "bias")]
            if foldable:
                w = graph.get_attr(f"{prev.target}.weight")
                b = graph.get_attr(f"{prev.target}.bias") if layer.bias is not None else None
                if type(layer) is nn.Linear:
                    conv, kwargs = "linear", {}
                else:
                    conv = _CONVS[type(layer)].__name__
                    kwargs = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                                  groups=layer.groups)
                new = graph.call_function(folded_conv, (prev.args[0], w, b, *stats, *affine, bn.eps, conv, kwargs))
            else:
                new = graph.call_function(affine_batchnorm, (node.args[0], *stats, *affine, bn.eps))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        if foldable:
            graph.erase_node(prev)
        count += 1
    return count


def fold_batchnorm(model: nn.Module, *, features: bool = False, check: torch.Tensor | None = None
                   ) -> nn.Module | None:
    """The model's eval-mode forward with every batchnorm folded (see the module docstring), or None.

    Parameters
    ----------
    model : nn.Module
        Traced in eval mode (its own mode is restored); never modified.
    features : bool
        Trace ``model.features`` instead of ``forward`` (for losses on the penultimate features);
        the result then has ``features`` (the folded trace) and ``head`` (the model's own head).
    check : torch.Tensor, optional
        A few inputs on which the folded module must reproduce the model (relative 1e-4 in
        float32); a mismatch (a trace that baked in data-dependent control flow) returns None.

    Returns
    -------
    nn.Module or None
        A ``torch.fx.GraphModule`` sharing the model's parameters and buffers under the same
        names; None when fx cannot trace the model, it has no eval-mode batchnorm, or the check fails.
    """
    method = "features" if features else "forward"
    try:
        with eval_mode(model):
            graph = _trace(model, method)
    except Exception:  # noqa: BLE001 - any model fx cannot trace is simply used unfolded
        return None
    if _fold(graph, dict(model.named_modules())) == 0:
        return None
    graph.lint()
    folded = fx.GraphModule(model, graph)
    if features:
        folded.add_submodule("head", model.head)
        folded.features = folded.forward  # objective.outputs calls features(x), then head
    if check is not None:
        with torch.no_grad(), eval_mode(model, folded):
            ref = getattr(model, method)(check)
            out = folded(check)
        if not (isinstance(ref, torch.Tensor) and isinstance(out, torch.Tensor) and ref.shape == out.shape
                and bool(torch.isfinite(ref).all())  # non-finite weights: nothing to compare, use the model as it is
                and torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max().clamp_min(1)))):
            return None
    return folded
