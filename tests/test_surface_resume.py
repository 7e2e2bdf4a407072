"""A killed surface run resumes where it stopped and ends identical to an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from landscape.errors import ResumeError
from landscape.evaluator import GridEvaluator
from landscape.grid import progress_files
from landscape.surface import Surface, surface

ROOT = Path(__file__).resolve().parents[1]


def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "viz.cli", "surface", str(ROOT / "trained_models" / "cnn-ce.safetensors"),
            "--grid", "17", "--samples", "100", "--chunk-size", "8", "--out", str(out), "--no-plots", "--quiet",
            *extra]


def _env() -> dict:
    # one thread in every process: identical arithmetic, and the shared cores stay free
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_cli_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path, digits_test):
    cut_dir = tmp_path / "cut"
    # the uninterrupted run, in this process (one thread, like the subprocesses)
    full = surface(ROOT / "trained_models" / "cnn-ce.safetensors", digits_test.subset(100, seed=0),
                   x=(-1, 1, 17), y=(-1, 1, 17), seed=0, progress=False)

    proc = subprocess.Popen(_cli(cut_dir), env=_env(), cwd=ROOT)
    target = cut_dir / "surface.npz"
    deadline = time.monotonic() + 60
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        files = progress_files(target)
        if files:
            try:
                with np.load(files[0]) as npz:
                    done = int(npz["done"].sum())
            except (OSError, ValueError, KeyError):
                done = 0  # caught between the atomic replace and the read: try again
            if done >= 16:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; use a larger grid"
    assert 16 <= done < full.loss.size
    assert not target.exists()
    with np.load(progress_files(target)[0]) as npz:
        kept = npz["done"]
        np.testing.assert_array_equal(npz["loss"][kept], full.loss.ravel()[kept])

    subprocess.run(_cli(cut_dir, "--resume"), check=True, env=_env(), cwd=ROOT, timeout=120)
    resumed = Surface.load(target)
    np.testing.assert_array_equal(resumed.loss, full.loss)
    np.testing.assert_array_equal(resumed.accuracy, full.accuracy)
    np.testing.assert_array_equal(resumed.directions, full.directions)
    assert not progress_files(target)


def test_resume_recomputes_only_unfinished_points(zoo_path, digits_test, tmp_path, monkeypatch):
    data = digits_test.subset(60, seed=0)
    kwargs = dict(x=(-1, 1, 5), y=(-1, 1, 4), chunk_size=4, progress=False)
    reference = surface(zoo_path("mlp-ce"), data, **kwargs)

    original = GridEvaluator.__call__
    evaluated: list[int] = []

    def counting(self, coords):
        if fail_after is not None and len(evaluated) >= fail_after:
            raise RuntimeError("simulated crash")
        evaluated.append(len(coords))
        return original(self, coords)

    monkeypatch.setattr(GridEvaluator, "__call__", counting)
    out = tmp_path / "s.npz"
    fail_after = 2
    with pytest.raises(RuntimeError, match="simulated crash"):
        surface(zoo_path("mlp-ce"), data, out=out, **kwargs)
    assert sum(evaluated) == 8 and progress_files(out)

    with pytest.raises(ResumeError, match="resume"):
        surface(zoo_path("mlp-ce"), data, out=out, **kwargs)

    evaluated.clear()
    fail_after = None
    resumed = surface(zoo_path("mlp-ce"), data, out=out, resume=True, **kwargs)
    assert sum(evaluated) == 20 - 8 + 1  # the unfinished points, and the centre recorded in meta
    np.testing.assert_array_equal(resumed.loss, reference.loss)
    np.testing.assert_array_equal(Surface.load(out).loss, reference.loss)
    assert not progress_files(out)


def test_progress_of_another_run_is_refused(zoo_path, digits_test, tmp_path, monkeypatch):
    data = digits_test.subset(40, seed=0)
    out = tmp_path / "s.npz"
    grid = dict(x=(-1, 1, 3), y=(-1, 1, 3), chunk_size=2, progress=False)
    original = GridEvaluator.__call__
    calls = {"n": 0}

    def stop_after_one(self, coords):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("stop")
        return original(self, coords)

    with monkeypatch.context() as m:
        m.setattr(GridEvaluator, "__call__", stop_after_one)
        with pytest.raises(RuntimeError):
            surface(zoo_path("mlp-ce"), data, out=out, **grid)
    assert progress_files(out)
    # other directions (seed 1) make another run: its progress is never mixed in
    with pytest.raises(ResumeError, match="different run"):
        surface(zoo_path("mlp-ce"), data, seed=1, out=out, resume=True, **grid)
