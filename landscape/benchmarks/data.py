"""Dataset loading: time and peak memory of a real-size CIFAR-10 batch file, against torchvision's recipe.

It writes one synthetic CIFAR-10 test batch of ``--images`` (default 10,000) random images in
both versions the authors distribute, byte-compatible with the real files (a Python 2
protocol-2 pickle for the python version, 3073-byte records for the binary one), into a
temporary folder, then measures in one run:

* ``landscape python``: ``load_dataset("cifar10:DIR")`` on ``cifar-10-batches-py`` (restricted
  unpickler; images kept ``uint8``);
* ``pickle.load (torchvision)``: the peer, what ``torchvision.datasets.CIFAR10`` does:
  ``pickle.load(f, encoding="latin1")`` with every global allowed, then ``reshape``;
* ``landscape binary``: ``load_dataset`` on ``cifar-10-batches-bin``;
* ``float32 split (old loader)``: the python version plus the whole split as float32 in [0, 1],
  which is what the loader held before images stayed ``uint8``;
* ``stream batches``: one pass of ``Dataset.batches(--batch-size)`` over the loaded split (the
  per-batch float32 conversion), against ``tensors()`` at once.

For each: seconds (best of ``--rounds``), the ratio to the peer, the peak growth of resident
memory during the call (Linux ``VmHWM``, reset before each call; elsewhere tracemalloc, which
sees numpy but not torch) and the bytes the result holds. Benchmarks never assert.
"""
from __future__ import annotations

import argparse
import gc
import pickle
import struct
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np


# -- writing CIFAR files exactly as the authors distribute them -----------------------------
def py2_pickle(obj: Any) -> bytes:
    """``obj`` pickled as Python 2's ``cPickle.dump(obj, f, 2)`` writes it, for CIFAR's python version.

    Handles what CIFAR files hold: dicts, lists, tuples, ``bytes`` (Python 2 ``str``, written with
    ``SHORT_BINSTRING``/``BINSTRING``, so Python 3 reads them back as ``bytes`` under
    ``encoding="bytes"``), ``str`` (written the same way, as Python 2 did), ints, None, bools
    and C-contiguous numpy arrays (reduced through ``numpy.core.multiarray._reconstruct``).
    Written by hand because Python 3's pickler cannot produce Python 2's ``str`` opcodes.
    """
    out = bytearray(b"\x80\x02")
    _emit(obj, out)
    out += b"."
    return bytes(out)


def _emit(obj: Any, out: bytearray) -> None:
    if isinstance(obj, str):
        obj = obj.encode("latin1")
    if obj is None:
        out += b"N"
    elif isinstance(obj, bool):
        out += b"\x88" if obj else b"\x89"
    elif isinstance(obj, (int, np.integer)):
        v = int(obj)
        out += (b"K" + struct.pack("<B", v) if 0 <= v < 256 else b"M" + struct.pack("<H", v) if 0 <= v < 65536
                else b"J" + struct.pack("<i", v))
    elif isinstance(obj, bytes):
        out += b"U" + struct.pack("<B", len(obj)) + obj if len(obj) < 256 else b"T" + struct.pack("<I", len(obj)) + obj
    elif isinstance(obj, dict):
        out += b"}("
        for k, v in obj.items():
            _emit(k, out)
            _emit(v, out)
        out += b"u"
    elif isinstance(obj, list):
        out += b"]("
        for v in obj:
            _emit(v, out)
        out += b"e"
    elif isinstance(obj, tuple):
        out += b"("
        for v in obj:
            _emit(v, out)
        out += b"t"
    elif isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        typestr = arr.dtype.str  # e.g. "|u1", "<i8"
        out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        _emit((0,), out)
        out += b"U\x01b\x87R("  # (ndarray, (0,), "b") REDUCE, then the state tuple
        _emit(1, out)
        _emit(tuple(arr.shape), out)
        out += b"cnumpy\ndtype\n"
        _emit((typestr[1:], 0, 1), out)
        out += b"R"
        _emit((3, typestr[0], None, None, None, -1, -1, 0), out)
        out += b"b"
        _emit(False, out)
        _emit(arr.tobytes(), out)
        out += b"tb"
    else:  # pragma: no cover - only what CIFAR files hold
        raise TypeError(f"py2_pickle cannot write {type(obj).__name__}")


def write_cifar10(folder: str | Path, images: np.ndarray, labels, split: str = "test", version: str = "python",
                  python2: bool = True) -> Path:
    """Write CIFAR-10 ``split`` files with ``images`` ``(N, 3, 32, 32)`` ``uint8`` into ``folder``.

    ``version="python"``: ``data_batch_1..5`` (train, the images divided in five) or ``test_batch``
    plus ``batches.meta``, pickled as Python 2 does (``python2=False``: Python 3's pickle,
    ``str`` keys). ``version="binary"``: ``*.bin`` records and ``batches.meta.txt``.
    Returns the folder.
    """
    from landscape.data.cifar import CIFAR10_CLASSES

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = np.asarray(images, dtype=np.uint8), np.asarray(labels)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = np.array_split(np.arange(len(labels)), len(names))
    for name, idx in zip(names, parts):
        if version == "binary":
            rec = np.concatenate([labels[idx, None].astype(np.uint8), images[idx].reshape(len(idx), -1)], axis=1)
            rec.tofile(folder / f"{name}.bin")
            continue
        batch = {"batch_label": f"{name.replace('_', ' ')} of 1", "labels": [int(v) for v in labels[idx]],
                 "data": images[idx].reshape(len(idx), -1), "filenames": [f"img_{i:05d}.png" for i in idx]}
        (folder / name).write_bytes(py2_pickle(batch) if python2 else pickle.dumps(batch, protocol=4))
    if version == "binary":
        (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n\n")
    else:
        meta = {"num_cases_per_batch": int(len(parts[0])), "label_names": CIFAR10_CLASSES, "num_vis": 3072}
        (folder / "batches.meta").write_bytes(py2_pickle(meta) if python2 else pickle.dumps(meta, protocol=4))
    return folder


# -- measuring ------------------------------------------------------------------------------
def _proc_status() -> dict[str, int] | None:
    try:
        with open("/proc/self/status") as fh:
            return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in fh)
                    if k in ("VmRSS", "VmHWM")}
    except OSError:
        return None


def _libc(name: str, *args: int) -> None:
    """Call a glibc memory function if there is one (elsewhere this is a no-op)."""
    import ctypes
    import ctypes.util

    try:
        getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)(*args)
    except (OSError, AttributeError):
        pass


def _trim() -> None:
    """Return freed heap memory to the system, so that reusing it counts as growth again."""
    _libc("malloc_trim", 0)


M_MMAP_THRESHOLD = -3


def exact_accounting() -> None:
    """Serve every allocation over 128 KiB by mmap (glibc), so that freeing it returns it at once.

    glibc otherwise raises its mmap threshold after large frees and keeps freed blocks resident,
    which hides or inflates the growth of the resident set that :func:`peak_memory` reads.
    """
    _libc("mallopt", M_MMAP_THRESHOLD, 128 * 1024)


def peak_memory(fn: Callable[[], Any]) -> tuple[Any, float, str]:
    """``(result, peak growth in bytes, how measured)`` of one call of ``fn``.

    On Linux the resident-set high-water mark is reset (``/proc/self/clear_refs``) and read
    back; elsewhere tracemalloc's peak (numpy allocations only).
    """
    gc.collect()
    _trim()
    before = _proc_status()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        reset = True
    except OSError:
        reset = False
    if before is not None and reset:
        before = _proc_status()
        result = fn()
        return result, float(_proc_status()["VmHWM"] - before["VmRSS"]), "RSS high-water mark"
    tracemalloc.start()
    try:
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, float(peak), "tracemalloc (numpy only)"


def _held(obj: Any) -> int:
    """Bytes a result keeps: a Dataset's inputs and labels, an array's or a tensor's data, summed over tuples."""
    import torch

    from landscape.data import Dataset

    if isinstance(obj, tuple):
        return sum(_held(o) for o in obj)
    if isinstance(obj, Dataset):
        return int(obj.raw.nbytes + obj.y.nbytes)
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, torch.Tensor):
        return int(obj.numel() * obj.element_size())
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``landscape bench data``."""
    parser.add_argument("--images", type=int, default=10_000, help="images in the synthetic batch (default: 10000, "
                        "the size of a real CIFAR-10 batch file)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per method; the best is reported "
                        "(default: 3)")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size of the streamed pass (default: 256)")


def run(args) -> int:
    """Write the files, run every method, print the table."""
    import landscape as ls
    from landscape.errors import check_scalar

    exact_accounting()
    n = check_scalar(args.images, "--images", int, min=1)
    rounds = check_scalar(args.rounds, "--rounds", int, min=1)
    bs = check_scalar(args.batch_size, "--batch-size", int, min=1)
    rng = np.random.default_rng(args.seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        py = write_cifar10(root / "cifar-10-batches-py", images, labels)
        write_cifar10(root / "cifar-10-batches-bin", images, labels, version="binary")
        size = (py / "test_batch").stat().st_size
        print(f"synthetic CIFAR-10 test batch: {n} images, python version {size / 2**20:.1f} MiB "
              f"(real files: 10000 images, 29.6 MiB)")

        def torchvision_recipe():
            with open(py / "test_batch", "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
            return np.vstack([entry["data"]]).reshape(-1, 3, 32, 32), np.asarray(entry["labels"])

        loaded = ls.load_dataset(f"cifar10:{py}")

        def stream():
            total = 0.0
            for xb, _ in loaded.batches(bs):
                total += float(xb.sum())
            return total

        methods: dict[str, Callable[[], Any]] = {
            "landscape python": lambda: ls.load_dataset(f"cifar10:{py}"),
            "pickle.load (torchvision)": torchvision_recipe,
            "landscape binary": lambda: ls.load_dataset(f"cifar10:{root / 'cifar-10-batches-bin'}"),
            "float32 split (old loader)": lambda: ls.load_dataset(f"cifar10:{py}").x,
            f"stream batches ({bs})": stream,
            "tensors() at once": lambda: loaded.tensors(),
        }
        times = {name: [] for name in methods}
        for _ in range(rounds):  # interleaved, so drift on a shared machine hits every method alike
            for name, fn in methods.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        memory = {name: peak_memory(fn) for name, fn in methods.items()}
        identical = np.array_equal(memory["landscape python"][0].raw, memory["landscape binary"][0].raw)
    peer = min(times["pickle.load (torchvision)"])
    how = next(iter(memory.values()))[2]
    print(f"{'method':30s} {'best s':>8s} {'x peer':>7s} {'peak MiB':>9s} {'held MiB':>9s}   (memory: {how})")
    for name in methods:
        best = min(times[name])
        result, peak, _ = memory[name]
        print(f"{name:30s} {best:8.3f} {best / peer:7.2f} {peak / 2**20:9.1f} {_held(result) / 2**20:9.1f}")
    old, new = _held(memory["float32 split (old loader)"][0]), _held(memory["landscape python"][0])
    print(f"held in memory: uint8 split {new / 2**20:.1f} MiB vs float32 split {old / 2**20:.1f} MiB "
          f"({old / new:.2f}x); python and binary versions give identical images: {identical}")
    return 0
