"""The report builder: spec validation with line numbers, outputs, caching, and the default report's goldens."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from landscape.errors import SpecError
from landscape.testing import assert_plotted_values
from tests.conftest import ROOT
from tests.test_cli import run_cli
from viz.report import KINDS, build_report, load_spec

GOLDEN = ROOT / "tests" / "golden" / "default"

SMALL = """\
name = "small"
data = "digits"
seed = 0

[models]
ce = "trained_models/mlp-ce.safetensors"
mam = "trained_models/mlp-mam-softmax.safetensors"

[[figure]]
id = "contours"
kind = "contour"
models = ["ce", "mam"]
grid = {grid}
subset = 60

[[figure]]
kind = "phenotype_curves"
losses = ["A2", "CE"]
{style}
"""


def write_spec(tmp_path, text, name="spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("edit,line,msg", [
    (("kind = \"phenotype_curves\"", "kind = \"phenotype_curvez\""), 17, "unknown figure kind 'phenotype_curvez'"),
    (("grid = 5", "grid = 5\ncolour = \"red\""), 14, "has no option 'colour'"),
    (("models = [\"ce\", \"mam\"]", "models = [\"ce\", \"adma\"]"), 12, "names model 'adma'"),
    (("seed = 0", "seed = 0\nthreads = 4"), 4, "unknown top-level key 'threads'"),
    (("grid = 5", "grid = = 5"), 13, "Invalid|Expected|line 13"),
])
def test_spec_errors_name_the_line_before_any_work(tmp_path, edit, line, msg):
    text = SMALL.format(grid=5, style="").replace(*edit)
    spec = write_spec(tmp_path, text)
    with pytest.raises(SpecError, match=msg) as info:
        build_report(spec, out_root=tmp_path / "out", quiet=True, root=ROOT)
    assert f"line {line}" in str(info.value)
    assert not (tmp_path / "out").exists(), "work started before the spec was validated"


def test_missing_checkpoint_is_a_spec_error(tmp_path):
    spec = write_spec(tmp_path, SMALL.format(grid=5, style="").replace("mlp-ce", "mlp-nope"))
    with pytest.raises(SpecError, match="model 'ce' points to trained_models/mlp-nope.safetensors"):
        build_report(spec, out_root=tmp_path / "out", quiet=True, root=ROOT)


def test_cli_spec_error_exits_2(tmp_path):
    spec = write_spec(tmp_path, SMALL.format(grid=5, style="").replace("kind = \"contour\"", "kind = \"contor\""))
    proc = run_cli("report", spec, "--out", tmp_path / "out", "--quiet")
    assert proc.returncode == 2
    assert "line 11" in proc.stderr and "Did you mean" not in proc.stderr or "contour" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_outputs_and_caching(tmp_path):
    spec = write_spec(tmp_path, SMALL.format(grid=5, style=""))
    first = build_report(spec, out_root=tmp_path, quiet=True, root=ROOT)
    out = tmp_path / "small"
    assert (out / "index.html").exists() and (out / "report.json").exists()
    rec = {r["id"]: r for r in first["figures"]}
    assert set(rec) == {"contours", "02-phenotype_curves"}
    for r in first["figures"]:
        for f in r["files"]:
            assert (out / f).exists(), f
        assert r["caption"]
    assert [m["digest"] for m in rec["contours"]["models"]] and rec["contours"]["options"]["grid"] == 5
    assert all(not c["cached"] for c in rec["contours"]["cache"])
    values = json.loads((out / "contours.json").read_text())["values"]
    assert values  # the plotted numbers are written beside the figure

    # a style change recomputes nothing
    spec2 = write_spec(tmp_path, SMALL.format(grid=5, style="reference = \"CE\"").replace(
        "subset = 60", "subset = 60\nlog = true"), "spec2.toml")
    second = build_report(spec2, out_root=tmp_path, quiet=True, root=ROOT)
    assert all(c["cached"] for r in second["figures"] for c in r["cache"])
    # a changed input recomputes only what depends on it
    spec3 = write_spec(tmp_path, SMALL.format(grid=7, style=""), "spec3.toml")
    third = {r["id"]: r for r in build_report(spec3, out_root=tmp_path, quiet=True, root=ROOT)["figures"]}
    assert all(not c["cached"] for c in third["contours"]["cache"])
    assert all(c["cached"] for c in third["02-phenotype_curves"]["cache"])


def test_every_kind_is_in_the_default_report():
    spec, _ = load_spec(ROOT / "reports" / "default.toml")
    used = {f["kind"] for f in spec["figure"]}
    assert used == set(KINDS), f"kinds missing from the default report: {set(KINDS) - used}"
    files = {Path(m).name for m in spec["models"].values()}
    assert {"mlp-ce.safetensors", "mlp-mam-softmax.safetensors", "mlp-a2.safetensors"} <= files


@pytest.mark.slow
def test_default_report_structure(default_report):
    out, report = default_report["out"], default_report["report"]
    index = (out / "index.html").read_text()
    for r in report["figures"]:
        assert f'id="{r["id"]}"' in index
        for f in r["files"]:
            assert (out / f).exists()
            if not f.endswith(".json"):
                assert f in index
    assert json.loads((out / "report.json").read_text())["figures"][0]["models"][0]["digest"]


def _golden_files():
    return sorted(GOLDEN.glob("*.json")) if GOLDEN.exists() else []


@pytest.mark.slow
def test_default_report_plotted_values_match_goldens(default_report):
    """Pins every number the default report plots (update: LANDSCAPE_UPDATE_GOLDEN=1, see README).

    Each figure is compared with its kind's declared tolerance (``viz.report.Kind.tolerance``).
    """
    import os

    out, report = default_report["out"], default_report["report"]
    produced = sorted(p for p in out.glob("*.json") if p.name != "report.json")
    assert produced
    update = os.environ.get("LANDSCAPE_UPDATE_GOLDEN", "") not in ("", "0")
    if not update:
        missing = {p.name for p in produced} - {g.name for g in _golden_files()}
        assert not missing, f"no golden for {sorted(missing)}; create them with LANDSCAPE_UPDATE_GOLDEN=1"
    kind_of = {f: rec["kind"] for rec in report["figures"] for f in rec["files"]}
    for path in produced:
        values = json.loads(path.read_text())["values"]
        assert_plotted_values(values, GOLDEN / path.name, **KINDS[kind_of[path.name]].tolerance)


def test_only_and_seed_override(tmp_path):
    spec = write_spec(tmp_path, SMALL.format(grid=5, style=""))
    with pytest.raises(SpecError, match="--only names \\['nope'\\]"):
        build_report(spec, out_root=tmp_path, quiet=True, root=ROOT, only=["nope"])
    report = build_report(spec, out_root=tmp_path, quiet=True, root=ROOT, only=["contours"], seed=3)
    assert [r["id"] for r in report["figures"]] == ["contours"] and report["seed"] == 3
    assert report["figures"][0]["seed"] == 3


PORTABILITY = """\
name = "portability"
data = "digits"
seed = 0

[models]
ce = "trained_models/mlp-ce.safetensors"
mam = "trained_models/mlp-mam-softmax.safetensors"
cnn_ce = "trained_models/cnn-ce.safetensors"

[[figure]]
kind = "contour"
models = ["ce", "mam"]
grid = 9
subset = 120

[[figure]]
kind = "interpolation"
models = ["ce"]
steps = 11

[[figure]]
kind = "eigen_ratio"
models = ["ce"]
grid = 3
subset = 120
contour_grid = 5

[[figure]]
kind = "spectral_density"
models = ["mam"]
probes = 2
steps = 20
subset = 120

[[figure]]
kind = "tsne"
models = ["ce"]

[[figure]]
kind = "hypersphere"
models = ["mam"]

[[figure]]
kind = "phenotype_curves"
losses = ["A2", "adma(a=0.1)", "CE"]

[[figure]]
kind = "gradcam"
models = ["cnn_ce"]
images = 3
"""

# Another CPU as far as one machine can play it: torch's portable kernels instead of its vectorised
# ones, MKL restricted to SSE4.2, OpenBLAS's oldest x86-64 kernels, one OpenMP thread, two torch threads.
OTHER_CPU = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "OPENBLAS_CORETYPE": "Prescott",
             "OMP_NUM_THREADS": "1", "LANDSCAPE_TEST_THREADS": "2"}


def _render_in_subprocess(spec: Path, out: Path, env: dict) -> dict:
    import os
    import subprocess
    import sys

    code = ("import os, sys, torch; torch.set_num_threads(int(os.environ.get('LANDSCAPE_TEST_THREADS', '1')));"
            "from viz.report import build_report;"
            "build_report(sys.argv[1], out_root=sys.argv[2], quiet=True, root=sys.argv[3])")
    proc = subprocess.run([sys.executable, "-c", code, str(spec), str(out), str(ROOT)], capture_output=True,
                          text=True, env={**os.environ, "MPLBACKEND": "Agg", **env}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "portability" / "report.json").read_text())


@pytest.mark.slow
def test_kind_tolerances_hold_across_cpu_kernels_and_thread_counts(tmp_path):
    """What a golden made on one machine meets on another: every kind's declared tolerance must cover
    the differences between kernel sets and thread counts (issue: goldens failed on a fresh machine)."""
    spec = write_spec(tmp_path, PORTABILITY)
    here = _render_in_subprocess(spec, tmp_path / "here", {"OMP_NUM_THREADS": "2", "LANDSCAPE_TEST_THREADS": "1"})
    _render_in_subprocess(spec, tmp_path / "there", OTHER_CPU)
    kinds = {rec["kind"] for rec in here["figures"]}
    assert kinds == {"contour", "interpolation", "eigen_ratio", "spectral_density", "tsne", "hypersphere",
                     "phenotype_curves", "gradcam"}
    for rec in here["figures"]:
        for f in rec["files"]:
            if f.endswith(".json"):
                a = json.loads((tmp_path / "here" / "portability" / f).read_text())["values"]
                b = json.loads((tmp_path / "there" / "portability" / f).read_text())["values"]
                assert_plotted_values(b, a, **KINDS[rec["kind"]].tolerance)


@pytest.mark.slow
def test_second_report_over_the_cache_in_fresh_processes(tmp_path):
    """The main job run twice: the second run loads every result from the cache in a new interpreter."""
    import subprocess
    import sys

    spec = write_spec(tmp_path, SMALL.format(grid=5, style="") + '\n[[figure]]\nkind = "interpolation"\n'
                      'models = ["ce"]\nsteps = 5\n\n[[figure]]\nkind = "hypersphere"\nmodels = ["mam"]\n')
    for attempt in ("first", "second"):
        proc = run_cli("report", spec, "--out", tmp_path, "--quiet")
        assert proc.returncode == 0, (attempt, proc.stderr)
    report = json.loads((tmp_path / "small" / "report.json").read_text())
    assert all(c["cached"] for r in report["figures"] for c in r["cache"])
    code = ("import sys, pathlib, landscape as ls\n"
            "for p in sorted(pathlib.Path(sys.argv[1]).glob('*.npz')):\n"
            "    print(p.name, type(ls.Result.load(p)).__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "small" / ".cache")], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    loaded = dict(line.split() for line in proc.stdout.splitlines())
    assert loaded and "Result" not in loaded.values()
    assert {"Surface", "Curve", "Phenotype", "Sphere"} <= set(loaded.values()), loaded
