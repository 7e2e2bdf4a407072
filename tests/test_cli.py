"""The CLI as a user drives it: a subprocess, --help everywhere, exit 2 with one line on mistakes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from viz.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=ROOT, timeout=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "viz.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def test_help_lists_every_subcommand():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        assert name in proc.stdout, f"subcommand {name} missing from --help"


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help_has_examples(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    assert command in sub, f"subcommand {command} is not available"
    text = sub[command].format_help()
    assert "example" in text.lower()
    if command not in ("bench",):
        for opt in ("--device", "--seed", "--out", "--quiet"):
            assert opt in text, f"{command} lacks {opt}"


def test_info_matches_manifest():
    proc = run_cli("info", "trained_models/mlp-ce.safetensors", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    manifest = {r["file"]: r for r in json.loads((ROOT / "trained_models" / "manifest.json").read_text())}
    assert report["evaluated"]["accuracy"] == pytest.approx(manifest["mlp-ce.safetensors"]["test_accuracy"], abs=1e-9)
    assert report["meta"]["arch"] == "mlp"
    human = run_cli("info", "trained_models/mlp-ce.safetensors")
    assert "matches" in human.stdout


@pytest.mark.parametrize("setup,args,msg", [
    ("empty", ["info", "{tmp}/empty.pt"], "is empty"),
    ("text", ["info", "{tmp}/notes.safetensors"], "not a checkpoint"),
    (None, ["info", "{tmp}/missing.safetensors"], "does not exist"),
    (None, ["info", "trained_models/mlp-ce.safetensors", "--data", "imagenet"], "unknown dataset"),
    (None, ["info", "trained_models/mlp-ce.safetensors", "--device", "tpu"], "not a device"),
])
def test_user_mistakes_exit_2_with_one_line(tmp_path, setup, args, msg):
    if setup == "empty":
        (tmp_path / "empty.pt").write_bytes(b"")
    elif setup == "text":
        (tmp_path / "notes.safetensors").write_text("just text")
    proc = run_cli(*[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode == 2, proc.stderr
    assert msg in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_argparse_errors_exit_2():
    proc = run_cli("info")
    assert proc.returncode == 2 and "checkpoint" in proc.stderr


def test_train_list():
    proc = run_cli("train", "--list")
    assert proc.returncode == 0 and "mlp-ce" in proc.stdout


def test_bare_state_dict_through_the_cli(tmp_path):
    """A user's bare state_dict: --arch names the architecture; without it the error says so."""
    import torch

    import landscape as ls

    model = ls.models.build("mlp", input_shape=(1, 8, 8), num_classes=10)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    proc = run_cli("surface", tmp_path / "bare.pt", "--grid", "3", "--subset", "20", "--no-plots", "--quiet",
                   "--out", tmp_path / "s")
    assert proc.returncode == 2 and "--arch" in proc.stderr
    proc = run_cli("surface", tmp_path / "bare.pt", "--arch", "mlp", "--grid", "3", "--subset", "20", "--no-plots",
                   "--quiet", "--out", tmp_path / "s")
    assert proc.returncode == 0, proc.stderr


def test_progress_lines_when_piped_and_silence_with_quiet(tmp_path):
    """Issue 23.3: off a terminal a run prints plain lines with done/total and ETA; --quiet prints nothing."""
    import re

    env = {k: v for k, v in os.environ.items() if k != "LANDSCAPE_QUIET"}
    env.update(MPLBACKEND="Agg", OMP_NUM_THREADS="1", LANDSCAPE_PROGRESS_INTERVAL="0")
    args = [sys.executable, "-m", "viz.cli", "surface", "trained_models/mlp-ce.safetensors", "--grid", "4",
            "--subset", "20", "--chunk-size", "4", "--no-plots"]
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:  # a file, as `landscape surface ... > log 2>&1` in a batch job
        proc = subprocess.run([*args, "--out", str(tmp_path / "a")], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                              env=env, timeout=120)
    assert proc.returncode == 0
    lines = log.read_text().splitlines()
    progress = [ln for ln in lines if ln.startswith("surface: ")]
    assert [int(re.match(r"surface: (\d+)/16 pt", ln).group(1)) for ln in progress] == [4, 8, 12, 16], lines
    assert all(re.search(r"ETA \d+s", ln) for ln in progress[:-1]) and "done" in progress[-1]
    assert "\r" not in log.read_text()  # no terminal bar in a log file
    quiet = subprocess.run([*args, "--out", str(tmp_path / "b"), "--quiet"], capture_output=True, text=True,
                           cwd=ROOT, env=env, timeout=120)
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_phenotype_writes_under_runs_and_keeps_parameters_apart():
    """Issue 23.4: runs/phenotype like the other commands; labels that differ after a dot stay different files."""
    from viz.commands.phenotype import _slug

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert sub["phenotype"].parse_args(["CE"]).out == "runs/phenotype"
    slugs = [_slug(label) for label in ("adma(a=0.1)", "adma(a=0.3)", "0.5*ce + 0.5*a2")]
    assert len(set(slugs)) == 3 and not any("." in s for s in slugs)
    assert all(Path(f"x/surface-{s}").with_suffix(".png").name == f"surface-{s}.png" for s in slugs)


def test_quiet_reaches_progress_the_command_does_not_pass_down(tmp_path, monkeypatch):
    """--quiet silences every report of the run (a report's figures, a Hessian's density), not only the ones
    a command passes ``verbose=False`` to; the process's own setting comes back afterwards."""
    import landscape.progress as lp
    import viz.commands.surface as command
    from viz.cli import main

    monkeypatch.delenv(lp.QUIET_ENV, raising=False)
    seen = []
    monkeypatch.setattr(command, "run", lambda args: seen.append(lp.resolve(None)) or 0)
    assert main(["surface", "any.safetensors", "--quiet", "--out", str(tmp_path / "q")]) == 0
    assert main(["surface", "any.safetensors", "--out", str(tmp_path / "q")]) == 0
    assert seen == [False, True]
    assert lp.QUIET_ENV not in os.environ
