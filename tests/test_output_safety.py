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


def test_a_rerun_never_silently_replaces_a_finished_surface(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["surface", str(CKPT), *SMALL, "--out", str(out)]) == 0
    before, first = _snapshot(out / "surface.npz"), Surface.load(out / "surface.npz")
    assert main(["surface", str(CKPT), *SMALL, "--seed", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "finished surface" in err and "--overwrite" in err and "--resume" in err
    # --resume of other inputs (seed 1: other directions) is refused, naming the fix
    assert main(["surface", str(CKPT), *SMALL, "--seed", "1", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "another run" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1, err
    assert _snapshot(out / "surface.npz") == before
    # --resume of the same inputs reuses the finished surface: nothing evaluated, the file untouched
    from landscape.evaluator import GridEvaluator

    def never(self, coords):
        raise AssertionError("a finished surface was recomputed")

    monkeypatch.setattr(GridEvaluator, "__call__", never)
    assert main(["surface", str(CKPT), *SMALL, "--resume", "--out", str(out)]) == 0
    assert _snapshot(out / "surface.npz") == before
    monkeypatch.undo()
    # --overwrite replaces it with the new run (seed 1: other directions, other values)
    assert main(["surface", str(CKPT), *SMALL, "--seed", "1", "--overwrite", "--out", str(out)]) == 0
    replaced = Surface.load(out / "surface.npz")
    assert replaced.meta["seed"] == 1 and first.meta["seed"] == 0
    assert not np.allclose(replaced.directions, first.directions, rtol=0, atol=1e-3)


def test_one_resume_rule_for_surfaces_lines_and_eigenvalue_maps(tmp_path, zoo_path, digits_test, monkeypatch):
    """``resume=True`` on a finished result of the same inputs returns it unrecomputed, whoever computed it."""
    import landscape as ls
    from landscape import hessian
    from landscape.evaluator import GridEvaluator
    from landscape.surface import Curve, interpolate

    ck, data = zoo_path("mlp-ce"), digits_test.subset(20, seed=0)
    kw = dict(x=(-1, 1, 2), y=(-1, 1, 2), verbose=False)
    surf = surface(ck, data, out=tmp_path / "s.npz", **kw)
    line = interpolate(ck, None, data, steps=3, out=tmp_path / "l.npz", verbose=False)
    emap = ls.eigen_ratio_map(ck, data, surf.dirs, out=tmp_path / "m.npz", chunk_size=2, **kw)
    for result in (surf, line, emap):  # every finished result records its inputs' fingerprint
        assert isinstance(result.meta["fingerprint"], str) and len(result.meta["fingerprint"]) == 16

    def never(*args, **kwargs):
        raise AssertionError("a finished result was recomputed")

    monkeypatch.setattr(GridEvaluator, "__call__", never)
    monkeypatch.setattr(hessian, "_map_chunk", never)
    np.testing.assert_array_equal(surface(ck, data, out=tmp_path / "s.npz", resume=True, **kw).loss, surf.loss)
    again = interpolate(ck, None, data, steps=3, out=tmp_path / "l.npz", resume=True, verbose=False)
    assert isinstance(again, Curve)
    np.testing.assert_array_equal(again.loss, line.loss)
    np.testing.assert_array_equal(ls.eigen_ratio_map(ck, data, surf.dirs, out=tmp_path / "m.npz", chunk_size=2,
                                                     resume=True, **kw).lam_max, emap.lam_max)
    # other inputs (another grid, another line, another tolerance) are refused, the same way for all three
    with pytest.raises(ResumeError, match="another run.*overwrite=True"):
        surface(ck, data, out=tmp_path / "s.npz", resume=True, x=(-1, 1, 3), y=(-1, 1, 2), verbose=False)
    with pytest.raises(ResumeError, match="another run.*overwrite=True"):
        interpolate(ck, None, data, steps=4, out=tmp_path / "l.npz", resume=True, verbose=False)
    with pytest.raises(ResumeError, match="another run.*overwrite=True"):
        ls.eigen_ratio_map(ck, data, surf.dirs, out=tmp_path / "m.npz", chunk_size=2, resume=True, tol=1e-2, **kw)
    # without resume or overwrite a finished result is refused as before
    for call in (lambda: surface(ck, data, out=tmp_path / "s.npz", **kw),
                 lambda: interpolate(ck, None, data, steps=3, out=tmp_path / "l.npz", verbose=False),
                 lambda: ls.eigen_ratio_map(ck, data, surf.dirs, out=tmp_path / "m.npz", chunk_size=2, **kw)):
        with pytest.raises(OutputError, match="--resume.*--overwrite"):
            call()
    # a finished result saved without a fingerprint (an older version's) cannot be vouched for
    del surf.meta["fingerprint"]
    surf.save(tmp_path / "old.npz")
    with pytest.raises(ResumeError, match="without a fingerprint"):
        surface(ck, data, out=tmp_path / "old.npz", resume=True, **kw)
    monkeypatch.undo()
    with grid.overwriting():  # the CLI's --overwrite replaces it
        assert surface(ck, data, out=tmp_path / "old.npz", resume=True, **kw).meta["fingerprint"]


def test_the_engine_refuses_for_surfaces_and_eigenvalue_maps_alike(tmp_path, zoo_path, digits_test):
    """The check lives in landscape.grid.run_grid, which surfaces, lines and eigenvalue maps all run through."""
    data = digits_test.subset(20, seed=0)
    out = tmp_path / "s.npz"
    first = surface(zoo_path("mlp-ce"), data, x=(-1, 1, 2), y=(-1, 1, 2), out=out, verbose=False)
    with pytest.raises(OutputError, match="overwrite=True"):
        surface(zoo_path("mlp-ce"), data, x=(-1, 1, 3), y=(-1, 1, 3), out=out, verbose=False)
    with pytest.raises(ResumeError, match="another run"):  # resume: other inputs (a 3 x 3 grid)
        surface(zoo_path("mlp-ce"), data, x=(-1, 1, 3), y=(-1, 1, 3), out=out, resume=True, verbose=False)
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
    with pytest.raises(OutputError, match="cannot tell whether it has the same inputs"):
        grid.run_grid(points, evaluate, {"v": ()}, out=target, resume=True)  # run_grid alone has no result to give
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
