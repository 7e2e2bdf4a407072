"""A checkpoint is data: no meta, file or spec makes the toolkit import or call code the user did not name.

Each payload is a checkpoint an attacker could publish. Loading it (API, CLI, report spec,
``--between``) must run nothing and end with one clear line (exit 2 on the CLI).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import landscape as ls
from landscape.errors import ArchitectureError, CheckpointError
from tests.conftest import ROOT

MLP_META = {"arch": "mlp", "arch_kwargs": {"hidden": [16, 8]}, "loss": "ce", "input_shape": [1, 8, 8],
            "num_classes": 10, "dataset": "digits"}


def _weights() -> dict:
    return ls.models.build("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[16, 8]).state_dict()


def _payloads(tmp_path: Path) -> dict[str, tuple[dict, Path]]:
    """``{name: (meta, what must still be there / must not appear)}``."""
    victim = tmp_path / "victim"
    victim.mkdir(exist_ok=True)
    (victim / "precious.txt").write_text("do not delete")
    marker = tmp_path / "pwned"
    return {
        "rmtree": ({**MLP_META, "arch": "shutil:rmtree", "arch_kwargs": {"path": str(victim)}}, victim),
        "system": ({**MLP_META, "arch": "os:system", "arch_kwargs": {"command": f"touch {marker}"}}, marker),
        "popen": ({**MLP_META, "arch": "subprocess:Popen", "arch_kwargs": {"args": ["touch", str(marker)]}}, marker),
        "evilmod": ({**MLP_META, "arch": "evilmod:X", "arch_kwargs": {}}, marker),
    }


def _write(tmp_path: Path, name: str, meta: dict, fmt: str) -> Path:
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in _weights().items()}, str(path),
                  metadata={"landscape_meta": json.dumps(meta)})
    elif fmt == "pt":
        torch.save({"state_dict": _weights(), "meta": meta}, path)
    else:  # a Lightning file: the meta in hyper_parameters
        torch.save({"state_dict": {f"model.{k}": v for k, v in _weights().items()}, "hyper_parameters": meta,
                    "pytorch-lightning_version": "2.2.0"}, path)
    return path


def _evilmod(folder: Path, marker: Path) -> None:
    (folder / "evilmod.py").write_text(textwrap.dedent(f"""
        open({str(marker)!r}, "w").write("imported")
        import torch
        class X(torch.nn.Module):
            pass
    """))


def _intact(name: str, target: Path) -> bool:
    return (target / "precious.txt").exists() if name == "rmtree" else not target.exists()


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "ckpt"])
@pytest.mark.parametrize("name", ["rmtree", "system", "popen", "evilmod"])
def test_code_in_meta_runs_nothing_through_the_api(tmp_path, monkeypatch, name, fmt):
    meta, target = _payloads(tmp_path)[name]
    _evilmod(tmp_path, tmp_path / "pwned")
    monkeypatch.chdir(tmp_path)  # evilmod.py lies in the current directory
    path = _write(tmp_path, name, meta, fmt)
    with pytest.raises(CheckpointError, match="trust_code=True.*--trust-code"):
        ls.load_checkpoint(path, device="cpu")
    assert _intact(name, target)
    # even when the user opts in, only an nn.Module subclass is built, and the current directory is not searched
    with pytest.raises(CheckpointError, match="not an nn.Module subclass|cannot import module 'evilmod'"):
        ls.load_checkpoint(path, device="cpu", trust_code=True)
    assert _intact(name, target)
    assert "evilmod" not in sys.modules


def test_models_resolve_refuses_callables_that_are_not_model_classes():
    for name in ("shutil:rmtree", "os:system", "subprocess:Popen", "builtins:eval", "torch:load"):
        with pytest.raises(ArchitectureError, match="not an nn.Module subclass"):
            ls.models.resolve(name, trust_code=True)
        with pytest.raises(ArchitectureError, match="code path"):
            ls.models.resolve(name)
    assert ls.models.resolve("torch.nn:Linear", trust_code=True) is torch.nn.Linear
    with pytest.raises(ArchitectureError, match="not a 'package.module:Class' path"):
        ls.models.resolve("os; rm -rf /:X", trust_code=True)


def _cli(*args, cwd: Path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(ROOT), MPLBACKEND="Agg")  # the project, not the current directory
    return subprocess.run([sys.executable, "-m", "viz.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("trust", [False, True])
def test_code_in_meta_runs_nothing_through_the_cli(tmp_path, trust):
    payloads = _payloads(tmp_path)
    _evilmod(tmp_path, tmp_path / "pwned")
    flags = ["--trust-code"] if trust else []
    for name, (meta, target) in payloads.items():
        path = _write(tmp_path, name, meta, "safetensors")
        commands = [["info", path, *flags]]
        if name in ("rmtree", "evilmod"):  # every path to the loader, with the two kinds of payload
            commands.append(["surface", ROOT / "trained_models" / "mlp-ce.safetensors", "--line", "--between", path,
                             "--grid", "3", "--subset", "20", "--out", tmp_path / "out", "--quiet", *flags])
            spec = tmp_path / f"{name}.toml"
            spec.write_text(f'name = "r"\n[models]\nm = "{path}"\n'
                            '[[figure]]\nkind = "interpolation"\nmodels = ["m"]\nsteps = 3\n')
            commands.append(["report", spec, "--out", tmp_path / "reports", "--quiet", *flags])
        for args in commands:
            proc = _cli(*args, cwd=tmp_path)
            assert proc.returncode == 2, (name, args[0], proc.stderr)
            assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
            assert _intact(name, target), (name, args[0])


def test_meta_dataset_is_a_hint_never_a_file_to_read(tmp_path):
    secret = tmp_path / "secret.npz"
    path = ls.save_checkpoint(tmp_path / "c.safetensors", ls.models.build("mlp", input_shape=(1, 8, 8),
                                                                          num_classes=10, hidden=[16, 8]),
                              {**MLP_META, "dataset": f"npz:{secret}"})
    proc = _cli("info", path, cwd=tmp_path)
    assert proc.returncode == 2 and "pass --data" in proc.stderr, proc.stderr
    # a dataset that needs no file is a fine default
    ok = ls.save_checkpoint(tmp_path / "d.safetensors", ls.models.build("mlp", input_shape=(1, 8, 8),
                                                                        num_classes=10, hidden=[16, 8]), MLP_META)
    proc = _cli("info", ok, cwd=tmp_path)
    assert proc.returncode == 0 and "digits" in proc.stdout, proc.stderr


@pytest.mark.parametrize("meta,msg", [
    (["arch", "mlp"], "must be a JSON object"),
    ({**MLP_META, "num_classes": "ten"}, r"meta\['num_classes'\] must be a positive integer"),
    ({**MLP_META, "arch_kwargs": "x"}, r"meta\['arch_kwargs'\] must be a dict"),
    ({**MLP_META, "input_shape": [1, "8", 8]}, r"meta\['input_shape'\] must be a list of positive integers"),
    ({**MLP_META, "normalization": {"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}},
     r"normalization'\] has 3 channel\(s\) but meta\['input_shape'\] \[1, 8, 8\] has 1"),
    ({**MLP_META, "normalization": {"mean": [0.1], "std": [0.0]}}, "deviations > 0"),
])
def test_malformed_meta_is_one_clear_error(tmp_path, meta, msg):
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in _weights().items()}, str(path),
              metadata={"landscape_meta": json.dumps(meta)})
    with pytest.raises(CheckpointError, match=msg):
        ls.load_checkpoint(path, device="cpu")


def test_non_finite_weights_warn_once_naming_them(tmp_path):
    model = ls.models.build("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[16, 8])
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
        model.body[1].bias[1] = float("inf")
    path = ls.save_checkpoint(tmp_path / "nan.safetensors", model, MLP_META)
    with pytest.warns(RuntimeWarning, match=r"2 tensor\(s\) hold NaN or inf values \(body.1.bias, head.weight\)"):
        ls.load_checkpoint(path, device="cpu")


def test_a_report_spec_cannot_opt_in_to_running_code(tmp_path):
    from landscape.errors import SpecError
    from viz.report import build_report

    spec = tmp_path / "s.toml"
    spec.write_text('name = "r"\ntrust_code = true\n[models]\nm = "m.safetensors"\n'
                    '[[figure]]\nkind = "interpolation"\nmodels = ["m"]\n')
    with pytest.raises(SpecError, match="line 2: a report spec cannot opt in.*--trust-code"):
        build_report(spec, out_root=tmp_path / "out", quiet=True)
