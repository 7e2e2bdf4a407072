"""Hessian algorithms on networks: per-layer blocks, eigenvector directions, models with a criterion, maps.

References are dense float64 Hessians formed by ``torch.func.hessian`` of the objective as a
function of the flat parameter vector (no Hessian-vector product code involved), their
``numpy.linalg.eigvalsh``, and closed forms.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

import landscape as ls
from landscape import hessian
from landscape.errors import OutputError, ResumeError


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint, digits_test):
    """A small trained mlp (626 parameters: 64-8 linear, batchnorm, 8-10 head) and 60 test digits."""
    ck = ls.load_checkpoint(tiny_checkpoint("mlp", hidden=[8], epochs=2), device="cpu")
    return ck, digits_test.subset(60, seed=0)


def dense_hessian(model: nn.Module, loss, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, list[str]]:
    """``torch.func.hessian`` of ``loss(model(x), y)`` over all parameters (float64, eval mode), and their names."""
    model = model.eval()
    params = {n: p.detach().double() for n, p in model.named_parameters()}
    state = {**params, **{n: b.double() if b.is_floating_point() else b for n, b in model.named_buffers()}}
    names = list(params)
    sizes = [params[n].numel() for n in names]

    def f(flat):
        parts = torch.split(flat, sizes)
        here = dict(state, **{n: q.reshape(params[n].shape) for n, q, in zip(names, parts)})
        return loss(functional_call(model, here, (x.double(),)), y)

    theta = torch.cat([params[n].reshape(-1) for n in names])
    return torch.func.hessian(f)(theta).numpy(), [n for n, s in zip(names, sizes) for _ in range(s)]


@pytest.fixture(scope="module")
def reference(tiny):
    ck, data = tiny
    x, y = ck.prepare(data, dtype=torch.float64)
    H, owner = dense_hessian(ck.model, nn.functional.cross_entropy, x, y)
    return H, np.array(owner)


def block(H: np.ndarray, owner: np.ndarray, names) -> np.ndarray:
    idx = np.flatnonzero(np.isin(owner, list(names)))
    return H[np.ix_(idx, idx)]


def test_layer_spectra_match_dense_per_block_hessians(tiny, reference):
    ck, data = tiny
    H, owner = reference
    sp = ls.layer_spectra(ck, data, dtype=torch.float64, n_probes=6, steps=30, trace_probes=200, verbose=False)
    assert sp.names == ["body.1", "body.2", "head"]  # linear, batchnorm, head: depth order
    assert sp.params[0] == ["body.1.weight", "body.1.bias"] and list(sp.sizes) == [520, 16, 90]
    for g, names in enumerate(sp.params):
        ev = np.linalg.eigvalsh(block(H, owner, names))
        scale = np.abs(ev).max()
        assert abs(sp.lam_min[g] - ev[0]) <= 1e-3 * scale and abs(sp.lam_max[g] - ev[-1]) <= 1e-3 * scale, g
        assert abs(sp.trace[g] - ev.sum()) < 4 * sp.trace_stderr[g], g
        assert np.trapezoid(sp.density[g], sp.grid) == pytest.approx(1.0, abs=1e-3), g
        dens = sp.group(g)
        assert dens.meta["size"] == sp.sizes[g] and dens.nodes.shape[1] == min(30, sp.sizes[g])
        if sp.sizes[g] <= 30:  # quadrature with as many nodes as the block's size: the nodes are its eigenvalues
            heavy = dens.weights > 1e-8
            assert np.abs(dens.nodes[heavy][:, None] - ev[None, :]).min(1).max() < 1e-8
    # the blocks are not the whole Hessian: the full spectrum reaches further
    full = np.linalg.eigvalsh(H)
    assert full[-1] > sp.lam_max.max() + 1e-3
    table = sp.table()
    assert [r["group"] for r in table] == sp.names and table[2]["size"] == 90


def test_layer_groups_by_pattern_and_mapping(tiny, reference):
    ck, data = tiny
    H, owner = reference
    groups = {"weights": ["*.weight"], "head": "head.*"}
    sp = ls.layer_spectra(ck, data, groups=groups, dtype=torch.float64, n_probes=2, steps=10, trace_probes=10,
                          verbose=False)
    assert sp.names == ["weights", "head"] and sp.params[1] == ["head.weight", "head.bias"]
    ev = np.linalg.eigvalsh(block(H, owner, sp.params[0]))
    assert sp.lam_max[0] == pytest.approx(ev[-1], rel=1e-3)
    assert ls.hessian.parameter_groups(ck.model, "parameter")["body.2.bias"] == ["body.2.bias"]
    with pytest.raises(ls.errors.ArgumentError, match="matches no trainable parameter"):
        ls.layer_spectra(ck, data, groups=["conv*"])


def test_top_k_eigenvalues_of_a_network_match_eigvalsh(tiny, reference):
    ck, data = tiny
    ev = np.linalg.eigvalsh(reference[0])
    scale = np.abs(ev).max()
    top = ls.hessian_eigenvalues(ck, data, k=5, which="LA", dtype=torch.float64)
    np.testing.assert_allclose(top.values, ev[::-1][:5], atol=1e-3 * scale)
    assert top.converged and top.meta["checkpoint"] == ck.name and top.meta["n_samples"] == 60
    low = ls.hessian_eigenvalues(ck, data, k=2, which="SA", dtype=torch.float64, tol=1e-6)
    np.testing.assert_allclose(low.values, ev[:2], atol=1e-5 * scale)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_top_k_agrees_with_pyhessian(tiny, reference):
    """PyHessian's power iteration with deflation (top_n=3) on the same CE objective, float32."""
    import copy

    pyhessian = pytest.importorskip("pyhessian")
    ck, data = tiny
    x, y = ck.prepare(data)
    torch.manual_seed(0)
    peer, _ = pyhessian.hessian(copy.deepcopy(ck.model), nn.CrossEntropyLoss(), data=(x, y),
                                cuda=False).eigenvalues(maxIter=300, tol=1e-7, top_n=3)
    ours = ls.hessian_eigenvalues(ck, data, k=3, which="LA", tol=1e-6)
    ev = np.linalg.eigvalsh(reference[0])[::-1][:3]
    np.testing.assert_allclose(ours.values, ev, rtol=1e-4)
    np.testing.assert_allclose(peer, ours.values, rtol=2e-3)


def test_hessian_directions_are_eigenvectors_usable_by_surfaces(tiny, reference):
    ck, data = tiny
    H, _ = reference
    ev = np.linalg.eigvalsh(H)
    dirs = ls.hessian_directions(ck, data, k=2, which="BE", dtype=torch.float64, tol=1e-8)
    assert isinstance(dirs, ls.Directions) and dirs.meta["kind"] == "hessian" and dirs.n == 2
    lam = np.array(dirs.meta["eigenvalues"])
    np.testing.assert_allclose(lam, [ev[-1], ev[0]], rtol=1e-6)
    V = dirs.vectors.astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(V, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(H @ V.T, V.T * lam, atol=1e-5 * np.abs(ev).max())  # float32 storage
    # usable like random directions: a surface and a line along them
    h = 0.02
    surf = ls.surface(ck, data, dirs, x=[-h, 0.0, h], y=[-h, 0.0, h], verbose=False)
    assert surf.loss[1, 1] == pytest.approx(ck.evaluate(data)[0], rel=1e-6)
    line = ls.interpolate(ck, dirs, data, t=[-h, 0.0, h], verbose=False)
    np.testing.assert_allclose(line.loss, surf.loss[1], rtol=1e-6)


def test_the_loss_along_eigenvectors_curves_by_their_eigenvalues():
    """``L(theta* + t v) = L0 + lambda t^2 / 2 + O(t^4)`` along an eigenvector (second differences of a smooth net)."""
    model, x, y = _smooth_net()
    dirs = ls.hessian_directions(model, (x, y), k=2, which="BE", dtype=torch.float64, tol=1e-9)
    lam = dirs.meta["eigenvalues"]
    assert lam[0] > 0 > lam[1]
    h = 0.05
    surf = ls.surface(model, (x, y), dirs, x=[-h, 0.0, h], y=[-h, 0.0, h], verbose=False)
    curv_x = (surf.loss[1, 0] - 2 * surf.loss[1, 1] + surf.loss[1, 2]) / h ** 2
    curv_y = (surf.loss[0, 1] - 2 * surf.loss[1, 1] + surf.loss[2, 1]) / h ** 2
    assert curv_x == pytest.approx(lam[0], rel=0.02) and curv_y == pytest.approx(lam[1], rel=0.02)


def test_directions_of_a_parameter_subset_are_zero_elsewhere(tiny, reference):
    ck, data = tiny
    H, owner = reference
    dirs = ls.hessian_directions(ck, data, k=1, which="LA", params="matrices", dtype=torch.float64,
                                 scale="weights")
    weights = np.isin(owner, ["body.1.weight", "head.weight"])
    assert np.all(dirs.vectors[0, ~weights] == 0)
    theta = np.concatenate([p.detach().double().reshape(-1).numpy() for p in ck.model.parameters()])
    assert np.linalg.norm(dirs.vectors[0]) == pytest.approx(np.linalg.norm(theta[weights]), rel=1e-6)
    ev = np.linalg.eigvalsh(H[np.ix_(weights, weights)])
    assert dirs.meta["eigenvalues"][0] == pytest.approx(ev[-1], rel=1e-3)


def _smooth_net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A tanh net (39 parameters, twice differentiable everywhere) at a seeded random point, and 30 samples."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x = torch.randn(30, 5)
    y = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(1))
    return model, x, y


def test_a_plain_module_with_a_criterion_and_any_data_form():
    model, x, y = _smooth_net()
    smoothed = nn.CrossEntropyLoss(label_smoothing=0.2)
    H, _ = dense_hessian(model, smoothed, x, y)
    ev = np.linalg.eigvalsh(H)
    ext = ls.hessian_extremes(model, (x, y), criterion=smoothed, dtype=torch.float64, tol=1e-9, max_iter=200)
    assert ext.lam_min == pytest.approx(ev[0], abs=1e-8) and ext.lam_max == pytest.approx(ev[-1], abs=1e-8)
    plain = np.linalg.eigvalsh(dense_hessian(model, nn.functional.cross_entropy, x, y)[0])
    assert abs(plain[-1] - ev[-1]) > 1e-4  # the criterion matters, so the comparison above tests it
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)
    top = ls.hessian_eigenvalues(model, loader, k=3, criterion=smoothed, dtype=torch.float64, tol=1e-9)
    np.testing.assert_allclose(top.values, ev[::-1][:3], atol=1e-8)
    est = ls.trace(model, (x, y), criterion=smoothed, dtype=torch.float64, method="hutch++", n_probes=117)
    assert est.trace == pytest.approx(ev.sum(), abs=1e-8)  # 39 sketch vectors span all 39 parameters: exact


def test_slq_moments_match_hutchinson_within_the_bootstrap_interval(tiny, reference):
    """The accuracy statement of the density: it integrates to 1 and its first two moments are tr(H), tr(H^2)."""
    ck, data = tiny
    H = reference[0]
    op = hessian.as_operator(ck, data, dtype=torch.float64)
    dens = ls.spectral_density(op, n_probes=40, steps=40, seed=0)
    assert np.trapezoid(dens.density, dens.grid) == pytest.approx(1.0, abs=1e-4)

    class Squared:  # H^2 through the operator protocol
        shape, dtype, device = op.shape, op.dtype, op.device

        def matmat(self, v):
            return op.matmat(op.matmat(v))

    for p, target in ((1, op), (2, Squared())):
        hutch = ls.trace(target, n_probes=300, seed=1)
        lo, hi = hutch.interval
        s_lo, s_hi = dens.moment_interval(p)
        # the two estimates agree within their bootstrap intervals (the intervals overlap) ...
        assert s_lo < hi and lo < s_hi, (p, dens.moment(p), hutch)
        assert abs(dens.moment(p) - hutch.trace) < (hi - lo) / 2 + (s_hi - s_lo) / 2
        # ... and both cover the exact tr(H^p) of the dense Hessian
        exact = float(np.trace(np.linalg.matrix_power(H, p)))
        assert lo < exact < hi and s_lo < exact < s_hi, p


def test_map_reports_its_true_centre(tiny):
    ck, data = tiny
    dirs = ls.random_directions(ck.model, n=2, seed=0)
    exact = ls.hessian_extremes(ck, data, dtype=torch.float64, tol=1e-9, max_iter=300)
    even = ls.eigen_ratio_map(ck, data, dirs, x=(-1, 1, 2), y=(-1, 1, 2), dtype=torch.float64, verbose=False)
    centre = even.meta["centre"]
    assert not centre["on_grid"] and 0.0 not in even.x
    scale = abs(exact.lam_max)
    assert abs(centre["lam_min"] - exact.lam_min) <= 1e-3 * scale
    assert abs(centre["lam_max"] - exact.lam_max) <= 1e-3 * scale
    assert centre["ratio"] == pytest.approx(abs(centre["lam_min"] / centre["lam_max"]))
    assert centre["loss"] == pytest.approx(ck.evaluate(data)[0], rel=1e-5)
    odd = ls.eigen_ratio_map(ck, data, dirs, x=(-1, 1, 3), y=[0.0], dtype=torch.float64, verbose=False)
    assert odd.meta["centre"]["on_grid"] and odd.meta["centre"]["lam_max"] == odd.lam_max[0, 1]
    one = ls.eigen_ratio_map(ck, data, dirs, x=(-1, 1, 1), y=(-1, 1, 1), dtype=torch.float64, verbose=False)
    assert one.x.tolist() == [0.0] and one.meta["centre"]["on_grid"]


def test_non_finite_points_stay_nan_and_are_counted(tiny):
    ck, data = tiny
    dirs = ls.random_directions(ck.model, n=2, seed=0)
    with pytest.warns(RuntimeWarning, match="2 of 3 points"):
        emap = ls.eigen_ratio_map(ck, data, dirs, x=[-1e30, 0.0, 1e30], y=[0.0], verbose=False)
    assert emap.meta["non_finite"] == 2
    assert np.isnan(emap.lam_min[0, [0, 2]]).all() and np.isnan(emap.ratio[0, [0, 2]]).all()
    assert np.isfinite(emap.lam_min[0, 1]) and not emap.converged[0, 0]
    broken = ls.load_checkpoint(ck.path, device="cpu")
    with torch.no_grad():
        broken.model.head.weight[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="non-finite"):
        nan_map = ls.eigen_ratio_map(broken, data, dirs, x=(-1, 1, 2), y=(-1, 1, 2), verbose=False)
    assert nan_map.meta["non_finite"] == 4 and math.isnan(nan_map.meta["centre"]["lam_max"])


def test_finished_maps_resume_without_recomputing_and_are_never_overwritten(tiny, tmp_path, monkeypatch):
    ck, data = tiny
    dirs = ls.random_directions(ck.model, n=2, seed=1)
    kw = dict(x=(-1, 1, 2), y=(-1, 1, 2), chunk_size=2, verbose=False, out=tmp_path / "m.npz")
    first = ls.eigen_ratio_map(ck, data, dirs, **kw)
    assert first.meta["fingerprint"] and first.meta["threads"] == torch.get_num_threads()

    def never(*args, **kwargs):
        raise AssertionError("a finished map was recomputed")

    monkeypatch.setattr(hessian, "_map_chunk", never)
    again = ls.eigen_ratio_map(ck, data, dirs, resume=True, **kw)
    np.testing.assert_array_equal(again.ratio, first.ratio)
    with pytest.raises(OutputError, match="--resume.*--overwrite"):
        ls.eigen_ratio_map(ck, data, dirs, **kw)
    with pytest.raises(ResumeError, match="another run"):
        ls.eigen_ratio_map(ck, data, dirs, resume=True, tol=1e-2, **kw)
    monkeypatch.undo()
    redone = ls.eigen_ratio_map(ck, data, dirs, overwrite=True, tol=1e-2, **kw)
    assert redone.meta["tol"] == 1e-2


def test_resume_under_another_thread_count_is_refused(tiny, tmp_path, monkeypatch):
    ck, data = tiny
    dirs = ls.random_directions(ck.model, n=2, seed=2)
    kw = dict(x=(-1, 1, 2), y=(-1, 1, 2), chunk_size=2, verbose=False, out=tmp_path / "m.npz")
    real = hessian._map_chunk

    def dies_after_one_chunk(*args, **kwargs):
        evaluate, calls = real(*args, **kwargs), []

        def wrapped(idx, coords):
            if calls:
                raise KeyboardInterrupt
            calls.append(1)
            return evaluate(idx, coords)
        return wrapped

    monkeypatch.setattr(hessian, "_map_chunk", dies_after_one_chunk)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        with pytest.raises(KeyboardInterrupt):
            ls.eigen_ratio_map(ck, data, dirs, **kw)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.undo()
    assert hessian.grid.progress_files(tmp_path / "m.npz")
    # the engine's own message (landscape.grid), the same for surfaces and maps
    with pytest.raises(ResumeError, match=f"computed with {threads + 1} CPU threads and this run uses {threads}.*"
                                          f"--threads {threads + 1}"):
        ls.eigen_ratio_map(ck, data, dirs, resume=True, **kw)
    fresh = ls.eigen_ratio_map(ck, data, dirs, overwrite=True, **kw)  # --overwrite starts over, dropping the progress
    assert fresh.meta["threads"] == threads and not hessian.grid.progress_files(tmp_path / "m.npz")


@pytest.mark.gpu
def test_cuda_algorithms_match_cpu(tiny):
    ck, data = tiny
    gpu = ls.load_checkpoint(ck.path, device="cuda")
    kw = dict(dtype=torch.float64)
    a, b = (ls.hessian_eigenvalues(c, data, k=3, tol=1e-8, **kw) for c in (ck, gpu))
    np.testing.assert_allclose(b.values, a.values, rtol=1e-6)
    np.testing.assert_allclose(b.vectors, a.vectors, atol=1e-5)  # the sign convention holds across devices
    for method in ("hutchinson", "hutch++"):
        cpu_tr, gpu_tr = (ls.trace(c, data, method=method, n_probes=30, **kw) for c in (ck, gpu))
        assert gpu_tr.trace == pytest.approx(cpu_tr.trace, rel=1e-8)
    sa, sb = (ls.layer_spectra(c, data, n_probes=2, steps=10, trace_probes=10, verbose=False, **kw) for c in (ck, gpu))
    np.testing.assert_allclose(sb.lam_max, sa.lam_max, rtol=1e-6)
    np.testing.assert_allclose(sb.density, sa.density, rtol=1e-5, atol=1e-8)
    dense = torch.as_tensor(np.diag(np.linspace(-1.0, 2.0, 40)), device="cuda")
    ext = ls.lanczos_extremes(dense, tol=1e-10, max_iter=40)
    assert ext.lam_min == pytest.approx(-1.0, abs=1e-9) and ext.lam_max == pytest.approx(2.0, abs=1e-9)
    dirs = ls.hessian_directions(gpu, data, k=2, which="BE", **kw)
    emap = ls.eigen_ratio_map(gpu, data, ls.random_directions(ck.model, n=2, seed=0), x=(-1, 1, 2), y=(-1, 1, 2),
                              verbose=False, **kw)
    assert dirs.vectors.shape[0] == 2 and emap.meta["threads"] is None and emap.meta["centre"]["on_grid"] is False
