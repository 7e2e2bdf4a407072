"""Progress reaches logs, CI and notebooks as well as terminals, and stays silent when asked."""
from __future__ import annotations

import io

import numpy as np
import pytest

from landscape import progress
from landscape.grid import run_grid


@pytest.fixture
def loud(monkeypatch):
    monkeypatch.delenv(progress.QUIET_ENV, raising=False)


def test_plain_lines_off_a_terminal_with_rate_and_eta(loud):
    out = io.StringIO()
    with progress.bar(10, "surface", stream=out, interval=0.0) as bar:
        for _ in range(4):
            bar.update(2)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("surface: 2/10 pt (20.0%),") and "pt/s, ETA" in lines[0]
    assert lines[-1].startswith("surface: 8/10 pt (80.0%)")  # the final line at close
    assert len(lines) == 5  # one per update (interval 0), one at close


def test_a_finished_run_says_done_and_resumed_runs_start_where_they_were(loud):
    out = io.StringIO()
    with progress.bar(6, "hessian", stream=out, interval=3600, initial=4) as bar:
        bar.update(2)
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]]
    assert out.getvalue().startswith("hessian: 6/6 pt (100.0%),") and ", done," in out.getvalue()


def test_silent_when_asked(loud, monkeypatch):
    out = io.StringIO()
    with progress.bar(3, "x", verbose=False, stream=out, interval=0.0) as bar:
        bar.update(3)
        bar.write("hello")
    assert out.getvalue() == ""
    monkeypatch.setenv(progress.QUIET_ENV, "1")
    with progress.bar(3, "x", verbose=True, stream=out, interval=0.0) as bar:
        bar.update(3)
    assert out.getvalue() == ""


def test_run_grid_reports_through_the_same_lines(loud, capsys):
    run_grid(np.zeros((5, 1)), lambda idx, c: {"v": np.ones(len(idx))}, {"v": ()}, chunk_size=2, desc="grid")
    err = capsys.readouterr().err
    assert "grid: 5/5 pt (100.0%)" in err
    run_grid(np.zeros((5, 1)), lambda idx, c: {"v": np.ones(len(idx))}, {"v": ()}, chunk_size=2, progress=False)
    assert capsys.readouterr().err == ""


def test_durations_read_as_a_person_writes_them():
    assert progress._duration(5) == "5s" and progress._duration(125) == "2m05s" and progress._duration(7260) == "2h01m"
