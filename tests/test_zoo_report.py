"""reports/cifar-scale.toml renders Li et al.'s figure pair from a CIFAR-10 folder and two checkpoints given by --set.

The test writes a small folder in the real CIFAR-10 binary format (records of one label byte and
3072 pixel bytes, in ``data_batch_1..5.bin`` and ``test_batch.bin``), trains ResNet-56-style nets
with and without shortcuts for a few epochs on it (one block per stage and 4-8 channels through
arch_kwargs, the classes and layout of ``resnet56`` and ``resnet56_noshort``), and renders the
spec through the CLI at 5 x 5 points. Reference: the plotted values equal ``ls.surface`` called
directly with the spec's seed and grid, and both panels are drawn on one list of levels.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import landscape as ls
from landscape.errors import SpecError
from tests.conftest import ROOT
from viz.cli import main
from viz.report import apply_overrides, read_spec

SPEC = ROOT / "reports" / "cifar-scale.toml"
TINY = {"blocks": [1, 1, 1], "widths": [4, 8, 8]}


def write_cifar10(root, n_per_file: int = 24, seed: int = 0) -> None:
    """A CIFAR-10 binary folder whose classes are colour-biased noise (learnable in a few epochs)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    colours = rng.integers(0, 256, size=(10, 3))
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        y = rng.integers(0, 10, size=n_per_file)
        noise = rng.integers(0, 256, size=(n_per_file, 3, 32, 32))
        x = (0.6 * colours[y][:, :, None, None] + 0.4 * noise).astype(np.uint8)
        records = np.concatenate([y.astype(np.uint8)[:, None], x.reshape(n_per_file, -1)], axis=1)
        (root / name).write_bytes(records.tobytes())
    (root / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-bin"
    write_cifar10(root)
    return root


@pytest.fixture(scope="module")
def nets(cifar, tmp_path_factory):
    from landscape.train import Recipe, fit

    out = tmp_path_factory.mktemp("nets")
    paths = {}
    for name, arch in (("short", "resnet56"), ("noshort", "resnet56_noshort")):
        model, meta = fit(Recipe(name, arch, arch_kwargs=TINY, epochs=3, lr=0.05, batch_size=32,
                                 dataset=f"cifar10:{cifar}"))
        paths[name] = ls.save_checkpoint(out / f"{name}.safetensors", model, meta)
    return paths


@pytest.mark.slow
def test_li_figure_pair_renders_from_set_overrides(cifar, nets, tmp_path):
    code = main(["report", str(SPEC), "--set", f"data=cifar10:{cifar}", f"models.short={nets['short']}",
                 f"models.noshort={nets['noshort']}", "figure.*.grid=5", "--out", str(tmp_path), "--quiet",
                 "--device", "cpu"])
    assert code == 0
    out = tmp_path / "cifar-scale"
    report = json.loads((out / "report.json").read_text())
    assert [f["id"] for f in report["figures"]] == ["contours", "heatmaps", "surface3d-short", "surface3d-noshort"]
    assert report["data"] == f"cifar10:{cifar}"
    assert {m["arch"] for m in report["figures"][0]["models"]} == {"resnet56", "resnet56_noshort"}
    # the plane is computed once per model and reused by every figure of it
    assert sum(not c["cached"] for f in report["figures"] for c in f["cache"]) == 2
    values = json.loads((out / "contours.json").read_text())["values"]
    panels = values["panels"]
    assert [p["title"] for p in panels] == ["short", "noshort"]
    levels = np.asarray(values["levels"], dtype=float)
    assert len(levels) > 2 and np.all(np.diff(levels) > 0)
    test = ls.load_dataset(f"cifar10:{cifar}", split="test")
    for panel, name in zip(panels, ("short", "noshort")):
        ck = ls.load_checkpoint(nets[name], device="cpu")
        ref = ls.surface(ck, test, ls.random_directions(ck.model, n=2, seed=0), x=(-1, 1, 5), y=(-1, 1, 5),
                         verbose=False)
        np.testing.assert_allclose(np.asarray(panel["loss"], dtype=float), ref.loss, rtol=1e-5, atol=1e-6)
        # the shared levels span both surfaces
        assert levels[0] <= ref.loss.max() and levels[-1] >= ref.loss.min()
    assert (out / "contours.png").stat().st_size > 0 and (out / "surface3d-noshort.html").exists()


def test_spec_without_overrides_names_the_missing_files(tmp_path, capsys):
    code = main(["report", str(SPEC), "--out", str(tmp_path), "--quiet"])
    assert code == 2
    assert "model 'short' points to" in capsys.readouterr().err


def test_apply_overrides():
    spec, _ = read_spec(SPEC)
    new = apply_overrides(spec, ["data=cifar10:/d/cifar-10-batches-bin", "models.short=/ck/a.t7", "seed=3",
                                 "figure.contours.grid=7", "figure.surface3d.range=[-0.5, 0.5]",
                                 "figure.*.subset=100", "title=A = B"])
    assert new["data"] == "cifar10:/d/cifar-10-batches-bin" and new["models"]["short"] == "/ck/a.t7"
    assert new["seed"] == 3 and new["title"] == "A = B"
    grids = {f["id"]: f["grid"] for f in new["figure"]}
    assert grids == {"contours": 7, "heatmaps": 51, "surface3d-short": 51, "surface3d-noshort": 51}
    assert [f["range"] for f in new["figure"]][2:] == [[-0.5, 0.5]] * 2
    assert all(f["subset"] == 100 for f in new["figure"])
    assert spec["data"] != new["data"] and spec["figure"][0]["grid"] == 51  # the loaded spec is left alone


@pytest.mark.parametrize("item,msg", [
    ("data", "write KEY=VALUE"), ("models.resnet=x.t7", "no model 'resnet'.*noshort, short"),
    ("figure.nope.grid=3", "no figure with id or kind 'nope'"), ("figure.contours.gird=3", "has no option 'gird'"),
    ("colour=red", "unknown key"), ("models=x", "unknown key"), ("figure..grid=3", "write KEY=VALUE")])
def test_bad_overrides_are_named(item, msg):
    spec, _ = read_spec(SPEC)
    with pytest.raises(SpecError, match=msg):
        apply_overrides(spec, [item])
