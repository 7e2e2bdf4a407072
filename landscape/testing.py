"""Pin the numbers behind a figure in regression tests.

Usage in a test::

    from landscape.testing import assert_plotted_values
    plot = viz.contour(surf)
    assert_plotted_values(plot, "tests/golden/contour.json", rtol=1e-4)

``result_or_figure`` is a ``viz`` :class:`~viz.figure.Plot` (its ``values``), a
:class:`~landscape.results.Result` (its array and number fields) or a plain dict.

Creating and updating golden files: run the tests with ``LANDSCAPE_UPDATE_GOLDEN=1``
(or pass ``update=True``); every ``assert_plotted_values`` then writes its golden JSON
instead of comparing, and says so. Review the diff of the golden files before committing.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .io import to_jsonable, write_json

UPDATE_ENV = "LANDSCAPE_UPDATE_GOLDEN"


def plotted_values(obj: Any) -> dict:
    """The named values of a Plot, a Result or a mapping, as a plain dict."""
    if hasattr(obj, "values") and isinstance(getattr(obj, "values"), Mapping):
        return dict(obj.values)
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if isinstance(v, (np.ndarray, int, float, np.number)) and not isinstance(v, bool):
                out[f.name] = v
        return out
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"cannot take plotted values from a {type(obj).__name__}; give a viz Plot, a Result or a dict")


def _as_float_array(value) -> np.ndarray | None:
    """Numeric data as a float array (JSON null -> NaN); None for non-numeric values."""
    def conv(v):
        if v is None:
            return np.nan
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    try:
        arr = np.asarray(conv(to_jsonable(value)), dtype=float)
    except (TypeError, ValueError):
        return None
    return arr


def _describe(name: str, got: np.ndarray, want: np.ndarray, rtol: float, atol: float, show: int = 5) -> str | None:
    if got.shape != want.shape:
        return f"{name}: shape {got.shape} differs from golden {want.shape}"
    both_nan = np.isnan(got) & np.isnan(want)
    same_inf = np.isinf(got) & np.isinf(want) & (np.sign(got) == np.sign(want))
    with np.errstate(invalid="ignore"):
        diff = np.abs(got - want)
        close = np.isfinite(want) & (diff <= atol + rtol * np.abs(want))
        bad = ~(both_nan | same_inf | close)
    if not bad.any():
        return None
    idx = np.argwhere(bad)
    order = np.argsort(-np.nan_to_num(diff[bad], nan=np.inf))[:show]
    lines = [f"{name}: {int(bad.sum())} of {bad.size} values drifted (rtol={rtol}, atol={atol}); worst:"]
    for k in order:
        i = tuple(int(v) for v in idx[k]) if got.ndim else ()
        lines.append(f"    at index {i}: got {float(got[i])!r}, golden {float(want[i])!r}, abs diff {diff[i]:.3g}")
    return "\n".join(lines)


def assert_plotted_values(result_or_figure: Any, golden: str | os.PathLike | Mapping, rtol: float = 1e-5,
                          atol: float = 1e-8, keys: list[str] | None = None, update: bool | None = None) -> None:
    """Assert that the values a figure plots equal a golden record.

    Parameters
    ----------
    result_or_figure : Plot, Result or dict
        What to check.
    golden : path or dict
        A JSON file of ``{name: values}`` (written by this function in update mode) or a dict.
    rtol, atol : float
        Tolerances as in ``numpy.isclose``; NaN matches NaN and inf matches inf of the same sign.
    keys : list of str, optional
        Compare only these names (default: every name of the golden record).
    update : bool, optional
        Write the golden file instead of comparing; default from the environment variable
        ``LANDSCAPE_UPDATE_GOLDEN``.

    Raises
    ------
    AssertionError
        Listing every array that drifted, the indices of the worst entries and by how much;
        also names missing or extra keys.
    """
    got = plotted_values(result_or_figure)
    if keys is not None:
        got = {k: got[k] for k in keys if k in got}
    if update is None:
        update = os.environ.get(UPDATE_ENV, "") not in ("", "0")
    if update:
        if not isinstance(golden, (str, os.PathLike)):
            raise ValueError("update mode needs a golden file path")
        write_json(golden, got)
        warnings.warn(f"golden file {golden} written ({len(got)} values); review and commit it", stacklevel=2)
        return
    if isinstance(golden, (str, os.PathLike)):
        path = Path(golden)
        if not path.exists():
            raise AssertionError(f"golden file {path} does not exist; create it by running the test with "
                                 f"{UPDATE_ENV}=1")
        want = json.loads(path.read_text())
        if "values" in want and "kind" in want and isinstance(want["values"], dict):
            want = want["values"]  # a Plot.save() JSON works as a golden file too
    else:
        want = dict(golden)
    if keys is not None:
        want = {k: want[k] for k in keys if k in want}
    problems = []
    for k in sorted(set(want) - set(got)):
        problems.append(f"{k}: in the golden record but not plotted")
    for k in sorted(set(want) & set(got)):
        a, b = _as_float_array(got[k]), _as_float_array(want[k])
        if a is None or b is None:
            if to_jsonable(got[k]) != want[k]:
                problems.append(f"{k}: {to_jsonable(got[k])!r} differs from golden {want[k]!r}")
            continue
        msg = _describe(k, a, b, rtol, atol)
        if msg:
            problems.append(msg)
    if problems:
        raise AssertionError("plotted values differ from the golden record:\n  " + "\n  ".join(problems))
