"""Progress of long work, where people look: a bar on a terminal or in Jupyter, plain lines elsewhere.

Every long computation reports through :func:`bar`, so a surface, a Hessian map, a report or a
benchmark looks the same wherever it runs:

* on a terminal: a tqdm bar (rate and ETA);
* in Jupyter: tqdm's notebook widget when ipywidgets is installed, else plain lines (never
  tqdm's IProgress warning);
* anywhere else (logs, CI, ``| tee``, batch jobs): one plain line every ``interval`` seconds
  and one at the end, ``surface: 512/2601 pt (19.7%), 41.3 pt/s, ETA 51s``.

``verbose`` follows scikit-learn and openTSNE: ``False`` is silent, ``True`` or ``None`` (the
default) shows progress. ``LANDSCAPE_QUIET=1`` in the environment silences everything (the
test suite and ``--quiet`` use it), and only rank 0 of a torch.distributed run reports.
``LANDSCAPE_PROGRESS_INTERVAL=SECONDS`` sets the time between plain lines (default 30).
"""
from __future__ import annotations

import os
import sys
import time
from typing import TextIO

QUIET_ENV = "LANDSCAPE_QUIET"
INTERVAL_ENV = "LANDSCAPE_PROGRESS_INTERVAL"


def _interval(default: float = 30.0) -> float:
    try:
        value = float(os.environ.get(INTERVAL_ENV, default))
    except ValueError:
        return default
    return value if value >= 0 else default


INTERVAL = _interval()  # seconds between plain progress lines


def resolve(verbose: bool | None = None, progress: bool | None = None) -> bool:
    """Whether to show progress: ``verbose`` (or its older name ``progress``), the environment, the rank."""
    from .distributed import dist_info

    if os.environ.get(QUIET_ENV, "") not in ("", "0"):
        return False
    if dist_info()[0] != 0:
        return False
    chosen = choice(verbose, progress)
    return chosen is None or bool(chosen)


def choice(verbose: bool | None, progress: bool | None) -> bool | None:
    """The caller's choice between ``verbose`` and its older name ``progress`` (``verbose`` wins)."""
    return verbose if verbose is not None else progress


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _has_widgets() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """A progress report of ``total`` units; use :func:`bar` to make one.

    Methods ``update(n)``, ``close()`` and ``write(message)``; usable as a context manager.
    """

    def __init__(self, total: int, desc: str, *, show: bool, unit: str = "pt", initial: int = 0,
                 interval: float = INTERVAL, stream: TextIO | None = None):
        self.total, self.desc, self.unit, self.done = int(total), desc, unit, int(initial)
        self.interval, self.stream = float(interval), stream
        self._tqdm = None
        self._start = self._last = time.perf_counter()
        self._start_done = self.done
        self._lines = False
        if not show:
            return
        out = stream or sys.stderr
        terminal = hasattr(out, "isatty") and out.isatty()
        if terminal or (_in_notebook() and _has_widgets()):
            from tqdm.auto import tqdm

            self._tqdm = tqdm(total=self.total, initial=self.done, desc=desc, unit=unit, dynamic_ncols=True,
                              file=None if stream is None else stream)
        else:
            self._lines = True

    def line(self) -> str:
        """The plain progress line: done/total, percentage, rate and time left."""
        elapsed = time.perf_counter() - self._start
        rate = (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = "done" if self.done >= self.total else (f"ETA {_duration(left)}" if left == left else "ETA ?")
        return (f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.1f}%), {rate:.3g} {self.unit}/s, {eta}, "
                f"elapsed {_duration(elapsed)}")

    def _emit(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.done += int(n)
        if self._tqdm is not None:
            self._tqdm.update(n)
        elif self._lines:
            now = time.perf_counter()
            if now - self._last >= self.interval and self.done < self.total:
                self._last = now
                self._emit(self.line())

    def write(self, message: str) -> None:
        """Print a message without breaking the bar (nothing when silent)."""
        if self._tqdm is not None:
            self._tqdm.write(message, file=self.stream)
        elif self._lines:
            self._emit(message)

    def close(self) -> None:
        """End the report: close the bar, or print the final plain line."""
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        elif self._lines:
            self._lines = False
            self._emit(self.line())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(total: int, desc: str, verbose: bool | None = None, *, unit: str = "pt", initial: int = 0,
        interval: float = INTERVAL, stream: TextIO | None = None) -> Progress:
    """A progress report for ``total`` units of work called ``desc``.

    Parameters
    ----------
    total : int
        Units of work (grid points, epochs, figures).
    desc : str
        What is being done, as the first word of each line (``"surface"``).
    verbose : bool or None
        ``False``: silent. ``True`` or ``None``: show (see the module docstring for where and how).
    unit : str
        Name of one unit.
    initial : int
        Units already done (a resumed run).
    interval : float
        Seconds between plain lines off a terminal.
    stream : file, optional
        Where to write (default ``sys.stderr``).

    Returns
    -------
    Progress
    """
    return Progress(total, desc, show=resolve(verbose), unit=unit, initial=initial, interval=interval, stream=stream)
