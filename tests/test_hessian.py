"""Curvature against dense float64 Hessians (torch.linalg.eigvalsh) and against pyhessian."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import landscape as ls
from landscape import hessian
from landscape.errors import ArgumentError, ResumeError
from landscape.hvp import HessianOperator


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint, digits_test):
    """A small trained mlp (626 parameters) and 60 test digits."""
    ck = ls.load_checkpoint(tiny_checkpoint("mlp", hidden=[8], epochs=2), device="cpu")
    return ck, digits_test.subset(60, seed=0)


@pytest.fixture(scope="module")
def op64(tiny):
    ck, data = tiny
    return HessianOperator.from_checkpoint(ck, data, dtype=torch.float64)


@pytest.fixture(scope="module")
def spectrum(op64):
    return torch.linalg.eigvalsh(op64.dense()).numpy()


def plane(ck, seed=0) -> "ls.Directions":
    return ls.random_directions(ck.model, n=2, seed=seed)


def test_extremes_match_dense_eigenvalues(op64, spectrum):
    lo_true, hi_true = spectrum[0], spectrum[-1]
    assert lo_true < -0.05 and hi_true > 1  # an indefinite Hessian, so lam_min is a real test
    tight = ls.hessian_extremes(op64, tol=1e-9, max_iter=300)
    assert tight.lam_min == pytest.approx(lo_true, abs=1e-8) and tight.lam_max == pytest.approx(hi_true, abs=1e-8)
    lo, hi = ext = ls.hessian_extremes(op64)  # the default tolerance, relative to the spectral scale
    assert ext.converged and ext.hvps < 60
    scale = max(abs(lo), abs(hi))
    assert max(ext.residuals) <= 1e-3 * scale
    assert abs(lo - lo_true) <= 1e-3 * scale and abs(hi - hi_true) <= 1e-3 * scale
    assert abs(ext.ratio - abs(lo_true / hi_true)) <= 0.01
    # the Ritz vectors really are near-eigenvectors with the reported residuals
    H = op64.dense().numpy()
    for k, lam in enumerate((lo, hi)):
        u = ext.vectors[:, k]
        assert np.linalg.norm(u) == pytest.approx(1.0, abs=1e-10)
        assert np.linalg.norm(H @ u - lam * u) == pytest.approx(ext.residuals[k], rel=1e-4, abs=1e-10)


def test_extremes_unpack_repr_and_determinism(tiny, op64):
    ck, data = tiny
    a = ls.hessian_extremes(ck, data, seed=3)
    b = ls.hessian_extremes(ck, data, seed=3)
    lo, hi = a
    assert (lo, hi) == tuple(b) and a.hvps == b.hvps
    assert a.ratio == pytest.approx(abs(lo / hi))
    assert "converged=True" in repr(a)
    with pytest.raises(ArgumentError, match="tol"):
        ls.hessian_extremes(op64, tol=2.0)


def test_lanczos_basis_is_orthonormal_and_tridiagonalises(op64):
    v0 = torch.randn(op64.size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    run = hessian.lanczos(op64, v0, 30)
    Q = run.Q[0].T  # (P, m)
    assert torch.allclose(Q.T @ Q, torch.eye(30, dtype=torch.float64), atol=1e-12)
    T = Q.T @ op64.dense() @ Q
    expected = np.diag(run.alpha[0]) + np.diag(run.beta[0, :-1], 1) + np.diag(run.beta[0, :-1], -1)
    np.testing.assert_allclose(T.numpy(), expected, atol=1e-10)


def test_hutchinson_trace_is_the_mean_of_z_h_z(op64):
    H = op64.dense()
    est = ls.hessian_trace(op64, n_probes=200, seed=1)
    Z = hessian._rademacher(op64.size, 200, 1)
    np.testing.assert_allclose(est.samples, ((Z * (H @ Z)).sum(0)).numpy(), atol=1e-9)
    assert set(np.unique(Z.numpy())) == {-1.0, 1.0}
    assert est.n_probes == 200 and est.stderr > 0
    assert abs(est.trace - float(H.trace())) < 4 * est.stderr  # unbiased; 4 sigma never fails by chance
    assert ls.hessian_trace(op64, n_probes=5, seed=1).trace == pytest.approx(est.samples[:5].mean())


def _small_operator() -> HessianOperator:
    """39 parameters: small enough that Lanczos with P steps recovers the whole spectrum."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(20, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(0))
    return HessianOperator(model, ls.losses.get("ce"), x, y, dtype=torch.float64)


def test_slq_with_full_steps_recovers_the_spectrum():
    op = _small_operator()
    ev = torch.linalg.eigvalsh(op.dense()).numpy()
    dens = ls.spectral_density(op, n_probes=40, steps=op.size, seed=0)
    assert dens.nodes.shape == (40, 39)
    np.testing.assert_allclose(dens.weights.sum(1), 1.0, atol=1e-12)
    # every node with weight is an eigenvalue of H (Gauss quadrature with P nodes is exact)
    heavy = dens.weights > 1e-10
    assert np.abs(dens.nodes[heavy][:, None] - ev[None, :]).min(1).max() < 1e-8
    assert np.trapezoid(dens.density, dens.grid) == pytest.approx(1.0, abs=1e-3)
    # E[v^T H v / |v|^2] = tr(H) / P for Gaussian v: the quadrature's trace is unbiased
    assert dens.trace() == pytest.approx(ev.sum(), rel=0.15)
    assert dens.grid[0] < ev[0] and dens.grid[-1] > ev[-1]


def test_density_is_reproducible_and_saves(tmp_path, op64):
    a = ls.spectral_density(op64, n_probes=2, steps=20, seed=5)
    b = hessian.Density.load(a.save(tmp_path / "dens"))
    np.testing.assert_array_equal(a.density, b.density)
    assert b.sigma == a.sigma == pytest.approx(0.01 * (a.nodes.max() - a.nodes.min()))
    np.testing.assert_allclose(hessian.smooth_density(a.nodes, a.weights, a.grid, a.sigma), a.density)
    np.testing.assert_array_equal(ls.spectral_density(op64, n_probes=2, steps=20, seed=5).nodes, a.nodes)


def test_snake_order_visits_every_point_through_neighbours():
    order = hessian.snake_order(4, 3)
    assert sorted(map(tuple, order)) == [(i, j) for i in range(4) for j in range(3)]
    steps = np.abs(np.diff(order, axis=0)).sum(1)
    assert np.all(steps == 1)
    assert order[:5].tolist() == [[0, 0], [1, 0], [2, 0], [3, 0], [3, 1]]


def test_ratio_map_matches_dense_eigenvalues_at_every_point(tiny):
    ck, data = tiny
    dirs = plane(ck)
    xs, ys = [-0.5, 0.0, 0.5], [-0.4, 0.4]  # nx != ny catches a transposed map
    emap = ls.eigen_ratio_map(ck, data, dirs, x=xs, y=ys, dtype=torch.float64, progress=False)
    assert emap.ratio.shape == emap.lam_min.shape == (2, 3) and emap.residuals.shape == (2, 2, 3)
    base = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64)
    from landscape.directions import offset_parameters

    for j, b in enumerate(ys):
        for i, a in enumerate(xs):
            op = base.at(offset_parameters(ck.model, dirs, [a, b]))
            ev = torch.linalg.eigvalsh(op.dense()).numpy()
            scale = max(abs(ev[0]), abs(ev[-1]))
            assert abs(emap.lam_min[j, i] - ev[0]) <= 1e-3 * scale
            assert abs(emap.lam_max[j, i] - ev[-1]) <= 1e-3 * scale
            assert abs(emap.ratio[j, i] - abs(ev[0] / ev[-1])) <= 0.01
            assert emap.loss[j, i] == pytest.approx(op.loss(), rel=1e-10)
    assert emap.converged.all() and (emap.hvps > 0).all()
    assert emap.meta["grid"] == [3, 2] and emap.meta["tol"] == 1e-3


def test_map_resumes_identically_and_saves(tiny, tmp_path, monkeypatch):
    ck, data = tiny
    dirs = plane(ck, seed=1)
    kw = dict(x=(-1, 1, 3), y=(-1, 1, 2), chunk_size=2, progress=False)
    whole = ls.eigen_ratio_map(ck, data, dirs, **kw)

    real = hessian._map_chunk

    def dies_after_one_chunk(*args, **kwargs):
        evaluate, calls = real(*args, **kwargs), []

        def wrapped(idx, coords):
            if calls:
                raise KeyboardInterrupt
            calls.append(1)
            return evaluate(idx, coords)
        return wrapped

    out = tmp_path / "emap"
    monkeypatch.setattr(hessian, "_map_chunk", dies_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        ls.eigen_ratio_map(ck, data, dirs, out=out, **kw)
    monkeypatch.setattr(hessian, "_map_chunk", real)
    with pytest.raises(ResumeError, match="resume"):
        ls.eigen_ratio_map(ck, data, dirs, out=out, **kw)
    resumed = ls.eigen_ratio_map(ck, data, dirs, out=out, resume=True, **kw)
    for field in ("lam_min", "lam_max", "ratio", "hvps", "converged"):
        np.testing.assert_array_equal(getattr(resumed, field), getattr(whole, field))
    loaded = ls.EigenMap.load(tmp_path / "emap.npz")
    np.testing.assert_array_equal(loaded.ratio, whole.ratio)
    assert not list(tmp_path.glob("*.progress*"))


def test_warm_starts_save_hvps_without_changing_the_answer(tiny):
    ck, data = tiny
    kw = dict(x=(-0.5, 0.5, 4), y=(-0.5, 0.5, 2), dtype=torch.float64, progress=False)
    warm = ls.eigen_ratio_map(ck, data, plane(ck, 2), **kw)
    cold = ls.eigen_ratio_map(ck, data, plane(ck, 2), warm_start=False, **kw)
    np.testing.assert_allclose(warm.ratio, cold.ratio, atol=0.01)
    assert warm.hvps.sum() < cold.hvps.sum()


def test_map_rejects_wrong_directions(tiny):
    ck, data = tiny
    with pytest.raises(ArgumentError, match="2 directions"):
        ls.eigen_ratio_map(ck, data, ls.random_directions(ck.model, n=1), x=(-1, 1, 2), y=(-1, 1, 2))


def test_margin_loss_extremes_match_dense(tiny_checkpoint, digits_test):
    ck = ls.load_checkpoint(tiny_checkpoint("mlp", loss="am-softmax", hidden=[8], epochs=2), device="cpu")
    op = HessianOperator.from_checkpoint(ck, digits_test.subset(40, seed=2), dtype=torch.float64)
    ev = torch.linalg.eigvalsh(op.dense()).numpy()
    ext = ls.hessian_extremes(op)
    assert abs(ext.ratio - abs(ev[0] / ev[-1])) <= 0.01
    assert ext.lam_max == pytest.approx(ev[-1], rel=1e-3)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_agrees_with_pyhessian_eigenvalues_and_trace(tiny, op64, spectrum):
    """pyhessian's power iteration and Hutchinson loop on the same CE objective (float32)."""
    pyhessian = pytest.importorskip("pyhessian")
    ck, data = tiny
    x, y = ck.prepare(data)
    torch.manual_seed(0)
    peer = pyhessian.hessian(ck.model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
    top = peer.eigenvalues(maxIter=200, tol=1e-6)[0][0]
    samples = np.asarray(peer.trace(maxIter=200, tol=1e-3))
    ck.model.zero_grad(set_to_none=True)  # pyhessian leaves .grad with a graph on the parameters
    ours = ls.hessian_extremes(ck, data)
    assert ours.lam_max == pytest.approx(top, rel=1e-3)
    assert top == pytest.approx(spectrum[-1], rel=1e-3)
    # pyhessian stops its Hutchinson loop early; both are unbiased estimates of the dense trace
    peer_err = samples.std(ddof=1) / np.sqrt(len(samples))
    assert abs(samples.mean() - spectrum.sum()) < 4 * peer_err
    est = ls.hessian_trace(ck, data, n_probes=200, seed=0)
    assert abs(est.trace - spectrum.sum()) < 4 * est.stderr


@pytest.mark.gpu
def test_cuda_extremes_and_map_match_cpu(tiny_checkpoint, digits_test):
    path = tiny_checkpoint("mlp", hidden=[8], epochs=2)
    data = digits_test.subset(60, seed=0)
    cpu, gpu = ls.load_checkpoint(path, device="cpu"), ls.load_checkpoint(path, device="cuda")
    a = ls.hessian_extremes(cpu, data, dtype=torch.float64)
    b = ls.hessian_extremes(gpu, data, dtype=torch.float64)
    assert b.meta["digest"] == a.meta["digest"] and b.vectors.shape == a.vectors.shape
    assert b.lam_min == pytest.approx(a.lam_min, rel=1e-6) and b.lam_max == pytest.approx(a.lam_max, rel=1e-6)
    dirs = ls.random_directions(cpu.model, n=2, seed=0)
    kw = dict(x=(-0.5, 0.5, 2), y=(-0.5, 0.5, 2), dtype=torch.float64, progress=False)
    np.testing.assert_allclose(ls.eigen_ratio_map(gpu, data, dirs, **kw).ratio,
                               ls.eigen_ratio_map(cpu, data, dirs, **kw).ratio, atol=1e-6)
    assert ls.hessian_trace(gpu, data, n_probes=10, dtype=torch.float64).trace == pytest.approx(
        ls.hessian_trace(cpu, data, n_probes=10, dtype=torch.float64).trace, rel=1e-8)


def test_li_eigsh_recipe_in_the_benchmark_finds_both_extremes(op64, spectrum):
    from landscape.benchmarks.hessian import li_eigsh

    lo, hi = li_eigsh(op64)
    assert hi == pytest.approx(spectrum[-1], rel=1e-2)
    assert abs(lo - spectrum[0]) <= 1e-2 * spectrum[-1]


def test_matrices_only_map_uses_the_weight_hessian(tiny):
    ck, data = tiny
    emap = ls.eigen_ratio_map(ck, data, plane(ck), x=[0.0], y=[0.0], params="matrices", dtype=torch.float64,
                              progress=False)
    ev = torch.linalg.eigvalsh(HessianOperator.from_checkpoint(ck, data, params="matrices",
                                                               dtype=torch.float64).dense()).numpy()
    assert emap.lam_max[0, 0] == pytest.approx(ev[-1], rel=1e-6)
    assert abs(emap.lam_min[0, 0] - ev[0]) <= 1e-3 * ev[-1]
    assert emap.meta["params"] == "matrices"
