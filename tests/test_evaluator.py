"""The engine's speed-ups change nothing but float rounding: channels-last, conv folding, points per launch,
re-estimated statistics and states directions, each against a plain evaluation; CUDA against the CPU."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import landscape as ls
import landscape.evaluator as engine
from landscape.batchnorm import StatisticsEstimator
from landscape.evaluator import GridEvaluator, choose_channels_last, choose_forward_batch, exact_float32
from landscape.objective import evaluate


@pytest.fixture(scope="module")
def resnet(digits_train):
    """A ResNet-20-shaped net (3 stages of 3 blocks, widths 8-16-32) on 3x8x8 inputs, statistics of the data."""
    from landscape.batchnorm import recompute_statistics

    torch.manual_seed(0)
    model = ls.models.build("resnet", input_shape=(3, 8, 8), num_classes=10, widths=(8, 16, 32),
                            blocks=(3, 3, 3)).eval()
    x = torch.as_tensor(np.repeat(digits_train.x[:300], 3, axis=1))
    model.load_state_dict(recompute_statistics(model, None, (x, torch.as_tensor(digits_train.y[:300]))),
                          strict=False)
    return model


@pytest.fixture(scope="module")
def rgb(digits_test):
    x = torch.as_tensor(np.repeat(digits_test.x[:90], 3, axis=1)) - 0.3
    return x, torch.as_tensor(digits_test.y[:90])


def plain(model, criterion, x, y, dirs, c, buffers=None):
    """Loss and accuracy of a deep copy with the offset state written into it."""
    m = copy.deepcopy(model)
    state = {k: v.double().clone() for k, v in m.state_dict().items() if v.is_floating_point()}
    for i, ci in enumerate(c):
        for name, d in dirs.tensors(i, dtype=torch.float64).items():
            state[name] += ci * d
    state.update(buffers or {})
    m.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return evaluate(m, criterion, x, y)


COORDS = np.array([[0.0, 0.0], [0.35, -0.2], [-0.6, 0.5]])


@pytest.mark.parametrize("channels_last", [False, True])
def test_resnet_values_equal_a_plain_evaluation(resnet, rgb, channels_last):
    x, y = rgb
    dirs = ls.random_directions(resnet, n=2, seed=0)
    crit = ls.losses.get("ce")
    ev = GridEvaluator(resnet, crit, x, y, dirs, channels_last=channels_last, forward_batch=32)
    assert ev.channels_last is channels_last
    folded = [m for m, _ in ev.patches if isinstance(m, nn.Conv2d)]
    assert len(folded) == sum(isinstance(m, nn.Conv2d) for m in resnet.modules())  # every conv has its bn folded in
    got = ev(COORDS)
    for k, c in enumerate(COORDS):
        loss, acc = plain(resnet, crit, x, y, dirs, c)
        assert got["loss"][k] == pytest.approx(loss, rel=1e-5), c
        assert got["accuracy"][k] == pytest.approx(acc, abs=1e-12)


def test_speed_choices_follow_the_measurements(resnet, cnn):
    cpu = torch.device("cpu")
    assert choose_channels_last(resnet, cpu)  # narrow convolutions
    wide = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Flatten())
    assert not choose_channels_last(wide, cpu)  # VGG-like: NCHW is already at the matmul peak
    assert not choose_channels_last(nn.Linear(4, 2), cpu)
    assert not choose_channels_last(resnet, torch.device("cuda"))
    # about 2 MiB of activations per forward piece on the CPU: 32 CIFAR images for a 16-channel ResNet
    assert choose_forward_batch(16 * 32 * 32 * 4, 1000, cpu) == 32
    assert choose_forward_batch(64 * 32 * 32 * 4, 1000, cpu) == 32  # VGG: never thinner than 32 samples
    assert choose_forward_batch(512, 360, cpu) == 360


def perturbed(model, seed: int):
    """A copy with noisy weights and rescaled (still positive) running statistics."""
    torch.manual_seed(seed)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1 * p.std().nan_to_num() * torch.randn_like(p))
        for m in other.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.add_(0.2 * torch.randn_like(m.running_mean))
                m.running_var.mul_(1.5)
    return other


@pytest.mark.parametrize("dir_type", ["weights", "states"])
def test_points_per_launch_agree_with_the_loop(cnn, digits_test, dir_type):
    small = digits_test.subset(70, seed=0)
    x, y = cnn.prepare(small)
    if dir_type == "weights":
        dirs = ls.random_directions(cnn.model, n=2, seed=4, ignore=None)
    else:
        dirs = ls.directions_between(cnn.model, perturbed(cnn.model, 1), perturbed(cnn.model, 2), dir_type="states")
    loop = GridEvaluator(cnn.model, cnn.criterion, x, y, dirs, with_ce=True)(COORDS)
    launched = GridEvaluator(cnn.model, cnn.criterion, x, y, dirs, with_ce=True, points_per_batch=2,
                             forward_batch=32, batch_size=50)(COORDS)
    pieces = GridEvaluator(cnn.model, cnn.criterion, x, y, dirs, with_ce=True, forward_batch=32, batch_size=50)(COORDS)
    for k in loop:
        np.testing.assert_allclose(launched[k], pieces[k], rtol=2e-5)
    for k, c in enumerate(COORDS):
        assert loop["loss"][k] == pytest.approx(plain(cnn.model, cnn.criterion, x, y, dirs, c)[0], rel=2e-5)


def test_states_directions_move_the_running_statistics(cnn, digits_test):
    small = digits_test.subset(50, seed=1)
    x, y = cnn.prepare(small)
    other = perturbed(cnn.model, 0)
    dirs = ls.directions_between(cnn.model, other, dir_type="states")
    before = {k: v.clone() for k, v in cnn.model.state_dict().items()}
    ev = GridEvaluator(cnn.model, cnn.criterion, x, y, dirs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m, _ in ev.patches)  # moving statistics are never folded
    got = ev(np.array([[1.0], [0.5]]))
    assert got["loss"][0] == pytest.approx(evaluate(other, cnn.criterion, x, y)[0], rel=1e-5)
    assert got["loss"][1] == pytest.approx(plain(cnn.model, cnn.criterion, x, y, dirs, [0.5])[0], rel=1e-5)
    for k, v in cnn.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_recomputed_statistics_per_point_through_launches(cnn, digits_test, digits_train):
    small = digits_test.subset(40, seed=0)
    x, y = cnn.prepare(small)
    dirs = ls.random_directions(cnn.model, n=2, seed=0)
    est = StatisticsEstimator(cnn.model, digits_train, n=200, seed=0, transform=cnn.normalize)
    loop = GridEvaluator(cnn.model, cnn.criterion, x, y, dirs, recompute=est)
    launched = GridEvaluator(cnn.model, cnn.criterion, x, y, dirs, recompute=est, points_per_batch=3)
    a, b = loop(COORDS), launched(COORDS)
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=2e-5)
    from landscape.directions import offset_parameters

    for k, c in enumerate(COORDS):
        stats = est(offset_parameters(cnn.model, dirs, c))
        assert a["loss"][k] == pytest.approx(plain(cnn.model, cnn.criterion, x, y, dirs, c, stats)[0], rel=2e-5)


def test_a_loss_without_batching_rule_falls_back_to_one_point_at_a_time(mlp, digits_test):
    class ItemLoss(nn.Module):
        """Cross-entropy that reads a Python float mid-way (no vmap batching rule for .item())."""

        def forward(self, logits, y):
            loss = nn.functional.cross_entropy(logits, y)
            return loss * (1.0 + 0.0 * loss.item())

    small = digits_test.subset(30, seed=0)
    x, y = mlp.prepare(small)
    dirs = ls.random_directions(mlp.model, n=2, seed=0)
    ev = GridEvaluator(mlp.model, ItemLoss(), x, y, dirs, points_per_batch=4)
    with pytest.warns(RuntimeWarning, match="one point at a time"):
        got = ev(COORDS)
    assert ev.ppb == 1
    ref = GridEvaluator(mlp.model, ls.losses.get("ce"), x, y, dirs)(COORDS)
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-6)


def test_a_model_normalising_with_batch_statistics_is_never_cut_into_pieces(digits_test):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16, track_running_stats=False), nn.ReLU(),
                          nn.Linear(16, 10)).eval()
    x, y = torch.as_tensor(digits_test.x[:80]), torch.as_tensor(digits_test.y[:80])
    dirs = ls.random_directions(model, n=2, seed=0)
    ev = GridEvaluator(model, ls.losses.get("ce"), x, y, dirs, forward_batch=8, batch_size=40)
    assert ev.forward_batch == 40
    with torch.inference_mode():
        ref = np.mean([float(nn.functional.cross_entropy(model(x[i:i + 40]), y[i:i + 40])) for i in (0, 40)])
    assert ev(np.zeros((1, 2)))["loss"][0] == pytest.approx(ref, rel=1e-6)


def test_exact_float32_is_a_no_op_off_cuda():
    before = torch.backends.cudnn.allow_tf32
    with exact_float32(torch.device("cpu")):
        assert torch.backends.cudnn.allow_tf32 == before
    assert engine.SELF_CHECK_RTOL <= 1e-3


@pytest.mark.gpu
def test_cuda_resnet_with_points_per_launch_matches_the_cpu(resnet, rgb):
    x, y = rgb
    dirs = ls.random_directions(resnet, n=2, seed=0)
    crit = ls.losses.get("ce")
    cpu = GridEvaluator(resnet, crit, x, y, dirs)(COORDS)
    gpu_model = copy.deepcopy(resnet).cuda()
    for ppb in (1, 16):
        got = GridEvaluator(gpu_model, crit.cuda(), x.cuda(), y.cuda(), dirs, points_per_batch=ppb)(COORDS)
        np.testing.assert_allclose(got["loss"], cpu["loss"], rtol=1e-5)  # TF32 off: float32 on both
        np.testing.assert_allclose(got["accuracy"], cpu["accuracy"], atol=1.0 / len(y) + 1e-12)
    assert torch.backends.cudnn.allow_tf32  # restored after the engine ran


@pytest.mark.gpu
def test_cuda_streaming_and_recompute_match_the_cpu(zoo_path, digits_test, digits_train):
    from landscape.surface import surface

    small = digits_test.subset(100, seed=0)
    kw = dict(x=(-1, 1, 3), y=(-1, 1, 3), bn="recompute", bn_data=digits_train, bn_subset=256)
    cpu = surface(ls.load_checkpoint(zoo_path("cnn-ce"), device="cpu"), small, **kw)
    gpu = ls.load_checkpoint(zoo_path("cnn-ce"), device="cuda")
    for stream in (False, True):
        got = surface(gpu, small, stream=stream, **kw)
        np.testing.assert_allclose(got.loss, cpu.loss, rtol=1e-5)
