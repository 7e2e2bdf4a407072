"""The fast engine behind surfaces: loss and accuracy at many points ``theta* + sum_i c_i d_i``.

Speed comes from exact algebra, from the memory hierarchy and from not allocating, never from
approximations. What is kept was measured to pay. Figures: minimum CPU time per grid point over
8 alternating repetitions, one thread, torch 2.13 CPU, a shared 2-core Xeon (AVX-512); ResNet-20
(the zoo ``resnet`` with widths 16-32-64, 3 blocks per stage) and VGG-11 with batchnorm on 256
32x32x3 images, the shipped digits mlp on its 360 test images. ``landscape bench surface
--ablation`` times the same switches against the peers in one run.

* **the data is prepared once** (normalised, in the layout the model runs in) and stays on the
  device; no DataLoader, no model copies. Data larger than the device can hold is **streamed**
  batch by batch with :meth:`landscape.data.Dataset.batches` instead (same values; ``stream``);
* **the forward pass runs in cache-sized pieces** of the data (``forward_batch``: about 2 MiB of
  the largest activation, at least 32 samples), while the criterion still sees the logits of the
  whole batch the user asked for, so a batch-dependent loss (MAM-SoftMax's margin) is unchanged,
  and no per-layer output of the whole data is ever held (the model's structure is read from a
  forward pass over two samples). ResNet-20: 0.568 -> 0.373 s per point (1.5x) against one piece
  of 256; VGG-11: 1.10 -> 1.02 s (pieces of 8 and 16 are slower: 1.30 and 1.09 s);
* **batchnorm folding**: an eval-mode batchnorm whose weights and statistics do not move is a
  fixed per-channel affine map ``s z + t``, so a ``Linear``/``Conv2d`` followed by one runs with
  weight ``s W`` and bias ``s b + t`` (segments of the flat vector below) and the batchnorm is
  skipped. ResNet-20 (channels-last): 0.371 -> 0.275 s (1.35x); VGG-11: 1.02 -> 0.96 s (1.07x);
* **channels-last** memory format on the CPU for nets whose first convolution is narrow
  (:data:`CHANNELS_LAST_MAX_WIDTH`): ResNet-20 0.283 -> 0.222 s (1.27x, with folding). VGG-11
  (64-512 channels, already near the matmul peak in NCHW) is slower in it, 0.96 -> 1.21 s, and
  stays NCHW. Together: ResNet-20 2.1-2.6x, VGG-11 1.15x faster than one NCHW batch unfolded;
* everything that changes from point to point is one flat vector ``flat = base + sum_i c_i D_i``
  written in place (two scaled additions per point); moving parameters (and, for ``states``
  directions, moving buffers) read their segment of it (their own storage is swapped back
  untouched afterwards), and tensors whose direction is zero are never touched;
* **first-layer shortcut**: when the first parametrised layer is a ``Linear`` fed directly by
  the data (only reshapes in between, as the zoo mlp's ``Flatten``), its output is linear in the
  coordinates, ``X (W0 + a D1 + b D2)^T = X W0^T + a X D1^T + b X D2^T``: its parts are computed
  once and the layer's output is a segment of ``flat``. Digits mlp: 0.58 -> 0.41 ms (1.4x). It
  holds ``n_dirs + 1`` copies of the layer's output on all the data, so it is used only while they
  take at most twice the data's bytes. For convolutions it does not pay (ResNet-20: 0.222 -> 0.277
  s with it, 0.283 -> 0.280 s in NCHW: a 3-channel convolution is ~1 % of the FLOPs, and combining
  the parts costs as much as running it) and is off (:data:`FIRST_LAYER_TYPES`);
* on CUDA several points are evaluated per launch with ``torch.func.vmap`` over the
  coordinates, and TF32 is switched off while the engine runs, so float32 means float32.

Measured and not kept: several points per launch with ``vmap`` on the CPU (digits mlp: 0.41 ms
per point one at a time; 1.20, 0.73, 0.55, 0.54, 0.58 ms with 2, 4, 8, 16, 64 per launch: the
batched elementwise work leaves the cache and batched linears lose their fused bias); on the
digits mlp about a quarter of a point is the criterion's own ``log_softmax`` (PyTorch's CPU
kernel for a last dimension of 10 runs scalar, ~60 us for 360 samples). ``torch.jit.freeze``
bakes the weights into the graph, so every point would need a new freeze. ``torch.compile`` could
fuse the elementwise passes between oneDNN's convolutions, but costs tens of seconds of
compilation per model and input shape on this CPU, more than a small surface takes; not used.
Re-running only the moving suffix of a network is not done: random and between-checkpoint
directions move every layer.

A self-check at construction compares the logits of the fast path with a plain
``functional_call`` evaluation of the offset weights at one point off the axes (on the first 64
samples), and falls back to the plain path if a model does something the algebra does not cover
(a layer's output reused elsewhere, tied weights). Every point is computed by the same operations
whatever else is evaluated, so chunked, resumed and sharded runs give identical values.

Memory: beyond the inputs (held once, in the layout the model runs in) the engine holds
``n_dirs + 2`` flat vectors (centre, directions, point: each one model, with the shortcut's
parts in them where it is used) and one forward piece of activations; the self-check adds one
offset copy of the moving weights and one piece while it runs. Segments are copied into the
flat vectors one part at a time. Allocations counted by ``landscape bench surface`` on 256
images: ResNet-20 18.2 MB, VGG-11 197 MB at construction (292 MB when every folded segment was
built before the concatenation), the digits mlp 1.25 MB.

Batchnorm statistics at moved weights: ``recompute=`` takes a
:class:`landscape.batchnorm.StatisticsEstimator`; before each point the running statistics are
re-estimated at that point's weights and the point is evaluated in eval mode with them (folding
is then off, since the statistics move).
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from .directions import Directions
from .objective import outputs

# Precomputed first-layer parts (n_dirs + 1 copies of the layer's output on all the data) may take at most
# twice the data's own bytes (at least 16 MiB, at most 256 MiB), so the engine's memory stays of the data's order.
SHORTCUT_BUDGET_BYTES = 1 << 28
SHORTCUT_SMALL_BYTES = 1 << 24
# Combining the precomputed parts costs (n_dirs + 1) reads per output element; running the layer
# costs fan-in multiply-adds, which run several times faster per element. Below this many
# multiply-adds per part the layer is left to run.
FIRST_LAYER_MIN_FAN_IN = 4
FIRST_LAYER_TYPES: tuple[type, ...] = (nn.Linear,)  # see the module docstring for convolutions
# Layers a following fixed batchnorm is folded into.
FOLD_LAYERS: tuple[type, ...] = (nn.Linear, nn.Conv2d)
SELF_CHECK_RTOL = 1e-3  # the shortcut differs from a plain evaluation by float rounding only (~1e-6)
SELF_CHECK_SAMPLES = 64  # the self-check runs on the first samples only
PROBE_SAMPLES = 2  # the structure of a model is read from a forward pass over this many samples
# Activation bytes of one forward piece on the CPU: the L2 cache of one core, about; but never fewer than
# CPU_MIN_PIECE samples, or the wide late layers of a VGG run matmuls too thin to be efficient (measured:
# VGG-11 in pieces of 8 is 1.3x slower than in pieces of 32; ResNet-20 is as fast in pieces of 32 as of 64).
CPU_PIECE_BYTES = 2 << 20
CPU_MIN_PIECE = 32
# On CUDA, the activations of one piece (times the points per launch) may take this share of free memory.
CUDA_PIECE_FRACTION = 0.1
# Channels-last pays for narrow convolutions (ResNet-20: 16-64 channels) and not for wide ones (VGG: 64-512).
CHANNELS_LAST_MAX_WIDTH = 32
# Data is streamed when its prepared float copy would take more than this share of the device's free memory.
STREAM_FRACTION = 0.25
_LAYERS = (nn.Linear, nn.Conv2d)


# -- the data: in memory, or streamed ------------------------------------------------------------
@dataclasses.dataclass
class StreamedInputs:
    """Inputs read batch by batch from a dataset, for data too large to hold on the device at once.

    Attributes
    ----------
    data : Dataset
        The dataset (host memory).
    device : torch.device
    dtype : torch.dtype
    transform : callable, optional
        Applied to each batch on the device (the checkpoint's normalisation).
    """

    data: object
    device: torch.device
    dtype: torch.dtype = torch.float32
    transform: Callable | None = None

    def __len__(self) -> int:
        return len(self.data)

    def batches(self, size: int) -> Iterator[torch.Tensor]:
        """Consecutive prepared input batches of ``size`` samples."""
        for xb, _ in self.data.batches(size, self.device, self.dtype, self.transform):
            yield xb

    def head(self, k: int) -> torch.Tensor:
        """The first ``k`` prepared inputs."""
        return next(self.batches(min(k, len(self))))


def available_memory(device: torch.device) -> int:
    """Free memory of ``device`` in bytes (CUDA: free device memory; CPU: the host's available memory)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def should_stream(n_values: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether ``n_values`` inputs of ``dtype`` would take more than :data:`STREAM_FRACTION` of the free memory."""
    return n_values * torch.empty((), dtype=dtype).element_size() > STREAM_FRACTION * available_memory(device)


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of ``model``'s parameters (float32 when it has none): the dtype its inputs need."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def prepare_inputs(ck, data, stream: bool | None = None, dtype: torch.dtype | None = None):
    """``(inputs, labels)`` of ``data`` for ``ck``: a prepared tensor on the device, or :class:`StreamedInputs`.

    Parameters
    ----------
    ck : Checkpoint
    data : Dataset
    stream : bool or None
        Stream the inputs batch by batch; ``None`` streams when the prepared inputs would take
        more than :data:`STREAM_FRACTION` of the device's free memory.
    dtype : torch.dtype, optional
        Default: the model's own (:func:`model_dtype`), so a float64 module gets float64 inputs.

    Images are laid out channels-last here when the engine will run the model so
    (:func:`choose_channels_last`): converting later, in :class:`GridEvaluator`, would hold
    the data twice while the engine builds its buffers, as the caller still holds this copy.
    """
    dtype = model_dtype(ck.model) if dtype is None else dtype
    if stream is None:
        stream = should_stream(int(np.prod(data.x.shape)), dtype, ck.device)
    if not stream:
        x, y = ck.prepare(data, dtype=dtype)
        if x.dim() == 4 and choose_channels_last(ck.model, ck.device):
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y
    expected = ck.meta.get("input_shape")
    if expected is not None and tuple(data.input_shape) != tuple(expected):
        ck.prepare(data.subset(1))  # raises the checkpoint's own shape error
    y = torch.as_tensor(data.y, device=ck.device)
    return StreamedInputs(data, ck.device, dtype, ck.normalize), y


# -- reading the model's structure from one forward pass over a probe ---------------------------
@dataclasses.dataclass
class Trace:
    """The modules with parameters of their own, in the order they ran, with their inputs and outputs.

    ``sample_bytes`` is the largest output of any module, in bytes per sample.
    """

    calls: list[tuple[str, nn.Module, object]]
    outputs: dict[nn.Module, object]
    sample_bytes: int = 0

    def count(self, module: nn.Module) -> int:
        """Number of times ``module`` ran in the traced forward pass."""
        return sum(1 for _, m, _ in self.calls if m is module)


def trace(model: nn.Module, x: torch.Tensor) -> Trace:
    """Run ``model(x)`` once with hooks and record the calls of parametrised modules.

    Run it on a few samples (a probe): it keeps their outputs of every parametrised module.
    """
    calls: list = []
    outputs_: dict = {}
    hooks = []
    largest = [x[0].numel() * x.element_size() if len(x) else 0]

    def measure(mod, args, out):
        if isinstance(out, torch.Tensor) and out.dim() and len(out) == len(x):
            largest[0] = max(largest[0], out[0].numel() * out.element_size())

    for name, m in model.named_modules():
        hooks.append(m.register_forward_hook(measure))
        if any(True for _ in m.parameters(recurse=False)):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args, n=name: calls.append((n, mod, args[0] if args else None))))
            hooks.append(m.register_forward_hook(lambda mod, args, out: outputs_.setdefault(mod, out)))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return Trace(calls, outputs_, int(largest[0]))


def first_layer(tr: Trace, x: torch.Tensor) -> tuple[str, nn.Module, torch.Tensor] | None:
    """``(name, layer, its input)`` of the first parametrised layer, or None.

    None unless that layer is a Linear/Conv2d run once on the data itself (possibly reshaped).
    """
    if not tr.calls:
        return None
    name, module, inp = tr.calls[0]
    if not isinstance(module, _LAYERS) or tr.count(module) != 1:
        return None
    if not isinstance(inp, torch.Tensor) or inp.numel() != x.numel() or not torch.equal(inp.reshape(-1), x.reshape(-1)):
        return None
    return name, module, inp


def batchnorm_pairs(tr: Trace, layers: tuple[type, ...] = _LAYERS) -> dict[nn.Module, tuple[str, nn.Module]]:
    """``{layer: (bn name, bn)}`` for each layer of type ``layers`` whose output feeds an eval batchnorm directly."""
    pairs = {}
    for name, bn, inp in tr.calls:
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.training or bn.running_var is None:
            continue
        if tr.count(bn) != 1:
            continue
        for layer, out in tr.outputs.items():
            if out is inp and isinstance(layer, layers) and tr.count(layer) == 1:
                pairs[layer] = (name, bn)
    return pairs


def _affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` with ``bn(z) = s z + t`` in eval mode, shaped ``(C,)`` to scale output channels."""
    s = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        s = s * bn.weight
    t = -bn.running_mean * s
    if bn.bias is not None:
        t = t + bn.bias
    return s.detach(), t.detach()


def _per_channel(v: torch.Tensor, dims: int, axis: int) -> torch.Tensor:
    """Shape a ``(C,)`` vector to broadcast along ``axis`` of a ``dims``-dimensional tensor."""
    shape = [1] * dims
    shape[axis] = -1
    return v.reshape(shape)


def _apply(layer: nn.Module, inp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(inp, weight, bias)
    return nn.functional.linear(inp, weight, bias)


def _fan_in(layer: nn.Module) -> int:
    """Multiply-adds per output element of a Linear/Conv2d."""
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels // layer.groups * int(np.prod(layer.kernel_size))
    return layer.in_features


def _identity(inp: torch.Tensor) -> torch.Tensor:
    return inp


def uses_batch_statistics(model: nn.Module) -> bool:
    """Whether a model normalises with batch statistics even in eval mode (batchnorm without running statistics)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)
               for m in model.modules())


def _first_conv_width(model: nn.Module) -> int | None:
    """Output channels of the model's first ``Conv2d`` (None without convolutions)."""
    return next((m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def choose_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Whether the engine runs ``model`` in channels-last format (see the module docstring)."""
    width = _first_conv_width(model)
    return device.type == "cpu" and width is not None and width <= CHANNELS_LAST_MAX_WIDTH


def choose_forward_batch(sample_bytes: int, n: int, device: torch.device, points: int = 1) -> int:
    """Samples per forward piece: cache-sized on the CPU, as many as fit on CUDA.

    On the CPU about :data:`CPU_PIECE_BYTES` of activations, and at least :data:`CPU_MIN_PIECE` samples.

    Parameters
    ----------
    sample_bytes : int
        Largest activation of one sample (:attr:`Trace.sample_bytes`).
    n : int
        Number of samples.
    device : torch.device
    points : int
        Points evaluated together (each holds its own activations).
    """
    per = max(1, int(sample_bytes)) * max(1, int(points))
    if device.type == "cuda":
        # a piece holds a few live activations of that size; stay well inside the free memory
        return int(max(1, min(n, CUDA_PIECE_FRACTION * available_memory(device) // (4 * per))))
    return int(max(1, min(n, max(CPU_MIN_PIECE, CPU_PIECE_BYTES // per))))


@contextlib.contextmanager
def exact_float32(device: torch.device):
    """Switch TF32 off on CUDA for the duration (cuDNN convolutions use it by default), restore after."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@dataclasses.dataclass
class _Segment:
    """One piece of the flat vector: ``base + sum_i c_i dirs[i]`` reshaped to ``shape``.

    ``parts()`` yields ``base`` and then each ``dirs[i]``. It runs only when the segment is
    copied into the flat vector, one part at a time, so a derived segment (folded weights, the
    first layer's parts) is never held beside its copy: measured on VGG-11, building all of
    them first and concatenating after took twice the flat vector's bytes at construction.
    """

    shape: torch.Size
    parts: Callable[[], Iterator[torch.Tensor]]


class _Outputs(nn.Module):
    """``x -> (logits, features, head weight)`` as the criterion needs them, as one module for ``functional_call``."""

    def __init__(self, model: nn.Module, needs_features: bool):
        super().__init__()
        self.model, self.needs_features = model, needs_features

    def forward(self, x: torch.Tensor):
        return outputs(self.model, x, self.needs_features)


# -- the engine ------------------------------------------------------------------------------
class GridEvaluator:
    """Evaluate loss and accuracy at points of the span of ``dirs`` around a model's weights.

    Parameters
    ----------
    model : nn.Module
        The centre ``theta*``, in eval mode. During a call its moving parameters read
        per-point values and some layers run through precomputed parts; everything is
        restored when the call returns.
    criterion : nn.Module
        The loss (a :mod:`landscape.losses` loss; margin losses get features and head weight).
    x : torch.Tensor or StreamedInputs
        Prepared inputs on the model's device, or inputs streamed batch by batch
        (:func:`prepare_inputs` makes either).
    y : torch.Tensor
        Labels, on the model's device.
    dirs : Directions
        Directions made for ``model`` (``weights`` or ``states``).
    with_ce : bool
        Also return plain cross-entropy (``"ce_loss"``).
    batch_size : int, optional
        The objective is the mean over batches of this size of the criterion's batch value
        (what a batch-dependent loss sees in training); default: the whole data as one batch.
    shortcut : bool
        Use the first-layer shortcut and batchnorm folding where they apply.
    points_per_batch : int, optional
        Points evaluated per launch with ``torch.func.vmap``; default 16 on CUDA, 1 (in-place
        loop) on the CPU, where batching points does not pay.
    forward_batch : int, optional
        Samples per forward piece (a speed and memory choice, never a change of the values
        beyond float rounding); default :func:`choose_forward_batch`.
    channels_last : bool, optional
        Run convolutions in channels-last format; default :func:`choose_channels_last`.
    recompute : StatisticsEstimator, optional
        Re-estimate batchnorm running statistics at every point (``bn="recompute"``).
    """

    @staticmethod
    def fields_of(with_ce: bool) -> tuple[str, ...]:
        """The values computed per point: loss and accuracy, and plain cross-entropy with ``with_ce``."""
        return ("loss", "accuracy") + (("ce_loss",) if with_ce else ())

    def __init__(self, model: nn.Module, criterion: nn.Module, x, y: torch.Tensor, dirs: Directions, *,
                 with_ce: bool = False, batch_size: int | None = None, shortcut: bool = True,
                 points_per_batch: int | None = None, forward_batch: int | None = None,
                 channels_last: bool | None = None, recompute=None):
        from .errors import check_scalar

        dirs.check_model(model)
        self.model, self.y, self.criterion = model, y, criterion
        self.device = y.device
        self.needs_features = bool(getattr(criterion, "needs_features", False))
        self._net = _Outputs(model, self.needs_features).eval()
        self.with_ce = bool(with_ce)
        self.fields = self.fields_of(with_ce)
        self.n_dirs, self.n = dirs.n, len(y)
        self.dir_type = dirs.dir_type
        self.batch_size = self.n if batch_size is None else min(self.n, check_scalar(batch_size, "batch_size", int,
                                                                                       min=1))
        self.ppb = check_scalar(points_per_batch, "points_per_batch", int, min=1, allow_none=True) or (
            16 if self.device.type == "cuda" else 1)
        self.recompute = recompute
        self.streamed = isinstance(x, StreamedInputs)
        self.channels_last = (choose_channels_last(model, self.device) if channels_last is None
                              else bool(channels_last))
        self.channels_last = self.channels_last and (x.head(1) if self.streamed else x).dim() == 4
        if self.channels_last and not self.streamed:
            x = x.contiguous(memory_format=torch.channels_last)
        self.x = x
        self._rows: slice | None = None
        dtype = next(model.parameters()).dtype
        self._dvec = [dirs.tensors(i, device=self.device, dtype=dtype) for i in range(dirs.n)]
        self._probe = self._layout_input(x.head(PROBE_SAMPLES) if self.streamed else x[:PROBE_SAMPLES])
        self._probe_trace = trace(model, self._probe)
        self.forward_batch = (check_scalar(forward_batch, "forward_batch", int, min=1) if forward_batch is not None
                              else choose_forward_batch(self._probe_trace.sample_bytes, self.n, self.device, self.ppb))
        if uses_batch_statistics(model):
            self.forward_batch = self.batch_size  # its outputs depend on the batch: never cut one
        self._build(shortcut)
        del self._probe_trace  # it holds every layer's output on the probe; a rebuild below needs none of it
        if shortcut and self.patches and not self._agrees_with_plain():
            self._build(False)  # the algebra does not cover this model: evaluate it plainly

    # -- layout ------------------------------------------------------------------------------
    def _layout_input(self, xb: torch.Tensor) -> torch.Tensor:
        return xb.contiguous(memory_format=torch.channels_last) if self.channels_last else xb

    def _moves(self, name: str) -> bool:
        return any(name in d and bool(d[name].any()) for d in self._dvec)

    def _names(self, module: nn.Module) -> dict[str, str]:
        """``{local name: full name}`` of a submodule's parameters and buffers."""
        full = {id(t): n for n, t in self.model.named_parameters()}
        full.update({id(t): n for n, t in self.model.named_buffers()})
        local = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        return {k: full[id(t)] for k, t in local if id(t) in full}

    def _tensors(self) -> list[tuple[str, torch.Tensor]]:
        """The model's own tensor objects the directions cover (parameters, then floating buffers for states)."""
        named = list(self.model.named_parameters())
        if self.dir_type == "states":
            named += [(n, b) for n, b in self.model.named_buffers() if b.is_floating_point()]
        return named

    def _fixed(self, module: nn.Module) -> bool:
        """Whether none of a module's tensors move (and its statistics are not re-estimated)."""
        if self.recompute is not None and isinstance(module, nn.modules.batchnorm._BatchNorm):
            return False
        return not any(self._moves(n) for n in self._names(module).values())

    def _build(self, shortcut: bool) -> None:
        """Decide what each point changes, and lay it out as segments of one flat vector."""
        segments: list[_Segment] = []
        self.patches: list[tuple[nn.Module, Callable]] = []  # module -> replacement forward during a call
        self._swapped: list[tuple[torch.Tensor, int]] = []  # parameter or buffer -> its segment
        self.shortcut_layer: nn.Module | None = None  # the first layer, when its output is precomputed
        covered: set[str] = set()
        tr = self._probe_trace if shortcut else None
        folds = batchnorm_pairs(tr) if tr is not None else {}
        folds = {layer: bn for layer, bn in folds.items() if self._fixed(bn[1])}
        first = first_layer(tr, self._probe) if tr is not None and not self.streamed else None
        if first is not None and (not isinstance(first[1], FIRST_LAYER_TYPES)
                                  or _fan_in(first[1]) < FIRST_LAYER_MIN_FAN_IN * (self.n_dirs + 1)):
            first = None  # a thin layer is cheaper to run than to combine; convolutions: see the module docstring
        if first is not None:
            seg = self._first_layer_segment(first[1], first[2].shape[1:], folds.get(first[1]))
            if seg is not None:
                k = len(segments)
                segments.append(seg)
                self.shortcut_layer = first[1]
                self.patches.append((first[1], lambda inp, k=k: self._output(k)))
                covered |= set(self._names(first[1]).values())
                if first[1] in folds:
                    self.patches.append((folds[first[1]][1], _identity))
                    covered |= set(self._names(folds[first[1]][1]).values())
        for layer, (_, bn) in folds.items():
            if (first is not None and layer is first[1]) or not isinstance(layer, FOLD_LAYERS):
                continue
            names = self._names(layer)
            if not any(self._moves(n) for n in names.values()):
                continue  # nothing moves in this pair: let both run as they are
            k = len(segments)
            segments += self._folded_segments(layer, bn, names)
            self.patches += [(layer, lambda inp, layer=layer, k=k: _apply(layer, inp, self._views[k],
                                                                          self._views[k + 1])),
                             (bn, _identity)]
            covered |= set(names.values()) | set(self._names(bn).values())
        for name, t in self._tensors():
            if name not in covered and self._moves(name):
                self._swapped.append((t, len(segments)))
                segments.append(_Segment(t.shape, lambda t=t, name=name: iter(
                    [t.detach()] + [d[name] for d in self._dvec])))
        # the centre's own storage (detached now, so it stays the centre while the tensors read segments)
        self._centre = {name: t.detach() for name, t in self._tensors() if self._moves(name)}
        self._layout(segments)

    def _first_layer_segment(self, layer: nn.Module, sample_shape, fold) -> _Segment | None:
        """Parts of the first layer's output on all the data (batchnorm folded in): ``[L(X; W0, b0), L(X; D1)]``."""
        names = self._names(layer)
        bias = layer.bias
        x = self.x.reshape(self.n, *sample_shape)  # the layer's input: the data, reshaped as the model does
        out_shape = _apply(layer, x[:1], layer.weight, bias).shape
        limit = min(SHORTCUT_BUDGET_BYTES, max(SHORTCUT_SMALL_BYTES, 2 * x.numel() * x.element_size()))
        if int(np.prod(out_shape)) * self.n * x.element_size() * (self.n_dirs + 1) > limit:
            return None

        def parts() -> Iterator[torch.Tensor]:
            base = _apply(layer, x, layer.weight, bias)
            yield base if fold is None else fold[1](base)
            del base
            s = None if fold is None else _per_channel(_affine(fold[1])[0], len(out_shape), 1)
            for d in self._dvec:
                v = _apply(layer, x, d[names["weight"]], d[names["bias"]] if bias is not None else None)
                yield v if s is None else v * s  # BN(Z0 + a Z1) = BN(Z0) + a s Z1

        return _Segment(torch.Size((self.n, *out_shape[1:])), parts)

    def _folded_segments(self, layer: nn.Module, bn: nn.Module, names: dict[str, str]) -> list[_Segment]:
        """Weight ``s W`` and bias ``s b + t`` of a layer followed by a fixed batchnorm, with their directions."""
        s, t = _affine(bn)
        w = layer.weight.detach()
        sw = _per_channel(s, w.dim(), 0)

        def weight() -> Iterator[torch.Tensor]:
            yield w * sw
            for d in self._dvec:
                yield d[names["weight"]] * sw

        def bias() -> Iterator[torch.Tensor]:
            if layer.bias is None:
                yield t
                yield from (torch.zeros_like(t) for _ in self._dvec)
                return
            yield layer.bias.detach() * s + t
            for d in self._dvec:
                yield d[names["bias"]] * s

        return [_Segment(w.shape, weight), _Segment(t.shape, bias)]

    def _layout(self, segments: list[_Segment]) -> None:
        """Concatenate the segments into ``base`` (P,) and ``dirs`` (n, P); make the per-segment views."""
        dtype = next(self.model.parameters()).dtype
        self._shapes = [s.shape for s in segments]
        self._bounds = np.cumsum([0] + [s.shape.numel() for s in segments]).tolist()
        self._base = torch.empty(self._bounds[-1], device=self.device, dtype=dtype)
        self._dirs = torch.empty(self.n_dirs, self._bounds[-1], device=self.device, dtype=dtype)
        rows = [self._base, *self._dirs]
        with torch.no_grad():
            for seg, a, b in zip(segments, self._bounds[:-1], self._bounds[1:]):
                for row, part in zip(rows, seg.parts(), strict=True):
                    row[a:b].copy_(part.reshape(-1))  # copy_ converts the device and dtype
                    del part  # before the next part is made
        self._dir_rows = list(self._dirs)  # indexed once here, not at every point
        self._flat = torch.empty_like(self._base)
        self._views = self._split(self._flat)
        self._stats: dict[str, torch.Tensor] = {}
        if self.recompute is not None:  # the re-estimated statistics are copied here point by point
            self._stats = {n: b.detach().clone() for n, b in self.model.named_buffers()
                           if n in set(self.recompute.names)}

    def _split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [flat[a:b].view(shape) for a, b, shape in zip(self._bounds[:-1], self._bounds[1:], self._shapes)]

    def _output(self, k: int) -> torch.Tensor:
        """The first layer's precomputed output (of the current piece of the data)."""
        return self._views[k] if self._rows is None else self._views[k][self._rows]

    @contextlib.contextmanager
    def _patched(self):
        """Install the replacement forwards and point moving tensors at their segments; undo after."""
        saved_forward = [(m, m.__dict__.get("forward")) for m, _ in self.patches]
        buffers = dict(self.model.named_buffers())
        stats = [(buffers[n], t) for n, t in self._stats.items()]
        saved_data = [(p, p.data) for p, _ in self._swapped] + [(b, b.data) for b, _ in stats]
        for module, fn in self.patches:
            module.forward = fn
        for p, k in self._swapped:
            p.data = self._views[k]
        for b, t in stats:
            b.data = t
        try:
            yield
        finally:
            for module, own in saved_forward:
                if own is None:
                    del module.forward  # back to the class's method
                else:
                    module.forward = own
            for p, data in saved_data:
                p.data = data  # the original storage was never written

    # -- evaluation ----------------------------------------------------------------------------
    def _pieces(self) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, inputs)`` of consecutive forward pieces; none straddles a batch of the objective."""
        fb, bs, n = self.forward_batch, self.batch_size, self.n
        if not self.streamed:
            for b0 in range(0, n, bs):
                for start in range(b0, min(b0 + bs, n), fb):
                    yield start, self.x[start:min(start + fb, b0 + bs, n)]
            return
        start = 0
        for xb in self.x.batches(fb):
            while len(xb):
                take = min(len(xb), bs - start % bs)  # cut at the end of the objective's batch
                yield start, self._layout_input(xb[:take])
                start, xb = start + take, xb[take:]

    def _batch_value(self, parts: list[tuple], b0: int, b1: int) -> list[torch.Tensor]:
        """``[loss, correct[, ce]]`` of one batch of the objective from its pieces' outputs."""
        if len(parts) == 1:
            logits, feats, weight = parts[0]
        else:
            logits = torch.cat([p[0] for p in parts])
            feats = torch.cat([p[1] for p in parts]) if self.needs_features else None
            weight = parts[0][2]
        yb = self.y[b0:b1]
        if self.needs_features:
            loss = self.criterion(logits, yb, features=feats, weight=weight)
        else:
            loss = self.criterion(logits, yb)
        out = [loss, (logits.argmax(-1) == yb).sum()]
        if self.with_ce:
            out.append(nn.functional.cross_entropy(logits, yb))
        return out

    def _values(self, net: Callable) -> tuple[torch.Tensor, ...]:
        """``(mean loss, correct count[, mean ce])`` over the data; ``net(x) -> (logits, features, weight)``."""
        n, bs = self.n, self.batch_size
        sums, parts, b0 = None, [], 0
        for start, xb in self._pieces():
            self._rows = slice(start, start + len(xb))
            parts.append(net(xb))
            if start + len(xb) < min(b0 + bs, n):
                continue
            out = self._batch_value(parts, b0, min(b0 + bs, n))
            if bs >= n:  # one batch: the criterion's own mean, so (0, 0) reproduces a plain evaluation
                self._rows = None
                return tuple(out)
            nb = min(b0 + bs, n) - b0
            # the losses are batch means: weight them by the batch size; the correct count adds up as it is
            out = [v.double() * (1 if k == 1 else nb) for k, v in enumerate(out)]
            sums = out if sums is None else [a + b for a, b in zip(sums, out)]
            parts, b0 = [], b0 + bs
        self._rows = None
        return tuple(v if k == 1 else v / n for k, v in enumerate(sums))

    def _raw_state(self, c) -> dict[str, torch.Tensor]:
        """The model's moving parameters (and buffers) at coordinates ``c`` (for re-estimating statistics)."""
        out = {}
        for name, t in self._centre.items():
            v = t.clone()
            for ci, d in zip(c, self._dvec):
                v.add_(d[name], alpha=float(ci))
            out[name] = v
        return out

    def _refresh_stats(self, c) -> None:
        """Re-estimate the running statistics at ``c`` into the buffers the model reads during the call."""
        if self.recompute is None:
            return
        for name, t in self.recompute(self._raw_state(c)).items():
            self._stats[name].copy_(t)

    def _one(self, c: list[float]) -> tuple[torch.Tensor, ...]:
        if self._base.numel():
            first, *rest = self._dir_rows
            torch.add(self._base, first, alpha=c[0], out=self._flat)
            for d, ci in zip(rest, c[1:]):
                self._flat.add_(d, alpha=ci)
        self._refresh_stats(c)
        return self._values(self._net)

    def _vmapped(self, coords: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from torch.func import functional_call, vmap

        names = {id(t): n for n, t in self._tensors()}
        swapped = [("model." + names[id(p)], k) for p, k in self._swapped]
        loop_views = self._views
        stats = None
        if self.recompute is not None:  # one estimate per point, then batched into the launch
            per_point = []
            for c in coords.tolist():
                self._refresh_stats(c)
                per_point.append({"model." + k: v.clone() for k, v in self._stats.items()})
            stats = {k: torch.stack([p[k] for p in per_point]) for k in per_point[0]}

        def at(c: torch.Tensor, st) -> tuple[torch.Tensor, ...]:
            self._views = self._split(self._base + c @ self._dirs)  # this point's segments (batched by vmap)
            params = {name: self._views[k] for name, k in swapped}
            params.update(st or {})
            return self._values(lambda xb: functional_call(self._net, params, (xb,), strict=False))

        try:
            return vmap(at, in_dims=(0, 0 if stats is not None else None))(coords, stats)
        finally:
            self._views = loop_views

    def _agrees_with_plain(self) -> bool:
        """Compare the fast path's logits with a plain evaluation of offset weights at one point off the axes."""
        from torch.func import functional_call

        c = [0.05 * (i + 1) * (-1) ** i for i in range(self.n_dirs)]
        k = min(self.n, SELF_CHECK_SAMPLES, self.forward_batch)  # activations of one forward piece, no more
        xb = self._layout_input(self.x.head(k) if self.streamed else self.x[:k])
        state = {"model." + n: t for n, t in self._raw_state(c).items()}  # the tensors that stay read the model's
        with torch.inference_mode(), exact_float32(self.device):
            plain = functional_call(self._net, state, (xb,), strict=False)[0].double()
            with self._patched():
                if self._base.numel():
                    torch.add(self._base, self._dir_rows[0], alpha=c[0], out=self._flat)
                    for d, ci in zip(self._dir_rows[1:], c[1:]):
                        self._flat.add_(d, alpha=ci)
                self._rows = slice(0, k)
                try:
                    fast = self._net(xb)[0].double()
                finally:
                    self._rows = None
        if not torch.isfinite(plain).all():
            return True  # nothing to compare against at this point
        scale = float(plain.abs().max())
        return bool(torch.isfinite(fast).all() and torch.allclose(fast, plain, rtol=SELF_CHECK_RTOL,
                                                                  atol=SELF_CHECK_RTOL * scale + 1e-7))

    def _launches(self, coords: np.ndarray, columns: list[list[torch.Tensor]]) -> None:
        if self.ppb > 1:
            ct = torch.as_tensor(coords, dtype=self._base.dtype, device=self.device)
            for start in range(0, len(coords), self.ppb):
                for col, v in zip(columns, self._vmapped(ct[start:start + self.ppb])):
                    col.extend(v)
        else:
            # per point only 0-d tensors are kept; they are stacked once per call (no sync per point on a GPU)
            for c in coords.tolist():
                for col, v in zip(columns, self._one(c)):
                    col.append(v)

    def _evaluate(self, coords: np.ndarray) -> dict[str, np.ndarray]:
        columns: list[list[torch.Tensor]] = [[] for _ in self.fields]
        with torch.inference_mode(), exact_float32(self.device), self._patched():
            try:
                self._launches(coords, columns)
            except RuntimeError as exc:
                if self.ppb == 1 or any(columns):
                    raise
                # an operation of this model or loss has no batching rule: evaluate point by point
                warnings.warn(f"evaluating several points per launch failed ({str(exc).splitlines()[0]}); "
                              "evaluating one point at a time.", RuntimeWarning, stacklevel=3)
                self.ppb = 1
                self._launches(coords, columns)
            values = [torch.stack(col).double().cpu().numpy() for col in columns]
        values[1] = values[1] / self.n  # correct counts -> accuracy
        return dict(zip(self.fields, values))

    def __call__(self, coords: np.ndarray) -> dict[str, np.ndarray]:
        """Values at ``coords`` (``(k, n_dirs)``): ``{"loss", "accuracy"[, "ce_loss"]}`` arrays of length k.

        Points where the loss diverges give inf/NaN, never an exception.
        """
        return self._evaluate(np.atleast_2d(np.asarray(coords, dtype=np.float64)))


def evaluate_points(model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor, dirs: Directions,
                    coords: np.ndarray, **kwargs) -> Mapping[str, np.ndarray]:
    """One-shot convenience: build a :class:`GridEvaluator` and evaluate ``coords``."""
    return GridEvaluator(model, criterion, x, y, dirs, **kwargs)(coords)


__all__ = ["GridEvaluator", "StreamedInputs", "evaluate_points", "prepare_inputs", "trace", "first_layer",
           "batchnorm_pairs", "choose_forward_batch", "choose_channels_last", "exact_float32"]
