"""Where a classifier looks: Grad-CAM, Grad-CAM++, guided backpropagation and Guided Grad-CAM.

Seed 002 explains its classifiers with Grad-CAM (Selvaraju et al. 2017) and sharpens the maps
with Guided Grad-CAM. For a target class ``c`` with pre-softmax score ``S_c`` and the
activations ``A`` (``K`` channels) of a convolutional layer:

* **Grad-CAM**: ``w_k = mean_ij dS_c/dA_kij``; ``map = ReLU(sum_k w_k A_k)``.
* **Grad-CAM++** (Chattopadhay et al. 2018, with the usual ``exp(S_c)`` closed form):
  ``a_kij = g^2 / (2 g^2 + (sum_ab A_kab) g^3)`` with ``g = dS_c/dA_kij``,
  ``w_k = sum_ij a_kij ReLU(g)``; ``map = ReLU(sum_k w_k A_k)``.
* **guided backpropagation** (Springenberg et al. 2015): the input gradient of ``S_c`` where
  every ReLU passes back only positive gradients at positive inputs.
* **Guided Grad-CAM**: guided backpropagation times the upsampled Grad-CAM map.

Maps are upsampled bilinearly to the input size and divided by their per-image maximum (they
are non-negative after the ReLU, so zero keeps meaning "no positive evidence"; an all-zero
map stays zero instead of dividing by zero).

The model is left exactly as it was: activations are captured by a forward hook removed in
``finally``; guided ReLUs are swapped in by a :class:`torch.overrides.TorchFunctionMode` that
is active only during one forward pass (it catches ``nn.ReLU``, in-place or not, and the
functional ``torch.relu``/``F.relu``), so no module is modified; gradients are taken with
:func:`torch.autograd.grad` with respect to activations and inputs, so parameter ``.grad``
is never touched; the train/eval flags are restored.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .checkpoint import Checkpoint
from .data import Dataset
from .errors import ArgumentError, did_you_mean
from .results import Result

METHODS = ("gradcam", "gradcam++", "guided-backprop", "guided-gradcam")


@dataclasses.dataclass(repr=False)  # keep Result's short summary instead of dumping arrays
class CAM(Result):
    """Class-activation maps of a batch of images.

    Attributes
    ----------
    images : np.ndarray
        The raw images ``(N, C, H, W)`` in [0, 1], for display.
    maps : np.ndarray
        ``(N, H, W)`` in [0, 1]: the Grad-CAM (or Grad-CAM++) map upsampled to the input size
        and divided by its per-image maximum; for ``guided-backprop`` the channel-wise maximum
        of ``|guided|``, scaled the same way.
    guided : np.ndarray or None
        ``(N, C, H, W)``: guided backpropagation (``guided-backprop``) or guided
        backpropagation times ``maps`` (``guided-gradcam``); None for the other methods.
    raw : np.ndarray or None
        ``(N, h, w)``: the map at the layer's resolution, before upsampling and scaling
        (None for ``guided-backprop``). Comparable across checkpoints, unlike ``maps``.
    pred : np.ndarray
        Predicted class per image.
    target : np.ndarray
        The class each map explains.
    confidence : np.ndarray
        Softmax probability of the predicted class.
    labels : np.ndarray or None
        True labels, when the images came from a :class:`~landscape.Dataset`.
    classes : list of str
        Class names, indexed by class.
    meta : dict
        ``method``, ``layer``, ``layer_shape``, ``checkpoint``, ``digest``, ``data``, ``indices``.
    """

    images: np.ndarray
    maps: np.ndarray
    guided: np.ndarray | None
    raw: np.ndarray | None
    pred: np.ndarray
    target: np.ndarray
    confidence: np.ndarray
    labels: np.ndarray | None
    classes: list
    meta: dict = dataclasses.field(default_factory=dict)

    kind = "cam"

    def __len__(self) -> int:
        return len(self.pred)


# -- the model a map is computed for ----------------------------------------------------------
@dataclasses.dataclass
class _Subject:
    """What Grad-CAM needs from a checkpoint or a plain module."""

    model: nn.Module
    normalize: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    dtype: torch.dtype
    name: str
    digest: str
    classes: list | None
    input_shape: tuple | None


def _subject(ck: Checkpoint | nn.Module) -> _Subject:
    model = ck.model if isinstance(ck, Checkpoint) else ck
    if not isinstance(model, nn.Module):
        raise ArgumentError("gradcam needs a Checkpoint (ls.load_checkpoint) or an nn.Module, "
                            f"got {type(ck).__name__}.")
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    if isinstance(ck, Checkpoint):
        shape = ck.meta.get("input_shape")
        return _Subject(model, ck.normalize, ck.device, dtype, ck.name, ck.digest, ck.meta.get("classes"),
                        tuple(shape) if shape else None)
    device = param.device if param is not None else torch.device("cpu")
    return _Subject(model, lambda x: x, device, dtype, type(model).__name__, "", None, None)


def _images(images: Dataset | np.ndarray | torch.Tensor,
            subject: _Subject) -> tuple[torch.Tensor, np.ndarray | None, str]:
    """Raw images ``(N, C, H, W)`` on the model's device and dtype, the labels if known, a name."""
    labels, name = None, "images"
    if isinstance(images, Dataset):
        labels, name = np.asarray(images.y), images.name or "dataset"
        images = images.x
    x = torch.as_tensor(images).detach()
    if x.dim() != 4:
        raise ArgumentError(f"images must have shape (N, C, H, W), got {tuple(x.shape)}; for one image use x[None].")
    if len(x) == 0:
        raise ArgumentError("images is empty; give at least one image.")
    if subject.input_shape is not None and tuple(x.shape[1:]) != subject.input_shape:
        raise ArgumentError(f"images have shape {tuple(x.shape[1:])} but {subject.name!r} expects "
                            f"{subject.input_shape}; use the dataset it was trained on.")
    # a copy, so that images made under torch.inference_mode can enter autograd
    return x.to(device=subject.device, dtype=subject.dtype, copy=True), labels, name


# -- finding the layer ------------------------------------------------------------------------
def conv_layers(model: nn.Module) -> list[str]:
    """Names of the 2-d convolutional layers of ``model``, in registration order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _last_block_output(model: nn.Module, x: torch.Tensor) -> str | None:
    """The module whose output is the last convolutional block's output (see :func:`resolve_layer`).

    Among the modules a forward pass on ``x`` finishes after the last convolution, with an output of
    that convolution's spatial size, the last one's output is the block's; the first module that
    returned that very tensor (a ReLU rather than the ``Sequential`` around it) is the one named.
    """
    seen: list[tuple[str, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda mod, inp, out, name=name: seen.append((name, out)))
               for name, m in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    convs = [i for i, (name, _) in enumerate(seen) if isinstance(model.get_submodule(name), nn.Conv2d)]
    if not convs:
        return None
    size = seen[convs[-1]][1].shape[-2:]
    after = [(name, out) for name, out in seen[convs[-1]:]
             if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-2:] == size]
    final = after[-1][1]
    return next(name for name, out in after if out is final)


def resolve_layer(model: nn.Module, target_layer: str | nn.Module | None, x: torch.Tensor) -> tuple[str, nn.Module]:
    """``(name, module)`` of the layer to explain; by default the last convolutional block's rectified output.

    Grad-CAM weighs the feature maps of "the last convolutional layer" (Selvaraju et al. 2017), which
    their code and seed 002's Grad-CAM figures (Figs. 3.7, 5.8) take after its batchnorm and ReLU:
    the rectified output of the last convolutional block, not the raw ``Conv2d`` before them. So the
    default is the last module that a forward pass runs after the last convolution at that
    convolution's spatial size: ``body.relu3`` of the zoo's ``cnn`` (the ReLU after ``body.conv3``),
    the last residual block of ``resnet`` and ``plain`` (which ends in a ReLU). At the raw
    convolution, maps differ by 0.08 on average (up to 1.0) and Grad-CAM++ gives all-zero maps for
    some digits; name that layer (``target_layer="body.conv3"``) to get it.

    Raises
    ------
    ArgumentError
        The model has no convolutional layer, or ``target_layer`` names no module (the
        message lists the convolutional layers).
    """
    modules = dict(model.named_modules())
    convs = conv_layers(model)
    if target_layer is None:
        if not convs:
            raise ArgumentError(f"{type(model).__name__} has no convolutional layer (nn.Conv2d), so Grad-CAM has no "
                                "spatial feature map to explain; name a module whose output is (N, C, H, W) with "
                                "target_layer (--layer on the CLI), or use method 'guided-backprop'.")
        name = _last_block_output(model, x[:1]) or convs[-1]
        return name, modules[name]
    if isinstance(target_layer, nn.Module):
        for name, m in modules.items():
            if m is target_layer:
                return name, m
        raise ArgumentError("target_layer is a module that is not part of the model; pass one of its layers "
                            f"or a name. Convolutional layers: {', '.join(convs) or 'none'}.")
    if target_layer not in modules or target_layer == "":
        hint = did_you_mean(str(target_layer), convs) if convs else " The model has no convolutional layer."
        raise ArgumentError(f"the model has no layer named {target_layer!r}; name one of its convolutional "
                            f"layers.{hint}")
    return target_layer, modules[target_layer]


# -- the three passes ---------------------------------------------------------------------------
@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration (batchnorm must not mix the images), every flag restored after."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


def _target_array(target: int | Sequence[int] | np.ndarray | torch.Tensor | None, n: int) -> np.ndarray | None:
    """The class to explain per image (None: the predicted one)."""
    if target is None:
        return None
    t = np.asarray(target.cpu() if isinstance(target, torch.Tensor) else target).reshape(-1)
    if t.dtype.kind not in "iu":
        raise ArgumentError(f"target must be class indices (integers), got {t.dtype} values {t.tolist()[:5]}.")
    if t.size == 1:
        t = np.repeat(t, n)
    if t.size != n:
        raise ArgumentError(f"target has {t.size} entries for {n} images; give one class, one per image, or None "
                            "for the predicted class.")
    return t.astype(np.int64)


def _targets(target: np.ndarray | None, logits: torch.Tensor) -> torch.Tensor:
    if target is None:
        return logits.argmax(1)
    num_classes = logits.shape[1]
    if target.min() < 0 or target.max() >= num_classes:
        raise ArgumentError(f"target classes must lie in [0, {num_classes - 1}], got {target.tolist()[:10]}.")
    return torch.as_tensor(target, device=logits.device)


def _class_score(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Images are independent in eval mode, so the gradient of the sum is each image's own gradient.
    return logits.gather(1, target[:, None]).sum()


def _layer_pass(model, layer, x, target):
    """Forward once, capturing the layer output; return ``(logits, A, dS/dA, target)``."""
    captured = {}

    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ArgumentError(f"the target layer's output is {shape}, not a (N, C, H, W) feature map; "
                                "choose a convolutional layer.")
        captured["A"] = output
        # Later in-place ops (ReLU(inplace=True)) then modify the clone, never the captured map.
        return output.clone()

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(x)
            if "A" not in captured:
                raise ArgumentError("the target layer did not run in the forward pass; choose a layer the model uses.")
            target = _targets(target, logits)
            (grads,) = torch.autograd.grad(_class_score(logits, target), captured["A"])
    finally:
        handle.remove()
    return logits.detach(), captured["A"].detach(), grads, target


def _gradcam_weights(A: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    return grads.mean(dim=(2, 3))


def _gradcampp_weights(A: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    g2 = grads.pow(2)
    denom = 2 * g2 + A.sum(dim=(2, 3), keepdim=True) * g2 * grads
    # Where the gradient (or the denominator) is zero the pixel carries no weight.
    alpha = torch.where((grads != 0) & (denom != 0), g2 / torch.where(denom != 0, denom, 1), 0)
    return (alpha * grads.clamp(min=0)).sum(dim=(2, 3))


def _weighted_map(A: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return torch.relu((weights[:, :, None, None] * A).sum(1))


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients at positive inputs."""

    @staticmethod
    def forward(ctx, x):
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * ((out > 0) & (grad > 0)).to(grad.dtype)


class _GuidedReLUMode(TorchFunctionMode):
    """Route every ReLU call of a forward pass through :class:`_GuidedReLU`; modules stay untouched."""

    _OUT_OF_PLACE = {F.relu, torch.relu, torch.Tensor.relu}
    _IN_PLACE = {F.relu_, torch.relu_, torch.Tensor.relu_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._OUT_OF_PLACE or func in self._IN_PLACE:
            x = args[0] if args else kwargs["input"]
            out = _GuidedReLU.apply(x)
            inplace = func in self._IN_PLACE or (func is F.relu and (kwargs.get("inplace") or
                                                                     (len(args) > 1 and args[1])))
            if inplace:  # keep the in-place contract: the caller may use its input afterwards
                return x.copy_(out)
            return out
        return func(*args, **kwargs)


def guided_backprop(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Guided-backpropagation gradient of the class scores with respect to the (normalised) input ``x``."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        with _GuidedReLUMode():
            logits = model(x)
        (grad,) = torch.autograd.grad(_class_score(logits, target), x)
    return grad


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def scale_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Divide each non-negative map by its maximum; all-zero maps stay zero."""
    peak = maps.flatten(1).amax(1).clamp(min=0)[:, None, None]
    return torch.where(peak > 0, maps / torch.where(peak > 0, peak, 1), torch.zeros_like(maps))


# -- the public function --------------------------------------------------------------------------
def gradcam(ck: Checkpoint | nn.Module, images: Dataset | np.ndarray | torch.Tensor,
            target_layer: str | nn.Module | None = None, method: str = "gradcam",
            target: int | Sequence[int] | np.ndarray | torch.Tensor | None = None,
            batch_size: int = 256) -> CAM:
    """Class-activation maps of ``images`` under a checkpoint's model.

    Parameters
    ----------
    ck : Checkpoint or nn.Module
        A loaded checkpoint (its input normalisation is applied) or a plain module (images are
        fed as given). Everything runs on the model's device.
    images : Dataset, np.ndarray or torch.Tensor
        Raw images ``(N, C, H, W)`` in [0, 1] (a :class:`~landscape.Dataset` also gives labels).
    target_layer : str or nn.Module, optional
        The layer whose activations are explained, by name (``"body.conv3"``) or as a module;
        by default the last convolutional layer the forward pass runs.
    method : {"gradcam", "gradcam++", "guided-backprop", "guided-gradcam"}
        What to compute (see the module docstring).
    target : int, sequence of int or None
        Class to explain: one for all images, one per image, or None for the predicted class.
    batch_size : int
        Images per forward/backward pass (bounds memory).

    Returns
    -------
    CAM
        ``maps`` in [0, 1], ``guided`` for the guided methods, predictions and confidences.

    Raises
    ------
    ArgumentError
        Unknown method or layer, a model without convolutional layer, bad image shape or target.
    """
    if method not in METHODS:
        raise ArgumentError(f"unknown Grad-CAM method {method!r}.{did_you_mean(method, METHODS)}")
    if batch_size < 1:
        raise ArgumentError(f"batch_size must be at least 1, got {batch_size}.")
    with torch.inference_mode(False):  # gradients are needed even when the caller is in inference mode
        return _gradcam(_subject(ck), images, target_layer, method, target, batch_size)


def _gradcam(subject: _Subject, images: Dataset | np.ndarray | torch.Tensor, target_layer: str | nn.Module | None,
             method: str, target: Any, batch_size: int) -> CAM:
    raw_images, labels, data_name = _images(images, subject)
    x_all = subject.normalize(raw_images)
    targets = _target_array(target, len(x_all))
    parts: dict[str, list[torch.Tensor]] = {}
    with _eval_mode(subject.model):
        layer_name, layer = None, None
        if method != "guided-backprop":
            layer_name, layer = resolve_layer(subject.model, target_layer, x_all)
        for start in range(0, len(x_all), batch_size):
            x = x_all[start:start + batch_size]
            t = None if targets is None else targets[start:start + batch_size]
            for key, value in _explain(subject.model, layer, x, method, t).items():
                parts.setdefault(key, []).append(value.detach().cpu())
    out = {k: torch.cat(v).numpy() for k, v in parts.items()}
    meta = {"method": method, "layer": layer_name, "layer_shape": list(out["raw"].shape[1:]) if "raw" in out else None,
            "checkpoint": subject.name, "digest": subject.digest, "data": data_name, "n": int(len(x_all)),
            "interpolation": "bilinear", "scaling": "per-image maximum", "device": str(subject.device)}
    num_classes = out["probs"].shape[1]
    classes = list(subject.classes) if subject.classes else [str(i) for i in range(num_classes)]
    if isinstance(images, Dataset):
        classes = list(images.classes)
    return CAM(images=raw_images.float().cpu().numpy(), maps=out["maps"].astype(np.float32), guided=out.get("guided"),
               raw=out.get("raw"), pred=out["pred"], target=out["target"],
               confidence=out["probs"][np.arange(len(out["pred"])), out["pred"]].astype(np.float32),
               labels=labels, classes=classes, meta=meta)


def _explain(model: nn.Module, layer: nn.Module | None, x: torch.Tensor, method: str,
             target: np.ndarray | None) -> dict[str, torch.Tensor]:
    """The arrays of one batch: maps, raw, guided, pred, target, probs."""
    result: dict[str, torch.Tensor] = {}
    if layer is not None:
        logits, A, grads, target = _layer_pass(model, layer, x, target)
        weights = (_gradcampp_weights if method == "gradcam++" else _gradcam_weights)(A, grads)
        raw = _weighted_map(A, weights)
        result["raw"] = raw
        result["maps"] = scale_to_unit(_upsample(raw, tuple(x.shape[2:])))
    else:
        with torch.no_grad():
            logits = model(x)
        target = _targets(target, logits)
    if method in ("guided-backprop", "guided-gradcam"):
        guided = guided_backprop(model, x, target)
        if method == "guided-gradcam":
            guided = guided * result["maps"][:, None]
        else:
            result["maps"] = scale_to_unit(guided.abs().amax(1))
        result["guided"] = guided
    result["pred"] = logits.argmax(1)
    result["target"] = target
    result["probs"] = torch.softmax(logits.float(), dim=1)
    return result


__all__ = ["CAM", "gradcam", "guided_backprop", "conv_layers", "resolve_layer", "scale_to_unit", "METHODS"]
