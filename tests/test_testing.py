"""The regression helper: passes on equal values, names drifted arrays and indices, update mode."""
from __future__ import annotations

import json

import numpy as np
import pytest

import landscape as ls
from landscape.testing import assert_plotted_values


def test_equal_values_pass_including_nan_and_inf(tmp_path):
    vals = {"loss": np.array([[1.0, np.nan], [np.inf, 2.0]]), "levels": [0.1, 0.2], "title": "ce"}
    with pytest.warns(UserWarning, match="written"):
        assert_plotted_values(vals, tmp_path / "g.json", update=True)
    stored = json.loads((tmp_path / "g.json").read_text())
    assert stored["loss"] == [[1.0, None], ["inf", 2.0]]
    assert_plotted_values(vals, tmp_path / "g.json")
    flipped = {**vals, "loss": np.array([[1.0, np.nan], [-np.inf, 2.0]])}
    with pytest.raises(AssertionError, match=r"at index \(1, 0\)"):
        assert_plotted_values(flipped, tmp_path / "g.json")


def test_drift_reports_array_index_and_amount():
    got = {"loss": np.arange(12.0).reshape(3, 4)}
    want = {"loss": np.arange(12.0).reshape(3, 4)}
    want["loss"][2, 1] += 0.5
    want["loss"][0, 3] += 0.01
    with pytest.raises(AssertionError) as info:
        assert_plotted_values(got, want, rtol=1e-6)
    msg = str(info.value)
    assert "loss: 2 of 12 values drifted" in msg
    assert "at index (2, 1): got 9.0, golden 9.5, abs diff 0.5" in msg
    assert msg.index("(2, 1)") < msg.index("(0, 3)")  # worst first


def test_shape_missing_keys_and_strings():
    with pytest.raises(AssertionError, match="shape"):
        assert_plotted_values({"a": np.zeros(3)}, {"a": [0, 0]})
    with pytest.raises(AssertionError, match="b: in the golden record but not plotted"):
        assert_plotted_values({"a": 1.0}, {"a": 1.0, "b": 2.0})
    with pytest.raises(AssertionError, match="'x' differs from golden 'y'"):
        assert_plotted_values({"s": "x"}, {"s": "y"})
    assert_plotted_values({"a": 1.0 + 1e-9}, {"a": 1.0})


def test_result_objects_and_missing_golden(tmp_path):
    from landscape.results import Result
    import dataclasses

    @dataclasses.dataclass
    class R(Result):
        v: np.ndarray
        meta: dict = dataclasses.field(default_factory=dict)

    r = R(np.array([1.0, 2.0]))
    with pytest.raises(AssertionError, match="LANDSCAPE_UPDATE_GOLDEN=1"):
        assert_plotted_values(r, tmp_path / "none.json")
    with pytest.warns(UserWarning):
        assert_plotted_values(r, tmp_path / "r.json", update=True)
    assert_plotted_values(r, tmp_path / "r.json")
    r2 = R(np.array([1.0, 2.1]))
    with pytest.raises(AssertionError, match=r"v: 1 of 2 values drifted"):
        assert_plotted_values(r2, tmp_path / "r.json")


def test_result_save_load_round_trip(tmp_path):
    from landscape.results import Result
    import dataclasses

    @dataclasses.dataclass
    class Thing(Result):
        x: np.ndarray
        maps: dict
        label: str = ""
        meta: dict = dataclasses.field(default_factory=dict)

    t = Thing(np.arange(3.0), {"a": np.ones((2, 2))}, "hi", {"seed": 1, "nested": {"k": [1, 2]}})
    path = t.save(tmp_path / "t")
    assert path.suffix == ".npz"
    back = ls.Result.load(path)
    assert isinstance(back, Thing) and back.label == "hi" and back.meta == t.meta
    assert np.array_equal(back.x, t.x) and np.array_equal(back.maps["a"], t.maps["a"])
    with pytest.raises(ls.errors.ArgumentError, match="does not exist"):
        ls.Result.load(tmp_path / "missing.npz")
