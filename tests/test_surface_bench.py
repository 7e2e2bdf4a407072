"""bench surface returns its measurements and the CLI prints them; make gpu-check's table on fake numbers."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys

import numpy as np
import pytest
import torch

from landscape.benchmarks.surface import MethodTiming, SurfaceBenchmark, build_model, synthetic_data
from tests.conftest import ROOT
from viz.cli import main


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def fake_bench() -> SurfaceBenchmark:
    """A benchmark with round numbers: engine 2 ms/point, loop 10 ms, loss_landscapes 5 ms, 100 points."""
    methods = [MethodTiming("engine (16/launch)", [0.3, 0.2], 100, 50 * 2 ** 20, 3e-7),
               MethodTiming("loop (Li et al., DataLoader 128)", [1.0, 1.2], 100, 10 * 2 ** 20),
               MethodTiming("loss_landscapes.random_plane", [0.5, 0.6], 100, 20 * 2 ** 20)]
    return SurfaceBenchmark(model="mlp-ce (checkpoint)", data="digits/test", synthetic=False, samples=500, grid=10,
                            device="cuda", threads=1, rounds=2, flops_per_point=2e7, peak_gflops=100.0,
                            methods=methods, memory={"model": 2 ** 20, "data": 2 ** 20, "activations": 2 ** 20,
                                                     "piece": 500}, parameters=17000)


def test_benchmark_figures_are_derived_from_the_rounds():
    b = fake_bench()
    engine, loop, peer = b.methods
    assert engine.per_point == pytest.approx(0.002) and loop.per_point == pytest.approx(0.01)
    assert b.speedup(loop) == pytest.approx(5.0) and b.speedup(peer) == pytest.approx(2.5)
    assert b.gflops(engine) == pytest.approx(2e7 / 0.002 / 1e9)
    # 51 x 51 points on 10,000 images at 2 ms per point on 500 images
    assert b.projected_seconds(engine) == pytest.approx(0.002 * 2601 * 20)
    d = b.to_dict()
    assert d["methods"][1]["engine_speedup"] == pytest.approx(5.0) and d["methods"][0]["pct_peak"] == pytest.approx(10)
    json.dumps(d)


@pytest.mark.slow
def test_bench_surface_runs_every_method_and_prints_the_table(tmp_path):
    out = tmp_path / "bench.json"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["bench", "surface", "--samples", "40", "--grid", "2", "--repeat", "1", "--threads", "1",
                     "--device", "cpu", "--json", str(out)])
    assert code == 0
    text = buf.getvalue()
    for word in ("engine", "loop (Li et al.", "loss_landscapes", "ms/point", "% peak", "peak MB", "memory bound",
                 "51x51 on 10k"):
        assert word in text, word
    d = json.loads(out.read_text())
    names = [m["name"] for m in d["methods"]]
    assert names[0] == "engine" and any(n.startswith("loop") for n in names)
    assert d["methods"][0]["max_rel_diff"] < 1e-5  # the engine's values are the loop's
    assert d["samples"] == 40 and d["grid"] == 2 and not d["synthetic"]


@pytest.mark.slow
def test_bench_surface_on_a_resnet20_says_which_model_ran_and_that_the_data_is_synthetic():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["bench", "surface", "--arch", "resnet20", "--samples", "6", "--grid", "2", "--repeat", "1",
                     "--no-peer", "--threads", "1", "--device", "cpu", "--points-per-launch", "1", "2"])
    assert code == 0
    text = buf.getvalue()
    assert "resnet20" in text and "synthetic" in text and "timing only" in text
    assert "engine (1/launch)" in text and "engine (2/launch)" in text
    assert "0.27M parameters" in text


def test_stand_ins_have_the_published_sizes():
    resnet, what = build_model("resnet20", (3, 32, 32), 10, 0)
    assert sum(p.numel() for p in resnet.parameters()) == pytest.approx(0.27e6, rel=0.01)  # He et al.: 0.27M
    from landscape import models
    from landscape.benchmarks.surface import vgg11_bn

    # the stand-in: VGG-11 with batchnorm and one linear classifier (9.23M); the zoo's vgg11 once registered
    # has Li et al.'s 512-512 classifier with batchnorm (9.49M)
    assert sum(p.numel() for p in vgg11_bn().parameters()) == pytest.approx(9.23e6, rel=0.01)
    vgg, _ = build_model("vgg11", (3, 32, 32), 10, 0)
    expected = 9.49e6 if "vgg11" in models.names() else 9.23e6
    assert sum(p.numel() for p in vgg.parameters()) == pytest.approx(expected, rel=0.01)
    assert vgg(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    data = synthetic_data("synthetic:3x32x32", 5, seed=0)
    assert data.x.shape == (5, 3, 32, 32) and np.array_equal(data.x, synthetic_data("synthetic", 5, seed=0).x)


def test_bench_surface_refuses_bad_options():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["bench", "surface", "--arch", "resnet2O", "--device", "cpu"]) == 2
        assert main(["bench", "surface", "--arch", "resnet20", "--data", "synthetic:3x32", "--device", "cpu"]) == 2
    assert "unknown architecture 'resnet2O'" in err.getvalue() and "synthetic:CxHxW" in err.getvalue()


# -- make gpu-check -------------------------------------------------------------------------------
def test_gpu_check_table_from_surface_hessian_and_test_outputs(capsys):
    gc = _gpu_check()
    rows = gc.surface_rows("surface mlp", fake_bench().to_dict())
    engine = rows[0]
    assert engine.ms_per_point == pytest.approx(2.0) and engine.vs_li == pytest.approx(5.0)
    assert engine.vs_library == pytest.approx(2.5) and "max rel diff 3.0e-07" in engine.note
    # the Hessian bench's results, on fake numbers (the shape of landscape.benchmarks.hessian.run's dict)
    fake = {"products": {"forward": 0.01, "pyhessian": 0.05, "rows": [
                {"method": "forward pass", "seconds": 0.01, "vectors": 0},
                {"method": "landscape: cached product", "seconds": 0.025, "vectors": 1}]},
            "map": {"points": 4, "rows": {"engine": {"seconds": 0.08, "hvps": 120},
                                          "li-eigsh": {"seconds": 0.32, "hvps": 360},
                                          "pyhessian": {"seconds": 0.2, "hvps": 240}}}}
    hessian = gc.hessian_rows("hessian mlp", fake)
    by_name = {r.method: r for r in hessian}
    assert "forward pass" not in by_name  # not a product
    product = by_name["landscape: cached product"]
    assert product.ms_per_point == pytest.approx(25.0) and product.vs_library == pytest.approx(2.0)
    assert "2.5x a forward pass" in product.note
    assert by_name["map: engine"].ms_per_point == pytest.approx(20.0)
    engine = by_name["map: engine"]
    assert engine.vs_li == pytest.approx(4.0) and engine.vs_library == pytest.approx(2.5)
    assert by_name["map: engine"].note == "30.0 HVPs per point"
    tests = gc.test_rows("gpu tests", 0, "....s\n4 passed, 1 skipped in 9.30s\n")
    assert tests[0].note == "ok: 4 passed, 1 skipped"
    table = gc.format_table(rows + hessian + tests, "fake GPU")
    for figure in ("2.000", "5.00", "2.50", "20.000", "4.00", "4 passed"):
        assert figure in table, figure


def test_gpu_check_stops_clearly_without_cuda(monkeypatch, capsys):
    gc = _gpu_check()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gc.main() == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_gpu_check_reports_a_failed_step_and_runs_the_others(monkeypatch, capsys):
    gc = _gpu_check()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "fake GPU")
    ran = []

    def fake_run(step, deadline):
        ran.append(step.name)
        if step.kind == "surface":
            step.json_path.write_text(json.dumps(fake_bench().to_dict()))
            return 0, ""
        if step.name == "hessian resnet20":
            return 2, "landscape bench: error: unrecognized arguments: --arch resnet20"
        if step.kind == "hessian":
            return None, "still running"
        return 1, "1 failed, 3 passed in 5.0s"

    monkeypatch.setattr(gc, "run_step", fake_run)
    assert gc.main() == 1
    out = capsys.readouterr().out
    assert ran == ["gpu tests", "surface mlp", "surface resnet20", "hessian mlp", "hessian resnet20"]
    assert "FAILED (exit 1): 1 failed, 3 passed" in out
    assert "hessian mlp" in out and "timed out" in out
    assert "unrecognized arguments: --arch resnet20" in out
    assert out.count("engine (16/launch)") == 2  # both surface benches made it into the table
    budget = sum(s.timeout_s for s in gc.steps("python", ROOT))
    assert budget <= gc.BUDGET_S <= 300


def test_gpu_check_steps_name_only_options_that_exist(tmp_path):
    """Every bench command line of make gpu-check parses with the real CLI (a typo would fail on the GPU box).

    The commands were also run on the CPU (``--device cpu``, tiny sizes) and their JSON read by
    ``rows_of``; that takes minutes on a 2-core machine, so the test checks the parse only.
    """
    import argparse

    from viz.cli import build_parser

    gc = _gpu_check()
    parser = build_parser()
    steps = gc.steps(sys.executable, tmp_path)
    benches = [s for s in steps if s.kind in ("surface", "hessian")]
    assert [s.name for s in benches] == ["surface mlp", "surface resnet20", "hessian mlp", "hessian resnet20"]
    for step in benches:
        assert step.argv[1:4] == ["-m", "viz.cli", "bench"], step.argv
        try:
            args = parser.parse_args(step.argv[3:])
        except SystemExit as exc:  # argparse's way of refusing an option
            raise AssertionError(f"{step.name}: {' '.join(step.argv[3:])} does not parse") from exc
        assert isinstance(args, argparse.Namespace) and args.device == "cuda" and args.json == str(step.json_path)
        assert args.kind == step.kind
    assert any(s.kind == "tests" and "gpu" in s.argv for s in steps)
