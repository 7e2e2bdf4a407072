"""BatchNorm running statistics at moved weights, the way the field argues about it.

A loss surface moves the weights away from those the running statistics were measured for.
Two answers are in use, and every computation that evaluates a model at moved weights
(surfaces, lines, ratio maps, mode connectivity, sharpness) offers both through ``bn=``:

* ``"eval"``: the running statistics as stored (Li et al. 2018's default);
* ``"recompute"``: before evaluating a point, re-estimate the running statistics at that
  point's weights on a fixed seeded subset of the training split, as Garipov et al. (2018)
  do along curves (``torch.optim.swa_utils.update_bn``: batch statistics in train mode,
  averaged with ``momentum=None``, i.e. a cumulative moving average over the batches). The
  loss itself is then evaluated in eval mode with those statistics, so batch statistics of the
  evaluated data never leak into it.

:class:`StatisticsEstimator` does the re-estimation on a private copy of the model, with
``functional_call``-style parameter dicts in and buffer dicts out, so the caller's model (its
weights, buffers, modes and momenta) is never touched; :func:`recompute_statistics` is the
one-shot form. Unlike ``update_bn``, dropout stays off while the statistics are gathered (the
network whose loss is evaluated has no dropout, and the estimate is then deterministic).
"""
from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import nn

from .errors import ArgumentError, check_choice, check_scalar

BN_MODES = ("eval", "recompute")
DEFAULT_BN_SUBSET = 2048  # samples of the training split per re-estimate, unless the caller says otherwise
DEFAULT_BN_BATCH_SIZE = 128  # the batch size of Garipov et al.'s and Li et al.'s loaders


def batchnorm_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every batchnorm of ``model`` that keeps running statistics."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def statistics_names(model: nn.Module) -> list[str]:
    """Names (as in ``model.named_buffers()``) of the buffers a re-estimate replaces."""
    out = []
    for name, bn in batchnorm_modules(model):
        prefix = f"{name}." if name else ""
        out += [prefix + b for b in ("running_mean", "running_var", "num_batches_tracked")
                if getattr(bn, b, None) is not None]
    return out


def check_bn(bn: str) -> str:
    """Validate a ``bn=`` option (``"eval"`` or ``"recompute"``)."""
    return check_choice(bn, "bn", BN_MODES)


class StatisticsEstimator:
    """Re-estimate a model's batchnorm running statistics at given weights.

    Parameters
    ----------
    model : nn.Module
        The network. It is copied once (weights, buffers and modes of the original are never
        changed); in the copy every batchnorm runs in train mode with ``momentum=None``
        (cumulative moving average) and every other module in eval mode (dropout off).
    data : Dataset, spec string, (x, y) pair, torch Dataset or DataLoader
        The data the statistics are measured on: the training split, as in Garipov et al.
        Anything :func:`landscape.data.as_dataset` accepts (a spec string loads its train split).
    n : int, optional
        Use a seeded subset of this many samples (default: all of ``data``); the same subset
        for every point.
    seed : int
        Seed of the subset.
    batch_size : int
        Batch size of the estimate: the running statistics are the average of the batches'
        statistics, so it is part of the definition (Garipov et al. and Li et al. use 128).
    transform : callable, optional
        Applied to each input batch on the device (e.g. :meth:`landscape.Checkpoint.normalize`).
    device : str or torch.device, optional
        Where the batches go (default: the model's device).

    Notes
    -----
    A last batch of a single sample is dropped: a batchnorm over one value per channel has no
    variance (``BatchNorm1d`` refuses it in train mode).
    """

    def __init__(self, model: nn.Module, data, *, n: int | None = None, seed: int = 0,
                 batch_size: int = DEFAULT_BN_BATCH_SIZE, transform=None, device=None):
        from .data import as_dataset

        n = check_scalar(n, "bn subset", int, min=2, allow_none=True)
        self.batch_size = check_scalar(batch_size, "bn batch_size", int, min=2)
        self.names = statistics_names(model)
        if not self.names:
            raise ArgumentError(f"{type(model).__name__} has no batchnorm with running statistics, so there is "
                                "nothing to recompute; use bn='eval'.")
        self.data = as_dataset(data, subset=n, seed=seed, split="train")
        if len(self.data) < 2:
            raise ArgumentError(f"re-estimating batchnorm statistics needs at least 2 samples, got {len(self.data)}.")
        param = next(model.parameters(), None)
        self.device = torch.device(device) if device is not None else (
            param.device if param is not None else torch.device("cpu"))
        self.dtype = param.dtype if param is not None else torch.float32
        self.transform = transform
        self.seed, self.n = int(seed), len(self.data)
        self._copy = copy.deepcopy(model).eval()
        for _, bn in batchnorm_modules(self._copy):
            bn.train()
            bn.momentum = None  # cumulative moving average over the batches
        self._like = {k: v for k, v in model.named_buffers() if k in set(self.names)}

    def _fresh(self) -> dict[str, torch.Tensor]:
        """Reset statistics, as ``BatchNorm.reset_running_stats`` would set them."""
        out = {}
        for name, b in self._like.items():
            if name.endswith("running_mean"):
                out[name] = torch.zeros_like(b)
            elif name.endswith("running_var"):
                out[name] = torch.ones_like(b)
            else:
                out[name] = torch.zeros_like(b)
        return out

    def __call__(self, params: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Running statistics at parameters ``params`` (missing names keep the model's values).

        Parameters
        ----------
        params : mapping of str to Tensor, optional
            ``functional_call``-style values, e.g. from :func:`landscape.directions.offset_parameters`.
            Entries naming batchnorm statistics are ignored (they are what is re-estimated).

        Returns
        -------
        dict of str to Tensor
            ``{name: tensor}`` for every ``running_mean``, ``running_var`` and
            ``num_batches_tracked`` of the model (names as in ``model.named_buffers()``).
        """
        from torch.func import functional_call

        stats = self._fresh()
        state = {k: v for k, v in (params or {}).items() if k not in stats}
        state.update(stats)
        with torch.no_grad():
            for xb, _ in self.data.batches(self.batch_size, self.device, self.dtype, self.transform):
                if len(xb) < 2:
                    continue  # see Notes
                functional_call(self._copy, state, (xb,), strict=False)
        return stats


def recompute_statistics(model: nn.Module, params: Mapping[str, torch.Tensor] | None, data, n: int | None = None,
                         seed: int = 0, batch_size: int = DEFAULT_BN_BATCH_SIZE, *, transform=None,
                         device=None) -> dict[str, torch.Tensor]:
    """Batchnorm running statistics of ``model`` re-estimated at parameters ``params`` on ``data``.

    The one-shot form of :class:`StatisticsEstimator` (see it for every parameter). The
    caller's model is never modified; load the result with
    ``functional_call(model, {**params, **stats}, x)`` or ``model.load_state_dict(stats, strict=False)``.

    Examples
    --------
    >>> stats = recompute_statistics(ck.model, offset_parameters(ck.model, dirs, [0.5, 0.0]),
    ...                              ls.load_dataset("digits", "train"), n=1024, seed=0,
    ...                              transform=ck.normalize)  # doctest: +SKIP
    """
    return StatisticsEstimator(model, data, n=n, seed=seed, batch_size=batch_size, transform=transform,
                               device=device)(params)
