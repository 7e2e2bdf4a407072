"""The Hessian of a checkpoint's training objective as a linear operator.

:class:`HessianOperator` applies ``H v`` (a Hessian-vector product, HVP) without ever forming
``H``. It is the one abstraction every curvature computation of :mod:`landscape.hessian` works
through, in the style of curvlinops: torch in and out on the model's device
(:meth:`HessianOperator.matvec`), a scipy bridge (:meth:`HessianOperator.to_scipy`) and a dense
form for small models (:meth:`HessianOperator.dense`), which the tests compare against
``torch.autograd.functional.hessian`` in float64.

The objective is exactly the training objective of :mod:`landscape.objective` (margin losses get
the penultimate features and the head weight), with the model in eval mode: batchnorm uses its
running statistics and dropout is off, so ``H`` is the Hessian of a deterministic function of the
parameters. Over several batches the objective is the size-weighted mean of the batch losses, and
so is its Hessian.

HVPs are reverse-over-reverse (double backward, as pyhessian and curvlinops do) through
``torch.func.functional_call``, so the model's own parameters are never modified. Each batch's
gradient graph is built once and kept, making every further HVP one backward pass. A parameter
that does not reach the loss has zero rows in ``H`` (never a ``None`` deep inside autograd), and
an operation without a second derivative raises :class:`HessianError` naming the fix.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .errors import ArgumentError, HessianError
from .objective import Objective

PARAM_CHOICES = ("all", "matrices")


def select_parameters(model: nn.Module, params: str | Sequence[str] = "all") -> list[str]:
    """Names of the parameters the Hessian is taken over, in ``model.named_parameters()`` order.

    Parameters
    ----------
    model : nn.Module
    params : {"all", "matrices"} or sequence of str
        ``"all"``: every parameter that requires grad; ``"matrices"``: only those with more than
        one dimension (Li et al.'s choice: weights of linear and conv layers, no biases or
        batchnorm scales); or explicit parameter names.

    Returns
    -------
    list of str
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if isinstance(params, str):
        if params not in PARAM_CHOICES:
            raise ArgumentError(f"params={params!r} is not a parameter selection; use 'all', 'matrices' or a list of "
                                "parameter names.")
        names = [n for n, p in named if params == "all" or p.dim() > 1]
    else:
        known = {n for n, _ in named}
        unknown = [n for n in params if n not in known]
        if unknown:
            from .errors import did_you_mean

            raise ArgumentError(f"parameter {unknown[0]!r} is not a trainable parameter of "
                                f"{type(model).__name__}.{did_you_mean(unknown[0], known)}")
        wanted = set(params)
        names = [n for n, _ in named if n in wanted]
    if not names:
        raise ArgumentError(f"no parameters selected with params={params!r}; {type(model).__name__} has no trainable "
                            "parameters of that kind.")
    return names


class HessianOperator:
    """``v -> H v`` for the Hessian of a training objective with respect to (some of) the parameters.

    Parameters
    ----------
    model : nn.Module
        The network; its parameters are read, never changed. Used in eval mode.
    criterion : nn.Module
        A :mod:`landscape.losses` loss (margin losses get features and head weight).
    x, y : torch.Tensor
        Inputs (already normalised, see :meth:`landscape.Checkpoint.prepare`) and labels, on the
        device the HVPs run on.
    params : {"all", "matrices"} or sequence of str
        Which parameters the Hessian is taken over (see :func:`select_parameters`); the others
        are held fixed.
    dtype : torch.dtype
        ``torch.float32`` (default) or ``torch.float64`` (reference accuracy): parameters,
        buffers and inputs are cast to it.
    batch_size : int, optional
        Evaluate the objective in consecutive batches of this size (fixed order, so deterministic)
        and average their Hessians weighted by batch size; default one full batch.
    point : mapping of str to Tensor, optional
        Parameter values at which to take the Hessian (e.g. a point of a plane, from
        :func:`landscape.directions.offset_parameters`); missing names keep the model's values.
    cache : bool
        Keep each batch's gradient graph between HVPs (default; memory of one forward and
        backward pass per batch). Without it every HVP rebuilds them (less memory, ~3x slower).

    Attributes
    ----------
    names : list of str
        Selected parameters, in the order their entries appear in flattened vectors.
    shapes : list of torch.Size
    size : int
        Dimension ``P`` of the operator (``shape == (P, P)``).
    hvps : int
        Hessian-vector products applied so far (each is one pass over all batches).
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 params: str | Sequence[str] = "all", dtype: torch.dtype = torch.float32,
                 batch_size: int | None = None, point: Mapping[str, torch.Tensor] | None = None,
                 cache: bool = True):
        if dtype not in (torch.float32, torch.float64):
            raise ArgumentError(f"dtype must be torch.float32 or torch.float64, got {dtype}.")
        if batch_size is not None and int(batch_size) < 1:
            raise ArgumentError(f"batch_size must be a positive integer, got {batch_size}.")
        if len(x) != len(y) or len(y) == 0:
            raise ArgumentError(f"need as many labels as inputs and at least one sample; got {len(x)} inputs and "
                                f"{len(y)} labels.")
        model.eval()
        self.model, self.criterion = model, criterion
        self.objective = Objective(model, criterion)
        self.dtype, self.params_choice = dtype, params
        self.names = select_parameters(model, params)
        point = dict(point or {})
        base = dict(model.named_parameters())
        device = next(iter(base.values())).device if base else x.device
        self.device = device
        # Every parameter (selected or fixed) and buffer, cast once; selected ones are replaced per call.
        self._fixed = {f"model.{n}": point.get(n, p).detach().to(device=device, dtype=dtype) for n, p in base.items()}
        self._fixed.update({f"model.{n}": (b.to(device=device, dtype=dtype) if b.is_floating_point() else b.to(device))
                            for n, b in model.named_buffers()})
        self._fixed.update({f"criterion.{n}": (t.detach().to(dtype) if t.is_floating_point() else t)
                            for n, t in list(criterion.named_parameters()) + list(criterion.named_buffers())})
        self.theta = {n: self._fixed[f"model.{n}"] for n in self.names}
        self.shapes = [self.theta[n].shape for n in self.names]
        self._numels = [t.numel() for t in self.theta.values()]
        self.size = int(sum(self._numels))
        bs = len(y) if batch_size is None else int(batch_size)
        x = x.to(device=device, dtype=dtype)
        y = y.to(device)
        self._batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(y), bs)]
        self._n = len(y)
        self.batch_size = bs
        self.cache = bool(cache)
        self.hvps = 0
        self._hvp = self._build_hvp()

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, ck, data, *, subset: int | None = None, seed: int = 0,
                        params: str | Sequence[str] = "all", dtype: torch.dtype = torch.float32,
                        batch_size: int | None = None, point: Mapping[str, torch.Tensor] | None = None,
                        cache: bool = True) -> "HessianOperator":
        """The Hessian of ``ck``'s training objective on ``data`` (or a seeded subset of it).

        Parameters
        ----------
        ck : landscape.Checkpoint
        data : landscape.Dataset
        subset : int, optional
            Use ``data.subset(subset, seed)`` instead of all of ``data``.
        seed : int
            Seed of the subset.
        params, dtype, batch_size, point, cache
            As in :class:`HessianOperator`.

        Returns
        -------
        HessianOperator
        """
        if subset is not None:
            data = data.subset(int(subset), seed=seed)
        x, y = ck.prepare(data, dtype=dtype)  # normalise in the target precision
        return cls(ck.model, ck.criterion, x, y, params=params, dtype=dtype, batch_size=batch_size, point=point,
                   cache=cache)

    def at(self, point: Mapping[str, torch.Tensor]) -> "HessianOperator":
        """The same objective (model, loss, data, selection) at other parameter values ``point``."""
        new = object.__new__(HessianOperator)
        new.__dict__.update(self.__dict__)
        new._fixed = dict(self._fixed)
        for n, t in point.items():
            key = f"model.{n}"
            if key not in new._fixed:
                raise ArgumentError(f"point names parameter {n!r}, which {type(self.model).__name__} does not have.")
            new._fixed[key] = t.detach().to(device=self.device, dtype=self.dtype)
        new.theta = {n: new._fixed[f"model.{n}"] for n in self.names}
        new.hvps = 0
        new._hvp = new._build_hvp()
        return new

    def _build_hvp(self):
        """Per batch, the gradient with its graph (built lazily, kept when ``cache``), and the HVP on it.

        Reverse-over-reverse: ``H v = d(g . v)/d theta`` with ``g`` the gradient built with
        ``create_graph=True``. Keeping each batch's gradient graph makes an HVP one backward pass
        through it (pyhessian does the same), about 3x cheaper than rebuilding it every time.
        """
        self._graphs: dict[int, tuple] = {}

        def hvp(v: dict, k: int) -> dict:
            leaves, grads = self._graphs.get(k) or self._gradient_graph(k)
            if self.cache:
                self._graphs[k] = (leaves, grads)
            live = [(g, v[n]) for n, g in zip(self.names, grads) if g is not None and g.requires_grad]
            if not live:  # the loss is at most linear in these parameters: H = 0
                return {n: torch.zeros_like(t) for n, t in self.theta.items()}
            out = torch.autograd.grad([g for g, _ in live], [leaves[n] for n in self.names],
                                      grad_outputs=[w for _, w in live], retain_graph=self.cache, allow_unused=True)
            return {n: torch.zeros_like(self.theta[n]) if h is None else h for n, h in zip(self.names, out)}

        return hvp

    def _state(self, theta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = dict(self._fixed)
        state.update({f"model.{n}": theta[n] for n in self.names})
        return state

    def _batch_loss(self, theta: Mapping[str, torch.Tensor], k: int) -> torch.Tensor:
        from torch.func import functional_call

        x, y = self._batches[k]
        return functional_call(self.objective, self._state(theta), (x, y))

    def _gradient_graph(self, k: int):
        leaves = {n: t.detach().requires_grad_(True) for n, t in self.theta.items()}
        with torch.enable_grad():
            loss = self._batch_loss(leaves, k)
            if not loss.requires_grad:  # no selected parameter reaches the loss: gradient and H are zero
                return leaves, (None,) * len(self.names)
            grads = torch.autograd.grad(loss, [leaves[n] for n in self.names], create_graph=True, allow_unused=True)
        return leaves, grads

    # -- flattening --------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """Shape ``(P, P)`` of the Hessian over the selected parameters."""
        return (self.size, self.size)

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat ``(P,)`` vector into ``{name: tensor}`` of the selected parameters' shapes."""
        parts = torch.split(v, self._numels)
        return {n: p.reshape(s) for n, p, s in zip(self.names, parts, self.shapes)}

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate ``{name: tensor}`` of the selected parameters into one flat vector."""
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def parameters(self) -> torch.Tensor:
        """The selected parameter values at the operator's point, flattened."""
        return self.flatten(self.theta)

    # -- application -------------------------------------------------------------------------
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat ``(P,)`` tensor ``v`` (any device and float dtype; returned in the operator's)."""
        if v.shape != (self.size,):
            raise ArgumentError(f"expected a vector of shape ({self.size},), got {tuple(v.shape)}.")
        vd = self.unflatten(v.to(device=self.device, dtype=self.dtype))
        total = None
        try:
            for k, (_, y) in enumerate(self._batches):
                hv = self.flatten(self._hvp(vd, k)) * (len(y) / self._n)
                total = hv if total is None else total + hv
        except (RuntimeError, NotImplementedError) as exc:
            raise HessianError(_explain(exc, self)) from exc
        self.hvps += 1
        return total

    def matmat(self, V: torch.Tensor, block: int = 64) -> torch.Tensor:
        """``H V`` for a ``(P, k)`` tensor; counts ``k`` HVPs.

        Columns go through autograd in blocks of ``block`` at once (``is_grads_batched``, a vmap
        over the backward pass), falling back to one column at a time where vmap is unsupported.
        """
        V = V.to(device=self.device, dtype=self.dtype)
        cols = []
        for j in range(0, V.shape[1], block):
            cols.append(self._matmat_block(V[:, j:j + block]))
        return torch.cat(cols, dim=1)

    def _matmat_block(self, V: torch.Tensor) -> torch.Tensor:
        k = V.shape[1]
        if k == 1 or not self.cache:
            return torch.stack([self.matvec(V[:, j]) for j in range(k)], dim=1)
        total = 0
        rows = self.unflatten_batched(V.T)
        try:
            for b, (_, y) in enumerate(self._batches):
                leaves, grads = self._graphs.get(b) or self._gradient_graph(b)
                self._graphs[b] = (leaves, grads)
                live = [(g, rows[n]) for n, g in zip(self.names, grads)
                        if g is not None and g.requires_grad]
                if not live:
                    return torch.zeros_like(V)
                out = torch.autograd.grad([g for g, _ in live], [leaves[n] for n in self.names],
                                          grad_outputs=[w for _, w in live], retain_graph=True, allow_unused=True,
                                          is_grads_batched=True)
                flat = torch.cat([torch.zeros(k, t.numel(), device=self.device, dtype=self.dtype) if h is None
                                  else h.reshape(k, -1) for h, t in zip(out, self.theta.values())], dim=1)
                total = total + flat.T * (len(y) / self._n)
        except (RuntimeError, NotImplementedError):
            # vmap over this model's backward is unsupported: one column at a time (same numbers)
            return torch.stack([self.matvec(V[:, j]) for j in range(k)], dim=1)
        self.hvps += k
        return total

    def unflatten_batched(self, V: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split ``(k, P)`` rows into ``{name: (k, *shape)}``."""
        parts = torch.split(V, self._numels, dim=1)
        return {n: p.reshape(len(V), *s) for n, p, s in zip(self.names, parts, self.shapes)}

    __matmul__ = matvec

    def loss(self) -> float:
        """The objective's value at the operator's point."""
        with torch.no_grad():
            return float(sum(self._batch_loss(self.theta, k) * (len(y) / self._n)
                             for k, (_, y) in enumerate(self._batches)))

    def gradient(self) -> torch.Tensor:
        """The objective's gradient at the operator's point, flattened."""
        total = 0
        for k, (_, y) in enumerate(self._batches):
            _, grads = self._gradient_graph(k)
            total = total + self.flatten({n: torch.zeros_like(self.theta[n]) if g is None else g.detach()
                                          for n, g in zip(self.names, grads)}) * (len(y) / self._n)
        return total

    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` on float64 numpy vectors (for ``eigsh`` and friends)."""
        from scipy.sparse.linalg import LinearOperator

        def mv(v: np.ndarray) -> np.ndarray:
            v = torch.as_tensor(np.ascontiguousarray(v).reshape(-1), dtype=self.dtype, device=self.device)
            return self.matvec(v).detach().cpu().double().numpy()

        return LinearOperator(self.shape, matvec=mv, rmatvec=mv, dtype=np.float64)

    def dense(self, max_size: int = 20_000) -> torch.Tensor:
        """The full ``(P, P)`` Hessian, one HVP per column (small models only, for tests and references)."""
        if self.size > max_size:
            raise ArgumentError(f"the Hessian has {self.size} rows; forming it densely is limited to {max_size} "
                                "(pass max_size= to override, or use a smaller model or params='matrices').")
        eye = torch.eye(self.size, device=self.device, dtype=self.dtype)
        H = self.matmat(eye)
        return (H + H.T) / 2  # symmetric up to rounding; make it exactly so for eigvalsh

    def __repr__(self) -> str:
        return (f"HessianOperator(size={self.size}, params={self.params_choice!r}, dtype={self.dtype}, "
                f"samples={self._n}, batches={len(self._batches)}, device={self.device})")


def _explain(exc: Exception, op: HessianOperator) -> str:
    """A user-facing message for an autograd failure inside an HVP."""
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return (f"cannot take Hessian-vector products of {type(op.model).__name__} with "
            f"{type(op.criterion).__name__}: an operation has no second derivative (double "
            f"backward failed: {msg}). Replace that layer or loss by one that is twice differentiable "
            "in PyTorch, or restrict the Hessian to other parameters with params=[...].")
