"""The training side: determinism, recorded meta and the shipped manifest."""
from __future__ import annotations

import json

import pytest
import torch

import landscape as ls
from landscape.train import ZOO, Recipe, build_zoo, fit
from tests.conftest import ZOO as ZOO_DIR


def test_fit_is_deterministic():
    r = Recipe("t", "mlp", epochs=2, arch_kwargs={"hidden": [16, 8]}, seed=3)
    (m1, meta1), (m2, meta2) = fit(r), fit(r)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert meta1 == meta2
    m3, _ = fit(Recipe("t", "mlp", epochs=2, arch_kwargs={"hidden": [16, 8]}, seed=4))
    assert not torch.equal(m1.head.weight, m3.head.weight)


def test_meta_records_recipe():
    _, meta = fit(Recipe("t", "mlp", epochs=1, lr=0.05, arch_kwargs={"hidden": [8]}, seed=1))
    assert set(ls.checkpoint.META_KEYS) <= set(meta)
    assert meta["seed"] == 1 and meta["train"]["lr"] == 0.05 and meta["epoch"] == 1
    assert 0 <= meta["metrics"]["test_accuracy"] <= 1


def test_build_zoo_writes_manifest_and_snapshots(tmp_path, monkeypatch):
    monkeypatch.setattr("landscape.train.ZOO", [Recipe("tiny-mlp", "mlp", epochs=2, arch_kwargs={"hidden": [8]},
                                                       snapshots=True)])
    rows = build_zoo(tmp_path, quiet=True)
    assert (tmp_path / "tiny-mlp.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "snapshots" / "tiny-mlp").iterdir()) == [
        "epoch001.safetensors", "epoch002.safetensors"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest[0]["test_accuracy"] == rows[0]["test_accuracy"]
    assert "| tiny-mlp.safetensors | mlp | ce |" in (tmp_path / "README.md").read_text()
    snap = ls.load_checkpoint(tmp_path / "snapshots" / "tiny-mlp" / "epoch002.safetensors")
    final = ls.load_checkpoint(tmp_path / "tiny-mlp.safetensors")
    assert snap.digest == final.digest


def test_shipped_manifest_matches_checkpoints(digits_test):
    manifest = json.loads((ZOO_DIR / "manifest.json").read_text())
    assert {r["name"] for r in manifest} == {r.name for r in ZOO}
    readme = (ZOO_DIR / "README.md").read_text()
    for row in manifest:
        ck = ls.load_checkpoint(ZOO_DIR / row["file"], device="cpu")
        loss, acc = ck.evaluate(digits_test)
        assert acc == pytest.approx(row["test_accuracy"], abs=1e-9), row["name"]
        assert ck.meta["metrics"]["test_accuracy"] == row["test_accuracy"]
        assert f"{row['test_accuracy']:.4f}" in readme
        assert row["test_accuracy"] > 0.85, f"{row['name']} trained poorly"


def test_shipped_size_budget():
    total = sum(p.stat().st_size for p in ZOO_DIR.rglob("*") if p.is_file())
    assert total < 20 * 2**20
