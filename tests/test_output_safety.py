"""Issue 22.3: a run never writes over what it reads, never silently replaces a finished result, and
two runs never write into one folder at once."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from landscape import grid
from landscape.errors import OutputError, ResumeError
from landscape.io import output_lock
from landscape.surface import Surface, surface
from tests.conftest import ROOT
from viz.cli import check_outputs, main

CKPT = ROOT / "trained_models" / "mlp-ce.safetensors"
SMALL = ["--grid", "3", "--subset", "20", "--quiet", "--no-plots"]


def _snapshot(path):
    return path.read_bytes(), path.stat().st_mtime_ns


def test_directions_read_from_the_output_folder_are_never_overwritten(tmp_path, capsys):
    out = tmp_path / "X"
    assert main(["surface", str(CKPT), *SMALL, "--out", str(out)]) == 0
    before = _snapshot(out / "surface.npz")
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert main(["surface", str(CKPT), *SMALL, "--dirs", str(out / "surface.npz"), "--out", str(out),
                     *extra]) == 2
        err = capsys.readouterr().err
        assert "is also an input of this run" in err and len(err.strip().splitlines()) == 1, err
    assert _snapshot(out / "surface.npz") == before
    # the same directions into another folder are fine, and give the same surface
    assert main(["surface", str(CKPT), *SMALL, "--dirs", str(out / "surface.npz"), "--out", str(tmp_path / "Y")]) == 0
    np.testing.assert_array_equal(Surface.load(tmp_path / "Y" / "surface.npz").loss,
                                  Surface.load(out / "surface.npz").loss)


def test_check_outputs_covers_figures_progress_and_data_files(tmp_path, monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    for name in ("contour.png", "surface.npz.progress.rank0of1.npz", "data.npz"):
        (out / name).write_bytes(b"x")
    check_outputs(out, ["surface.npz", "contour"], [out / "data.npz", tmp_path / "contour.png"])  # no clash
    with pytest.raises(OutputError, match="contour.png"):
        check_outputs(out, ["surface.npz", "contour"], [out / "contour.png"])
    with pytest.raises(OutputError, match="progress"):
        check_outputs(out, ["surface.npz"], [out / "surface.npz.progress.rank0of1.npz"])
    # relative and absolute spellings of one file are the same file
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError):
        check_outputs("o", ["data"], [str(out / "data.npz")])


def test_a_rerun_never_silently_replaces_a_finished_surface(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["surface", str(CKPT), *SMALL, "--out", str(out)]) == 0
    before, first = _snapshot(out / "surface.npz"), Surface.load(out / "surface.npz")
    assert main(["surface", str(CKPT), *SMALL, "--seed", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "finished result" in err and "--overwrite" in err and "--resume" in err
    assert main(["surface", str(CKPT), *SMALL, "--seed", "1", "--resume", "--out", str(out)]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert _snapshot(out / "surface.npz") == before
    # --overwrite replaces it with the new run (seed 1: other directions, other values)
    assert main(["surface", str(CKPT), *SMALL, "--seed", "1", "--overwrite", "--out", str(out)]) == 0
    replaced = Surface.load(out / "surface.npz")
    assert replaced.meta["seed"] == 1 and first.meta["seed"] == 0
    assert not np.allclose(replaced.directions, first.directions, rtol=0, atol=1e-3)


def test_the_engine_refuses_for_surfaces_and_eigenvalue_maps_alike(tmp_path, zoo_path, digits_test):
    """The check lives in landscape.grid.run_grid, which surfaces, lines and eigenvalue maps all run through."""
    data = digits_test.subset(20, seed=0)
    out = tmp_path / "s.npz"
    first = surface(zoo_path("mlp-ce"), data, x=(-1, 1, 2), y=(-1, 1, 2), out=out, verbose=False)
    with pytest.raises(OutputError, match="overwrite=True"):
        surface(zoo_path("mlp-ce"), data, x=(-1, 1, 3), y=(-1, 1, 3), out=out, verbose=False)
    np.testing.assert_array_equal(Surface.load(out).loss, first.loss)
    with grid.overwriting():
        again = surface(zoo_path("mlp-ce"), data, x=(-1, 1, 3), y=(-1, 1, 3), out=out, verbose=False)
    np.testing.assert_array_equal(Surface.load(out).loss, again.loss)

    # the engine itself, as an eigenvalue map calls it: a finished result, then its progress
    def evaluate(idx, coords):
        return {"v": coords.sum(axis=1)}

    points = np.arange(8.0).reshape(4, 2)
    target = tmp_path / "eigenmap.npz"
    target.write_bytes(b"finished")
    with pytest.raises(OutputError, match="finished result"):
        grid.run_grid(points, evaluate, {"v": ()}, out=target)
    values = grid.run_grid(points, evaluate, {"v": ()}, out=target, overwrite=True)
    np.testing.assert_array_equal(values["v"], [1.0, 5.0, 9.0, 13.0])
    assert target.read_bytes() == b"finished"  # replaced only when the caller saves the new result
    with pytest.raises(OutputError, match="is a folder"):
        grid.run_grid(points, evaluate, {"v": ()}, out=tmp_path)


def test_progress_of_an_interrupted_run_needs_resume_or_overwrite(tmp_path):
    points = np.arange(10.0).reshape(5, 2)
    state = {"calls": 0, "points": 0, "kill_at": 2}

    def evaluate(idx, coords):
        state["calls"] += 1
        if state["calls"] == state["kill_at"]:
            raise RuntimeError("killed")
        state["points"] += len(idx)
        return {"v": coords[:, 0] * 2}

    out = tmp_path / "m.npz"
    with pytest.raises(RuntimeError):
        grid.run_grid(points, evaluate, {"v": ()}, out=out, chunk_size=2)
    with pytest.raises(ResumeError, match="--resume .* or --overwrite"):
        grid.run_grid(points, evaluate, {"v": ()}, out=out, chunk_size=2)
    state.update(points=0, kill_at=None)
    values = grid.run_grid(points, evaluate, {"v": ()}, out=out, chunk_size=2, resume=True)
    assert state["points"] == 3  # the two points finished before the kill were kept
    np.testing.assert_array_equal(values["v"], [0.0, 4.0, 8.0, 12.0, 16.0])
    state.update(points=0)
    grid.run_grid(points, evaluate, {"v": ()}, out=out, chunk_size=2, overwrite=True)
    assert state["points"] == 5  # started over


def test_a_second_run_into_a_locked_folder_fails_with_one_line(tmp_path):
    out = tmp_path / "busy"
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    with output_lock(out, "the test"):
        proc = subprocess.run([sys.executable, "-m", "viz.cli", "surface", str(CKPT), *SMALL, "--out", str(out)],
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 2
    assert "in use by another run" in proc.stderr and f"pid {os.getpid()}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (out / "surface.npz").exists()
    assert not out.exists()  # the folder was made for the lock and nothing else: it went with it


def test_the_lock_is_reentrant_in_one_process_and_leaves_no_trace(tmp_path):
    fresh = tmp_path / "fresh"
    with output_lock(fresh) as path:
        with output_lock(fresh):  # a command's own code may lock its folder again
            assert path.exists()
        assert path.exists()
    assert not fresh.exists()  # made for a run that wrote nothing: removed again
    kept = tmp_path / "kept"
    with output_lock(kept):
        (kept / "result.txt").write_text("1")
    assert [p.name for p in kept.iterdir()] == ["result.txt"]
    (tmp_path / "file").write_text("mine")
    with pytest.raises(OutputError, match="existing file"):
        with output_lock(tmp_path / "file"):
            pass
    assert (tmp_path / "file").read_text() == "mine"
