"""Architecture registry and the zoo contract (features + linear head)."""
from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

import landscape as ls
from landscape import models
from landscape.errors import ArchitectureError


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet", "plain"])
def test_zoo_contract(arch):
    torch.manual_seed(0)
    m = models.build(arch, input_shape=(1, 8, 8), num_classes=7).eval()
    x = torch.randn(4, 1, 8, 8)
    f = m.features(x)
    assert isinstance(m.head, nn.Linear) and m.head.out_features == 7
    assert f.shape == (4, m.head.in_features)
    assert torch.allclose(m(x), m.head(f))
    assert any(isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)) for mod in m.modules())


def test_mlp_is_seed000_blocks():
    m = models.build("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(32, 16), dropout=0.3)
    kinds = [type(mod).__name__ for mod in m.body]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear", "BatchNorm1d", "ReLU", "Dropout"]


def test_resnet_and_plain_differ_only_in_shortcuts():
    r = models.build("resnet", input_shape=(3, 16, 16), num_classes=10)
    p = models.build("plain", input_shape=(3, 16, 16), num_classes=10)
    assert set(p.state_dict()) < set(r.state_dict())
    assert all("shortcut" in k for k in set(r.state_dict()) - set(p.state_dict()))
    # identity shortcut: a block whose convs output zero returns relu(x)
    block = models.Block(4, 4, 1, shortcut=True).eval()
    for conv in (block.conv1, block.conv2):
        nn.init.zeros_(conv.weight)
    x = torch.randn(2, 4, 5, 5)
    out = block(x)
    bn_shift = block.bn2.bias.detach().reshape(1, -1, 1, 1)  # zero at init
    assert torch.allclose(out, torch.relu(x + bn_shift), atol=1e-6)


def test_register_and_module_path(tmp_path, monkeypatch):
    @models.register("tiny-test-net")
    def tiny(input_shape=(1, 8, 8), num_classes=10, width=3):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes))

    assert "tiny-test-net" in models.names()
    assert models.build("tiny-test-net", input_shape=(1, 8, 8), num_classes=4, width=5)[3].out_features == 4

    (tmp_path / "user_arch.py").write_text(textwrap.dedent("""
        from torch import nn
        class Net(nn.Module):
            def __init__(self, num_classes=10, width=8):
                super().__init__()
                self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU())
                self.head = nn.Linear(width, num_classes)
            def features(self, x):
                return self.body(x)
            def forward(self, x):
                return self.head(self.features(x))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ArchitectureError, match="trust_code=True"):
        models.build("user_arch:Net", input_shape=(1, 8, 8), num_classes=3, width=4)
    net = models.build("user_arch:Net", input_shape=(1, 8, 8), num_classes=3, width=4, trust_code=True)
    assert net.head.out_features == 3
    # a user architecture saved and loaded through a checkpoint: only when the user opts in
    meta = {"arch": "user_arch:Net", "arch_kwargs": {"width": 4}, "num_classes": 3, "input_shape": [1, 8, 8]}
    path = ls.save_checkpoint(tmp_path / "u.safetensors", net, meta)
    with pytest.raises(ls.errors.CheckpointError, match="--trust-code"):
        ls.load_checkpoint(path)
    x = torch.randn(2, 1, 8, 8)
    for ck in (ls.load_checkpoint(path, trust_code=True), ls.load_checkpoint(path, arch="user_arch:Net")):
        assert torch.allclose(ck.model(x), net.eval()(x))
    sys.modules.pop("user_arch", None)


@pytest.mark.parametrize("name,msg", [("resnett", "Did you mean 'resnet'"), ("nosuchmodule_xyz:Net", "cannot import"),
                                      ("landscape.models:Nope", "has no attribute 'Nope'")])
def test_unknown_architectures(name, msg):
    with pytest.raises(ArchitectureError, match=msg):
        models.build(name, trust_code=True)


def test_bad_arch_kwargs():
    with pytest.raises(ArchitectureError, match="rejected its arguments"):
        models.build("mlp", input_shape=(1, 8, 8), num_classes=10, widht=3)
