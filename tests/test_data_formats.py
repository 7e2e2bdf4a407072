"""Every on-disk format, written here with its real header, layout and label convention, and read back.

References: the arrays each file was written from (exact for lossless formats), numpy's own
float32 division for the [0, 1] scaling, Pillow's resize and the ITU-R 601-2 luma formula for
image folders, and Python's unrestricted pickle for the files our Python 2 writer produces.
"""
from __future__ import annotations

import gzip
import pickle
import re
import struct

import numpy as np
import pytest

import landscape as ls
from landscape.benchmarks.data import py2_pickle, write_cifar10
from landscape.data.cifar import CIFAR10_CLASSES
from landscape.data.idx import FASHION_CLASSES
from landscape.errors import DatasetError


def _imgs(n, shape=(3, 32, 32), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _as_used(img):
    return img.astype(np.float32) / np.float32(255)


# -- CIFAR-10 --------------------------------------------------------------------------------
def test_our_python2_writer_is_what_pickle_reads(tmp_path):
    """The writer itself, checked against the unrestricted pickle (both encodings torchvision and we use)."""
    img = _imgs(6)
    folder = write_cifar10(tmp_path / "py", img, [0, 1, 2, 3, 4, 9])
    raw = (folder / "test_batch").read_bytes()
    assert raw[:2] == b"\x80\x02" and b"U\x04data" in raw and b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    as_bytes = pickle.loads(raw, encoding="bytes")
    as_latin1 = pickle.loads(raw, encoding="latin1")
    np.testing.assert_array_equal(as_bytes[b"data"], img.reshape(6, -1))
    np.testing.assert_array_equal(as_latin1["data"], img.reshape(6, -1))
    assert as_latin1["labels"] == [0, 1, 2, 3, 4, 9] and as_bytes[b"batch_label"] == b"test batch of 1"
    assert pickle.loads((folder / "batches.meta").read_bytes(), encoding="latin1")["label_names"] == CIFAR10_CLASSES


@pytest.mark.parametrize("python2", [True, False])
def test_cifar10_python_version_in_a_torchvision_root(tmp_path, python2):
    train, test = _imgs(30, seed=1), _imgs(24, seed=2)
    ytr, yte = np.arange(30) % 10, (np.arange(24) * 7) % 10
    write_cifar10(tmp_path / "cifar-10-batches-py", train, ytr, "train", python2=python2)
    write_cifar10(tmp_path / "cifar-10-batches-py", test, yte, "test", python2=python2)
    tr = ls.load_dataset(f"cifar10:{tmp_path}", "train")
    te = ls.load_dataset(f"cifar10:{tmp_path / 'cifar-10-batches-py'}", "test")  # the folder itself works too
    assert tr.raw.dtype == np.uint8 and tr.input_shape == (3, 32, 32) and tr.channels == 3
    np.testing.assert_array_equal(tr.raw, train)  # five batches, in order
    np.testing.assert_array_equal(tr.y, ytr)
    np.testing.assert_array_equal(te.x, _as_used(test))
    np.testing.assert_array_equal(te.y, yte)
    assert te.classes == CIFAR10_CLASSES and te.image_size == (32, 32)
    assert "python version" in te.source


def test_cifar10_python_version_repickled_with_protocol_5(tmp_path):
    """A batch a user re-saved with Python 3's highest protocol (numpy arrays via _frombuffer)."""
    img, y = _imgs(12, seed=14), np.arange(12) % 10
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": img.reshape(12, -1), "labels": y.tolist()}, protocol=5))
    d = ls.load_dataset(f"cifar10:{tmp_path}")
    np.testing.assert_array_equal(d.raw, img)
    assert d.classes == CIFAR10_CLASSES  # no batches.meta: the published names


def test_cifar10_binary_version(tmp_path):
    img, y = _imgs(25, seed=3), np.arange(25) % 10
    write_cifar10(tmp_path / "cifar-10-batches-bin", img, y, "test", version="binary")
    assert (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").stat().st_size == 25 * 3073
    d = ls.load_dataset(f"cifar10:{tmp_path}", "test")
    np.testing.assert_array_equal(d.raw, img)
    np.testing.assert_array_equal(d.y, y)
    assert d.classes[9] == "truck" and "binary version" in d.source
    # a pixel's place in the record: channel-major, row-major (record 3, green plane, row 4, column 5)
    rec = np.fromfile(tmp_path / "cifar-10-batches-bin" / "test_batch.bin", np.uint8).reshape(25, 3073)
    assert d.raw[3, 1, 4, 5] == rec[3, 1 + 1024 + 4 * 32 + 5]


# -- CIFAR-100 -------------------------------------------------------------------------------
FINE = [f"fine{i:02d}" for i in range(100)]
COARSE = [f"coarse{i:02d}" for i in range(20)]


def _cifar100_python(folder, img, fine, coarse, split):
    folder.mkdir(parents=True, exist_ok=True)
    batch = {"filenames": [f"f{i}.png" for i in range(len(fine))], "batch_label": f"{split}ing batch 1 of 1",
             "fine_labels": [int(v) for v in fine], "coarse_labels": [int(v) for v in coarse],
             "data": img.reshape(len(img), -1)}
    (folder / split).write_bytes(py2_pickle(batch))
    (folder / "meta").write_bytes(py2_pickle({"fine_label_names": FINE, "coarse_label_names": COARSE}))


@pytest.mark.parametrize("version", ["python", "binary"])
def test_cifar100_fine_and_coarse_labels(tmp_path, version):
    img, fine = _imgs(30, seed=4), (np.arange(30) * 37) % 100
    coarse = fine // 5
    if version == "python":
        _cifar100_python(tmp_path / "cifar-100-python", img, fine, coarse, "test")
    else:
        folder = tmp_path / "cifar-100-binary"
        folder.mkdir()
        rec = np.concatenate([coarse[:, None], fine[:, None], img.reshape(30, -1)], axis=1).astype(np.uint8)
        rec.tofile(folder / "test.bin")
        (folder / "fine_label_names.txt").write_text("\n".join(FINE) + "\n")
        (folder / "coarse_label_names.txt").write_text("\n".join(COARSE) + "\n")
    d = ls.load_dataset(f"cifar100:{tmp_path}", "test")
    c = ls.load_dataset(f"cifar100:{tmp_path}?labels=coarse", "test")
    np.testing.assert_array_equal(d.raw, img)
    np.testing.assert_array_equal(d.y, fine)
    np.testing.assert_array_equal(c.y, coarse)
    assert d.classes == FINE and c.classes == COARSE and len(c.classes) == 20
    assert ls.load_dataset(f"cifar100:{tmp_path}", "test", labels="coarse").y.tolist() == coarse.tolist()


# -- MNIST and Fashion-MNIST -----------------------------------------------------------------
def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_idx(folder, prefix, images, labels, gz, kaggle=False):
    folder.mkdir(parents=True, exist_ok=True)
    sep = "." if kaggle else "-"
    for stem, arr in [(f"{prefix}-images{sep}idx3-ubyte", images), (f"{prefix}-labels{sep}idx1-ubyte", labels)]:
        raw = _idx(arr)
        (folder / (stem + (".gz" if gz else ""))).write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_in_a_torchvision_root(tmp_path, gz):
    images, labels = _imgs(30, (28, 28), seed=5), (np.arange(30) % 10).astype(np.uint8)
    _write_idx(tmp_path / "MNIST" / "raw", "t10k", images, labels, gz)
    _write_idx(tmp_path / "MNIST" / "raw", "train", images[::-1].copy(), labels[::-1].copy(), gz)
    raw = (tmp_path / "MNIST" / "raw" / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))).read_bytes()
    assert (gzip.decompress(raw) if gz else raw)[:4] == b"\x00\x00\x08\x03"  # the magic number 2051
    te, tr = ls.load_dataset(f"mnist:{tmp_path}", "test"), ls.load_dataset(f"mnist:{tmp_path}", "train")
    assert te.input_shape == (1, 28, 28) and te.raw.dtype == np.uint8
    np.testing.assert_array_equal(te.raw[:, 0], images)
    np.testing.assert_array_equal(te.x[:, 0], _as_used(images))
    np.testing.assert_array_equal(te.y, labels)
    np.testing.assert_array_equal(tr.raw[:, 0], images[::-1])
    assert te.classes == [str(i) for i in range(10)]


def test_fashion_mnist_and_kaggle_file_names(tmp_path):
    images, labels = _imgs(24, (28, 28), seed=6), (np.arange(24) % 10).astype(np.uint8)
    _write_idx(tmp_path / "FashionMNIST" / "raw", "t10k", images, labels, gz=True)
    d = ls.load_dataset(f"fashion-mnist:{tmp_path}", "test")
    np.testing.assert_array_equal(d.raw[:, 0], images)
    assert d.classes == FASHION_CLASSES and d.classes[9] == "Ankle boot"
    # Kaggle's MNIST keeps the files under dotted names, in one folder
    _write_idx(tmp_path / "kaggle", "t10k", images, labels, gz=False, kaggle=True)
    np.testing.assert_array_equal(ls.load_dataset(f"mnist:{tmp_path / 'kaggle'}").y, labels)
    # a root holding only Fashion-MNIST points a mnist: spec at the right kind
    with pytest.raises(DatasetError, match="holds fashion-mnist data: use fashion-mnist:"):
        ls.load_dataset(f"mnist:{tmp_path}", "test")


# -- SVHN -----------------------------------------------------------------------------------
def test_svhn_mat_with_label_10_for_digit_0(tmp_path):
    from scipy.io import savemat

    img = _imgs(26, seed=7)  # (N, C, H, W)
    digits = np.arange(26) % 10
    mat_x = np.transpose(img, (2, 3, 1, 0))  # SVHN keeps (H, W, C, N)
    mat_y = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]  # (N, 1), 10 is the digit 0
    savemat(tmp_path / "test_32x32.mat", {"X": mat_x, "y": mat_y})
    savemat(tmp_path / "train_32x32.mat", {"X": mat_x[..., :10], "y": mat_y[:10]})
    savemat(tmp_path / "extra_32x32.mat", {"X": mat_x[..., 10:], "y": mat_y[10:]})
    d = ls.load_dataset(f"svhn:{tmp_path}", "test")
    np.testing.assert_array_equal(d.raw, img)
    np.testing.assert_array_equal(d.y, digits)
    assert d.classes == [str(i) for i in range(10)] and d.input_shape == (3, 32, 32)
    assert len(ls.load_dataset(f"svhn:{tmp_path}", "train")) == 10
    both = ls.load_dataset(f"svhn:{tmp_path}?extra=1", "train")
    np.testing.assert_array_equal(both.raw, img)  # train then extra


# -- FER-2013 -------------------------------------------------------------------------------
def test_fer2013_usage_splits(tmp_path):
    rng = np.random.default_rng(8)
    usage = ["Training"] * 12 + ["PublicTest"] * 6 + ["PrivateTest"] * 6
    pixels = rng.integers(0, 256, (24, 48 * 48))
    labels = np.arange(24) % 7
    rows = [f"{e},{' '.join(map(str, p))},{u}" for e, p, u in zip(labels, pixels, usage)]
    (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    tr = ls.load_dataset(f"fer2013:{tmp_path / 'fer2013.csv'}", "train")
    te = ls.load_dataset(f"fer2013:{tmp_path}", "test")  # a folder holding fer2013.csv
    pub = ls.load_dataset(f"fer2013:{tmp_path / 'fer2013.csv'}?usage=PublicTest", "test")
    priv = ls.load_dataset(f"fer2013:{tmp_path / 'fer2013.csv'}", "test", usage=("PrivateTest",))
    assert tr.input_shape == (1, 48, 48) and tr.raw.dtype == np.uint8 and len(tr) == 12
    np.testing.assert_array_equal(tr.raw.reshape(12, -1), pixels[:12])
    np.testing.assert_array_equal(te.y, labels[12:])
    np.testing.assert_array_equal(pub.raw.reshape(6, -1), pixels[12:18])
    np.testing.assert_array_equal(priv.y, labels[18:])
    assert tr.classes == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert "PrivateTest" in priv.source
    # the challenge's icml_face_data.csv: header names with leading spaces, another column order
    icml = [f"{e}, {u}, {' '.join(map(str, p))}" for e, p, u in zip(labels, pixels, usage)]
    (tmp_path / "icml_face_data.csv").write_text("emotion, Usage, pixels\n" + "\n".join(icml) + "\n")
    np.testing.assert_array_equal(ls.load_dataset(f"fer2013:{tmp_path / 'icml_face_data.csv'}", "test").y,
                                  labels[12:])


# -- image folders --------------------------------------------------------------------------
def _save(path, arr, fmt="PNG"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def _folder(root, n_per_class=8, size=(20, 16), mode="RGB", fmt="PNG", seed=9):
    rng = np.random.default_rng(seed)
    arrays = {}
    for cls in ("happy", "anger", "neutral"):
        for i in range(n_per_class):
            shape = (*size, 3) if mode == "RGB" else size
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
            if fmt == "JPEG":  # smooth images, so that lossy compression stays close
                arr = np.clip(np.cumsum(np.cumsum(rng.integers(-3, 4, shape), 0), 1) + 128, 0, 255).astype(np.uint8)
            name = f"img{i:02d}.{'png' if fmt == 'PNG' else 'jpg'}"
            _save(root / cls / name, arr, fmt)
            arrays[(cls, name)] = arr
    return arrays


def test_imagefolder_png_rgb_follows_torchvision_labels(tmp_path):
    arrays = _folder(tmp_path / "faces")
    (tmp_path / "faces" / "anger" / "notes.txt").write_text("not an image")  # ignored, as torchvision does
    (tmp_path / "faces" / ".ipynb_checkpoints").mkdir()  # hidden: not a class
    d = ls.load_dataset(f"imagefolder:{tmp_path / 'faces'}")
    assert d.classes == ["anger", "happy", "neutral"]  # sorted folder names, label = index
    assert d.input_shape == (3, 20, 16) and d.raw.dtype == np.uint8 and len(d) == 24
    order = [(c, f"img{i:02d}.png") for c in d.classes for i in range(8)]
    np.testing.assert_array_equal(d.raw, np.stack([np.moveaxis(arrays[k], 2, 0) for k in order]))
    np.testing.assert_array_equal(d.y, np.repeat([0, 1, 2], 8))


def test_imagefolder_grey_png_gives_one_channel_and_grayscale_converts_rgb(tmp_path):
    grey = _folder(tmp_path / "ck", mode="L", size=(12, 12))
    d = ls.load_dataset(f"imagefolder:{tmp_path / 'ck'}")
    assert d.channels == 1
    np.testing.assert_array_equal(d.raw[0, 0], grey[("anger", "img00.png")])
    rgb = _folder(tmp_path / "raf", size=(10, 10))
    g = ls.load_dataset(f"imagefolder:{tmp_path / 'raf'}?grayscale=1")
    a = rgb[("anger", "img00.png")].astype(np.float64)
    luma = a[..., 0] * 299 / 1000 + a[..., 1] * 587 / 1000 + a[..., 2] * 114 / 1000  # ITU-R 601-2
    assert g.channels == 1 and np.abs(g.raw[0, 0] - luma).max() <= 1.0


def test_imagefolder_resize_and_split_folders_as_raf_db_keeps_them(tmp_path):
    from PIL import Image

    train = _folder(tmp_path / "raf" / "train", size=(30, 24), seed=10)
    _folder(tmp_path / "raf" / "test", n_per_class=4, size=(30, 24), seed=11)
    tr = ls.load_dataset(f"imagefolder:{tmp_path / 'raf'}?resize=12x10", "train")
    te = ls.load_dataset(f"imagefolder:{tmp_path / 'raf'}", "test", resize=(12, 10))
    assert len(tr) == 24 and len(te) == 12 and tr.input_shape == (3, 12, 10) and te.input_shape == (3, 12, 10)
    ref = Image.fromarray(train[("anger", "img03.png")]).resize((10, 12), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(tr.raw[3], np.moveaxis(np.asarray(ref), 2, 0))
    assert "resized to 12x10" in tr.source


def test_imagefolder_jpeg(tmp_path):
    arrays = _folder(tmp_path / "j", fmt="JPEG", size=(16, 16))
    d = ls.load_dataset(f"imagefolder:{tmp_path / 'j'}")
    want = np.moveaxis(arrays[("anger", "img00.jpg")], 2, 0).astype(int)
    assert d.input_shape == (3, 16, 16) and np.abs(d.raw[0].astype(int) - want).mean() < 4  # lossy, quality 95


def test_imagefolder_mixed_sizes_say_how_to_resize(tmp_path):
    _save(tmp_path / "f" / "a" / "x.png", np.zeros((10, 12, 3), np.uint8))
    _save(tmp_path / "f" / "b" / "y.png", np.zeros((14, 12, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"2 different sizes \(10x12 in x.png, 14x12 in y.png.*resize=10x12"):
        ls.load_dataset(f"imagefolder:{tmp_path / 'f'}")
    assert ls.load_dataset(f"imagefolder:{tmp_path / 'f'}?resize=8").input_shape == (3, 8, 8)


# -- npz ------------------------------------------------------------------------------------
def test_npz_layouts_and_value_conventions(tmp_path):
    x = np.random.default_rng(12).random((6, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 0, 1, 2]), classes=np.array(["a", "b", "c"]))
    d = ls.load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert np.array_equal(d.x, x) and d.classes == ["a", "b", "c"]
    assert ls.load_dataset(str(tmp_path / "d.npz")).x.shape == (6, 3, 4, 4)
    # split keys; 8-bit images saved as floats 0..255 are recognised and stored as uint8
    np.savez(tmp_path / "s.npz", x_train=np.zeros((4, 8, 8)), y_train=np.arange(4), x_test=np.ones((2, 8, 8)) * 255,
             y_test=np.arange(2))
    te = ls.load_dataset(f"npz:{tmp_path / 's.npz'}", "test")
    assert te.x.shape == (2, 1, 8, 8) and te.raw.dtype == np.uint8 and te.x.max() == 1.0
    # channels-last images (Keras, PIL) become (N, C, H, W)
    img = _imgs(5, (6, 7, 3), seed=13)
    np.savez(tmp_path / "hwc.npz", x=img, y=np.zeros(5, int))
    np.testing.assert_array_equal(ls.load_dataset(f"npz:{tmp_path / 'hwc.npz'}").raw, np.moveaxis(img, 3, 1))
    # data you normalised yourself stay exactly as saved (never divided by 255)
    normed = (x - 0.5) * 4
    np.savez(tmp_path / "n.npz", x=normed, y=np.zeros(6, int))
    np.testing.assert_array_equal(ls.load_dataset(f"npz:{tmp_path / 'n.npz'}").x, normed)
    # a label column (N, 1) is accepted
    np.savez(tmp_path / "col.npz", x=x, y=np.arange(6)[:, None] % 3)
    assert ls.load_dataset(f"npz:{tmp_path / 'col.npz'}").y.tolist() == [0, 1, 2, 0, 1, 2]


def test_one_root_holds_them_all(tmp_path):
    """A torchvision ``root=`` folder with several datasets: each spec finds its own."""
    write_cifar10(tmp_path / "cifar-10-batches-py", _imgs(10), np.arange(10), "test")
    _cifar100_python(tmp_path / "cifar-100-python", _imgs(10, seed=1), np.arange(10) * 9, np.arange(10), "test")
    _write_idx(tmp_path / "MNIST" / "raw", "t10k", _imgs(12, (28, 28)), np.arange(12, dtype=np.uint8) % 10, True)
    _write_idx(tmp_path / "FashionMNIST" / "raw", "t10k", _imgs(14, (28, 28)), np.arange(14, dtype=np.uint8) % 10,
               True)
    assert [len(ls.load_dataset(f"{k}:{tmp_path}")) for k in ("cifar10", "cifar100", "mnist", "fashion-mnist")] == [
        10, 10, 12, 14]


def test_bench_data_prints_every_method(capsys):
    from viz.cli import main

    assert main(["bench", "data", "--images", "30", "--rounds", "1", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    for name in ("landscape python", "pickle.load (torchvision)", "landscape binary", "float32 split (old loader)",
                 "stream batches (8)", "tensors() at once"):
        assert name in out, name
    assert "give identical images: True" in out
    assert re.search(r"float32 split [\d.]+ MiB \(3\.9\dx\)", out)  # uint8 holds a quarter (plus the labels)
