"""Pin the numbers behind a figure in regression tests.

Usage in a test::

    from landscape.testing import assert_plotted_values
    plot = viz.contour(surf)
    assert_plotted_values(plot, "tests/golden/contour.json", rtol=1e-4)

``result_or_figure`` is a ``viz`` :class:`~viz.figure.Plot` (its ``values``), a
:class:`~landscape.results.Result` (its array and number fields) or a plain dict.

Goldens across machines: floats differ in the last bits between CPUs, BLAS builds and thread
counts, so every number is compared with a tolerance, at any depth of nesting. Choose it from
how the numbers are computed: exact formulas (loss phenotypes) agree to ~1e-14, single
forward passes (surfaces, Grad-CAM) to ~1e-6 relative, iterative solvers (Lanczos) to their
stopping tolerance; chaotic ones (t-SNE coordinates) cannot be pinned across machines at all:
pin their quality scores instead and leave the coordinates out with ``paths``.

Creating and updating golden files: run the tests with ``LANDSCAPE_UPDATE_GOLDEN=1``
(or pass ``update=True``); every ``assert_plotted_values`` then writes its golden JSON
instead of comparing, and says so. Review the diff of the golden files before committing.
"""
from __future__ import annotations

import dataclasses
import fnmatch
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


_NON_FINITE = {"inf": np.inf, "-inf": -np.inf, "nan": np.nan}


def _is_number(v) -> bool:
    """A JSON number (booleans excluded), JSON null or a non-finite marker ("inf", "-inf", "nan")."""
    if isinstance(v, bool):
        return False
    return v is None or isinstance(v, (int, float)) or (isinstance(v, str) and v in _NON_FINITE)


def _numeric_array(value) -> np.ndarray | None:
    """A JSON-like value as one float array when it is a (possibly nested) rectangular list of numbers."""
    def conv(v):
        if isinstance(v, list):
            return [conv(x) for x in v]
        if not _is_number(v):
            raise TypeError
        return np.nan if v is None else _NON_FINITE.get(v, v) if isinstance(v, str) else v

    if not (_is_number(value) or isinstance(value, list)):
        return None
    try:
        return np.asarray(conv(value), dtype=float)
    except (TypeError, ValueError):  # strings, booleans, mappings inside, or a ragged list
        return None


def _entry(path: str, index: tuple) -> str:
    """``path[i, j]``: the full name of one entry of an array at ``path``."""
    return f"{path}[{', '.join(str(i) for i in index)}]" if index else path


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
    order = np.argsort(-np.nan_to_num(diff[bad], nan=np.inf), kind="stable")[:show]
    lines = [f"{name}: {int(bad.sum())} of {bad.size} values drifted (rtol={rtol}, atol={atol}); worst:"]
    for k in order:
        i = tuple(int(v) for v in idx[k]) if got.ndim else ()
        lines.append(f"    {_entry(name, i)}: got {float(got[i])!r}, golden {float(want[i])!r}, abs diff {diff[i]:.3g}")
    return "\n".join(lines)


def _kind(v) -> str:
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return f"a list of {len(v)}"
    if _is_number(v):
        return "a number"
    return f"{type(v).__name__} {v!r}"


Rules = Mapping[str, "Mapping[str, float] | None"]


def _rule(path: str, paths: Rules | None):
    """The first entry of ``paths`` whose pattern matches ``path`` (``fnmatch``), or ``...`` for none."""
    for pattern, rule in (paths or {}).items():
        if fnmatch.fnmatchcase(path, pattern):
            return rule
    return ...


def compare_values(got, want, path: str, rtol: float, atol: float, paths: Rules | None = None) -> list[str]:
    """Every difference between two JSON-like records, each named by its full path.

    Numbers are compared with ``rtol``/``atol`` at any depth (inside mappings, lists and ragged
    lists); strings, booleans and None compare exactly; a missing or extra key and a list of
    another length are structure differences. Either side may still hold numpy values.
    ``paths`` maps path patterns to other tolerances or to None (not compared), see
    :func:`assert_plotted_values`.
    """
    rule = _rule(path, paths)
    if rule is None:
        return []
    if rule is not ...:
        rtol, atol = rule.get("rtol", rtol), rule.get("atol", atol)
    got, want = to_jsonable(got), to_jsonable(want)
    a, b = _numeric_array(got), _numeric_array(want)
    if a is not None and b is not None:
        msg = _describe(path, a, b, rtol, atol)
        return [msg] if msg else []
    if isinstance(want, dict) and isinstance(got, dict):
        problems = [f"{path}.{k}: in the golden record but not plotted" for k in want if k not in got]
        problems += [f"{path}.{k}: plotted but not in the golden record" for k in got if k not in want]
        for k in want:
            if k in got:
                problems += compare_values(got[k], want[k], f"{path}.{k}", rtol, atol, paths)
        return problems
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{path}: {len(got)} entries, golden has {len(want)}"]
        problems = []
        for i, (g, w) in enumerate(zip(got, want)):
            problems += compare_values(g, w, f"{path}[{i}]", rtol, atol, paths)
        return problems
    if isinstance(want, (str, bool)) and type(got) is type(want):
        return [] if got == want else [f"{path}: {got!r} differs from golden {want!r}"]
    return [f"{path}: {_kind(got)} where the golden record has {_kind(want)}"]


def assert_plotted_values(result_or_figure: Any, golden: str | os.PathLike | Mapping, rtol: float = 1e-5,
                          atol: float = 1e-8, keys: list[str] | None = None, update: bool | None = None,
                          paths: Rules | None = None) -> None:
    """Assert that the values a figure plots equal a golden record.

    Parameters
    ----------
    result_or_figure : Plot, Result or dict
        What to check.
    golden : path or dict
        A JSON file of ``{name: values}`` (written by this function in update mode) or a dict.
    rtol, atol : float
        Tolerances as in ``numpy.isclose``, applied to every number at any depth: flat and
        nested arrays, values inside mappings (``{"curve a": [...], "curve b": [...]}``), lists
        of mappings and ragged lists. NaN matches NaN and inf matches inf of the same sign;
        strings, booleans and None compare exactly.
    keys : list of str, optional
        Compare only these names (default: every name of the golden record).
    update : bool, optional
        Write the golden file instead of comparing; default from the environment variable
        ``LANDSCAPE_UPDATE_GOLDEN``.
    paths : mapping, optional
        Other tolerances for some entries: ``{pattern: {"rtol": ..., "atol": ...}}``, or
        ``{pattern: None}`` to leave an entry out of the comparison (values that legitimately
        differ between machines, such as t-SNE coordinates). Patterns are ``fnmatch`` patterns
        on the full path, e.g. ``"panels.*.x"`` or ``"table.*.knn_accuracy"``; the first match
        wins and applies to everything below it.

    Raises
    ------
    AssertionError
        Listing every value that drifted by its full path (``normalized.adma(a=0.1)[42]``), the
        worst entries and by how much; also names structure differences: a key missing from
        either side below the top level, a list of another length, a number where the golden
        record has a string. Names plotted at the top level but absent from the golden record
        are ignored, so a golden file may pin a subset of a figure's values.

    Examples
    --------
    Numbers compare with the tolerance at any depth; a difference is reported by its full path:

    >>> from landscape.testing import assert_plotted_values
    >>> assert_plotted_values({"curves": {"ce": [0.1, 0.2]}}, {"curves": {"ce": [0.1 + 1e-12, 0.2]}}, rtol=1e-6)
    >>> assert_plotted_values({"curves": {"ce": [0.1, 0.2]}}, {"curves": {"ce": [0.1, 0.25]}}, rtol=1e-6)
    Traceback (most recent call last):
    ...
    AssertionError: plotted values differ from the golden record:
      curves.ce: 1 of 2 values drifted (rtol=1e-06, atol=1e-08); worst:
        curves.ce[1]: got 0.2, golden 0.25, abs diff 0.05
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
        problems += compare_values(got[k], want[k], k, rtol, atol, paths)
    if problems:
        raise AssertionError("plotted values differ from the golden record:\n  " + "\n  ".join(problems))
