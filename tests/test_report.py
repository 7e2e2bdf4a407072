"""The report builder: outputs, caching, --only, paths, output safety, progress, and the default report's goldens.

Spec validation has its own module (tests/test_spec_validation.py), cache keys theirs (tests/test_report_cache.py).
"""
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


def anywhere(text: str) -> str:
    """The spec with its checkpoint paths made absolute, for the CLI (which has no ``root=``)."""
    return text.replace('"trained_models/', f'"{ROOT.as_posix()}/trained_models/')


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
    spec = load_spec(ROOT / "reports" / "default.toml")
    used = {f.kind.name for f in spec.figures}
    assert used == set(KINDS), f"kinds missing from the default report: {set(KINDS) - used}"
    files = {Path(m).name for m in spec.models.values()}
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
    stale = {g.name for g in _golden_files()} - {p.name for p in produced}
    assert not stale, f"goldens of figures the report no longer draws: {sorted(stale)}; delete them"
    kind_of = {f: rec["kind"] for rec in report["figures"] for f in rec["files"]}
    for path in produced:
        values = json.loads(path.read_text())["values"]
        assert_plotted_values(values, GOLDEN / path.name, **KINDS[kind_of[path.name]].tolerance)


def test_seed_override(tmp_path):
    spec = write_spec(tmp_path, SMALL.format(grid=5, style=""))
    with pytest.raises(SpecError, match="--only names \\['nope'\\]"):
        build_report(spec, out_root=tmp_path, quiet=True, root=ROOT, only=["nope"])
    report = build_report(spec, out_root=tmp_path, quiet=True, root=ROOT, only=["contours"], seed=3)
    assert [r["id"] for r in report["figures"]] == ["contours"] and report["seed"] == 3
    assert report["figures"][0]["seed"] == 3


def test_only_keeps_the_other_figures_in_the_index_and_json(tmp_path):
    spec = write_spec(tmp_path, SMALL.format(grid=5, style=""))
    out = tmp_path / "small"
    build_report(spec, out_root=tmp_path, quiet=True, root=ROOT)
    before = json.loads((out / "report.json").read_text())["figures"]
    again = build_report(spec, out_root=tmp_path, quiet=True, root=ROOT, only=["phenotype_curves"])
    assert again["rendered"] == ["02-phenotype_curves"]
    on_disk = json.loads((out / "report.json").read_text())
    assert [r["id"] for r in on_disk["figures"]] == ["contours", "02-phenotype_curves"]
    assert on_disk["figures"][0] == before[0]  # the earlier record of the figure not rendered now, unchanged
    index = (out / "index.html").read_text()
    assert index.count("<section") == 2 and 'src="contours.png"' in index and 'src="02-phenotype_curves.png"' in index
    # a figure rendered earlier for other options (the grid changed) leaves the index rather than mislead
    changed = write_spec(tmp_path, SMALL.format(grid=7, style=""), "changed.toml")
    third = build_report(changed, out_root=tmp_path, quiet=True, root=ROOT, only=["02-phenotype_curves"])
    assert [r["id"] for r in third["figures"]] == ["02-phenotype_curves"] and third["out_of_date"] == ["contours"]
    assert 'id="contours"' not in (out / "index.html").read_text()


def test_paths_in_a_spec_start_at_its_folder(tmp_path, monkeypatch):
    import shutil

    import numpy as np

    import landscape as ls

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(ROOT / "trained_models" / "mlp-ce.safetensors", inputs / "ce.safetensors")
    few = ls.load_dataset("digits", "test").subset(50, seed=0)
    np.savez(inputs / "few.npz", x=few.x, y=few.y)
    (tmp_path / "specs").mkdir()
    text = ('name = "rel"\ndata = "npz:{p}few.npz"\n[models]\nce = "{p}ce.safetensors"\n'
            '[[figure]]\nkind = "interpolation"\nmodels = ["ce"]\nsteps = 3\n')
    spec = write_spec(tmp_path / "specs", text.format(p="../inputs/"))
    monkeypatch.chdir(inputs)  # whatever the current folder, the paths start at the spec's
    report = build_report(spec, out_root=tmp_path / "out", quiet=True)
    rec = report["figures"][0]
    assert rec["data"] == "npz:../inputs/few.npz" and "(50 samples)" in rec["caption"]
    assert rec["models"][0]["digest"] == ls.load_checkpoint(inputs / "ce.safetensors", device="cpu").digest
    # root= still sets the folder relative paths start from (the API's way)
    other = write_spec(tmp_path / "specs", text.format(p="inputs/"), "other.toml")
    assert build_report(other, out_root=tmp_path / "out2", quiet=True, root=tmp_path)["figures"][0]["caption"]


@pytest.mark.slow
def test_the_default_report_renders_from_another_folder(tmp_path):
    """``make report`` runs it from the repository root (so does the default_report fixture); any folder works."""
    proc = run_cli("report", ROOT / "reports" / "default.toml", "--only", "phenotype-curves", "--out", tmp_path / "r",
                   "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r" / "default" / "report.json").read_text())
    assert report["rendered"] == ["phenotype-curves"]


def test_kinds_lists_every_kind_and_option(capsys):
    from viz.cli import main

    assert main(["report", "--kinds"]) == 0
    listed = capsys.readouterr().out
    for name, k in KINDS.items():
        assert f"{name}: {k.help}" in listed
        for option, declared in k.options.items():
            assert f"    {option:14s} {declared.describe()}" in listed, (name, option)


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_fails_at_once(tmp_path):
    import subprocess
    import sys

    spec = write_spec(tmp_path, anywhere(SMALL.format(grid=5, style="")))
    out = tmp_path / "small"
    # two processes, as two shells would run them (within one process the lock is re-entrant)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from landscape.io import output_lock\n"
                               "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
                               str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run_cli("report", spec, "--out", tmp_path, "--quiet")
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2 and "in use by another run" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (out / "report.json").exists()
    assert not [p for p in out.iterdir() if p.name != ".landscape.lock"], "the second run wrote something"


@pytest.mark.parametrize("victim", ["data file named like a figure", "spec named report.json"])
def test_an_output_never_replaces_an_input(tmp_path, victim):
    import numpy as np

    import landscape as ls
    from landscape.errors import OutputError

    out = tmp_path / "small"
    out.mkdir()
    text = SMALL.format(grid=5, style="")
    if victim.startswith("data"):
        target = out / "contours.json"  # the contour figure's plotted values would be written here
        few = ls.load_dataset("digits", "test").subset(40, seed=0)
        with open(target, "wb") as fh:
            np.savez(fh, x=few.x, y=few.y)
        spec = write_spec(tmp_path, text.replace('data = "digits"', f'data = "npz:{target}"'))
    else:
        target = out / "report.json"
        spec = write_spec(out, text, "report.json")
    before = target.read_bytes()
    with pytest.raises(OutputError, match=f"{target.name} in the report's output folder .* is an input"):
        build_report(spec, out_root=tmp_path, quiet=True, root=ROOT)
    assert target.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [target.name], "work started before the clash was found"


def test_progress_per_figure_and_inside_figures_and_quiet_silences_all(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LANDSCAPE_QUIET", raising=False)  # the suite silences progress; this test needs it
    spec = write_spec(tmp_path, SMALL.format(grid=5, style=""))
    build_report(spec, out_root=tmp_path / "loud", root=ROOT)
    loud = capsys.readouterr()
    assert "report [1/2] contours (contour): 2 results to compute, 0 cached" in loud.err
    assert "report [2/2] 02-phenotype_curves (phenotype_curves): 2 results to compute, 0 cached" in loud.err
    assert loud.err.count("surface: 25/25 pt (100.0%)") == 2  # inside the figure: each surface's own progress
    assert "report [1/2] contours: computing surface of mam" in loud.err
    assert "report: 2/2 fig (100.0%)" in loud.err and "report written to" in loud.out
    build_report(spec, out_root=tmp_path / "quiet", root=ROOT, quiet=True)
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out == ""


CAPTIONS = """\
name = "captions"
data = "digits"

[models]
ce = "trained_models/mlp-ce.safetensors"
mam = "trained_models/mlp-mam-softmax.safetensors"
a2 = "trained_models/mlp-a2.safetensors"

[[figure]]
kind = "interpolation"
models = ["ce", "mam", "a2"]
steps = 5
range = [-0.5, 1.5]

[[figure]]
kind = "eigen_ratio"
models = ["ce", "mam"]
grid = 2
contour_grid = 3
subset = 40
tol = 0.1
"""


def test_captions_name_every_model_and_curves_share_one_figure(tmp_path):
    report = build_report(write_spec(tmp_path, CAPTIONS), out_root=tmp_path, quiet=True, root=ROOT)
    for rec in report["figures"]:
        for model in rec["models"]:
            assert Path(model["file"]).stem in rec["caption"], (rec["id"], model["name"])
    line, eigen = report["figures"]
    # the three models' curves are one figure with one x range, not one file per model
    assert line["files"] == ["01-interpolation.png", "01-interpolation.json"]
    values = json.loads((tmp_path / "captions" / "01-interpolation.json").read_text())["values"]
    assert [c["title"] for c in values["curves"]] == ["ce", "mam", "a2"] and values["t_range"] == [-0.5, 1.5]
    # several plots of one figure: each keeps its own caption in the index
    index = (tmp_path / "captions" / "index.html").read_text()
    assert index.count("<figcaption>") == 2 and len(eigen["plots"]) == 2


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

[[figure]]
kind = "hessian_plane"
models = ["ce"]
grid = 5
subset = 120

[[figure]]
kind = "layer_spectra"
models = ["ce"]
subset = 120
probes = 2
steps = 10
trace_probes = 8

[[figure]]
kind = "collapse"
snapshots = ["trained_models/snapshots/mlp-ce"]
models = ["ce"]
subset = 200

[[figure]]
kind = "cka"
models = ["ce", "mam"]
subset = 120

[[figure]]
kind = "faithfulness"
models = ["cnn_ce"]
images = 4
steps = 8

[[figure]]
kind = "connectivity"
models = ["ce", "mam"]
epochs = 2
points = 11
grid = 5
subset = 200

[[figure]]
kind = "geometry-card"
models = ["ce", "mam"]
subset = 256
eval_subset = 200
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
                     "phenotype_curves", "gradcam", "hessian_plane", "layer_spectra", "collapse", "cka",
                     "faithfulness", "connectivity", "geometry-card"}
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

    spec = write_spec(tmp_path, anywhere(SMALL.format(grid=5, style="")) + '\n[[figure]]\nkind = "interpolation"\n'
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


def test_eigen_ratio_figures_of_several_models_share_round_contour_levels():
    """Compared panels share one set of round levels: the eigen-ratio figures of two models (hand-made maps)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from landscape.hessian import EigenMap
    from landscape.surface import Surface
    from viz.report import Figure

    x = np.linspace(-1, 1, 3)
    results = {}
    for m, scale in (("ce", 1.0), ("mam", 3.0)):  # losses 0.1 .. 2.1 and 0.3 .. 6.3
        loss = scale * (0.1 + x[None, :] ** 2 + x[:, None] ** 2)
        ones = np.ones((3, 3))
        results[f"{m}/eigen"] = EigenMap(x, x, -0.1 * ones, ones, 0.1 * ones, loss, ones, 1e-4 * ones, ones > 0,
                                         meta={"checkpoint": m})
        results[f"{m}/surface"] = Surface(x, x, loss, 0.5 * ones, None, meta={"checkpoint": m})
    k = KINDS["eigen_ratio"]
    fig = Figure(0, "eigen", k, "", ["ce", "mam"], "digits", {n: o.default for n, o in k.options.items()}, 1)
    plots = k.draw(results, fig)
    levels = [np.asarray(p.values["levels"]) for p in plots.values()]
    np.testing.assert_array_equal(levels[0], levels[1])
    np.testing.assert_allclose(levels[0], np.arange(0.0, 6.51, 0.5))  # round, and covering both: 0.1 .. 6.3
    plt.close("all")
