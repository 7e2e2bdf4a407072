"""The CIFAR-scale zoo: parameter counts against the published figures, the features/head contract at every input shape.

Published figures are rounded to two or three significant digits, so a count matches when it
rounds to the same figure: it lies within half a unit of the figure's last digit (the tolerance
written next to each entry). Models are built on the meta device, so counting WRN-28-10's 36.5M
parameters allocates nothing.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from landscape import models
from landscape.errors import ArchitectureError, ArgumentError
from landscape.models.resnet import PadShortcut

NEW = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet20_noshort", "resnet32_noshort",
       "resnet44_noshort", "resnet56_noshort", "resnet110_noshort", "resnet18", "resnet34", "resnet50", "vgg9",
       "vgg11", "vgg16", "vgg19", "densenet121", "densenet_bc100", "wrn56_2", "wrn56_4", "wrn28_10", "wrn16_4",
       "resnet9", "vit_tiny"]


def count(name: str, **kwargs) -> int:
    with torch.device("meta"):
        model = models.build(name, input_shape=(3, 32, 32), num_classes=kwargs.pop("num_classes", 10), **kwargs)
    return sum(p.numel() for p in model.parameters())


# (name, arch_kwargs, published millions, tolerance in millions, source)
PUBLISHED = [
    ("resnet20", {"shortcut": "padding"}, 0.27, 0.005, "He et al. 2016, Table 6 (option A)"),
    ("resnet56", {"shortcut": "padding"}, 0.85, 0.005, "He et al. 2016, Table 6 (option A)"),
    ("resnet110", {"shortcut": "padding"}, 1.7, 0.05, "He et al. 2016, Table 6 (option A)"),
    ("resnet18", {}, 11.2, 0.05, "ResNet-18 with a CIFAR stem, as in Li et al.'s and kuangliu's code"),
    ("wrn28_10", {}, 36.5, 0.05, "Zagoruyko & Komodakis 2016, Table 3"),
    ("wrn16_4", {}, 2.7, 0.05, "Zagoruyko & Komodakis 2016, Table 3"),
    ("densenet_bc100", {}, 0.8, 0.05, "Huang et al. 2017, Table 2 (DenseNet-BC, L=100, k=12)"),
    ("resnet9", {}, 6.5, 0.1, "seed 003 ('ResNet9 (6.5M parameters)'), truncated to 6.5 there"),
]


@pytest.mark.parametrize("name,kwargs,millions,tol,source", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_parameter_counts_match_published(name, kwargs, millions, tol, source):
    n = count(name, **kwargs)
    assert abs(n / 1e6 - millions) <= tol, f"{name}: {n} parameters, published {millions}M ({source})"


def he_option_a(depth: int, classes: int = 10) -> int:
    """Hand count of He et al.'s CIFAR ResNet with parameter-free (option A) shortcuts."""
    n = (depth - 2) // 6
    widths = (16, 32, 64)
    total = 3 * 16 * 9 + 2 * 16  # stem conv + BN
    prev = 16
    for w in widths:
        for j in range(n):
            cin = prev if j == 0 else w
            total += cin * w * 9 + w * w * 9 + 4 * w
        prev = w
    return total + 64 * classes + classes


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_resnets_exact_counts(depth):
    """Option A equals the hand count; Li et al.'s projection shortcuts add exactly the two 1x1 conv-BN pairs."""
    a = he_option_a(depth)
    assert count(f"resnet{depth}", shortcut="padding") == a
    assert count(f"resnet{depth}_noshort") == a  # no shortcut and a parameter-free one cost the same
    projections = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert count(f"resnet{depth}") == a + projections


def test_other_counts_by_hand():
    # Li et al.'s VGG-9: convs with bias + BN, then fc 256 -> 256 + BN1d, classifier 256 -> 10
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
    vgg9 = sum(a * b * 9 + b + 2 * b for a, b in convs) + (256 * 16 * 256 + 256 + 512) + (256 * 10 + 10)
    assert count("vgg9") == vgg9
    # ViT: patch conv, class token, 65 positions, 12 blocks of (2 LN, qkv, proj, fc1, fc2), LN, head
    d = 192
    block = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 768 + 768) + (768 * d + d)
    assert count("vit_tiny") == (3 * 16 * d + d) + d + 65 * d + 12 * block + 2 * d + (d * 10 + 10)


@pytest.mark.parametrize("name", NEW)
def test_registered_with_contract(name):
    """Every new architecture is registered and exposes features(x) and a linear head of num_classes outputs."""
    assert name in models.names()
    with torch.device("meta"):
        m = models.build(name, input_shape=(3, 32, 32), num_classes=7)
    assert isinstance(m.head, nn.Linear) and m.head.out_features == 7
    assert models.split_head(m) is not None


# cheap members of each family, some shrunk through arch_kwargs (the layout is what is under test)
FAMILY = [("resnet20", {}), ("resnet20_noshort", {}), ("resnet18", {"widths": (8, 16, 16, 32)}),
          ("resnet50", {"widths": (4, 8, 8, 8)}), ("vgg9", {}), ("vgg11", {}),
          ("densenet_bc100", {"blocks": (2, 2, 2)}), ("densenet121", {"blocks": (1, 2, 1, 1), "growth": 8}),
          ("wrn16_4", {"width": 1}), ("wrn56_2", {"blocks": (1, 1, 1)}), ("resnet9", {"widths": (8, 8, 16, 16)}),
          ("vit_tiny", {"depth": 2, "dim": 48})]
SHAPES = [(3, 32, 32), (1, 28, 28), (1, 48, 48), (3, 16, 16)]


@pytest.mark.parametrize("name,kwargs", FAMILY, ids=[f[0] for f in FAMILY])
def test_any_input_shape(name, kwargs):
    """28x28x1 (MNIST), 48x48x1 (FER-2013), 32x32x3 and 16x16x3 inputs: logits are the head of the features."""
    torch.manual_seed(0)
    for shape in SHAPES:
        m = models.build(name, input_shape=shape, num_classes=5, **kwargs).eval()
        x = torch.randn(3, *shape)
        with torch.no_grad():
            f, out = m.features(x), m(x)
        assert f.shape == (3, m.head.in_features) and out.shape == (3, 5)
        torch.testing.assert_close(out, m.head(f), rtol=1e-5, atol=1e-6)
        assert float(out.std()) > 0  # not a constant map


def test_pad_shortcut_is_he_option_a():
    """Subsampled identity with zero channels split evenly front and back (8 + 8 for 16 -> 32 channels)."""
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(16, 32, 2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


def test_noshort_blocks_have_no_shortcut_and_resnet_blocks_add_it():
    plain = models.build("resnet20_noshort").eval()
    res = models.build("resnet20").eval()
    assert not any("shortcut" in k for k in plain.state_dict())
    assert set(plain.state_dict()) < set(res.state_dict())
    # with the residual branch zeroed (bn2 scale and shift 0), a shortcut block returns relu(x); a plain one zero
    for block in (res.layer1[1], plain.layer1[1]):
        nn.init.zeros_(block.bn2.weight)
        nn.init.zeros_(block.bn2.bias)
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(res.layer1[1](x), torch.relu(x))
    assert not plain.layer1[1](x).any()


def test_resnet9_logits_are_page_scaled():
    """Page's ResNet-9: logits = 0.125 x bias-free linear map of the globally max-pooled last stage."""
    torch.manual_seed(0)
    m = models.build("resnet9", input_shape=(3, 16, 16), widths=(8, 8, 8, 8)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = m.res3(m.layer3(m.layer2(m.res1(m.layer1(m.prep(x))))))
        ref = 0.125 * out.amax((2, 3)) @ m.head.weight.T
        torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-7)
    assert m.head.bias is None


def test_vit_attention_against_torch_multihead():
    """The written-out attention equals torch's nn.MultiheadAttention with the same weights."""
    from landscape.models.vit import Attention

    torch.manual_seed(0)
    att = Attention(12, 3).double()
    ref = nn.MultiheadAttention(12, 3, batch_first=True).double()
    with torch.no_grad():
        ref.in_proj_weight.copy_(att.qkv.weight)
        ref.in_proj_bias.copy_(att.qkv.bias)
        ref.out_proj.weight.copy_(att.proj.weight)
        ref.out_proj.bias.copy_(att.proj.bias)
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    expected, _ = ref(x, x, x, need_weights=False)
    torch.testing.assert_close(att(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,kwargs,msg", [
    ("vit_tiny", {"input_shape": (3, 30, 30)}, "whole number of 4x4 patches"),
    ("wrn16_4", {"depth": 15}, "6 n \\+ 4"),
    ("resnet9", {"input_shape": (3, 4, 4)}, "at least 8x8"),
    ("resnet20", {"input_shape": (64,)}, "channels, height, width"),
])
def test_bad_shapes_are_named(name, kwargs, msg):
    with pytest.raises(ArchitectureError, match=msg):
        models.build(name, **kwargs)


def test_bad_shortcut_is_a_choice():
    with pytest.raises(ArgumentError, match="shortcut='proj' is not one of the choices.*projection"):
        models.build("resnet20", shortcut="proj")
