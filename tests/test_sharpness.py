"""Sharpness measures against closed forms on a quadratic, reparametrisation, ordering and no leaks (issue 15).

The quadratic: a linear model ``W x`` (no bias) with the squared loss ``1/(2n) sum_i ||W x_i - t_i||^2``
to one-hot targets, at its least-squares minimiser ``W*``. Its Hessian is ``I_C (x) X^T X / n``,
diagonal because the inputs have orthogonal columns, so that with ``h_j = (X^T X / n)_jj``:

* epsilon-sharpness: ``100 * 1/2 sum h_j b_cj^2 / (1 + f*)`` with ``b = eps (|W*| + 1)`` (the max of
  a convex diagonal quadratic over a box is at a vertex);
* average sharpness: ``E 1/2 delta^T H delta`` = ``rho^2/2 sum h_j c_cj^2`` (Gaussian),
  ``rho^2/6 ...`` (uniform in the box);
* worst-case L-infinity sharpness (one batch, gradient zero at ``W*``): ``rho^2/2 sum h_j c_cj^2``;
* flatness radius along ``d``: ``sqrt(2 delta / d^T H d)``;
* Hessian: eigenvalues ``h_j`` (each ``C`` times), trace ``C sum h_j``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import landscape as ls
from landscape.errors import ArgumentError
from landscape.sharpness import apgd_checkpoints, sharpness

N, D, C = 512, 6, 3


class SquaredLoss(nn.Module):
    """Half the squared distance of the logits to one-hot targets, averaged over samples."""

    def forward(self, logits, y):
        t = torch.nn.functional.one_hot(y, logits.shape[1]).to(logits.dtype)
        return 0.5 * ((logits - t) ** 2).sum(1).mean()


@pytest.fixture(scope="module")
def quadratic():
    """(model at W*, dataset, h) with diagonal Hessian blocks diag(h)."""
    gen = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(N, D, generator=gen, dtype=torch.float64))
    scales = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0, 4.0], dtype=torch.float64)
    x = (q * N ** 0.5 * scales).numpy()
    y = np.arange(N) % C
    data = ls.data.as_dataset((x, y))
    X = torch.as_tensor(data.x, dtype=torch.float64).reshape(N, D)  # as stored (float32 values)
    T = torch.nn.functional.one_hot(torch.as_tensor(data.y), C).double()
    model = nn.Linear(D, C, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(X, T).solution.T)
    H = X.T @ X / N
    return model, data, H


def f_star(model, data):
    X = torch.as_tensor(data.x, dtype=torch.float64).reshape(N, D)
    T = torch.nn.functional.one_hot(torch.as_tensor(data.y), C).double()
    with torch.no_grad():
        return float(0.5 * ((X @ model.weight.T - T) ** 2).sum(1).mean())


def quad_form(H, c):
    """sum_{c,j} H_jj c_cj^2 for a (C, D) array."""
    return float((torch.diagonal(H) * torch.as_tensor(c) ** 2).sum())


def measure(model, data, name, **kw):
    return sharpness(model, data, name, criterion=SquaredLoss(), subset=None, verbose=False, **kw)


def test_epsilon_closed_form(quadratic):
    model, data, H = quadratic
    w = model.weight.detach()
    for eps in (1e-3, 1e-2):
        b = eps * (w.abs() + 1)
        f0 = f_star(model, data)
        expected = 100 * 0.5 * quad_form(H, b) / (1 + f0)
        got = measure(model, data, "epsilon", eps=eps)
        assert got.value == pytest.approx(expected, rel=1e-4)
        assert got.details["loss"] == pytest.approx(f0, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("noise, factor", [("gaussian", 1 / 2), ("uniform", 1 / 6)])
def test_average_closed_form(quadratic, noise, factor):
    model, data, H = quadratic
    rho = 0.05
    for adaptive in (True, False):
        c = model.weight.detach().abs() if adaptive else torch.ones(C, D, dtype=torch.float64)
        expected = factor * rho ** 2 * quad_form(H, c)
        # one batch, where the gradient is zero: batches of 128 have the same mean Hessian, but their gradients
        # add a linear term whose Monte Carlo noise is 1/rho times larger than the quadratic form
        got = measure(model, data, "adaptive-average", rho=rho, adaptive=adaptive, noise=noise, n_noise=400,
                      batch_size=N)
        assert got.value == pytest.approx(expected, rel=0.05)


def test_worst_linf_closed_form_and_l2_bound(quadratic):
    model, data, H = quadratic
    rho = 0.05
    c = model.weight.detach().abs()
    got = measure(model, data, "adaptive-worst", rho=rho, batch_size=N)  # one batch: zero gradient at W*
    assert got.value == pytest.approx(0.5 * rho ** 2 * quad_form(H, c), rel=1e-5)
    # L2 ellipsoid: the max is rho^2/2 times the largest h_j c_cj^2; Auto-PGD reaches most of it
    top = 0.5 * rho ** 2 * float((torch.diagonal(H) * c ** 2).max())
    l2 = measure(model, data, "adaptive-worst", rho=rho, norm="l2", batch_size=N)
    assert 0.9 * top <= l2.value <= top * (1 + 1e-9)


def test_flatness_radius_closed_form(quadratic):
    model, data, H = quadratic
    f0 = f_star(model, data)
    got = measure(model, data, "flatness-radius", n_directions=4, steps=40, seed=5)
    dirs = ls.random_directions(model, n=4, seed=5)
    curv = np.array([float(torch.as_tensor(dirs.vectors[i]).double().reshape(C, D).pow(2).mul(
        torch.diagonal(H)).sum()) for i in range(4)])  # d^T H d for diagonal H
    np.testing.assert_allclose(got.samples, np.sqrt(2 * 0.1 * f0 / curv), rtol=1e-6)
    assert got.value == pytest.approx(got.samples.mean(), rel=1e-12)
    assert got.details["delta"] == pytest.approx(0.1 * f0, rel=1e-9)


def test_hessian_measure(quadratic):
    model, data, H = quadratic
    got = measure(model, data, "hessian", n_probes=10)
    h = torch.diagonal(H)
    assert got.value == pytest.approx(float(h.max()), rel=1e-6)
    assert got.details["lam_min"] == pytest.approx(float(h.min()), rel=1e-6)
    assert got.details["ratio"] == pytest.approx(float(h.min() / h.max()), rel=1e-6)
    assert got.details["trace"] == pytest.approx(C * float(h.sum()), rel=1e-6)  # Rademacher: exact on a diagonal


def test_apgd_checkpoints():
    # p: 0, .22, .41, .57, .70, .80, .87, .93, .99 (Croce & Hein 2020, Sec. 3.2), times 20, rounded up
    assert apgd_checkpoints(20) == [5, 9, 12, 14, 16, 18, 19, 20]
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


# -- reparametrisation (Dinh et al. 2017) ------------------------------------------------------------
def _relu_net(alpha: float = 1.0) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10)).double()
    with torch.no_grad():
        net[1].weight.mul_(alpha)
        net[1].bias.mul_(alpha)
        net[3].weight.div_(alpha)
    return net


@pytest.mark.parametrize("name, kw", [("adaptive-average", {"n_noise": 3}), ("adaptive-worst", {"n_iter": 5})])
def test_reparametrisation(digits_train, name, kw):
    a, b = _relu_net(), _relu_net(0.1)
    x = torch.as_tensor(digits_train.x[:32]).double()
    torch.testing.assert_close(a(x), b(x), rtol=1e-10, atol=1e-10)  # the same function
    opts = dict(subset=256, seed=1, verbose=False, **kw)
    same = [sharpness(m, digits_train, name, rho=0.05, **opts).value for m in (a, b)]
    assert same[1] == pytest.approx(same[0], rel=1e-7)
    plain = [sharpness(m, digits_train, name, rho=0.01 if name == "adaptive-average" else 1e-3, adaptive=False,
                       **opts).value for m in (a, b)]
    assert abs(plain[1] - plain[0]) > 0.2 * abs(plain[0])


# -- ordering and radius -------------------------------------------------------------------------------
def test_worst_at_least_average(mlp, digits_train):
    for rho in (1e-3, 1e-2):
        avg = sharpness(mlp, digits_train, "adaptive-average", rho=rho, noise="uniform", n_noise=4, subset=512,
                        verbose=False)
        worst = sharpness(mlp, digits_train, "adaptive-worst", rho=rho, n_iter=5, subset=512, verbose=False)
        assert worst.value >= avg.value > 0
        assert np.all(worst.samples >= avg.samples)  # batch by batch


@pytest.mark.parametrize("name, key, radii, grows", [
    ("epsilon", "eps", (1e-4, 1e-3, 1e-2), True),
    ("adaptive-average", "rho", (0.02, 0.1, 0.3), True),
    ("adaptive-worst", "rho", (1e-4, 1e-3, 1e-2), True),
    ("flatness-radius", "relative", (0.05, 0.2, 1.0), True),
    ("pac-bayes", "target", (0.05, 0.1, 0.3), False),  # more noise allowed: larger sigma*, smaller 1/sigma*^2
])
def test_monotone_in_radius(mlp, digits_train, name, key, radii, grows):
    fast = {"adaptive-average": {"n_noise": 3}, "adaptive-worst": {"n_iter": 5}, "pac-bayes": {"repeats": 1},
            "flatness-radius": {"n_directions": 3}}.get(name, {})
    values = [sharpness(mlp, digits_train, name, subset=512, verbose=False, **{key: r}, **fast).value for r in radii]
    assert np.all(np.diff(values) > 0) if grows else np.all(np.diff(values) < 0), values


# -- the checkpoint is never touched; seeds --------------------------------------------------------------
@pytest.mark.parametrize("bn", ["eval", "recompute"])
def test_no_leak(cnn, digits_train, bn):
    cnn.model.train()  # a mode of the caller's own is restored too
    before = {k: v.clone() for k, v in cnn.model.state_dict().items()}
    fast = {"hessian": {"n_probes": 3, "max_iter": 15}, "epsilon": {"max_iter": 2},
            "adaptive-average": {"n_noise": 1}, "adaptive-worst": {"n_iter": 2},
            "pac-bayes": {"repeats": 1, "steps": 2, "n_noise": 1}, "flatness-radius": {"n_directions": 1, "steps": 2}}
    try:
        for name, kw in fast.items():
            sharpness(cnn, digits_train, name, subset=256, bn=bn, bn_subset=256, verbose=False, **kw)
            after = cnn.model.state_dict()
            assert all(torch.equal(before[k], after[k]) for k in before), name
            assert cnn.model.training
    finally:
        cnn.model.eval()


def test_recompute_changes_the_value(cnn, digits_train):
    kw = dict(subset=256, rho=0.3, n_noise=2, verbose=False)
    a = sharpness(cnn, digits_train, "adaptive-average", bn="eval", **kw)
    b = sharpness(cnn, digits_train, "adaptive-average", bn="recompute", bn_subset=256, **kw)
    assert a.meta["bn"] == "eval" and b.meta["bn"] == "recompute" and b.meta["bn_subset"] == 256
    assert abs(a.value - b.value) > 1e-4 * abs(a.value)


def test_seeded_and_saved(mlp, digits_train, tmp_path):
    kw = dict(subset=256, n_noise=2, verbose=False)
    a = sharpness(mlp, digits_train, "adaptive-average", seed=3, **kw)
    b = sharpness(mlp, digits_train, "adaptive-average", seed=3, **kw)
    c = sharpness(mlp, digits_train, "adaptive-average", seed=4, **kw)
    assert a.value == b.value and np.array_equal(a.interval, b.interval)
    assert a.value != c.value
    back = ls.Result.load(a.save(tmp_path / "s.npz"))
    assert type(back).__name__ == "Sharpness" and back.value == a.value
    np.testing.assert_array_equal(back.interval, a.interval)
    assert back.meta["rho"] == 0.1 and back.meta["n_samples"] == 256 and back.meta["digest"] == mlp.digest


def test_errors(mlp, digits_train):
    with pytest.raises(ArgumentError, match="measure"):
        sharpness(mlp, digits_train, "sharp")
    with pytest.raises(ArgumentError, match="'radius' is not an option of measure 'epsilon'"):
        sharpness(mlp, digits_train, "epsilon", radius=1)
    with pytest.raises(ArgumentError, match="rho"):
        sharpness(mlp, digits_train, "adaptive-worst", rho=-1)
    with pytest.raises(ArgumentError, match="norm"):
        sharpness(mlp, digits_train, "adaptive-worst", norm="l1")


def test_pac_bayes_sigma_is_a_standard_deviation():
    """A linear two-class model on unit-norm inputs: with W + u, u ~ N(0, sigma^2 I), sample i stays correct with
    probability Phi(m_i / (sigma sqrt 2)) (m_i its margin), so the expected accuracy drop at sigma* is known."""
    from scipy.special import ndtr

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 2))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = (x[:, 0] > 0).astype(np.int64)
    model = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-0.5, 0.0], [0.5, 0.0]]))
    margins = np.abs(x[:, 0])  # (w_1 - w_0) . x = x_0, signed towards the label
    got = sharpness(model, (x, y), "pac-bayes", subset=None, repeats=2, n_noise=10, verbose=False)
    assert got.details["accuracy"] == 1.0
    for inverse in got.samples:
        sigma = inverse ** -0.5
        drop = 1 - ndtr(margins / (sigma * 2 ** 0.5)).mean()
        assert drop == pytest.approx(0.1, abs=0.03)  # tol 0.01 plus the Monte Carlo error of 10 draws
    assert got.value == pytest.approx(got.samples.mean(), rel=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["adaptive-average", "adaptive-worst", "flatness-radius"])
def test_cuda_matches_cpu(zoo_path, digits_train, name):
    """The noise and the directions are drawn on the CPU, so both devices evaluate the same points."""
    cpu = ls.load_checkpoint(zoo_path("mlp-ce"), device="cpu")
    gpu = ls.load_checkpoint(zoo_path("mlp-ce"), device="cuda")
    a, b = (sharpness(ck, digits_train, name, subset=256, verbose=False) for ck in (cpu, gpu))
    assert b.value == pytest.approx(a.value, rel=1e-3, abs=1e-7)
