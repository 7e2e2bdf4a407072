"""Grad-CAM II: transformers, models of any output shape, several layers at once, memory, mixed precision.

References: captum's LayerGradCam on a ViT whose token layer is laid on its grid by two explicit
modules (an independent reshape), the shipped cnn's own maps for models that only wrap it
(tuple/dict/``.logits`` outputs, a channels-last layer behind ``reshape=``), single-layer calls
for the multi-layer pass, and the float32 maps for bfloat16 autocast.
"""
from __future__ import annotations

import copy
import os
import tracemalloc
import types

import numpy as np
import pytest
import torch
from torch import nn

import landscape as ls
from landscape.errors import ArgumentError, LandscapeError
from landscape.gradcam import gradcam, token_grid, tokens_to_grid
from landscape.models.vit import VisionTransformer


@pytest.fixture(scope="module")
def images(digits_test):
    return digits_test.subset(48, seed=0)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = VisionTransformer(input_shape=(3, 16, 16), num_classes=4, patch=4, dim=32, depth=2, heads=2, mlp=64)
    return model.eval()


@pytest.fixture(scope="module")
def vit_images():
    return torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))


# -- transformers ---------------------------------------------------------------------------------
class _ToGrid(nn.Module):
    """(N, 1 + h*w, D) -> (N, D, h, w), keeping the class token for :class:`_FromGrid`."""

    def forward(self, tokens):
        self.cls = tokens[:, :1]
        n, t, d = tokens.shape
        side = int(round((t - 1) ** 0.5))
        return tokens[:, 1:].transpose(1, 2).reshape(n, d, side, side)

    def back(self, grid):
        return torch.cat([self.cls, grid.flatten(2).transpose(1, 2)], 1)


class _FromGrid(nn.Module):
    def __init__(self, to_grid):
        super().__init__()
        self.to_grid = [to_grid]  # not a submodule

    def forward(self, grid):
        return self.to_grid[0].back(grid)


def test_vit_gradcam_matches_captum_on_an_explicit_grid(vit, vit_images):
    from captum.attr import LayerGradCam

    cam = gradcam(vit, vit_images)
    assert cam.meta["layer"] == "blocks.1.norm1"  # the input of the last attention
    assert cam.meta["reshape"] == "tokens to grid" and cam.meta["layer_shape"] == [4, 4]
    wrapped = copy.deepcopy(vit)
    to_grid = _ToGrid()
    wrapped.blocks[1].norm1 = nn.Sequential(wrapped.blocks[1].norm1, to_grid, _FromGrid(to_grid))
    ref = LayerGradCam(wrapped, to_grid).attribute(vit_images, target=torch.as_tensor(cam.target),
                                                   relu_attributions=True).detach()[:, 0]
    assert ref.abs().max() > 1e-3  # not two zero maps
    np.testing.assert_allclose(cam.raw, ref.numpy(), atol=1e-6, rtol=1e-4)


def test_vit_tiny_of_the_zoo_defaults_to_its_last_attention_input():
    torch.manual_seed(0)
    model = ls.models.build("vit_tiny", input_shape=(3, 32, 32), num_classes=10).eval()
    cam = gradcam(model, torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert cam.meta["layer"] == "blocks.11.norm1" and cam.meta["layer_shape"] == [8, 8]
    assert (cam.maps.reshape(2, -1).max(1) == pytest.approx(1.0, abs=1e-6))


def test_last_block_output_has_no_patch_gradient(vit, vit_images):
    # only the class token reaches the head after the last block: why the default stops before it
    cam = gradcam(vit, vit_images, target_layer="blocks.1")
    assert np.abs(cam.raw).max() == 0 and np.isfinite(cam.maps).all()


def test_reshape_hook_equals_default_and_is_checked(vit, vit_images):
    default = gradcam(vit, vit_images, target_layer="blocks.0")
    custom = gradcam(vit, vit_images, target_layer="blocks.0",
                     reshape=lambda a: a[:, 1:].reshape(len(a), 4, 4, a.shape[2]).permute(0, 3, 1, 2))
    np.testing.assert_allclose(custom.raw, default.raw, atol=1e-7)
    assert custom.meta["reshape"] == "custom"
    with pytest.raises(ArgumentError, match="reshape= returned"):
        gradcam(vit, vit_images, target_layer="blocks.0", reshape=lambda a: a)
    with pytest.raises(ArgumentError, match="reshape must be a function"):
        gradcam(vit, vit_images, reshape=3)


class ChannelsLast(nn.Module):
    """The shipped cnn with its last block's output passed through a channels-last layout (Swin style)."""

    def __init__(self, cnn):
        super().__init__()
        self.cnn = cnn
        self.nhwc = nn.Identity()

    def forward(self, x):
        handle = self.cnn.body.relu3.register_forward_hook(
            lambda m, i, o: self.nhwc(o.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        try:
            return self.cnn(x)
        finally:
            handle.remove()


def test_reshape_hook_reads_a_channels_last_layer(cnn, images):
    x, _ = cnn.prepare(images)
    ref = gradcam(cnn.model, x, target_layer="body.relu3")
    got = gradcam(ChannelsLast(cnn.model), x, target_layer="nhwc", reshape=lambda a: a.permute(0, 3, 1, 2))
    np.testing.assert_allclose(got.raw, ref.raw, atol=1e-6)


@pytest.mark.parametrize("tokens, size, expected", [(65, (32, 32), (1, 8, 8)), (64, (32, 32), (0, 8, 8)),
                                                    (33, (16, 32), (1, 4, 8)), (66, (32, 32), (2, 8, 8)),
                                                    (40, (32, 32), None)])
def test_token_grid(tokens, size, expected):
    assert token_grid(tokens, size) == expected


def test_tokens_to_grid_lays_patches_row_by_row():
    tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)  # class token + 2x3 grid
    grid = tokens_to_grid(tokens, (20, 30))
    assert grid.shape == (2, 3, 2, 3)
    assert grid[1, 2, 1, 0] == tokens[1, 1 + 3, 2]  # row 1, column 0 is patch 3
    with pytest.raises(ArgumentError, match="reshape="):
        tokens_to_grid(torch.zeros(1, 40, 3), (32, 32))


# -- any output ------------------------------------------------------------------------------------
class Wrapped(nn.Module):
    def __init__(self, model, kind):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x):
        logits = self.model(x)
        if self.kind == "tuple":
            return torch.zeros(len(x)), logits
        if self.kind == "dict":
            return {"aux": logits * 0, "logits": logits}
        return types.SimpleNamespace(logits=logits, hidden=None)


@pytest.mark.parametrize("kind, output", [("tuple", 1), ("dict", None), ("dict", "logits"), ("object", None)])
@pytest.mark.parametrize("method", ["gradcam++", "guided-gradcam"])
def test_any_output_gives_the_plain_models_maps(cnn, images, kind, output, method):
    x, _ = cnn.prepare(images)
    ref = gradcam(cnn.model, x, target_layer="body.relu3", method=method)
    model = Wrapped(cnn.model, kind)
    got = gradcam(model, x, target_layer="model.body.relu3", method=method, output=output)
    np.testing.assert_allclose(got.maps, ref.maps, atol=1e-6)
    if method == "guided-gradcam":
        np.testing.assert_allclose(got.guided, ref.guided, atol=1e-6)
    np.testing.assert_array_equal(got.pred, ref.pred)
    ls.objective.set_output(model, None)


def test_tuple_output_without_adapter_asks_for_output(cnn, images):
    x, _ = cnn.prepare(images)
    with pytest.raises(LandscapeError, match="output="):
        gradcam(Wrapped(cnn.model, "tuple"), x, target_layer="model.body.relu3")


# -- several layers at once ----------------------------------------------------------------------------
def test_several_layers_in_one_pass_equal_single_calls(cnn, images):
    calls = []
    handle = cnn.model.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        cams = gradcam(cnn, images, target_layer=["body.relu2", cnn.model.body.relu3], method="gradcam++")
    finally:
        handle.remove()
    assert list(cams) == ["body.relu2", "body.relu3"] and len(calls) == 1  # one forward (and one backward)
    for name, cam in cams.items():
        single = gradcam(cnn, images, target_layer=name, method="gradcam++")
        np.testing.assert_allclose(cam.maps, single.maps, atol=1e-6)
        assert cam.meta["layer"] == name and cam.meta["layer_shape"] == single.meta["layer_shape"]


def test_layer_patterns(cnn, images, vit, vit_images):
    cams = gradcam(cnn, images, target_layer="body.relu*")
    assert list(cams) == ["body.relu1", "body.relu2", "body.relu3"]
    assert [c.meta["layer_shape"] for c in cams.values()] == [[8, 8], [8, 8], [4, 4]]
    assert list(gradcam(vit, vit_images, target_layer="blocks.*.norm1")) == ["blocks.0.norm1", "blocks.1.norm1"]
    with pytest.raises(ArgumentError, match="matches no module"):
        gradcam(cnn, images, target_layer="blocks.*")
    with pytest.raises(ArgumentError, match="empty list"):
        gradcam(cnn, images, target_layer=[])


# -- memory ------------------------------------------------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc for the resident set size")
def test_fifty_calls_do_not_grow_memory(cnn, images):
    methods = ("gradcam", "gradcam++", "guided-gradcam")
    for i in range(3):  # warm-up: lazily created caches are not a leak
        gradcam(cnn, images, method=methods[i % 3])
    python_peaks, rss = [], []
    tracemalloc.start()
    try:
        for i in range(50):
            tracemalloc.reset_peak()
            gradcam(cnn, images, method=methods[i % 3], target_layer=["body.relu2", "body.relu3"])
            python_peaks.append(tracemalloc.get_traced_memory()[1])
            rss.append(_rss())
    finally:
        tracemalloc.stop()
    # one call holds ~0.5 MB of activations and gradients: a retained graph would add that per call
    assert max(python_peaks[-10:]) <= max(python_peaks[:10]) + 64 * 1024
    assert max(rss[-10:]) <= max(rss[:10]) + 4 * 2 ** 20
    assert all(p.grad is None for p in cnn.model.parameters())


@pytest.mark.gpu
def test_fifty_cuda_calls_do_not_grow_peak_memory(zoo_path, images):
    ck = ls.load_checkpoint(zoo_path("cnn-ce"), device="cuda")
    peaks = []
    for i in range(53):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gradcam(ck, images, method=("gradcam", "gradcam++", "guided-gradcam")[i % 3], dtype=torch.bfloat16)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated())
    peaks = peaks[3:]
    assert max(peaks[-10:]) <= max(peaks[:10])


# -- mixed precision -------------------------------------------------------------------------------------
def _conv_output_dtypes(model):
    """Forward hooks recording the output dtype of every convolution's last call, by name; returns (dtypes, handles)."""
    dtypes = {}

    def record(name):
        def hook(module, inputs, output):  # the last call's (the layer search runs a float32 pass first)
            dtypes[name] = output.dtype  # and no return value, so the output is kept
        return hook
    handles = [m.register_forward_hook(record(name)) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return dtypes, handles


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "guided-gradcam"])
def test_bfloat16_autocast_maps_close_to_float32(cnn, digits_test, method):
    ref = gradcam(cnn, digits_test, method=method)
    dtypes, handles = _conv_output_dtypes(cnn.model)
    try:
        got = gradcam(cnn, digits_test, method=method, dtype=torch.bfloat16)
    finally:
        for h in handles:
            h.remove()
    assert got.meta["dtype"] == "bfloat16" and ref.meta["dtype"] == "float32"
    # the input layer runs at full precision, the convolutions after it (98 % of the work) in bfloat16
    assert dtypes == {"body.conv1": torch.float32, "body.conv2": torch.bfloat16, "body.conv3": torch.bfloat16}
    np.testing.assert_array_equal(got.pred, ref.pred)
    err = np.abs(got.maps - ref.maps).reshape(len(ref.maps), -1).max(1)
    assert err.max() > 0  # autocast really ran in bfloat16
    # measured on the 360 test digits: at most 0.0077 (Grad-CAM), 0.0053 (Grad-CAM++)
    assert err.max() <= 1e-2 and np.median(err) <= 5e-3
    same = gradcam(cnn, digits_test, method=method, dtype="bfloat16")
    np.testing.assert_array_equal(same.maps, got.maps)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in cnn.model.modules())


def test_bad_dtype(cnn, images):
    with pytest.raises(ArgumentError, match="dtype"):
        gradcam(cnn, images, dtype=torch.int8)
