"""Issue 23.9: the default thread count fits the free cores, ``--threads`` sets every pool, runs record it."""
from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_info

from landscape import threads
from landscape.errors import ArgumentError
from landscape.surface import Surface
from tests.conftest import ROOT
from viz.cli import main


@pytest.fixture
def machine(monkeypatch):
    """A machine of ``cores`` usable cores under a 1-minute load of ``load``; no thread variables set."""
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda root="/sys/fs/cgroup": None)

    def set_machine(cores: int, load: float):
        monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
        monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))

    return set_machine


@pytest.mark.parametrize("cores, load, expected", [
    (4, 0.0, 4),    # an idle machine: every core
    (4, 0.4, 4),    # background noise rounds away
    (4, 2.6, 1),    # three cores busy: one is free
    (4, 10.0, 1),   # over-subscribed: still one thread
    (16, 5.2, 11),
    (1, 0.0, 1),
])
def test_default_is_the_free_cores(machine, cores, load, expected):
    machine(cores, load)
    assert threads.default_threads() == expected


def test_environment_wins_over_the_estimate(machine, monkeypatch):
    machine(8, 0.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_threads() == 3
    monkeypatch.setenv(threads.ENV, "2")
    assert threads.default_threads() == 2
    monkeypatch.setenv(threads.ENV, "many")
    with pytest.raises(ArgumentError, match="LANDSCAPE_THREADS='many'"):
        threads.default_threads()


def test_a_cgroup_quota_caps_the_cores(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # one and a half CPUs
    assert threads.cgroup_cpu_quota(tmp_path) == pytest.approx(1.5)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_quota(tmp_path) is None
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda root="/sys/fs/cgroup": 1.5)
    assert threads.usable_cores() == 2


def _blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_limit_threads_sets_torch_and_blas_and_restores_them():
    before_torch, before_blas = torch.get_num_threads(), _blas_threads()
    with threads.limit_threads(2) as n:
        assert n == 2 and torch.get_num_threads() == 2
        assert _blas_threads() == {2}  # numpy's OpenBLAS (and any other BLAS loaded)
    assert torch.get_num_threads() == before_torch and _blas_threads() == before_blas
    with pytest.raises(ArgumentError, match="threads must be >= 1"):
        with threads.limit_threads(0):
            pass


def test_threads_option_reaches_the_run_and_its_record(tmp_path):
    before = torch.get_num_threads()
    out = tmp_path / "run"
    assert main(["surface", str(ROOT / "trained_models" / "mlp-ce.safetensors"), "--grid", "2", "--subset", "10",
                 "--threads", "2", "--quiet", "--no-plots", "--out", str(out)]) == 0
    assert Surface.load(out / "surface.npz").meta["threads"] == 2
    assert torch.get_num_threads() == before  # this process keeps its own count (tests/conftest.py)
