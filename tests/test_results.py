"""Result files load as their own type in any process, whatever was imported before."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import numpy as np
import pytest

import landscape as ls
from landscape.results import RESULT_MODULES, Result
from tests.conftest import ROOT


def test_every_result_type_of_the_package_is_in_the_table():
    found = {}
    for info in pkgutil.walk_packages(ls.__path__, "landscape."):
        if ".benchmarks" in info.name:
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, Result) and obj is not Result and obj.__module__ == info.name:
                found[name] = info.name.removeprefix("landscape.")
    assert found == RESULT_MODULES


def test_a_result_loads_as_its_type_in_a_fresh_process(tmp_path, digits_test):
    ph = ls.phenotype("CE", resolution=5)
    path = ph.save(tmp_path / "ph")
    code = ("import sys, landscape as ls; r = ls.Result.load(sys.argv[1]);"
            "print(type(r).__name__, r.normalized.shape)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "Phenotype"


def test_unknown_or_corrupt_result_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, __header__=np.array('{"class": "os.system", "fields": {}}'))
    with pytest.raises(ls.errors.ArgumentError, match="a type this process does not know"):
        Result.load(bad)
    for content in (b"", b"PK\x03\x04garbage", b"not a zip"):
        (tmp_path / "c.npz").write_bytes(content)
        with pytest.raises(ls.errors.ArgumentError, match="not a result file"):
            Result.load(tmp_path / "c.npz")


def test_non_finite_values_come_back_as_the_floats_they_were(tmp_path):
    import math

    from landscape.hessian import TraceEstimate

    nan, inf = float("nan"), float("inf")
    est = TraceEstimate(trace=nan, stderr=inf, n_probes=2, samples=np.array([1.0, nan]), interval=(nan, inf),
                        confidence=0.95, method="hutchinson", low_rank=0, meta={"centre": {"lam_max": nan}, "x": -inf})
    back = Result.load(est.save(tmp_path / "t"))
    assert math.isnan(back.trace) and back.stderr == inf and back.meta["x"] == -inf
    assert math.isnan(back.interval[0]) and back.interval[1] == inf and math.isnan(back.meta["centre"]["lam_max"])
    np.testing.assert_array_equal(back.samples, est.samples)
