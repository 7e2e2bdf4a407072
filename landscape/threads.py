"""How many CPU threads a run uses: no more than the machine has free, one count for every thread pool.

torch's default is one intra-op thread per core, whatever else the machine is doing. On a
shared machine that over-subscribes the cores and every thread waits for the others: a grid-3
Hessian took 102 s with the default against 39 s with one thread while the machine was busy
(issue 23). So the toolkit's default is the number of *free* cores:

* the cores this process may run on: its CPU affinity (``os.sched_getaffinity``) and, inside a
  container, its cgroup CPU quota;
* minus the cores other work keeps busy: the 1-minute load average, rounded;
* at least one.

``LANDSCAPE_THREADS`` or ``OMP_NUM_THREADS`` in the environment, and ``--threads N`` on the
command line, override it. :func:`limit_threads` applies one count to torch's intra-op pool and,
through threadpoolctl, to the BLAS and OpenMP pools that numpy, scipy and scikit-learn use, and
restores the previous counts afterwards.

The count matters for reproducibility too: reductions split over threads add in another order,
so a value computed with 2 threads can differ in its last bits from the same value with 1
(up to 2.2e-5 for a Hessian map, issue 22). Runs over a plane therefore record the count in
their metadata and in the fingerprint of their progress files (:mod:`landscape.plane`).
"""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Iterator

ENV = "LANDSCAPE_THREADS"


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask, capped by a cgroup CPU quota (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def cgroup_cpu_quota(root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """CPUs a cgroup quota allows (``cpu.max`` of cgroup v2, ``cfs_quota/period`` of v1), None without one."""
    root = Path(root)
    try:
        text = (root / "cpu.max").read_text().split()
        if len(text) == 2 and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def busy_cores() -> float:
    """Cores other work keeps busy: the 1-minute load average (0 where the system does not report one)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def _from_env() -> int | None:
    """A thread count set in the environment (``LANDSCAPE_THREADS``, else ``OMP_NUM_THREADS``), if valid."""
    from .errors import ArgumentError, check_scalar

    for name in (ENV, "OMP_NUM_THREADS"):
        text = os.environ.get(name, "").strip()
        if not text:
            continue
        first = text.split(",")[0]  # OMP_NUM_THREADS may list counts per nesting level
        try:
            return check_scalar(int(first), name, int, min=1)
        except (ValueError, ArgumentError):
            if name == ENV:
                raise ArgumentError(f"{ENV}={text!r} must be a positive integer (a thread count); "
                                    "unset it or set e.g. LANDSCAPE_THREADS=2.") from None
    return None


def default_threads() -> int:
    """The thread count a run uses unless told otherwise.

    ``LANDSCAPE_THREADS`` or ``OMP_NUM_THREADS`` when set; else the free cores: usable cores
    (:func:`usable_cores`) minus the rounded load average (:func:`busy_cores`), at least 1.
    """
    chosen = _from_env()
    if chosen is not None:
        return chosen
    return max(1, usable_cores() - int(round(busy_cores())))


def current_threads() -> int:
    """The intra-op thread count of torch now (what runs record in their metadata and fingerprints)."""
    import torch

    return int(torch.get_num_threads())


@contextlib.contextmanager
def limit_threads(n: int | None = None) -> Iterator[int]:
    """Run the block with ``n`` threads (default :func:`default_threads`) in torch, BLAS and OpenMP.

    The previous counts are restored afterwards, so a caller in the same process (a notebook,
    a test) keeps its own setting.

    Parameters
    ----------
    n : int, optional
        Threads; at least 1.

    Yields
    ------
    int
        The count in force inside the block.
    """
    import torch
    from threadpoolctl import threadpool_limits

    from .errors import check_scalar

    n = default_threads() if n is None else check_scalar(n, "threads", int, min=1)
    before = torch.get_num_threads()
    with threadpool_limits(limits=n):
        torch.set_num_threads(n)
        try:
            yield n
        finally:
            torch.set_num_threads(before)


__all__ = ["usable_cores", "cgroup_cpu_quota", "busy_cores", "default_threads", "current_threads", "limit_threads"]
