"""The fast engine behind surfaces: loss and accuracy at many points ``theta* + sum_i c_i d_i``.

Speed comes from exact algebra and from not allocating, not from approximations:

* the data stays on the device, normalised once; no DataLoader, no model copies;
* everything that changes from point to point is one flat vector ``flat = base + sum_i c_i D_i``
  written in place (two scaled additions per point); moving parameters read their segment
  of it (their own storage is swapped back untouched afterwards), and parameters whose
  direction is zero are never touched;
* **first-layer shortcut**: when the first parametrised layer is a ``Linear`` or ``Conv2d``
  fed directly by the data (only reshapes in between, as the zoo mlp's ``Flatten``), its
  output is linear in the coordinates, ``X (W0 + a D1 + b D2)^T = X W0^T + a X D1^T + b X D2^T``
  (likewise for a convolution): its parts are computed once and the layer's output is a
  segment of ``flat``;
* **batchnorm folding**: an eval-mode batchnorm is a fixed per-channel affine map
  ``s z + t`` when its own direction is zero, so a ``Linear``/``Conv2d`` followed by one runs
  with weight ``s W`` and bias ``s b + t`` (segments of ``flat`` too) and the batchnorm is skipped;
* on CUDA several points are evaluated per launch with ``torch.func.vmap`` over the
  coordinates.

A self-check at construction compares the shortcut path with a plain evaluation of the
offset weights at one point and falls back to the plain path if a model does something the
algebra does not cover (a layer's output reused elsewhere, tied weights). Every point is
computed by the same operations whatever else is evaluated, so chunked, resumed and sharded
runs give identical values.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .directions import Directions
from .objective import Objective

SHORTCUT_BUDGET_BYTES = 1 << 30  # precomputed first-layer parts larger than this fall back to the generic path
# Combining the precomputed parts costs (n_dirs + 1) reads per output element; running the layer
# costs fan-in multiply-adds, which run several times faster per element. Below this many
# multiply-adds per part the layer is left to run (measured on the zoo: a 64-input Linear gains,
# a one-channel 3x3 convolution loses).
FIRST_LAYER_MIN_FAN_IN = 4
# Layers a following batchnorm is folded into. A convolution's added bias costs about as much
# as the batchnorm it replaces on the CPU, so by default only Linear layers are folded.
FOLD_LAYERS: tuple[type, ...] = (nn.Linear,)
SELF_CHECK_RTOL = 1e-3  # the shortcut differs from a plain evaluation by float rounding only (~1e-6)
_LAYERS = (nn.Linear, nn.Conv2d)


# -- reading the model's structure from one forward pass -----------------------------------------
@dataclasses.dataclass
class Trace:
    """The modules with parameters of their own, in the order they ran, with their inputs and outputs."""

    calls: list[tuple[str, nn.Module, object]]
    outputs: dict[nn.Module, object]

    def count(self, module: nn.Module) -> int:
        """Number of times ``module`` ran in the traced forward pass."""
        return sum(1 for _, m, _ in self.calls if m is module)


def trace(model: nn.Module, x: torch.Tensor) -> Trace:
    """Run ``model(x)`` once with hooks and record the calls of parametrised modules."""
    calls: list = []
    outputs: dict = {}
    hooks = []
    for name, m in model.named_modules():
        if any(True for _ in m.parameters(recurse=False)):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args, n=name: calls.append((n, mod, args[0] if args else None))))
            hooks.append(m.register_forward_hook(lambda mod, args, out: outputs.setdefault(mod, out)))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return Trace(calls, outputs)


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
    return F.linear(inp, weight, bias)


def _fan_in(layer: nn.Module) -> int:
    """Multiply-adds per output element of a Linear/Conv2d."""
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels // layer.groups * int(np.prod(layer.kernel_size))
    return layer.in_features


def _identity(inp: torch.Tensor) -> torch.Tensor:
    return inp


@dataclasses.dataclass
class _Segment:
    """One piece of the flat vector: ``base + sum_i c_i dirs[i]`` reshaped to ``shape``."""

    base: torch.Tensor
    dirs: list[torch.Tensor]


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
    x, y : torch.Tensor
        Prepared inputs and labels, on the model's device.
    dirs : Directions
        Directions made for ``model``.
    with_ce : bool
        Also return plain cross-entropy (``"ce_loss"``).
    batch_size : int, optional
        Evaluate the data in batches of this size (default: all at once).
    shortcut : bool
        Use the first-layer shortcut and batchnorm folding where they apply.
    points_per_batch : int, optional
        Points evaluated per launch with ``torch.func.vmap``; default 16 on CUDA, 1 (in-place
        loop) on the CPU, where batching points does not pay.
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor, dirs: Directions, *,
                 with_ce: bool = False, batch_size: int | None = None, shortcut: bool = True,
                 points_per_batch: int | None = None):
        dirs.check_model(model)
        self.model, self.x, self.y = model, x, y
        self.objective = Objective(model, criterion, metrics=True, with_ce=with_ce).eval()
        self.fields = ("loss", "accuracy") + (("ce_loss",) if with_ce else ())
        self.n_dirs = dirs.n
        self.batch_size = len(y) if batch_size is None else max(1, int(batch_size))
        self.ppb = int(points_per_batch or (16 if x.device.type == "cuda" else 1))
        self._slice: slice | None = None
        dtype = next(model.parameters()).dtype
        self._dvec = [dirs.tensors(i, device=x.device, dtype=dtype) for i in range(dirs.n)]
        self._build(shortcut)
        if shortcut and self.patches and not self._agrees_with_plain():
            self._build(False)  # the algebra does not cover this model: evaluate it plainly

    # -- layout ------------------------------------------------------------------------------
    def _moves(self, name: str) -> bool:
        return any(bool(d[name].any()) for d in self._dvec)

    def _names(self, module: nn.Module) -> dict[str, str]:
        """``{local parameter name: full name}`` of a submodule."""
        full = {id(p): n for n, p in self.model.named_parameters()}
        return {k: full[id(p)] for k, p in module.named_parameters(recurse=False)}

    def _build(self, shortcut: bool) -> None:
        """Decide what each point changes, and lay it out as segments of one flat vector."""
        segments: list[_Segment] = []
        self.patches: list[tuple[nn.Module, Callable]] = []  # module -> replacement forward during a call
        self._swapped: list[tuple[nn.Parameter, int]] = []  # parameter -> its segment
        covered: set[str] = set()
        tr = trace(self.model, self.x) if shortcut else None
        folds = batchnorm_pairs(tr) if tr is not None else {}
        folds = {layer: bn for layer, bn in folds.items()
                 if not any(self._moves(n) for n in self._names(bn[1]).values())}
        first = first_layer(tr, self.x) if tr is not None else None
        if first is not None and _fan_in(first[1]) < FIRST_LAYER_MIN_FAN_IN * (self.n_dirs + 1):
            first = None  # a thin layer (e.g. a 3x3 convolution of one channel) is cheaper to run than to combine
        if first is not None:
            seg = self._first_layer_segment(first[1], first[2], folds.get(first[1]))
            if seg is not None:
                k = len(segments)
                segments.append(seg)
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
        for name, p in self.model.named_parameters():
            if name not in covered and self._moves(name):
                self._swapped.append((p, len(segments)))
                segments.append(_Segment(p.detach(), [d[name] for d in self._dvec]))
        self._layout(segments)

    def _first_layer_segment(self, layer: nn.Module, inp: torch.Tensor, fold) -> _Segment | None:
        """Parts of the first layer's output (batchnorm folded in): ``[L(X; W0, b0), L(X; D1), ...]``."""
        names = self._names(layer)
        bias = layer.bias
        with torch.inference_mode():
            base = _apply(layer, inp, layer.weight, bias)
            if base.numel() * base.element_size() * (self.n_dirs + 1) > SHORTCUT_BUDGET_BYTES:
                return None
            dirs = [_apply(layer, inp, d[names["weight"]], d[names["bias"]] if bias is not None else None)
                    for d in self._dvec]
            if fold is not None:
                s, _ = _affine(fold[1])
                s = _per_channel(s, base.dim(), 1)
                base, dirs = fold[1](base), [v * s for v in dirs]  # BN(Z0 + a Z1) = BN(Z0) + a s Z1
        return _Segment(base.clone(), [v.clone() for v in dirs])

    def _folded_segments(self, layer: nn.Module, bn: nn.Module, names: dict[str, str]) -> list[_Segment]:
        """Weight ``s W`` and bias ``s b + t`` of a layer followed by a fixed batchnorm, with their directions."""
        s, t = _affine(bn)
        w = layer.weight.detach()
        sw = _per_channel(s, w.dim(), 0)
        weight = _Segment(w * sw, [d[names["weight"]] * sw for d in self._dvec])
        if layer.bias is not None:
            bias = _Segment(layer.bias.detach() * s + t, [d[names["bias"]] * s for d in self._dvec])
        else:
            bias = _Segment(t.clone(), [torch.zeros_like(t) for _ in self._dvec])
        return [weight, bias]

    def _layout(self, segments: list[_Segment]) -> None:
        """Concatenate the segments into ``base`` (P,) and ``dirs`` (n, P); make the per-segment views."""
        dev, dtype = self.x.device, next(self.model.parameters()).dtype
        self._shapes = [s.base.shape for s in segments]
        self._bounds = np.cumsum([0] + [s.base.numel() for s in segments]).tolist()
        flat = lambda ts: (torch.cat([t.reshape(-1).to(dev, dtype) for t in ts]) if ts  # noqa: E731
                           else torch.zeros(0, device=dev, dtype=dtype))
        with torch.no_grad():
            self._base = flat([s.base for s in segments])
            self._dirs = torch.stack([flat([s.dirs[i] for s in segments]) for i in range(self.n_dirs)])
        self._dir_rows = list(self._dirs)  # indexed once here, not at every point
        self._flat = torch.empty_like(self._base)
        self._views = self._split(self._flat)

    def _split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [flat[a:b].view(shape) for a, b, shape in zip(self._bounds[:-1], self._bounds[1:], self._shapes)]

    def _output(self, k: int) -> torch.Tensor:
        """The first layer's precomputed output (of the current data batch)."""
        return self._views[k] if self._slice is None else self._views[k][self._slice]

    @contextlib.contextmanager
    def _patched(self):
        """Install the replacement forwards and point moving parameters at their segments; undo after."""
        saved_forward = [(m, m.__dict__.get("forward")) for m, _ in self.patches]
        saved_data = [(p, p.data) for p, _ in self._swapped]
        for module, fn in self.patches:
            module.forward = fn
        for p, k in self._swapped:
            p.data = self._views[k]
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
    def _batches(self, objective) -> tuple[torch.Tensor, ...]:
        """``(mean loss, correct count[, mean ce])`` over the data, one batch or several."""
        n = len(self.y)
        if self.batch_size >= n:  # one batch: the criterion's own mean, so (0, 0) reproduces a plain evaluation
            self._slice = None
            return objective(self.x, self.y)
        sums = None
        for start in range(0, n, self.batch_size):
            self._slice = slice(start, start + self.batch_size)
            out = objective(self.x[self._slice], self.y[self._slice])
            nb = len(self.y[self._slice])
            # the losses are batch means: weight them by the batch size; the correct count adds up as it is
            out = [v.double() * (1 if k == 1 else nb) for k, v in enumerate(out)]
            sums = out if sums is None else [a + b for a, b in zip(sums, out)]
        self._slice = None
        return tuple(v if k == 1 else v / n for k, v in enumerate(sums))

    def _one(self, c: list[float]) -> tuple[torch.Tensor, ...]:
        if self._base.numel():
            first, *rest = self._dir_rows
            torch.add(self._base, first, alpha=c[0], out=self._flat)
            for d, ci in zip(rest, c[1:]):
                self._flat.add_(d, alpha=ci)
        return self._batches(self.objective)

    def _vmapped(self, coords: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from torch.func import functional_call, vmap

        names = {id(p): n for n, p in self.model.named_parameters()}
        swapped = [("model." + names[id(p)], k) for p, k in self._swapped]
        loop_views = self._views

        def at(c: torch.Tensor) -> tuple[torch.Tensor, ...]:
            self._views = self._split(self._base + c @ self._dirs)  # this point's segments (batched by vmap)
            params = {name: self._views[k] for name, k in swapped}
            return self._batches(lambda xb, yb: functional_call(self.objective, params, (xb, yb), strict=False))

        try:
            return vmap(at)(coords)
        finally:
            self._views = loop_views

    def _agrees_with_plain(self) -> bool:
        """Compare the shortcut path with a plain evaluation of offset weights at one point off the axes."""
        from torch.func import functional_call

        c = [0.05 * (i + 1) * (-1) ** i for i in range(self.n_dirs)]
        fast = float(self._evaluate(np.array([c]))["loss"][0])
        params = {"model." + n: p.detach() + sum(ci * d[n] for ci, d in zip(c, self._dvec))
                  for n, p in self.model.named_parameters()}
        with torch.inference_mode():
            plain = float(self._batches(
                lambda xb, yb: functional_call(self.objective, params, (xb, yb), strict=False))[0])
        if not np.isfinite(plain):
            return True  # nothing to compare against at this point
        return bool(np.isfinite(fast) and np.isclose(fast, plain, rtol=SELF_CHECK_RTOL, atol=1e-7))

    def _evaluate(self, coords: np.ndarray) -> dict[str, np.ndarray]:
        columns: list[list[torch.Tensor]] = [[] for _ in self.fields]
        with torch.inference_mode(), self._patched():
            if self.ppb > 1:
                ct = torch.as_tensor(coords, dtype=self.x.dtype, device=self.x.device)
                for start in range(0, len(coords), self.ppb):
                    for col, v in zip(columns, self._vmapped(ct[start:start + self.ppb])):
                        col.extend(v)
            else:
                # per point only 0-d tensors are kept; they are stacked once per call (no sync per point on a GPU)
                for c in coords.tolist():
                    for col, v in zip(columns, self._one(c)):
                        col.append(v)
            values = [torch.stack(col).double().cpu().numpy() for col in columns]
        values[1] = values[1] / len(self.y)  # correct counts -> accuracy
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
