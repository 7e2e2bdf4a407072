"""Mode connectivity (issue 17): curves, barriers, batchnorm statistics along paths, training, resume, figures, CLI.

References: closed forms (Bernstein polynomials, convex combinations, a hand-made loss with a known
bump), plain ``nn.Module`` forward passes with loaded weights (no functional_call), and an
independent loop that sets batchnorm statistics the way ``update_bn`` does.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import landscape as ls
from landscape import connectivity as cn
from landscape.checkpoint import as_checkpoint
from landscape.errors import ArgumentError, ResumeError
from tests.conftest import ZOO

TINY = 200  # training samples of the quick curves


@pytest.fixture(scope="module")
def pair():
    return (ls.load_checkpoint(ZOO / "mlp-ce.safetensors", device="cpu"),
            ls.load_checkpoint(ZOO / "mlp-ce-seed1.safetensors", device="cpu"))


@pytest.fixture(scope="module")
def short_curve(pair):
    """A Bezier curve with one bend trained for 2 epochs on 200 samples (a few seconds)."""
    return cn.connect(*pair, "digits", epochs=2, subset=TINY, n=5, seed=3, verbose=False)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


# -- curves ------------------------------------------------------------------------------------
def test_bezier_coefficients_are_bernstein_polynomials():
    t = np.array([0.0, 0.3, 0.5, 1.0])
    got = cn.coefficients("bezier", 3, t)
    want = np.stack([(1 - t) ** 2, 2 * t * (1 - t), t ** 2], axis=1)  # hand-written for one bend
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)
    four = cn.coefficients("bezier", 5, [0.3])[0]
    np.testing.assert_allclose(four, [math.comb(4, k) * 0.3 ** k * 0.7 ** (4 - k) for k in range(5)], atol=1e-15)
    assert four.sum() == pytest.approx(1.0, abs=1e-14)


def test_polychain_with_one_bend_is_the_right_convex_combination():
    rng = np.random.default_rng(0)
    nodes = rng.normal(size=(3, 7))
    a, bend, b = nodes
    ts = np.linspace(0, 1, 101)
    coef = cn.coefficients("polychain", 3, ts)
    assert np.all(coef >= 0) and np.allclose(coef.sum(axis=1), 1.0, atol=1e-15)
    for t, c in zip(ts, coef):
        want = a + 2 * t * (bend - a) if t <= 0.5 else bend + (2 * t - 1) * (b - bend)
        got = cn.combine(c, torch.from_numpy(nodes)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_curve_endpoints_are_the_checkpoints_bit_for_bit(pair, short_curve):
    a, b = pair
    assert short_curve.nodes.shape == (3, sum(p.numel() for p in a.model.parameters()))
    for t, ck in ((0.0, a), (1.0, b)):
        point = short_curve.point(t)
        for name, p in ck.model.named_parameters():
            assert torch.equal(_bits(point[name]), _bits(p.detach())), (t, name)
    # the bend moved off the line (it was trained), so the curve is not the straight line
    mid = (short_curve.nodes[0] + short_curve.nodes[2]) / 2
    assert np.linalg.norm(short_curve.nodes[1] - mid) > 1e-3


def test_curve_evaluation_at_t0_is_checkpoint_a_with_recomputed_statistics(pair, short_curve):
    line = cn.barrier(*pair, "digits", n=5, subset=TINY, seed=3, verbose=False)
    for split in ("train", "test"):  # same weights, same statistics at t = 0 and 1: same numbers
        np.testing.assert_allclose(short_curve.loss[split][[0, -1]], line.loss[split][[0, -1]], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(short_curve.accuracy[split][[0, -1]], line.accuracy[split][[0, -1]], atol=1e-12)


# -- barriers ----------------------------------------------------------------------------------
def test_barrier_formulas_on_a_hand_made_path_with_a_known_bump():
    # L(t) = 1 + t + 1.2 t (1 - t): chord 1 + t, gap 1.2 t (1 - t) largest at 1/2 (0.3);
    # L' = 0 at t* = 11/12, L(t*) = 1 + 11/12 + 1.2 * 11/144 = 2.008333...
    t = np.linspace(0, 1, 121)  # holds 1/2 and 11/12 exactly
    loss = 1 + t + 1.2 * t * (1 - t)
    v = cn.barrier_values(t, loss)
    top = 1 + 11 / 12 + 1.2 * 11 / 144
    assert v["t_max"] == pytest.approx(11 / 12, abs=1e-12)
    assert v["max"] == pytest.approx(top, abs=1e-12)
    assert v["barrier"] == pytest.approx(1.2 * 11 / 144, abs=1e-12)  # L(t*) - ((1 - t*) L(0) + t* L(1))
    assert v["barrier_endpoints"] == pytest.approx(top - 2.0, abs=1e-12)  # max L - max(L(0), L(1))
    assert v["barrier_gap"] == pytest.approx(0.3, abs=1e-12) and v["t_gap"] == pytest.approx(0.5, abs=1e-12)
    assert v["instability"] == pytest.approx(top - 1.5, abs=1e-12)  # Frankle et al.: max L - mean of the endpoints
    flat = cn.barrier_values(t, 1 + t)  # no bump: every barrier is 0 (up to rounding)
    assert abs(flat["barrier"]) < 1e-12 and abs(flat["barrier_gap"]) < 1e-12
    with pytest.raises(ArgumentError, match="endpoints"):
        cn.barrier_values(t[1:], loss[1:])
    assert cn.barrier_values(t, np.where(t == 0.5, np.inf, loss))["barrier"] == np.inf


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(x.flatten(1))


def test_barrier_along_a_line_against_plain_forward_passes(digits_train, digits_test):
    torch.manual_seed(0)
    m_a, m_b = Linear(), Linear()
    data = digits_train.subset(300, seed=0)
    line = cn.barrier(m_a, m_b, data, n=7, test=digits_test, bn="interpolate", verbose=False)
    assert line.meta["bn"] == "none"  # no batchnorm: nothing to recompute
    for split, d in (("train", data), ("test", digits_test)):
        x, y = d.tensors()
        for t, got, acc in zip(line.t, line.loss[split], line.accuracy[split]):
            ref = copy.deepcopy(m_a)
            ref.load_state_dict({k: (1 - t) * v + t * m_b.state_dict()[k] for k, v in m_a.state_dict().items()})
            with torch.no_grad():
                logits = ref(x)
            assert got == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5, abs=1e-6)
            assert acc == pytest.approx(float((logits.argmax(1) == y).double().mean()), abs=1e-12)
    np.testing.assert_allclose(line.barrier("train"), cn.barrier_values(line.t, line.loss["train"])["barrier"])


def _statistics_like_update_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 128) -> nn.Module:
    """Running statistics by plain forward passes: batchnorm in train mode with a cumulative average, dropout off."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = None
            m.train()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            if len(x[i:i + batch_size]) > 1:
                model(x[i:i + batch_size])
    return model.eval()


def test_recompute_at_t0_reproduces_statistics_computed_that_way(pair, digits_train):
    a, b = pair
    x, _ = a.prepare(digits_train)
    model = _statistics_like_update_bn(a.model, x)
    ck = as_checkpoint(model, criterion="ce")
    ck.meta["normalization"] = a.meta["normalization"]
    ev = cn.PathEvaluator(ck, torch.stack([cn.flat_parameters(model), cn.flat_parameters(b.model)]), "polychain",
                          {"train": digits_train}, "recompute", bn_subset=None)
    state = ev.state(0.0)
    for name, buf in model.named_buffers():
        if buf.is_floating_point():
            torch.testing.assert_close(state[name], buf, rtol=1e-5, atol=1e-6)
    # and the loss at t = 0 is the checkpoint's own eval-mode loss with those statistics
    line = cn.barrier(ck, b, digits_train, n=3, bn="recompute", bn_subset=None, verbose=False)
    want, _ = ls.objective.evaluate(model, nn.CrossEntropyLoss(), x, digits_train.tensors()[1])
    assert line.loss["train"][0] == pytest.approx(want, rel=1e-5)
    # statistics that were not computed that way are not reproduced by interpolating them
    broken = copy.deepcopy(model)
    for m in broken.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_var.mul_(4.0)
    bad = as_checkpoint(broken, criterion="ce")
    bad.meta["normalization"] = a.meta["normalization"]
    kept = cn.barrier(bad, b, digits_train, n=3, bn="interpolate", verbose=False).loss["train"][0]
    fixed = cn.barrier(bad, b, digits_train, n=3, bn="recompute", bn_subset=None, verbose=False)
    assert fixed.loss["train"][0] == pytest.approx(want, rel=1e-5) and abs(kept - want) > 1e-3


# -- training ----------------------------------------------------------------------------------
def test_training_is_deterministic_and_resumes_exactly_after_a_kill(pair, tmp_path, monkeypatch):
    kw = dict(epochs=3, subset=TINY, n=3, seed=1, verbose=False)
    full = cn.connect(*pair, "digits", curve="polychain", out=tmp_path / "full.npz", **kw)
    assert not (tmp_path / "full.npz.train.safetensors").exists()  # the finished run drops its training state
    again = cn.connect(*pair, "digits", curve="polychain", **kw)
    np.testing.assert_array_equal(full.nodes, again.nodes)

    write = cn._TrainingState.write

    def killed_after_two(self, bends, momentum, epoch, log):
        write(self, bends, momentum, epoch, log)
        if epoch == 2:
            raise KeyboardInterrupt

    out = tmp_path / "killed.npz"
    monkeypatch.setattr(cn._TrainingState, "write", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        cn.connect(*pair, "digits", curve="polychain", out=out, **kw)
    monkeypatch.setattr(cn._TrainingState, "write", write)
    assert (tmp_path / "killed.npz.train.safetensors").exists()
    with pytest.raises(ResumeError, match="--resume"):
        cn.connect(*pair, "digits", curve="polychain", out=out, **kw)
    with pytest.raises(ResumeError, match="different run"):
        cn.connect(*pair, "digits", curve="polychain", out=out, resume=True, **{**kw, "seed": 2})
    resumed = cn.connect(*pair, "digits", curve="polychain", out=out, resume=True, **kw)
    np.testing.assert_array_equal(resumed.nodes, full.nodes)
    np.testing.assert_array_equal(resumed.log["loss"], full.log["loss"])
    loaded = ls.Result.load(out)
    assert isinstance(loaded, ls.LowLossCurve) and loaded.meta["curve"] == "polychain"
    np.testing.assert_array_equal(loaded.nodes, full.nodes)
    np.testing.assert_array_equal(loaded.loss["test"], full.loss["test"])


@pytest.mark.slow
def test_trained_curve_beats_the_line_for_the_shipped_pair(pair):
    line = cn.barrier(*pair, "digits", verbose=False)
    curve = cn.connect(*pair, "digits", epochs=10, verbose=False)
    assert len(curve.t) == 61 and curve.meta["bn"] == "recompute"
    assert curve.loss["train"].max() < 0.5 * line.loss["train"].max()
    assert curve.barrier("train") < line.barrier("train")
    assert curve.log["loss"][-1] < curve.log["loss"][0]


def test_user_mistakes(pair, mlp):
    cnn = ls.load_checkpoint(ZOO / "cnn-ce.safetensors", device="cpu")
    with pytest.raises(ArgumentError, match="different architectures"):
        cn.barrier(mlp, cnn, "digits", n=3)
    with pytest.raises(ArgumentError, match="curve"):
        cn.connect(*pair, "digits", curve="spline", epochs=1)
    with pytest.raises(ArgumentError, match="bn"):
        cn.barrier(*pair, "digits", bn="eval")
    with pytest.raises(ArgumentError, match="bends"):
        cn.connect(*pair, "digits", bends=0)


# -- plane and figures -------------------------------------------------------------------------
def test_plane_holds_the_curve_and_figures_draw_the_results(pair, short_curve):
    from viz import connectivity as vc

    surf = cn.curve_plane(pair[0], short_curve, "digits", grid=4, subset=TINY, verbose=False)
    info = surf.meta["curve"]
    nodes = np.asarray(info["nodes_xy"])
    dist = np.linalg.norm(short_curve.nodes[2].astype(np.float64) - short_curve.nodes[0])
    np.testing.assert_allclose(nodes[0], [0, 0], atol=1e-12)
    np.testing.assert_allclose(nodes[2], [dist, 0], rtol=1e-6, atol=1e-6)  # B on the first axis at |B - A|
    assert max(info["distance"]) < 1e-4 * dist  # a one-bend curve lies in the plane
    line = cn.barrier(*pair, "digits", n=5, subset=TINY, seed=3, verbose=False)
    plot = vc.paths(line, short_curve)
    np.testing.assert_array_equal(plot.values["curve"]["loss"]["train"], short_curve.loss["train"])
    np.testing.assert_allclose(plot.values["line"]["error"]["test"], 1 - line.accuracy["test"], atol=1e-12)
    plot.close()
    p = vc.plane(surf)
    np.testing.assert_array_equal(p.values["loss"], surf.loss)
    p.close()


# -- command line ------------------------------------------------------------------------------
def test_connect_command_writes_results_and_figures_and_keeps_them(tmp_path, capsys):
    from viz.cli import main

    out = tmp_path / "run"
    args = ["connect", str(ZOO / "mlp-ce.safetensors"), str(ZOO / "mlp-ce-seed1.safetensors"), "--epochs", "2",
            "--subset", str(TINY), "--points", "5", "--grid", "3", "--out", str(out), "--threads", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "line: train: barrier" in printed and "curve: train: barrier" in printed
    for name in ("barrier.npz", "curve.npz", "plane.npz", "connectivity.png", "connectivity.json", "plane.png"):
        assert (out / name).exists(), name
    curve = ls.Result.load(out / "curve.npz")
    assert isinstance(curve, ls.LowLossCurve) and curve.meta["epochs"] == 2 and len(curve.t) == 5
    before = (out / "curve.npz").read_bytes()
    assert main(args) == 2  # a finished run is not replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0  # every part is finished: loaded, figures drawn again
    assert (out / "curve.npz").read_bytes() == before
    assert main(["connect", str(ZOO / "mlp-ce.safetensors"), str(ZOO / "cnn-ce.safetensors"), "--out",
                 str(tmp_path / "bad")]) == 2
    assert "different architectures" in capsys.readouterr().err
