"""The training side: determinism, recorded meta and the shipped manifest."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import landscape as ls
from landscape.errors import ArgumentError
from landscape.train import ZOO, Recipe, build_zoo, fit
from tests.conftest import ROOT
from tests.conftest import ZOO as ZOO_DIR

TINY = Recipe("tiny", "mlp", epochs=3, arch_kwargs={"hidden": [32, 16]}, seed=5)

# trains TINY in a fresh process and prints the SHA-256 of every weight's bytes
_TRAIN_AND_HASH = """
import hashlib, torch
from landscape.train import Recipe, fit
model, meta = fit(Recipe("tiny", "mlp", epochs=3, arch_kwargs={"hidden": [32, 16]}, seed=5))
h = hashlib.sha256()
for k, v in model.state_dict().items():
    h.update(k.encode()); h.update(v.detach().contiguous().numpy().tobytes())
print(h.hexdigest(), meta["train"]["threads"], torch.get_num_threads())
"""


def test_fit_is_deterministic():
    r = Recipe("t", "mlp", epochs=2, arch_kwargs={"hidden": [16, 8]}, seed=3)
    (m1, meta1), (m2, meta2) = fit(r), fit(r)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert meta1 == meta2
    m3, _ = fit(Recipe("t", "mlp", epochs=2, arch_kwargs={"hidden": [16, 8]}, seed=4))
    assert not torch.equal(m1.head.weight, m3.head.weight)


@pytest.mark.slow
def test_two_trainings_in_two_processes_are_bit_identical():
    # the processes start with different default thread counts; fit pins its own (Recipe.threads = 1)
    runs = {}
    for threads in ("1", "2"):  # both at once: most of each run is importing torch
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": str(ROOT)}
        runs[threads] = subprocess.Popen([sys.executable, "-c", _TRAIN_AND_HASH], cwd=ROOT, env=env, text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    digests = []
    for threads, proc in runs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        digest, trained_on, after = out.split()
        assert trained_on == "1" and after == threads  # trained on one thread, the caller's setting restored
        digests.append(digest)
    assert digests[0] == digests[1]


def test_fit_pins_threads_and_deterministic_algorithms_and_restores_them():
    threads, flag = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    seen = {}

    def spy(epoch, model, meta):
        seen["threads"], seen["flag"] = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()

    torch.set_num_threads(2)
    try:
        _, meta = fit(Recipe("t", "mlp", epochs=1, arch_kwargs={"hidden": [8]}, threads=1), on_epoch=spy)
        assert seen == {"threads": 1, "flag": True}
        assert torch.get_num_threads() == 2 and torch.are_deterministic_algorithms_enabled() == flag
        torch.testing.assert_close(torch.rand(3), expected)  # fit seeded a fork of the caller's random state
    finally:
        torch.set_num_threads(threads)
    train = meta["train"]
    assert train["threads"] == 1 and train["deterministic"] and train["torch"] == torch.__version__
    assert train["machine"].split()[-1] == torch.backends.cpu.get_cpu_capability()


def test_meta_records_recipe():
    _, meta = fit(Recipe("t", "mlp", epochs=1, lr=0.05, arch_kwargs={"hidden": [8]}, seed=1))
    assert set(ls.checkpoint.META_KEYS) <= set(meta)
    assert meta["seed"] == 1 and meta["train"]["lr"] == 0.05 and meta["epoch"] == 1
    assert 0 <= meta["metrics"]["test_accuracy"] <= 1


def test_adam_recipe_trains_and_bad_options_are_refused():
    _, meta = fit(Recipe("t", "mlp", epochs=2, lr=1e-3, optimizer="adam", arch_kwargs={"hidden": [32]}))
    assert meta["train"]["optimizer"] == "adam" and meta["train"]["momentum"] is None
    assert meta["metrics"]["test_accuracy"] > 0.5
    with pytest.raises(ArgumentError, match="optimizer='rmsprop'"):
        fit(Recipe("t", "mlp", optimizer="rmsprop"))
    with pytest.raises(ArgumentError, match="threads must be >= 1"):
        fit(Recipe("t", "mlp", epochs=1, threads=0))
    with pytest.raises(ArgumentError, match="epochs must be >= 1"):
        fit(Recipe("t", "mlp", epochs=0))


def test_build_zoo_writes_manifest_and_snapshots(tmp_path, monkeypatch):
    monkeypatch.setattr("landscape.train.ZOO", [Recipe("tiny-mlp", "mlp", epochs=2, arch_kwargs={"hidden": [8]},
                                                       snapshots=True)])
    rows = build_zoo(tmp_path, quiet=True)
    assert (tmp_path / "tiny-mlp.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "snapshots" / "tiny-mlp").iterdir()) == [
        "epoch001.safetensors", "epoch002.safetensors"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest[0]["test_accuracy"] == rows[0]["test_accuracy"]
    readme = (tmp_path / "README.md").read_text()
    assert "| tiny-mlp.safetensors | mlp | ce |" in readme and "What is reproducible" in readme
    snap = ls.load_checkpoint(tmp_path / "snapshots" / "tiny-mlp" / "epoch002.safetensors")
    final = ls.load_checkpoint(tmp_path / "tiny-mlp.safetensors")
    assert snap.digest == final.digest == manifest[0]["digest"]
    assert f"torch {torch.__version__}, 1 thread, " in readme and final.digest in readme


def test_shipped_manifest_matches_checkpoints(digits_test):
    manifest = json.loads((ZOO_DIR / "manifest.json").read_text())
    assert {r["name"] for r in manifest} == {r.name for r in ZOO}
    readme = (ZOO_DIR / "README.md").read_text()
    for row in manifest:
        ck = ls.load_checkpoint(ZOO_DIR / row["file"], device="cpu")
        loss, acc = ck.evaluate(digits_test)
        assert acc == pytest.approx(row["test_accuracy"], abs=1e-9), row["name"]
        assert ck.meta["metrics"]["test_accuracy"] == row["test_accuracy"]
        assert ck.digest == row["digest"] and row["digest"] in readme, row["name"]
        assert f"{row['test_accuracy']:.4f}" in readme
        assert row["test_accuracy"] > 0.85, f"{row['name']} trained poorly"


def test_shipped_size_budget():
    total = sum(p.stat().st_size for p in ZOO_DIR.rglob("*") if p.is_file())
    assert total < 20 * 2**20
