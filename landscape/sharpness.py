"""Sharpness measures of a checkpoint, computed the same way on the same data (issue 15).

One entry point, :func:`sharpness`, returns a :class:`Sharpness` (``value``, ``interval`` where
the measure is stochastic, ``details`` with the measure's other numbers, hyperparameters and
provenance in ``meta``). The measures are those the generalisation literature argues over:

``hessian``
    ``lambda_max`` (the value), ``lambda_min``, ``|lambda_min / lambda_max|`` and Hutchinson's
    trace of the training objective's Hessian, from :mod:`landscape.hessian`.
``epsilon``
    Keskar et al. (2017): ``100 (max_{y in C_eps} f(x + y) - f(x)) / (1 + f(x))`` over the box
    ``|y_i| <= eps (|x_i| + 1)`` (their ``A = I``), maximised with scipy's L-BFGS-B.
``adaptive-average`` / ``adaptive-worst``
    Andriushchenko et al. (2023): ``E_S E_delta [L_S(w + delta) - L_S(w)]`` with ``delta ~
    N(0, rho^2 diag(c^2))``, and ``E_S max_{||delta / c||_p <= rho} L_S(w + delta) - L_S(w)`` by
    Auto-PGD (Croce & Hein 2020), with ``c = |w|`` (adaptive) or ``c = 1`` (``adaptive=False``,
    the plain measures), on batches ``S`` of ``m = 128`` from 1,024 training examples.
``pac-bayes``
    Jiang et al. (2020): ``1 / sigma*^2`` for the largest isotropic Gaussian weight noise whose
    expected training-accuracy drop stays at 0.1; ``magnitude=True`` scales it with ``|w|``.
``flatness-radius``
    The distance along seeded filter-normalised directions at which the loss first rises by
    ``delta`` (default 10% of the loss at the centre).

Common rules: the objective is the checkpoint's own training objective (margins included) on a
seeded subset of the training data (``subset=1024``, Andriushchenko et al.'s size); batchnorm
uses its stored statistics (``bn="eval"``) or statistics re-estimated at every perturbed point
(``bn="recompute"``, see :mod:`landscape.batchnorm`; no gradient flows through them); weights are
moved with ``torch.func.functional_call`` on :class:`landscape.objective.Objective`, so the
checkpoint's weights and buffers are never written; a stochastic measure carries a seeded
percentile-bootstrap interval of its mean (:func:`landscape.hessian.bootstrap_interval`).

:func:`geometry_card` gathers the measures, train and test accuracy and loss and the
generalisation gap of one checkpoint; :func:`compare_cards` ranks measures across checkpoints by
Kendall's tau against the gap, as Jiang et al. do.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .batchnorm import DEFAULT_BN_BATCH_SIZE, DEFAULT_BN_SUBSET, StatisticsEstimator
from .checkpoint import Checkpoint, as_checkpoint
from .data import Dataset, as_dataset
from .errors import ArgumentError, check_choice, check_scalar
from .progress import bar as progress_bar
from .results import Result
from .threads import current_threads

MEASURES = ("hessian", "epsilon", "adaptive-average", "adaptive-worst", "pac-bayes", "flatness-radius")
#: card entries beyond the measures themselves: a label and the measure with its options
PRESETS = {
    "plain-average": ("adaptive-average", {"adaptive": False}),
    "plain-worst": ("adaptive-worst", {"adaptive": False}),
    "adaptive-worst-l2": ("adaptive-worst", {"norm": "l2"}),
    "pac-bayes-magnitude": ("pac-bayes", {"magnitude": True}),
}
CARD_MEASURES = ("hessian", "epsilon", "adaptive-average", "adaptive-worst", "plain-average", "plain-worst",
                 "pac-bayes", "pac-bayes-magnitude", "flatness-radius")
NORMS = ("linf", "l2")
NOISES = ("gaussian", "uniform")
DEFAULT_SUBSET = 1024  # Andriushchenko et al.'s n: the training examples every measure is computed on
# Default radii (our choice; the papers sweep rho): the digits models' loss rises by a few percent to a few tens.
DEFAULT_RHO = {("average", True): 0.1, ("average", False): 0.01, ("worst", "linf", True): 1e-3,
               ("worst", "linf", False): 1e-4, ("worst", "l2", True): 0.1, ("worst", "l2", False): 0.05}


@dataclasses.dataclass(repr=False)
class Sharpness(Result):
    """One sharpness measure of one checkpoint.

    Attributes
    ----------
    measure : str
        One of :data:`MEASURES`.
    value : float
        The measure (see :func:`sharpness` for each one's definition).
    interval : np.ndarray
        ``(2,)`` seeded percentile-bootstrap interval of ``value`` at ``meta["confidence"]``;
        NaN for deterministic measures.
    samples : np.ndarray
        The independent units whose mean is ``value`` (per batch, per direction or per repeat);
        empty for deterministic measures.
    details : dict
        The measure's other numbers by name (``lam_min``, ``trace``, ``sigma``, ``spread``, ...).
    meta : dict
        Provenance (checkpoint, digest, data, n_samples, seed, threads) and every hyperparameter.
    """

    measure: str
    value: float
    interval: np.ndarray = dataclasses.field(default_factory=lambda: np.full(2, np.nan))
    samples: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    details: dict = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.value = math.nan if self.value is None else float(self.value)
        self.interval = np.asarray(self.interval, dtype=np.float64).reshape(2)
        self.samples = np.asarray(self.samples, dtype=np.float64).reshape(-1)
        self.details = {k: (math.nan if v is None else v) for k, v in self.details.items()}

    def __repr__(self) -> str:
        lo, hi = self.interval
        ci = f", interval [{lo:.4g}, {hi:.4g}]" if np.isfinite(self.interval).all() else ""
        return f"Sharpness({self.measure}={self.value:.6g}{ci})"


# -- the objective at moved weights -------------------------------------------------------------
class Problem:
    """A checkpoint's training objective on fixed data, evaluated at moved weights without touching it.

    Parameters
    ----------
    ck : Checkpoint
    data : Dataset
        The examples (already a subset).
    batch_size : int, optional
        Batches ``S`` the measures that average over batches use (and the evaluation batch size);
        default one batch.
    params : {"all", "matrices"} or list of str
        The parameters that move (:func:`landscape.hvp.select_parameters`).
    estimator : StatisticsEstimator, optional
        Re-estimates batchnorm statistics at every point (``bn="recompute"``).
    """

    def __init__(self, ck: Checkpoint, data: Dataset, *, batch_size: int | None = None, params="all",
                 estimator: StatisticsEstimator | None = None):
        from .hvp import select_parameters
        from .objective import Objective

        self.ck, self.estimator = ck, estimator
        self.objective = Objective(ck.model, ck.criterion, metrics=True)
        self.names = select_parameters(ck.model, params)
        named = dict(ck.model.named_parameters())
        self.centre = {n: named[n].detach() for n in self.names}
        self.shapes = [self.centre[n].shape for n in self.names]
        self.sizes = [self.centre[n].numel() for n in self.names]
        self.dtype = named[self.names[0]].dtype
        self.device = named[self.names[0]].device
        x, y = ck.prepare(data, dtype=self.dtype)
        bs = len(y) if batch_size is None else int(batch_size)
        self.batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(y), bs)]
        self.n = len(y)
        self.flat_centre = self.flatten(self.centre)

    @property
    def size(self) -> int:
        """Number of moving parameters."""
        return int(self.flat_centre.numel())

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The moving parameters as one vector (``named_parameters`` order)."""
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """A vector back to ``{name: tensor}`` views."""
        return {n: p.view(s) for n, p, s in zip(self.names, flat.split(self.sizes), self.shapes)}

    def _state(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        params = self.unflatten(flat)
        state = {f"model.{n}": p for n, p in params.items()}
        if self.estimator is not None:
            full = {n: p.detach() for n, p in self.ck.model.named_parameters()}
            full.update({n: p.detach() for n, p in params.items()})
            state.update({f"model.{n}": b for n, b in self.estimator(full).items()})
        return state

    def evaluate(self, flat: torch.Tensor, batches: Sequence[int] | None = None,
                 grad: bool = False) -> tuple[torch.Tensor | float, float]:
        """Mean loss (weighted by batch size) and accuracy at weights ``flat`` over ``batches`` (default all).

        With ``grad`` the loss keeps its graph to ``flat``.
        """
        from .objective import mean_over_batches

        chosen = range(len(self.batches)) if batches is None else batches
        with torch.set_grad_enabled(grad):
            state = self._state(flat)
        return mean_over_batches(self.objective, (self.batches[b] for b in chosen), state, grad=grad)

    def loss(self, flat: torch.Tensor, batches: Sequence[int] | None = None) -> float:
        """Mean loss at ``flat`` (no graph)."""
        return float(self.evaluate(flat, batches)[0])

    def loss_and_grad(self, flat: torch.Tensor, batches: Sequence[int] | None = None) -> tuple[float, torch.Tensor]:
        """Mean loss at ``flat`` and its gradient with respect to ``flat``."""
        flat = flat.detach().requires_grad_(True)
        loss, _ = self.evaluate(flat, batches, grad=True)
        (g,) = torch.autograd.grad(loss, flat)
        return float(loss.detach()), g.detach()


def _setup(ck, data, *, subset, seed, criterion, batch_size, params, bn, bn_data, bn_subset, bn_batch_size):
    """Checkpoint, data and :class:`Problem` from the user's arguments (the one set-up of every measure)."""
    from .surface import BatchNormOptions

    given = data
    ck = as_checkpoint(ck, criterion=None if criterion in (None, "train") else criterion)
    subset = check_scalar(subset, "subset", int, min=1, allow_none=True)
    dataset = as_dataset(data, subset, seed, split="train")
    opts = BatchNormOptions(bn, bn_data if bn_data is not None else (given if not isinstance(given, str) else None),
                            bn_subset, bn_batch_size)
    est = opts.estimator(ck, given, seed)
    prob = Problem(ck, dataset, batch_size=batch_size, params=params, estimator=est)
    return ck, dataset, prob, opts.meta(est)


def _provenance(ck: Checkpoint, data: Dataset, seed: int) -> dict:
    return {"checkpoint": ck.name, "digest": ck.digest, "path": str(ck.path) if ck.path else None,
            "arch": ck.meta.get("arch"), "loss": ck.meta.get("loss"), "data": data.name, "n_samples": len(data),
            "seed": int(seed), "threads": current_threads()}


def _interval(samples: np.ndarray, confidence: float, seed: int) -> np.ndarray:
    from .hessian import bootstrap_interval

    return bootstrap_interval(np.asarray(samples, dtype=np.float64), confidence, seed=seed)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _scale(prob: Problem, adaptive: bool) -> torch.Tensor:
    """``c``: ``|w|`` (adaptive) or ones (plain)."""
    return prob.flat_centre.abs() if adaptive else torch.ones_like(prob.flat_centre)


# -- hessian ------------------------------------------------------------------------------------
def _hessian(prob: Problem, ck: Checkpoint, data: Dataset, *, seed: int, tol: float = 1e-3, max_iter: int = 100,
             n_probes: int = 100, confidence: float = 0.95, **_) -> tuple[float, dict, np.ndarray, np.ndarray, dict]:
    """``lambda_max``, ``lambda_min``, their ratio and Hutchinson's trace, by :mod:`landscape.hessian`."""
    import copy

    from .hessian import lanczos_extremes, trace

    target = ck
    if prob.estimator is not None:  # the Hessian at the centre with statistics re-estimated there, on a copy
        model = copy.deepcopy(ck.model)
        model.load_state_dict(prob.estimator(dict(ck.model.named_parameters())), strict=False)
        target = dataclasses.replace(ck, model=model)
    bs = len(prob.batches[0][1]) if len(prob.batches) > 1 else None
    ext = lanczos_extremes(target, data, seed=seed, params=prob.names, dtype=prob.dtype, batch_size=bs, tol=tol,
                           max_iter=max_iter)
    tr = trace(target, data, n_probes=n_probes, seed=seed, confidence=confidence, params=prob.names,
               dtype=prob.dtype, batch_size=bs)
    details = {"lam_max": ext.lam_max, "lam_min": ext.lam_min, "ratio": ext.ratio, "trace": tr.trace,
               "trace_stderr": tr.stderr, "trace_low": float(tr.interval[0]), "trace_high": float(tr.interval[1]),
               "converged": bool(ext.converged)}
    return ext.lam_max, details, np.full(2, np.nan), np.zeros(0), {"tol": tol, "max_iter": max_iter,
                                                                    "n_probes": n_probes}


# -- epsilon (Keskar et al.) ---------------------------------------------------------------------
def _epsilon(prob: Problem, *, seed: int, eps: float = 1e-3, max_iter: int = 10, verbose=None,
             **_) -> tuple[float, dict, np.ndarray, np.ndarray, dict]:
    """Keskar et al.'s epsilon-sharpness by L-BFGS-B on the box (see :func:`sharpness`)."""
    from scipy.optimize import minimize

    eps = check_scalar(eps, "eps", float, min=0, include_min=False)
    max_iter = check_scalar(max_iter, "max_iter", int, min=1)
    x0 = prob.flat_centre
    f0 = prob.loss(x0)
    bound = (eps * (x0.abs() + 1)).double().cpu().numpy()
    rng = np.random.default_rng(seed)
    # a seeded start inside the box: at an exact minimum the gradient at y = 0 vanishes and L-BFGS-B stops at once
    y0 = rng.uniform(-1.0, 1.0, size=bound.shape) * bound
    best = {"f": f0}
    progress = progress_bar(max_iter, "epsilon", verbose, unit="it")

    def negative(y: np.ndarray) -> tuple[float, np.ndarray]:
        yt = torch.as_tensor(y, dtype=prob.dtype, device=prob.device)
        f, g = prob.loss_and_grad(x0 + yt)
        best["f"] = max(best["f"], f) if math.isfinite(f) else best["f"]
        return -f, -g.double().cpu().numpy()

    with progress:
        res = minimize(negative, y0, jac=True, method="L-BFGS-B", bounds=np.stack([-bound, bound], 1),
                       options={"maxiter": max_iter}, callback=lambda _: progress.update())
    fmax = max(best["f"], -float(res.fun))
    value = 100.0 * (fmax - f0) / (1.0 + f0)
    details = {"loss": f0, "max_loss": fmax, "iterations": int(res.nit), "evaluations": int(res.nfev)}
    hyper = {"eps": eps, "max_iter": max_iter, "objective": "full-batch"}
    return value, details, np.full(2, np.nan), np.zeros(0), hyper


# -- adaptive sharpness (Andriushchenko et al.) ----------------------------------------------------
def _rho(rho, kind: str, norm: str, adaptive: bool) -> float:
    if rho is None:
        rho = DEFAULT_RHO[("average", adaptive) if kind == "average" else ("worst", norm, adaptive)]
    return check_scalar(rho, "rho", float, min=0, include_min=False)


def _ball_sample(shape: int, norm: str, noise: str, gen: torch.Generator) -> torch.Tensor:
    """One draw of the unit-radius perturbation (float64, CPU): Gaussian, or uniform in the unit ball of ``norm``."""
    if noise == "gaussian":
        return torch.randn(shape, generator=gen, dtype=torch.float64)
    if norm == "linf":
        return torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    r = torch.rand((), generator=gen, dtype=torch.float64) ** (1.0 / shape)
    return g / g.norm() * r


def _average(prob: Problem, *, seed: int, rho=None, adaptive: bool = True, n_noise: int = 10,
             noise: str = "gaussian", norm: str = "linf", confidence: float = 0.95, verbose=None,
             **_) -> tuple[float, dict, np.ndarray, np.ndarray, dict]:
    """Average-case (adaptive) sharpness by Monte Carlo, per batch."""
    noise, norm = check_choice(noise, "noise", NOISES), check_choice(norm, "norm", NORMS)
    rho = _rho(rho, "average", norm, adaptive)
    n_noise = check_scalar(n_noise, "n_noise", int, min=1)
    c = _scale(prob, adaptive)
    gen = _generator(seed)
    per_batch = np.zeros(len(prob.batches))
    with progress_bar(len(prob.batches) * n_noise, "adaptive-average", verbose, unit="draw") as progress:
        for b in range(len(prob.batches)):
            base = prob.loss(prob.flat_centre, [b])
            rises = []
            for _ in range(n_noise):
                u = _ball_sample(prob.size, norm, noise, gen).to(device=prob.device, dtype=prob.dtype)
                rises.append(prob.loss(prob.flat_centre + rho * c * u, [b]) - base)
                progress.update()
            per_batch[b] = float(np.mean(rises))
    hyper = {"rho": rho, "adaptive": bool(adaptive), "n_noise": n_noise, "noise": noise,
             "norm": norm if noise == "uniform" else None, "m": len(prob.batches[0][1]),
             "n_batches": len(prob.batches)}
    return (float(per_batch.mean()), {"loss": prob.loss(prob.flat_centre)}, _interval(per_batch, confidence, seed),
            per_batch, hyper)


def apgd_checkpoints(n_iter: int) -> list[int]:
    """The iterations at which Auto-PGD may halve its step (Croce & Hein 2020, Sec. 3.2).

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``; checkpoint
    ``w_j = ceil(p_j n_iter)`` for every ``p_j <= 1``.
    """
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({int(math.ceil(round(q * n_iter, 9))) for q in p[1:]})  # round: 0.7 * 20 is 14.000000000000002


def _project(u: torch.Tensor, norm: str, rho: float) -> torch.Tensor:
    if norm == "linf":
        return u.clamp(-rho, rho)
    n = float(u.norm())
    return u * (rho / n) if n > rho else u


def _direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return g.sign()
    n = float(g.norm())
    return g / n if n > 0 else g


def apgd(f: Callable[[torch.Tensor], tuple[float, torch.Tensor]], u0: torch.Tensor, *, rho: float, norm: str,
         n_iter: int = 20, momentum: float = 0.75, rho_cond: float = 0.75) -> tuple[float, torch.Tensor]:
    """Auto-PGD (Croce & Hein 2020, Alg. 1) maximising ``f`` over ``||u||_p <= rho``; returns the best value and point.

    ``f(u) -> (value, gradient)``. The step starts at ``2 rho``; at each checkpoint of
    :func:`apgd_checkpoints` it is halved, and the iterate restarts from the best point, when
    fewer than ``rho_cond`` of the steps since the last checkpoint increased ``f`` (condition 1)
    or neither the step nor the best value changed since the last checkpoint (condition 2).
    Steps are signs of the gradient (L-infinity) or its normalisation (L2), as in their code.
    Written here: the maintained implementations (autoattack, torchattacks) attack inputs of a
    classifier, not an arbitrary function of a weight vector.
    """
    checks = set(apgd_checkpoints(n_iter))
    eta = 2.0 * rho
    u_prev = u = _project(u0, norm, rho)
    fu, g = f(u)
    f_best, u_best, g_best = fu, u, g
    last_check, eta_at_check, best_at_check, successes = 0, eta, f_best, 0
    for k in range(n_iter):
        z = _project(u + eta * _direction(g, norm), norm, rho)
        a = 1.0 if k == 0 else momentum
        u_new = _project(u + a * (z - u) + (1 - a) * (u - u_prev), norm, rho)
        f_new, g_new = f(u_new)
        successes += int(f_new > fu)
        u_prev, u, fu, g = u, u_new, f_new, g_new
        if f_new > f_best:
            f_best, u_best, g_best = f_new, u_new, g_new
        if k + 1 in checks:
            cond1 = successes < rho_cond * (k + 1 - last_check)
            cond2 = eta == eta_at_check and f_best == best_at_check
            eta_at_check, best_at_check = eta, f_best
            if cond1 or cond2:
                eta /= 2.0
                u, fu, g = u_best, f_best, g_best
                u_prev = u
            last_check, successes = k + 1, 0
    return f_best, u_best


def _worst(prob: Problem, *, seed: int, rho=None, adaptive: bool = True, norm: str = "linf", n_iter: int = 20,
           momentum: float = 0.75, confidence: float = 0.95, verbose=None,
           **_) -> tuple[float, dict, np.ndarray, np.ndarray, dict]:
    """Worst-case (adaptive) sharpness by Auto-PGD, per batch, in the rescaled variable ``u = delta / c``."""
    norm = check_choice(norm, "norm", NORMS)
    rho = _rho(rho, "worst", norm, adaptive)
    n_iter = check_scalar(n_iter, "n_iter", int, min=1)
    momentum = check_scalar(momentum, "momentum", float, min=0, max=1)
    c = _scale(prob, adaptive)
    gen = _generator(seed)
    per_batch = np.zeros(len(prob.batches))
    with progress_bar(len(prob.batches), "adaptive-worst", verbose, unit="batch") as progress:
        for b in range(len(prob.batches)):
            base = prob.loss(prob.flat_centre, [b])

            def f(u: torch.Tensor, b=b) -> tuple[float, torch.Tensor]:
                value, grad = prob.loss_and_grad(prob.flat_centre + c * u, [b])
                return value, grad * c  # chain rule of delta = c * u

            # Croce & Hein's random start: uniform in the box (scaled to touch it) or on the L2 sphere
            t = (torch.rand(prob.size, generator=gen, dtype=torch.float64) * 2 - 1 if norm == "linf"
                 else torch.randn(prob.size, generator=gen, dtype=torch.float64))
            t = t / (t.abs().max() if norm == "linf" else t.norm()) * rho
            best, _ = apgd(f, t.to(device=prob.device, dtype=prob.dtype), rho=rho, norm=norm, n_iter=n_iter,
                           momentum=momentum)
            per_batch[b] = max(best, base) - base  # delta = 0 is feasible
            progress.update()
    hyper = {"rho": rho, "adaptive": bool(adaptive), "norm": norm, "n_iter": n_iter, "momentum": momentum,
             "initial_step": 2 * rho, "m": len(prob.batches[0][1]), "n_batches": len(prob.batches)}
    return (float(per_batch.mean()), {"loss": prob.loss(prob.flat_centre)}, _interval(per_batch, confidence, seed),
            per_batch, hyper)


# -- PAC-Bayes sigma* (Jiang et al.) ----------------------------------------------------------------
MAGNITUDE_EPS = 1e-3


def _pac_bayes(prob: Problem, *, seed: int, target: float = 0.1, tol: float = 0.01, steps: int = 15,
               n_noise: int = 10, sigma_max: float = 2.0, magnitude: bool = False, repeats: int = 3,
               confidence: float = 0.95, verbose=None, **_) -> tuple[float, dict, np.ndarray, np.ndarray, dict]:
    """Jiang et al.'s sigma search by bisection, ``repeats`` times with independent noise."""
    target = check_scalar(target, "target", float, min=0, max=1, include_min=False)
    tol = check_scalar(tol, "tol", float, min=0)
    steps = check_scalar(steps, "steps", int, min=1)
    n_noise = check_scalar(n_noise, "n_noise", int, min=1)
    sigma_max = check_scalar(sigma_max, "sigma_max", float, min=0, include_min=False)
    repeats = check_scalar(repeats, "repeats", int, min=1)
    w = prob.flat_centre
    _, acc0 = prob.evaluate(w)
    scale = (w.abs().double() if magnitude else torch.ones_like(w, dtype=torch.float64)).cpu()

    def drop(sigma: float, gen: torch.Generator) -> float:
        accs = []
        for _ in range(n_noise):
            z = torch.randn(prob.size, generator=gen, dtype=torch.float64)
            # a standard deviation: sigma (plain) or sqrt(sigma^2 w^2 + eps^2) (magnitude-aware)
            std = torch.sqrt((sigma * scale) ** 2 + MAGNITUDE_EPS ** 2) if magnitude else sigma * scale
            accs.append(prob.evaluate(w + (std * z).to(device=prob.device, dtype=prob.dtype))[1])
        return acc0 - float(np.mean(accs))

    sigmas = np.zeros(repeats)
    with progress_bar(repeats * steps, "pac-bayes", verbose, unit="step") as progress:
        for r in range(repeats):
            gen = _generator(seed * 1_000_003 + r)
            lo, hi = 0.0, sigma_max
            for _ in range(steps):
                sigma = (lo + hi) / 2
                d = drop(sigma, gen)
                progress.update()
                if abs(d - target) <= tol:
                    break
                lo, hi = (lo, sigma) if d > target else (sigma, hi)
            sigmas[r] = sigma
    inverse = 1.0 / sigmas ** 2
    hyper = {"target": target, "tol": tol, "steps": steps, "n_noise": n_noise, "sigma_max": sigma_max,
             "magnitude": bool(magnitude), "repeats": repeats, "sigma_is": "standard deviation"}
    details = {"sigma": float(sigmas.mean()), "accuracy": acc0}
    return float(inverse.mean()), details, _interval(inverse, confidence, seed), inverse, hyper


# -- flatness radius ---------------------------------------------------------------------------------
def _radius(prob: Problem, ck: Checkpoint, *, seed: int, n_directions: int = 10, delta=None, relative: float = 0.1,
            steps: int = 20, t_max: float = 64.0, confidence: float = 0.95, verbose=None,
            **_) -> tuple[float, dict, np.ndarray, np.ndarray, dict]:
    """Bisection for the first rise of ``delta`` along seeded filter-normalised directions."""
    from .directions import random_directions

    n_directions = check_scalar(n_directions, "n_directions", int, min=1)
    relative = check_scalar(relative, "relative", float, min=0, include_min=False)
    steps = check_scalar(steps, "steps", int, min=1)
    t_max = check_scalar(t_max, "t_max", float, min=0, include_min=False)
    f0 = prob.loss(prob.flat_centre)
    delta = check_scalar(delta, "delta", float, min=0, include_min=False, allow_none=True)
    if delta is None:
        delta = relative * f0
        if not delta > 0:
            raise ArgumentError(f"the loss at the centre is {f0:g}, so a rise of relative={relative:g} times it is not "
                                "positive; give delta= (an absolute rise).")
    dirs = random_directions(ck.model, n=n_directions, seed=seed)
    radii = np.zeros(n_directions)
    with progress_bar(n_directions, "flatness-radius", verbose, unit="dir") as progress:
        for i in range(n_directions):
            d = prob.flatten(dirs.tensors(i, prob.device, prob.dtype))

            def rises(t: float) -> bool:
                value = prob.loss(prob.flat_centre + t * d)
                return not value - f0 < delta  # a non-finite loss counts as risen

            lo, hi = 0.0, min(0.125, t_max)
            while not rises(hi) and hi < t_max:  # bracket by doubling
                lo, hi = hi, min(2 * hi, t_max)
            if not rises(hi):
                radii[i] = math.inf
            else:
                for _ in range(steps):
                    mid = (lo + hi) / 2
                    lo, hi = (lo, mid) if rises(mid) else (mid, hi)
                radii[i] = (lo + hi) / 2
            progress.update()
    finite = radii[np.isfinite(radii)]
    details = {"loss": f0, "delta": float(delta), "spread": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan,
               "min": float(radii.min()), "max": float(radii.max()), "unbounded": int((~np.isfinite(radii)).sum())}
    hyper = {"n_directions": n_directions, "delta": float(delta), "relative": relative, "steps": steps,
             "t_max": t_max, "norm": dirs.meta["norm"], "ignore": dirs.meta["ignore"]}
    return float(radii.mean()), details, _interval(radii, confidence, seed), radii, hyper


_MEASURE_FUNCS = {"hessian": _hessian, "epsilon": _epsilon, "adaptive-average": _average,
                  "adaptive-worst": _worst, "pac-bayes": _pac_bayes, "flatness-radius": _radius}
# the batch size each measure runs on by default: Andriushchenko et al.'s m for theirs, one batch for the rest
_DEFAULT_BATCH = {"adaptive-average": 128, "adaptive-worst": 128}


def sharpness(ck, data, measure: str = "adaptive-average", seed: int = 0, *, subset: int | None = DEFAULT_SUBSET,
              criterion="train", batch_size: int | None = None, params="all", bn: str = "eval", bn_data=None,
              bn_subset: int | None = DEFAULT_BN_SUBSET, bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
              confidence: float = 0.95, verbose: bool | None = None, **hyperparameters) -> Sharpness:
    """One sharpness measure of a checkpoint on training data.

    Parameters
    ----------
    ck : Checkpoint, path or nn.Module
        The weights ``w``; never modified (weights, buffers, modes and devices are as before).
    data : Dataset, str, (x, y) pair, torch Dataset or DataLoader
        Training data (a spec string loads its train split).
    measure : str
        One of :data:`MEASURES` (definitions below).
    seed : int
        Seed of the subset, the noise, the random starts and the bootstrap.
    subset : int or None
        A seeded, stratified subset of this many examples (default 1,024; None uses all).
    criterion : "train", str or nn.Module
        The checkpoint's own training objective, or a loss replacing it.
    batch_size : int, optional
        The batches ``S`` (default 128 for the adaptive measures, Andriushchenko et al.'s ``m``;
        one batch for the others, whose objective is then full-batch over ``subset``).
    params : {"all", "matrices"} or list of str
        The parameters that are perturbed (default every trainable parameter).
    bn : {"eval", "recompute"}
        Batchnorm at perturbed weights: the stored running statistics, or statistics
        re-estimated at each point on ``bn_subset`` training samples (as :func:`landscape.surface`;
        for ``hessian``: at the centre, held fixed). The loss is always taken in eval mode.
    bn_data, bn_subset, bn_batch_size
        As in :func:`landscape.surface` (``bn_data`` defaults to ``data``).
    confidence : float
        Level of the bootstrap interval of stochastic measures.
    verbose : bool or None
        Progress (see :mod:`landscape.progress`).
    **hyperparameters
        The measure's own options:

        ``hessian``: ``tol=1e-3``, ``max_iter=100`` (Lanczos), ``n_probes=100`` (Hutchinson).
        ``value`` is ``lambda_max``; ``details`` hold ``lam_min``, ``ratio``, ``trace`` and its
        bootstrap interval.

        ``epsilon``: ``eps=1e-3``, ``max_iter=10`` (Keskar et al.'s values). The objective is the
        full-batch mean over the ``subset`` examples (deterministic, so L-BFGS-B's line search sees
        one function); Keskar et al. evaluate ``f`` on the training set, so a larger ``subset``
        (or None) is closer to them. The box is ``|y_i| <= eps (|x_i| + 1)`` element-wise
        (``A = I``, the full space); L-BFGS-B (scipy, gradients from autograd) starts from a seeded
        uniform point of the box, since at an exact minimum ``y = 0`` has zero gradient.
        ``value = 100 (max f - f(x)) / (1 + f(x))``.

        ``adaptive-average``: ``rho`` (default 0.1 adaptive, 0.01 plain), ``adaptive=True``
        (``c = |w|``; False: ``c = 1``), ``n_noise=10`` draws per batch, ``noise="gaussian"``
        (``delta ~ N(0, rho^2 diag(c^2))``, Andriushchenko et al.) or ``"uniform"`` (uniform in
        the ball ``||delta / c||_norm <= rho``), ``norm`` for the uniform noise. The value is the
        mean over batches of ``E_delta L_S(w + delta) - L_S(w)``; the interval bootstraps batches.

        ``adaptive-worst``: ``rho`` (default linf 1e-3 / l2 0.1 adaptive, 1e-4 / 0.05 plain),
        ``adaptive=True``, ``norm="linf"`` or ``"l2"``, ``n_iter=20``, ``momentum=0.75``: Auto-PGD
        (:func:`apgd`, initial step ``2 rho``, Croce & Hein's halving rules, a seeded random start)
        on ``max_{||delta / c||_p <= rho} L_S(w + delta) - L_S(w)`` per batch, averaged over
        batches. Weights with ``c_i = 0`` do not move.

        ``pac-bayes``: ``target=0.1``, ``tol=0.01``, ``steps=15``, ``n_noise=10``,
        ``sigma_max=2``, ``magnitude=False``, ``repeats=3``. Bisection on ``[0, sigma_max]`` for
        the largest ``sigma`` whose mean training-accuracy drop over ``n_noise`` draws of
        ``u ~ N(0, sigma^2 I)`` is within ``tol`` of ``target`` (Jiang et al. 2020, Alg. 1); it
        stops early once within ``tol``. ``sigma`` is a **standard deviation**, as in the paper's
        ``N(0, sigma^2 I)``; their reference code passes it where a variance is expected in places,
        which changes the scale of reported values. Magnitude-aware: ``u_i ~ N(0, sigma^2 w_i^2 +
        eps^2)`` with ``eps = 1e-3``. ``value`` is the mean over ``repeats`` independent searches
        of ``1 / sigma*^2``; ``details["sigma"]`` the mean ``sigma*``.

        ``flatness-radius``: ``n_directions=10``, ``delta`` (absolute rise; default
        ``relative=0.1`` times the loss at ``w``), ``steps=20``, ``t_max=64``. Along each seeded
        filter-normalised direction (:func:`landscape.random_directions`, biases and batchnorm
        zeroed) the radius is bracketed by doubling from 0.125 and refined by bisection; doubling
        finds the first crossing up to its bracket, so a loss that rises and falls again inside
        one bracket is missed. A direction that never rises within ``t_max`` has radius inf. The
        value is the mean radius; ``details["spread"]`` the standard deviation over directions.

    Returns
    -------
    Sharpness
    """
    measure = check_choice(measure, "measure", MEASURES)
    seed = check_scalar(seed, "seed", int, min=0)
    confidence = check_scalar(confidence, "confidence", float, min=0, max=1, include_min=False, include_max=False)
    batch_size = check_scalar(batch_size, "batch_size", int, min=1, allow_none=True)
    if batch_size is None:
        batch_size = _DEFAULT_BATCH.get(measure)
    _check_unknown(measure, hyperparameters)
    ck = as_checkpoint(ck, criterion=None if criterion in (None, "train") else criterion)
    was_training = ck.model.training
    ck.model.eval()
    try:
        ck, dataset, prob, bn_meta = _setup(ck, data, subset=subset, seed=seed, criterion=None, batch_size=batch_size,
                                            params=params, bn=bn, bn_data=bn_data, bn_subset=bn_subset,
                                            bn_batch_size=bn_batch_size)
        kwargs = dict(hyperparameters, seed=seed, confidence=confidence, verbose=verbose)
        if measure == "hessian":
            value, details, interval, samples, hyper = _hessian(prob, ck, dataset, **kwargs)
        elif measure == "flatness-radius":
            value, details, interval, samples, hyper = _radius(prob, ck, **kwargs)
        else:
            value, details, interval, samples, hyper = _MEASURE_FUNCS[measure](prob, **kwargs)
    finally:
        ck.model.train(was_training)
    meta = {**_provenance(ck, dataset, seed), "measure": measure, "criterion": str(criterion if isinstance(
        criterion, str) else type(criterion).__name__), "batch_size": batch_size, "params": params if isinstance(
        params, str) else list(params), "n_params": prob.size, "confidence": confidence, **bn_meta, **hyper}
    return Sharpness(measure, value, interval, samples, details, meta)


_KNOWN = {"hessian": {"tol", "max_iter", "n_probes"}, "epsilon": {"eps", "max_iter"},
          "adaptive-average": {"rho", "adaptive", "n_noise", "noise", "norm"},
          "adaptive-worst": {"rho", "adaptive", "norm", "n_iter", "momentum"},
          "pac-bayes": {"target", "tol", "steps", "n_noise", "sigma_max", "magnitude", "repeats"},
          "flatness-radius": {"n_directions", "delta", "relative", "steps", "t_max"}}


def _check_unknown(measure: str, given: Mapping) -> None:
    """Refuse an option the measure does not have, before any work."""
    unknown = sorted(set(given) - _KNOWN[measure])
    if unknown:
        raise ArgumentError(f"{unknown[0]!r} is not an option of measure {measure!r}; its options are "
                            f"{', '.join(sorted(_KNOWN[measure]))}.")
