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
