"""Checkpoint formats, bad inputs, safety and atomic saving."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch

import landscape as ls
from landscape.checkpoint import read_checkpoint_file
from landscape.errors import CheckpointError, LandscapeError

META = {"arch": "mlp", "arch_kwargs": {"hidden": [16, 8]}, "loss": "ce", "loss_kwargs": {}, "dataset": "digits",
        "input_shape": [1, 8, 8], "num_classes": 10, "classes": [str(i) for i in range(10)],
        "normalization": {"mean": [0.3], "std": [0.4]}, "seed": 0, "epoch": 1, "metrics": {}}


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return ls.models.build("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[16, 8]).eval()


def _same_outputs(ck, model):
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(ck.model(x), model(x))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_round_trip(tmp_path, model, suffix):
    path = ls.save_checkpoint(tmp_path / f"m{suffix}", model, META)
    ck = ls.load_checkpoint(path, device="cpu")
    assert ck.meta == META
    assert not ck.model.training
    assert ck.device == torch.device("cpu")
    assert type(ck.criterion).__name__ == type(ls.losses.build("ce") if hasattr(ls.losses, "build")
                                               else ls.losses.get("ce")).__name__
    _same_outputs(ck, model)


def test_digest_is_format_independent(tmp_path, model):
    a = ls.load_checkpoint(ls.save_checkpoint(tmp_path / "a.safetensors", model, META))
    b = ls.load_checkpoint(ls.save_checkpoint(tmp_path / "b.pt", model, META))
    assert a.digest == b.digest and len(a.digest) == 16


def test_bare_state_dict_needs_arch(tmp_path, model):
    path = tmp_path / "bare.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="no architecture"):
        ls.load_checkpoint(path)
    ck = ls.load_checkpoint(path, arch="mlp", meta={"input_shape": [1, 8, 8], "num_classes": 10,
                                                      "arch_kwargs": {"hidden": [16, 8]}})
    _same_outputs(ck, model)
    assert ck.meta["arch"] == "mlp"


def test_lightning_ckpt(tmp_path, model):
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["criterion.weight"] = torch.ones(3)  # a LightningModule's other submodules are ignored
    obj = {"state_dict": state, "epoch": 7, "global_step": 70, "pytorch-lightning_version": "2.4.0",
           "hyper_parameters": {"arch": "mlp", "arch_kwargs": {"hidden": [16, 8]}, "input_shape": [1, 8, 8],
                                "num_classes": 10, "loss": "ce", "lr": 0.1}}
    torch.save(obj, tmp_path / "run.ckpt")
    ck = ls.load_checkpoint(tmp_path / "run.ckpt")
    _same_outputs(ck, model)
    assert ck.meta["epoch"] == 7 and ck.meta["loss"] == "ce"


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": Exploit(), "meta": META}, fh)
    # the same payload in torch's zip format
    path_zip = tmp_path / "evil_zip.pt"
    torch.save({"state_dict": Exploit()}, path_zip)
    for p in (path, path_zip):
        with pytest.raises(CheckpointError, match="refused"):
            ls.load_checkpoint(p)
    assert not marker.exists()
    # sanity: the payload is real (plain pickle would run it)
    with open(path, "rb") as fh:
        pickle.load(fh)
    assert marker.exists()


@pytest.mark.parametrize("case", ["empty", "truncated_st", "truncated_pt", "corrupted_st", "corrupted_pt",
                                  "text", "directory", "missing"])
def test_bad_files(tmp_path, model, case):
    good_st = ls.save_checkpoint(tmp_path / "good.safetensors", model, META)
    good_pt = ls.save_checkpoint(tmp_path / "good.pt", model, META)
    bad = tmp_path / f"bad-{case}.pt"
    if case == "empty":
        bad.write_bytes(b"")
        msg = "empty"
    elif case.startswith("truncated"):
        src = good_st if case.endswith("st") else good_pt
        bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
        msg = "truncated or corrupted"
    elif case.startswith("corrupted"):
        src = good_st if case.endswith("st") else good_pt
        raw = bytearray(src.read_bytes())
        mid = len(raw) // 3 if case.endswith("pt") else 40
        raw[mid:mid + 64] = b"\xff" * 64
        bad.write_bytes(bytes(raw))
        msg = "truncated or corrupted|cannot be read|not a checkpoint|JSON"
    elif case == "text":
        bad.write_text("hello, I am not a checkpoint\n")
        msg = "not a checkpoint"
    elif case == "directory":
        bad.mkdir()
        msg = "directory"
    else:
        bad = tmp_path / "nope.safetensors"
        msg = "does not exist"
    with pytest.raises(CheckpointError, match=msg) as info:
        ls.load_checkpoint(bad)
    assert str(bad) in str(info.value)


def test_missing_and_unexpected_keys(tmp_path, model):
    state = model.state_dict()
    state.pop("head.weight")
    state["extra.weight"] = torch.zeros(2)
    ls.save_checkpoint(tmp_path / "k.safetensors", state, META)
    with pytest.raises(CheckpointError, match=r"missing keys \['head.weight'\].*unexpected keys \['extra.weight'\]"):
        ls.load_checkpoint(tmp_path / "k.safetensors")


def test_shape_mismatch(tmp_path, model):
    ls.save_checkpoint(tmp_path / "s.safetensors", model, {**META, "arch_kwargs": {"hidden": [16, 9]}})
    with pytest.raises(CheckpointError, match="shape mismatch"):
        ls.load_checkpoint(tmp_path / "s.safetensors")


def test_unknown_architecture_and_loss(tmp_path, model):
    ls.save_checkpoint(tmp_path / "a.safetensors", model, {**META, "arch": "mpl"})
    with pytest.raises(CheckpointError, match="unknown architecture 'mpl'.*Did you mean 'mlp'"):
        ls.load_checkpoint(tmp_path / "a.safetensors")
    ls.save_checkpoint(tmp_path / "l.safetensors", model, {**META, "loss": "no-such-loss"})
    with pytest.raises(CheckpointError, match="no-such-loss"):
        ls.load_checkpoint(tmp_path / "l.safetensors")


def test_save_is_atomic(tmp_path, model):
    path = ls.save_checkpoint(tmp_path / "m.safetensors", model, META)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="JSON"):
        ls.save_checkpoint(path, model, {**META, "bad": object()})
    with pytest.raises(CheckpointError, match="suffix"):
        ls.save_checkpoint(tmp_path / "m.txt", model, META)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_save_killed_midway_keeps_old_file(tmp_path, model):
    """A process killed while writing leaves the previous checkpoint intact."""
    path = ls.save_checkpoint(tmp_path / "m.pt", model, META)
    before = path.read_bytes()
    code = (
        "import os, torch, landscape as ls\n"
        "from landscape import checkpoint\n"
        "real = torch.save\n"
        "def dying(obj, f, *a, **k):\n"
        "    open(f, 'wb').write(b'half')\n"
        "    os._exit(9)\n"
        "torch.save = dying\n"
        f"m = ls.models.build('mlp', input_shape=(1, 8, 8), num_classes=10, hidden=[16, 8])\n"
        f"ls.save_checkpoint({str(path)!r}, m, {META!r})\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == 9
    assert path.read_bytes() == before
    assert ls.load_checkpoint(path).meta == META


def test_prepare_normalizes_and_checks_shape(tmp_path, model, digits_test):
    ck = ls.load_checkpoint(ls.save_checkpoint(tmp_path / "m.pt", model, META))
    x, y = ck.prepare(digits_test)
    expected = (torch.as_tensor(digits_test.x) - 0.3) / 0.4
    assert torch.allclose(x, expected) and torch.equal(y, torch.as_tensor(digits_test.y))
    other = ls.Dataset(digits_test.x[:, :, :4, :4].copy(), digits_test.y, digits_test.classes, "small")
    with pytest.raises(LandscapeError, match="expects"):
        ck.prepare(other)


def test_read_without_building(tmp_path, model):
    path = ls.save_checkpoint(tmp_path / "m.safetensors", model, META)
    state, meta, kind = read_checkpoint_file(path)
    assert kind == "safetensors" and meta == META and set(state) == set(model.state_dict())


def test_device_errors():
    from landscape.device import resolve_device

    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(LandscapeError, match="not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(LandscapeError, match="no CUDA"):
            resolve_device("cuda")


@pytest.mark.gpu
def test_load_on_cuda(zoo_path, digits_test):
    ck = ls.load_checkpoint(zoo_path("mlp-ce"), device="cuda")
    assert next(ck.model.parameters()).is_cuda
    cpu = ls.load_checkpoint(zoo_path("mlp-ce"), device="cpu")
    assert ck.evaluate(digits_test)[1] == pytest.approx(cpu.evaluate(digits_test)[1], abs=1 / 360)


def test_safetensors_header_starting_with_pickle_byte(tmp_path, model):
    """A safetensors header of length 128 mod 256 starts with 0x80, the pickle protocol byte."""
    import struct

    for pad in range(300):
        path = ls.save_checkpoint(tmp_path / "m.safetensors", model, {**META, "pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:  # pragma: no cover
        pytest.fail("could not produce a header of length 128 mod 256")
    assert struct.unpack("<Q", path.read_bytes()[:8])[0] % 256 == 128
    assert ls.load_checkpoint(path).meta["pad"] == "x" * pad
