"""Li et al.'s ``.t7`` checkpoints load into the zoo and give the logits THEIR model classes give.

The fixtures ``tests/fixtures/li2018/<arch>.json`` hold, for each architecture of Li et al.'s
zoo that ours has, what their code says about it: the parameter and buffer names and shapes of
their model's ``state_dict()`` (in their order) and the float64 logits their model computed for
two fixed inputs with weights from the deterministic rule :func:`rule_state` below. They were
produced once, outside this project, by a script that

1. took ``cifar10/models/{resnet,vgg,densenet}.py`` from github.com/tomgoldstein/loss-landscape
   at commit 64ef4d57f8dabe79b57a637819c44e48eda98f33 (their code is not part of this project);
2. built each model with their constructor (``resnet.ResNet56()``, ``vgg.VGG9()``,
   ``densenet.DenseNet121()``, ...), took the names and shapes of ``net.state_dict()``;
3. filled it with :func:`rule_state` (imported from this module), rounded to float32 as their
   ``.t7`` files store it, loaded it with ``net.load_state_dict``, converted the net with
   ``net.double().eval()`` and wrote ``net(rule_inputs())`` to the fixture.

The tests write the same weights as their training script does (``torch.save({"acc", "epoch",
"state_dict"}, "model_300.t7")``, with and without DataParallel's ``module.`` prefix, in the zip
and the legacy format, without the batchnorm step counters of PyTorch < 0.4.1), load them with
:func:`landscape.load_checkpoint` and compare the logits with theirs, in float64.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

import landscape as ls
from landscape.checkpoint import LI2018, LI2018_ZOO
from landscape.errors import CheckpointError
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "li2018"
GOLDEN = 2654435761  # Knuth's multiplicative hash constant, ~ 2^32 / golden ratio
MIX = 0x45D9F3B  # the multiplier of T. Mueller's 32-bit integer hash


def rule_uniform(numel: int, k: int) -> torch.Tensor:
    """``numel`` float64 values in [-0.5, 0.5) for tensor number ``k``, from an integer hash (exact in int64).

    ``x = (i + 7919 k) * 2654435761 mod 2^32`` for ``i = 0 .. numel - 1``, then twice
    ``x = ((x >> 16) ^ x) * 0x45d9f3b mod 2^32``, then ``x = (x >> 16) ^ x``; the value is
    ``x / 2^32 - 0.5``. (Every product stays below 2^63.)
    """
    x = ((torch.arange(numel, dtype=torch.int64) + 7919 * k) * GOLDEN) % 2 ** 32
    for _ in range(2):
        x = (((x >> 16) ^ x) * MIX) % 2 ** 32
    x = (x >> 16) ^ x
    return x.to(torch.float64) / 2 ** 32 - 0.5


def rule_tensor(name: str, shape: list[int], k: int) -> torch.Tensor:
    """The fixture value of tensor number ``k`` (its position in the state dict) called ``name``.

    Weights of convolutions and linear layers: He-scaled uniform (std ``sqrt(2 / fan_in)``);
    batchnorm scales ``1 + 0.2 u``, biases and shifts ``0.1 u``, running means ``0.2 u``,
    running variances ``1 + 0.5 u`` (in [0.75, 1.25)); step counters 0.
    """
    numel = 1
    for s in shape:
        numel *= s
    if name.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    u = rule_uniform(numel, k).reshape(shape)
    if name.endswith("running_var"):
        return 1 + 0.5 * u
    if name.endswith("running_mean"):
        return 0.2 * u
    if name.endswith("bias"):
        return 0.1 * u
    if len(shape) == 1:  # batchnorm scale
        return 1 + 0.2 * u
    return u * (12 ** 0.5) * (2 / (numel / shape[0])) ** 0.5


def rule_state(keys: list[tuple[str, list[int]]]) -> "OrderedDict[str, torch.Tensor]":
    """The fixture state dict for ``(name, shape)`` pairs, float tensors rounded to float32 as in a ``.t7`` file."""
    out = OrderedDict()
    for k, (name, shape) in enumerate(keys):
        t = rule_tensor(name, list(shape), k)
        out[name] = t.float() if t.is_floating_point() else t
    return out


def rule_inputs(n: int = 2) -> torch.Tensor:
    """``n`` float64 CIFAR-shaped inputs ``(n, 3, 32, 32)`` of unit variance: the rule with ``k = 10**6``."""
    return rule_uniform(n * 3 * 32 * 32, 10 ** 6).reshape(n, 3, 32, 32) * 12 ** 0.5


def fixture(arch: str) -> dict:
    return json.loads((FIXTURES / f"{arch}.json").read_text())


def save_t7(path: Path, state: dict, prefix: str = "", legacy: bool = False) -> Path:
    """Write ``state`` the way Li et al.'s cifar10/main.py does (``{"acc", "epoch", "state_dict"}``)."""
    obj = {"acc": 93.27, "epoch": 300, "state_dict": OrderedDict((prefix + k, v) for k, v in state.items())}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def logits64(ck: ls.Checkpoint) -> torch.Tensor:
    model = ck.model.double()
    with torch.no_grad():
        return model(rule_inputs())


BIG = {"resnet50", "resnet34", "vgg16", "vgg19", "wrn56_4", "densenet121", "resnet18", "resnet110",
       "resnet110_noshort"}
PARAMS = [pytest.param(a, marks=pytest.mark.slow) if a in BIG else a for a in LI2018_ZOO]


def test_a_fixture_for_every_architecture_of_their_zoo_that_ours_has():
    assert sorted(p.stem for p in FIXTURES.glob("*.json")) == sorted(LI2018_ZOO)
    assert all(p.stat().st_size < 200_000 for p in FIXTURES.glob("*.json"))


@pytest.mark.parametrize("arch", PARAMS)
def test_their_file_gives_their_logits(tmp_path, arch):
    fx = fixture(arch)
    keys = [(k, s) for k, s in fx["keys"]]
    expected = torch.tensor(fx["logits"], dtype=torch.float64)
    # the reference is informative: the logits differ between the two inputs and across classes
    assert float(expected.std(dim=1).min()) > 1e-6 * float(expected.abs().max())
    assert not torch.allclose(expected[0], expected[1])
    state = rule_state(keys)
    path = save_t7(tmp_path / "model_300.t7", state, prefix="module.")  # trained on several GPUs
    ck = ls.load_checkpoint(path, arch=arch, device="cpu")
    torch.testing.assert_close(logits64(ck), expected, rtol=1e-9, atol=1e-12 * float(expected.abs().max()))
    # the same names, or the documented key map: nothing was dropped or invented
    ours = ck.model.state_dict()
    assert len(ours) == len(keys)
    assert ck.meta["arch"] == arch and ck.meta["num_classes"] == 10 and ck.meta["epoch"] == 300
    assert ck.meta["metrics"]["test_accuracy"] == pytest.approx(0.9327, abs=1e-12)
    assert ck.meta["normalization"] == LI2018["normalization"] and ck.meta["input_shape"] == [3, 32, 32]


@pytest.mark.parametrize("arch,prefix,legacy,counters", [
    ("resnet56", "", False, True), ("vgg9", "module.", True, True), ("resnet56_noshort", "", True, False)],
    ids=["zip", "dataparallel-legacy-format", "pytorch-0.3-no-step-counters"])
def test_file_variants_and_detection(tmp_path, arch, prefix, legacy, counters):
    """Without arch=, the architecture is recognised from the names and shapes (no code runs to find it)."""
    fx = fixture(arch)
    state = rule_state(fx["keys"])
    if not counters:
        state = OrderedDict((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    path = save_t7(tmp_path / "model_300.t7", state, prefix=prefix, legacy=legacy)
    ck = ls.load_checkpoint(path, device="cpu")
    assert ck.meta["arch"] == arch and ck.meta["source"] == "li2018"
    torch.testing.assert_close(logits64(ck), torch.tensor(fx["logits"], dtype=torch.float64), rtol=1e-9, atol=1e-12)
    counts = [int(v) for k, v in ck.model.state_dict().items() if k.endswith("num_batches_tracked")]
    assert counts and not any(counts)  # absent counters are set to 0, like the rule's


def test_names_match_theirs_exactly_or_through_the_documented_map():
    """Our state-dict names equal theirs, except the prefixes each class's foreign_keys renames."""
    from landscape import models

    for arch in LI2018_ZOO:
        theirs = [k for k, _ in fixture(arch)["keys"]]
        with torch.device("meta"):
            model = models.build(arch, input_shape=(3, 32, 32), num_classes=10)
        renames = models.foreign_keys(model)
        mapped = []
        for k in theirs:
            for a, b in renames.items():
                if k.startswith(a):
                    k = b + k[len(a):]
                    break
            mapped.append(k)
        assert mapped == list(model.state_dict()), arch  # same names, same order


def test_the_user_overrides_what_the_format_implies(tmp_path):
    fx = fixture("resnet20")
    path = save_t7(tmp_path / "raw.t7", rule_state(fx["keys"]))
    ck = ls.load_checkpoint(path, device="cpu", meta={"normalization": None, "dataset": "cifar10-raw"})
    assert not ck.meta["normalization"] and ck.meta["dataset"] == "cifar10-raw"
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(ck.normalize(x), x)
    default = ls.load_checkpoint(path, device="cpu")
    mean = torch.tensor(LI2018["normalization"]["mean"]).reshape(1, 3, 1, 1)
    std = torch.tensor(LI2018["normalization"]["std"]).reshape(1, 3, 1, 1)
    torch.testing.assert_close(default.normalize(x), (x - mean) / std)


def test_cifar100_heads_and_wrong_files(tmp_path):
    fx = fixture("resnet20")
    state = rule_state(fx["keys"])
    state["linear.weight"] = torch.zeros(100, 64)
    state["linear.bias"] = torch.zeros(100)
    ck = ls.load_checkpoint(save_t7(tmp_path / "c100.t7", state), device="cpu")
    assert ck.meta["arch"] == "resnet20" and ck.meta["num_classes"] == 100 and ck.model.head.out_features == 100
    state.pop("layer3.2.conv2.weight")
    with pytest.raises(CheckpointError, match="match none of their architectures.*pass arch="):
        ls.load_checkpoint(save_t7(tmp_path / "broken.t7", state), device="cpu")
    with pytest.raises(CheckpointError, match=r"missing keys \['layer3.2.conv2.weight'\]"):
        ls.load_checkpoint(tmp_path / "broken.t7", arch="resnet20", device="cpu")


def test_a_key_map_for_other_code(tmp_path):
    """A file of some other code loads with the caller's prefix renames; the digest equals our own file's."""
    model = ls.models.build("resnet20", num_classes=10).eval()
    theirs = {k.replace("layer", "stage_").replace("head.", "fc."): v for k, v in model.state_dict().items()}
    torch.save({"state_dict": theirs}, tmp_path / "other.pth")
    key_map = {f"stage_{i}.": f"layer{i}." for i in (1, 2, 3)} | {"fc.": "head."}
    ck = ls.load_checkpoint(tmp_path / "other.pth", arch="resnet20", meta={"num_classes": 10}, key_map=key_map,
                            device="cpu")
    ours = ls.load_checkpoint(ls.save_checkpoint(tmp_path / "ours.safetensors", model, {"arch": "resnet20"}),
                              device="cpu")
    assert ck.digest == ours.digest
    with pytest.raises(CheckpointError, match="key_map="):
        ls.load_checkpoint(tmp_path / "other.pth", arch="resnet20", meta={"num_classes": 10}, device="cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["resnet56", "vgg9", "densenet121", "wrn56_2"])
def test_their_logits_on_cuda(tmp_path, arch):
    fx = fixture(arch)
    path = save_t7(tmp_path / "model_300.t7", rule_state(fx["keys"]), prefix="module.")
    ck = ls.load_checkpoint(path, device="auto")
    assert ck.device.type == "cuda" and ck.meta["arch"] == arch
    with torch.no_grad():
        got = ck.model.double()(rule_inputs().cuda()).cpu()
    expected = torch.tensor(fx["logits"], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-10 * float(expected.abs().max()))
