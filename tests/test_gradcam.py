"""Grad-CAM, Grad-CAM++, guided backpropagation and Guided Grad-CAM (landscape.gradcam).

References: captum (LayerGradCam, GuidedBackprop, GuidedGradCam) on the shipped zoo ``cnn``,
and numbers worked out by hand on a tiny net whose class scores are simple enough to
differentiate on paper.
"""
from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

import landscape as ls
from landscape.errors import ArgumentError
from landscape.gradcam import CAM, gradcam

METHODS = ("gradcam", "gradcam++", "guided-backprop", "guided-gradcam")


@pytest.fixture(scope="module")
def images(digits_test):
    return digits_test.subset(48, seed=0)


def captum_quiet():
    """captum warns about the hooks it sets; the warnings are not ours."""
    return warnings.catch_warnings(action="ignore", category=UserWarning)


# -- cross-checks against captum on the zoo cnn ------------------------------------------------
def test_gradcam_matches_captum_layer_gradcam(cnn, images):
    from captum.attr import LayerAttribution, LayerGradCam

    cam = gradcam(cnn, images)
    x, _ = cnn.prepare(images)
    target = torch.as_tensor(cam.target)
    ref = LayerGradCam(cnn.model, cnn.model.body.relu3).attribute(x, target=target, relu_attributions=True).detach()
    np.testing.assert_allclose(cam.raw, ref[:, 0].numpy(), atol=1e-5, rtol=0)
    up = LayerAttribution.interpolate(ref, (8, 8), "bilinear")[:, 0]
    up = up / up.flatten(1).amax(1)[:, None, None]
    np.testing.assert_allclose(cam.maps, up.numpy(), atol=1e-5, rtol=0)
    assert cam.meta["layer"] == "body.relu3" and cam.meta["layer_shape"] == [4, 4]


def test_guided_backprop_matches_captum(cnn, images):
    from captum.attr import GuidedBackprop

    cam = gradcam(cnn, images, method="guided-backprop")
    x, _ = cnn.prepare(images)
    with captum_quiet():
        ref = GuidedBackprop(cnn.model).attribute(x.clone(), target=torch.as_tensor(cam.target)).detach()
    np.testing.assert_allclose(cam.guided, ref.numpy(), atol=1e-6, rtol=0)
    assert np.abs(ref.numpy()).max() > 0.1  # the comparison is not between two zero arrays


def test_guided_gradcam_matches_captum(cnn, images):
    from captum.attr import GuidedGradCam, LayerAttribution, LayerGradCam

    cam = gradcam(cnn, images, method="guided-gradcam", target=3)
    x, _ = cnn.prepare(images)
    target = torch.full((len(x),), 3)
    with captum_quiet():
        ref = GuidedGradCam(cnn.model, cnn.model.body.relu3).attribute(
            x.clone(), target=target, interpolate_mode="bilinear").detach()
    # captum multiplies by the unscaled map; ours is scaled by each map's maximum
    raw = LayerGradCam(cnn.model, cnn.model.body.relu3).attribute(x, target=target, relu_attributions=True)
    peak = LayerAttribution.interpolate(raw, (8, 8), "bilinear").flatten(1).amax(1).detach()
    keep = peak > 0
    np.testing.assert_allclose(cam.guided[keep.numpy()], (ref[keep] / peak[keep, None, None, None]).numpy(),
                               atol=1e-5, rtol=0)
    assert (cam.target == 3).all()


# -- hand-computed numbers on a tiny net ---------------------------------------------------------
class Tiny(nn.Module):
    """1x1 conv to channels (x, -x), ReLU, global average pool, linear head without bias.

    With ``relu="inplace"`` the ReLU works in place; with ``"functional"`` it is ``torch.relu``.
    """

    W = [[1.0, 2.0], [-1.0, 0.5], [0.0, 1.0]]

    def __init__(self, relu: str = "module"):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.relu = nn.ReLU(inplace=(relu == "inplace"))
        self.functional = relu == "functional"
        self.head = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
            self.head.weight.copy_(torch.tensor(self.W))

    def forward(self, x):
        a = self.conv(x)
        a = torch.relu(a) if self.functional else self.relu(a)
        return self.head(a.mean(dim=(2, 3)))


X = torch.tensor([[1.0, -2.0, 4.0], [3.0, -1.0, 2.0], [0.0, 0.0, -3.0]]).reshape(1, 1, 3, 3)
NEG = np.array([[0, 2, 0], [0, 1, 0], [0, 0, 3]], dtype=np.float64)  # -x where x < 0, else 0


def test_tiny_net_logits_by_hand():
    # features: mean ReLU(x) = 10/9, mean ReLU(-x) = 6/9
    logits = Tiny()(X).detach().numpy()[0]
    np.testing.assert_allclose(logits, [22 / 9, -7 / 9, 6 / 9], rtol=1e-6)


def test_gradcam_by_hand():
    # Class 0: dS/dA_1 = 1/9 at the 4 positive pixels, dS/dA_2 = 2/9 at the 3 negative ones,
    # so w = (4/81, 6/81) and the map is ReLU(4/81 x - 6/81 x) = ReLU(-2x/81).
    cam = gradcam(Tiny(), X, target_layer="conv")
    assert cam.pred.tolist() == [0] and cam.target.tolist() == [0]
    np.testing.assert_allclose(cam.raw[0], 2 * NEG / 81, atol=1e-7)
    np.testing.assert_allclose(cam.maps[0], NEG / 3, atol=1e-6)  # divided by the maximum 6/81
    # Class 1: w = (-1/9 * 4/9, 0.5/9 * 3/9) = (-4/81, 1.5/81): ReLU(-5.5 x / 81)
    cam1 = gradcam(Tiny(), X, target_layer="conv", target=1)
    np.testing.assert_allclose(cam1.raw[0], 5.5 * NEG / 81, atol=1e-7)
    np.testing.assert_allclose(cam1.confidence, [np.exp(22 / 9) / np.exp([22 / 9, -7 / 9, 6 / 9]).sum()], rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(x=arrays(np.float32, (1, 1, 3, 3), elements=st.floats(-4, 4, width=32)), target=st.integers(0, 2))
def test_gradcam_closed_form_on_random_images(x, target):
    # For class c with head row (w1, w2): dS/dA_1 = w1/9 where x > 0 and dS/dA_2 = w2/9 where x < 0,
    # so the weights are (w1 p/81, w2 q/81) with p, q the numbers of positive and negative pixels
    # and the map is ReLU(x (w1 p - w2 q) / 81).
    w1, w2 = Tiny.W[target]
    p, q = (x > 0).sum(), (x < 0).sum()
    expected = np.maximum(x[0, 0].astype(np.float64) * (w1 * p - w2 * q) / 81, 0)
    cam = gradcam(Tiny(), x, target_layer="conv", target=target)
    np.testing.assert_allclose(cam.raw[0], expected, atol=1e-6)
    peak = expected.max()
    if peak > 1e-30:
        np.testing.assert_allclose(cam.maps[0], expected / peak, atol=1e-5)
    else:  # a map below float32's range underflows to zero (x of 1e-45 say) and stays an all-zero map
        assert np.all((cam.maps[0] == 0) | np.isclose(cam.maps[0], expected / max(peak, 1e-300), atol=1e-5))


def test_gradcam_plus_plus_by_hand():
    # Class 0, channel 1: g = 1/9, sum A_1 = sum x = 4, a = g^2 / (2 g^2 + 4 g^3) = 9/22,
    #   w_1 = 4 pixels * 1/9 * 9/22 = 2/11.
    # Channel 2: g = 2/9, sum A_2 = -4, a = 1 / (2 - 8/9) = 9/10, w_2 = 3 * 2/9 * 9/10 = 3/5.
    # Map: ReLU(2/11 x - 3/5 x) = ReLU(-23 x / 55).
    cam = gradcam(Tiny(), X, target_layer="conv", method="gradcam++")
    np.testing.assert_allclose(cam.raw[0], 23 * NEG / 55, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cam.maps[0], NEG / 3, atol=1e-6)


def test_guided_backprop_by_hand():
    # Class 1: the gradient reaching ReLU_1 is -1/9 (negative: guided backprop drops it), the one
    # reaching ReLU_2 is 0.5/9 (kept) and flows back through -x: -1/18 at the negative pixels.
    cam = gradcam(Tiny(), X, method="guided-backprop", target=1)
    np.testing.assert_allclose(cam.guided[0, 0], -(NEG > 0).astype(float) / 18, atol=1e-7)
    np.testing.assert_allclose(cam.maps[0], (NEG > 0).astype(float), atol=1e-7)
    # Plain backprop differs: -1/9 at the positive pixels too.
    x = X.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(Tiny()(x)[0, 1], x)
    assert plain[0, 0, 0, 0] == pytest.approx(-1 / 9)
    # Class 0: both gradients reaching the ReLUs are positive, so guided equals plain backprop.
    cam0 = gradcam(Tiny(), X, method="guided-backprop", target=0)
    x = X.clone().requires_grad_(True)
    (plain0,) = torch.autograd.grad(Tiny()(x)[0, 0], x)
    np.testing.assert_allclose(cam0.guided, plain0.numpy(), atol=1e-7)


@pytest.mark.parametrize("relu", ["inplace", "functional"])
@pytest.mark.parametrize("method", METHODS)
def test_inplace_and_functional_relu_give_the_same_maps(relu, method):
    ref = gradcam(Tiny("module"), X, target_layer="conv", method=method, target=1)
    got = gradcam(Tiny(relu), X, target_layer="conv", method=method, target=1)
    np.testing.assert_allclose(got.maps, ref.maps, atol=1e-7)
    if ref.raw is not None:
        np.testing.assert_allclose(got.raw, ref.raw, atol=1e-7)
    if ref.guided is not None:
        np.testing.assert_allclose(got.guided, ref.guided, atol=1e-7)


def test_float64_model_and_inference_mode_caller():
    ref = gradcam(Tiny(), X, target_layer="conv", method="guided-gradcam", target=1)
    model = Tiny().double()
    with torch.inference_mode():
        got = gradcam(model, X.double(), target_layer="conv", method="guided-gradcam", target=1)
    assert got.raw.dtype == np.float64
    np.testing.assert_allclose(got.raw[0], 5.5 * NEG / 81, atol=1e-12)
    np.testing.assert_allclose(got.guided, ref.guided, atol=1e-7)


def test_layer_that_does_not_run_is_refused():
    model = Tiny()
    model.unused = nn.Conv2d(1, 1, 1)
    with pytest.raises(ArgumentError, match="did not run"):
        gradcam(model, X, target_layer="unused")


def test_all_zero_map_stays_zero_without_nan():
    # x > 0 everywhere: channel 2 is dead, and class 1 weighs channel 1 negatively, so the map is 0.
    cam = gradcam(Tiny(), torch.full((1, 1, 3, 3), 0.5), target_layer="conv", target=1)
    assert np.isfinite(cam.maps).all()
    assert (cam.raw == 0).all() and (cam.maps == 0).all()


# -- the model is left exactly as it was ---------------------------------------------------------
def _tensor_count() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def test_no_hooks_no_gradients_no_growth_after_100_calls(cnn, images):
    model = cnn.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    subset = images.subset(8, seed=1)
    for i in range(5):  # warm-up: lazily created caches are not a leak
        gradcam(cnn, subset, method=METHODS[i % 4])
    count = _tensor_count()
    for i in range(100):
        gradcam(cnn, subset, method=METHODS[i % 4])
    assert _tensor_count() <= count
    assert _hooks(model) == 0
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training


def test_training_flags_restored_and_maps_computed_in_eval_mode(cnn, images):
    subset = images.subset(6, seed=2)
    expected = gradcam(cnn, subset, method="guided-gradcam")
    cnn.model.train()
    try:
        got = gradcam(cnn, subset, method="guided-gradcam")
        assert all(m.training for m in cnn.model.modules())
    finally:
        cnn.model.eval()
    np.testing.assert_allclose(got.maps, expected.maps, atol=1e-6)
    np.testing.assert_allclose(got.guided, expected.guided, atol=1e-6)


# -- inputs, targets, layers ------------------------------------------------------------------------
def test_dataset_array_tensor_and_plain_module_agree(cnn, images):
    ref = gradcam(cnn, images)
    assert ref.labels is not None and ref.labels.tolist() == images.y.tolist()
    for imgs in (images.x, torch.as_tensor(images.x)):
        got = gradcam(cnn, imgs)
        np.testing.assert_array_equal(got.maps, ref.maps)
        assert got.labels is None
    x, _ = cnn.prepare(images)  # a plain module gets images as they are: normalise them first
    plain = gradcam(cnn.model, x)
    np.testing.assert_allclose(plain.maps, ref.maps, atol=1e-6)
    np.testing.assert_array_equal(ref.images, images.x)


def test_predictions_confidence_and_explicit_targets(cnn, images):
    cam = gradcam(cnn, images, batch_size=7)
    x, _ = cnn.prepare(images)
    with torch.no_grad():
        probs = torch.softmax(cnn.model(x), 1).numpy()
    np.testing.assert_array_equal(cam.pred, probs.argmax(1))
    np.testing.assert_allclose(cam.confidence, probs.max(1), rtol=1e-5)
    np.testing.assert_array_equal(cam.target, cam.pred)
    assert (cam.pred == images.y).mean() > 0.9
    whole = gradcam(cnn, images)  # batching does not change anything
    np.testing.assert_allclose(cam.maps, whole.maps, atol=1e-6)
    per_image = np.arange(len(images)) % 10
    explicit = gradcam(cnn, images, target=per_image)
    np.testing.assert_array_equal(explicit.target, per_image)
    np.testing.assert_array_equal(explicit.pred, cam.pred)
    assert not np.allclose(explicit.maps, cam.maps)
    assert 0 <= explicit.maps.min() and explicit.maps.max() <= 1


def test_default_layer_is_the_last_blocks_rectified_output(cnn, zoo_path, digits_test):
    # Selvaraju et al. and seed 002 take the last conv block after its batchnorm and ReLU
    model = cnn.model
    order = []
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: order.append(n)) for n, m in model.named_modules() if n]
    model(torch.zeros(1, 1, 8, 8))
    for h in hooks:
        h.remove()
    last_conv = max(i for i, n in enumerate(order) if isinstance(model.get_submodule(n), nn.Conv2d))
    relus = [n for n in order[last_conv:] if isinstance(model.get_submodule(n), nn.ReLU)]
    cam = gradcam(cnn, digits_test.subset(4, seed=0))
    assert cam.meta["layer"] == relus[-1] == "body.relu3"
    # the residual nets end their last block in a functional ReLU: the block itself is the layer
    resnet = ls.load_checkpoint(zoo_path("resnet-ce"), device="cpu")
    assert gradcam(resnet, digits_test.subset(4, seed=0)).meta["layer"] == "stages.3"
    # Grad-CAM++ at the raw convolution gives all-zero maps for some digits; at the rectified output none
    at_conv = gradcam(cnn, digits_test, target_layer="body.conv3", method="gradcam++")
    default = gradcam(cnn, digits_test, method="gradcam++")
    peak = lambda c: c.maps.reshape(len(c.maps), -1).max(1)  # noqa: E731
    assert (peak(at_conv) == 0).sum() >= 1
    assert (peak(default) > 0).all()


def test_layer_by_module_and_by_name_agree(cnn, images):
    a = gradcam(cnn, images, target_layer="body.conv2")
    b = gradcam(cnn, images, target_layer=cnn.model.body.conv2)
    np.testing.assert_array_equal(a.maps, b.maps)
    assert a.meta["layer"] == b.meta["layer"] == "body.conv2" and a.meta["layer_shape"] == [8, 8]


def test_unknown_layer_lists_the_convolutional_layers(cnn, images):
    with pytest.raises(ArgumentError, match="body.conv3") as err:
        gradcam(cnn, images, target_layer="body.conv4")
    assert "body.conv1" in str(err.value) and "body.conv2" in str(err.value)
    assert "Did you mean 'body.conv3'" in str(err.value)


def test_model_without_convolution_gets_a_clear_error(zoo_path, images):
    mlp = ls.load_checkpoint(zoo_path("mlp-ce"), device="cpu")
    with pytest.raises(ArgumentError, match="no convolutional layer"):
        gradcam(mlp, images)
    with pytest.raises(ArgumentError, match=r"not a \(N, C, H, W\) feature map"):
        gradcam(mlp, images, target_layer="body.1")
    guided = gradcam(mlp, images, method="guided-backprop")  # needs no layer
    assert guided.guided.shape == images.x.shape


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "gradcam+"}, "Did you mean 'gradcam\\+\\+'"),
    ({"target": 10}, r"\[0, 9\]"),
    ({"target": [1, 2]}, "2 entries for 48 images"),
    ({"target": 1.5}, "integers"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_arguments(cnn, images, kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        gradcam(cnn, images, **kwargs)


def test_bad_image_shapes(cnn, images):
    with pytest.raises(ArgumentError, match="x\\[None\\]"):
        gradcam(cnn, images.x[0])
    with pytest.raises(ArgumentError, match="expects"):
        gradcam(cnn, np.zeros((2, 1, 6, 6), np.float32))


# -- results ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["gradcam", "guided-gradcam"])
def test_save_load_round_trip(cnn, images, tmp_path, method):
    cam = gradcam(cnn, images.subset(5, seed=0), method=method)
    back = CAM.load(cam.save(tmp_path / "cam"))
    np.testing.assert_array_equal(back.maps, cam.maps)
    np.testing.assert_array_equal(back.pred, cam.pred)
    assert (back.guided is None) == (cam.guided is None)
    assert back.meta == cam.meta and back.classes == cam.classes
    assert "maps" in repr(back) and len(repr(back)) < 2000


def test_same_input_same_result(cnn, images):
    a, b = gradcam(cnn, images, method="gradcam++"), gradcam(cnn, images, method="gradcam++")
    np.testing.assert_array_equal(a.maps, b.maps)


@pytest.mark.gpu
def test_cuda_matches_cpu_and_does_not_grow(zoo_path, images):
    ck = ls.load_checkpoint(zoo_path("cnn-ce"), device="cuda")
    cpu = gradcam(ls.load_checkpoint(zoo_path("cnn-ce"), device="cpu"), images, method="guided-gradcam")
    gpu = gradcam(ck, images, method="guided-gradcam")
    assert gpu.meta["device"].startswith("cuda")
    np.testing.assert_allclose(gpu.maps, cpu.maps, atol=1e-4)
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    for _ in range(50):
        gradcam(ck, images, method="guided-gradcam")
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= start
