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

**Which layer.** By default the last convolutional block's rectified output (see
:func:`resolve_layer`); for a vision transformer (token outputs after the patch embedding) the
input of the last block's attention (``blocks.11.norm1`` of the zoo's ``vit_tiny``, the layer
pytorch-grad-cam recommends: after it only the class token reaches the head, so the patch tokens
of later outputs have zero gradient). ``target_layer`` may name several layers (a list, or a
pattern such as ``"blocks.*.norm1"`` matched against module names with :mod:`fnmatch`): every
map then comes from the same single forward and backward pass, and the result is a dict of
:class:`CAM` by layer name.

**Token layers.** A layer output ``(N, T, D)`` is a sequence of tokens: the class token (and any
other prefix tokens) is dropped and the patch tokens are laid out on their grid, whose aspect is
the input's (:func:`tokens_to_grid`: 65 tokens of a 32x32 image are a class token and an 8x8
grid). Other layouts (Swin's ``(N, h, w, C)``, register tokens) take ``reshape=``: a function
``A -> (N, C, h, w)`` applied alike to the activations and to their gradients, as
pytorch-grad-cam's ``reshape_transform``; it must only select and rearrange entries.

**Outputs and precision.** The class score is read through the model's output adapter
(:func:`landscape.objective.logits_of`; ``output=`` sets it, as everywhere), so models returning
tuples, dicts or objects with ``.logits`` work. ``dtype=torch.bfloat16`` (or ``float16``) runs
the forward passes under :func:`torch.autocast`, except the model's input layer (its first
convolution or linear layer, :func:`input_layer`: a stem, a ViT's patch embedding), which runs
in float32; autocast then runs every later convolution and matrix product in bfloat16 (on the
shipped cnn: ``body.conv2``, ``body.conv3`` and the head, 98 % of the multiply-adds), the
backward pass follows the forward's dtypes, and the activations and gradients of the target
layer are upcast and combined in float32 (weights, map, upsampling and scaling). Where the error
comes from, measured on the shipped cnn's 360 test digits (max / median over maps of the largest
pixel difference to the float32 map): all of autocast 0.013 / 0.0035 (4 maps above 0.01); the
target layer and the head alone in bfloat16 0.0022 / 0.0009; running them in float32 after a
bfloat16 body changes nothing (0.013); the input layer alone in bfloat16 0.0073 / 0.0021, as
much as the rest together, for 2 % of the work. With the input layer in float32: Grad-CAM (and
Guided Grad-CAM's map) 0.0077 / 0.0028, Grad-CAM++ 0.0053 / 0.0024.

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
import fnmatch
import math
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .checkpoint import Checkpoint, as_checkpoint
from .data import Dataset
from .errors import ArgumentError, check_choice, check_scalar, did_you_mean
from .objective import OutputSpec, logits_of
from .results import Result

METHODS = ("gradcam", "gradcam++", "guided-backprop", "guided-gradcam")
DTYPES = {None: None, "float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
PREFIX_TOKENS = (1, 0, 2)  # class token (ViT), none, class + distillation token (DeiT): tried in this order
Reshape = Callable[[torch.Tensor], torch.Tensor]


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


def _subject(ck: Any, output: OutputSpec = None) -> _Subject:
    """What Grad-CAM needs, taken through :func:`~landscape.checkpoint.as_checkpoint` (``output=`` sets the adapter)."""
    plain = isinstance(ck, nn.Module)
    ck = as_checkpoint(ck, output=output)
    param = next(ck.model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    shape = ck.meta.get("input_shape")
    return _Subject(ck.model, ck.normalize, ck.device, dtype, type(ck.model).__name__ if plain else ck.name,
                    ck.digest, ck.meta.get("classes"), tuple(shape) if shape else None)


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


def _record(model: nn.Module, x: torch.Tensor) -> list[tuple[str, Any]]:
    """``(name, output)`` of every named module, in the order a no-grad forward pass on ``x`` finishes them."""
    seen: list[tuple[str, Any]] = []
    handles = [m.register_forward_hook(lambda mod, inp, out, name=name: seen.append((name, out)))
               for name, m in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def token_grid(tokens: int, size: tuple[int, int]) -> tuple[int, int, int] | None:
    """``(prefix, h, w)``: ``tokens`` as ``prefix`` leading tokens and an ``h x w`` grid of the input's aspect.

    The prefixes of :data:`PREFIX_TOKENS` are tried in turn (a class token first); None if none fits.
    """
    height, width = size
    for prefix in PREFIX_TOKENS:
        patches = tokens - prefix
        if patches < 1:
            continue
        h = round(math.sqrt(patches * height / width))
        if h >= 1 and patches % h == 0 and h * width == (patches // h) * height:
            return prefix, h, patches // h
    return None


def tokens_to_grid(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Token activations ``(N, T, D)`` as a feature map ``(N, D, h, w)``, prefix tokens dropped (:func:`token_grid`).

    Raises
    ------
    ArgumentError
        ``T`` is no grid of the input's aspect after 0, 1 or 2 prefix tokens.
    """
    grid = token_grid(tokens.shape[1], size)
    if grid is None:
        raise ArgumentError(f"the layer's {tokens.shape[1]} tokens are no grid of the {size[0]}x{size[1]} input's "
                            "aspect after a class token (or none, or two); pass reshape=, a function "
                            "A -> (N, C, h, w).")
    prefix, h, w = grid
    return tokens[:, prefix:].reshape(len(tokens), h, w, tokens.shape[2]).permute(0, 3, 1, 2)


def _is_tokens(out: Any, size: tuple[int, int]) -> bool:
    return isinstance(out, torch.Tensor) and out.dim() == 3 and token_grid(out.shape[1], size) is not None


def _default_layer(model: nn.Module, x: torch.Tensor) -> str | None:
    """The default layer's name (see :func:`resolve_layer`); None when no convolution runs."""
    seen = _record(model, x[:1])
    convs = [i for i, (name, _) in enumerate(seen) if isinstance(model.get_submodule(name), nn.Conv2d)]
    if not convs:
        return None
    size = tuple(x.shape[-2:])
    later = seen[convs[-1] + 1:]
    tokens = [(name, out) for name, out in later if _is_tokens(out, size)]
    if tokens:
        return _last_token_layer(model, x[:1], tokens, size)
    conv_size = seen[convs[-1]][1].shape[-2:]
    after = [(name, out) for name, out in seen[convs[-1]:]
             if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-2:] == conv_size]
    final = after[-1][1]
    return next(name for name, out in after if out is final)


def _last_token_layer(model: nn.Module, x: torch.Tensor, tokens: list[tuple[str, torch.Tensor]],
                      size: tuple[int, int]) -> str:
    """The last token output of the model's width whose patch tokens reach the class score (nonzero gradient)."""
    width = tokens[-1][1].shape[2]
    names = list(dict.fromkeys(name for name, out in tokens if out.shape[2] == width))
    layers = [model.get_submodule(name) for name in names]
    _, acts, grads, _ = _layers_pass(model, layers, x, None, [None] * len(layers), None)
    reaching = [name for name, g in zip(names, grads) if tokens_to_grid(g, size).abs().amax() > 0]
    return reaching[-1] if reaching else names[-1]


def _layer_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


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

    When token outputs ``(N, T, D)`` follow the last convolution (a vision transformer's patch
    embedding), the default is the last module of the token width ``D`` whose patch tokens reach the
    class score: ``blocks.11.norm1`` of ``vit_tiny``, the input of the last attention.

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
        name = _default_layer(model, x) or convs[-1]
        return name, modules[name]
    if isinstance(target_layer, nn.Module):
        for name, m in modules.items():
            if m is target_layer:
                return name, m
        raise ArgumentError("target_layer is a module that is not part of the model; pass one of its layers "
                            f"or a name. Convolutional layers: {', '.join(convs) or 'none'}.")
    if not isinstance(target_layer, str) or target_layer not in modules or target_layer == "":
        hint = did_you_mean(str(target_layer), convs) if convs else " The model has no convolutional layer."
        raise ArgumentError(f"the model has no layer named {target_layer!r}; name one of its convolutional "
                            f"layers.{hint}")
    return target_layer, modules[target_layer]


def is_pattern(name: Any) -> bool:
    """Whether a layer name is an :mod:`fnmatch` pattern (``*``, ``?`` or ``[``) rather than a name."""
    return isinstance(name, str) and any(c in name for c in "*?[")


def several_layers(target_layer: Any) -> bool:
    """Whether ``target_layer`` asks for several layers (a list or tuple, or a pattern), so a dict of CAMs."""
    return isinstance(target_layer, (list, tuple)) or is_pattern(target_layer)


def resolve_layers(model: nn.Module, target_layer: Any, x: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """Every ``(name, module)`` that ``target_layer`` names: one layer, a list of them, or patterns.

    A pattern (:func:`is_pattern`) selects every named module whose name matches it, in
    registration order; a list may mix names, modules and patterns. Duplicates are dropped.

    Raises
    ------
    ArgumentError
        A pattern matches no module, a list is empty, or a name names no module.
    """
    items = list(target_layer) if isinstance(target_layer, (list, tuple)) else [target_layer]
    if not items:
        raise ArgumentError("target_layer is an empty list; name at least one layer, or None for the default.")
    found: dict[str, nn.Module] = {}
    names = _layer_names(model)
    for item in items:
        if is_pattern(item):
            matched = [n for n in names if fnmatch.fnmatchcase(n, item)]
            if not matched:
                raise ArgumentError(f"the layer pattern {item!r} matches no module of {type(model).__name__}; "
                                    f"its modules are named like {', '.join(names[:8])}, ...")
            found.update((n, model.get_submodule(n)) for n in matched)
        else:
            name, module = resolve_layer(model, item, x)
            found[name] = module
    return list(found.items())


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


INPUT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # what a model's input layer is, for mixed precision


def input_layer(model: nn.Module) -> nn.Module | None:
    """The model's first convolution or linear layer by registration (its stem, a patch embedding), or None."""
    return next((m for m in model.modules() if isinstance(m, INPUT_LAYERS)), None)


@contextlib.contextmanager
def _autocast(model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast of a forward pass to ``dtype`` (no-op for None), the :func:`input_layer` at full precision.

    The input layer is where bfloat16 costs the map most: rounding the normalised pixels and the
    first weights to 8 bits alone moves the shipped cnn's Grad-CAM maps by up to 0.0073, as much
    as all later layers together, for 2 % of its multiply-adds. Hooks turn autocast off for that
    one layer and are removed in ``finally``, so the model is not modified.
    """
    if dtype is None:
        yield
        return
    full = contextlib.ExitStack()

    def enter(module: nn.Module, inputs: Any) -> None:  # returns None: a pre-hook's return value replaces the inputs
        full.enter_context(torch.autocast(device.type, enabled=False))

    layer = input_layer(model)
    handles = [] if layer is None else [layer.register_forward_pre_hook(enter),
                                        layer.register_forward_hook(lambda module, inputs, output: full.close())]
    try:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield
    finally:
        full.close()
        for handle in handles:
            handle.remove()


def _layers_pass(model: nn.Module, layers: list[nn.Module], x: torch.Tensor, target: np.ndarray | None,
                 reshapes: list[Reshape | None], dtype: torch.dtype | None):
    """One forward and one backward pass capturing every layer.

    Returns ``(logits, A, dS/dA, target)`` with one activation and one gradient per layer, as the
    layer gave them (tokens stay tokens); a layer the class score does not depend on gets zeros.
    """
    captured: dict[int, torch.Tensor] = {}

    def hook(index: int):
        def capture(module, inputs, output):
            if not isinstance(output, torch.Tensor) or (output.dim() not in (3, 4) and reshapes[index] is None):
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ArgumentError(f"the target layer's output is {shape}, not a (N, C, H, W) feature map or "
                                    "(N, tokens, D) token sequence; choose a convolutional or transformer layer, or "
                                    "pass reshape=.")
            captured[index] = output
            # Later in-place ops (ReLU(inplace=True)) then modify the clone, never the captured map.
            return output.clone()
        return capture

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        with torch.enable_grad():
            with _autocast(model, x.device, dtype):
                logits = logits_of(model, x)
            missing = [i for i in range(len(layers)) if i not in captured]
            if missing:
                raise ArgumentError("the target layer did not run in the forward pass; choose a layer the model uses.")
            target = _targets(target, logits)
            acts = [captured[i] for i in range(len(layers))]
            grads = torch.autograd.grad(_class_score(logits.float(), target), acts, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    grads = [torch.zeros_like(a) if g is None else g for a, g in zip(acts, grads)]
    if dtype is not None:  # combine autocast's half-precision activations and gradients in float32
        acts, grads = [a.float() for a in acts], [g.float() for g in grads]
    return logits.detach(), [a.detach() for a in acts], grads, target


def _as_map(tensor: torch.Tensor, reshape: Reshape | None, size: tuple[int, int]) -> torch.Tensor:
    """A captured activation or gradient as ``(N, C, h, w)``: through ``reshape``, or tokens laid on their grid."""
    if reshape is not None:
        out = reshape(tensor)
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or len(out) != len(tensor):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ArgumentError(f"reshape= returned {got} for a layer output of shape {tuple(tensor.shape)}; it must "
                                "return a (N, C, h, w) tensor with the same N.")
        return out
    return tokens_to_grid(tensor, size) if tensor.dim() == 3 else tensor


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


def guided_backprop(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                    dtype: torch.dtype | None = None) -> torch.Tensor:
    """Guided-backpropagation gradient of the class scores with respect to the (normalised) input ``x``."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        with _GuidedReLUMode(), _autocast(model, x.device, dtype):
            logits = logits_of(model, x)
        (grad,) = torch.autograd.grad(_class_score(logits.float(), target), x)
    return grad


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def scale_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Divide each non-negative map by its maximum; all-zero maps stay zero."""
    peak = maps.flatten(1).amax(1).clamp(min=0)[:, None, None]
    return torch.where(peak > 0, maps / torch.where(peak > 0, peak, 1), torch.zeros_like(maps))


# -- the public function --------------------------------------------------------------------------
def gradcam(ck: Checkpoint | nn.Module, images: Dataset | np.ndarray | torch.Tensor,
            target_layer: str | nn.Module | Sequence[str | nn.Module] | None = None, method: str = "gradcam",
            target: int | Sequence[int] | np.ndarray | torch.Tensor | None = None,
            batch_size: int = 256, *, reshape: Reshape | None = None, output: OutputSpec = None,
            dtype: torch.dtype | str | None = None) -> CAM | dict[str, CAM]:
    """Class-activation maps of ``images`` under a checkpoint's model.

    Parameters
    ----------
    ck : Checkpoint, path or nn.Module
        A loaded checkpoint (its input normalisation is applied), a checkpoint file, or a plain
        module (images are fed as given); taken through :func:`~landscape.checkpoint.as_checkpoint`.
        Everything runs on the model's device.
    images : Dataset, np.ndarray or torch.Tensor
        Raw images ``(N, C, H, W)`` in [0, 1] (a :class:`~landscape.Dataset` also gives labels).
    target_layer : str, nn.Module, list of them, or None
        The layer whose activations are explained, by name (``"body.conv3"``) or as a module; by
        default the last convolutional block's rectified output, or for a transformer the input of
        its last attention (see :func:`resolve_layer`). A list, or a pattern such as
        ``"body.relu*"`` or ``"blocks.*.norm1"`` (:mod:`fnmatch`), explains several layers in one
        forward and backward pass and returns a dict of CAMs by layer name.
    method : {"gradcam", "gradcam++", "guided-backprop", "guided-gradcam"}
        What to compute (see the module docstring).
    target : int, sequence of int or None
        Class to explain: one for all images, one per image, or None for the predicted class.
    batch_size : int
        Images per forward/backward pass (bounds memory).
    reshape : callable, optional
        ``A -> (N, C, h, w)`` for layers whose output is neither a feature map nor ViT-style tokens
        (applied to activations and gradients alike; only select and rearrange entries). By default
        tokens ``(N, T, D)`` lose their class token and are laid on their grid (:func:`tokens_to_grid`).
    output : int, str or callable, optional
        The output adapter of a model returning a tuple, dict or object with ``.logits`` (see
        :mod:`landscape.objective`; set on the model, as by :func:`~landscape.checkpoint.as_checkpoint`).
    dtype : torch.dtype or str, optional
        ``torch.bfloat16`` or ``torch.float16``: run the forward passes under autocast, the input
        layer in float32 (maps are combined in float32; see "Outputs and precision" in the module
        docstring). None (or ``"float32"``): the model's own dtype.

    Returns
    -------
    CAM or dict of str to CAM
        ``maps`` in [0, 1], ``guided`` for the guided methods, predictions and confidences; a dict
        by layer name when ``target_layer`` is a list or a pattern.

    Raises
    ------
    ArgumentError
        Unknown method, layer or dtype, a model without convolutional layer, bad image shape or target.
    """
    check_choice(method, "method", METHODS)
    batch_size = check_scalar(batch_size, "batch_size", int, min=1)
    if reshape is not None and not callable(reshape):
        raise ArgumentError(f"reshape must be a function A -> (N, C, h, w), got {type(reshape).__name__}.")
    autocast = _autocast_dtype(dtype)
    with torch.inference_mode(False):  # gradients are needed even when the caller is in inference mode
        cams = _gradcam(_subject(ck, output), images, target_layer, method, target, batch_size, reshape, autocast)
    return cams if several_layers(target_layer) else next(iter(cams.values()))


def _autocast_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """The autocast dtype asked for (None: no autocast)."""
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    return DTYPES[check_choice(dtype, "dtype", [k for k in DTYPES if k]) if dtype is not None else None]


def _gradcam(subject: _Subject, images: Dataset | np.ndarray | torch.Tensor, target_layer: Any, method: str,
             target: Any, batch_size: int, reshape: Reshape | None, dtype: torch.dtype | None) -> dict[str, CAM]:
    raw_images, labels, data_name = _images(images, subject)
    x_all = subject.normalize(raw_images)
    targets = _target_array(target, len(x_all))
    names: list[str | None] = [None]
    parts: list[dict[str, list[torch.Tensor]]] = [{}]
    with _eval_mode(subject.model):
        layers: list[nn.Module] = []
        if method != "guided-backprop":
            resolved = resolve_layers(subject.model, target_layer, x_all)
            names, layers = [n for n, _ in resolved], [m for _, m in resolved]
            parts = [{} for _ in names]
        for start in range(0, len(x_all), batch_size):
            x = x_all[start:start + batch_size]
            t = None if targets is None else targets[start:start + batch_size]
            for part, arrays in zip(parts, _explain(subject.model, layers, x, method, t, reshape, dtype)):
                for key, value in arrays.items():
                    part.setdefault(key, []).append(value.detach().cpu())
    num_classes = int(torch.cat(parts[0]["probs"]).shape[1])
    classes = list(subject.classes) if subject.classes else [str(i) for i in range(num_classes)]
    if isinstance(images, Dataset):
        classes = list(images.classes)
    cams = {}
    for name, part in zip(names, parts):
        out = {k: torch.cat(v).numpy() for k, v in part.items()}
        meta = {"method": method, "layer": name, "layer_shape": list(out["raw"].shape[1:]) if "raw" in out else None,
                "checkpoint": subject.name, "digest": subject.digest, "data": data_name, "n": int(len(x_all)),
                "interpolation": "bilinear", "scaling": "per-image maximum", "device": str(subject.device),
                "dtype": str(dtype or subject.dtype).removeprefix("torch."),
                "reshape": _reshape_name(reshape, bool(out["tokens"][0]) if "tokens" in out else False)}
        cams[name] = CAM(images=raw_images.float().cpu().numpy(), maps=out["maps"].astype(np.float32),
                         guided=out.get("guided"), raw=out.get("raw"), pred=out["pred"], target=out["target"],
                         confidence=out["probs"][np.arange(len(out["pred"])), out["pred"]].astype(np.float32),
                         labels=labels, classes=classes, meta=meta)
    return cams


def _reshape_name(reshape: Reshape | None, tokens: bool) -> str | None:
    """How the layer's output became a feature map, for the meta."""
    if reshape is not None:
        return "custom"
    return "tokens to grid" if tokens else None


def _explain(model: nn.Module, layers: list[nn.Module], x: torch.Tensor, method: str, target: np.ndarray | None,
             reshape: Reshape | None, dtype: torch.dtype | None) -> list[dict[str, torch.Tensor]]:
    """The arrays of one batch, one dict per layer (one for guided backprop): maps, raw, guided, pred, target, probs."""
    size = tuple(x.shape[2:])
    if layers:
        logits, acts, grads, target = _layers_pass(model, layers, x, target, [reshape] * len(layers), dtype)
        results = []
        for A, g in zip(acts, grads):
            tokens = reshape is not None or A.dim() == 3
            A, g = _as_map(A, reshape, size), _as_map(g, reshape, size)
            weights = (_gradcampp_weights if method == "gradcam++" else _gradcam_weights)(A, g)
            raw = _weighted_map(A, weights)
            results.append({"raw": raw, "maps": scale_to_unit(_upsample(raw, size)),
                            "tokens": torch.full((len(x),), tokens)})
    else:
        with torch.no_grad(), _autocast(model, x.device, dtype):
            logits = logits_of(model, x)
        target = _targets(target, logits)
        results = [{}]
    shared = {"pred": logits.argmax(1), "target": target, "probs": torch.softmax(logits.float(), dim=1)}
    if method in ("guided-backprop", "guided-gradcam"):
        guided = guided_backprop(model, x, target, dtype)
        for result in results:
            if method == "guided-gradcam":
                result["guided"] = guided * result["maps"][:, None]
            else:
                result["maps"] = scale_to_unit(guided.abs().amax(1))
                result["guided"] = guided
    return [{**result, **shared} for result in results]


__all__ = ["CAM", "gradcam", "guided_backprop", "conv_layers", "resolve_layer", "resolve_layers", "scale_to_unit",
           "tokens_to_grid", "token_grid", "METHODS"]
