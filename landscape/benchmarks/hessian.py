"""Hessian-vector products at CIFAR scale: this toolkit against pyhessian, Li et al.'s recipe and a forward pass.

:func:`run` measures, in one process, on one model and one data set (float32, as users run them):

* **products**: seconds per Hessian-vector product (HVP) and HVPs per second of the toolkit's
  :class:`~landscape.hvp.HessianOperator` (first product, with batchnorm folding and the graph
  build; then cached products), of the candidates examined for issue 24 (no folding,
  accumulation over batches, several vectors per graph, bfloat16 autocast, finite differences,
  ``torch.func`` forward-over-reverse ``jvp(grad)``, and ``torch.func.linearize`` of the gradient,
  which keeps the primal pass but traces once per point), of pyhessian (its set-up plus first
  product, then cached ones) and of Li et al.'s product (``hess_vec_prod.py``: forward pass and
  gradient graph rebuilt for every product over a DataLoader), as ratios to a plain forward pass
  to a gradient (an exact HVP is the derivative of a gradient along ``v``: double backward and
  forward-over-reverse both cost about two gradients, which is why a product costs several
  forward passes) and to pyhessian's cached product;
* **extremes** at the centre: the toolkit's Lanczos (:func:`landscape.hessian.extremes`), Li et
  al.'s recipe (``scipy.sparse.linalg.eigsh`` at tol 1e-2 on their product, then on
  ``H - 0.51 lambda_max I``) and pyhessian's power iteration (``lambda_max`` only): wall time,
  HVPs and the residual ``||H u - theta u|| / |lambda_max|`` of each Ritz pair (checked with
  extra, untimed products), so that accuracy is compared alongside time;
* **map**: an eigenvalue-ratio map (``landscape.eigen_ratio_map``, with and without warm starts)
  against Li et al.'s recipe and pyhessian (``lambda_max`` only) at every point of the same grid,
  scored against the dense float64 truth where the Hessian has at most ``dense_max`` rows;
* **trace**: Hutchinson's estimator per probe (set-up included, interleaved rounds), the toolkit
  against pyhessian on pyhessian's own probes;
* **blocks**: per-layer (block) products ``H[layer, layer] v`` of three layers;
* **accuracy**: float32, bfloat16 autocast, finite differences, pyhessian and Li et al.'s
  products against the float64 product.

The default model is the zoo's ``resnet20`` (ResNet-20, 0.27M parameters); where that name is not
registered yet, the identical stand-in ``resnet(widths=(16, 32, 64), blocks=(3, 3, 3))``, which
the output says. The default data are synthetic: seeded uniform 32x32x3 images with seeded labels,
fine for timing (the output says so), with batchnorm running statistics set from them. Timings
of single products are the best of ``rounds`` interleaved rounds (median beside); algorithms run
once. :func:`run` returns a dict; ``landscape bench hessian`` prints it. Benchmarks never assert.
"""
from __future__ import annotations

import copy
import importlib
import math
import time
import warnings
from typing import Callable

import numpy as np
import torch
from torch import nn

SECTIONS = ("products", "extremes", "map", "trace", "blocks", "accuracy")
#: ResNet-20 (He et al. 2016, CIFAR variant) in the zoo's terms, until the zoo's ``resnet20`` lands.
STANDIN = {"arch": "resnet", "widths": (16, 32, 64), "blocks": (3, 3, 3)}


# -- set-up --------------------------------------------------------------------------------------
def build_model(arch: str, seed: int, input_shape=(3, 32, 32), num_classes: int = 10) -> tuple[nn.Module, str]:
    """A freshly initialised registered architecture; ``resnet20`` falls back to :data:`STANDIN` until it exists."""
    from landscape import models

    torch.manual_seed(seed)
    if arch == "resnet20" and arch not in models.names():
        kwargs = {k: v for k, v in STANDIN.items() if k != "arch"}
        model = models.build(STANDIN["arch"], input_shape=input_shape, num_classes=num_classes, **kwargs)
        return model, ("resnet20 is not registered yet: the stand-in resnet(widths=(16, 32, 64), blocks=(3, 3, 3)), "
                       "the same network")
    return models.build(arch, input_shape=input_shape, num_classes=num_classes), arch


def synthetic_data(n: int, seed: int, input_shape=(3, 32, 32), num_classes: int = 10):
    """``n`` seeded uniform images in [0, 1] with seeded labels, as a :class:`landscape.Dataset`."""
    from landscape.data import Dataset

    rng = np.random.default_rng(seed)
    x = rng.random((n, *input_shape), dtype=np.float32)
    y = rng.integers(0, num_classes, n).astype(np.int64)
    return Dataset(x, y, [str(c) for c in range(num_classes)], f"synthetic {'x'.join(map(str, input_shape))}")


def calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Set every batchnorm's running statistics to those of ``x`` (one train-mode pass, cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum, m.training) for m in bns]
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            model(x)
    finally:
        for m, momentum, training in saved:
            m.momentum, m.training = momentum, training
    model.eval()


def layer_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names grouped by the convolution or linear layer they belong to, with the batchnorm after it.

    A batchnorm's parameters join the layer registered just before it (``conv1`` with ``bn1``).
    """
    groups: list[list[str]] = []
    for name, module in model.named_modules():
        own = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
        if not own:
            continue
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and groups:
            groups[-1].extend(own)
        else:
            groups.append(own)
    return groups


# -- peers ---------------------------------------------------------------------------------------
class LiHessian:
    """Li et al.'s Hessian-vector product (``hess_vec_prod.py``): everything rebuilt for every product.

    Per product, for each DataLoader batch: forward pass, ``autograd.grad(loss, params,
    create_graph=True)``, ``(g . v).backward()`` accumulating into ``.grad``. Their code sums the
    batch-mean Hessians; here each batch is weighted by its share of the samples, so that the
    operator is the same Hessian as the others' (the ratios Li et al. plot are unchanged).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, point: dict | None = None,
                 batch_size: int = 128):
        from torch.utils.data import DataLoader, TensorDataset

        self.model = copy.deepcopy(model).eval()
        if point:
            with torch.no_grad():
                for n, p in self.model.named_parameters():
                    p.copy_(point[n])
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)
        self.n, self.products = len(y), 0
        self.size = sum(p.numel() for p in self.params)

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """``H v`` on float64 numpy vectors, as Li et al. compute it."""
        flat = torch.as_tensor(np.ravel(v), dtype=self.params[0].dtype, device=self.params[0].device)
        vec = [t.reshape(p.shape) for t, p in zip(torch.split(flat, [p.numel() for p in self.params]), self.params)]
        self.model.zero_grad()
        criterion = nn.CrossEntropyLoss()
        for xb, yb in self.loader:
            loss = criterion(self.model(xb), yb) * (len(yb) / self.n)
            grad_f = torch.autograd.grad(loss, inputs=self.params, create_graph=True)
            prod = sum((g * w).sum() for g, w in zip(grad_f, vec))
            prod.backward()
        self.products += 1
        return torch.cat([p.grad.reshape(-1) for p in self.params]).detach().cpu().double().numpy()

    def to_scipy(self):
        """As a ``scipy.sparse.linalg.LinearOperator``."""
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator((self.size, self.size), matvec=self.matvec, rmatvec=self.matvec, dtype=np.float64)


def li_eigsh(A, vectors: bool = False, seed: int = 0):
    """Li et al.'s recipe (``plot_hessian_eigen.py``): eigsh LM at tol 1e-2, then on ``H - 0.51 lambda_max I``.

    ``A`` is anything with ``to_scipy()``. Returns ``(lam_min, lam_max)``, and with ``vectors``
    also the unit Ritz vectors ``(u_min, u_max)``. Li et al. leave ARPACK's start vector random; its
    generator keeps state across calls in one process, so the result depended on what ran before:
    here both runs start from a seeded Gaussian vector (``seed``).
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    S = A.to_scipy()
    v0 = np.random.default_rng(seed).standard_normal(S.shape[0])
    vals, vecs = eigsh(S, k=1, which="LM", tol=1e-2, v0=v0)
    lam_max, u_max = float(vals[0]), vecs[:, 0]
    shift = 0.51 * lam_max
    shifted = LinearOperator(S.shape, matvec=lambda v: S.matvec(v) - shift * np.ravel(v), dtype=np.float64)
    vals, vecs = eigsh(shifted, k=1, which="LM", tol=1e-2, v0=v0)
    lam_min = float(vals[0]) + shift
    return (lam_min, lam_max, vecs[:, 0], u_max) if vectors else (lam_min, lam_max)


def _pyhessian():
    return importlib.import_module("pyhessian.hessian")  # the module; `pyhessian.hessian` is also its class


class PyHessian:
    """pyhessian's ``hessian`` on a copy of the model at ``point``, with its HVPs counted."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, point: dict | None = None):
        ph = _pyhessian()
        self.model = copy.deepcopy(model)
        if point:
            with torch.no_grad():
                for n, p in self.model.named_parameters():
                    p.copy_(point[n])
        with warnings.catch_warnings():
            # pyhessian calls backward(create_graph=True) on the parameters, which torch warns about
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
            self.h = ph.hessian(self.model, nn.CrossEntropyLoss(), data=(x, y), cuda=x.is_cuda)
        self.calls = 0

    def hvp(self, v: list[torch.Tensor]) -> list[torch.Tensor]:
        """One cached product, as pyhessian's own methods do it."""
        return _pyhessian().hessian_vector_product(self.h.gradsH, self.h.params, v)

    def counted(self, method: str, *args, **kwargs):
        """``self.h.<method>(...)`` with its HVPs counted; returns the method's result."""
        ph = _pyhessian()
        original = ph.hessian_vector_product

        def count(*a, **k):
            self.calls += 1
            return original(*a, **k)

        ph.hessian_vector_product = count
        try:
            return getattr(self.h, method)(*args, **kwargs)
        finally:
            ph.hessian_vector_product = original


# -- measuring -----------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(methods: dict[str, Callable[[], object]], rounds: int, device) -> dict[str, list[float]]:
    """Seconds of each method over ``rounds`` rounds, the methods taking turns within a round.

    Taking turns spreads the load of a shared machine over all methods alike.
    """
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(max(1, rounds)):
        for name, fn in methods.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def _timed(fn: Callable[[], object], device) -> tuple[float, object]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def _residual(op, lam: float, u) -> float:
    """``||H u - lam u||`` for a unit vector ``u`` (one extra product on the cached operator)."""
    u = torch.as_tensor(np.asarray(u, dtype=np.float64) if not isinstance(u, torch.Tensor) else u)
    u = (u / torch.linalg.vector_norm(u)).to(device=op.device, dtype=op.dtype)
    return float(torch.linalg.vector_norm(op.matvec(u) - lam * u))


def _toolkit_extremes(op, *, tol: float, seed: int):
    """The toolkit's Lanczos extremes on an operator (``landscape.hessian.extremes``, or its public successor)."""
    import landscape as ls
    from landscape import hessian

    fn = getattr(hessian, "extremes", None) or getattr(ls, "lanczos_extremes")
    return fn(op, tol=tol, seed=seed)


# -- the sections --------------------------------------------------------------------------------
def _products(ctx: dict) -> dict:
    from torch.func import functional_call, grad, jvp, linearize

    from landscape.hvp import HessianOperator

    model, crit, x, y, dev = ctx["model"], ctx["criterion"], ctx["x"], ctx["y"], ctx["device"]
    rounds, k, peers = ctx["rounds"], ctx["probe_batch"], ctx["peers"]
    n = len(y)
    acc_bs = max(1, math.ceil(n / 4))
    gen = torch.Generator().manual_seed(ctx["seed"])

    def make(**kw):
        return HessianOperator(model, crit, x, y, **kw)

    op = make()
    v = torch.randn(op.size, generator=gen).to(dev)
    V = torch.randn(op.size, k, generator=gen).to(dev)
    ops = {"plain": make(fold=False), "acc": make(batch_size=acc_bs), "bf16": make(dtype=torch.bfloat16),
           "fd": make(method="fd"), "batched": make(probe_batch=k)}
    for o in (op, *ops.values()):
        o.matvec(v)  # builds and keeps the graphs: the rows below time cached products
    state = {key[len("model."):]: t for key, t in op._state(op.theta).items() if key.startswith("model.")}
    params = {name: t for name, t in state.items() if name in op.names}
    rest = {name: t for name, t in state.items() if name not in op.names}
    net = op.net
    vd = op.unflatten(v)

    def loss_of(p):
        return nn.functional.cross_entropy(functional_call(net, {**rest, **p}, (x,)), y)

    def forward():
        with torch.no_grad():
            model(x)

    rows = {
        "forward pass (model(x), no grad)": (forward, 0),
        "gradient (forward + backward)": (op.gradient, 0),
        "landscape: first product (fold, graph, 1 HVP)": (lambda: make().matvec(v), 1),
        "landscape: cached product": (lambda: op.matvec(v), 1),
        "landscape: cached, batchnorm not folded": (lambda: ops["plain"].matvec(v), 1),
        f"landscape: cached, {math.ceil(n / acc_bs)} batches of {acc_bs}": (lambda: ops["acc"].matvec(v), 1),
        f"landscape: cached, {k} vectors per graph": (lambda: ops["batched"].matmat(V), k),
        "landscape: cached, bfloat16 autocast": (lambda: ops["bf16"].matvec(v), 1),
        "landscape: finite differences (2 gradients)": (lambda: ops["fd"].matvec(v), 1),
        "torch.func jvp(grad), folded (nothing kept)": (lambda: jvp(grad(loss_of), (params,), (vd,)), 1),
    }
    if peers:
        ph = PyHessian(model, x, y)
        v_list = [t.contiguous() for t in vd.values()]
        ph.hvp(v_list)
        li = LiHessian(model, x, y, batch_size=ctx["li_batch"])
        vn = v.double().cpu().numpy()
        rows["pyhessian: first product (set-up, 1 HVP)"] = (lambda: PyHessian(model, x, y).hvp(v_list), 1)
        rows["pyhessian: cached product"] = (lambda: ph.hvp(v_list), 1)
        rows[f"Li et al.: product (all rebuilt, DataLoader {ctx['li_batch']})"] = (lambda: li.matvec(vn), 1)
    jvp_row = next(name for name in rows if name.startswith("torch.func"))
    rows[jvp_row][0]()  # torch.func's first nested transform spends seconds on one-time set-up: not a product's cost
    # forward-over-reverse with the primal pass kept: linearize traces jvp(grad) once, at this point only
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")  # torch's own const-fold
        linearize_setup, (_, tangent) = _timed(lambda: linearize(grad(loss_of), params), dev)
    rows["torch.func linearize(grad), folded: cached tangent"] = (lambda: tangent(vd), 1)
    times = interleaved({name: fn for name, (fn, _) in rows.items()}, rounds, dev)
    out = []
    for name, (_, vectors) in rows.items():
        ts = np.array(times[name]) / max(vectors, 1)
        out.append({"method": name, "seconds": float(ts.min()), "median": float(np.median(ts)), "vectors": vectors})
    return {"rows": out, "folded": op.folded, "forward": out[0]["seconds"], "gradient": out[1]["seconds"],
            "linearize_setup": linearize_setup,
            "pyhessian": next((r["seconds"] for r in out if r["method"] == "pyhessian: cached product"), None),
            "pyhessian_first": next((r["seconds"] for r in out if r["method"].startswith("pyhessian: first")), None)}


def _extremes(ctx: dict) -> dict:
    from landscape.hvp import HessianOperator

    model, crit, x, y, dev = ctx["model"], ctx["criterion"], ctx["x"], ctx["y"], ctx["device"]
    rows = []
    t, (op, ext) = _timed(lambda: (lambda o: (o, _toolkit_extremes(o, tol=ctx["tol"], seed=ctx["seed"])))(
        HessianOperator(model, crit, x, y)), dev)
    vec = ext.vectors
    rows.append({"method": f"landscape: Lanczos (tol {ctx['tol']:g})", "seconds": t, "hvps": ext.hvps,
                 "lam_min": ext.lam_min, "lam_max": ext.lam_max, "u_min": vec[:, 0], "u_max": vec[:, 1]})
    if ctx["peers"]:
        li = LiHessian(model, x, y, batch_size=ctx["li_batch"])
        t, (lo, hi, u_lo, u_hi) = _timed(lambda: li_eigsh(li, vectors=True), dev)
        rows.append({"method": "Li et al.: eigsh (tol 1e-2, shift 0.51)", "seconds": t, "hvps": li.products,
                     "lam_min": lo, "lam_max": hi, "u_min": u_lo, "u_max": u_hi})
        t, (ph, (vals, vecs)) = _timed(lambda: (lambda p: (p, p.counted("eigenvalues", top_n=1)))(
            PyHessian(model, x, y)), dev)
        u = torch.cat([w.reshape(-1) for w in vecs[0]])
        rows.append({"method": "pyhessian: power iteration (tol 1e-3)", "seconds": t, "hvps": ph.calls,
                     "lam_min": math.nan, "lam_max": float(vals[0]), "u_min": None, "u_max": u})
    scale = max(abs(r["lam_max"]) for r in rows)
    for r in rows:  # accuracy, with extra untimed products on the toolkit's cached operator
        u_min, u_max = r.pop("u_min"), r.pop("u_max")
        r["res_min"] = math.nan if u_min is None else _residual(op, r["lam_min"], u_min) / scale
        r["res_max"] = _residual(op, r["lam_max"], u_max) / scale
        r["ratio"] = abs(r["lam_min"] / r["lam_max"]) if math.isfinite(r["lam_min"]) else math.nan
    return {"rows": rows}


def _map(ctx: dict) -> dict:
    """Each method at every point of a ``grid x grid`` plane, scored against the dense truth where it fits.

    The truth is ``torch.linalg.eigvalsh`` of the dense float64 Hessian when it has at most
    ``dense_max`` rows, else unknown (then only residuals ``||H u - theta u|| / |theta_max|`` of the
    Ritz pairs, from extra untimed products, say how accurate a method was).
    """
    import landscape as ls
    from landscape.directions import offset_parameters
    from landscape.hessian import snake_order
    from landscape.hvp import HessianOperator

    model, x, y, dev = ctx["model"], ctx["x"], ctx["y"], ctx["device"]
    g, r = int(ctx["grid"]), float(ctx["range"])
    xs = np.linspace(-r, r, g)
    order = [tuple(ij) for ij in snake_order(g, g)]
    dirs = ls.random_directions(model, n=2, seed=ctx["seed"])
    points = {ij: offset_parameters(model, dirs, (xs[ij[0]], xs[ij[1]])) for ij in order}
    base = HessianOperator(model, ctx["criterion"], x, y)
    truth = None
    if base.size <= ctx["dense_max"]:
        exact = HessianOperator(model, ctx["criterion"], x.double(), y, dtype=torch.float64)
        truth = {}
        for ij in order:
            ev = torch.linalg.eigvalsh(exact.at(points[ij]).dense(max_size=ctx["dense_max"]))
            truth[ij] = (float(ev[0]), float(ev[-1]))
    rows = {}
    for name, warm in (("engine", True), ("engine-cold", False)):
        t, emap = _timed(lambda warm=warm: ls.eigen_ratio_map(ctx["ck"], ctx["data"], dirs, x=xs, y=xs,
                                                              seed=ctx["seed"], tol=ctx["tol"], warm_start=warm,
                                                              chunk_size=g * g, verbose=False), dev)
        vals = {(i, j): (emap.lam_min[j, i], emap.lam_max[j, i]) for i, j in order}
        res = float(np.max(emap.residuals.max(0) / np.abs(emap.lam_max)))
        rows[name] = {"seconds": t, "hvps": int(emap.hvps.sum()), "values": vals, "max_residual": res}
    if ctx["peers"]:
        for name in ("li-eigsh", "pyhessian"):
            rows[name] = {"seconds": 0.0, "hvps": 0, "values": {}, "max_residual": 0.0}
        for ij in order:
            here = base.at(points[ij])
            li = LiHessian(model, x, y, point=points[ij], batch_size=ctx["li_batch"])
            t, (lo, hi, u_lo, u_hi) = _timed(lambda li=li: li_eigsh(li, vectors=True), dev)
            row = rows["li-eigsh"]
            row["seconds"] += t
            row["hvps"] += li.products
            row["values"][ij] = (lo, hi)
            row["max_residual"] = max(row["max_residual"], _residual(here, lo, u_lo) / abs(hi),
                                      _residual(here, hi, u_hi) / abs(hi))
            t, (ph, (top, vecs)) = _timed(lambda ij=ij: (lambda p: (p, p.counted("eigenvalues", top_n=1)))(
                PyHessian(model, x, y, point=points[ij])), dev)
            row = rows["pyhessian"]
            row["seconds"] += t
            row["hvps"] += ph.calls
            row["values"][ij] = (math.nan, float(top[0]))
            u = torch.cat([w.reshape(-1) for w in vecs[0]])
            row["max_residual"] = max(row["max_residual"], _residual(here, float(top[0]), u) / abs(float(top[0])))
    for row in rows.values():
        v = np.array([row["values"][ij] for ij in order], dtype=np.float64)
        row["ratio"] = np.abs(v[:, 0] / v[:, 1])
        if truth is not None:
            t_ = np.array([truth[ij] for ij in order])
            err = np.abs(row["ratio"] - np.abs(t_[:, 0] / t_[:, 1]))
            row["max_ratio_error"] = float(np.max(err)) if np.isfinite(err).any() else math.nan
            row["max_lam_max_error"] = float(np.max(np.abs(v[:, 1] - t_[:, 1]) / np.abs(t_[:, 1])))
        else:
            row["max_ratio_error"] = row["max_lam_max_error"] = math.nan
        row.pop("values")
    out = {"grid": g, "range": r, "points": g * g, "truth": "dense float64 eigvalsh" if truth else None,
           "rows": rows}
    if "li-eigsh" in rows:
        out["max_ratio_difference"] = float(np.nanmax(np.abs(rows["engine"]["ratio"] - rows["li-eigsh"]["ratio"])))
    return out


def _trace(ctx: dict) -> dict:
    """Hutchinson's trace per probe, set-up included, on pyhessian's own Rademacher probes (interleaved rounds)."""
    from landscape.hvp import HessianOperator

    model, crit, x, y, dev = ctx["model"], ctx["criterion"], ctx["x"], ctx["y"], ctx["device"]
    probes, seed = int(ctx["probes"]), int(ctx["seed"])
    # the probes pyhessian draws after torch.manual_seed(seed): torch.randint_like per parameter, in order
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    Z = []
    for _ in range(probes):
        v = [torch.randint_like(p, high=2) for p in params]
        for w in v:
            w[w == 0] = -1
        Z.append(torch.cat([w.reshape(-1) for w in v]))
    Z = torch.stack(Z, dim=1)
    samples: dict[str, np.ndarray] = {}

    def pyhessian_trace():
        torch.manual_seed(seed)
        # tol=-inf: pyhessian stops when |change| / (trace + 1e-6) < tol, which a negative trace meets at once
        samples["pyhessian: trace (set-up + probes)"] = np.array(
            PyHessian(model, x, y).counted("trace", maxIter=probes, tol=-math.inf))

    def landscape_trace(label: str, block: int):
        def fn():
            op = HessianOperator(model, crit, x, y, probe_batch=block)
            samples[label] = (Z * op.matmat(Z)).sum(0).double().cpu().numpy()
        return fn

    methods = {"pyhessian: trace (set-up + probes)": pyhessian_trace} if ctx["peers"] else {}
    for label, block in (("one probe per graph", 1), (f"{probes} probes per graph", probes)):
        name = f"landscape: trace (set-up + probes, {label})"
        methods[name] = landscape_trace(name, block)
    times = interleaved(methods, ctx["rounds"], dev)
    rows = [{"method": name, "seconds": float(min(ts)) / probes, "median": float(np.median(ts)) / probes,
             "probes": len(samples[name]), "trace": float(samples[name].mean())} for name, ts in times.items()]
    if ctx["peers"]:
        ref = samples[rows[0]["method"]]
        for r in rows[1:]:
            r["max_difference"] = float(np.max(np.abs(samples[r["method"]] - ref)) / max(abs(ref.mean()), 1e-30))
    return {"rows": rows}


def _blocks(ctx: dict) -> dict:
    from landscape.hvp import HessianOperator

    model, crit, x, y, dev = ctx["model"], ctx["criterion"], ctx["x"], ctx["y"], ctx["device"]
    groups = layer_groups(model)
    picks = sorted({0, len(groups) // 2, len(groups) - 1})[: int(ctx["blocks"])]
    full = HessianOperator(model, crit, x, y)
    gen = torch.Generator().manual_seed(ctx["seed"])
    v = torch.randn(full.size, generator=gen).to(dev)
    full.matvec(v)
    methods, sizes = {"all parameters": lambda: full.matvec(v)}, {"all parameters": full.size}
    firsts = {}
    for i in picks:
        names = groups[i]
        label = f"{names[0].rsplit('.', 1)[0]} ({len(names)} tensors)"
        t, blk = _timed(lambda names=names: full.block(names), dev)
        u = torch.randn(blk.size, generator=gen).to(dev)
        firsts[label], _ = _timed(lambda blk=blk, u=u: blk.matvec(u), dev)
        methods[label], sizes[label] = (lambda blk=blk, u=u: blk.matvec(u)), blk.size
    times = interleaved(methods, ctx["rounds"], dev)
    rows = [{"block": name, "size": sizes[name], "seconds": float(min(ts)), "median": float(np.median(ts)),
             "first": firsts.get(name)} for name, ts in times.items()]
    return {"rows": rows, "layers": len(groups)}


def _accuracy(ctx: dict) -> dict:
    from landscape.hvp import HessianOperator

    model, crit, x, y, dev = ctx["model"], ctx["criterion"], ctx["x"], ctx["y"], ctx["device"]
    gen = torch.Generator().manual_seed(ctx["seed"] + 1)
    exact = HessianOperator(model, crit, x.double(), y, dtype=torch.float64)
    v = torch.randn(exact.size, generator=gen, dtype=torch.float64).to(dev)
    ref = exact.matvec(v)
    del exact
    rows = {}

    def rel(hv) -> float:
        hv = torch.as_tensor(hv).to(ref)
        return float(torch.linalg.vector_norm(hv - ref) / torch.linalg.vector_norm(ref))

    for label, kw in (("landscape: float32", {}), ("landscape: float32, not folded", {"fold": False}),
                      ("landscape: bfloat16 autocast", {"dtype": torch.bfloat16}),
                      ("landscape: finite differences, float32, default step", {"method": "fd"})):
        rows[label] = rel(HessianOperator(model, crit, x, y, **kw).matvec(v))
    fd64 = HessianOperator(model, crit, x.double(), y, dtype=torch.float64, method="fd")
    rows["landscape: finite differences, float64, default step"] = rel(fd64.matvec(v))
    if ctx["peers"]:
        op = HessianOperator(model, crit, x, y)
        v32 = [t.contiguous() for t in op.unflatten(v.float()).values()]
        rows["pyhessian: cached product"] = rel(torch.cat([t.reshape(-1) for t in PyHessian(model, x, y).hvp(v32)]))
        rows["Li et al.: product"] = rel(LiHessian(model, x, y, batch_size=ctx["li_batch"]).matvec(v.cpu().numpy()))
    return {"rows": [{"method": k, "relative_error": e} for k, e in rows.items()]}


# -- the benchmark -------------------------------------------------------------------------------
def run(*, checkpoint: str | None = None, arch: str = "resnet20", data: str | None = None, samples: int = 256,
        seed: int = 0, device: str = "auto", threads: int | None = None, rounds: int = 3, grid: int = 2,
        range_: float = 1.0, tol: float = 1e-3, probes: int = 4, probe_batch: int = 4, blocks: int = 3,
        li_batch: int = 128, dense_max: int = 5000, peers: bool = True, sections=SECTIONS,
        trust_code: bool = False) -> dict:
    """Run the chosen sections (see the module docstring) and return their numbers.

    Parameters
    ----------
    checkpoint : str, optional
        A checkpoint to measure instead of a freshly initialised ``arch``.
    arch : str
        Any registered architecture (default ``resnet20``, or its stand-in), built for 32x32x3
        inputs and 10 classes.
    data : str, optional
        ``"synthetic"`` or a dataset spec (its test split); default synthetic for ``arch``, and for
        a checkpoint the data set its meta names when that needs no file (else synthetic).
    samples : int
        Samples the objective is averaged over (a seeded subset of a real data set).
    seed : int
        Seed of the model's initialisation, the data, the vectors, directions and probes.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
    threads : int, optional
        ``torch.set_num_threads``; 1 is steadier on a shared machine.
    rounds : int
        Interleaved rounds of the single-product timings (best and median are reported).
    grid, range_ : int, float
        The eigenvalue-ratio map's ``grid x grid`` points over ``[-range_, range_]^2``.
    tol : float
        The toolkit's Lanczos tolerance.
    probes : int
        Hutchinson probes of the trace section.
    probe_batch : int
        Vectors per graph in the batched-product row.
    blocks : int
        Layers of the block section (first, middle, last).
    li_batch : int
        DataLoader batch of Li et al.'s product.
    dense_max : int
        Largest Hessian formed densely as the map's truth.
    peers : bool
        Also run pyhessian and Li et al.'s recipe.
    sections : sequence of str
        Which of :data:`SECTIONS` to run.
    trust_code : bool
        As in :func:`landscape.load_checkpoint`.

    Returns
    -------
    dict
        ``setup`` (what was measured) and one entry per section.
    """
    import landscape as ls
    from landscape.checkpoint import as_checkpoint
    from landscape.device import resolve_device
    from landscape.errors import ArgumentError, check_choice

    for s in sections:
        check_choice(s, "section", SECTIONS)
    if threads:
        torch.set_num_threads(int(threads))
    if checkpoint:
        ck = ls.load_checkpoint(checkpoint, device=device, trust_code=trust_code)
        model_note = ck.name
    else:
        model, model_note = build_model(arch, seed)
        ck = as_checkpoint(model.to(resolve_device(device)), criterion="ce")
    input_shape = tuple(ck.meta.get("input_shape") or (3, 32, 32))
    if data is None:
        from landscape.data import spec_needs_file

        hint = ck.meta.get("dataset") if checkpoint else None
        data = hint if hint and not spec_needs_file(hint) else "synthetic"
    if data == "synthetic":
        dataset = synthetic_data(samples, seed, input_shape, int(ck.meta.get("num_classes") or 10))
        data_note = f"{samples} synthetic {'x'.join(map(str, input_shape))} images (seeded uniform; fine for timing)"
    else:
        dataset = ls.load_dataset(data, split="test").subset(samples, seed=seed)
        data_note = f"{len(dataset)} samples of {dataset.name}"
    x, y = ck.prepare(dataset)
    if not checkpoint:
        calibrate_batchnorm(ck.model, x)
        data_note += "; batchnorm statistics set from them"
    ck.model.eval()
    loss = str(ck.meta.get("loss") or "ce")
    if peers and loss != "ce":
        raise ArgumentError(f"pyhessian and Li et al.'s code take cross-entropy, but {ck.name} was trained with "
                            f"{loss}; pass peers=False (--no-peer) to time the toolkit alone.")
    ctx = dict(ck=ck, data=dataset, model=ck.model, criterion=ck.criterion, x=x, y=y, device=torch.device(ck.device),
               seed=int(seed), rounds=int(rounds), grid=int(grid), range=float(range_), tol=float(tol),
               probes=int(probes), probe_batch=int(probe_batch), blocks=int(blocks), li_batch=int(li_batch),
               dense_max=int(dense_max), peers=bool(peers))
    result = {"setup": {"model": model_note, "parameters": sum(p.numel() for p in ck.model.parameters()),
                        "data": data_note, "samples": len(y), "device": str(ck.device),
                        "threads": torch.get_num_threads(), "rounds": int(rounds), "torch": torch.__version__}}
    runners = {"products": _products, "extremes": _extremes, "map": _map, "trace": _trace, "blocks": _blocks,
               "accuracy": _accuracy}
    for name in SECTIONS:
        if name in sections:
            t0 = time.perf_counter()
            result[name] = runners[name](ctx)
            result[name]["wall"] = time.perf_counter() - t0
    return result
