"""The fast engine behind surfaces: loss and accuracy at many points ``theta* + sum_i c_i d_i``.

Speed comes from exact algebra and from not allocating, not from approximations:

* the data stays on the device, normalised once; no DataLoader, no model copies;
* each point's weights are written in place into the model's own parameter storage
  (``torch.add(base, d, alpha=c, out=p)``), and only parameters whose direction is non-zero
  are touched; the weights are restored afterwards;
* **first-layer shortcut**: when the first parametrised layer is a ``Linear`` or ``Conv2d``
  fed directly by the data (only reshapes in between, as the zoo mlp's ``Flatten``), its
  output is linear in the coordinates, ``X (W0 + a D1 + b D2)^T = X W0^T + a X D1^T + b X D2^T``
  (likewise for a convolution), so those parts are computed once per run and each point
  costs two scaled additions into a reused buffer instead of the layer's matmul;
* on CUDA several points are evaluated per launch with ``torch.func.vmap`` over the
  coordinates (the parameters are formed inside the vmapped function).

Every point is computed by the same operations whatever else is evaluated, so chunked,
resumed and sharded runs give identical values.
"""
from __future__ import annotations

import contextlib
from typing import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .directions import Directions
from .objective import loss_and_logits

SHORTCUT_BUDGET_BYTES = 1 << 30  # precomputed first-layer parts larger than this fall back to the generic path


class _FirstLayer:
    """The first parametrised layer when it is a Linear/Conv2d fed directly by the data.

    ``bn`` is the eval-mode batchnorm that directly follows it, if any: an affine map per
    channel, folded into the precomputed parts when its own parameters do not move.
    """

    def __init__(self, module: nn.Module, name: str, inp: torch.Tensor, bn: nn.Module | None = None,
                 bn_name: str = ""):
        self.module, self.name, self.inp, self.bn, self.bn_name = module, name, inp, bn, bn_name

    def apply(self, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.module, nn.Conv2d):
            return self.module._conv_forward(self.inp, weight, bias)
        return F.linear(self.inp, weight, bias)

    def bn_scale(self, like: torch.Tensor) -> torch.Tensor:
        """``gamma / sqrt(running_var + eps)`` shaped to multiply a layer output like ``like``."""
        bn = self.bn
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        return scale.reshape((1, -1) + (1,) * (like.dim() - 2))


def find_first_layer(model: nn.Module, x: torch.Tensor) -> _FirstLayer | None:
    """Run ``model(x)`` once and return the shortcut layer, or None when the shortcut does not apply.

    The first module with parameters of its own that runs is accepted when it is an
    ``nn.Linear`` or ``nn.Conv2d``, runs exactly once, and its input holds the data itself
    (same numbers, possibly reshaped): then its output is linear in its weights. When the
    next parametrised module is an eval-mode batchnorm fed by exactly that output, it is
    returned too (for folding).
    """
    calls: list[tuple[str, nn.Module, torch.Tensor]] = []
    outputs: dict[nn.Module, torch.Tensor] = {}
    owners = {m: n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    hooks = []
    for m, n in owners.items():
        hooks.append(m.register_forward_pre_hook(lambda mod, args, n=n: calls.append((n, mod, args[0] if args else None))))
        hooks.append(m.register_forward_hook(lambda mod, args, out: outputs.setdefault(mod, out)))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if not calls:
        return None
    name, module, inp = calls[0]
    if not isinstance(module, (nn.Linear, nn.Conv2d)) or sum(1 for c in calls if c[1] is module) != 1:
        return None
    if not isinstance(inp, torch.Tensor) or inp.numel() != x.numel() or not torch.equal(inp.reshape(-1), x.reshape(-1)):
        return None
    bn, bn_name = None, ""
    if len(calls) > 1:
        n2, m2, inp2 = calls[1]
        foldable = (isinstance(m2, nn.modules.batchnorm._BatchNorm) and not m2.training
                    and m2.running_var is not None and sum(1 for c in calls if c[1] is m2) == 1)
        if foldable and inp2 is outputs.get(module):
            bn, bn_name = m2, n2
    return _FirstLayer(module, name, inp, bn, bn_name)


def _identity(inp: torch.Tensor) -> torch.Tensor:
    return inp


class _Objective(nn.Module):
    """``(loss, correct[, ce])`` of a model on ``(x, y)``, as one module so ``functional_call`` can swap weights."""

    def __init__(self, model: nn.Module, criterion: nn.Module, with_ce: bool):
        super().__init__()
        self.model, self.criterion, self.with_ce = model, criterion, with_ce

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        loss, logits = loss_and_logits(self.model, self.criterion, x, y)
        correct = (logits.argmax(1) == y).sum()
        return (loss, correct, F.cross_entropy(logits, y)) if self.with_ce else (loss, correct)


class GridEvaluator:
    """Evaluate loss and accuracy at points of the span of ``dirs`` around a model's weights.

    Parameters
    ----------
    model : nn.Module
        The centre ``theta*`` (its weights are changed in place during a call and restored after).
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
        Use the first-layer shortcut where it applies.
    points_per_batch : int, optional
        Points evaluated per launch with ``torch.func.vmap``; default 16 on CUDA, 1 (in-place
        loop) on the CPU, where batching points does not pay.
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor, dirs: Directions, *,
                 with_ce: bool = False, batch_size: int | None = None, shortcut: bool = True,
                 points_per_batch: int | None = None):
        dirs.check_model(model)
        self.model, self.x, self.y = model, x, y
        self.objective = _Objective(model, criterion, with_ce).eval()
        self.fields = ("loss", "accuracy") + (("ce_loss",) if with_ce else ())
        self.n_dirs = dirs.n
        self.batch_size = len(y) if batch_size is None else max(1, int(batch_size))
        self.ppb = int(points_per_batch or (16 if x.device.type == "cuda" else 1))
        params = dict(model.named_parameters())
        dtype = next(iter(params.values())).dtype
        dvec = [dirs.tensors(i, device=x.device, dtype=dtype) for i in range(dirs.n)]
        self.first = find_first_layer(model, x) if shortcut else None
        if self.first is not None and not self._fits_budget():
            self.first = None
        if self.first is not None and self.first.bn is not None and self._moves(self.first.bn_name, self.first.bn, dvec):
            self.first.bn = None  # a batchnorm that moves is no longer a fixed affine map: let it run
        skip = self._shortcut_parameters()
        # Only parameters that move (non-zero direction) and are not inside the shortcut layer are rewritten.
        moving = [(name, p) for name, p in params.items()
                  if name not in skip and any(bool(d[name].any()) for d in dvec)]
        parts = self._first_layer_parts(dvec) if self.first is not None else None
        self._flatten(moving, dvec, parts)

    # -- setup -------------------------------------------------------------------------------
    def _flatten(self, moving: list[tuple[str, nn.Parameter]], dvec: list[dict[str, torch.Tensor]],
                 parts: list[torch.Tensor] | None) -> None:
        """Lay out everything that changes per point as one vector ``flat = base + D^T c``.

        The moving parameters and the first layer's output are segments of ``flat``; during a
        call the parameters' storage is swapped for their segment, so placing a point is one
        ``addmv`` whatever the number of parameters. ``self.moving`` and ``self.parts`` are
        views of the segments of ``base`` and ``D`` (used by the vmapped path).
        """
        segments = [(p.detach(), [d[name] for d in dvec]) for name, p in moving]
        if parts is not None:
            segments.append((parts[0], parts[1:]))
        like = self.x if not segments else segments[0][0]
        self._base = torch.cat([b.reshape(-1) for b, _ in segments]) if segments else like.new_zeros(0)
        self._dirs = torch.stack([torch.cat([ds[k].reshape(-1) for _, ds in segments]) if segments
                                  else like.new_zeros(0) for k in range(self.n_dirs)])
        self._flat = torch.empty_like(self._base)
        views, start = [], 0
        for b, _ in segments:
            stop = start + b.numel()
            views.append((slice(start, stop), b.shape))
            start = stop
        seg = lambda t, k: t[views[k][0]].view(views[k][1])  # noqa: E731 - view of segment k of a flat tensor
        self.moving = [(name, p, seg(self._base, k), [seg(self._dirs[i], k) for i in range(self.n_dirs)],
                        seg(self._flat, k)) for k, (name, p) in enumerate(moving)]
        self.parts = None
        if parts is not None:
            k = len(segments) - 1
            self.parts = [seg(self._base, k)] + [seg(self._dirs[i], k) for i in range(self.n_dirs)]
            self._buffer = seg(self._flat, k)

    def _shortcut_parameters(self) -> set[str]:
        """Names of the parameters whose effect the precomputed parts already contain."""
        if self.first is None:
            return set()
        mods = [(self.first.name, self.first.module)] + ([(self.first.bn_name, self.first.bn)] if self.first.bn else [])
        return {f"{name}.{k}" if name else k for name, mod in mods for k, _ in mod.named_parameters()}

    @staticmethod
    def _moves(prefix: str, module: nn.Module, dvec: list[dict[str, torch.Tensor]]) -> bool:
        names = [f"{prefix}.{k}" if prefix else k for k, _ in module.named_parameters()]
        return any(bool(d[n].any()) for d in dvec for n in names)

    def _fits_budget(self) -> bool:
        with torch.inference_mode():
            out = self.first.apply(self.first.module.weight, self.first.module.bias)
        return out.numel() * out.element_size() * (self.n_dirs + 1) <= SHORTCUT_BUDGET_BYTES

    def _first_layer_parts(self, dvec: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """``[layer(X; W0, b0), layer(X; D1w, D1b), ...]``: the layer output is their linear combination."""
        mod, prefix = self.first.module, (self.first.name + "." if self.first.name else "")
        with torch.inference_mode():
            parts = [self.first.apply(mod.weight, mod.bias)]
            for d in dvec:
                bias = d.get(prefix + "bias") if mod.bias is not None else None
                parts.append(self.first.apply(d[prefix + "weight"], bias))
            if self.first.bn is not None:
                # eval batchnorm is y = s * z + t per channel: BN(Z0 + a Z1 + b Z2) = BN(Z0) + a s Z1 + b s Z2
                scale = self.first.bn_scale(parts[0])
                parts = [self.first.bn(parts[0])] + [p * scale for p in parts[1:]]
        return parts

    @contextlib.contextmanager
    def _patched(self):
        """Swap the first layer's forward for the precomputed combination; restore weights and forward after."""
        patches = []
        if self.first is not None:
            patches.append((self.first.module, self._first_layer_output))
            if self.first.bn is not None:
                patches.append((self.first.bn, _identity))  # folded into the parts
        saved = [(m, m.__dict__.get("forward")) for m, _ in patches]
        for module, fn in patches:
            module.forward = fn
        originals = [(p, p.data) for _, p, _, _, _ in self.moving]
        for _, p, _, _, view in self.moving:
            p.data = view  # the parameter now reads its segment of the flat vector
        try:
            yield
        finally:
            for module, own in saved:
                if own is None:
                    del module.forward  # back to the class's method
                else:
                    module.forward = own
            for p, data in originals:
                p.data = data  # the original storage was never written: the weights are back as they were

    def _first_layer_output(self, inp: torch.Tensor) -> torch.Tensor:
        return self._combination if self._slice is None else self._combination[self._slice]

    def _place(self, c: list[float]) -> None:
        if self._base.numel():
            torch.add(self._base, self._dirs[0], alpha=c[0], out=self._flat)
            for d, ci in zip(self._dirs[1:], c[1:]):
                self._flat.add_(d, alpha=ci)
        if self.parts is not None:
            self._combination = self._buffer  # the first layer's output at this point (a segment of flat)

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
        return tuple(v if k == 1 else v / n for k, v in enumerate(sums))

    def _one(self, c: list[float]) -> tuple[torch.Tensor, ...]:
        self._place(c)
        return self._batches(self.objective)

    # -- several points per launch (CUDA) ------------------------------------------------------
    def _vmapped(self, coords: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from torch.func import functional_call, vmap

        moving = {"model." + name: (base, ds) for name, _, base, ds, _ in self.moving}

        def at(c: torch.Tensor) -> tuple[torch.Tensor, ...]:
            params = {}
            for name, (base, ds) in moving.items():
                w = base + c[0] * ds[0]
                for d, ci in zip(ds[1:], c[1:]):
                    w = w + ci * d
                params[name] = w
            if self.parts is not None:
                comb = self.parts[0] + c[0] * self.parts[1]
                for part, ci in zip(self.parts[2:], c[1:]):
                    comb = comb + ci * part
                self._combination = comb
            return self._batches(lambda xb, yb: functional_call(self.objective, params, (xb, yb), strict=False))

        return vmap(at)(coords)

    # -- public --------------------------------------------------------------------------------
    def __call__(self, coords: np.ndarray) -> dict[str, np.ndarray]:
        """Values at ``coords`` (``(k, n_dirs)``): ``{"loss", "accuracy"[, "ce_loss"]}`` arrays of length k.

        Points where the loss diverges give inf/NaN, never an exception.
        """
        coords = np.atleast_2d(np.asarray(coords, dtype=np.float64))
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


def evaluate_points(model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor, dirs: Directions,
                    coords: np.ndarray, **kwargs) -> Mapping[str, np.ndarray]:
    """One-shot convenience: build a :class:`GridEvaluator` and evaluate ``coords``."""
    return GridEvaluator(model, criterion, x, y, dirs, **kwargs)(coords)
