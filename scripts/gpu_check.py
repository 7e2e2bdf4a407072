"""``make gpu-check``: every GPU check in one run, under 5 minutes on one GPU, one table at the end.

Steps (each in its own process with its own time limit, so a failure or a hang of one step is
reported in the table and the others still run):

1. the ``gpu``-marked tests (``pytest -m gpu``);
2. ``landscape bench surface --device cuda`` on the digits mlp and on ResNet-20 (256 synthetic
   32x32x3 images), 16 and 64 grid points per launch, against Li et al.'s loop and
   loss-landscapes on the same GPU;
3. ``landscape bench hessian --device cuda`` on the shipped digits mlp-ce and on ResNet-20
   (``--arch resnet20``, synthetic data): the cost of one Hessian-vector product against a
   forward pass and pyhessian's, and the eigenvalue-ratio map against Li et al.'s eigsh recipe.

The table gives, per method, milliseconds per grid point and how many times faster it is than
Li et al.'s recipe (the per-point loop for surfaces, the eigsh recipe for Hessians) and than the
peer library (loss-landscapes for surfaces, pyhessian for Hessians). Without CUDA it stops at
once with exit status 2. Run it from the repository root: ``make gpu-check`` (with a CUDA torch
build, e.g. ``make gpu-check TORCH_INDEX=https://download.pytorch.org/whl/cu128``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 300  # the whole check; the per-step limits below add up to less


@dataclasses.dataclass
class Row:
    """One line of the final table."""

    step: str
    method: str
    ms_per_point: float | None = None
    vs_li: float | None = None  # how many times faster than Li et al.'s recipe (>1: faster)
    vs_library: float | None = None  # than loss-landscapes / pyhessian
    note: str = ""


@dataclasses.dataclass
class Step:
    """One command of the check."""

    name: str
    argv: list[str]
    timeout_s: int
    kind: str  # "tests", "surface" or "hessian"
    json_path: Path | None = None


def steps(python: str, tmp: Path) -> list[Step]:
    """The commands of the check, in order."""
    cli = [python, "-m", "viz.cli", "bench"]
    surface = ["--device", "cuda", "--repeat", "2", "--points-per-launch", "16", "64"]
    hessian = ["--device", "cuda", "--grid", "3", "--rounds", "2", "--only", "products,map"]
    return [
        Step("gpu tests", [python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"], 100, "tests"),
        Step("surface mlp", cli + ["surface", "--arch", "mlp", "--grid", "21", *surface, "--json",
                                   str(tmp / "surface-mlp.json")], 45, "surface", tmp / "surface-mlp.json"),
        Step("surface resnet20", cli + ["surface", "--arch", "resnet20", "--samples", "256", "--grid", "9", *surface,
                                        "--json", str(tmp / "surface-resnet20.json")], 55, "surface",
             tmp / "surface-resnet20.json"),
        Step("hessian mlp", cli + ["hessian", *hessian, "--checkpoint", "trained_models/mlp-ce.safetensors",
                                   "--json", str(tmp / "hessian-mlp.json")], 45, "hessian", tmp / "hessian-mlp.json"),
        Step("hessian resnet20", cli + ["hessian", *hessian, "--arch", "resnet20", "--json",
                                        str(tmp / "hessian-resnet20.json")], 45, "hessian",
             tmp / "hessian-resnet20.json"),
    ]


# -- reading each step's output ------------------------------------------------------------------
def test_rows(step: str, rc: int | None, output: str) -> list[Row]:
    """One row from pytest's summary line (``3 passed, 1 skipped in 9.1s``)."""
    counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", output))
    summary = ", ".join(f"{v} {k}" for k, v in counts.items()) or "no summary"
    status = "ok" if rc == 0 else ("timed out" if rc is None else f"FAILED (exit {rc})")
    return [Row(step, "pytest -m gpu", note=f"{status}: {summary}")]


def _ratio(slow: float | None, fast: float | None) -> float | None:
    return slow / fast if slow and fast else None


def surface_rows(step: str, bench: dict) -> list[Row]:
    """Rows from ``landscape bench surface --json`` output (:meth:`SurfaceBenchmark.to_dict`)."""
    methods = {m["name"]: m for m in bench["methods"]}
    loop = next((m["per_point"] for n, m in methods.items() if n.startswith("loop")), None)
    library = next((m["per_point"] for n, m in methods.items() if n.startswith("loss_landscapes")), None)
    rows = []
    for name, m in methods.items():
        diff = m.get("max_rel_diff")
        note = f"{m['pct_peak']:.0f}% of peak" + (f", max rel diff {diff:.1e}" if diff is not None else "")
        rows.append(Row(step, name, 1e3 * m["per_point"], _ratio(loop, m["per_point"]),
                        _ratio(library, m["per_point"]), note))
    return rows


def hessian_rows(step: str, bench: dict) -> list[Row]:
    """Rows from ``landscape bench hessian --json`` output (:func:`landscape.benchmarks.hessian.run`).

    Products: milliseconds per Hessian-vector product (``x library``: pyhessian's cached product
    over this one). Map: milliseconds per grid point of the eigenvalue-ratio map (``x Li et al.``:
    the eigsh recipe's time over this one, ``x library``: pyhessian's).
    """
    rows = []
    products = bench.get("products")
    if products:
        ph = products.get("pyhessian")
        for r in products["rows"]:
            if r.get("vectors"):
                rows.append(Row(step, r["method"][:44], 1e3 * r["seconds"], None, _ratio(ph, r["seconds"]),
                                f"per HVP, {r['seconds'] / products['forward']:.1f}x a forward pass"))
    emap = bench.get("map")
    if emap:
        per_point = {name: r["seconds"] / emap["points"] for name, r in emap["rows"].items()}
        li, library = per_point.get("li-eigsh"), per_point.get("pyhessian")
        for name, r in emap["rows"].items():
            rows.append(Row(step, f"map: {name}", 1e3 * per_point[name], _ratio(li, per_point[name]),
                            _ratio(library, per_point[name]), f"{r['hvps'] / emap['points']:.1f} HVPs per point"))
    return rows


def failed_row(step: str, rc: int | None, output: str) -> Row:
    """A row saying that a step failed, with the last line it printed."""
    last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "no output")
    status = "timed out" if rc is None else f"FAILED (exit {rc})"
    return Row(step, "-", note=f"{status}: {last[:100]}")


def rows_of(step: Step, rc: int | None, output: str) -> list[Row]:
    """The table rows of one finished step."""
    if step.kind == "tests":
        return test_rows(step.name, rc, output)
    if rc != 0:
        return [failed_row(step.name, rc, output)]
    try:
        bench = json.loads(step.json_path.read_text())
        rows = surface_rows(step.name, bench) if step.kind == "surface" else hessian_rows(step.name, bench)
    except (OSError, ValueError, KeyError) as exc:
        return [Row(step.name, "-", note=f"ran, but its output was not understood ({exc})")]
    return rows or [Row(step.name, "-", note="ran, but printed no table this script understands")]


# -- the table -------------------------------------------------------------------------------------
def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_table(rows: list[Row], device: str = "") -> str:
    """Every figure of the check in one table."""
    head = (f"{'step':18s} {'method':44s} {'ms/point':>10s} {'x Li et al.':>12s} {'x library':>10s}  note")
    out = [f"gpu-check{f' on {device}' if device else ''} (x: times faster than Li et al.'s recipe / the peer "
           "library on the same GPU)", head, "-" * len(head)]
    for r in rows:
        out.append(f"{r.step:18s} {r.method:44s} {_num(r.ms_per_point, '.3f'):>10s} {_num(r.vs_li, '.2f'):>12s} "
                   f"{_num(r.vs_library, '.2f'):>10s}  {r.note}")
    return "\n".join(out)


def run_step(step: Step, deadline: float) -> tuple[int | None, str]:
    """Run one step within its own limit and the overall deadline; ``(exit code or None if timed out, output)``."""
    limit = max(1, min(step.timeout_s, int(deadline - time.monotonic())))
    env = dict(os.environ, LANDSCAPE_QUIET="1")
    try:
        done = subprocess.run(step.argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        return None, out.decode(errors="replace") if isinstance(out, bytes) else str(out)
    return done.returncode, done.stdout + done.stderr


def main(argv: list[str] | None = None) -> int:
    """Run every step, print the table; exit 2 without CUDA, 1 if a step failed, else 0."""
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU is available to torch (torch.cuda.is_available() is False); run it on a GPU "
              "machine with a CUDA build of torch, e.g. make gpu-check TORCH_INDEX=https://download.pytorch.org/"
              "whl/cu128", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0)
    deadline = time.monotonic() + BUDGET_S
    rows: list[Row] = []
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for step in steps(sys.executable, Path(tmp)):
            t0 = time.monotonic()
            rc, output = run_step(step, deadline)
            failed |= rc != 0
            rows += rows_of(step, rc, output)
            print(f"gpu-check: {step.name}: {'timed out' if rc is None else f'exit {rc}'} "
                  f"in {time.monotonic() - t0:.0f} s", flush=True)
            if rc != 0:
                print("\n".join(output.splitlines()[-15:]), flush=True)
    print(format_table(rows, device))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
