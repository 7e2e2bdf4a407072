"""Dataset loaders: digits split, and small files written in each real format."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

import landscape as ls
from landscape.errors import DatasetError

RNG = np.random.default_rng(0)


def test_digits_split_is_stratified_and_deterministic():
    train, test = ls.load_dataset("digits", "train"), ls.load_dataset("digits", "test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.x.shape[1:] == (1, 8, 8) and train.x.dtype == np.float32
    assert 0.0 <= train.x.min() and train.x.max() <= 1.0
    # stratified: every class has 20 % of its samples in test, up to rounding
    counts_all = np.bincount(np.concatenate([train.y, test.y]))
    assert np.all(np.abs(np.bincount(test.y) - 0.2 * counts_all) <= 1)
    again = ls.load_dataset("digits", "test")
    assert np.array_equal(again.x, test.x) and np.array_equal(again.y, test.y)
    # train and test are disjoint: no test image appears in train
    train_rows = {r.tobytes() for r in train.x.reshape(len(train), -1)}
    dup = sum(r.tobytes() in train_rows for r in test.x.reshape(len(test), -1))
    assert dup <= 2  # load_digits itself holds a few duplicate images


def test_subset_is_seeded():
    d = ls.load_dataset("digits")
    a, b, c = d.subset(50, seed=1), d.subset(50, seed=1), d.subset(50, seed=2)
    assert len(a) == 50 and np.array_equal(a.y, b.y) and np.array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
    assert d.subset(None) is d and d.subset(10_000) is d


def _cifar_records(n, label_bytes, labels):
    rec = np.zeros((n, label_bytes + 3072), np.uint8)
    rec[:, :label_bytes] = labels
    rec[:, label_bytes:] = RNG.integers(0, 256, (n, 3072))
    return rec


def test_cifar10(tmp_path):
    for i in range(1, 6):
        _cifar_records(4, 1, RNG.integers(0, 10, (4, 1))).tofile(tmp_path / f"data_batch_{i}.bin")
    test = _cifar_records(3, 1, np.array([[1], [2], [9]]))
    test.tofile(tmp_path / "test_batch.bin")
    (tmp_path / "batches.meta.txt").write_text("\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog",
                                                          "frog", "horse", "ship", "truck"]) + "\n\n")
    tr = ls.load_dataset(f"cifar10:{tmp_path}", "train")
    te = ls.load_dataset(f"cifar10:{tmp_path}", "test")
    assert tr.x.shape == (20, 3, 32, 32) and te.x.shape == (3, 3, 32, 32)
    assert list(te.y) == [1, 2, 9] and te.classes[9] == "truck"
    assert np.allclose(te.x[0].reshape(-1), test[0, 1:] / 255.0)


def test_cifar100_fine_labels(tmp_path):
    labels = np.array([[3, 42], [19, 99]])
    _cifar_records(2, 2, labels).tofile(tmp_path / "test.bin")
    d = ls.load_dataset(f"cifar100:{tmp_path}", "test")
    assert list(d.y) == [42, 99] and len(d.classes) == 100


def test_cifar_truncated(tmp_path):
    _cifar_records(2, 1, [[0], [1]]).tobytes()
    (tmp_path / "test_batch.bin").write_bytes(_cifar_records(2, 1, [[0], [1]]).tobytes()[:-10])
    with pytest.raises(DatasetError, match="not a multiple"):
        ls.load_dataset(f"cifar10:{tmp_path}", "test")


def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_mnist(tmp_path, gz):
    images = RNG.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    labels = np.array([0, 1, 2, 3, 9], np.uint8)
    for stem, arr in [("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)]:
        raw = _idx(arr)
        if gz:
            (tmp_path / (stem + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (tmp_path / stem).write_bytes(raw)
    d = ls.load_dataset(f"mnist:{tmp_path}", "test")
    assert d.x.shape == (5, 1, 28, 28) and list(d.y) == [0, 1, 2, 3, 9]
    assert np.allclose(d.x[:, 0] * 255, images)


def test_mnist_errors(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx(np.zeros((5, 28, 28), np.uint8))[:-100])
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros(5, np.uint8)))
    with pytest.raises(DatasetError, match="truncated"):
        ls.load_dataset(f"mnist:{tmp_path}", "test")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(DatasetError, match="magic"):
        ls.load_dataset(f"mnist:{tmp_path}", "test")
    with pytest.raises(DatasetError, match="no MNIST file"):
        ls.load_dataset(f"mnist:{tmp_path}", "train")


def test_mnist_inconsistent_counts(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx(np.zeros((5, 28, 28), np.uint8)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros(4, np.uint8)))
    with pytest.raises(DatasetError, match="5 images but 4 labels"):
        ls.load_dataset(f"mnist:{tmp_path}", "test")


def _fer_row(label, usage):
    return f"{label},{' '.join(str(v) for v in RNG.integers(0, 256, 48 * 48))},{usage}"


def test_fer2013(tmp_path):
    path = tmp_path / "fer2013.csv"
    rows = [_fer_row(0, "Training"), _fer_row(3, "PublicTest"), _fer_row(6, "PrivateTest"), _fer_row(4, "Training")]
    path.write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    tr, te = ls.load_dataset(f"fer2013:{path}", "train"), ls.load_dataset(f"fer2013:{path}", "test")
    assert tr.x.shape == (2, 1, 48, 48) and list(tr.y) == [0, 4]
    assert list(te.y) == [3, 6] and te.classes[3] == "happy"


def test_fer2013_errors(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("label,img\n1,2\n")
    with pytest.raises(DatasetError, match="missing column"):
        ls.load_dataset(f"fer2013:{path}", "train")
    path.write_text("emotion,pixels,Usage\n1,1 2 3,Training\n")
    with pytest.raises(DatasetError, match="line 2.*expected 2304"):
        ls.load_dataset(f"fer2013:{path}", "train")


def test_npz(tmp_path):
    x = RNG.random((6, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 0, 1, 2]), classes=np.array(["a", "b", "c"]))
    d = ls.load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert np.array_equal(d.x, x) and d.classes == ["a", "b", "c"]
    assert ls.load_dataset(str(tmp_path / "d.npz")).x.shape == (6, 3, 4, 4)
    np.savez(tmp_path / "s.npz", x_train=np.zeros((4, 8, 8)), y_train=np.arange(4), x_test=np.ones((2, 8, 8)) * 255,
             y_test=np.arange(2))
    te = ls.load_dataset(f"npz:{tmp_path / 's.npz'}", "test")
    assert te.x.shape == (2, 1, 8, 8) and te.x.max() == 1.0


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 4)))
    with pytest.raises(DatasetError, match="needs arrays 'x' and 'y'"):
        ls.load_dataset(f"npz:{tmp_path / 'a.npz'}")
    np.savez(tmp_path / "b.npz", x=np.zeros((3, 4)), y=np.zeros(2))
    with pytest.raises(DatasetError, match="3 images but 2 labels"):
        ls.load_dataset(f"npz:{tmp_path / 'b.npz'}")
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 4)), y=np.array([0, 5]), classes=np.array(["a", "b"]))
    with pytest.raises(DatasetError, match="labels span"):
        ls.load_dataset(f"npz:{tmp_path / 'c.npz'}")
    (tmp_path / "d.npz").write_text("not a zip")
    with pytest.raises(DatasetError, match="not a readable"):
        ls.load_dataset(f"npz:{tmp_path / 'd.npz'}")


@pytest.mark.parametrize("spec,msg", [("imagenet", "unknown dataset"), ("cifar10", "needs a path"),
                                      ("cifar10:/no/such/dir", "does not exist"), ("mnist:.", "no MNIST file")])
def test_bad_specs(spec, msg):
    with pytest.raises(DatasetError, match=msg):
        ls.load_dataset(spec)


def test_bad_split():
    with pytest.raises(DatasetError, match="split 'val'"):
        ls.load_dataset("digits", split="val")


def test_batches_stream_the_same_values_as_the_whole_split(digits_test):
    import torch

    norm = lambda x: (x - 0.3) / 0.2  # noqa: E731
    x, y = digits_test.tensors()
    parts = list(digits_test.batches(100, transform=norm))
    assert [len(b[1]) for b in parts] == [100, 100, 100, 60]
    torch.testing.assert_close(torch.cat([b[0] for b in parts]), norm(x), rtol=0, atol=0)
    assert torch.equal(torch.cat([b[1] for b in parts]), y)
    with pytest.raises(ls.errors.ArgumentError, match="batch_size must be >= 1"):
        next(digits_test.batches(0))
