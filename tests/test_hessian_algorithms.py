"""The Hessian algorithms on any operator, against numpy.linalg.eigvalsh of matrices with known spectra.

Every operator form (dense tensor, numpy array, scipy LinearOperator, an object with the
shape/dtype/device/matmat protocol) must give the same numbers; the references are closed forms
(the trace of a matrix, the moments of its spectrum, exact Gauss quadrature) and eigvalsh.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import landscape as ls
from landscape import hessian
from landscape.errors import ArgumentError

P = 60


def _rotate(d: np.ndarray, seed: int) -> np.ndarray:
    """``Q diag(d) Q^T`` for a seeded random orthogonal ``Q``: a dense matrix with spectrum ``d``."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(d), len(d))))
    a = q @ np.diag(d) @ q.T
    return (a + a.T) / 2


def wishart() -> np.ndarray:
    """Positive semidefinite ``X X^T / n`` (Marchenko-Pastur bulk)."""
    x = np.random.default_rng(1).standard_normal((P, 2 * P))
    return x @ x.T / (2 * P)


def clusters() -> np.ndarray:
    """A trained-network-like spectrum: one negative outlier, a cluster at 0, a near-triple at 5, a top at 10."""
    rng = np.random.default_rng(2)
    d = np.concatenate([[-3.0], rng.uniform(-1e-3, 1e-3, 40), [5.0, 5.001, 5.002], rng.uniform(0.5, 2.0, P - 45),
                        [10.0]])
    return _rotate(d, 3)


def indefinite() -> np.ndarray:
    """A symmetric Gaussian matrix (semicircle spectrum, both signs)."""
    g = np.random.default_rng(4).standard_normal((P, P))
    return (g + g.T) / np.sqrt(2 * P)


MATRICES = {"wishart": wishart, "clusters": clusters, "indefinite": indefinite}


class Protocol:
    """The bare operator protocol: shape, dtype, device and matmat, nothing else."""

    def __init__(self, a: np.ndarray):
        self.a = torch.as_tensor(a)
        self.shape, self.dtype, self.device = self.a.shape, self.a.dtype, self.a.device
        self.calls = 0

    def matmat(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += v.shape[1]
        return self.a @ v


def forms(a: np.ndarray) -> dict:
    from scipy.sparse.linalg import aslinearoperator

    return {"tensor": torch.as_tensor(a), "array": a, "scipy": aslinearoperator(a), "protocol": Protocol(a)}


@pytest.mark.parametrize("name", MATRICES)
def test_extremes_of_every_operator_form_match_eigvalsh(name):
    a = MATRICES[name]()
    ev = np.linalg.eigvalsh(a)
    scale = max(abs(ev[0]), abs(ev[-1]))
    for form, A in forms(a).items():
        tight = ls.lanczos_extremes(A, tol=1e-10, max_iter=P)
        assert tight.lam_min == pytest.approx(ev[0], abs=1e-9 * scale), form
        assert tight.lam_max == pytest.approx(ev[-1], abs=1e-9 * scale), form
        ext = ls.lanczos_extremes(A)  # default tolerance, relative to the spectral scale
        assert ext.converged and abs(ext.lam_min - ev[0]) <= 1e-3 * scale and abs(ext.lam_max - ev[-1]) <= 1e-3 * scale
        assert ext.hvps == tight.hvps or ext.hvps < tight.hvps
    assert ls.hessian_extremes(torch.as_tensor(a)).lam_max == ls.lanczos_extremes(a).lam_max  # data unused


def test_protocol_products_are_counted_and_blocked():
    a = clusters()
    op = Protocol(a)
    ext = ls.lanczos_extremes(op)
    assert op.calls == ext.hvps > 0
    adapted = hessian.as_operator(op)
    out = adapted.matmat(torch.eye(P, dtype=torch.float64)[:, :10], block=3)
    np.testing.assert_allclose(out.numpy(), a[:, :10], atol=1e-14)
    assert adapted.hvps == 10


@pytest.mark.parametrize("which", ["LA", "SA", "BE", "LM"])
@pytest.mark.parametrize("name", MATRICES)
def test_top_k_eigenpairs_match_eigvalsh(name, which):
    a = MATRICES[name]()
    ev = np.linalg.eigvalsh(a)
    k = 4
    want = {"LA": ev[::-1][:k], "SA": ev[:k], "BE": np.r_[ev[::-1][:2], ev[:2]],
            "LM": ev[np.argsort(-np.abs(ev), kind="stable")][:k]}[which]
    res = ls.hessian_eigenvalues(torch.as_tensor(a), k=k, which=which, tol=1e-10, max_iter=P)
    scale = np.abs(ev).max()
    np.testing.assert_allclose(res.values, want, atol=1e-8 * scale)
    V = res.vectors
    np.testing.assert_allclose(V.T @ V, np.eye(k), atol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(a @ V - V * res.values, axis=0), res.residuals, atol=1e-8 * scale)
    assert res.converged and len(res) == k and list(res) == pytest.approx(list(res.values))
    # each vector signed so that its largest entry is positive: reproducible across devices
    assert np.all(V[np.abs(V).argmax(0), np.arange(k)] > 0)


def test_residuals_of_unconverged_pairs_are_the_true_ones():
    a = clusters()
    part = ls.hessian_eigenvalues(a, k=3, which="BE", tol=1e-12, max_iter=12, min_iter=1)
    assert not part.converged and part.hvps == 12
    true = np.linalg.norm(a @ part.vectors - part.vectors * part.values, axis=0)
    assert true.min() > 1e-6  # a real test: the pairs have not converged
    np.testing.assert_allclose(part.residuals, true, rtol=1e-6)


def test_an_exhausted_krylov_space_keeps_growing_exactly():
    """Three distinct eigenvalues: a block of 6 has dependent columns from its third step and is exhausted after it."""
    a = _rotate(np.r_[[2.0] * 5, [1.0] * 5, [0.0] * (P - 10)], 7)
    gen = torch.Generator().manual_seed(0)
    run = hessian.block_lanczos(a, hessian._start(P, 6, gen), 24, generator=gen)
    Q = run.Q.numpy()
    np.testing.assert_allclose(Q.T @ Q, np.eye(24), atol=1e-12)
    np.testing.assert_allclose(run.T, Q.T @ a @ Q, atol=1e-12)  # the projection stays exact through it
    res = ls.hessian_eigenvalues(a, k=6, which="LA", tol=1e-10, max_iter=P)
    np.testing.assert_allclose(res.values, [2, 2, 2, 2, 2, 1], atol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(a @ res.vectors - res.vectors * res.values, axis=0), 0, atol=1e-8)


def test_block_finds_a_repeated_eigenvalue_a_single_vector_cannot():
    d = np.r_[np.linspace(-1, 4, P - 3), [7.0, 7.0, 7.0]]
    a = _rotate(d, 5)
    res = ls.hessian_eigenvalues(a, k=3, which="LA", tol=1e-9, max_iter=P)
    np.testing.assert_allclose(res.values, [7.0, 7.0, 7.0], atol=1e-8)
    # the default tolerance on the near-triple of the cluster matrix resolves all three
    near = ls.hessian_eigenvalues(clusters(), k=4, which="LA", tol=1e-6)
    np.testing.assert_allclose(near.values, [10.0, 5.002, 5.001, 5.0], atol=1e-5)


def test_default_tolerance_meets_the_stopping_rule():
    a = clusters()
    ev = np.linalg.eigvalsh(a)
    res = ls.hessian_eigenvalues(a, k=3, which="LA")
    assert res.converged and res.hvps < P
    assert np.all(res.residuals <= 1e-3 * np.abs(ev).max())
    np.testing.assert_allclose(res.values, ev[::-1][:3], atol=1e-3 * np.abs(ev).max())


def test_hutchinson_is_the_mean_of_the_quadratic_forms_and_unbiased():
    a = wishart()
    est = ls.trace(a, n_probes=400, seed=3)
    Z = hessian._rademacher(P, 400, 3).numpy()
    np.testing.assert_allclose(est.samples, np.einsum("pi,pq,qi->i", Z, a, Z), rtol=1e-12)
    assert est.method == "hutchinson" and est.low_rank == 0.0
    assert abs(est.trace - np.trace(a)) < 4 * est.stderr
    # Hutchinson's variance for Rademacher probes: 2 (||A||_F^2 - sum A_ii^2)
    var = 2 * (np.sum(a ** 2) - np.sum(np.diag(a) ** 2))
    assert est.stderr == pytest.approx(math.sqrt(var / 400), rel=0.15)
    # the bootstrap interval is about +-1.96 standard errors and contains the estimate
    lo, hi = est.interval
    assert lo < est.trace < hi and (hi - lo) / (2 * 1.96 * est.stderr) == pytest.approx(1.0, rel=0.15)


def test_hutch_plus_plus_is_exact_on_low_rank_and_better_on_outliers():
    rng = np.random.default_rng(6)
    u = np.linalg.qr(rng.standard_normal((P, 5)))[0]
    low = u @ np.diag([50.0, 30.0, 20.0, -10.0, 5.0]) @ u.T
    est = ls.trace(low, method="hutch++", n_probes=30, seed=0)  # 10 sketch vectors >= rank 5
    assert est.trace == pytest.approx(95.0, abs=1e-9) and est.stderr < 1e-9
    # a few large outliers over a small bulk: Hutch++'s error is far below Hutchinson's at equal products
    a = low + 0.1 * wishart()
    plain = ls.trace(a, n_probes=60, seed=1)
    plus = ls.trace(a, method="hutch++", n_probes=60, seed=1)
    assert plus.stderr < plain.stderr / 5
    assert abs(plus.trace - np.trace(a)) < 4 * plus.stderr
    assert plus.n_probes == 60 and plus.meta["hvps"] == 60
    with pytest.raises(ArgumentError, match="n_probes"):
        ls.trace(a, method="hutch++", n_probes=2)
    with pytest.raises(ArgumentError, match="method"):
        ls.trace(a, method="hutchinsn")


def test_slq_is_exact_gauss_quadrature_and_its_moments_are_traces():
    a = indefinite()
    steps, n = 8, 6
    dens = ls.spectral_density(a, n_probes=n, steps=steps, seed=2)
    assert dens.meta["size"] == P and dens.meta["operator"] == "dense"
    np.testing.assert_allclose(dens.weights.sum(1), 1.0, atol=1e-12)
    # Gauss quadrature with m nodes is exact for polynomials of degree < 2m: per probe,
    # sum_j w_j theta_j^p = v^T A^p v / |v|^2 for the probe v (drawn as spectral_density draws it)
    V = hessian._start(P, n, torch.Generator().manual_seed(2)).numpy()
    V /= np.linalg.norm(V, axis=0)
    for p in range(2 * steps):
        exact = np.einsum("pi,pq,qi->i", V, np.linalg.matrix_power(a, p), V)
        np.testing.assert_allclose((dens.weights * dens.nodes ** p).sum(1), exact, rtol=1e-8, atol=1e-10)
    assert np.trapezoid(dens.density, dens.grid) == pytest.approx(1.0, abs=1e-6)
    # with every step the nodes are the eigenvalues and the moments estimate tr(A^p) without bias
    full = ls.spectral_density(a, n_probes=200, steps=P, seed=0)
    ev = np.linalg.eigvalsh(a)
    for p in (1, 2, 3):
        lo, hi = full.moment_interval(p)
        assert lo < np.sum(ev ** p) < hi, p
    assert full.trace() == full.moment(1)


def test_non_finite_operators_give_nan_not_exceptions():
    a = clusters()
    a[3, 3] = np.nan
    ext = ls.lanczos_extremes(a)
    assert math.isnan(ext.lam_min) and math.isnan(ext.lam_max) and not ext.converged and math.isnan(ext.ratio)
    lo, hi = ext
    assert math.isnan(lo)
    assert math.isnan(ls.trace(a).trace) and math.isnan(ls.trace(a, method="hutch++").trace)
    assert np.isnan(ls.hessian_eigenvalues(a, k=2).values).all()
    with pytest.warns(RuntimeWarning, match="not finite"):
        dens = ls.spectral_density(a, n_probes=2, steps=5)
    assert np.isnan(dens.density).all() and dens.meta["non_finite"]
    inf = clusters()
    inf[0, 0] = np.inf
    assert math.isnan(ls.lanczos_extremes(inf).lam_max)


def test_non_finite_results_save_and_load(tmp_path):
    a = clusters()
    a[3, 3] = np.nan
    with pytest.warns(RuntimeWarning):
        dens = ls.spectral_density(a, n_probes=2, steps=5)
    for result in (ls.lanczos_extremes(a), ls.trace(a), dens):
        back = ls.Result.load(result.save(tmp_path / type(result).__name__))
        assert type(back) is type(result) and "nan" in repr(back).lower()
    assert math.isnan(ls.Result.load(tmp_path / "Extremes.npz").lam_min)
    assert math.isnan(ls.Result.load(tmp_path / "TraceEstimate.npz").trace)


def test_bad_operators_and_arguments_are_one_line_errors():
    with pytest.raises(ArgumentError, match="square"):
        ls.lanczos_extremes(np.ones((3, 4)))
    with pytest.raises(ArgumentError, match="not symmetric"):
        ls.lanczos_extremes(np.triu(np.ones((4, 4))))
    with pytest.raises(ArgumentError, match="lacks"):
        ls.trace(object())
    with pytest.raises(ArgumentError, match="needs data"):
        ls.lanczos_extremes(torch.nn.Linear(2, 2))
    with pytest.raises(ArgumentError, match="which"):
        ls.hessian_eigenvalues(wishart(), which="XX")
    with pytest.raises(ArgumentError, match="k must be"):
        ls.hessian_eigenvalues(wishart(), k=P + 1)
    for bad in (0, -1, 1.5):
        with pytest.raises(ArgumentError, match="max_iter"):
            ls.lanczos_extremes(wishart(), max_iter=bad)


def test_results_save_load_and_print_a_summary(tmp_path):
    a = clusters()
    ext = ls.lanczos_extremes(a)
    back = ls.Result.load(ext.save(tmp_path / "ext"))
    assert type(back) is hessian.Extremes and tuple(back) == tuple(ext) and back == ext
    np.testing.assert_array_equal(back.vectors, ext.vectors)
    assert back.residuals.shape == (2,) and back.hvps == ext.hvps
    est = ls.trace(a, n_probes=20, seed=1)
    loaded = ls.Result.load(est.save(tmp_path / "tr"))
    assert type(loaded) is hessian.TraceEstimate and loaded.trace == est.trace
    np.testing.assert_array_equal(loaded.samples, est.samples)
    np.testing.assert_array_equal(loaded.interval, est.interval)
    text = repr(est)
    assert text.startswith("TraceEstimate(trace=") and "\n" not in text and "array" not in text and "[" in text
    assert f"{est.n_probes} probes" in text
    ev = ls.hessian_eigenvalues(a, k=2)
    again = ls.Result.load(ev.save(tmp_path / "ev"))
    np.testing.assert_array_equal(again.values, ev.values)
    assert "Eigenvalues(which='LA'" in repr(ev)


def test_a_diverging_product_mid_run_stops_cleanly():
    """An operator that turns non-finite after some products (an overflow) ends as NaN, with no warning spam."""
    a = torch.as_tensor(wishart())

    class Overflows:
        shape, dtype, device = a.shape, a.dtype, a.device
        calls = 0

        def matmat(self, v):
            self.calls += 1
            return a @ v * (math.inf if self.calls > 5 else 1.0)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ext = ls.lanczos_extremes(Overflows())
    assert math.isnan(ext.lam_max) and ext.hvps == 6
