"""extract_features: default penultimate features, hooked layers, batching, hooks removed, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import landscape as ls
from landscape.errors import ArgumentError
from landscape.features import layer_names


def _all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def _bare_checkpoint(model: nn.Module) -> ls.Checkpoint:
    """A checkpoint around an arbitrary model (no features/head, no normalisation)."""
    return ls.Checkpoint(model=model.eval(), meta={}, criterion=nn.CrossEntropyLoss(), device=torch.device("cpu"))


def test_default_features_match_a_hand_normalised_forward(mlp, digits_test):
    feat = ls.extract_features(mlp, digits_test)
    norm = mlp.meta["normalization"]
    x = (torch.as_tensor(digits_test.x) - norm["mean"][0]) / norm["std"][0]  # one channel
    with torch.no_grad():
        want = mlp.model.body(x)
        logits = mlp.model.head(want)
    assert feat.x.shape == (360, 64) and feat.x.dtype == np.float32
    np.testing.assert_allclose(feat.x, want.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(feat.y, digits_test.y)
    np.testing.assert_array_equal(feat.pred, logits.argmax(1).numpy())
    assert feat.accuracy == pytest.approx(mlp.evaluate(digits_test)[1])
    assert feat.meta["layer"] == "features" and feat.meta["checkpoint"] == "mlp-ce"
    assert feat.meta["data"] == "digits/test" and feat.meta["digest"] == mlp.digest
    assert feat.classes == [str(c) for c in range(10)]


def test_named_layer_reads_that_module_and_hook_is_removed(mlp, digits_test):
    default = ls.extract_features(mlp, digits_test)
    # body = Flatten, Linear, BN, ReLU, Dropout, Linear, BN, ReLU, Dropout: the last one is the feature layer
    last = ls.extract_features(mlp, digits_test, layer="body.8")
    np.testing.assert_array_equal(last.x, default.x)
    pre_relu = ls.extract_features(mlp, digits_test, layer="body.6")
    np.testing.assert_allclose(np.maximum(pre_relu.x, 0), default.x, atol=1e-6)
    assert (pre_relu.x < 0).any()  # really a different layer
    assert pre_relu.meta["layer"] == "body.6"
    assert _all_hooks(mlp.model) == 0


def test_batch_size_does_not_change_features(mlp, digits_test):
    whole = ls.extract_features(mlp, digits_test, batch_size=1000)
    small = ls.extract_features(mlp, digits_test, batch_size=7, layer="body.5")
    ref = ls.extract_features(mlp, digits_test, batch_size=1000, layer="body.5")
    np.testing.assert_allclose(small.x, ref.x, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(small.pred, whole.pred)


def test_conv_layer_is_flattened(zoo_path, digits_test):
    ck = ls.load_checkpoint(zoo_path("cnn-ce"), device="cpu")
    feat = ls.extract_features(ck, digits_test.subset(20), layer="body.conv3")
    assert feat.meta["shape"] == [32, 4, 4]
    assert feat.x.shape == (20, 32 * 4 * 4)
    # global average pooling of the relu'd conv3 map gives the default features
    relu = ls.extract_features(ck, digits_test.subset(20), layer="body.relu3")
    pooled = relu.x.reshape(20, 32, 16).mean(axis=2)
    np.testing.assert_allclose(pooled, ls.extract_features(ck, digits_test.subset(20)).x, rtol=1e-5, atol=1e-6)


def test_wrong_layer_name_lists_available_layers(mlp, digits_test):
    with pytest.raises(ArgumentError) as err:
        ls.extract_features(mlp, digits_test, layer="body.9")
    msg = str(err.value)
    assert "'body.9'" in msg and "Did you mean 'body.8'" in msg
    for name in layer_names(mlp.model):
        assert name in msg


def test_hooks_removed_when_the_layer_output_is_not_a_tensor(digits_test):
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.flat, self.pair, self.fc = nn.Flatten(), Pair(), nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(self.pair(self.flat(x))[0])

    ck = _bare_checkpoint(Net())
    with pytest.raises(ArgumentError, match="not a tensor"):
        ls.extract_features(ck, digits_test.subset(5), layer="pair")
    assert _all_hooks(ck.model) == 0
    # a plain model has no default feature layer, but any named layer works
    with pytest.raises(ArgumentError, match="no `features"):
        ls.extract_features(ck, digits_test.subset(5))
    assert ls.extract_features(ck, digits_test.subset(5), layer="flat").x.shape == (5, 64)


def test_unused_layer_and_bad_batch_size(digits_test):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.spare = nn.Linear(64, 10), nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x.flatten(1))

    net = Net()
    ck = _bare_checkpoint(net)
    with pytest.raises(ArgumentError, match="not used"):
        ls.extract_features(ck, digits_test.subset(5), layer="spare")
    assert _all_hooks(net) == 0
    with pytest.raises(ArgumentError, match="batch_size"):
        ls.extract_features(ck, digits_test.subset(5), layer="fc", batch_size=0)


def test_features_save_and_load(mlp, digits_test, tmp_path):
    feat = ls.extract_features(mlp, digits_test.subset(30))
    back = ls.Features.load(feat.save(tmp_path / "feat"))
    np.testing.assert_array_equal(back.x, feat.x)
    np.testing.assert_array_equal(back.pred, feat.pred)
    assert back.meta == feat.meta and back.classes == feat.classes


@pytest.mark.gpu
def test_features_on_cuda_match_cpu(zoo_path, digits_test):
    cpu = ls.extract_features(ls.load_checkpoint(zoo_path("cnn-ce"), device="cpu"), digits_test)
    ck = ls.load_checkpoint(zoo_path("cnn-ce"), device="cuda")
    gpu = ls.extract_features(ck, digits_test, batch_size=100)
    hooked = ls.extract_features(ck, digits_test, layer="body.conv3", batch_size=100)
    np.testing.assert_allclose(gpu.x, cpu.x, rtol=1e-3, atol=1e-4)  # TF32/cuDNN differ in the last digits
    assert np.mean(gpu.pred == cpu.pred) > 0.99
    assert hooked.x.shape == (360, 512) and isinstance(hooked.x, np.ndarray)
    assert _all_hooks(ck.model) == 0
