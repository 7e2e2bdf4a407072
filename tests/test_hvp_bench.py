"""``landscape bench hessian``: its numbers agree across methods, and the CLI prints what run() returns.

References: pyhessian's and Li et al.'s products (the same Hessian, computed independently), the
float64 product, and ResNet-20's known parameter count (272,474 for 10 classes).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape.benchmarks import hessian as bench


@pytest.fixture(scope="module")
def result():
    torch.manual_seed(0)
    return bench.run(arch="cnn", samples=8, rounds=1, probes=2, device="cpu",
                     sections=("extremes", "trace", "accuracy", "blocks"))


@pytest.mark.slow  # the shared run takes ~13 s
def test_every_method_computes_the_same_hessian(result):
    errors = {r["method"]: r["relative_error"] for r in result["accuracy"]["rows"]}
    for method in ("landscape: float32", "landscape: float32, not folded", "pyhessian: cached product",
                   "Li et al.: product"):
        assert errors[method] < 1e-5, method
    assert 1e-4 < errors["landscape: bfloat16 autocast"] < 0.1


@pytest.mark.slow  # the shared run takes ~13 s
def test_extremes_agree_and_are_certified_by_their_residuals(result):
    rows = {r["method"].split(":")[0]: r for r in result["extremes"]["rows"]}
    ours, li, ph = rows["landscape"], rows["Li et al."], rows["pyhessian"]
    assert ours["lam_min"] < 0 < ours["lam_max"]
    assert ours["lam_max"] == pytest.approx(li["lam_max"], rel=1e-3)
    assert ours["lam_min"] == pytest.approx(li["lam_min"], rel=1e-2)
    assert ours["res_max"] < 1e-3 and ours["res_min"] < 3e-3  # tol 1e-3 of the spectral radius
    assert ph["lam_max"] == pytest.approx(ours["lam_max"], rel=0.05) and ph["hvps"] > 0
    assert ours["hvps"] < li["hvps"]


@pytest.mark.slow  # the shared run takes ~13 s
def test_trace_uses_pyhessians_probes(result):
    rows = result["trace"]["rows"]
    assert rows[0]["method"].startswith("pyhessian")
    for r in rows[1:]:
        assert r["trace"] == pytest.approx(rows[0]["trace"], rel=1e-5) and r["max_difference"] < 1e-5


@pytest.mark.slow  # the shared run takes ~13 s
def test_blocks_are_cheaper_than_the_whole(result):
    rows = result["blocks"]["rows"]
    assert rows[0]["block"] == "all parameters" and len(rows) == 4
    assert all(r["size"] < rows[0]["size"] for r in rows[1:])
    assert rows[-1]["block"].startswith("head")


def test_resnet20_stand_in_until_the_zoo_has_it():
    from landscape import models

    model, note = bench.build_model("resnet20", seed=0)
    assert sum(p.numel() for p in model.parameters()) == 272_474
    assert ("stand-in" in note) == ("resnet20" not in models.names())
    groups = bench.layer_groups(model)
    assert len(groups) == 22  # 19 convolutions + 2 projection shortcuts + the head, each with its batchnorm
    first = ["conv1.weight", "bn1.weight", "bn1.bias"] if "resnet20" in models.names() else \
        ["stem.0.weight", "stem.1.weight", "stem.1.bias"]
    assert groups[0] == first


def test_cli_prints_the_tables(capsys):
    from viz.cli import main

    rc = main(["bench", "hessian", "--arch", "cnn", "--samples", "6", "--rounds", "1", "--device", "cpu",
               "--only", "accuracy", "--no-peer"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "synthetic 3x32x32" in out and "accuracy of one product against the float64 product" in out
    assert main(["bench", "hessian", "--only", "nope", "--device", "cpu"]) == 2


def test_map_scores_every_method_against_the_dense_truth(tiny_checkpoint):
    path = tiny_checkpoint("mlp", hidden=[8], epochs=2)
    res = bench.run(checkpoint=str(path), samples=20, grid=2, range_=0.5, device="cpu", sections=("map",))
    m = res["map"]
    assert m["truth"] == "dense float64 eigvalsh" and "digits" in res["setup"]["data"]
    rows = m["rows"]
    assert set(rows) == {"engine", "engine-cold", "li-eigsh", "pyhessian"}
    for name in ("engine", "engine-cold"):
        assert rows[name]["max_ratio_error"] <= 5e-3 and rows[name]["max_lam_max_error"] <= 1e-3, name
    assert rows["li-eigsh"]["max_ratio_error"] <= 0.05 and rows["li-eigsh"]["max_lam_max_error"] <= 1e-2
    assert np.isnan(rows["pyhessian"]["max_ratio_error"]) and rows["pyhessian"]["max_lam_max_error"] <= 0.05
    assert rows["engine"]["hvps"] < rows["engine-cold"]["hvps"] < rows["li-eigsh"]["hvps"]


def test_products_table_prints_ratios_to_a_forward_pass_and_a_gradient():
    from viz.commands.bench import format_hessian

    rows = [{"method": "forward pass (model(x), no grad)", "seconds": 0.5, "median": 0.5, "vectors": 0},
            {"method": "gradient (forward + backward)", "seconds": 1.5, "median": 1.6, "vectors": 0},
            {"method": "landscape: cached product", "seconds": 3.0, "median": 3.1, "vectors": 1},
            {"method": "pyhessian: cached product", "seconds": 4.0, "median": 4.0, "vectors": 1}]
    setup = {"model": "m", "parameters": 10, "data": "d", "device": "cpu", "threads": 1, "torch": "x", "rounds": 1}
    out = format_hessian({"setup": setup, "products": {"rows": rows, "folded": True, "forward": 0.5, "gradient": 1.5,
                                                       "pyhessian": 4.0, "pyhessian_first": None,
                                                       "linearize_setup": 2.0, "wall": 9.0}})
    line = next(ln for ln in out.splitlines() if ln.startswith("landscape: cached product"))
    assert line.split()[-3:] == ["6.00x", "2.00x", "0.75x"]  # x forward, x gradient, x pyhessian
    assert "a gradient costs 3.00x a forward pass" in out and "6.00x a forward pass, is its floor" in out
