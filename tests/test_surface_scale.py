"""Surfaces at scale: streamed data, cache-sized forward pieces and states lines equal plain evaluations."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.func import functional_call

import landscape as ls
import landscape.evaluator as engine
from landscape.directions import offset_parameters
from landscape.evaluator import GridEvaluator, StreamedInputs, prepare_inputs
from landscape.objective import evaluate
from landscape.surface import interpolate, surface


@pytest.fixture(scope="module")
def small(digits_test):
    return digits_test.subset(130, seed=0)


def plain_loss(ck, data, dirs, coords, batch_size=None):
    """Loss of a deep copy with theta* + sum c_i d_i written into it (float64 combination), by objective.evaluate."""
    model = copy.deepcopy(ck.model)
    state = {k: v.double().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    for i, c in enumerate(coords):
        for name, d in dirs.tensors(i, dtype=torch.float64).items():
            state[name] += c * d
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    x, y = ck.prepare(data)
    return evaluate(model, ck.criterion, x, y, batch_size)


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_streamed_data_gives_the_in_memory_values(which, request, small):
    ck = request.getfixturevalue(which)
    dirs = ls.random_directions(ck.model, n=2, seed=1)
    grid = dict(x=(-1, 1, 3), y=(-0.5, 0.5, 2), with_ce=True)
    held = surface(ck, small, dirs, stream=False, **grid)
    streamed = surface(ck, small, dirs, stream=True, **grid)
    for field in ("loss", "accuracy", "ce_loss"):
        np.testing.assert_allclose(getattr(streamed, field), getattr(held, field), rtol=2e-6, atol=1e-12)
    expect = plain_loss(ck, small, dirs, [held.x[2], held.y[1]])
    assert streamed.loss[1, 2] == pytest.approx(expect[0], rel=2e-5)
    # batches of the objective cut across the streamed batches
    a = surface(ck, small, dirs, stream=True, batch_size=48, **grid)
    b = surface(ck, small, dirs, stream=False, batch_size=48, **grid)
    np.testing.assert_allclose(a.loss, b.loss, rtol=2e-6)
    assert a.loss[0, 0] == pytest.approx(plain_loss(ck, small, dirs, [-1.0, -0.5], batch_size=48)[0], rel=2e-5)


def test_data_too_large_for_the_device_is_streamed_automatically(mlp, small, monkeypatch):
    x, y = prepare_inputs(mlp, small)
    assert isinstance(x, torch.Tensor)
    monkeypatch.setattr(engine, "STREAM_FRACTION", 1e-12)  # nothing fits
    streamed, y2 = prepare_inputs(mlp, small)
    assert isinstance(streamed, StreamedInputs) and torch.equal(y2, y)
    dirs = ls.random_directions(mlp.model, n=2, seed=0)
    ev = GridEvaluator(mlp.model, mlp.criterion, streamed, y2, dirs)
    assert ev.streamed and ev.shortcut_layer is None  # no first-layer parts of the whole data
    monkeypatch.undo()
    held = GridEvaluator(mlp.model, mlp.criterion, x, y, dirs)
    assert held.shortcut_layer is mlp.model.body[1]
    c = np.array([[0.3, -0.6], [0.0, 0.0]])
    np.testing.assert_allclose(ev(c)["loss"], held(c)["loss"], rtol=2e-6)


def test_a_streamed_checkpoint_of_another_input_shape_is_refused(mlp, small):
    other = ls.Dataset(np.zeros((4, 3, 8, 8), np.float32), np.zeros(4, np.int64), ["a"], "rgb")
    with pytest.raises(ls.errors.LandscapeError, match="expects"):
        prepare_inputs(mlp, other, stream=True)


@pytest.mark.parametrize("pieces", [1, 7, 64])
def test_forward_pieces_leave_a_batch_dependent_loss_unchanged(tiny_checkpoint, small, pieces):
    """MAM-SoftMax's margin depends on the whole batch: the criterion must see the whole batch, not the pieces."""
    ck = ls.load_checkpoint(tiny_checkpoint("mlp", loss="mam-softmax", epochs=2, hidden=[16, 8]), device="cpu")
    dirs = ls.random_directions(ck.model, n=2, seed=0)
    x, y = ck.prepare(small)
    c = np.array([[0.2, -0.1]])
    whole = GridEvaluator(ck.model, ck.criterion, x, y, dirs, forward_batch=len(y))(c)["loss"][0]
    cut = GridEvaluator(ck.model, ck.criterion, x, y, dirs, forward_batch=pieces)(c)["loss"][0]
    assert cut == pytest.approx(whole, rel=2e-6)
    assert whole == pytest.approx(plain_loss(ck, small, dirs, c[0])[0], rel=2e-5)
    # the loss is batch dependent indeed: evaluated batch by batch it differs
    assert plain_loss(ck, small, dirs, c[0], batch_size=pieces if pieces > 1 else 5)[0] != pytest.approx(whole,
                                                                                                          rel=1e-4)


def test_the_structure_is_read_from_a_probe_never_from_the_whole_data(cnn, small, monkeypatch):
    seen = []
    original = engine.trace

    def spy(model, x):
        seen.append(len(x))
        return original(model, x)

    monkeypatch.setattr(engine, "trace", spy)
    x, y = cnn.prepare(small)
    GridEvaluator(cnn.model, cnn.criterion, x, y, ls.random_directions(cnn.model, n=2, seed=0))
    assert seen == [engine.PROBE_SAMPLES]


def test_a_states_line_ends_exactly_at_the_other_checkpoint(zoo_path, small):
    """Li et al.'s dir_type=states: running statistics move too, so t = 1 gives the other checkpoint's outputs."""
    ck = ls.load_checkpoint(zoo_path("mlp-ce"), device="cpu")
    path = zoo_path("mlp-ce").parent / "snapshots" / "mlp-ce" / "epoch015.safetensors"
    other = ls.load_checkpoint(path, device="cpu")
    line = interpolate(ck, path, small, t=[0.0, 0.5, 1.0], dir_type="states")
    own_loss, own_acc = other.evaluate(small)
    assert line.loss[2] == pytest.approx(own_loss, rel=1e-5)
    assert line.accuracy[2] == pytest.approx(own_acc, abs=1e-12)
    assert line.loss[0] == pytest.approx(ck.evaluate(small)[0], rel=1e-6)
    assert line.meta["directions"]["meta"]["dir_type"] == "states"
    # the logits at t = 1 are the other checkpoint's
    moved = offset_parameters(ck.model, line.dirs, [1.0])
    x, _ = ck.prepare(small)
    with torch.inference_mode():
        torch.testing.assert_close(functional_call(ck.model, moved, (x,)), other.model(x), rtol=1e-5, atol=1e-5)
    # the middle point is the plain evaluation of the interpolated state
    assert line.loss[1] == pytest.approx(plain_loss(ck, small, line.dirs, [0.5])[0], rel=2e-5)
    # a weights line keeps the origin's statistics and so does not reach the other's outputs
    weights = interpolate(ck, path, small, t=[1.0])
    assert abs(weights.loss[0] - own_loss) > 1e-3 * own_loss


def test_a_states_surface_through_two_checkpoints_hits_both(zoo_path, small):
    snaps = zoo_path("mlp-ce").parent / "snapshots" / "mlp-ce"
    ck = ls.load_checkpoint(zoo_path("mlp-ce"), device="cpu")
    a, b = snaps / "epoch010.safetensors", snaps / "epoch020.safetensors"
    dirs = ls.directions_between(ck, a, b, dir_type="states")
    surf = surface(ck, small, dirs, x=[0.0, 1.0], y=[0.0, 1.0])
    assert surf.loss[0, 1] == pytest.approx(ls.load_checkpoint(a, device="cpu").evaluate(small)[0], rel=1e-5)
    assert surf.loss[1, 0] == pytest.approx(ls.load_checkpoint(b, device="cpu").evaluate(small)[0], rel=1e-5)
    assert surf.loss[1, 1] == pytest.approx(plain_loss(ck, small, dirs, [1.0, 1.0])[0], rel=2e-5)
