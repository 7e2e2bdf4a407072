"""Surfaces and curves against plain evaluations of perturbed weights; orientation; seeds; divergence."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import landscape as ls
from landscape.directions import Directions, offset_parameters
from landscape.errors import ArgumentError
from landscape.evaluator import GridEvaluator, first_layer, trace
from landscape.objective import evaluate
# the surface API, imported from its module
from landscape.surface import Surface, interpolate, surface


@pytest.fixture(scope="module")
def small(digits_test):
    return digits_test.subset(120, seed=0)


def reference(ck, data, dirs, coords, criterion=None):
    """Plain evaluation of a deep copy whose weights are set to theta* + sum c_i d_i (independent of the engine)."""
    model = copy.deepcopy(ck.model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            w = p.detach().double().clone()
            for i, c in enumerate(coords):
                w += c * dirs.tensors(i, dtype=torch.float64)[name]
            p.copy_(w.float())
    x, y = ck.prepare(data)
    return evaluate(model, criterion or ck.criterion, x, y)


def test_centre_equals_the_checkpoints_own_loss(mlp, digits_test):
    surf = surface(mlp, digits_test, x=(-1, 1, 5), y=(-1, 1, 3))
    loss, acc = mlp.evaluate(digits_test)
    assert surf.loss[1, 2] == pytest.approx(loss, rel=1e-6)  # float32 rounding of the folded batchnorm
    assert surf.accuracy[1, 2] == pytest.approx(acc, abs=1e-12)
    assert loss == pytest.approx(mlp.meta["metrics"]["test_loss"], rel=1e-6)


@pytest.fixture
def every_shortcut(monkeypatch):
    """Apply the first-layer shortcut to convolutions too (off by default: it does not pay for them)."""
    import landscape.evaluator as engine

    monkeypatch.setattr(engine, "FIRST_LAYER_MIN_FAN_IN", 0)
    monkeypatch.setattr(engine, "FIRST_LAYER_TYPES", (torch.nn.Linear, torch.nn.Conv2d))


@pytest.mark.parametrize("which", ["mlp", "cnn"])
@pytest.mark.parametrize("shortcut", [True, False])
def test_values_equal_a_plain_evaluation_of_perturbed_weights(which, shortcut, request, small, every_shortcut):
    ck = request.getfixturevalue(which)
    dirs = ls.random_directions(ck.model, n=2, seed=1)
    coords = np.array([[0.0, 0.0], [0.4, -0.3], [-1.0, 0.7]])
    x, y = ck.prepare(small)
    ev = GridEvaluator(ck.model, ck.criterion, x, y, dirs, shortcut=shortcut)
    got = ev(coords)
    assert bool(ev.patches) == shortcut
    for k, c in enumerate(coords):
        loss, acc = reference(ck, small, dirs, c)
        assert got["loss"][k] == pytest.approx(loss, rel=2e-5), c
        assert got["accuracy"][k] == pytest.approx(acc, abs=1e-12), c


def test_line_values_equal_plain_evaluation_along_the_direction(mlp, small):
    line = interpolate(mlp, None, small, steps=5, seed=4)
    dirs = ls.random_directions(mlp.model, n=1, seed=4)
    np.testing.assert_array_equal(line.t, np.linspace(-1, 1, 5))
    np.testing.assert_array_equal(line.directions, dirs.vectors)
    for k, t in enumerate(line.t):
        assert line.loss[k] == pytest.approx(reference(mlp, small, dirs, [t])[0], rel=2e-5)


def test_interpolation_between_checkpoints_reaches_the_other(mlp, small, zoo_path):
    other = zoo_path("mlp-ce").parent / "snapshots" / "mlp-ce" / "epoch030.safetensors"
    line = interpolate(mlp, other, small, t=[0.0, 1.0])
    assert line.loss[0] == pytest.approx(mlp.evaluate(small)[0], rel=1e-6)
    # t = 1 carries the other's parameters (batchnorm statistics stay the origin's)
    ck2 = ls.load_checkpoint(other, device="cpu")
    moved = offset_parameters(mlp.model, ls.directions_between(mlp, ck2), [1.0])
    model = copy.deepcopy(mlp.model)
    model.load_state_dict(moved, strict=False)
    x, y = mlp.prepare(small)
    assert line.loss[1] == pytest.approx(evaluate(model, mlp.criterion, x, y)[0], rel=2e-5)


def test_non_square_grid_is_oriented_loss_j_i_at_x_i_y_j(mlp, small):
    dirs = ls.random_directions(mlp.model, n=2, seed=0)
    surf = surface(mlp, small, dirs, x=(-1, 1, 4), y=(0, 0.5, 3))
    assert surf.loss.shape == (3, 4) and surf.x.shape == (4,) and surf.y.shape == (3,)
    for j, i in [(0, 3), (2, 0), (1, 2)]:
        expect = reference(mlp, small, dirs, [surf.x[i], surf.y[j]])[0]
        assert surf.loss[j, i] == pytest.approx(expect, rel=2e-5)


def test_same_seed_same_surface(mlp, small):
    a = surface(mlp, small, x=(-1, 1, 3), y=(-1, 1, 3), seed=3)
    b = surface(mlp, small, x=(-1, 1, 3), y=(-1, 1, 3), seed=3)
    c = surface(mlp, small, x=(-1, 1, 3), y=(-1, 1, 3), seed=4)
    np.testing.assert_array_equal(a.loss, b.loss)
    assert not np.allclose(a.loss, c.loss)


def test_points_per_launch_and_batches_agree_with_the_loop(cnn, small, every_shortcut):
    dirs = ls.random_directions(cnn.model, n=2, seed=2)
    coords = np.array([[0.1, 0.2], [-0.5, 0.5], [0.9, -0.9], [0.0, 0.3], [0.3, 0.0]])
    x, y = cnn.prepare(small)
    loop = GridEvaluator(cnn.model, cnn.criterion, x, y, dirs, with_ce=True)(coords)
    vmapped = GridEvaluator(cnn.model, cnn.criterion, x, y, dirs, with_ce=True, points_per_batch=3)(coords)
    batched = GridEvaluator(cnn.model, cnn.criterion, x, y, dirs, with_ce=True, batch_size=50)(coords)
    both = GridEvaluator(cnn.model, cnn.criterion, x, y, dirs, with_ce=True, batch_size=50, points_per_batch=2)(coords)
    for other in (vmapped, batched, both):
        for k in loop:
            np.testing.assert_allclose(other[k], loop[k], rtol=2e-5)


def test_margin_loss_surface_uses_the_training_objective(tiny_checkpoint, small):
    ck = ls.load_checkpoint(tiny_checkpoint("mlp", loss="am-softmax", epochs=2, hidden=[16, 8]), device="cpu")
    surf = surface(ck, small, x=(0, 0.5, 2), y=(0, 0, 1), with_ce=True)
    assert surf.loss[0, 0] == pytest.approx(ck.evaluate(small)[0], rel=1e-6)
    x, y = ck.prepare(small)
    with torch.inference_mode():
        ce = float(F.cross_entropy(ck.model(x), y))
    assert surf.ce_loss[0, 0] == pytest.approx(ce, rel=1e-6)
    assert surf.loss[0, 0] != pytest.approx(ce, rel=1e-3)
    assert surf.meta["criterion"] == "am-softmax"
    assert surf.loss[0, 1] == pytest.approx(reference(ck, small, surf.dirs, [0.5, 0.0])[0], rel=2e-5)


def test_diverging_points_stay_non_finite_and_do_not_crash(mlp, small):
    surf = surface(mlp, small, x=[0.0, 1e30], y=[0.0], seed=0)
    assert np.isfinite(surf.loss[0, 0])
    assert not np.isfinite(surf.loss[0, 1])


def test_model_and_batchnorm_statistics_are_left_untouched(cnn, small, every_shortcut):
    before = {k: v.clone() for k, v in cnn.model.state_dict().items()}
    surface(cnn, small, x=(-1, 1, 2), y=(-1, 1, 2))
    for k, v in cnn.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert "forward" not in cnn.model.body.conv1.__dict__  # the shortcut's patch is removed


def test_surface_saves_and_reloads_with_its_directions(tmp_path, mlp, small):
    surf = surface(mlp, small, x=(-1, 1, 3), y=(-1, 1, 2), subset=50, seed=1, out=tmp_path / "s")
    back = Surface.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.loss, surf.loss)
    np.testing.assert_array_equal(back.dirs.vectors, ls.random_directions(mlp.model, n=2, seed=1).vectors)
    assert back.meta["n_samples"] == 50 and back.meta["grid"] == [3, 2] and back.meta["digest"] == mlp.digest
    assert not list(tmp_path.glob("*.progress*"))


def test_first_layer_shortcut_is_refused_when_the_data_is_transformed_first():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x = torch.randn(5, 1, 2, 2)
    assert first_layer(trace(model, x), x) is not None

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(2 * x.flatten(1))

    scaled = Scaled()
    assert first_layer(trace(scaled, x), x) is None


def test_bad_arguments_raise_landscape_errors(mlp, small):
    with pytest.raises(ArgumentError, match="2 directions"):
        surface(mlp, small, ls.random_directions(mlp.model, n=1))
    with pytest.raises(ArgumentError, match="x lower end must be a number, got 'a'"):
        surface(mlp, small, x=("a", 1, 3))
    with pytest.raises(ArgumentError, match="lo, hi, n"):
        surface(mlp, small, x=(-1, 1))
    with pytest.raises(ArgumentError):
        Directions(np.zeros((1, 3)), ["a"], [[2]])


def test_moving_biases_and_batchnorm_are_not_folded_and_still_exact(mlp, small):
    dirs = ls.random_directions(mlp.model, n=2, seed=6, ignore=None)
    x, y = mlp.prepare(small)
    ev = GridEvaluator(mlp.model, mlp.criterion, x, y, dirs)
    patched = [m for m, _ in ev.patches]
    assert mlp.model.body[1] in patched  # the first layer's shortcut still applies
    assert mlp.model.body[2] not in patched and mlp.model.body[6] not in patched  # moving batchnorms run
    got = ev(np.array([[0.3, 0.2]]))
    assert got["loss"][0] == pytest.approx(reference(mlp, small, dirs, [0.3, 0.2])[0], rel=2e-5)


def test_every_fixed_batchnorm_after_a_layer_is_folded(cnn, small, every_shortcut):
    x, y = cnn.prepare(small)
    ev = GridEvaluator(cnn.model, cnn.criterion, x, y, ls.random_directions(cnn.model, n=2, seed=0))
    body = cnn.model.body
    patched = [m for m, _ in ev.patches]
    for module in (body.conv1, body.bn1, body.conv2, body.bn2, body.conv3, body.bn3):
        assert module in patched
    swapped = [p for p, _ in ev._swapped]
    assert len(swapped) == 1 and swapped[0] is cnn.model.head.weight  # only the head reads a plain segment


def test_self_check_falls_back_when_a_layer_output_is_reused(small):
    """A residual on the pre-batchnorm output breaks the folding algebra; the engine must notice."""

    class Reuse(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = torch.nn.Linear(64, 32)
            self.bn = torch.nn.BatchNorm1d(32)
            self.mid = torch.nn.Linear(32, 32)
            self.bn2 = torch.nn.BatchNorm1d(32)
            self.head = torch.nn.Linear(32, 10)

        def forward(self, x):
            z = self.mid(torch.relu(self.bn(self.lin(x.flatten(1)))))
            return self.head(torch.relu(self.bn2(z) + z))  # z is used beside its batchnorm

    model = Reuse()
    with torch.no_grad():
        model.bn2.running_mean.uniform_(-1, 1)
        model.bn2.running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.as_tensor(small.x)
    y = torch.as_tensor(small.y)
    dirs = ls.random_directions(model, n=2, seed=0)
    crit = ls.losses.get("ce")
    ev = GridEvaluator(model, crit, x, y, dirs)
    assert model.bn2 not in [m for m, _ in ev.patches]
    plain = GridEvaluator(model, crit, x, y, dirs, shortcut=False)
    c = np.array([[0.4, -0.3]])
    assert ev(c)["loss"][0] == pytest.approx(plain(c)["loss"][0], rel=1e-5)


def test_trajectory_surface_and_plot(zoo_path, small):
    import viz

    snaps = sorted((zoo_path("mlp-ce").parent / "snapshots" / "mlp-ce").glob("epoch*.safetensors"))[-6:]
    dirs = ls.trajectory_directions(snaps, n=2)
    ck = ls.load_checkpoint(snaps[-1], device="cpu")
    lo, hi = dirs.coords.min(0), dirs.coords.max(0)
    surf = surface(ck, small, dirs, x=(lo[0], hi[0], 3), y=(lo[1], hi[1], 3))
    plot = viz.trajectory(surf, dirs.coords)
    np.testing.assert_array_equal(plot.values["path"], dirs.coords)
    assert surf.meta["directions"]["meta"]["kind"] == "pca"


@pytest.mark.gpu
def test_cuda_points_per_launch_match_the_cpu_loop(zoo_path, small):
    cpu = ls.load_checkpoint(zoo_path("cnn-ce"), device="cpu")
    gpu = ls.load_checkpoint(zoo_path("cnn-ce"), device="cuda")
    dirs = ls.random_directions(cpu.model, n=2, seed=0)
    kwargs = dict(x=(-1, 1, 5), y=(-1, 1, 4), progress=False)
    a = surface(cpu, small, dirs, **kwargs)
    b = surface(gpu, small, dirs, **kwargs)  # 16 points per launch with vmap
    np.testing.assert_allclose(b.loss, a.loss, rtol=1e-4)
    np.testing.assert_allclose(b.accuracy, a.accuracy, atol=1.0 / len(small) + 1e-12)


def test_a_model_left_in_training_mode_is_evaluated_in_eval_mode(zoo_path, small):
    ck = ls.load_checkpoint(zoo_path("mlp-ce"), device="cpu")
    ck.model.train()
    surf = surface(ck, small, x=[0.0], y=[0.0])
    assert ck.model.training  # the caller's mode is restored
    ck.model.eval()
    assert surf.loss[0, 0] == pytest.approx(ck.evaluate(small)[0], rel=1e-6)  # float32 rounding of the folded batchnorm


def test_axis_reads_tuples_as_ranges_and_lists_as_coordinates():
    from landscape.plane import axis

    np.testing.assert_array_equal(axis((-1, 1, 5)), [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_array_equal(axis([-1, 0, 1]), [-1, 0, 1])
    with pytest.raises(ArgumentError, match="finite"):
        axis([0.0, np.nan])


def test_a_one_point_axis_is_the_centre_and_surfaces_record_the_true_centre(mlp, digits_test):
    from landscape.plane import axis

    np.testing.assert_array_equal(axis((-1, 1, 1)), [0.0])
    np.testing.assert_array_equal(axis((-0.5, 1.5, 1)), [0.5])
    small = digits_test.subset(40, seed=0)
    centre_loss, centre_acc = mlp.evaluate(small)
    one = surface(mlp, small, x=(-1, 1, 1), y=(-1, 1, 1))
    assert one.loss.shape == (1, 1) and one.loss[0, 0] == pytest.approx(centre_loss, rel=1e-5)
    even = surface(mlp, small, x=(-1, 1, 4), y=(-1, 1, 4))  # (0, 0) is not a grid point
    assert 0.0 not in even.x
    assert even.meta["centre"]["loss"] == pytest.approx(centre_loss, rel=1e-5)
    assert even.meta["centre"]["accuracy"] == pytest.approx(centre_acc)


def test_surface_takes_a_plain_module_and_any_form_of_data(mlp, digits_test):
    """As loss-landscapes and PyHessian users hold them: an nn.Module, a criterion, tensors or a DataLoader."""
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    small = digits_test.subset(30, seed=0)
    x, y = mlp.prepare(small)  # normalised tensors, as a user's own pipeline would give them
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10)).eval()
    dirs = ls.random_directions(net, n=2, seed=0)
    grid = dict(x=(-1, 1, 3), y=(-1, 1, 3))
    ref = surface(net, (x, y), dirs, criterion=nn.CrossEntropyLoss(), **grid)
    with torch.no_grad():
        assert ref.meta["centre"]["loss"] == pytest.approx(float(nn.functional.cross_entropy(net(x), y)), rel=1e-6)
    for data in (TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=7), (x.numpy(), y.numpy())):
        other = surface(net, data, dirs, criterion=nn.CrossEntropyLoss(), **grid)
        np.testing.assert_allclose(other.loss, ref.loss, rtol=1e-6)
    by_name = surface(net, (x, y), dirs, criterion="ce", **grid)
    np.testing.assert_allclose(by_name.loss, ref.loss, rtol=1e-6)
    with pytest.raises(ls.errors.DatasetError, match="integer class indices"):
        surface(net, (x, y.float()), dirs, **grid)


@pytest.mark.parametrize("arch,shape,extra", [("mlp", (1, 8, 8), {}), ("resnet20", (3, 16, 16), {}),
                                              ("resnet20", (3, 16, 16), {"stream": True}),
                                              ("resnet20", (3, 16, 16), {"bn": "recompute"})])
def test_a_float64_module_gets_a_float64_surface(arch, shape, extra):
    """A float64 nn.Module used to fail (float32 inputs); its surface is its own float64 loss at every point.

    Reference: a deep copy whose weights are set to theta* + a d1 + b d2 in float64, evaluated by
    plain cross-entropy in float64 (with its statistics re-estimated by torch.optim.swa_utils.update_bn
    for bn="recompute"); 1e-10 relative, which a float32 evaluation (errors ~1e-7) cannot meet.
    """
    from torch.optim.swa_utils import update_bn

    torch.manual_seed(0)
    model = ls.models.build(arch, input_shape=shape, num_classes=4).double().eval()
    # inputs a Dataset holds exactly (it stores float32), so the reference sees the same numbers
    x, y = torch.randn(12, *shape).double(), torch.arange(12) % 4
    dirs = ls.random_directions(model, n=2, seed=3)
    coords = [-0.5, 0.0, 0.5]
    bn = dict(bn_data=(x, y), bn_subset=None, bn_batch_size=4) if extra.get("bn") else {}
    surf = surface(model, (x, y), dirs, x=coords, y=coords, verbose=False, **extra, **bn)
    assert surf.loss.dtype == np.float64
    for j, b in enumerate(coords):
        for i, a in enumerate(coords):
            moved = copy.deepcopy(model)
            moved.load_state_dict(offset_parameters(model, dirs, (a, b)), strict=False)
            if extra.get("bn"):
                update_bn([(x[k:k + 4],) for k in range(0, 12, 4)], moved)
            moved.eval()
            with torch.no_grad():
                want = float(F.cross_entropy(moved(x), y))
            assert surf.loss[j, i] == pytest.approx(want, rel=1e-10, abs=1e-12), (a, b)
