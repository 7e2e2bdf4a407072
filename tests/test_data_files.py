"""Bad and hostile data files: one clear DatasetError line, exit 2 through the CLI, nothing run or lost.

Issue 22 item 6 (data files) and item 7 (count mismatches name the dataset), issue 13 (folders
without a dataset, wrong sizes, checkpoint mismatches) and the restricted unpickler of CIFAR's
python version.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import sys
import zipfile

import numpy as np
import pytest
import torch

import landscape as ls
from landscape.benchmarks.data import py2_pickle, write_cifar10
from landscape.errors import DatasetError
from tests.conftest import ROOT
from viz.cli import main

MLP = ROOT / "trained_models" / "mlp-ce.safetensors"


def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _npz_bytes(**arrays) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _mnist(folder, images: bytes, labels: bytes):
    folder.mkdir(exist_ok=True)
    (folder / "t10k-images-idx3-ubyte").write_bytes(images)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(labels)
    return f"mnist:{folder}"


def _fer(path, text: bytes | None = None):
    if text is not None:
        path.write_bytes(text)
    return f"fer2013:{path}"


GOOD_IMAGES = _idx(np.zeros((5, 28, 28), np.uint8))
GOOD_LABELS = _idx(np.zeros(5, np.uint8))
FER_ROW = ("0," + " ".join(["128"] * 2304) + ",PublicTest\n")

# (name, how to make the spec under tmp_path, message)
BAD = [
    ("npz truncated", lambda t: _write(t / "a.npz", _npz_bytes(x=np.zeros((50, 64)), y=np.zeros(50, int))[:-300],
                                       "npz"), "truncated"),
    ("npz empty", lambda t: _write(t / "a.npz", b"", "npz"), r"is empty \(0 bytes\)"),
    ("npz 2-D y", lambda t: _write(t / "a.npz", _npz_bytes(x=np.zeros((4, 8)), y=np.eye(4)), "npz"),
     r"'y' has shape \(4, 4\), but labels must be one class index per sample"),
    ("npz zero samples", lambda t: _write(t / "a.npz", _npz_bytes(x=np.zeros((0, 8)), y=np.zeros(0, int)), "npz"),
     "has no samples"),
    ("npz strings", lambda t: _write(t / "a.npz", _npz_bytes(x=np.array([["a", "b"]] * 3), y=np.zeros(3, int)),
                                     "npz"), "'x' must hold numbers"),
    ("npz object arrays", lambda t: _write(t / "a.npz", _npz_bytes(x=np.array([None, 1], dtype=object),
                                                                   y=np.zeros(2, int)), "npz"),
     "holds Python objects, which are never unpickled"),
    ("npz float labels", lambda t: _write(t / "a.npz", _npz_bytes(x=np.zeros((2, 4)), y=np.array([0.5, 1])), "npz"),
     "must hold integer class indices"),
    ("npz a directory", lambda t: (t / "d.npz").mkdir() or f"npz:{t / 'd.npz'}", "is a folder"),
    ("npz not a zip", lambda t: _write(t / "a.npz", b"not a zip at all", "npz"), "not a readable .npz"),
    ("mnist truncated header", lambda t: _mnist(t / "m", GOOD_IMAGES[:10], GOOD_LABELS),
     r"header is truncated \(10 bytes, needs 16\)"),
    ("mnist truncated body", lambda t: _mnist(t / "m", GOOD_IMAGES[:-100], GOOD_LABELS), "truncated"),
    ("mnist ndim 255", lambda t: _mnist(t / "m", b"\x00\x00\x08\xff" + b"\x00" * 40, GOOD_LABELS),
     "header says 255 dimensions, but this file should have 3"),
    ("mnist bad magic", lambda t: _mnist(t / "m", b"\x01\x02\x03\x04garbage", GOOD_LABELS), "bad magic number"),
    ("mnist int32 values", lambda t: _mnist(t / "m", b"\x00\x00\x0c\x03" + GOOD_IMAGES[4:], GOOD_LABELS),
     "IDX value type 0x0c"),
    ("mnist bad gzip", lambda t: (t / "m").mkdir() or ((t / "m" / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(GOOD_IMAGES)[:-30]), (t / "m" / "t10k-labels-idx1-ubyte").write_bytes(GOOD_LABELS),
        f"mnist:{t / 'm'}")[-1], "cannot be read"),
    ("mnist count mismatch", lambda t: _mnist(t / "m", GOOD_IMAGES, _idx(np.zeros(4, np.uint8))),
     r"mnist:.*/m: t10k-images-idx3-ubyte holds 5 images but t10k-labels-idx1-ubyte holds 4 labels"),
    ("fer not utf-8", lambda t: _fer(t / "f.csv", "emotion,pixels,Usage\n".encode() + b"\xff\xfe0,1 2\n"),
     "not UTF-8 text"),
    ("fer a directory", lambda t: (t / "fer").mkdir() or _fer(t / "fer"),
     "a folder without a FER-2013 CSV .looked for fer2013.csv"),
    ("fer missing columns", lambda t: _fer(t / "f.csv", b"label,img\n1,2\n"), r"missing column\(s\) \['emotion'"),
    ("fer short row", lambda t: _fer(t / "f.csv", b"emotion,pixels,Usage\n1,1 2 3,PublicTest\n"),
     "line 2: 3 pixels read, expected 2304"),
    ("fer not a number", lambda t: _fer(t / "f.csv", ("emotion,pixels,Usage\n" + FER_ROW.replace("128", "1.5", 1))
                                        .encode()), "line 2: .*pixels integers 0..255"),
    ("fer pixel range", lambda t: _fer(t / "f.csv", ("emotion,pixels,Usage\n" + FER_ROW.replace("128", "300", 1))
                                       .encode()), r"pixel values span \[128, 300\]"),
    ("fer emotion 9", lambda t: _fer(t / "f.csv", ("emotion,pixels,Usage\n9" + FER_ROW[1:]).encode()),
     "emotion 9 is not one of 0..6"),
    ("cifar wrong size", lambda t: _write(t / "test_batch.bin", np.zeros(3073 * 2 - 10, np.uint8).tobytes(),
                                          "cifar10", folder=True), "not a multiple of the 3073-byte CIFAR record"),
    ("cifar truncated pickle", lambda t: _write(t / "test_batch", py2_pickle(
        {"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 4})[:-500], "cifar10", folder=True),
     "not a readable CIFAR-10 batch .*truncated"),
    ("cifar wrong data shape", lambda t: _write(t / "test_batch", py2_pickle(
        {"data": np.zeros((4, 1024), np.uint8), "labels": [0] * 4}), "cifar10", folder=True),
     r"'data' should be a uint8 array of shape \(N, 3072\), got uint8 array of shape \(4, 1024\)"),
    ("cifar no folder", lambda t: f"cifar10:{t}", r"no CIFAR-10 test batches found \(looked for test_batch in "
                                                  r"cifar-10-batches-py/, the folder itself; test_batch.bin"),
    ("cifar archive only", lambda t: ((t / "cifar-10-python.tar.gz").write_bytes(b"x"), f"cifar10:{t}")[-1],
     "Found the archive cifar-10-python.tar.gz: extract it first"),
    ("svhn not a mat", lambda t: _write(t / "test_32x32.mat", b"MATLAB 5.0 garbage" * 10, "svhn", folder=True),
     "not a readable MATLAB file"),
    ("imagefolder empty class", lambda t: (t / "f" / "a").mkdir(parents=True) or f"imagefolder:{t / 'f'}",
     "class folder 'a' holds no images"),
    ("imagefolder broken png", lambda t: ((t / "f" / "a").mkdir(parents=True), (t / "f" / "a" / "x.png").write_bytes(
        b"\x89PNG\r\n\x1a\n broken"), f"imagefolder:{t / 'f'}")[-1], "x.png: not a readable image"),
]


def _write(path, data: bytes, kind: str, folder: bool = False) -> str:
    path.write_bytes(data)
    return f"{kind}:{path.parent if folder else path}"


@pytest.mark.parametrize("name,make,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_files_give_one_clear_line(tmp_path, name, make, msg):
    spec = make(tmp_path)
    with pytest.raises(DatasetError, match=msg) as err:
        ls.load_dataset(spec, "test")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name,make,msg", [b for b in BAD if b[0] in (
    "npz truncated", "npz empty", "npz 2-D y", "npz zero samples", "npz strings", "npz object arrays",
    "mnist truncated header", "mnist ndim 255", "fer not utf-8", "fer a directory")], ids=lambda v: v
    if isinstance(v, str) and " " in v else "")
def test_bad_files_exit_2_through_info(tmp_path, capsys, name, make, msg):
    """``landscape info CKPT --data SPEC`` on each bad file of issue 22: exit 2, one line, no traceback."""
    spec = make(tmp_path)
    assert main(["info", str(MLP), "--data", spec, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("landscape info: error: ")


def test_count_mismatch_names_the_dataset(tmp_path):
    np.savez(tmp_path / "b.npz", x=np.zeros((3, 4)), y=np.zeros(2, int))
    with pytest.raises(DatasetError, match=r"dataset 'npz:.*b.npz/test': 3 images but 2 labels"):
        ls.load_dataset(f"npz:{tmp_path / 'b.npz'}")


@pytest.mark.slow  # a fresh interpreter imports torch
def test_a_subprocess_run_exits_2_with_one_line(tmp_path):
    import subprocess

    (tmp_path / "bad.npz").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "viz.cli", "info", str(MLP), "--data", f"npz:{tmp_path / 'bad.npz'}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"landscape info: error: {tmp_path / 'bad.npz'} is empty (0 bytes); "
                                                "the download or copy was probably interrupted."]


def test_checkpoint_mismatches_exit_2_through_info(tmp_path, capsys):
    write_cifar10(tmp_path / "cifar-10-batches-py", np.zeros((4, 3, 32, 32), np.uint8), [0, 1, 2, 3])
    assert main(["info", str(MLP), "--data", f"cifar10:{tmp_path}", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "has inputs of shape (3, 32, 32), but checkpoint 'mlp-ce' expects (1, 8, 8)" in err
    np.savez(tmp_path / "c.npz", x=np.zeros((3, 8, 8), np.float32), y=np.array([0, 1, 11]))
    assert main(["info", str(MLP), "--data", f"npz:{tmp_path / 'c.npz'}", "--device", "cpu"]) == 2
    assert "labels up to 11 (12 classes), but checkpoint 'mlp-ce' has 10 outputs" in capsys.readouterr().err


# -- code-running pickles ---------------------------------------------------------------------
class _Payload:
    """Pickles to ``os.system(command)``: what an attacker puts in a batch file."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Eval:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return eval, (self.code,)


def _batch_with(payload) -> dict:
    return {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "batch_label": payload}


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("where", ["test_batch", "batches.meta"])
def test_a_code_running_batch_file_is_refused_and_runs_nothing(tmp_path, protocol, where):
    marker = tmp_path / "pwned"
    folder = write_cifar10(tmp_path / "cifar-10-batches-py", np.zeros((2, 3, 32, 32), np.uint8), [0, 1])
    evil = {"label_names": ["a"] * 10, "x": _Payload(f"touch {marker}")} if where == "batches.meta" else \
        _batch_with(_Payload(f"touch {marker}"))
    (folder / where).write_bytes(pickle.dumps(evil, protocol=protocol))
    with pytest.raises(DatasetError, match=r"refused to unpickle: the file calls (posix|os)\.system.*nothing was run"):
        ls.load_dataset(f"cifar10:{tmp_path}")
    assert not marker.exists()


@pytest.mark.parametrize("payload,name", [
    (_Eval("__import__('os').system('true')"), "(builtins|__builtin__).eval"),  # protocol 2 writes Python 2 names
    (None, "builtins.getattr"),
])
def test_other_callables_are_refused(tmp_path, payload, name):
    if payload is None:  # getattr chains reach anything; builtins.getattr is not in the allowed set
        blob = b"\x80\x02cbuiltins\ngetattr\nq\x00."
    else:
        blob = pickle.dumps(_batch_with(payload), protocol=2)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(blob)
    with pytest.raises(DatasetError, match=f"calls {name}"):
        ls.load_dataset(f"cifar10:{tmp_path}")


def test_a_refused_module_is_never_imported(tmp_path, monkeypatch):
    """The name is refused before any import: a module that would run code on import stays unloaded."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_cifar_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef f(*a):\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(b"\x80\x02cevil_cifar_mod\nf\n)R.")
    with pytest.raises(DatasetError, match="calls evil_cifar_mod.f"):
        ls.load_dataset(f"cifar10:{tmp_path}")
    assert not marker.exists() and "evil_cifar_mod" not in sys.modules


def test_object_arrays_in_a_batch_are_not_images(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {"data": np.array([[1, "x"]], dtype=object), "labels": [0]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetError):
        ls.load_dataset(f"cifar10:{tmp_path}")


def test_checkpoint_zip_npz_is_data_only(tmp_path):
    """An npz whose member is a pickle is refused (allow_pickle=False), whatever the pickle does."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    with zipfile.ZipFile(path, "w") as zf:
        with zf.open("x.npy", "w") as fh:
            np.lib.format.write_array(fh, np.array([_Payload(f"touch {marker}")], dtype=object), allow_pickle=True)
        with zf.open("y.npy", "w") as fh:
            np.lib.format.write_array(fh, np.zeros(1, int))
    with pytest.raises(DatasetError, match="holds Python objects"):
        ls.load_dataset(f"npz:{path}")
    assert not marker.exists()


def test_info_data_prints_what_a_dataset_is(tmp_path, capsys):
    write_cifar10(tmp_path / "cifar-10-batches-py", np.full((12, 3, 32, 32), 51, np.uint8), np.arange(12) % 10)
    assert main(["info", "--data", f"cifar10:{tmp_path}"]) == 0
    out = capsys.readouterr().out
    for text in ("samples       12 (per class 1..2)", "classes       10: airplane, automobile", "channels      3",
                 "image size    32 x 32", "storage       uint8 (scaled to [0, 1] when used), 0.0 MiB",
                 "mean [0.2000, 0.2000, 0.2000]", "python version"):
        assert text in out, text
    assert main(["info", "--data", f"cifar10:{tmp_path}", "--json"]) == 0
    import json

    s = json.loads(capsys.readouterr().out)["dataset"]
    assert s["classes"][3] == "cat" and s["image_size"] == [32, 32] and s["bytes"] == 12 * 3072 + 12 * 8


def test_info_warns_about_missing_normalisation_and_takes_one(tmp_path, capsys):
    """Issue 23 item 2: a bare state_dict with --arch mlp is evaluated raw with a warning; --normalization fixes it."""
    ck = ls.load_checkpoint(MLP, device="cpu")
    torch.save(ck.model.state_dict(), tmp_path / "bare.pt")
    assert main(["info", str(tmp_path / "bare.pt"), "--arch", "mlp", "--json"]) == 0
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert len(err) == 1 and "warning: checkpoint 'bare' has no normalisation in its meta" in err[0]
    raw_acc = __import__("json").loads(out.out)["evaluated"]["accuracy"]
    assert main(["info", str(tmp_path / "bare.pt"), "--arch", "mlp", "--json", "--normalization", "train"]) == 0
    out = capsys.readouterr()
    fixed = __import__("json").loads(out.out)["evaluated"]
    assert out.err == ""
    assert fixed["accuracy"] == pytest.approx(ck.meta["metrics"]["test_accuracy"], abs=1e-9) and raw_acc < 0.6
    assert fixed["normalization"] == ck.meta["normalization"]
    assert main(["info", str(tmp_path / "bare.pt"), "--arch", "mlp", "--json", "--normalization",
                 f"{ck.meta['normalization']['mean'][0]}/{ck.meta['normalization']['std'][0]}"]) == 0
    assert __import__("json").loads(capsys.readouterr().out)["evaluated"]["accuracy"] == fixed["accuracy"]
    assert main(["info", str(tmp_path / "bare.pt"), "--arch", "mlp", "--normalization", "0.3"]) == 2
    assert "--normalization '0.3': give train, none, or MEAN" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "bare.pt"), "--arch", "mlp", "--normalization", "0.1,0.2/1,1"]) == 2
    assert "normalises 2 channel(s), but dataset 'digits/test' has 1" in capsys.readouterr().err
