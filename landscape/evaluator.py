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
    """The first parametrised layer when it is a Linear/Conv2d fed directly by the data."""

    def __init__(self, module: nn.Module, name: str, inp: torch.Tensor):
        self.module, self.name, self.inp = module, name, inp

    def apply(self, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.module, nn.Conv2d):
            return self.module._conv_forward(self.inp, weight, bias)
        return F.linear(self.inp, weight, bias)


def find_first_layer(model: nn.Module, x: torch.Tensor) -> _FirstLayer | None:
    """Run ``model(x)`` once and return the shortcut layer, or None when the shortcut does not apply.

    The first module with parameters of its own that runs is accepted when it is an
    ``nn.Linear`` or ``nn.Conv2d``, runs exactly once, and its input holds the data itself
    (same numbers, possibly reshaped): then its output is linear in its weights.
    """
    calls: list[tuple[str, nn.Module, torch.Tensor]] = []
    owners = {m: n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: calls.append((n, mod, args[0] if args else None)))
             for m, n in owners.items()]
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
    return _FirstLayer(module, name, inp)


class _Objective(nn.Module):
    """``(loss, correct[, ce])`` of a model on ``(x, y)``, as one module so ``functional_call`` can swap weights."""

    def __init__(self, model: nn.Module, criterion: nn.Module, with_ce: bool):
        super().__init__()
        self.model, self.criterion, self.with_ce = model, criterion, with_ce

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss, logits = loss_and_logits(self.model, self.criterion, x, y)
        parts = [loss, (logits.argmax(1) == y).sum().to(loss.dtype)]
        if self.with_ce:
            parts.append(F.cross_entropy(logits, y))
        return torch.stack(parts)


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
        skip = {f"{self.first.name}.{k}" if self.first.name else k for k, _ in self.first.module.named_parameters()} \
            if self.first is not None else set()
        # Only parameters that move (non-zero direction) and are not inside the shortcut layer are rewritten.
        self.moving = [(name, p, p.detach().clone(), [d[name] for d in dvec]) for name, p in params.items()
                       if name not in skip and any(bool(d[name].any()) for d in dvec)]
        self.parts = self._first_layer_parts(dvec) if self.first is not None else None
        self.buffer = torch.empty_like(self.parts[0]) if self.parts is not None else None

    # -- setup -------------------------------------------------------------------------------
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
        return parts

    @contextlib.contextmanager
    def _patched(self):
        """Swap the first layer's forward for the precomputed combination; restore weights and forward after."""
        module = self.first.module if self.first is not None else None
        own = module.__dict__.get("forward") if module is not None else None
        if module is not None:
            module.forward = self._first_layer_output
        try:
            yield
        finally:
            if module is not None:
                if own is None:
                    del module.forward  # back to the class's method
                else:
                    module.forward = own
            with torch.no_grad():
                for _, p, base, _ in self.moving:
                    p.copy_(base)

    def _scale(self, nb: int) -> torch.Tensor:
        """Per-field weights of one batch: the means (losses) by the batch size, the correct count by 1."""
        s = torch.full((len(self.fields),), float(nb), dtype=torch.float64, device=self.x.device)
        s[1] = 1.0
        return s

    # -- one point at a time (CPU) -------------------------------------------------------------
    def _first_layer_output(self, inp: torch.Tensor) -> torch.Tensor:
        return self._combination[self._slice]

    def _place(self, c: np.ndarray) -> None:
        for _, p, base, ds in self.moving:
            torch.add(base, ds[0], alpha=float(c[0]), out=p)
            for d, ci in zip(ds[1:], c[1:]):
                p.add_(d, alpha=float(ci))
        if self.parts is not None:
            torch.add(self.parts[0], self.parts[1], alpha=float(c[0]), out=self.buffer)
            for part, ci in zip(self.parts[2:], c[1:]):
                self.buffer.add_(part, alpha=float(ci))
            self._combination = self.buffer

    def _one(self, c: np.ndarray) -> torch.Tensor:
        self._place(c)
        n = len(self.y)
        if self.batch_size >= n:  # one batch: no reweighting, so (0, 0) reproduces a plain evaluation exactly
            self._slice = slice(0, n)
            out = self.objective(self.x, self.y).double()
            return out / torch.tensor([1.0 if k != 1 else n for k in range(len(self.fields))], dtype=out.dtype,
                                      device=out.device)
        total = 0.0
        for start in range(0, n, self.batch_size):
            self._slice = slice(start, start + self.batch_size)
            nb = len(self.y[self._slice])
            total = total + self.objective(self.x[self._slice], self.y[self._slice]).double() * self._scale(nb)
        return total / n

    # -- several points per launch (CUDA) ------------------------------------------------------
    def _vmapped(self, coords: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call, vmap

        moving = {"model." + name: (base, ds) for name, _, base, ds in self.moving}

        def at(c: torch.Tensor) -> torch.Tensor:
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
            out = []
            for start in range(0, len(self.y), self.batch_size):
                self._slice = slice(start, start + self.batch_size)
                xb, yb = self.x[self._slice], self.y[self._slice]
                r = functional_call(self.objective, params, (xb, yb), strict=False)
                out.append(r.double() * self._scale(len(yb)))
            return torch.stack(out).sum(0) / len(self.y)

        return vmap(at)(coords)

    # -- public --------------------------------------------------------------------------------
    def __call__(self, coords: np.ndarray) -> dict[str, np.ndarray]:
        """Values at ``coords`` (``(k, n_dirs)``): ``{"loss", "accuracy"[, "ce_loss"]}`` arrays of length k.

        Points where the loss diverges give inf/NaN, never an exception.
        """
        coords = np.atleast_2d(np.asarray(coords, dtype=np.float64))
        results = []
        with torch.inference_mode(), self._patched():
            if self.ppb > 1:
                ct = torch.as_tensor(coords, dtype=self.x.dtype, device=self.x.device)
                for start in range(0, len(coords), self.ppb):
                    results.append(self._vmapped(ct[start:start + self.ppb]))
            else:
                results = [self._one(c)[None] for c in coords]
        values = torch.cat(results).double().cpu().numpy()
        return {name: values[:, k] for k, name in enumerate(self.fields)}


def evaluate_points(model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor, dirs: Directions,
                    coords: np.ndarray, **kwargs) -> Mapping[str, np.ndarray]:
    """One-shot convenience: build a :class:`GridEvaluator` and evaluate ``coords``."""
    return GridEvaluator(model, criterion, x, y, dirs, **kwargs)(coords)
