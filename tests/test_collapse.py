"""Neural collapse (issue 16): closed forms, an independent dense reference, invariances, streaming, snapshots."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import landscape as ls
from landscape.collapse import EXTRA, METRICS, class_statistics, collapse_curve, neural_collapse, snapshot_paths
from landscape.errors import ArgumentError
from tests.conftest import ZOO

SNAPSHOTS = ZOO / "snapshots"


# -- synthetic frames ---------------------------------------------------------------------------
def simplex_etf(c: int, d: int, radius: float, rng) -> np.ndarray:
    """``c`` centred rows of norm ``radius`` in R^d with pairwise cosines -1/(c-1), randomly rotated."""
    e = math.sqrt(c / (c - 1)) * (np.eye(c) - 1.0 / c)  # unit rows, cos = -1/(c-1)
    u, _ = np.linalg.qr(rng.standard_normal((d, c)))  # d x c, orthonormal columns
    return radius * e @ u.T


def orthonormal_noise(n: int, d: int, rng) -> np.ndarray:
    """``n x d`` noise with column sums exactly 0 and ``Z^T Z = n I`` (needs n > d)."""
    q, _ = np.linalg.qr(np.column_stack([np.ones(n), rng.standard_normal((n, d))]))
    return math.sqrt(n) * q[:, 1:]  # orthogonal to the ones vector, orthonormal columns


def reference_metrics(x: np.ndarray, y: np.ndarray, w: np.ndarray | None, pred: np.ndarray | None) -> dict:
    """The NC metrics computed densely and directly from their definitions (numpy, float64, pinv)."""
    x = x.astype(np.float64)
    labels = np.unique(y)
    c = len(labels)
    mu = np.stack([x[y == k].mean(0) for k in labels])
    mg = mu.mean(0)
    m = mu - mg
    sw = sum((x[y == k] - mu[i]).T @ (x[y == k] - mu[i]) for i, k in enumerate(labels)) / len(x)
    sb = m.T @ m / c
    out = {"trace_ratio": np.trace(sw @ np.linalg.pinv(sb, hermitian=True))}
    out["nc1"] = out["trace_ratio"] / c

    def frame(v, suffix):
        norms = np.linalg.norm(v, axis=1)
        cos = (v / norms[:, None]) @ (v / norms[:, None]).T
        off = cos[np.triu_indices(c, 1)]
        out["nc2_equinorm" + suffix] = norms.std(ddof=1) / norms.mean()
        out["nc2_equiangular" + suffix] = np.abs(off + 1 / (c - 1)).mean()
        out["nc2_max_angle_gap" + suffix] = np.degrees(np.arccos(-1 / (c - 1)) - np.arccos(np.clip(off, -1, 1)).min())
        out["nc2_cos_std" + suffix] = off.std(ddof=1)

    frame(m, "")
    if w is not None:
        frame(w[labels], "_w")
        wl = w[labels]
        out["nc3"] = np.linalg.norm(wl / np.linalg.norm(wl) - m / np.linalg.norm(m)) ** 2
    if pred is not None:
        ncc = labels[np.argmin(((x[:, None, :] - mu[None]) ** 2).sum(-1), axis=1)]
        out["nc4"] = np.mean(ncc != pred)
    return out


def _structured(rng, c=6, d=12, n=50):
    """Gaussian classes around random means, a random classifier and its predictions."""
    y = np.repeat(np.arange(c), n)
    means = rng.standard_normal((c, d)) * 2.0
    x = means[y] + rng.standard_normal((len(y), d)) * rng.uniform(0.5, 1.5, d)
    w = rng.standard_normal((c, d))
    b = rng.standard_normal(c)
    return x, y, w, b, (x @ w.T + b).argmax(1)


# -- the tests --------------------------------------------------------------------------
@pytest.mark.parametrize("c,d", [(2, 3), (5, 16), (10, 64)])
def test_simplex_etf_without_spread_gives_every_metric_zero(c, d):
    rng = np.random.default_rng(c)
    means = simplex_etf(c, d, radius=3.0, rng=rng) + 7.0 * rng.standard_normal(d)  # any centre
    counts = rng.integers(3, 9, size=c)  # unbalanced classes: the centre is the mean of the class means
    y = np.repeat(np.arange(c), counts)
    x = means[y]
    w = 2.5 * (means - means.mean(0))  # a self-dual classifier, scaled
    nc = neural_collapse((x, y, y), weights=w)
    for name in METRICS:
        assert abs(getattr(nc, name)) < 1e-6, (name, getattr(nc, name))
    assert nc.nc2_cos_std < 1e-6 and nc.nc2_cos_std_w < 1e-6 and nc.accuracy == 1.0
    # the test can fail: one mean pulled off the frame moves the metrics (two centred means are always an ETF)
    x2 = x.copy()
    x2[y == 0] += 0.3 * rng.standard_normal(d)
    broken = neural_collapse((x2, y, y), weights=w)
    assert broken.nc3 > 1e-4
    assert c == 2 or (broken.nc2_equinorm > 1e-3 and broken.nc2_equiangular > 1e-3 and broken.nc2_max_angle_gap > 0.1)


@pytest.mark.parametrize("c,d,sigma,radius", [(3, 4, 0.5, 1.0), (5, 16, 0.2, 3.0), (10, 30, 1.5, 2.0)])
def test_isotropic_noise_gives_nc1_in_closed_form(c, d, sigma, radius):
    """Features ``h = mu_c + sigma z`` around a simplex ETF of radius ``r`` (``||mu_c - mu_G|| = r``).

    Derivation. The centred means ``M`` (C x d) of a simplex ETF satisfy
    ``M M^T = r^2 C/(C-1) (I - 11^T/C)``, whose non-zero eigenvalues are ``r^2 C/(C-1)`` (C-1 times);
    ``M^T M`` has the same ones, so ``Sigma_B = M^T M / C = (r^2/(C-1)) P`` with ``P`` the projector onto
    the (C-1)-dimensional span of the means, and ``Sigma_B^+ = ((C-1)/r^2) P``. Isotropic noise of
    variance ``sigma^2`` per coordinate gives ``Sigma_W = sigma^2 I``. Hence
    ``tr(Sigma_W Sigma_B^+) = sigma^2 (C-1)/r^2 tr(P) = sigma^2 (C-1)^2 / r^2`` and

        nc1 = sigma^2 (C-1)^2 / (C r^2).

    The noise is built to have exactly zero mean and covariance ``sigma^2 I`` within each class
    (orthonormal columns orthogonal to the ones vector), so the sample statistics equal the
    population ones and the closed form holds to rounding.
    """
    rng = np.random.default_rng(1)
    means = simplex_etf(c, d, radius, rng) + rng.standard_normal(d)
    n = d + 5
    y = np.repeat(np.arange(c), n)
    x = means[y] + sigma * np.concatenate([orthonormal_noise(n, d, rng) for _ in range(c)])
    nc = neural_collapse((x, y))
    expected = sigma ** 2 * (c - 1) ** 2 / (c * radius ** 2)
    assert nc.nc1 == pytest.approx(expected, rel=1e-10, abs=1e-14)
    assert nc.trace_sw == pytest.approx(d * sigma ** 2, rel=1e-10)
    assert nc.trace_sb == pytest.approx(radius ** 2, rel=1e-10)  # (1/C) sum_c r^2 = (C-1) eigenvalues r^2/(C-1)
    # the means are still an exact ETF: the NC2 metrics stay at zero
    assert nc.nc2_equinorm < 1e-8 and nc.nc2_equiangular < 1e-8
    assert math.isnan(nc.nc3) and math.isnan(nc.nc2_equinorm_w) and math.isnan(nc.nc4)


def test_gaussian_noise_approaches_the_closed_form():
    """Random Gaussian noise instead of the exact construction: nc1 within sampling error of the closed form.

    With N = 20,000 samples the projected within-class variance on the (C-1) = 4 frame directions is
    estimated with relative sd ~ sqrt(2 / (N (C-1))) = 0.5 %; 3 % is six standard deviations.
    """
    rng = np.random.default_rng(2)
    c, d, sigma, radius = 5, 8, 0.4, 2.0
    y = np.repeat(np.arange(c), 4000)
    x = simplex_etf(c, d, radius, rng)[y] + sigma * rng.standard_normal((len(y), d))
    nc = neural_collapse((x, y))
    assert nc.nc1 == pytest.approx(sigma ** 2 * (c - 1) ** 2 / (c * radius ** 2), rel=0.03)


def test_every_metric_is_invariant_to_rotation_scaling_and_translation():
    rng = np.random.default_rng(3)
    x, y, w, b, pred = _structured(rng)
    base = neural_collapse((x, y, pred), weights=w)
    q, _ = np.linalg.qr(rng.standard_normal((x.shape[1], x.shape[1])))
    scale, shift = 37.5, rng.standard_normal(x.shape[1]) * 10
    moved = neural_collapse(((scale * x @ q.T) + shift, y, pred), weights=w @ q.T / scale)
    for name in (*METRICS, "nc2_cos_std", "nc2_cos_std_w"):
        assert getattr(moved, name) == pytest.approx(getattr(base, name), rel=1e-9, abs=1e-12), name
    # and the invariance is not trivial: a non-isotropic stretch changes them
    stretched = neural_collapse((x * np.linspace(0.2, 3.0, x.shape[1]), y, pred), weights=w)
    assert abs(stretched.nc1 - base.nc1) > 1e-2 and abs(stretched.nc3 - base.nc3) > 1e-3


def test_metrics_match_a_dense_reference_on_a_trained_model(mlp, digits_train):
    feat = ls.extract_features(mlp, digits_train)
    nc = neural_collapse(mlp, data=digits_train, batch_size=100)  # streamed in 15 batches
    ref = reference_metrics(feat.x, feat.y, mlp.model.head.weight.detach().double().numpy(), feat.pred)
    for name, want in ref.items():
        if name != "trace_ratio":
            assert getattr(nc, name) == pytest.approx(want, rel=1e-8, abs=1e-12), name
    # the normalisation: implementations without the 1/C report tr(Sigma_W Sigma_B^+) = C times nc1
    assert len(nc.labels) * nc.nc1 == pytest.approx(ref["trace_ratio"], rel=1e-8)
    assert nc.meta["weights"] == "head of mlp-ce" and nc.meta["predictions"] == "network"
    assert nc.meta["n_samples"] == len(digits_train) and nc.meta["epoch"] == 40
    assert nc.accuracy == pytest.approx(feat.accuracy, abs=0)
    # the same from the Features object, with the checkpoint as classifier
    again = neural_collapse(feat, weights=mlp)
    assert again.nc3 == pytest.approx(nc.nc3, rel=1e-12) and again.nc4 == nc.nc4


def test_class_statistics_stream_in_float64_without_cancellation():
    """A within-class spread 1e-9 of the mean (1e6 against 1e-3): E[hh^T] - mu mu^T would lose it entirely."""
    rng = np.random.default_rng(4)
    c, d = 3, 5
    y = rng.integers(0, c, size=997)
    x = 1e6 + rng.standard_normal((c, d))[y] * 10 + 1e-3 * rng.standard_normal((len(y), d))
    counts, means, scatter = class_statistics(x, y, c, batch_size=64)
    ref_means = np.stack([x[y == k].mean(0) for k in range(c)])
    ref = sum((x[y == k] - ref_means[k]).T @ (x[y == k] - ref_means[k]) for k in range(c))
    np.testing.assert_array_equal(counts, np.bincount(y, minlength=c))
    np.testing.assert_allclose(means, ref_means, rtol=1e-14, atol=0)
    np.testing.assert_allclose(scatter, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    naive = x.T @ x - sum(np.outer(m, m) * n for m, n in zip(ref_means, counts))
    assert np.abs(naive - ref).max() > 100 * np.abs(ref).max()  # the failure the update avoids


def test_batch_size_does_not_change_the_result():
    rng = np.random.default_rng(5)
    x, y, w, b, pred = _structured(rng, c=4, d=7, n=31)
    one = neural_collapse((x, y, pred), weights=(w, b), batch_size=10_000)
    many = neural_collapse((x, y, pred), weights=(w, b), batch_size=7)
    for name in (*METRICS, *EXTRA):
        assert getattr(many, name) == pytest.approx(getattr(one, name), rel=1e-11, abs=1e-13), name


def test_predictions_from_a_given_classifier_and_missing_classes():
    rng = np.random.default_rng(6)
    x, y, w, b, pred = _structured(rng, c=5, d=6, n=20)
    via_classifier = neural_collapse((x, y), weights=(w, b))  # no predictions: the classifier gives them
    assert via_classifier.meta["predictions"] == "linear classifier"
    assert via_classifier.nc4 == pytest.approx(reference_metrics(x, y, w, pred)["nc4"], abs=0)
    keep = y != 2  # a class with no samples is left out of every metric; labels keep their values
    nc = neural_collapse((x[keep], y[keep], pred[keep]), weights=w)
    assert nc.labels.tolist() == [0, 1, 3, 4] and nc.meta["n_classes"] == 4
    ref = reference_metrics(x[keep], y[keep], w, pred[keep])
    ref.pop("trace_ratio")
    for name, want in ref.items():
        assert getattr(nc, name) == pytest.approx(want, rel=1e-9, abs=1e-12), name


def test_user_mistakes_are_one_line_errors(mlp, digits_test):
    x, y = np.zeros((4, 3)), np.array([0, 0, 0, 0])
    with pytest.raises(ArgumentError, match="at least two classes"):
        neural_collapse((x, y))
    with pytest.raises(ArgumentError, match=r"do not fit features of dimension 3"):
        neural_collapse((np.eye(3), np.array([0, 1, 1])), weights=np.ones((2, 4)))
    with pytest.raises(ArgumentError, match="NaN or inf"):
        neural_collapse((np.full((4, 2), np.nan), np.array([0, 1, 0, 1])))
    with pytest.raises(ArgumentError, match="needs data="):
        neural_collapse(mlp)
    with pytest.raises(ArgumentError, match="labels must be"):
        neural_collapse((np.eye(3), np.array([0.0, 1.0, 1.0])))
    feat = ls.extract_features(mlp, digits_test)
    other = ls.load_checkpoint(ZOO / "mlp-mam-softmax.safetensors", device="cpu")
    with pytest.raises(ArgumentError, match="another checkpoint"):
        neural_collapse(feat, weights=other)
    with pytest.raises(ArgumentError, match="batch_size must be >= 1"):
        neural_collapse(feat, batch_size=0)


def test_another_layer_has_no_classifier_metrics_and_round_trips(mlp, digits_test, tmp_path):
    nc = neural_collapse(mlp, data=digits_test, layer="body.3")
    assert nc.meta["layer"] == "body.3" and nc.meta["dim"] == 128 and nc.meta["weights"] is None
    assert math.isnan(nc.nc3) and math.isnan(nc.nc2_equiangular_w) and 0 <= nc.nc4 <= 1
    back = ls.Result.load(nc.save(tmp_path / "nc"))
    assert type(back).__name__ == "NeuralCollapse" and math.isnan(back.nc3)
    assert back.nc1 == nc.nc1 and back.metrics().keys() == nc.metrics().keys()
    np.testing.assert_array_equal(back.class_means, nc.class_means)


# -- snapshots and the training side ------------------------------------------------------------
def test_shipped_snapshots_of_three_losses():
    for run, loss, epochs in (("mlp-ce", "ce", list(range(1, 41))),
                              ("mlp-mam-softmax", "mam-softmax", [1, *range(4, 41, 4)]),
                              ("mlp-am-softmax", "am-softmax", [1, *range(4, 41, 4)])):
        paths = snapshot_paths(SNAPSHOTS / run)
        assert [int(p.stem.removeprefix("epoch")) for p in paths] == epochs, run
        last = ls.load_checkpoint(paths[-1], device="cpu")
        assert last.meta["loss"] == loss and last.meta["epoch"] == 40 and last.meta["seed"] == 0
        # retrained with the zoo's recipe; within the last bits of the shipped final model's accuracy
        final = json.loads((ZOO / "manifest.json").read_text())
        row = next(r for r in final if r["name"] == run)
        assert last.meta["metrics"]["test_accuracy"] == pytest.approx(row["test_accuracy"], abs=0.01)
    size = sum(p.stat().st_size for run in ("mlp-mam-softmax", "mlp-am-softmax") for p in (SNAPSHOTS / run).iterdir())
    assert size < 3 * 2 ** 20


def test_collapse_curve_follows_the_snapshots_in_epoch_order(digits_train):
    data = digits_train.subset(300, seed=0)
    paths = snapshot_paths(SNAPSHOTS / "mlp-mam-softmax")[:4]
    curve = collapse_curve(list(reversed(paths)), data, name="mam", verbose=False)
    assert curve.epoch.tolist() == [1, 4, 8, 12] and curve.name == "mam" and len(curve) == 4
    assert curve.meta["snapshots"] == [p.name for p in paths] and curve.meta["n_samples"] == 300
    one = neural_collapse(ls.load_checkpoint(paths[2], device="cpu"), data=data)
    for name in (*METRICS, *EXTRA):
        assert curve.metrics[name][2] == pytest.approx(getattr(one, name), rel=1e-12, abs=1e-15), name
    # training collapses the features: NC1 and NC3 fall from epoch 1 to epoch 12
    assert curve.metrics["nc1"][-1] < 0.5 * curve.metrics["nc1"][0]
    assert curve.metrics["nc3"][-1] < curve.metrics["nc3"][0]
    with pytest.raises(ArgumentError, match="more than once"):
        collapse_curve([paths[0], paths[0]], data, verbose=False)
    with pytest.raises(ArgumentError, match="does not exist"):
        collapse_curve(SNAPSHOTS / "nope", data)


def test_build_zoo_keeps_every_kth_snapshot(tmp_path, monkeypatch):
    from landscape.train import Recipe, build_zoo

    monkeypatch.setattr("landscape.train.ZOO", [Recipe("tiny", "mlp", epochs=5, arch_kwargs={"hidden": [8]},
                                                       snapshots=True, snapshot_every=2)])
    rows = build_zoo(tmp_path, quiet=True)
    assert sorted(p.name for p in (tmp_path / "snapshots" / "tiny").iterdir()) == [
        "epoch001.safetensors", "epoch002.safetensors", "epoch004.safetensors", "epoch005.safetensors"]
    assert rows[0]["snapshots"] == 4


# -- figures, report kind and CLI ---------------------------------------------------------------
def test_curves_figure_plots_the_curve_values(digits_train):
    import viz

    data = digits_train.subset(200, seed=0)
    curves = [collapse_curve(snapshot_paths(SNAPSHOTS / run)[:3], data, name=run, verbose=False)
              for run in ("mlp-ce", "mlp-am-softmax")]
    plot = viz.collapse_curves(curves)
    try:
        assert set(plot.values["curves"]) == {"mlp-ce", "mlp-am-softmax"} and plot.values["log"] is True
        np.testing.assert_array_equal(plot.values["curves"]["mlp-ce"]["nc1"], curves[0].metrics["nc1"])
        assert plot.values["curves"]["mlp-am-softmax"]["epoch"].tolist() == [1, 4, 8]
        axes = plot.fig.axes
        assert axes[0].get_yscale() == "log" and axes[5].get_yscale() == "symlog"
        np.testing.assert_allclose(axes[0].lines[0].get_ydata(), curves[0].metrics["nc1"])
        assert "1/C" in plot.caption and "Papyan" in plot.caption
    finally:
        plot.close()


def test_collapse_command_writes_curves_and_table(tmp_path):
    from viz.cli import main

    out = tmp_path / "run"
    code = main(["collapse", str(SNAPSHOTS / "mlp-am-softmax"), str(ZOO / "mlp-ce.safetensors"), "--subset", "150",
                 "--out", str(out), "--quiet"])
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"mlp-am-softmax-collapse.npz", "mlp-ce-collapse.npz", "collapse.png",
                                               "collapse.json", "collapse.md"}
    curve = ls.Result.load(out / "mlp-am-softmax-collapse.npz")
    assert type(curve).__name__ == "CollapseCurve" and len(curve) == 11 and curve.meta["data"].startswith("digits")
    assert "| mlp-ce | 40 |" in (out / "collapse.md").read_text()
    assert main(["collapse", str(tmp_path / "missing"), "--out", str(out), "--quiet"]) == 2


@pytest.mark.gpu
def test_cuda_matches_cpu(mlp, digits_train):
    cpu = neural_collapse(mlp, data=digits_train)
    gpu = neural_collapse(ls.load_checkpoint(ZOO / "mlp-ce.safetensors", device="cuda"), data=digits_train)
    for name in (*METRICS, *EXTRA):
        assert getattr(gpu, name) == pytest.approx(getattr(cpu, name), rel=1e-4, abs=1e-6), name
    rng = np.random.default_rng(7)
    x, y, w, b, pred = _structured(rng)
    a = neural_collapse((x, y, pred), weights=w, device="cpu")
    g = neural_collapse((x, y, pred), weights=w, device="cuda")
    for name in (*METRICS, *EXTRA):
        assert getattr(g, name) == pytest.approx(getattr(a, name), rel=1e-10, abs=1e-12), name
    assert torch.cuda.is_available()
