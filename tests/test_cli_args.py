"""Issue 22.6: every careless CLI argument is one line on stderr, exit 2, no traceback, nothing on disk lost.

Most rows call ``viz.cli.main`` in this process (the CLI's own entry point; an uncaught
exception would fail the test with its traceback); one row runs a real subprocess to check
what a user sees at the terminal.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import landscape as ls
from landscape.surface import Surface
from tests.conftest import ROOT
from viz.cli import main

CKPT = ROOT / "trained_models" / "mlp-ce.safetensors"
SMALL = ["--grid", "3", "--subset", "20", "--quiet"]


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("landscape "), err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("args, needles", [
    (["--grid", "1"], ["one point per axis", "--no-plots"]),
    (["--grid", "1x9"], ["one point per axis"]),
    (["--grid", "1000000"], ["1,000,000,000,000 points", "TiB", "available"]),
    (["--grid", "abc"], ["--grid 'abc'"]),
    (["--subset", "-1"], ["--subset", ">= 1, got -1"]),
    (["--subset", "0"], ["--subset", ">= 1, got 0"]),
    (["--chunk-size", "0"], ["--chunk-size", ">= 1"]),
    (["--chunk-size", "-1"], ["--chunk-size", ">= 1"]),
    (["--batch-size", "0"], ["--batch-size", ">= 1"]),
    (["--batch-size", "-1"], ["--batch-size", ">= 1"]),
    (["--seed", "1e20"], ["--seed", "2**32 - 1"]),
    (["--seed", "-3"], ["--seed", ">= 0"]),
    (["--threads", "0"], ["--threads", ">= 1"]),
    (["--range", "1", "-1"], ["LO < HI"]),
    (["--range", "-inf", "1"], ["--range", "finite"]),
    (["--range", "0", "1", "2"], ["--range takes"]),
])
def test_surface_argument_mistakes(tmp_path, capsys, args, needles):
    out = tmp_path / "run"
    assert main(["surface", str(CKPT), *SMALL, "--out", str(out), *args]) == 2
    one_line_error(capsys, *needles)
    assert not out.exists()  # refused before anything was created


def test_the_same_checks_guard_hessian_and_bench(tmp_path, capsys):
    # the plane options are shared: hessian gets the same checks without code of its own
    assert main(["hessian", str(CKPT), "--subset", "0", "--out", str(tmp_path / "h")]) == 2
    one_line_error(capsys, "--subset", ">= 1")
    assert main(["hessian", str(CKPT), "--chunk-size", "-1", "--out", str(tmp_path / "h")]) == 2
    one_line_error(capsys, "--chunk-size")
    assert main(["bench", "hessian", "--grid", "0"]) == 2
    one_line_error(capsys, "--grid must be >= 1")
    assert main(["bench", "surface", "--samples", "-5"]) == 2
    one_line_error(capsys, "--samples must be >= 1")
    assert not (tmp_path / "h").exists()


def test_hessian_max_iter_0(tmp_path, capsys):
    code = main(["hessian", str(CKPT), "--grid", "1", "--subset", "10", "--max-iter", "0", "--contour-grid", "0",
                 "--no-plots", "--quiet", "--out", str(tmp_path / "h")])
    assert code == 2
    one_line_error(capsys, "--max-iter")


def test_out_that_is_an_existing_file_is_refused_and_kept(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    for command in (["surface", str(CKPT), *SMALL], ["phenotype", "CE", "--resolution", "5"],
                    ["embed", str(CKPT), "--method", "sphere"]):
        assert main([*command, "--out", str(notes)]) == 2
        one_line_error(capsys, "is an existing file, not a folder")
    assert notes.read_text() == "my notes"


def _centre_loss(subset: int) -> float:
    """The loss of the checkpoint itself, by hand: its model and cross-entropy (it was trained with CE)."""
    ck = ls.load_checkpoint(CKPT, device="cpu")
    x, y = ck.prepare(ls.load_dataset("digits", split="test").subset(subset, seed=0))
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(ck.model(x).double(), y))


def test_huge_range_parses_and_the_centre_is_the_checkpoint(tmp_path, capsys):
    """``--range -1e30 1`` is read as numbers; the printed centre is theta*, not a grid point."""
    out = tmp_path / "wide"
    assert main(["surface", str(CKPT), "--grid", "2", "--subset", "30", "--range", "-1e30", "1", "--no-plots",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    surf = Surface.load(out / "surface.npz")
    np.testing.assert_array_equal(surf.x, [-1e30, 1.0])
    truth = _centre_loss(30)
    assert surf.meta["centre"]["loss"] == pytest.approx(truth, rel=1e-5)
    assert f"loss {truth:.4g}" in printed


def test_one_point_grid_is_the_centre(tmp_path):
    out = tmp_path / "one"
    assert main(["surface", str(CKPT), "--grid", "1", "--subset", "30", "--no-plots", "--quiet",
                 "--out", str(out)]) == 0
    surf = Surface.load(out / "surface.npz")
    assert surf.x.tolist() == [0.0] and surf.y.tolist() == [0.0]
    assert surf.loss[0, 0] == pytest.approx(_centre_loss(30), rel=1e-5)


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04truncated"])
def test_corrupt_progress_file_is_named_and_kept(tmp_path, capsys, content):
    out = tmp_path / "run"
    out.mkdir()
    progress = out / "surface.npz.progress.rank0of1.npz"
    progress.write_bytes(content)
    base = ["surface", str(CKPT), *SMALL, "--no-plots", "--out", str(out)]
    assert main([*base, "--resume"]) == 2
    one_line_error(capsys, "is corrupt", "--overwrite")
    assert main(base) == 2  # without --resume: progress of an earlier run, never silently dropped
    one_line_error(capsys, "--resume", "--overwrite")
    assert progress.read_bytes() == content
    assert main([*base, "--overwrite"]) == 0
    assert not progress.exists() and Surface.load(out / "surface.npz").loss.shape == (3, 3)


def test_a_real_process_prints_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "viz.cli", "surface", str(CKPT), "--seed", "1e20",
                           "--out", str(tmp_path / "x")], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--seed" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()
