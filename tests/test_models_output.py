"""The output adapter: models returning a dict, a tuple or a Hugging Face style object give the numbers of plain logits.

Reference: the same weights in a model whose forward returns the logits tensor. Each wrapper is a
subclass of the zoo ``cnn`` that changes only what ``forward`` returns, so parameter names (and
hence directions) are shared and every number must agree with the plain model's.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import landscape as ls
from landscape import models
from landscape.checkpoint import as_checkpoint
from landscape.errors import ArchitectureError, ArgumentError
from landscape.objective import logits_of, select_logits, set_output


class DictCNN(models.CNN):
    def forward(self, x):
        f = self.features(x)
        return {"features": f, "logits": self.head(f), "aux": self.head(f) * 0.5}


class TupleCNN(models.CNN):
    def forward(self, x):  # auxiliary head first, so "take the first element" would be wrong
        f = self.features(x)
        return self.head(f) * 0.3, self.head(f)


@dataclasses.dataclass
class ImageClassifierOutput:  # the shape of transformers' ModelOutput: attributes, logits among them
    loss: torch.Tensor | None
    logits: torch.Tensor
    hidden_states: tuple


class HFCNN(models.CNN):
    def forward(self, x):
        f = self.features(x)
        return ImageClassifierOutput(loss=None, logits=self.head(f), hidden_states=(f,))


WRAPPERS = [(DictCNN, "logits"), (TupleCNN, 1), (HFCNN, "logits"), (TupleCNN, lambda out: out[1])]
IDS = ["dict-key", "tuple-position", "hf-attribute", "callable"]


def build(cls, seed=0):
    torch.manual_seed(seed)
    return cls(input_shape=(1, 8, 8), num_classes=10).eval()


@pytest.fixture(scope="module")
def plain():
    return as_checkpoint(build(models.CNN))


@pytest.fixture(scope="module")
def data(digits_test):
    return digits_test.subset(48, seed=0)


def wrapped(cls, output):
    model = build(cls)
    return as_checkpoint(model, output=output)


@pytest.mark.parametrize("cls,output", WRAPPERS, ids=IDS)
def test_surface_line_and_objective(plain, data, cls, output):
    ck = wrapped(cls, output)
    dirs = ls.random_directions(plain.model, n=2, seed=0)
    a = ls.surface(plain, data, dirs, x=(-1, 1, 3), y=(-1, 1, 3), verbose=False)
    b = ls.surface(ck, data, dirs, x=(-1, 1, 3), y=(-1, 1, 3), verbose=False)
    np.testing.assert_allclose(b.loss, a.loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b.accuracy, a.accuracy, atol=1e-12)
    la = ls.interpolate(plain, None, data, steps=3, seed=1, verbose=False)
    lb = ls.interpolate(ck, None, data, steps=3, seed=1, verbose=False)
    np.testing.assert_allclose(lb.loss, la.loss, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cls,output", WRAPPERS[:3], ids=IDS[:3])
def test_hessian(plain, data, cls, output):
    from landscape.hvp import HessianOperator

    ck = wrapped(cls, output)
    ops = [HessianOperator.from_checkpoint(c, data, dtype=torch.float64) for c in (plain, ck)]
    v = torch.randn(ops[0].size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(ops[1].matvec(v), ops[0].matvec(v), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("cls,output", WRAPPERS, ids=IDS)
def test_features_and_accuracy(plain, data, cls, output):
    ck = wrapped(cls, output)
    ref = ls.extract_features(plain, data, layer="body.conv3")
    got = ls.extract_features(ck, data, layer="body.conv3")  # a named layer runs the whole forward
    np.testing.assert_allclose(got.x, ref.x, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got.pred, ref.pred)
    assert ck.evaluate(data) == pytest.approx(plain.evaluate(data), rel=1e-6)


def test_training_honours_the_adapter(tmp_path):
    """fit() on a model that returns a dict trains exactly as the plain model (same seed, same steps)."""
    from landscape.train import Recipe, fit

    models.register("dict-cnn-test", DictCNN)
    try:
        a, meta_a = fit(Recipe("plain", "cnn", epochs=1, arch_kwargs={"channels": (4, 4, 4)}))
        b, meta_b = fit(Recipe("dict", "dict-cnn-test", epochs=1, arch_kwargs={"channels": (4, 4, 4)},
                               output="logits"))
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb
            torch.testing.assert_close(vb, va, rtol=1e-5, atol=1e-6)
        assert meta_b["output"] == "logits" and "output" not in meta_a
        # the adapter travels in the file's meta and comes back on load
        path = ls.save_checkpoint(tmp_path / "dict.safetensors", b, meta_b)
        ck = ls.load_checkpoint(path, device="cpu")
        assert ck.meta["output"] == "logits"
        x = torch.rand(3, 1, 8, 8)
        torch.testing.assert_close(logits_of(ck.model, x), b(x)["logits"])
    finally:
        models._ARCHS.pop("dict-cnn-test", None)


def test_hugging_face_convention_needs_no_adapter(plain):
    """A mapping with 'logits' or an object with a .logits tensor is read as such without output=."""
    x = torch.rand(2, 1, 8, 8)
    ref = plain.model(x)
    for cls in (DictCNN, HFCNN):
        model = build(cls)
        torch.testing.assert_close(logits_of(model, x), ref)


def test_mistakes_are_named():
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ArchitectureError, match="returns a tuple of 2.*output="):
        logits_of(build(TupleCNN), x)
    with pytest.raises(ArchitectureError, match="no position 5"):
        logits_of(set_output(build(TupleCNN), 5), x)
    with pytest.raises(ArchitectureError, match=r"keys \['aux', 'features', 'logits'\]\) without key or attribute"):
        logits_of(set_output(build(DictCNN), "scores"), x)
    with pytest.raises(ArchitectureError, match="picks a tuple"):
        select_logits(ImageClassifierOutput(None, torch.zeros(1, 2), ()), "hidden_states")
    with pytest.raises(ArgumentError, match="output must be"):
        set_output(build(DictCNN), 1.5)
    with pytest.raises(ArgumentError, match="output must be"):
        as_checkpoint(build(DictCNN), output=True)


def test_the_adapter_is_only_an_attribute():
    """Setting it leaves the weights, the state-dict keys and the module tree alone; None removes it."""
    model = build(TupleCNN)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [n for n, _ in model.named_modules()]
    set_output(model, lambda out: out[1])
    assert [n for n, _ in model.named_modules()] == modules
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    set_output(model, None)
    with pytest.raises(ArchitectureError):
        logits_of(model, torch.rand(1, 1, 8, 8))


def test_a_bad_output_in_a_file_names_the_file(tmp_path):
    meta = {"arch": "cnn", "input_shape": [1, 8, 8], "num_classes": 10, "output": [0]}
    path = ls.save_checkpoint(tmp_path / "bad.safetensors", build(models.CNN), meta)
    with pytest.raises(ls.errors.CheckpointError, match=r"bad.safetensors: meta\['output'\] must be"):
        ls.load_checkpoint(path, device="cpu")
    ck = ls.load_checkpoint(path, device="cpu", output=lambda out: out)  # the caller's adapter wins
    assert "output" not in ck.meta and callable(ls.objective.output_of(ck.model))
