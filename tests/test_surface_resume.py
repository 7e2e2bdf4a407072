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


def _interrupted(ck, data, out, threads: int, **grid_kw):
    """Run a surface with ``threads`` CPU threads until a simulated crash after its first chunk."""
    from landscape.threads import limit_threads

    original = GridEvaluator.__call__
    calls = {"n": 0}

    def crash_after_one(self, coords):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("stop")
        return original(self, coords)

    with limit_threads(threads):
        GridEvaluator.__call__ = crash_after_one
        try:
            with pytest.raises(RuntimeError, match="stop"):
                surface(ck, data, out=out, **grid_kw)
        finally:
            GridEvaluator.__call__ = original


def test_a_resume_under_another_thread_count_is_refused(zoo_path, digits_test, tmp_path):
    """Issue 22.7: values depend on the thread count, so progress records it and a resume must match it."""
    from landscape.grid import recorded_threads
    from landscape.threads import limit_threads

    data = digits_test.subset(40, seed=0)
    out = tmp_path / "s.npz"
    kw = dict(x=(-1, 1, 3), y=(-1, 1, 3), chunk_size=3, verbose=False)
    _interrupted(zoo_path("mlp-ce"), data, out, threads=2, **kw)
    assert recorded_threads(tmp_path) == 2
    with limit_threads(1):
        with pytest.raises(ResumeError, match="computed with 2 CPU threads .* --threads 2"):
            surface(zoo_path("mlp-ce"), data, out=out, resume=True, **kw)
    with limit_threads(2):
        resumed = surface(zoo_path("mlp-ce"), data, out=out, resume=True, **kw)
        whole = surface(zoo_path("mlp-ce"), data, **kw)
    assert resumed.meta["threads"] == 2
    np.testing.assert_array_equal(resumed.loss, whole.loss)


def test_the_cli_resumes_with_the_thread_count_it_recorded(zoo_path, digits_test, tmp_path):
    """Without --threads, ``--resume`` takes the count of the run it continues; an explicit other one is refused."""
    import torch

    from viz.cli import main

    data = digits_test.subset(20, seed=0)
    out = tmp_path / "run"
    kw = dict(x=(-1, 1, 3), y=(-1, 1, 3), chunk_size=4, verbose=False)
    _interrupted(zoo_path("mlp-ce"), data, out / "surface.npz", threads=2, **kw)
    base = ["surface", str(zoo_path("mlp-ce")), "--grid", "3", "--subset", "20", "--chunk-size", "4", "--quiet",
            "--no-plots", "--out", str(out), "--resume"]
    before = torch.get_num_threads()
    assert main([*base, "--threads", "1"]) == 2
    assert main(base) == 0
    assert Surface.load(out / "surface.npz").meta["threads"] == 2
    assert torch.get_num_threads() == before  # the CLI restored this process's own setting


def test_a_corrupt_progress_file_is_a_clear_error(zoo_path, digits_test, tmp_path):
    out = tmp_path / "s.npz"
    kw = dict(x=(-1, 1, 2), y=(-1, 1, 2), verbose=False)
    for content in (b"", b"PK\x03\x04 cut short"):
        (tmp_path / "s.npz.progress.rank0of1.npz").write_bytes(content)
        with pytest.raises(ResumeError, match="corrupt or truncated.*overwrite"):
            surface(zoo_path("mlp-ce"), digits_test.subset(10, seed=0), out=out, resume=True, **kw)
