"""The loss library against hand-computed numbers and independent references (math, scipy, torch.nn)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special as sp
from torch.nn import functional as F

import landscape as ls
from landscape.errors import LossError
from landscape.losses import margin as margin_mod

L = ls.losses
EPS = 1e-7
CLASSICAL = ["ce", "hinge", "l-softmax", "a-softmax", "am-softmax", "sm-softmax", "mam-softmax", "sce", "focal", "adma"]
EVOLVED = ["b0", "b1", "b2", "c0", "c1", "c2", "m0", "m1", "m2", "r0", "r1", "r2", "a0", "a1", "a2"]


def call(loss, logits, target, features=None, weight=None):
    return loss(logits, target, features, weight) if loss.needs_features else loss(logits, target)


# -- registry, names, specs ----------------------------------------------------------------
def test_every_seed_loss_is_registered_under_its_canonical_name():
    assert set(CLASSICAL + EVOLVED) == set(L.names())


@pytest.mark.parametrize("alias, canonical", [("CE", "ce"), ("cross-entropy", "ce"), ("Cross_Entropy", "ce"),
                                              ("A2", "a2"), ("L-Softmax", "l-softmax"), ("sphereface", "a-softmax"),
                                              ("AM_Softmax", "am-softmax"), ("MAM-SoftMax", "mam-softmax"),
                                              ("svm", "hinge")])
def test_names_are_case_insensitive_with_aliases(alias, canonical):
    assert L.canonical(alias) == canonical
    assert type(L.get(alias)) is type(L.get(canonical))


def test_unknown_name_lists_what_exists():
    with pytest.raises(LossError, match=r"unknown loss 'focla'.*Did you mean 'focal'.*Available: a-softmax"):
        L.get("focla")


@pytest.mark.parametrize("spec, match", [("ce(foo=1)", "no parameter 'foo'; it takes: label_smoothing, eps"),
                                         ("l-softmax(m=2.5)", "must be an integer"), ("adma(a=-1)", "a must be >= 0"),
                                         ("am-softmax(s=0)", "s > 0"), ("0.5*ce +", "cannot read loss spec"),
                                         ("0.5*ce - hinge", r"joined with '\+'"), ("ce(4)", "key=value")])
def test_bad_parameters_and_specs_say_what_is_wrong(spec, match):
    with pytest.raises(LossError, match=match):
        L.build(spec)


def test_parse_spec_reads_the_seed_000_combination():
    assert L.parse_spec("0.25*hinge + 0.65*l-softmax(m=4) + 0.34*a-softmax(m=4)") == [
        (0.25, "hinge", {}), (0.65, "l-softmax", {"m": 4}), (0.34, "a-softmax", {"m": 4})]
    assert L.parse_spec("1e-1*ce+focal(gamma=0.5, alpha=2)") == [
        (0.1, "ce", {}), (None, "focal", {"gamma": 0.5, "alpha": 2})]


def test_build_of_a_single_name_merges_parameters_and_round_trips_its_spec():
    loss = L.build("am-softmax(m=0.2)", s=10)
    assert (loss.m, loss.s) == (0.2, 10)
    assert L.build(loss.spec).s == 10


def test_combined_spec_equals_the_weighted_sum_of_its_parts():
    g = torch.Generator().manual_seed(0)
    z, f, w = torch.randn(6, 4, generator=g), torch.randn(6, 5, generator=g), torch.randn(4, 5, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    combo = L.build("0.25*hinge + 0.65*l-softmax(m=4) + 0.34*a-softmax(m=4)")
    assert combo.needs_features
    expected = (0.25 * L.get("hinge")(z, y) + 0.65 * L.get("l-softmax", m=4)(z, y, f, w)
                + 0.34 * L.get("a-softmax", m=4)(z, y, f, w))
    torch.testing.assert_close(combo(z, y, f, w), expected)
    with pytest.raises(LossError, match="extra parameters"):
        L.build("0.5*ce + 0.5*hinge", m=3)


# -- classical losses: hand-computed values ------------------------------------------------
# logits (0, ln 3) give p = (1/4, 3/4): every value below follows by hand from that.
Z2 = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
Y1 = torch.tensor([1])


def test_cross_entropy_hand_value_and_torch_reference():
    assert float(L.get("ce")(Z2, Y1)) == pytest.approx(math.log(4 / 3), rel=1e-12)
    z = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 5
    torch.testing.assert_close(L.get("CE", label_smoothing=0.1)(z, y), F.cross_entropy(z, y, label_smoothing=0.1))


def test_hinge_hand_value_and_torch_multi_margin_reference():
    z = torch.tensor([[1.0, 2.0, 0.5], [3.0, 0.0, 0.0]])
    # row 0: max(0, 2-1+1) + max(0, 0.5-1+1) = 2.5 ; row 1: both terms max(0, -3+1) = 0
    assert float(L.get("hinge")(z, torch.tensor([0, 0]))) == pytest.approx(1.25)
    zr = torch.randn(7, 4, generator=torch.Generator().manual_seed(2))
    yr = torch.tensor([0, 1, 2, 3, 3, 2, 1])
    # torch's multi_margin_loss divides the sum over j != y by C
    torch.testing.assert_close(L.get("hinge", delta=0.7)(zr, yr), 4 * F.multi_margin_loss(zr, yr, margin=0.7))


def test_focal_hand_value_and_gamma_zero_is_scaled_ce():
    assert float(L.get("focal")(Z2, Y1)) == pytest.approx(0.25 ** 2 * math.log(4 / 3), rel=1e-12)
    assert float(L.get("focal", alpha=0.5, gamma=0)(Z2, Y1)) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)


def test_sce_hand_value():
    # y = (0, 1), p = (1/4, 3/4): alpha = mean(1/16, 1/16), weight = |(1, 0) - p| = 3/4 sqrt 2
    ce = math.log(4 / 3)
    expected = 0.5 * ce + 0.5 * (1 / 16) * (0.75 * math.sqrt(2)) * ce
    assert float(L.get("sce")(Z2, Y1)) == pytest.approx(expected, rel=1e-12)
    assert float(L.get("sce", alpha_over="sample")(Z2, Y1)) == pytest.approx(expected, rel=1e-12)


def test_sce_sign_and_scale_of_the_alpha_term():
    ce, alpha, weight = math.log(4 / 3), 1 / 16, 0.75 * math.sqrt(2)
    # eq. 4.5 as printed, alpha (weight * log p_y): the proposed term enters with the opposite sign
    assert float(L.get("sce", literal=True)(Z2, Y1)) == pytest.approx(0.5 * ce - 0.5 * alpha * weight * ce, rel=1e-12)
    # eq. 4.3 as a squared norm over the classes: alpha = 1/16 + 1/16
    assert float(L.get("sce", alpha_classes="sum")(Z2, Y1)) == pytest.approx(
        0.5 * ce + 0.5 * (2 * alpha) * weight * ce, rel=1e-12)
    assert float(L.get("sce")(Z2, Y1)) == pytest.approx(0.5 * ce + 0.5 * alpha * weight * ce, rel=1e-12)
    with pytest.raises(LossError, match="alpha_classes"):
        L.get("sce", alpha_classes="max")


def test_adma_at_a_zero_is_the_constant_zero_loss_and_warns():
    z = torch.tensor([[0.0, math.log(3.0)], [2.0, -1.0]], dtype=torch.float64, requires_grad=True)
    with pytest.warns(UserWarning, match="a = 0 is the constant loss 0"):
        loss = L.get("adma", a=0)
    value = loss(z, torch.tensor([1, 0]))
    value.backward()
    assert float(value.detach()) == 0.0 and float(z.grad.abs().max()) == 0.0
    # the limit a -> 0+ for p > 0
    near = float(L.get("adma", a=1e-6)(z.detach(), torch.tensor([1, 0])))
    assert 0 < near < 1e-5


def test_sce_alpha_is_a_batch_mean_by_default():
    z = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([1, 0])
    p = torch.softmax(z, 1)
    onehot = F.one_hot(y, 2).double()
    alpha = float(((onehot - p) ** 2).mean())  # over batch and classes
    ce = -torch.log(p[torch.arange(2), y])
    weight = torch.linalg.vector_norm(1 - onehot - p, dim=1)
    expected = float((0.5 * ce + 0.5 * alpha * weight * ce).mean())
    assert float(L.get("sce")(z, y)) == pytest.approx(expected, rel=1e-12)


def test_adma_hand_value():
    assert float(L.get("adma")(Z2, Y1)) == pytest.approx(math.e - math.exp(0.75 ** 0.25), rel=1e-12)
    assert float(L.get("adma", a=0.5)(Z2, Y1)) == pytest.approx(math.e - math.exp(math.sqrt(0.75)), rel=1e-12)


def _adma_curve(a: float) -> np.ndarray:
    p = torch.linspace(0, 1, 2001, dtype=torch.float64)
    return L.get("adma", a=a).elementwise(torch.ones_like(p), p).numpy()


@pytest.mark.parametrize("a", [0.1, 0.25, 0.5, 0.8])
def test_adma_range_is_zero_to_e_minus_one_and_decreasing(a):
    v = _adma_curve(a)
    assert v[0] == pytest.approx(math.e - 1) and v[-1] == pytest.approx(0.0, abs=1e-15)
    assert v.min() >= 0 and v.max() <= math.e - 1
    assert np.all(np.diff(v) < 0)


@pytest.mark.parametrize("a, convex", [(0.1, True), (0.25, True), (0.5, True), (0.55, False), (0.8, False)])
def test_adma_is_convex_in_p_exactly_when_a_at_most_half(a, convex):
    second = np.diff(_adma_curve(a), 2)
    assert bool(np.all(second >= -1e-12)) is convex


# -- margin losses ------------------------------------------------------------------------
def test_sm_softmax_hand_value_and_zero_margin_is_ce():
    # target logit ln 3 - ln 3 = 0 against 0: loss ln 2
    assert float(L.get("sm-softmax", m=math.log(3))(Z2, Y1)) == pytest.approx(math.log(2), rel=1e-12)
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 0, 1])
    torch.testing.assert_close(L.get("sm-softmax", m=0)(z, y), F.cross_entropy(z, y))
    assert L.get("sm-softmax", m=0.5)(z, y) > F.cross_entropy(z, y)


def test_mam_softmax_hand_value():
    z = torch.tensor([[0.0, 9.8], [1.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([1, 0])
    # M_u = 9.8 + 0.2 = 10 -> M = log10(10) = 1 ; mean(z) = 3.2 -> every target logit drops by 4.2
    assert float(margin_mod.mam_margin(z)) == pytest.approx(4.2)
    row0 = -math.log(math.exp(9.8 - 4.2) / (1 + math.exp(9.8 - 4.2)))
    row1 = -math.log(math.exp(1 - 4.2) / (math.exp(1 - 4.2) + math.exp(2)))
    assert float(L.get("mam-softmax")(z, y)) == pytest.approx((row0 + row1) / 2, rel=1e-12)


def test_mam_margin_carries_no_gradient():
    z = torch.tensor([[0.0, 9.8], [1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1, 0])
    L.get("mam-softmax")(z, y).backward()
    fixed = z.detach().clone().requires_grad_(True)
    F.cross_entropy(fixed - 4.2 * F.one_hot(y, 2), y).backward()  # the same margin as a constant
    torch.testing.assert_close(z.grad, fixed.grad)


@pytest.mark.parametrize("top, margin", [(0.3, 0.0), (99.8, 2.0), (1e9, 4.0)])
def test_mam_margin_is_clipped_log10_of_the_batch_maximum(top, margin):
    z = torch.tensor([[top, -top]], dtype=torch.float64)  # mean 0
    assert float(margin_mod.mam_margin(z)) == pytest.approx(margin)


@pytest.mark.parametrize("m, theta, expected", [(1, 1.0, math.cos(1.0)), (2, math.pi / 3, -0.5),
                                                (2, 2 * math.pi / 3, 0.5 - 2), (4, math.pi / 2, 1 - 4),
                                                (3, math.pi, -1 - 4), (4, 0.0, 1.0)])
def test_l_softmax_psi_hand_values(m, theta, expected):
    cos = torch.tensor([math.cos(theta)], dtype=torch.float64)
    assert float(margin_mod.psi(cos, m)) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_psi_is_continuous_decreasing_and_below_cos(m):
    theta = torch.linspace(0, math.pi, 4001, dtype=torch.float64)
    values = margin_mod.psi(torch.cos(theta), m)
    assert torch.all(values[1:] < values[:-1])
    assert float(torch.diff(values).abs().max()) < 0.02  # no jumps at k pi / m
    assert torch.all(values <= torch.cos(theta) + 1e-12)


def _features(seed=4, n=6, d=5, c=4):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    return f, w, torch.arange(n) % c


def test_l_softmax_with_m_one_is_ce_on_w_f_and_a_softmax_on_unit_weights():
    f, w, y = _features()
    logits = f @ w.T
    torch.testing.assert_close(L.get("l-softmax", m=1)(logits, y, f, w), F.cross_entropy(logits, y))
    unit = w / w.norm(dim=1, keepdim=True)
    torch.testing.assert_close(L.get("a-softmax", m=1)(logits, y, f, w), F.cross_entropy(f @ unit.T, y))


@pytest.mark.parametrize("name, params", [("l-softmax", {"m": 2}), ("l-softmax", {"m": 4}), ("a-softmax", {"m": 3}),
                                          ("am-softmax", {"m": 0.35, "s": 1.0})])
def test_margins_lower_only_the_target_logit(name, params):
    f, w, y = _features()
    loss = L.get(name, **params)
    zero = L.get(name, **{**params, "m": 1 if "softmax" in name and name != "am-softmax" else 0})
    with_margin, without = loss.margin_logits(f, w, y), zero.margin_logits(f, w, y)
    target = F.one_hot(y, 4).bool()
    assert torch.all(with_margin[target] < without[target])
    torch.testing.assert_close(with_margin[~target], without[~target])
    assert loss(f @ w.T, y, f, w) > zero(f @ w.T, y, f, w)


def test_am_softmax_hand_value_and_zero_margin_is_ce_on_scaled_cosines():
    f = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    w = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)  # cos = (1, 0)
    y = torch.tensor([0])
    # target s (1 - m) = 30 * 0.65 = 19.5 against 0
    expected = math.log1p(math.exp(-19.5))
    assert float(L.get("am-softmax")(f @ w.T, y, f, w)) == pytest.approx(expected, rel=1e-9)
    fr, wr, yr = _features(5)
    cos = F.normalize(fr) @ F.normalize(wr).T
    torch.testing.assert_close(L.get("am-softmax", m=0, s=7)(fr @ wr.T, yr, fr, wr), F.cross_entropy(7 * cos, yr))


def test_a_softmax_literal_is_cos_m_theta_and_agrees_with_psi_only_below_pi_over_m():
    # two samples of class 0 against unit weights at angle 30 and 80 degrees: pi / 4 = 45 degrees lies between
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    angles = torch.tensor([math.radians(30), math.radians(80)], dtype=torch.float64)
    f = 2.0 * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    y = torch.tensor([0, 0])
    literal = L.get("a-softmax", m=4, literal=True).margin_logits(f, w, y)
    monotone = L.get("a-softmax", m=4).margin_logits(f, w, y)
    torch.testing.assert_close(literal[:, 0], 2.0 * torch.cos(4 * angles))  # |x| cos(m theta_y)
    torch.testing.assert_close(literal[0], monotone[0])                    # theta = 30 < 45: the same
    # theta = 80 > 45: cos(320 deg) = 0.77 against psi = -cos(320 deg) - 2 = -2.77
    assert float(literal[1, 0]) == pytest.approx(2 * math.cos(math.radians(320)))
    assert float(monotone[1, 0]) == pytest.approx(2 * (-math.cos(math.radians(320)) - 2))
    torch.testing.assert_close(literal[:, 1], monotone[:, 1])
    fr, wr, yr = _features(9)
    a, b = L.get("a-softmax", m=4, literal=True), L.get("a-softmax", m=4)
    assert float(a(fr @ wr.T, yr, fr, wr)) < float(b(fr @ wr.T, yr, fr, wr))  # cos(m theta) >= psi everywhere


@pytest.mark.parametrize("options, shift", [
    ({}, 1.0 + 3.2),                                         # eq. 4.14 order, Fig. 4.1's log10, batch
    ({"log_base": "e"}, math.log(10.0) + 3.2),              # eq. 4.14's log read as ln
    ({"order": "clip-log"}, math.log10(4.0) + 3.2),         # Fig. 4.1: clip M_u to [0, 4], then log10
    ({"scope": "sample"}, [math.log10(10.0) + 4.9, math.log10(2.2) + 1.5]),  # per-sample max and mean
])
def test_mam_margin_readings_of_eq_4_14_against_figure_4_1(options, shift):
    z = torch.tensor([[0.0, 9.8], [1.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([1, 0])
    got = margin_mod.mam_margin(z, **options)
    np.testing.assert_allclose(np.atleast_1d(got.numpy()), np.atleast_1d(shift), rtol=1e-12)
    shifts = np.broadcast_to(np.asarray(shift, dtype=float), (2,))
    rows = [-math.log(math.exp(9.8 - shifts[0]) / (1 + math.exp(9.8 - shifts[0]))),
            -math.log(math.exp(1 - shifts[1]) / (math.exp(1 - shifts[1]) + math.exp(2)))]
    assert float(L.get("mam-softmax", **options)(z, y)) == pytest.approx(sum(rows) / 2, rel=1e-12)


def test_mam_margin_below_one_is_no_margin_in_both_orders():
    z = torch.tensor([[0.3, -0.3]], dtype=torch.float64)  # M_u = 0.5: log10 0.5 < 0
    assert float(margin_mod.mam_margin(z)) == 0.0
    assert float(margin_mod.mam_margin(z, order="clip-log")) == 0.0


def test_margin_losses_explain_missing_features():
    with pytest.raises(LossError, match="loss_and_logits"):
        L.get("am-softmax")(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_margin_loss_trains_through_the_objective_on_a_zoo_model():
    from landscape.objective import loss_and_logits

    torch.manual_seed(0)
    model = ls.models.build("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(16, 8), head_bias=False)
    x, y = torch.randn(12, 1, 8, 8), torch.arange(12) % 10
    loss, logits = loss_and_logits(model, L.build("0.5*ce + 0.5*l-softmax(m=2)"), x, y)
    loss.backward()
    assert logits.shape == (12, 10) and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# -- evolved losses: against scipy --------------------------------------------------------
def _ln(x):
    return np.log(np.abs(x) + EPS)


def _log(x):
    return np.log10(np.abs(x) + EPS)


def _div(a, b):
    return a / (b + EPS)


def _sig(x):
    return sp.expit(x)


def _softplus(x):
    return np.logaddexp(0.0, x)


# Table 4 of seed 003, written again with numpy/scipy as an independent reference.
REFERENCE = {
    "b0": lambda y, h: -_sig(_softplus(_div(h, y))),
    "b1": lambda y, h: -_sig(sp.i0e(_div(h, y))) * (1 - _sig(sp.i0e(_div(h, y)))),
    "b2": lambda y, h: -sp.i1e(sp.erf(_div(h, y))),
    "c0": lambda y, h: -_ln(np.arctan(_div(h, y))),
    "c1": lambda y, h: -_ln(_softplus(_div(h, y))),
    "c2": lambda y, h: -_sig(_log(_div(h, y))),
    "m0": lambda y, h: -sp.i1(np.arctan(_log(h))) * y,
    "m1": lambda y, h: np.log1p(np.exp(h - y)),
    "m2": lambda y, h: np.arcsinh(sp.i0(y - h)),
    "r0": lambda y, h: 1 - np.tanh(sp.i0e(_div(h, y))) ** 2 + sp.i0e(_div(h, y)),
    "r1": lambda y, h: _log(_div(h, y)) / np.sqrt(1 + (_log(_div(h, y)) + y) ** 2),
    "r2": lambda y, h: np.abs(_log(_div(h, y))) ** np.abs(sp.i0(y)),
    "a0": lambda y, h: -_ln(1 / (1 + np.abs(_log(h)))) * y,
    "a1": lambda y, h: -_ln(sp.i0e(_log(h))) * y,
    "a2": lambda y, h: _div(y, sp.i0e(_ln(h))),
}
POINTS = np.array([(1.0, 0.5), (1.0, 0.02), (0.0, 0.3), (0.0, 0.0), (1.0, 1.0), (0.3, 0.7), (0.9, 1e-9)])


@pytest.mark.parametrize("name", EVOLVED)
def test_evolved_elementwise_matches_the_scipy_reference(name):
    y, h = POINTS[:, 0], POINTS[:, 1]
    got = L.get(name, reading="literal").elementwise(torch.tensor(y), torch.tensor(h)).numpy()
    np.testing.assert_allclose(got, REFERENCE[name](y, h), rtol=1e-9, atol=1e-12)
    # the default reading leaves out the ratio terms of classes without target mass, and only those
    default = L.get(name).elementwise(torch.tensor(y), torch.tensor(h)).numpy()
    ratio = name in ("b0", "b1", "b2", "c0", "c1", "c2", "r0", "r1", "r2")
    want = np.where((y > 0) | (not ratio), REFERENCE[name](y, h), 0.0)
    np.testing.assert_allclose(default, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name, expected", [
    ("a2", 1 / (0.5 * sp.i0(math.log(0.5)))),   # i0e(x) = exp(-|x|) I0(x)
    ("m1", math.log(1 + math.exp(-0.5))),
    ("a0", math.log(1 + abs(math.log10(0.5)))),
    ("c0", -math.log(math.atan(0.5))),
])
def test_evolved_hand_values_at_y1_yh_half(name, expected):
    one, half = torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    assert float(L.get(name).elementwise(one, half)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", EVOLVED + ["ce", "focal", "adma"])
def test_elementwise_forward_sums_classes_and_averages_the_batch(name):
    z = torch.tensor([[0.0, math.log(3.0)], [2.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([1, 1])
    loss = L.get(name)
    p = torch.softmax(z, 1)
    onehot = F.one_hot(y, 2).double()
    expected = float(loss.elementwise(onehot, p).sum(1).mean())
    # CE, focal and Adma compute through log-softmax; the protected eps of the form is 1e-7 away
    assert float(loss(z, y)) == pytest.approx(expected, rel=1e-6)


def test_seed_003_ce_is_the_elementwise_form_of_ce():
    y, h = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.25, 0.0, 0.5])
    torch.testing.assert_close(L.get("CE").elementwise(y, h), -y * torch.log(h + EPS))


# -- readings of Table 4 (seed 003) -------------------------------------------------------
def _search_sign_by_hand(f) -> float:
    """The orientation rule of the authors' search code (check_integrity), written again with numpy."""
    p = np.linspace(EPS, 1 - EPS, 1000)
    yhat = np.stack([p, 1 - p], -1).astype(np.float32).astype(np.float64)
    y = np.tile([0.0, 1.0], (1000, 1))
    with np.errstate(all="ignore"):
        t = np.sign(np.diff(f(y, yhat).sum(-1)))
    if np.all(t < 0):
        return -1.0
    if np.all(t > 0):
        return 1.0
    while (t == 0).any():
        t[t == 0] = np.roll(t, 1)[t == 0]
    return 1.0 if t[2] == -1 else -1.0


@pytest.mark.parametrize("name", EVOLVED)
def test_search_reading_has_the_sign_the_search_code_gives(name):
    from landscape.losses.evolved import search_orientation

    sign = _search_sign_by_hand(REFERENCE[name])
    assert search_orientation(name) == sign
    assert (sign < 0) == (name in ("b0", "b1", "b2", "c0", "c1", "r1"))
    y, h = torch.tensor(POINTS[:, 0]), torch.tensor(POINTS[:, 1])
    torch.testing.assert_close(L.get(name, reading="search").elementwise(y, h),
                               sign * L.get(name, reading="literal").elementwise(y, h))


def test_target_reading_keeps_only_the_target_class_and_support_every_class_with_mass():
    y = torch.tensor([[1.0, 0.0, 0.0], [0.05, 0.9, 0.05]], dtype=torch.float64)
    p = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]], dtype=torch.float64)
    lit = REFERENCE["c1"](y.numpy(), p.numpy())
    got = {r: L.get("c1", reading=r).of_probabilities(y, p).numpy() for r in ("literal", "support", "target")}
    np.testing.assert_allclose(got["literal"], lit.sum(1), rtol=1e-12)
    np.testing.assert_allclose(got["support"], [lit[0, 0], lit[1].sum()], rtol=1e-12)  # smoothed: every class
    np.testing.assert_allclose(got["target"], [lit[0, 0], lit[1, 1]], rtol=1e-12)
    # formulas that do not divide by y keep every class under the default reading
    np.testing.assert_allclose(L.get("m1").of_probabilities(y, p).numpy(), REFERENCE["m1"](y.numpy(), p.numpy()).sum(1))


def test_ln_reading_reads_log_as_the_natural_logarithm():
    y, h = torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64)
    natural = -sp.expit(math.log(0.3 / (1 + EPS) + EPS))
    assert float(L.get("c2", reading="ln").elementwise(y, h)) == pytest.approx(natural)
    assert float(L.get("c2").elementwise(y, h)) == pytest.approx(-sp.expit(math.log10(0.3 / (1 + EPS) + EPS)))


def test_unknown_reading_is_a_loss_error():
    with pytest.raises(LossError, match="reading='typo'.*Available: literal, ln, search, support, target"):
        L.get("c1", reading="typo")


def test_m1_is_table_4s_softplus_without_the_search_spaces_eps():
    # the search code's softplus is ln(|1 + e^x| + eps); Table 4 prints M1 = ln(1 + exp(yh - y)), no eps
    x = torch.linspace(-1, 1, 201, dtype=torch.float64)
    ours = L.get("m1").elementwise(torch.zeros_like(x), x)
    search = torch.log(torch.abs(1 + torch.exp(x)) + EPS)
    torch.testing.assert_close(ours, torch.log1p(torch.exp(x)), rtol=1e-14, atol=1e-15)
    assert 0 < float((search - ours).max()) <= EPS


def test_a2_the_shipped_evolved_loss_is_the_same_under_every_reading():
    # its terms carry a factor y, so no class without target mass contributes under any reading
    z = torch.randn(16, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(16) % 10
    values = {r: float(L.get("a2", reading=r)(z, y)) for r in ("support", "literal", "target", "search")}
    assert len(set(values.values())) == 1, values


def test_the_evidence_table_of_the_docs_is_what_the_code_measures():
    # docs/evolved-losses.md, phenotype rows (the training rows are pinned by the slow test below)
    from landscape.losses.evidence import phenotype_statements

    default = phenotype_statements("support")
    assert default["peaks_at_1"] == ["r1"]
    assert default["fig8"] == {"max": pytest.approx(0.17724, abs=1e-5), "y": 1.0, "yhat": pytest.approx(0.02)}
    assert default["m1_m2"] == pytest.approx(0.0087, abs=1e-4)
    assert default["corr"]["c0-c1"] == pytest.approx(0.09, abs=0.005)
    literal = phenotype_statements("literal")
    assert literal["peaks_at_1"] == ["b0", "b1", "b2", "c0", "c1", "c2", "r0", "r1"]
    assert literal["corr"]["c0-c1"] == pytest.approx(0.06, abs=0.005)
    authors = phenotype_statements("literal", grid="open")
    assert authors["hook"]["c0"]["rise"] == pytest.approx(0.0448, abs=5e-4)
    assert authors["holds"]["small hook (C0, C1, C2)"] is False  # C1 and C2 have none
    assert authors["peaks_at_1"] == ["b0", "c1", "c2", "r0", "r1"]
    assert not any(phenotype_statements(r)["holds"]["C0 ~ C1 unlike C2"] for r in ("support", "literal", "target"))


def _train_accuracy(formula: str, reading: str, epochs: int) -> float:
    from landscape.losses.evidence import train_accuracy

    return train_accuracy(formula, reading, epochs=epochs)


@pytest.mark.slow
def test_c1_and_r2_train_under_the_default_reading_and_not_under_the_literal_one():
    # seed 003's Table 5 trains C1 and R2 to 94-96 %; the literal reading sends C1 to 0 % and R2 near chance
    assert _train_accuracy("c1", "support", 20) > 0.75  # measured 0.82 (0.92 after the zoo's 40 epochs)
    assert _train_accuracy("r2", "support", 20) > 0.9   # measured 0.97
    assert _train_accuracy("c1", "literal", 20) < 0.05  # measured 0.00
    assert _train_accuracy("r2", "literal", 20) < 0.3   # measured 0.16


# -- numerical stability over the whole simplex ------------------------------------------
def _simplex(c=3, steps=8, dtype=torch.float64):
    pts = [(i / steps, j / steps, (steps - i - j) / steps) for i in range(steps + 1) for j in range(steps + 1 - i)]
    return torch.tensor(pts, dtype=dtype)[:, :c]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", CLASSICAL + EVOLVED)
def test_every_loss_and_its_gradient_are_finite_on_the_simplex(name, dtype):
    p = _simplex(dtype=dtype)
    # probabilities exactly 0 and 1 come from logits far apart (softmax underflows there)
    logits = torch.log(p.clamp_min(1e-30)).mul(10).requires_grad_(True)
    n = len(p)
    target = torch.arange(n) % 3
    g = torch.Generator().manual_seed(0)
    f = torch.randn(n, 4, generator=g, dtype=dtype)
    f[0] = 0.0  # a zero feature vector has no angle; must not give NaN
    w = torch.randn(3, 4, generator=g, dtype=dtype, requires_grad=True)
    f.requires_grad_(True)
    loss = L.get(name)
    value = call(loss, logits, target, f, w)
    value.backward()
    assert torch.isfinite(value)
    for t in (logits, f, w):
        assert t.grad is None or torch.isfinite(t.grad).all()


@pytest.mark.parametrize("name", EVOLVED + ["ce", "focal", "adma", "sce"])
def test_phenotype_forms_are_finite_on_the_unit_square(name):
    grid = torch.linspace(0, 1, 41, dtype=torch.float64)
    y, h = torch.meshgrid(grid, grid, indexing="ij")
    two_class = L.get(name).of_probabilities(torch.stack([y, 1 - y], -1), torch.stack([h, 1 - h], -1))
    assert torch.isfinite(two_class).all()


@pytest.mark.parametrize("name", ["sce", "adma", "focal", "l-softmax", "am-softmax", "a2", "sm-softmax"])
def test_gradients_match_finite_differences(name):
    f, w, y = _features(6, n=4, d=3, c=3)
    f.requires_grad_(True)
    loss = L.get(name)
    if loss.needs_features:
        fn = lambda feats: loss(feats @ w.T, y, feats, w)  # noqa: E731
    else:
        fn = lambda feats: loss(feats @ w.T, y)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (f,), eps=1e-6, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("name", CLASSICAL + ["a2", "b0"])
def test_losses_run_on_cuda_and_agree_with_cpu(name):
    f, w, y = _features(7)
    loss = L.get(name)
    cpu = call(loss, f @ w.T, y, f, w)
    dev = torch.device("cuda")
    gpu = call(loss.to(dev), (f @ w.T).to(dev), y.to(dev), f.to(dev), w.to(dev))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)


def test_a_checkpoint_rebuilds_its_combined_criterion(tiny_checkpoint, digits_test):
    path = tiny_checkpoint("mlp", loss="0.5*ce + 0.5*l-softmax(m=2, beta=5)", epochs=1, hidden=[16, 8],
                           head_bias=False)
    ck = ls.load_checkpoint(path, device="cpu")
    assert isinstance(ck.criterion, L.Combined) and ck.criterion.needs_features
    assert ck.criterion.parts[1].beta == 5
    loss, acc = ck.evaluate(digits_test.subset(64, seed=0))
    assert math.isfinite(loss) and 0 <= acc <= 1


def test_directly_built_losses_have_a_spec_naming_their_registered_loss():
    for loss in (L.Evolved("a2"), L.CrossEntropy(), L.MAMSoftmax(), L.LSoftmax(m=3)):
        assert type(L.build(loss.spec)) is type(loss)
