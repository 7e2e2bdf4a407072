"""Curvature operators of a checkpoint's training objective: the Hessian and the generalised Gauss-Newton matrix.

:class:`HessianOperator` applies ``H v`` (a Hessian-vector product, HVP) and :class:`GGNOperator`
``G v`` with ``G = J^T H_loss J`` without ever forming a matrix. They are
:class:`~landscape.operators.LinearOperator` s: torch in and out on the model's device
(``matvec``, ``matmat``), a scipy bridge (``to_scipy``), a dense form for small models
(``dense``), which the tests compare against ``torch.autograd.functional.hessian`` and densely
built ``J^T H J`` in float64, and the algebra of :mod:`landscape.operators` (``H + G``,
``H - c``, ``c * H``, ``H @ H``). ``.block(names)`` restricts either to a subset of the
parameters (the Hessian of one layer, say), and ``.at(point)`` moves it to other weights.

The objective is exactly the training objective of :mod:`landscape.objective` (margin losses get
the penultimate features and the head weight), evaluated in eval mode: batchnorm uses its running
statistics and dropout is off, so ``H`` is the Hessian of a deterministic function of the
parameters. The caller's model is left in the mode it came in. Over several batches the objective
is the size-weighted mean of the batch losses, and so are its Hessian and GGN; under torchrun with
``shard=True`` each rank takes its share of the data and the products are summed over ranks
(all-reduce), so every rank gets the product of the whole data set.

How a product is computed
-------------------------
Measured with ``landscape bench hessian`` on a ResNet-20 (0.27M parameters, 256 synthetic 32x32x3
images, one CPU thread, a shared machine; ratios of interleaved best-of-3 timings):

* Eval-mode batchnorm is folded into the convolution or linear layer before it
  (:mod:`landscape.folding`): the same function of the same parameters, without PyTorch's
  batchnorm double backward, which took a fifth of every unfolded HVP in the profile. A cached
  product cost 7.4 forward passes folded, 8.7 unfolded, and 0.57 of pyhessian's cached product;
  the first product (fold, graph, one HVP) 0.63 of pyhessian's set-up plus first product.
* Reverse-over-reverse (double backward, as pyhessian and curvlinops do) through
  ``torch.func.functional_call``, so the model's own parameters are never modified. Each batch's
  gradient graph is built once and kept (``cache``), so every further HVP is one backward pass
  through it. Its floor is six convolution-sized operations per layer (the forward pass has one),
  which is why a product costs several forward passes. ``torch.func`` forward-over-reverse
  (``jvp(grad)``, nothing kept) cost 0.9 to 1.4 times a cached product in different runs;
  ``torch.func.linearize`` keeps the primal pass and cost 0.75 to 0.86 times, but traces for 7 to
  43 s at every point, since it bakes the point's values in.
* Several vectors go through one graph (``is_grads_batched``, a vmap) only on CUDA by default: on
  the CPU a batched product cost as much or more per vector than one vector at a time
  (``probe_batch``). Accumulating over 4 batches of 64 cost 0.85 to 0.91 of one batch of 256; the
  default stays one batch, because batch-adaptive losses (MAM-SoftMax) depend on the batching.
* ``method="fd"`` replaces the double backward by central differences of gradients,
  ``(g(w + h v) - g(w - h v)) / 2h`` (two gradient passes, no graph kept): half the cost, but see
  below for its accuracy. It is used automatically, with a warning, where an operation has no
  second derivative.
* ``dtype=torch.bfloat16`` (or ``float16``) runs the forward pass under autocast; vectors stay
  float32 (0.7 of the float32 cost, with a relative error of 0.17 on the ResNet-20, against 1e-3
  for float32 and pyhessian alike). ``torch.float64`` gives reference accuracy. On CPUs whose
  bfloat16 convolution with wide kernels is wrong (oneDNN with AMX, see
  :func:`bfloat16_wide_convolutions_exact`) the weight-gradient convolutions of the double backward
  run in float32 (:class:`FloatWideConvolutions`): 0.02 relative error on the cnn instead of 0.38.

Finite-difference step
----------------------
For a column ``v`` the step is ``h = delta / ||v||`` so that the weights move by ``delta`` in norm;
by default ``delta = eps^(1/3) (1 + ||w||)`` with ``eps`` the machine epsilon of the compute dtype
and ``w`` the selected weights (the central-difference rule of Nocedal & Wright, Numerical
Optimization, ch. 8). For a smooth objective the error of a column is

    ||fd - H v|| ~ (delta^2 / 6) ||v|| ||g'''_u|| + eps ||g|| ||v|| / delta,

with ``u = v / ||v||`` and ``g'''_u = d^3/dt^3 grad L(w + t u)`` at ``t = 0``: truncation, quadratic
in ``delta``, plus the rounding of the two gradients. Measured on the
shipped digits mlp and cnn with smooth activations (tanh, GELU, softplus): 1e-4 to 1e-3 relative
in float32 and 1e-10 to 1e-9 in float64 with the default step (``tests/test_hvp_fd.py``). A
network with ReLU or max-pooling is only piecewise smooth: its gradient jumps where a unit
changes sign, and a difference across a kink is off by the jump over ``2h``, which does not
shrink with ``delta``. On the shipped ReLU models every float32 step tried (1e-4 to 0.1) was off
by 1e-2 to 20 relative; float64 helped only where no kink lay within the step (the mlp: 5e-10 at
the default step; the cnn, with max-pooling: 24). There only the exact double backward is
meaningful; ``landscape bench hessian`` prints the error finite differences reach on its model.

A parameter that does not reach the loss has zero rows (never a ``None`` deep inside autograd).
Only an operation without a second derivative is reported as such (:class:`HessianError`); an
out-of-memory error, or any other, is raised as it is, with a hint on what to change.
"""
from __future__ import annotations

import contextlib
import functools
import math
import warnings
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import ArgumentError, HessianError, check_choice, check_scalar, did_you_mean
from .folding import eval_mode, fold_batchnorm
from .objective import Objective, outputs
from .operators import LinearOperator

__all__ = ["HessianOperator", "GGNOperator", "CurvatureOperator", "HessianError", "select_parameters"]

PARAM_CHOICES = ("all", "matrices")
METHODS = ("auto", "autograd", "fd")
AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)
DTYPES = (torch.float32, torch.float64) + AUTOCAST_DTYPES
#: Vectors pushed through one graph at a time by default, per device type (see the module docstring).
PROBE_BATCH = {"cpu": 1, "cuda": 16}
#: Convolution kernels wider than this run in float32 under bfloat16 autocast where the CPU's bfloat16 convolution
#: of wide kernels is wrong (see :func:`bfloat16_wide_convolutions_exact`).
WIDE_KERNEL = 7


@functools.cache
def bfloat16_wide_convolutions_exact(device_type: str = "cpu") -> bool:
    """Whether this machine's bfloat16 convolution with wide kernels is correct (to bfloat16 rounding).

    A double backward computes a convolution's weight gradient as a convolution whose kernel is the
    activation map (16x16, say). On CPUs with AMX (Sapphire Rapids and later) the oneDNN of torch 2.13
    returns garbage for such bfloat16 convolutions (relative error ~1, kernels 8 and wider in the
    cases measured; 3x3 to 7x7 kernels and float16 are right), so bfloat16 Hessian products were off
    by 0.4 there against 0.02 elsewhere. A probe of that shape tells, once per process.
    """
    if device_type != "cpu":
        return True
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 12, 12, generator=gen).to(torch.bfloat16)
    w = torch.randn(8, 8, WIDE_KERNEL + 1, WIDE_KERNEL + 1, generator=gen).to(torch.bfloat16)
    ref = F.conv2d(x.double(), w.double(), padding=1)
    err = torch.linalg.vector_norm(F.conv2d(x, w, padding=1).double() - ref) / torch.linalg.vector_norm(ref)
    return bool(err < 0.05)  # bfloat16 rounding gives ~2e-3


class FloatWideConvolutions(TorchDispatchMode):
    """Run every bfloat16 convolution whose kernel is wider than :data:`WIDE_KERNEL` in float32 (result cast back).

    The workaround for :func:`bfloat16_wide_convolutions_exact`: only the weight-gradient convolutions of a
    double backward (and a network's own kernels of 8 and wider) change precision; all else runs as autocast
    runs it.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten.convolution.default:
            x, w = args[0], args[1]
            if x.dtype == torch.bfloat16 and w.dim() > 2 and max(w.shape[2:]) > WIDE_KERNEL:
                up = [a.float() if isinstance(a, torch.Tensor) else a for a in args]
                return func(*up, **kwargs).to(torch.bfloat16)
        return func(*args, **kwargs)


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
            raise ArgumentError(f"parameter {unknown[0]!r} is not a trainable parameter of "
                                f"{type(model).__name__}.{did_you_mean(unknown[0], known)}")
        wanted = set(params)
        names = [n for n, _ in named if n in wanted]
    if not names:
        raise ArgumentError(f"no parameters selected with params={params!r}; {type(model).__name__} has no trainable "
                            "parameters of that kind.")
    return names


# -- failures --------------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def missing_second_derivative(exc: BaseException) -> bool:
    """Whether an autograd failure means that some operation has no (or no twice-usable) derivative."""
    msg = str(exc).lower()
    return isinstance(exc, (RuntimeError, NotImplementedError)) and (
        ("derivative for" in msg and "not implemented" in msg) or "double backward" in msg
        or "differentiate twice" in msg or "once_differentiable" in msg or "second derivative" in msg)


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error (CUDA's, or the CPU allocator's)."""
    oom = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
                if t is not None)
    msg = str(exc).lower()
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and (
        "out of memory" in msg or "can't allocate memory" in msg or "not enough memory" in msg))


def _add_hint(exc: BaseException, hint: str) -> None:
    if hasattr(exc, "add_note"):  # Python >= 3.11; the error keeps its type and message
        exc.add_note(hint)


class CurvatureOperator(LinearOperator):
    """What the Hessian and GGN operators share: objective, data, parameter selection, point, products.

    Parameters
    ----------
    model : nn.Module
        The network; its parameters are read, never changed, and its mode is left as it was
        (the objective is evaluated in eval mode).
    criterion : nn.Module
        A :mod:`landscape.losses` loss (margin losses get features and head weight).
    x, y : torch.Tensor
        Inputs (already normalised, see :meth:`landscape.Checkpoint.prepare`) and labels.
    params : {"all", "matrices"} or sequence of str
        Which parameters the operator is taken over (see :func:`select_parameters`); the others
        are held fixed.
    dtype : torch.dtype
        ``torch.float32`` (default), ``torch.float64`` (reference accuracy: parameters, buffers
        and inputs are cast to it), or ``torch.bfloat16`` / ``torch.float16``: the forward pass
        runs under ``torch.autocast`` in that dtype, with float32 parameters and vectors.
    batch_size : int, optional
        Evaluate the objective in consecutive batches of this size (fixed order, so deterministic)
        and average weighted by batch size; default one batch (per rank).
    point : mapping of str to Tensor, optional
        Parameter values at which to take the operator (e.g. a point of a plane, from
        :func:`landscape.directions.offset_parameters`); missing names keep the model's values.
    cache : bool
        Keep each batch's graph between products (default; memory of about one forward and
        backward pass per batch). Without it every product rebuilds it (less memory, slower).
    fold : bool
        Fold eval-mode batchnorm into the layer before it (:mod:`landscape.folding`; exact, and
        used only where the fold reproduces the model on the first inputs).
    shard : bool
        Under torchrun: this rank takes its contiguous share of the samples, and every product
        (and ``loss``, ``gradient``) is summed over ranks, so all ranks get the whole data's.
        Every rank must then apply the same products in the same order.
    probe_batch : int, optional
        The most vectors pushed through one graph at once by :meth:`matmat` (default
        ``PROBE_BATCH[device type]``: 1 on the CPU, where a batched product cost more per vector
        than single ones on a ResNet-20; 16 on CUDA, not yet measured).

    Attributes
    ----------
    names : list of str
        Selected parameters, in the order their entries appear in flattened vectors.
    shapes : list of torch.Size
    size : int
        Dimension ``P`` of the operator (``shape == (P, P)``).
    hvps : int
        Products applied so far (each is one pass over all batches).
    folded : bool
        Whether the forward pass runs with batchnorm folded.
    """

    symmetric = True
    hvps = 0
    kind = "curvature"

    def __init__(self, model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 params: str | Sequence[str] = "all", dtype: torch.dtype = torch.float32,
                 batch_size: int | None = None, point: Mapping[str, torch.Tensor] | None = None,
                 cache: bool = True, fold: bool = True, shard: bool = False, probe_batch: int | None = None):
        if dtype not in DTYPES:
            raise ArgumentError(f"dtype must be torch.float32 or torch.float64, or torch.bfloat16 / torch.float16 "
                                f"for autocast, got {dtype}.")
        batch_size = check_scalar(batch_size, "batch_size", int, min=1, allow_none=True)
        probe_batch = check_scalar(probe_batch, "probe_batch", int, min=1, allow_none=True)
        if len(x) != len(y) or len(y) == 0:
            raise ArgumentError(f"need as many labels as inputs and at least one sample; got {len(x)} inputs and "
                                f"{len(y)} labels.")
        self.model, self.criterion = model, criterion
        self.compute_dtype = dtype
        self.autocast = dtype in AUTOCAST_DTYPES
        self.dtype = torch.float32 if self.autocast else dtype
        self.params_choice = params
        names = select_parameters(model, params)
        base = dict(model.named_parameters())
        self.device = base[names[0]].device
        point = dict(point or {})
        unknown = [n for n in point if n not in base]
        if unknown:
            raise ArgumentError(f"point names parameter {unknown[0]!r}, which {type(model).__name__} does not have."
                                f"{did_you_mean(unknown[0], base)}")
        cast = {"device": self.device, "dtype": self.dtype}
        # every parameter (selected or fixed) and buffer, cast once; selected ones are replaced per call
        fixed = {f"model.{n}": point.get(n, p).detach().to(**cast) for n, p in base.items()}
        fixed.update({f"model.{n}": b.to(**cast) if b.is_floating_point() else b.to(self.device)
                      for n, b in model.named_buffers()})
        fixed.update({f"criterion.{n}": t.detach().to(self.dtype) if t.is_floating_point() else t
                      for n, t in list(criterion.named_parameters()) + list(criterion.named_buffers())})
        self._fixed = fixed
        x = x.to(**cast)
        y = y.to(self.device)
        needs_features = bool(getattr(criterion, "needs_features", False))
        folded = fold_batchnorm(model, features=needs_features, check=x[:2].to(base[names[0]].dtype)) if fold else None
        self.net = folded if folded is not None else model
        self.folded = folded is not None
        self.objective = Objective(self.net, criterion)
        self._module = self._make_module()
        self._keys = {n for n, _ in self._module.named_parameters(remove_duplicate=False)}
        self._keys |= {n for n, _ in self._module.named_buffers(remove_duplicate=False)}
        self._keys |= {n for n, _ in self.objective.named_parameters(remove_duplicate=False)}
        self._keys |= {n for n, _ in self.objective.named_buffers(remove_duplicate=False)}
        self._select(names)

        self.shard = bool(shard)
        self.rank, self.world = 0, 1
        if self.shard:
            from .distributed import dist_info

            self.rank, self.world = dist_info()
            if self.world == 1:
                raise ArgumentError("shard=True needs a torch.distributed process group with several ranks: launch "
                                    "with torchrun and call landscape.distributed.init_distributed() first.")
        n = len(y)
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        x, y = x[lo:hi], y[lo:hi]
        bs = max(len(y), 1) if batch_size is None else batch_size
        self._batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(y), bs)]
        self._n = n
        self.batch_size = bs
        self.cache = bool(cache)
        self.probe_batch = probe_batch or PROBE_BATCH.get(self.device.type, 1)
        self.hvps = 0
        self._graphs: dict[int, tuple] = {}
        # shared by every operator derived with at() / block(): warnings are given once per family
        self._family = {"warned": set()}

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, ck, data, *, subset: int | None = None, seed: int = 0, **kwargs):
        """The operator of ``ck``'s training objective on ``data`` (or a seeded subset of it).

        Parameters
        ----------
        ck : landscape.Checkpoint, path or nn.Module
            Taken through :func:`landscape.checkpoint.as_checkpoint`.
        data : landscape.Dataset, spec string, (x, y) pair, torch Dataset or DataLoader
            Taken through :func:`landscape.data.as_dataset`.
        subset : int, optional
            Use a seeded random subset of this many samples.
        seed : int
            Seed of the subset.
        **kwargs
            The operator's options (``params``, ``dtype``, ``batch_size``, ``point``, ...).

        Returns
        -------
        CurvatureOperator
        """
        from .checkpoint import as_checkpoint
        from .data import as_dataset

        ck = as_checkpoint(ck)
        data = as_dataset(data, subset, seed)
        dtype = kwargs.get("dtype", torch.float32)
        x, y = ck.prepare(data, dtype=torch.float32 if dtype in AUTOCAST_DTYPES else dtype)  # normalise in it
        return cls(ck.model, ck.criterion, x, y, **kwargs)

    def _make_module(self) -> nn.Module:
        return self.objective

    def _select(self, names: list[str]) -> None:
        self.names = list(names)
        self.theta = {n: self._fixed[f"model.{n}"] for n in self.names}
        self.shapes = [self.theta[n].shape for n in self.names]
        self._numels = [t.numel() for t in self.theta.values()]
        self.shape = (int(sum(self._numels)),) * 2  # size is shape[1]

    def _derive(self, **attrs) -> "CurvatureOperator":
        """A copy sharing model, data and family, with ``attrs`` replaced and no graphs or products yet."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.update(attrs)
        new._graphs, new.hvps = {}, 0
        return new

    def at(self, point: Mapping[str, torch.Tensor]) -> "CurvatureOperator":
        """The same operator (model, loss, data, selection, options) at other parameter values ``point``."""
        fixed = dict(self._fixed)
        for n, t in point.items():
            key = f"model.{n}"
            if key not in fixed:
                raise ArgumentError(f"point names parameter {n!r}, which {type(self.model).__name__} does not have.")
            fixed[key] = t.detach().to(device=self.device, dtype=self.dtype)
        new = self._derive(_fixed=fixed)
        new._select(self.names)
        return new

    def block(self, names: str | Sequence[str]) -> "CurvatureOperator":
        """The operator restricted to the parameters ``names`` (a sub-block: ``H[names, names]``).

        The other parameters are held at the operator's point. Names keep this operator's order.

        Parameters
        ----------
        names : str or sequence of str
            Parameter names, a subset of :attr:`names`.

        Returns
        -------
        CurvatureOperator
            Of the same kind and options, over ``names`` only.
        """
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in self.names]
        if unknown or not names:
            bad = unknown[0] if unknown else "(none)"
            raise ArgumentError(f"block needs names of this operator's parameters; {bad!r} is not one of them."
                                f"{did_you_mean(bad, self.names)}")
        wanted = set(names)
        ordered = [n for n in self.names if n in wanted]
        new = self._derive(params_choice=ordered)
        new._select(ordered)
        return new

    # -- flattening --------------------------------------------------------------------------
    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat ``(P,)`` vector into ``{name: tensor}`` of the selected parameters' shapes."""
        parts = torch.split(v, self._numels)
        return {n: p.reshape(s) for n, p, s in zip(self.names, parts, self.shapes)}

    def unflatten_batched(self, V: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split ``(k, P)`` rows into ``{name: (k, *shape)}``."""
        parts = torch.split(V, self._numels, dim=1)
        return {n: p.reshape(len(V), *s) for n, p, s in zip(self.names, parts, self.shapes)}

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate ``{name: tensor}`` of the selected parameters into one flat vector."""
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def parameters(self) -> torch.Tensor:
        """The selected parameter values at the operator's point, flattened."""
        return self.flatten(self.theta)

    def _rows(self, grads: Sequence[torch.Tensor | None], m: int) -> torch.Tensor:
        """``(m, P)`` from per-parameter results (``(m, *shape)``, or ``shape`` when ``m`` is 1); None is zero."""
        return torch.cat([torch.zeros(m, k, device=self.device, dtype=self.dtype) if g is None
                          else g.reshape(m, k).to(self.dtype) for g, k in zip(grads, self._numels)], dim=1)

    # -- evaluation --------------------------------------------------------------------------
    def _context(self):
        """Gradients on, model and criterion in eval mode (restored after), autocast when asked for."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.enable_grad())
        stack.enter_context(eval_mode(self.model, self.net, self.criterion))
        if self.autocast:
            stack.enter_context(torch.autocast(self.device.type, dtype=self.compute_dtype))
        stack.enter_context(self._precision_guard())
        return stack

    def _precision_guard(self):
        """:class:`FloatWideConvolutions` where this machine's bfloat16 wide-kernel convolution is wrong."""
        if self.compute_dtype == torch.bfloat16 and not bfloat16_wide_convolutions_exact(self.device.type):
            return FloatWideConvolutions()
        return contextlib.nullcontext()

    def _state(self, theta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = {k: t for k, t in self._fixed.items() if k in self._keys}
        state.update({f"model.{n}": t for n, t in theta.items() if f"model.{n}" in self._keys})
        return state

    def _call(self, module: nn.Module, theta: Mapping[str, torch.Tensor], k: int):
        from torch.func import functional_call

        x, y = self._batches[k]
        return functional_call(module, self._state(theta), (x, y))

    def _weight(self, k: int) -> float:
        return len(self._batches[k][1]) / self._n

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a per-rank partial result (itself when not sharded)."""
        if self.shard:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def loss(self) -> float:
        """The objective's value at the operator's point."""
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        with self._context(), torch.no_grad():
            for k in range(len(self._batches)):
                total += self._call(self.objective, self.theta, k).double() * self._weight(k)
        return float(self._reduce(total))

    def _batch_gradient(self, theta: Mapping[str, torch.Tensor], k: int) -> torch.Tensor:
        leaves = {n: t.detach().requires_grad_(True) for n, t in theta.items()}
        with self._context():
            loss = self._call(self.objective, leaves, k)
            if not loss.requires_grad:
                return torch.zeros(self.size, device=self.device, dtype=self.dtype)
            grads = torch.autograd.grad(loss, [leaves[n] for n in self.names], allow_unused=True)
        return self._rows(grads, 1)[0]

    def gradient(self, theta: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The objective's gradient at the operator's point (or at selected values ``theta``), flattened."""
        theta = self.theta if theta is None else theta
        total = torch.zeros(self.size, device=self.device, dtype=self.dtype)
        for k in range(len(self._batches)):
            total += self._batch_gradient(theta, k) * self._weight(k)
        return self._reduce(total)

    # -- application -------------------------------------------------------------------------
    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.matmat(V)

    def matmat(self, V: torch.Tensor, block: int | None = None) -> torch.Tensor:
        """The product with a ``(P, k)`` tensor; counts ``k`` products.

        Parameters
        ----------
        V : torch.Tensor
            ``(P, k)``, any device and float dtype (returned in the operator's).
        block : int, optional
            The most columns pushed through one graph at once (``is_grads_batched``, a vmap over
            the backward pass); the operator pushes ``min(block, probe_batch)``, since
            :attr:`probe_batch` says what is fastest on its device (on the CPU one column at a
            time was faster). Where vmap is unsupported the columns go one at a time (same
            numbers), which is said once per operator.

        Returns
        -------
        torch.Tensor
            ``(P, k)``.
        """
        V = self._prepare(V)
        block = self.probe_batch if block is None else min(check_scalar(block, "block", int, min=1), self.probe_batch)
        cols = [self._product(V[:, j:j + block]) for j in range(0, V.shape[1], block)]
        self.hvps += V.shape[1]
        return torch.cat(cols, dim=1) if len(cols) != 1 else cols[0]

    def _product(self, V: torch.Tensor) -> torch.Tensor:
        """``(P, m)`` products of the columns of ``V``: batched when ``m > 1``, one at a time where that fails."""
        m = V.shape[1]
        if m > 1:
            try:
                return self._summed(V, batched=True).T
            except Exception as exc:  # noqa: BLE001 - classified below; nothing is swallowed silently
                if out_of_memory(exc):
                    _add_hint(exc, self._memory_hint(m))
                    raise
                out = torch.cat([self._product(V[:, j:j + 1]) for j in range(m)], dim=1)
                if not missing_second_derivative(exc):
                    self._warn_once("columns", f"{type(self).__name__}: {m} vectors could not go through one graph "
                                               f"together ({_first_line(exc)}); products go one column at a time "
                                               "(same numbers, slower).")
                return out
        try:
            return self._summed(V, batched=False).T
        except Exception as exc:  # noqa: BLE001
            if out_of_memory(exc):
                _add_hint(exc, self._memory_hint(1))
                raise
            if missing_second_derivative(exc) and self._fallback(exc):
                return self._summed(V, batched=False).T
            if missing_second_derivative(exc):
                raise HessianError(self._explain(exc)) from exc
            raise

    def _summed(self, V: torch.Tensor, batched: bool) -> torch.Tensor:
        """``(m, P)``: the size-weighted sum over batches (and ranks) of the per-batch products."""
        m = V.shape[1]
        rows = self.unflatten_batched(V.T)
        total = torch.zeros(m, self.size, device=self.device, dtype=self.dtype)
        with self._precision_guard():  # the products' own backward passes, outside _context
            for k in range(len(self._batches)):
                total += self._apply(k, rows, m, batched) * self._weight(k)
        return self._reduce(total)

    def _apply(self, k: int, rows: dict[str, torch.Tensor], m: int, batched: bool) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - implemented by the Hessian and the GGN

    def _fallback(self, exc: BaseException) -> bool:
        """Switch to another way of computing products after ``exc``; True when there is one."""
        return False

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._family["warned"]:
            self._family["warned"].add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _memory_hint(self, m: int) -> str:
        bs = self.batch_size
        return (f"landscape: a {type(self).__name__} product of {m} vector(s) over batches of {bs} samples ran out "
                f"of memory. Pass batch_size={max(1, bs // 4)} (or smaller) to accumulate over smaller batches, "
                "probe_batch=1, or cache=False to keep no graph between products.")

    def _explain(self, exc: BaseException) -> str:
        """The user-facing message for an operation without a second derivative."""
        return (f"cannot take {self.kind} products of {type(self.model).__name__} with "
                f"{type(self.criterion).__name__}: an operation has no second derivative (double backward failed: "
                f"{_first_line(exc)}). Use method='fd' (finite differences of gradients) for the Hessian, replace "
                "that layer or loss by one that is twice differentiable in PyTorch, or restrict the operator to "
                "other parameters with params=[...].")

    def __repr__(self) -> str:
        extra = f", shard={self.rank}/{self.world}" if self.shard else ""
        return (f"{type(self).__name__}(size={self.size}, params={self.params_choice!r}, dtype={self.compute_dtype}, "
                f"samples={self._n}, batches={len(self._batches)}, folded={self.folded}, "
                f"device={self.device}{extra})")


class HessianOperator(CurvatureOperator):
    """``v -> H v`` for the Hessian of a training objective with respect to (some of) the parameters.

    Parameters
    ----------
    model, criterion, x, y, params, dtype, batch_size, point, cache, fold, shard, probe_batch
        As in :class:`CurvatureOperator`.
    method : {"auto", "autograd", "fd"}
        ``"autograd"``: exact products by double backward; ``"fd"``: central differences of
        gradients (see the module docstring); ``"auto"`` (default): autograd, switching to
        ``"fd"`` with a warning where an operation has no second derivative.
    fd_step : float, optional
        Norm ``delta`` of the weight step of a finite-difference product (default
        ``eps^(1/3) (1 + ||w||)``, see the module docstring).

    Examples
    --------
    >>> import torch, landscape as ls
    >>> from landscape.hvp import HessianOperator
    >>> torch.manual_seed(0) is not None
    True
    >>> model = torch.nn.Linear(3, 2).double()
    >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.tensor([0, 1] * 4)
    >>> H = HessianOperator(model, ls.losses.get("ce"), x, y, dtype=torch.float64)
    >>> H.shape
    (8, 8)
    >>> bool(torch.linalg.eigvalsh(H.dense()).min() > -1e-12)   # CE of a linear model is convex
    True
    """

    kind = "Hessian-vector"

    def __init__(self, model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 method: str = "auto", fd_step: float | None = None, **kwargs):
        method = check_choice(method, "method", METHODS)
        fd_step = check_scalar(fd_step, "fd_step", float, min=0, include_min=False, allow_none=True)
        super().__init__(model, criterion, x, y, **kwargs)
        self.method, self.fd_step = method, fd_step
        self._family["method"] = "fd" if method == "fd" else "autograd"

    # -- reverse over reverse ----------------------------------------------------------------
    def _gradient_graph(self, k: int):
        """The batch's gradient with its graph (``create_graph``), kept when ``cache``."""
        if k in self._graphs:
            return self._graphs[k]
        leaves = {n: t.detach().requires_grad_(True) for n, t in self.theta.items()}
        with self._context():
            loss = self._call(self.objective, leaves, k)
            if not loss.requires_grad:  # no selected parameter reaches the loss: gradient and H are zero
                grads = (None,) * len(self.names)
            else:
                grads = torch.autograd.grad(loss, [leaves[n] for n in self.names], create_graph=True,
                                            allow_unused=True)
        if self.cache:
            self._graphs[k] = (leaves, grads)
        return leaves, grads

    def _apply(self, k, rows, m, batched):
        if self._family["method"] == "fd":
            return self._apply_fd(k, rows, m)
        leaves, grads = self._gradient_graph(k)
        live = [(g, rows[n]) for n, g in zip(self.names, grads) if g is not None and g.requires_grad]
        if not live:  # the loss is at most linear in these parameters: H = 0
            return torch.zeros(m, self.size, device=self.device, dtype=self.dtype)
        out = torch.autograd.grad([g for g, _ in live], [leaves[n] for n in self.names],
                                  grad_outputs=[(w if batched else w[0]).to(g.dtype) for g, w in live],
                                  retain_graph=self.cache, allow_unused=True, is_grads_batched=batched)
        return self._rows(out, m)

    # -- finite differences ------------------------------------------------------------------
    def step(self, v: torch.Tensor) -> float:
        """The finite-difference ``h`` for the flat vector ``v``: the weights move by ``delta = h ||v||``."""
        eps = torch.finfo(self.compute_dtype).eps
        delta = self.fd_step if self.fd_step is not None else eps ** (1 / 3) * (1 + float(self.parameters().norm()))
        norm = float(torch.linalg.vector_norm(v))
        return delta / norm if norm > 0 else 0.0

    def _apply_fd(self, k, rows, m):
        out = []
        for j in range(m):
            v = {n: r[j] for n, r in rows.items()}
            h = self.step(self.flatten(v))
            if h == 0:
                out.append(torch.zeros(self.size, device=self.device, dtype=self.dtype))
                continue
            plus = {n: self.theta[n] + h * v[n] for n in self.names}
            minus = {n: self.theta[n] - h * v[n] for n in self.names}
            out.append((self._batch_gradient(plus, k) - self._batch_gradient(minus, k)) / (2 * h))
        return torch.stack(out)

    def _fallback(self, exc):
        if self.method != "auto" or self._family["method"] == "fd":
            return False
        self._family["method"] = "fd"
        self._graphs = {}
        self._warn_once("fd", f"{type(self.model).__name__} with {type(self.criterion).__name__}: an operation has no "
                              f"second derivative ({_first_line(exc)}); Hessian-vector products use finite "
                              "differences of gradients from now on (method='fd': about 1e-4 relative error in "
                              "float32 on smooth networks, unreliable across ReLU kinks; see landscape.hvp).")
        return True


class _Outputs(nn.Module):
    """The outputs the GGN is taken at: the logits, or for a feature margin loss its margin logits.

    ``forward(x, y)`` returns ``(z, reference)``: ``z`` the outputs and ``reference`` the
    criterion's own loss for a margin loss (to check that it is cross-entropy on ``z``), else None.
    """

    def __init__(self, model: nn.Module, criterion: nn.Module):
        super().__init__()
        self.model, self.criterion = model, criterion
        self.margin = bool(getattr(criterion, "needs_features", False))

    def forward(self, x, y):
        if not self.margin:
            return self.model(x), None
        logits, f, w = outputs(self.model, x, True)
        return self.criterion.margin_logits(f, w, y), self.criterion(logits, y, features=f, weight=w)


class GGNOperator(CurvatureOperator):
    """``v -> G v`` for the generalised Gauss-Newton matrix ``G = J^T H_loss J`` of a training objective.

    ``J`` is the Jacobian of the network's outputs ``z`` (the logits; for the feature margin
    losses AM-, L- and A-Softmax the margin logits their cross-entropy is taken of) with respect to
    the selected parameters, and ``H_loss`` the Hessian of the loss with respect to ``z``. ``G`` is
    the Hessian with the second-order terms of the network dropped, so it is positive
    semidefinite whenever the loss is convex in ``z`` (cross-entropy and its margin variants,
    MSE); for a loss that is not (focal, the evolved losses) ``H_loss``, and so ``G``, may be
    indefinite.

    A product is exact: ``J v`` by the double-vjp trick on the kept graph (the derivative of
    ``J^T u`` with respect to ``u``), then ``H_loss (J v)`` by autograd on the loss alone, then
    ``J^T`` of that by one backward pass.

    Parameters
    ----------
    model, criterion, x, y, params, dtype, batch_size, point, cache, fold, shard, probe_batch
        As in :class:`CurvatureOperator`.
    """

    kind = "GGN-vector"

    def __init__(self, model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs):
        if getattr(criterion, "needs_features", False) and not hasattr(criterion, "margin_logits"):
            name = getattr(criterion, "spec", type(criterion).__name__)
            raise ArgumentError(f"GGNOperator needs a loss on the logits, or a feature loss with margin_logits("
                                f"features, weight, target) that it takes cross-entropy of; {name} has neither. "
                                "Use HessianOperator for it.")
        super().__init__(model, criterion, x, y, **kwargs)

    def _make_module(self) -> nn.Module:
        return _Outputs(self.net, self.criterion)

    def _loss_of_outputs(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z, y) if self._module.margin else self.criterion(z, y)

    def _graph(self, k: int):
        if k in self._graphs:
            return self._graphs[k]
        leaves = {n: t.detach().requires_grad_(True) for n, t in self.theta.items()}
        y = self._batches[k][1]
        with self._context():
            z, reference = self._call(self._module, leaves, k)
            zl = z.detach().to(self.dtype).requires_grad_(True)
            loss = self._loss_of_outputs(zl, y)
            same = reference is None or math.isclose(float(loss.detach()), float(reference.detach()), rel_tol=1e-5,
                                                     abs_tol=1e-6)
            if not same:
                raise HessianError(f"{type(self.criterion).__name__} is not cross-entropy on its margin_logits "
                                   f"({float(reference):.6g} vs {float(loss):.6g}), so its GGN is not defined here; "
                                   "use HessianOperator.")
            gz = torch.autograd.grad(loss, zl, create_graph=True)[0] if loss.requires_grad else None
            jt = (None,) * len(self.names)
            u0 = None
            if z.requires_grad:
                u0 = torch.zeros_like(z, requires_grad=True)
                jt = torch.autograd.grad(z, [leaves[n] for n in self.names], grad_outputs=u0, create_graph=True,
                                         allow_unused=True)
        graph = (leaves, z, u0, jt, zl, gz)
        if self.cache:
            self._graphs[k] = graph
        return graph

    def _apply(self, k, rows, m, batched):
        leaves, z, u0, jt, zl, gz = self._graph(k)
        zero = torch.zeros(m, self.size, device=self.device, dtype=self.dtype)
        live = [(t, rows[n]) for n, t in zip(self.names, jt) if t is not None and t.requires_grad]
        if not live or gz is None or not gz.requires_grad:  # outputs do not depend on these parameters, or H_loss = 0
            return zero
        with torch.enable_grad():
            jv = torch.autograd.grad([t for t, _ in live], u0,
                                     grad_outputs=[(w if batched else w[0]).to(t.dtype) for t, w in live],
                                     retain_graph=True, is_grads_batched=batched)[0]
            hjv = torch.autograd.grad(gz, zl, grad_outputs=jv.to(zl.dtype), retain_graph=True,
                                      is_grads_batched=batched)[0]
            out = torch.autograd.grad(z, [leaves[n] for n in self.names], grad_outputs=hjv.to(z.dtype),
                                      retain_graph=True, allow_unused=True, is_grads_batched=batched)
        return self._rows(out, m)
