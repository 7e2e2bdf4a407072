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
    with pytest.raises(AssertionError, match=r"loss\[1, 0\]: got -inf, golden inf"):
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
    assert "loss[2, 1]: got 9.0, golden 9.5, abs diff 0.5" in msg
    assert msg.index("[2, 1]") < msg.index("[0, 3]")  # worst first


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


# -- nested records (named curves, panels, tables): numbers are compared with tolerance at any depth ----
def _nested_record() -> dict:
    t = np.linspace(0.0, 1.0, 51)
    return {
        "yhat": t,
        "normalized": {"adma(a=0.1)": np.sin(3 * t), "adma(a=0.2)": np.cos(3 * t)},
        "panels": [{"title": "ce", "loss": np.outer(t, t) + 0.5}, {"title": "mam", "loss": np.outer(t, t) + 0.25}],
        "ragged": [[1.0, 2.0, 3.0], [4.0], [np.nan, np.inf]],
        "table": {"ce": {"accuracy": 0.9717, "separation": 57.6}, "mam": {"accuracy": 0.98, "separation": 60.3}},
        "labels": [1, 2, 3], "log": False, "field": "loss", "none": None,
    }


def _ulps(value, k: int = 4):
    """``value`` moved by ``k`` units in the last place, at every depth (what another CPU's BLAS does)."""
    if isinstance(value, dict):
        return {key: _ulps(v, k) for key, v in value.items()}
    if isinstance(value, list):
        return [_ulps(v, k) for v in value]
    if isinstance(value, np.ndarray):
        out = value.copy()
        for _ in range(k):
            out = np.nextafter(out, np.inf)
        return out
    if isinstance(value, float):
        return float(_ulps(np.array(value), k))
    return value


def test_nested_record_perturbed_by_a_few_ulps_passes(tmp_path):
    rec = _nested_record()
    with pytest.warns(UserWarning):
        assert_plotted_values(rec, tmp_path / "g.json", update=True)
    moved = _ulps(rec)
    assert moved["normalized"]["adma(a=0.1)"][42] != rec["normalized"]["adma(a=0.1)"][42]
    assert moved["table"]["ce"]["separation"] != 57.6
    assert_plotted_values(moved, tmp_path / "g.json", rtol=1e-12, atol=1e-300)


def test_drift_at_depth_two_fails_and_names_its_path():
    want = _nested_record()
    got = _nested_record()
    got["normalized"]["adma(a=0.1)"][42] += 1e-3
    got["panels"][1]["loss"][3, 7] -= 0.5
    got["table"]["mam"]["separation"] = 61.0
    got["ragged"][1][0] = 4.5
    with pytest.raises(AssertionError) as info:
        assert_plotted_values(got, want, rtol=1e-6)
    msg = str(info.value)
    assert "normalized.adma(a=0.1)[42]: got" in msg
    assert "normalized.adma(a=0.1): 1 of 51 values drifted" in msg
    assert "panels[1].loss[3, 7]: got" in msg and "abs diff 0.5" in msg
    assert "table.mam.separation: got 61.0, golden 60.3" in msg
    assert "ragged[1][0]: got 4.5, golden 4.0" in msg
    assert "adma(a=0.2)" not in msg and "panels[0]" not in msg and "table.ce" not in msg


def test_structure_differences_are_named():
    want = _nested_record()
    renamed = _nested_record()
    renamed["normalized"]["adma(a=0.3)"] = renamed["normalized"].pop("adma(a=0.2)")
    with pytest.raises(AssertionError) as info:
        assert_plotted_values(renamed, want)
    msg = str(info.value)
    assert "normalized.adma(a=0.2): in the golden record but not plotted" in msg
    assert "normalized.adma(a=0.3): plotted but not in the golden record" in msg
    shorter = _nested_record()
    shorter["ragged"] = shorter["ragged"][:2]
    with pytest.raises(AssertionError, match=r"ragged: 2 entries, golden has 3"):
        assert_plotted_values(shorter, want)
    typed = _nested_record()
    typed["table"]["ce"]["accuracy"] = "0.9717"
    with pytest.raises(AssertionError, match=r"table.ce.accuracy: str '0.9717' where the golden record has a number"):
        assert_plotted_values(typed, want)


def test_strings_booleans_and_none_compare_exactly_at_depth():
    want = {"panels": [{"title": "ce", "log": False, "c": None}]}
    assert_plotted_values({"panels": [{"title": "ce", "log": False, "c": None}]}, want)
    with pytest.raises(AssertionError, match=r"panels\[0\].title: 'CE' differs from golden 'ce'"):
        assert_plotted_values({"panels": [{"title": "CE", "log": False, "c": None}]}, want)
    with pytest.raises(AssertionError, match=r"panels\[0\].log: True differs from golden False"):
        assert_plotted_values({"panels": [{"title": "ce", "log": True, "c": None}]}, want)
    with pytest.raises(AssertionError, match=r"panels\[0\].c"):
        assert_plotted_values({"panels": [{"title": "ce", "log": False, "c": 1.0}]}, want)
    # booleans are not numbers: True is not 1.0
    with pytest.raises(AssertionError, match="flag"):
        assert_plotted_values({"flag": [True]}, {"flag": [1.0]})


def test_nan_and_inf_rules_hold_inside_mappings(tmp_path):
    rec = {"curves": {"a": np.array([1.0, np.nan, np.inf]), "b": [[np.nan], [2.0, -np.inf]]}}
    with pytest.warns(UserWarning):
        assert_plotted_values(rec, tmp_path / "g.json", update=True)
    assert_plotted_values(rec, tmp_path / "g.json")
    flipped = {"curves": {"a": np.array([1.0, np.nan, -np.inf]), "b": [[np.nan], [2.0, -np.inf]]}}
    with pytest.raises(AssertionError, match=r"curves.a\[2\]: got -inf, golden inf"):
        assert_plotted_values(flipped, tmp_path / "g.json")
    filled = {"curves": {"a": np.array([1.0, np.nan, np.inf]), "b": [[0.0], [2.0, -np.inf]]}}
    with pytest.raises(AssertionError, match=r"curves.b\[0\]\[0\]: got 0.0, golden nan"):
        assert_plotted_values(filled, tmp_path / "g.json")


def test_path_rules_set_other_tolerances_or_leave_entries_out():
    want = _nested_record()
    got = _nested_record()
    got["panels"][0]["loss"] += 0.3  # legitimately machine-dependent, left out
    got["table"]["ce"]["accuracy"] += 0.004  # within its own looser tolerance
    rules = {"panels*.loss": None, "table.*.accuracy": {"atol": 0.01}}
    assert_plotted_values(got, want, rtol=1e-6, paths=rules)
    got["table"]["mam"]["accuracy"] += 0.02  # beyond it
    with pytest.raises(AssertionError, match=r"table.mam.accuracy: got 1.0, golden 0.98") as info:
        assert_plotted_values(got, want, rtol=1e-6, paths=rules)
    assert "panels" not in str(info.value) and "table.ce" not in str(info.value)
