"""Shared fixtures: data, shipped checkpoints and quickly trained tiny checkpoints."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import landscape as ls

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "trained_models"

# Two workers share two cores in CI: keep each process to one thread so they do not fight.
torch.set_num_threads(int(os.environ.get("LANDSCAPE_TEST_THREADS", "1")))
os.environ.setdefault("MPLBACKEND", "Agg")
# progress lines would only clutter captured output; tests of progress unset it (tests/test_progress.py)
os.environ.setdefault("LANDSCAPE_QUIET", "1")


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def digits_test() -> ls.Dataset:
    return ls.load_dataset("digits", split="test")


@pytest.fixture(scope="session")
def digits_train() -> ls.Dataset:
    return ls.load_dataset("digits", split="train")


@pytest.fixture(scope="session")
def zoo_path():
    """Path of a shipped checkpoint by name, e.g. ``zoo_path("mlp-ce")``."""
    def get(name: str) -> Path:
        path = ZOO / f"{name}.safetensors"
        if not path.exists():
            pytest.fail(f"shipped checkpoint {path.name} is missing; run `landscape train`")
        return path

    return get


@pytest.fixture(scope="module")
def mlp(zoo_path) -> ls.Checkpoint:
    """The shipped mlp-ce checkpoint on the CPU (one per test module: tests may not share a model)."""
    return ls.load_checkpoint(zoo_path("mlp-ce"), device="cpu")


@pytest.fixture(scope="module")
def cnn(zoo_path) -> ls.Checkpoint:
    """The shipped cnn-ce checkpoint on the CPU (one per test module)."""
    return ls.load_checkpoint(zoo_path("cnn-ce"), device="cpu")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Train a small model for a few epochs and save it; cached per (arch, loss, kwargs).

    ``tiny_checkpoint("mlp", loss="ce", hidden=[16, 8])`` returns the saved path.
    """
    from landscape.train import Recipe, fit

    cache: dict = {}
    root = tmp_path_factory.mktemp("tiny")

    def make(arch="mlp", loss="ce", epochs=3, loss_kwargs=None, **arch_kwargs) -> Path:
        key = (arch, loss, epochs, repr(sorted((loss_kwargs or {}).items())), repr(sorted(arch_kwargs.items())))
        if key not in cache:
            recipe = Recipe(f"tiny-{len(cache)}", arch, loss=loss, loss_kwargs=loss_kwargs or {},
                            arch_kwargs=arch_kwargs, epochs=epochs)
            model, meta = fit(recipe)
            cache[key] = ls.save_checkpoint(root / f"{recipe.name}.safetensors", model, meta)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def default_report(tmp_path_factory):
    """The default report (reports/default.toml) rendered once per session into a temporary folder."""
    from viz.report import build_report

    out_root = tmp_path_factory.mktemp("reports")
    report = build_report(ROOT / "reports" / "default.toml", out_root=out_root, quiet=True)
    return {"out": out_root / report["name"], "report": report}
