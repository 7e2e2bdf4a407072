"""Batchnorm statistics at moved weights: recompute_statistics against torch's update_bn and a float64 closed form;
bn="recompute" surfaces and lines against plain evaluations of models whose statistics were computed that way."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset

import landscape as ls
from landscape.batchnorm import StatisticsEstimator, recompute_statistics, statistics_names
from landscape.directions import offset_parameters
from landscape.errors import ArgumentError
from landscape.objective import evaluate
from landscape.surface import interpolate, surface


@pytest.fixture(scope="module")
def bn_mlp(tiny_checkpoint):
    """A briefly trained batchnorm mlp without dropout (update_bn runs the model in train mode)."""
    return ls.load_checkpoint(tiny_checkpoint("mlp", epochs=2, hidden=[32, 16], dropout=0.0), device="cpu")


@pytest.fixture(scope="module")
def train(digits_train):
    return digits_train


def update_bn_reference(ck, state: dict, data, batch_size: int = 128, no_dropout: bool = False):
    """A copy of ck.model at ``state`` whose statistics torch.optim.swa_utils.update_bn computed (momentum=None).

    update_bn runs the whole model in train mode; ``no_dropout`` makes its dropout the identity, as the
    toolkit's estimate has it.
    """
    model = copy.deepcopy(ck.model)
    model.load_state_dict(state, strict=False)
    if no_dropout:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    x, _ = ck.prepare(data)
    update_bn(DataLoader(TensorDataset(x), batch_size=batch_size, shuffle=False), model)
    return model.eval()


@pytest.mark.parametrize("which", ["bn_mlp", "cnn"])
def test_centre_on_the_full_training_split_reproduces_update_bn(which, request, train):
    ck = request.getfixturevalue(which)
    ref = update_bn_reference(ck, {}, train)
    stats = recompute_statistics(ck.model, None, train, n=None, batch_size=128, transform=ck.normalize)
    want = dict(ref.named_buffers())
    assert sorted(stats) == sorted(statistics_names(ck.model))
    for name, value in stats.items():
        if name.endswith("num_batches_tracked"):
            assert int(value) == int(want[name]) == int(np.ceil(len(train) / 128))
        else:
            torch.testing.assert_close(value, want[name], rtol=1e-5, atol=1e-6)


def test_first_batchnorm_statistics_equal_a_float64_closed_form(bn_mlp, train):
    """Average over batches of 128 of the batch mean and unbiased variance of the first layer's output."""
    stats = recompute_statistics(bn_mlp.model, None, train, batch_size=128, transform=bn_mlp.normalize)
    x, _ = bn_mlp.prepare(train)
    lin = bn_mlp.model.body[1]
    z = x.flatten(1).double() @ lin.weight.detach().double().T + lin.bias.detach().double()
    batches = list(torch.split(z, 128))
    mean = sum(b.mean(0) for b in batches) / len(batches)
    var = sum(b.var(0, unbiased=True) for b in batches) / len(batches)
    torch.testing.assert_close(stats["body.2.running_mean"].double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["body.2.running_var"].double(), var, rtol=1e-5, atol=1e-6)
    # and they are not the stored ones, which training's momentum 0.1 produced
    assert not torch.allclose(stats["body.2.running_var"], bn_mlp.model.body[2].running_var, rtol=1e-3)


def test_recompute_at_a_moved_point_equals_update_bn_on_the_moved_weights(cnn, train, digits_test):
    dirs = ls.random_directions(cnn.model, n=2, seed=3)
    c = [0.4, -0.25]
    moved = offset_parameters(cnn.model, dirs, c)
    ref = update_bn_reference(cnn, moved, train)
    stats = recompute_statistics(cnn.model, moved, train, transform=cnn.normalize)
    for name, value in stats.items():
        torch.testing.assert_close(value.double(), dict(ref.named_buffers())[name].double(), rtol=1e-5, atol=1e-6)
    # the surface at that point is the eval-mode loss of the model with those statistics
    test = digits_test.subset(100, seed=0)
    surf = surface(cnn, test, dirs, x=[c[0]], y=[c[1]], bn="recompute", bn_data=train, bn_subset=None)
    x, y = cnn.prepare(test)
    loss, acc = evaluate(ref, cnn.criterion, x, y)
    assert surf.loss[0, 0] == pytest.approx(loss, rel=1e-5)
    assert surf.accuracy[0, 0] == pytest.approx(acc, abs=1e-12)
    assert surf.meta["bn"] == "recompute" and surf.meta["bn_subset"] == len(train)
    # with the stored statistics the value differs: the test sees which statistics were used
    plain = surface(cnn, test, dirs, x=[c[0]], y=[c[1]])
    assert plain.meta["bn"] == "eval"
    assert abs(plain.loss[0, 0] - loss) > 1e-3 * loss


def test_recompute_centre_of_a_surface_is_the_update_bn_models_loss(bn_mlp, train, digits_test):
    test = digits_test.subset(90, seed=1)
    ref = update_bn_reference(bn_mlp, {}, train)
    x, y = bn_mlp.prepare(test)
    loss, _ = evaluate(ref, bn_mlp.criterion, x, y)
    surf = surface(bn_mlp, test, x=(-1, 1, 3), y=(-1, 1, 3), bn="recompute", bn_data=train, bn_subset=None)
    assert surf.loss[1, 1] == pytest.approx(loss, rel=1e-5)
    assert surf.meta["centre"]["loss"] == pytest.approx(loss, rel=1e-5)


def test_batch_statistics_never_leak_into_the_loss(cnn, train, digits_test):
    """Eval mode with the re-estimated statistics: the loss of a sample does not depend on its batch."""
    test = digits_test.subset(60, seed=2)
    dirs = ls.random_directions(cnn.model, n=2, seed=0)
    kw = dict(x=[0.3], y=[-0.2], bn="recompute", bn_data=train, bn_subset=256)
    whole = surface(cnn, test, dirs, **kw)
    batched = surface(cnn, test, dirs, batch_size=7, **kw)
    assert batched.loss[0, 0] == pytest.approx(whole.loss[0, 0], rel=1e-6)


def test_the_subset_is_seeded_and_the_same_for_every_point(bn_mlp, train):
    a = StatisticsEstimator(bn_mlp.model, train, n=200, seed=1, transform=bn_mlp.normalize)
    b = StatisticsEstimator(bn_mlp.model, train, n=200, seed=1, transform=bn_mlp.normalize)
    c = StatisticsEstimator(bn_mlp.model, train, n=200, seed=2, transform=bn_mlp.normalize)
    sa, sb, sc = a(), b(), c()
    name = "body.2.running_mean"
    torch.testing.assert_close(sa[name], sb[name], rtol=0, atol=0)
    assert not torch.allclose(sa[name], sc[name])
    torch.testing.assert_close(a()[name], sa[name], rtol=0, atol=0)  # the same subset at every call
    assert len(a.data) == 200 and int(sa["body.2.num_batches_tracked"]) == 2


def test_the_callers_model_is_never_modified(cnn, train):
    before = {k: v.clone() for k, v in cnn.model.state_dict().items()}
    modes = [(m.training, getattr(m, "momentum", None)) for m in cnn.model.modules()]
    dirs = ls.random_directions(cnn.model, n=1, seed=0)
    recompute_statistics(cnn.model, offset_parameters(cnn.model, dirs, [0.5]), train, n=100,
                         transform=cnn.normalize)
    interpolate(cnn, dirs, train.subset(40, seed=0), t=[0.0, 0.5], bn="recompute", bn_data=train, bn_subset=64)
    for k, v in cnn.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [(m.training, getattr(m, "momentum", None)) for m in cnn.model.modules()] == modes


def test_a_line_between_checkpoints_with_recomputed_statistics(zoo_path, digits_test, train):
    ck = ls.load_checkpoint(zoo_path("mlp-ce"), device="cpu")
    other = zoo_path("mlp-ce").parent / "snapshots" / "mlp-ce" / "epoch030.safetensors"
    test = digits_test.subset(80, seed=0)
    line = interpolate(ck, other, test, t=[0.0, 0.5], bn="recompute", bn_data="digits", bn_subset=300)
    assert line.meta["bn"] == "recompute" and line.meta["bn_subset"] == 300
    dirs = ls.directions_between(ck, ls.load_checkpoint(other, device="cpu"))
    subset = StatisticsEstimator(ck.model, "digits", n=300, seed=0).data  # the seeded subset of the train split
    assert len(subset) == 300 and subset.name.startswith("digits/train")
    # dropout stays off while the statistics are gathered: update_bn on a dropout-free copy is the reference
    ref = update_bn_reference(ck, offset_parameters(ck.model, dirs, [0.5]), subset, no_dropout=True)
    x, y = ck.prepare(test)
    assert line.loss[1] == pytest.approx(evaluate(ref, ck.criterion, x, y)[0], rel=1e-5)


def test_bad_batchnorm_options_raise_landscape_errors(mlp, digits_test):
    small = digits_test.subset(20, seed=0)
    with pytest.raises(ArgumentError, match="bn='bogus' is not one of the choices"):
        surface(mlp, small, x=[0.0], y=[0.0], bn="bogus")
    with pytest.raises(ArgumentError, match="pass bn_data="):
        surface(mlp, small, x=[0.0], y=[0.0], bn="recompute")
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(ArgumentError, match="no batchnorm"):
        recompute_statistics(plain, None, small)
    with pytest.raises(ArgumentError, match="bn subset must be >= 2"):
        surface(mlp, small, x=[0.0], y=[0.0], bn="recompute", bn_data="digits", bn_subset=1)
