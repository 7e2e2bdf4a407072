"""The Dataset itself: digits, uint8 storage, statistics, stratified subsets, streaming, specs, checkpoint checks.

The file formats are in test_data_formats.py, bad files and hostile pickles in test_data_files.py.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import landscape as ls
from landscape.data import NormalizationWarning, stratified_indices
from landscape.errors import ArgumentError, DatasetError

RNG = np.random.default_rng(0)


def _images(n=40, shape=(3, 6, 5), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


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
    train_rows = {r.tobytes() for r in train.x.reshape(len(train), -1)}
    dup = sum(r.tobytes() in train_rows for r in test.x.reshape(len(test), -1))
    assert dup <= 2  # load_digits itself holds a few duplicate images


def test_uint8_stays_uint8_and_scales_exactly_when_used():
    img = _images()
    d = ls.Dataset(img, np.arange(40) % 4, list("abcd"), "u8")
    assert d.raw.dtype == np.uint8 and d.raw.nbytes == img.nbytes and d.is_8bit
    ref = img.astype(np.float32) / np.float32(255)  # numpy's correctly rounded division
    np.testing.assert_array_equal(d.x, ref)
    x, y = d.tensors()
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    np.testing.assert_array_equal(x.numpy(), ref)
    x64, _ = d.tensors(dtype=torch.float64)
    np.testing.assert_allclose(x64.numpy(), img / 255.0, rtol=0, atol=1e-15)
    # a subset keeps the compact storage
    assert d.subset(8, seed=1).raw.dtype == np.uint8
    # float inputs are kept as float32, used as they are (no scaling)
    f = ls.Dataset(img.astype(np.float64), np.arange(40) % 4, list("abcd"))
    assert f.raw.dtype == np.float32 and f.x.max() > 1


def test_read_only_arrays_are_copied_once():
    img = _images()
    ro = np.frombuffer(img.tobytes(), dtype=np.uint8).reshape(img.shape)
    assert not ro.flags.writeable
    d = ls.Dataset(ro, np.zeros(40, int), ["a"])
    assert d.raw.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on non-writable numpy memory
        next(d.batches(8))


@pytest.mark.parametrize("uint8", [True, False])
def test_batches_equal_the_whole_split_bit_for_bit(uint8, digits_test):
    data = ls.Dataset(_images(50), np.arange(50) % 5, list("abcde"), "u8") if uint8 else digits_test
    norm = lambda x: (x - 0.3) / 0.2  # noqa: E731
    x, y = data.tensors()
    parts = list(data.batches(16, transform=norm))
    n = len(data)
    assert [len(b[1]) for b in parts] == [16] * (n // 16) + ([n % 16] if n % 16 else [])
    torch.testing.assert_close(torch.cat([b[0] for b in parts]), norm(x), rtol=0, atol=0)
    assert torch.equal(torch.cat([b[1] for b in parts]), y)
    p64 = torch.cat([b[0] for b in data.batches(7, dtype=torch.float64)])
    torch.testing.assert_close(p64, data.tensors(dtype=torch.float64)[0], rtol=0, atol=0)
    with pytest.raises(ArgumentError, match="batch_size must be >= 1"):
        next(data.batches(0))


@pytest.mark.gpu
def test_batches_stream_from_pinned_memory_with_the_same_numbers_on_cuda():
    data = ls.Dataset(_images(300, (3, 32, 32)), np.arange(300) % 10, [str(i) for i in range(10)])
    norm = lambda x: (x - 0.5) / 0.25  # noqa: E731
    ref_x, ref_y = data.tensors()
    got = [(xb, yb) for xb, yb in data.batches(64, device="cuda", transform=norm)]
    assert all(xb.is_cuda and yb.is_cuda for xb, yb in got)
    torch.testing.assert_close(torch.cat([g[0] for g in got]).cpu(), norm(ref_x), rtol=0, atol=0)
    assert torch.equal(torch.cat([g[1] for g in got]).cpu(), ref_y)
    # consuming slowly (work on the stream between batches) must not corrupt staged batches
    for (xb, _), i in zip(data.batches(64, device="cuda"), range(0, 300, 64)):
        torch.cuda._sleep(1_000_000)
        torch.testing.assert_close(xb.cpu(), ref_x[i:i + 64], rtol=0, atol=0)
    xc, _ = data.tensors("cuda")
    torch.testing.assert_close(xc.cpu(), ref_x, rtol=0, atol=0)


def test_statistics_match_numpy_float64_over_chunks(monkeypatch):
    img = _images(64, (3, 5, 4), seed=3)
    # the inputs as used (float32 pixel / 255), accumulated in float64
    ref = (img.astype(np.float32) / np.float32(255)).astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1)
    monkeypatch.setattr("landscape.data.dataset._STATS_ELEMENTS", 7 * 60)  # 7 samples per chunk: 10 chunks
    s = ls.Dataset(img, np.zeros(64, int), ["a"]).statistics()
    np.testing.assert_allclose(s["mean"], ref.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(s["std"], ref.std(axis=1), rtol=1e-12)
    np.testing.assert_allclose(s["min"], ref.min(axis=1), rtol=0)
    np.testing.assert_allclose(s["max"], ref.max(axis=1), rtol=0)


def test_normalization_of_the_training_split_is_what_the_shipped_checkpoints_record(mlp, digits_train):
    assert ls.data.normalization_of(digits_train) == mlp.meta["normalization"]
    const = ls.Dataset(np.full((4, 1, 2, 2), 0.5, np.float32), np.zeros(4, int), ["a"]).normalization
    assert const["mean"] == [0.5] and const["std"][0] == pytest.approx(1e-8)


def test_looks_normalized():
    x = RNG.random((30, 3, 4, 4)).astype(np.float32)
    y = np.zeros(30, int)
    assert not ls.Dataset(x, y, ["a"]).looks_normalized()  # raw [0, 1]
    assert not ls.Dataset(x * 255, y, ["a"]).looks_normalized()  # raw [0, 255] floats
    assert ls.Dataset((x - 0.5) / 0.29, y, ["a"]).looks_normalized()  # standardised: negative values
    assert ls.Dataset(x * 0.05, y, ["a"]).looks_normalized()  # channel means below 0.1
    assert not ls.Dataset(_images(30, (3, 4, 4)), y, ["a"]).looks_normalized()  # 8-bit images are raw


def test_subset_is_seeded_and_stratified(digits_test):
    d = digits_test
    a, b, c = d.subset(50, seed=1), d.subset(50, seed=1), d.subset(50, seed=2)
    assert len(a) == 50 and np.array_equal(a.y, b.y) and np.array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
    assert d.subset(None) is d and d.subset(10_000) is d
    counts, share = np.bincount(d.y), 50 * np.bincount(d.y) / len(d)
    for sub in (a, c, d.subset(123, seed=7)):
        exact = len(sub) * counts / len(d)
        got = np.bincount(sub.y, minlength=10)
        assert np.all((got == np.floor(exact)) | (got == np.ceil(exact))), (got, exact)
        assert got.sum() == len(sub)
    assert np.allclose(share, 5.0, atol=0.2)
    # samples are real rows of the split, in split order, without repeats
    rows = {r.tobytes(): i for i, r in enumerate(d.x.reshape(len(d), -1))}
    idx = [rows[r.tobytes()] for r in a.x.reshape(50, -1)]
    assert idx == sorted(set(idx))
    with pytest.raises(ArgumentError, match="subset must be >= 1"):
        d.subset(0)
    with pytest.raises(ArgumentError, match="seed must be >= 0"):
        d.subset(5, seed=-1)


def test_stratified_indices_tiny_classes_and_ties():
    y = np.repeat([0, 1, 2, 3], [100, 50, 3, 1])
    for seed in range(5):
        idx = stratified_indices(y, 10, seed)
        got = np.bincount(y[idx], minlength=4)
        # shares 6.49, 3.25, 0.19, 0.06: every class gets one, the extra one is taken back from
        # the class furthest above its share (class 1 at 3 > 3.25 - 1)
        assert got.tolist() == [6, 2, 1, 1]
        assert len(set(idx.tolist())) == 10 and np.all(np.diff(idx) > 0)
    # fewer samples than classes: largest remainders only, no minimum
    assert np.bincount(y[stratified_indices(y, 2, 0)], minlength=4).tolist() == [1, 1, 0, 0]
    # ties (four equal classes, 6 samples): the two extra samples go to classes chosen by the seed
    tied = np.repeat(np.arange(4), 10)
    winners = {tuple(np.bincount(tied[stratified_indices(tied, 6, s)], minlength=4)) for s in range(20)}
    assert all(sorted(w) == [1, 1, 2, 2] for w in winners) and len(winners) > 1
    assert np.array_equal(stratified_indices(tied, 6, 3), stratified_indices(tied, 6, 3))


def test_take_keeps_order_and_storage():
    d = ls.Dataset(_images(10), np.arange(10) % 2, ["a", "b"], "d")
    t = d.take([7, 2, 2])
    assert t.y.tolist() == [1, 0, 0] and np.array_equal(t.raw[0], d.raw[7]) and t.raw.dtype == np.uint8


@pytest.mark.parametrize("args,msg", [
    ((np.zeros((3, 4)), np.zeros(2, int), ["a"], "mine"), "dataset 'mine': 3 images but 2 labels"),
    ((np.zeros((0, 4)), np.zeros(0, int), ["a"], "mine"), "dataset 'mine' has no samples"),
    ((np.zeros((2, 4)), np.array([0, 5]), ["a", "b"], "mine"), r"labels span \[0, 5\] but there are 2 classes"),
    ((np.zeros((2, 4)), np.array([0.0, 1.0]), ["a", "b"], "mine"), "labels must be a 1-D array of integer"),
    ((np.array([["a", "b"]] * 2), np.zeros(2, int), ["a"], "mine"), "inputs must be numbers"),
    ((np.array([[0.0, np.nan], [1, 1]]), np.zeros(2, int), ["a"], "mine"), "sample 0 holds NaN or inf"),
])
def test_dataset_checks_name_the_dataset(args, msg):
    with pytest.raises(DatasetError, match=msg):
        ls.Dataset(*args)


def test_summary(digits_test):
    s = digits_test.summary()
    assert s["samples"] == 360 and s["num_classes"] == 10 and s["channels"] == 1 and s["image_size"] == [8, 8]
    assert sum(s["class_counts"]) == 360 and s["storage"] == "float32"
    assert s["normalization"]["mean"][0] == pytest.approx(float(digits_test.x.mean()), rel=1e-6)


@pytest.mark.parametrize("spec,kind,path,options", [
    ("digits", "digits", "", {}),
    ("cifar10:/d/x", "cifar10", "/d/x", {}),
    ("CIFAR100:/d?labels=coarse", "cifar100", "/d", {"labels": "coarse"}),
    ("imagefolder:faces?resize=48x40&grayscale", "imagefolder", "faces", {"resize": "48x40", "grayscale": ""}),
    ("FashionMNIST:/m", "fashion-mnist", "/m", {}),
    ("data/my.npz", "npz", "data/my.npz", {}),
    ("npz:a?b.npz", "npz", "a?b.npz", {}),
])
def test_parse_spec(spec, kind, path, options):
    assert ls.data.parse_spec(spec) == (kind, path, options)


@pytest.mark.parametrize("spec,kwargs,msg", [
    ("imagenet", {}, "unknown dataset 'imagenet'"),
    ("cifar", {}, "Did you mean 'cifar10'"),
    ("cifar10", {}, "needs a path"),
    ("cifar10:/no/such/dir", {}, "does not exist"),
    ("digits:some/dir", {}, "takes no path"),
    ("digits?x=1", {}, "unknown option 'x' for digits. It takes no options"),
    ("cifar100:some/dir?label=coarse", {}, "Did you mean 'labels'"),
    ("cifar100:some/dir?labels=super", {}, "labels='super' is not one of fine, coarse"),
    ("imagefolder:some/dir?resize=big", {}, "give a size N or HxW"),
    ("imagefolder:some/dir?grayscale=maybe", {}, "give true or false"),
    ("fer2013:some/dir?usage=Private", {}, "Training, PublicTest, PrivateTest"),
    ("imagefolder:some/dir?resize=32", {"resize": 32}, "given both in the spec"),
])
def test_bad_specs(spec, kwargs, msg):
    with pytest.raises(DatasetError, match=msg):
        ls.load_dataset(spec, **kwargs)


def test_bad_split():
    with pytest.raises(DatasetError, match="split 'val'"):
        ls.load_dataset("digits", split="val")


def test_spec_needs_file():
    assert not ls.data.spec_needs_file("digits")
    assert ls.data.spec_needs_file("cifar10:/x") and ls.data.spec_needs_file("x.npz")


def test_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 4), np.float32), y=np.array([0, 1]))
    assert len(ls.load_dataset("npz:~/d.npz")) == 2


def test_as_dataset_forms(digits_test):
    x, y = digits_test.tensors()
    for form in ((x, y), (x.numpy(), y.numpy()), torch.utils.data.TensorDataset(x, y),
                 torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)):
        d = ls.data.as_dataset(form)
        np.testing.assert_array_equal(d.x, digits_test.x)
        np.testing.assert_array_equal(d.y, digits_test.y)
    # uint8 tensors are used as they are (0..255), never rescaled behind the user's back
    raw = ls.data.as_dataset((torch.full((2, 1, 2, 2), 200, dtype=torch.uint8), torch.tensor([0, 1])))
    assert raw.raw.dtype == np.float32 and raw.x.max() == 200
    assert len(ls.data.as_dataset("digits", subset=30, seed=1)) == 30


# -- what a checkpoint checks before it uses the data ----------------------------------------
@pytest.fixture
def small_ckpt(tmp_path):
    def make(meta_extra=None, bare=False):
        model = ls.models.build("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[16])
        if bare:
            torch.save(model.state_dict(), tmp_path / "bare.pt")
            return tmp_path / "bare.pt"
        meta = {"arch": "mlp", "arch_kwargs": {"hidden": [16]}, "input_shape": [1, 8, 8], "num_classes": 10,
                "dataset": "digits", **(meta_extra or {})}
        return ls.save_checkpoint(tmp_path / "m.safetensors", model, meta)
    return make


def test_shape_mismatch_names_both_shapes_and_how_to_resize(small_ckpt):
    ck = ls.load_checkpoint(small_ckpt(), device="cpu")
    data = ls.Dataset(_images(4, (3, 32, 32)), np.arange(4), [str(i) for i in range(10)], "cifar-like")
    with pytest.raises(DatasetError, match=r"'cifar-like' has inputs of shape \(3, 32, 32\), but checkpoint 'm' "
                       r"expects \(1, 8, 8\): use digits; or resize an image folder with "
                       r"imagefolder:DIR\?resize=8x8&grayscale=1"):
        ck.prepare(data)


def test_labels_beyond_the_checkpoint_classes(small_ckpt):
    ck = ls.load_checkpoint(small_ckpt(), device="cpu")
    data = ls.Dataset(np.zeros((3, 1, 8, 8), np.float32), np.array([0, 4, 12]), [str(i) for i in range(13)], "d13")
    with pytest.raises(DatasetError, match="'d13' has labels up to 12 .13 classes., but checkpoint 'm' has 10 outputs"):
        ck.prepare(data)


def test_normalisation_channel_count_is_checked(small_ckpt, digits_test):
    ck = ls.load_checkpoint(small_ckpt(), device="cpu")
    import dataclasses

    ck3 = dataclasses.replace(ck, meta={**ck.meta, "normalization": {"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}})
    with pytest.raises(DatasetError, match="normalises 3 channel.s., but dataset 'digits/test' has 1"):
        ck3.prepare(digits_test)


def test_missing_normalisation_warns_once_with_a_bare_state_dict(small_ckpt, digits_test):
    """Issue 23: a bare state_dict with arch='mlp' on raw digits says how to pass the normalisation."""
    ck = ls.load_checkpoint(small_ckpt(bare=True), device="cpu", arch="mlp", meta={"arch_kwargs": {"hidden": [16]}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            ck.evaluate(digits_test)
    norm = [w for w in caught if issubclass(w.category, NormalizationWarning)]
    assert len(norm) == 1, [str(w.message) for w in caught]
    text = str(norm[0].message)
    assert "no normalisation in its meta" in text and "meta={'normalization'" in text and "--normalization" in text
    # normalised inputs, or a checkpoint with a normalisation: silent
    x, y = digits_test.tensors()
    quiet = [ls.data.as_dataset(((x - 0.3) / 0.37, y)), digits_test]
    with_norm = ls.load_checkpoint(small_ckpt({"normalization": {"mean": [0.3], "std": [0.37]}}), device="cpu")
    own_module = ls.checkpoint.as_checkpoint(ck.model)  # a module of one's own takes data as given
    with warnings.catch_warnings():
        warnings.simplefilter("error", NormalizationWarning)
        ck.prepare(quiet[0])
        with_norm.prepare(quiet[1])
        own_module.prepare(digits_test)


def test_the_checkpoint_normalisation_wins_over_the_data_statistics(small_ckpt, digits_test):
    ck = ls.load_checkpoint(small_ckpt({"normalization": {"mean": [0.25], "std": [0.5]}}), device="cpu")
    x, _ = ck.prepare(digits_test)
    torch.testing.assert_close(x, (torch.as_tensor(digits_test.x) - 0.25) / 0.5, rtol=0, atol=0)
    assert digits_test.normalization["mean"][0] != 0.25
