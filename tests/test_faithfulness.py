"""Faithfulness metrics (landscape.faithfulness): deletion, insertion, ROAD and the random-map baseline.

References: closed-form trapezoid areas and numpy's trapezoid rule; exact fixed points of the
imputation (constant images, linear ramps) and its defining equations checked pixel by pixel; a
hand-made model that reads exactly known pixels (its true map must beat the reverse map and
random maps); a naive per-step loop for the deletion curve of the shipped cnn.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import landscape as ls
from landscape.errors import ArgumentError
from landscape.faithfulness import NEIGHBOURS, Faithfulness, auc, faithfulness, noisy_linear_impute


# -- the trapezoid area --------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 4, 64])
def test_auc_of_known_curves(n):
    k = np.arange(n + 1) / n
    assert auc(1 - k) == pytest.approx(0.5, abs=1e-12)
    assert auc(k ** 2) == pytest.approx(1 / 3 + 1 / (6 * n ** 2), abs=1e-12)  # trapezoid error of x^2
    assert auc(np.full(n + 1, 0.7)) == pytest.approx(0.7, abs=1e-12)
    curves = np.random.default_rng(n).random((5, n + 1))
    np.testing.assert_allclose(auc(curves), np.trapezoid(curves, dx=1 / n, axis=1), atol=1e-12)
    with pytest.raises(ArgumentError, match="at least 2 points"):
        auc([1.0])


# -- noisy linear imputation ---------------------------------------------------------------------
def _mask(seed: int, shape=(9, 11), fraction=0.6) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) < fraction


def test_imputation_of_a_constant_image_leaves_it_constant():
    image = np.full((3, 9, 11), 0.37)
    removed = _mask(0)
    np.testing.assert_allclose(noisy_linear_impute(image, removed, noise=0.0), image, atol=1e-12)
    noisy = noisy_linear_impute(image, removed, noise=0.01, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(noisy[:, ~removed], image[:, ~removed])  # known pixels untouched
    dev = noisy[:, removed] - 0.37
    assert abs(dev.mean()) < 3e-3 and 0.008 < dev.std() < 0.012  # N(0, 0.01) noise on imputed pixels only


def test_imputation_reproduces_a_linear_ramp_inside_the_image():
    yy, xx = np.mgrid[0:9, 0:11]
    image = (0.1 + 0.03 * yy - 0.02 * xx)[None].astype(np.float64)
    removed = np.zeros((9, 11), bool)
    removed[2:7, 3:8] = True  # a hole away from the border: symmetric neighbour weights are exact
    np.testing.assert_allclose(noisy_linear_impute(image, removed, noise=0.0), image, atol=1e-12)


def test_imputed_pixels_are_the_weighted_mean_of_their_neighbours():
    rng = np.random.default_rng(1)
    image, removed = rng.random((2, 7, 8)), _mask(2, (7, 8), 0.7)
    out = noisy_linear_impute(image, removed, noise=0.0)
    for y, x in zip(*np.nonzero(removed)):
        total, weight = np.zeros(2), 0.0
        for (dy, dx), w in NEIGHBOURS:
            if 0 <= y + dy < 7 and 0 <= x + dx < 8:
                total += w * out[:, y + dy, x + dx]
                weight += w
        np.testing.assert_allclose(out[:, y, x], total / weight, atol=1e-10)
    assert sorted(w for _, w in NEIGHBOURS) == [1 / 12] * 4 + [1 / 6] * 4
    with pytest.raises(ArgumentError, match="at least one known pixel"):
        noisy_linear_impute(image, np.ones((7, 8), bool), noise=0.0)


# -- a model that reads known pixels ----------------------------------------------------------------
READ = [(1, 1), (1, 4), (1, 6), (3, 2), (4, 5), (6, 1), (6, 4), (5, 7)]  # no two are neighbours


class Reader(nn.Module):
    """Class 0 has logit ``2 * (sum of the READ pixels) - 8``, class 1 has 0: only those pixels matter."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 8, 8))
        with torch.no_grad():
            for y, x in READ:
                self.weight[0, y, x] = 2.0

    def forward(self, x):
        score = (x[:, 0] * self.weight[0]).sum((1, 2)) - 8
        return torch.stack([score, torch.zeros_like(score)], 1)


@pytest.fixture(scope="module")
def reader_images():
    x = 0.1 * torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for y, xx in READ:
        x[:, 0, y, xx] = 1.0
    return x


@pytest.mark.parametrize("metric", ["deletion", "insertion", "road"])
def test_the_true_map_beats_its_reverse_and_random_maps(reader_images, metric):
    true = np.zeros((12, 8, 8), np.float32)
    for y, x in READ:
        true[:, y, x] = 1.0
    true += 1e-3 * np.random.default_rng(0).random(true.shape).astype(np.float32)  # no ties
    good = faithfulness(Reader(), true, reader_images, metric=metric, target=0)
    bad = faithfulness(Reader(), -true, reader_images, metric=metric, target=0)
    sign = 1 if good.higher_is_better else -1
    assert sign * (good.score - bad.score) > 0.3
    assert sign * (good.score - good.baseline) > 0.1 and sign * (good.baseline - bad.score) > 0.05
    np.testing.assert_array_equal(good.random, bad.random)  # the same random maps (same seed)
    assert (good.target == 0).all() and good.original.min() > 0.99


def test_deletion_curve_matches_a_naive_loop(cnn, digits_test):
    ck = cnn
    images = digits_test.subset(3, seed=4)
    cam = ls.gradcam(ck, images)
    fa = faithfulness(ck, cam, metric="deletion", steps=16, seed=3)
    order_rng = np.random.default_rng(3)
    for i in range(3):
        ties = order_rng.random(64)
        order = np.lexsort((ties, -cam.maps[i].ravel().astype(np.float64)))
        expected = []
        for k in range(17):
            img = images.x[i].copy().reshape(1, 64)
            img[:, order[:round(k * 64 / 16)]] = 0.0
            with torch.no_grad():
                logits = ck.model(ck.normalize(torch.as_tensor(img.reshape(1, 1, 8, 8))))
            expected.append(torch.softmax(logits, 1)[0, cam.target[i]].item())
        np.testing.assert_allclose(fa.curves[i], expected, atol=1e-5)
    np.testing.assert_allclose(fa.x, np.arange(17) / 16, atol=1e-12)
    np.testing.assert_allclose(fa.scores, auc(fa.curves), atol=1e-12)
    np.testing.assert_allclose(fa.curves[:, 0], fa.original, atol=1e-6)


@pytest.fixture(scope="module")
def cnn_cam(cnn, digits_test):
    return ls.gradcam(cnn, digits_test.subset(24, seed=0))


@pytest.mark.parametrize("metric", ["deletion", "insertion", "road"])
def test_gradcam_of_the_shipped_cnn_beats_random_maps(cnn, cnn_cam, metric):
    fa = faithfulness(cnn, cnn_cam, metric=metric)
    sign = 1 if fa.higher_is_better else -1
    assert sign * (fa.score - fa.baseline) > 2 * np.hypot(fa.standard_error(), fa.standard_error(random=True))
    assert fa.meta["method"] == "gradcam" and fa.meta["layer"] == "body.relu3" and fa.meta["n_samples"] == 24
    if metric == "road":
        assert fa.curves.shape == fa.curves_lerf.shape == (24, 9) and fa.morf < fa.lerf
        np.testing.assert_allclose(fa.scores, ((fa.curves_lerf - fa.curves) / 2).mean(1), atol=1e-12)
        assert abs(fa.baseline) < 0.05  # a random map removes the same pixels first and last on average
        with pytest.raises(ArgumentError, match="no AUC"):
            fa.auc
    else:
        assert fa.auc == fa.score and fa.curves.shape == (24, 65)
        assert fa.meta["baseline"] == ("constant" if metric == "deletion" else "blur")


def test_same_seed_same_result_and_round_trip(cnn, cnn_cam, tmp_path):
    a = faithfulness(cnn, cnn_cam, metric="road", seed=5)
    b = faithfulness(cnn, cnn_cam, metric="road", seed=5)
    np.testing.assert_array_equal(a.curves, b.curves)
    c = faithfulness(cnn, cnn_cam, metric="road", seed=6)
    assert not np.array_equal(a.random, c.random)
    back = Faithfulness.load(a.save(tmp_path / "fa"))
    np.testing.assert_array_equal(back.curves_lerf, a.curves_lerf)
    assert back.metric == "road" and back.higher_is_better and back.meta == a.meta
    assert type(ls.Result.load(tmp_path / "fa.npz")) is Faithfulness


def test_baselines_and_guided_maps(cnn, cnn_cam, digits_test):
    blur = faithfulness(cnn, cnn_cam, metric="deletion", baseline="blur", blur_sigma=2.0, steps=8)
    const = faithfulness(cnn, cnn_cam, metric="insertion", baseline="constant", value=0.5, steps=8)
    assert blur.meta["blur_sigma"] == 2.0 and const.meta["value"] == 0.5
    assert not np.allclose(blur.curves[:, -1], const.curves[:, 0])
    guided = ls.gradcam(cnn, digits_test.subset(24, seed=0), method="guided-gradcam")
    fa = faithfulness(cnn, guided, metric="deletion", steps=8)
    assert fa.meta["method"] == "guided-gradcam"
    plain = faithfulness(cnn, np.abs(guided.guided).max(1), guided.images, metric="deletion", steps=8,
                         target=guided.target)
    np.testing.assert_allclose(plain.curves, fa.curves, atol=1e-7)


@pytest.mark.parametrize("kwargs, match", [
    ({"metric": "delete"}, "Did you mean 'deletion'"),
    ({"baseline": "noise"}, "baseline"),
    ({"steps": 65}, "steps must be"),
    ({"metric": "road", "percentiles": [0, 50]}, "percentiles must be"),
    ({"metric": "road", "percentiles": [100]}, "percentiles must be"),
    ({"metric": "road", "noise": -1}, "noise must be"),
    ({"images": np.zeros((24, 1, 8, 8), np.float32)}, "other images"),
])
def test_bad_arguments(cnn, cnn_cam, kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        faithfulness(cnn, cnn_cam, **kwargs)


def test_plain_maps_need_fitting_images(cnn, cnn_cam):
    with pytest.raises(ArgumentError, match="need their images"):
        faithfulness(cnn, cnn_cam.maps)
    with pytest.raises(ArgumentError, match="do not fit"):
        faithfulness(cnn, cnn_cam.maps[:, :4], cnn_cam.images)
