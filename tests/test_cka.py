"""Centred kernel alignment (issue 16): direct O(n^2) references, the U-statistic, invariances, minibatches."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import landscape as ls
from landscape.cka import cka, cka_matrix, default_layers
from landscape.errors import ArgumentError
from tests.conftest import ZOO


# -- independent references ------------------------------------------------------------------
def ref_gram(x: np.ndarray, kernel: str, threshold: float = 0.5) -> np.ndarray:
    """Gram matrix written out from the definitions (Kornblith et al.'s reference code for the RBF bandwidth)."""
    x = np.asarray(x, dtype=np.float64)
    if kernel == "linear":
        return x @ x.T
    sq = np.array([[np.sum((a - b) ** 2) for b in x] for a in x])
    return np.exp(-sq / (2 * threshold ** 2 * np.median(sq)))


def ref_hsic(k: np.ndarray, m: np.ndarray, unbiased: bool) -> float:
    """Biased HSIC_0 = tr(K H L H)/(n-1)^2, or Song et al. (2012)'s closed form of the unbiased HSIC_1."""
    n = len(k)
    if not unbiased:
        h = np.eye(n) - np.ones((n, n)) / n
        return np.trace(k @ h @ m @ h) / (n - 1) ** 2
    kt, mt = k - np.diag(np.diag(k)), m - np.diag(np.diag(m))
    one = np.ones(n)
    return (np.trace(kt @ mt) + (one @ kt @ one) * (one @ mt @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ kt @ mt @ one) / (n * (n - 3))


def ref_cka(x, y, kernel="linear", threshold=0.5, unbiased=False) -> float:
    k, m = ref_gram(x, kernel, threshold), ref_gram(y, kernel, threshold)
    return ref_hsic(k, m, unbiased) / np.sqrt(ref_hsic(k, k, unbiased) * ref_hsic(m, m, unbiased))


def related(rng, n: int, d1: int = 10, d2: int = 8, noise: float = 0.5):
    x = rng.standard_normal((n, d1))
    y = np.tanh(x @ rng.standard_normal((d1, d2))) + noise * rng.standard_normal((n, d2))
    return x, y


# -- the estimators ----------------------------------------------------------------------------
@pytest.mark.parametrize("n,d1,d2", [(60, 3, 2), (12, 40, 30)])  # feature-space and Gram paths of the linear kernel
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("debiased", [False, True])
def test_agrees_with_a_direct_computation(n, d1, d2, kernel, debiased):
    rng = np.random.default_rng(n + d1)
    x, y = related(rng, n, d1, d2)
    got = cka(x, y, kernel=kernel, threshold=0.7, debiased=debiased, device="cpu")
    assert got == pytest.approx(ref_cka(x, y, kernel, 0.7, debiased), rel=1e-10, abs=1e-12)


def test_unbiased_hsic_is_the_u_statistic():
    """HSIC_1 = 1/(n)_4 sum over distinct (i, j, q, r) of k_ij l_ij + k_ij l_qr - 2 k_ij l_iq (Song et al. 2012)."""
    from landscape.cka import center_gram

    rng = np.random.default_rng(0)
    n = 7
    k, m = ref_gram(rng.standard_normal((n, 3)), "rbf"), ref_gram(rng.standard_normal((n, 2)), "linear")
    total = sum(k[i, j] * m[i, j] + k[i, j] * m[q, r] - 2 * k[i, j] * m[i, q]
                for i, j, q, r in itertools.permutations(range(n), 4))
    ustat = total / (n * (n - 1) * (n - 2) * (n - 3))
    kc, mc = center_gram(torch.as_tensor(k), True), center_gram(torch.as_tensor(m), True)
    assert float((kc * mc).sum()) / (n * (n - 3)) == pytest.approx(ustat, rel=1e-12)
    assert ref_hsic(k, m, True) == pytest.approx(ustat, rel=1e-12)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("options", [{}, {"debiased": True}, {"minibatch": 40}])
def test_a_representation_is_identical_to_itself(kernel, options):
    x = np.random.default_rng(1).standard_normal((150, 6))
    assert cka(x, x, kernel=kernel, **options) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_invariant_to_orthogonal_maps_and_isotropic_scaling(kernel):
    rng = np.random.default_rng(2)
    x, y = related(rng, 200, 10, 8)
    q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    for debiased in (False, True):
        base = cka(x, y, kernel=kernel, debiased=debiased)
        assert cka(x @ q, y, kernel=kernel, debiased=debiased) == pytest.approx(base, rel=1e-10)
        assert cka(42.0 * x, 0.01 * y, kernel=kernel, debiased=debiased) == pytest.approx(base, rel=1e-10)


def test_linear_cka_is_not_invariant_to_invertible_linear_maps():
    """Unlike CCA: stretching a few directions of X changes linear CKA (Kornblith et al. 2019, Sec. 3)."""
    rng = np.random.default_rng(3)
    x, y = related(rng, 300, 10, 8)
    a = np.diag(np.geomspace(1e-2, 1e2, 10)) @ np.linalg.qr(rng.standard_normal((10, 10)))[0]  # invertible
    assert np.linalg.cond(a) == pytest.approx(1e4, rel=1e-6)
    base, mapped = cka(x, y), cka(x @ a, y)
    assert mapped == pytest.approx(ref_cka(x @ a, y), rel=1e-10)
    assert abs(mapped - base) > 0.1, (base, mapped)


def test_minibatch_estimate_is_within_0_01_of_the_full_one_on_5000_points():
    rng = np.random.default_rng(4)
    x, y = related(rng, 5000, 32, 24, noise=0.3)
    full = cka(x, y, debiased=True)
    for minibatch in (250, 500, 1000):
        assert abs(cka(x, y, minibatch=minibatch, seed=0) - full) < 0.01, minibatch
    assert abs(cka(x, y) - full) < 0.01  # the biased full value, too, at this n
    # one batch of every example is the full debiased estimator itself
    assert cka(x, y, minibatch=5000) == pytest.approx(full, rel=1e-10)
    # and the estimate depends on the shuffle only through which examples share a batch
    assert cka(x, y, minibatch=500, seed=1) != cka(x, y, minibatch=500, seed=0)


def test_minibatch_estimator_is_the_size_weighted_mean_of_unbiased_hsic():
    """The estimator pinned by hand: seeded shuffle, consecutive batches (one under 4 left out), weights = sizes."""
    rng = np.random.default_rng(7)
    x, y = related(rng, 29, 4, 3)
    order = np.random.default_rng(5).permutation(29)
    batches = [order[:10], order[10:20], order[20:29]]  # 10, 10, 9
    sums = np.zeros(3)
    for idx in batches:
        k, m = ref_gram(x[idx], "linear"), ref_gram(y[idx], "linear")
        sums += len(idx) * np.array([ref_hsic(k, m, True), ref_hsic(k, k, True), ref_hsic(m, m, True)])
    want = sums[0] / np.sqrt(sums[1] * sums[2])
    assert cka(x, y, minibatch=10, seed=5) == pytest.approx(want, rel=1e-10)
    from landscape.cka import _batch_slices

    # 31 = 3 x 10 + 1: a last batch of one example has no unbiased HSIC and is left out
    assert [len(b) for b in _batch_slices(31, 10, 5)] == [10, 10, 10]


def test_minibatch_rbf_converges_to_the_full_value():
    rng = np.random.default_rng(5)
    x, y = related(rng, 2000, 12, 10, noise=0.3)
    full = cka(x, y, kernel="rbf", debiased=True)
    assert abs(cka(x, y, kernel="rbf", minibatch=400) - full) < 0.01


def test_user_mistakes_are_one_line_errors():
    x = np.zeros((10, 3))
    with pytest.raises(ArgumentError, match="same examples"):
        cka(x, np.zeros((9, 3)))
    with pytest.raises(ArgumentError, match="kernel='cosine' is not one of"):
        cka(x, x, kernel="cosine")
    with pytest.raises(ArgumentError, match="threshold must be > 0"):
        cka(x, x, kernel="rbf", threshold=0)
    with pytest.raises(ArgumentError, match="always debiased"):
        cka(x, x, debiased=False, minibatch=5)
    with pytest.raises(ArgumentError, match="at least 4 examples"):
        cka(x[:3], x[:3], debiased=True)
    with pytest.raises(ArgumentError, match="minibatch must be >= 4"):
        cka(x, x, minibatch=2)
    with pytest.raises(ArgumentError, match="NaN or inf"):
        cka(np.full((5, 2), np.inf), x[:5])


# -- layer by layer -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mam():
    return ls.load_checkpoint(ZOO / "mlp-mam-softmax.safetensors", device="cpu")


def test_default_layers_of_the_zoo(mlp, cnn):
    assert default_layers(mlp.model) == ["body.1", "body.3", "body.5", "body.7", "head"]
    assert default_layers(cnn.model) == ["body.conv1", "body.relu1", "body.conv2", "body.relu2", "body.conv3",
                                         "body.relu3", "head"]
    resnet = ls.models.build("resnet", input_shape=(1, 8, 8), num_classes=10)
    assert default_layers(resnet) == ["stem.0", "stem.2", "stages.0", "stages.1", "stages.2", "stages.3", "head"]


def test_matrix_equals_cka_of_each_layers_features(mlp, mam, digits_test):
    data = digits_test.subset(120, seed=0)
    layers = ["body.3", "features", "head"]
    cm = cka_matrix(mlp, mam, data, layers=layers, layers_b=["body.1", "head"], debiased=True, batch_size=32)
    assert cm.values.shape == (3, 2) and cm.layers_a == layers and cm.dims_a == [128, 64, 10]
    feats_a = {k: ls.extract_features(mlp, data, layer=None if k == "features" else k).x for k in layers}
    feats_b = {k: ls.extract_features(mam, data, layer=k).x for k in ("body.1", "head")}
    for i, ka in enumerate(layers):
        for j, kb in enumerate(("body.1", "head")):
            want = ref_cka(feats_a[ka], feats_b[kb], unbiased=True)
            assert cm.values[i, j] == pytest.approx(want, rel=1e-6, abs=1e-8), (ka, kb)
    assert cm.meta["estimator"] == "full" and cm.meta["n_samples"] == 120 and cm.meta["debiased"]
    assert cm.meta["checkpoint_a"] == "mlp-ce" and cm.meta["checkpoint_b"] == "mlp-mam-softmax"


def test_self_similarity_is_symmetric_with_a_unit_diagonal(mlp, digits_test, tmp_path):
    cm = cka_matrix(mlp, None, digits_test, kernel="rbf")
    assert cm.layers_a == cm.layers_b == default_layers(mlp.model) and cm.meta["same"]
    np.testing.assert_allclose(np.diag(cm.values), 1.0, atol=1e-12)
    np.testing.assert_allclose(cm.values, cm.values.T, atol=1e-12)
    assert 0 < cm.values.min() < 1
    back = ls.Result.load(cm.save(tmp_path / "cka"))
    assert type(back).__name__ == "CKAMatrix" and back.layers_a == cm.layers_a
    np.testing.assert_array_equal(back.values, cm.values)


def test_minibatch_matrix_matches_minibatch_cka_of_the_features(mlp, mam, digits_test):
    cm = cka_matrix(mlp, mam, digits_test, layers=["body.7"], layers_b=["body.7", "head"], minibatch=64, seed=3)
    fa = ls.extract_features(mlp, digits_test, layer="body.7").x
    for j, kb in enumerate(("body.7", "head")):
        fb = ls.extract_features(mam, digits_test, layer=kb).x
        assert cm.values[0, j] == pytest.approx(cka(fa, fb, minibatch=64, seed=3), rel=1e-6)
    assert cm.meta["estimator"] == "minibatch" and cm.meta["batches"] == 6  # 360 = 5 x 64 + 40
    full = cka_matrix(mlp, mam, digits_test, layers=["body.7"], layers_b=["body.7", "head"], debiased=True)
    np.testing.assert_allclose(cm.values, full.values, atol=0.03)


def test_layer_mistakes_name_the_layers(mlp, digits_test):
    with pytest.raises(ArgumentError, match="has no layer 'body.99'.*Available"):
        cka_matrix(mlp, None, digits_test, layers=["body.99"])
    with pytest.raises(ArgumentError, match="needs data"):
        cka_matrix(mlp, mlp)
    with pytest.raises(ArgumentError, match="layers is empty"):
        cka_matrix(mlp, None, digits_test, layers=[])


def test_heatmap_plots_the_matrix(mlp, mam, digits_test):
    import viz

    cm = cka_matrix(mlp, mam, digits_test.subset(100, seed=0))
    plot = viz.cka_heatmap(cm)
    try:
        np.testing.assert_array_equal(plot.values["cka"], cm.values)
        assert plot.values["layers_a"] == cm.layers_a and plot.values["kernel"] == "linear"
        image = plot.fig.axes[0].images[0]
        np.testing.assert_array_equal(np.asarray(image.get_array()), cm.values)
        assert image.get_clim() == (0.0, 1.0) and "Kornblith" in plot.caption
    finally:
        plot.close()


def test_cka_command(tmp_path):
    from viz.cli import main

    a, b = ZOO / "mlp-ce.safetensors", ZOO / "mlp-mam-softmax.safetensors"
    out = tmp_path / "cka"
    assert main(["cka", str(a), str(b), "--subset", "100", "--out", str(out), "--quiet"]) == 0
    assert {p.name for p in out.iterdir()} >= {"cka.npz", "cka.png", "cka.json", "cka.md"}
    assert "| mlp-ce \\ mlp-mam-softmax | body.1 |" in (out / "cka.md").read_text()
    assert main(["cka", str(a), str(b), str(a), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert main(["cka", str(a), "--minibatch", "2", "--out", str(tmp_path / "x"), "--quiet"]) == 2


@pytest.mark.gpu
def test_cuda_matches_cpu(digits_test):
    rng = np.random.default_rng(6)
    x, y = related(rng, 3000, 20, 16)
    for kernel in ("linear", "rbf"):
        for options in ({}, {"debiased": True}, {"minibatch": 500}):
            cpu = cka(x, y, kernel=kernel, device="cpu", **options)
            assert cka(x, y, kernel=kernel, device="cuda", **options) == pytest.approx(cpu, rel=1e-9), (kernel, options)
    a = ls.load_checkpoint(ZOO / "mlp-ce.safetensors", device="cuda")
    b = ls.load_checkpoint(ZOO / "mlp-mam-softmax.safetensors", device="cuda")
    on_gpu = cka_matrix(a, b, digits_test)
    on_cpu = cka_matrix(ls.load_checkpoint(ZOO / "mlp-ce.safetensors", device="cpu"),
                        ls.load_checkpoint(ZOO / "mlp-mam-softmax.safetensors", device="cpu"), digits_test)
    np.testing.assert_allclose(on_gpu.values, on_cpu.values, rtol=1e-4, atol=1e-6)
    mb = cka_matrix(a, b, digits_test, minibatch=128)
    assert mb.meta["estimator"] == "minibatch" and np.isfinite(mb.values).all()
