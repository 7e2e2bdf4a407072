"""Under torchrun (2 CPU processes, gloo) the grid is sharded and gathered to the single-process surface."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

from landscape.grid import progress_files
from landscape.surface import Surface, surface

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "trained_models" / "mlp-ce.safetensors"

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


@pytest.mark.slow
def test_two_gloo_ranks_match_the_single_process_surface(tmp_path, digits_test):
    out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "viz.cli",
           "surface", str(CKPT), "--device", "cpu", "--grid", "9x7", "--range", "-1", "1", "-0.5", "0.5",
           "--samples", "120", "--chunk-size", "5", "--ce", "--no-plots", "--quiet", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, "\n".join(line for line in proc.stderr.splitlines() if "error" in line.lower())[:3000]
    sharded = Surface.load(out / "surface.npz")
    single = surface(CKPT, digits_test.subset(120, seed=0), x=(-1, 1, 9), y=(-0.5, 0.5, 7), with_ce=True,
                     progress=False)
    np.testing.assert_allclose(sharded.loss, single.loss, rtol=1e-6, atol=0)
    np.testing.assert_allclose(sharded.ce_loss, single.ce_loss, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(sharded.accuracy, single.accuracy)
    np.testing.assert_array_equal(sharded.x, single.x)
    assert not progress_files(out / "surface.npz")


ONE_RANK_FAILS = """
import os, sys
from viz.cli import main
argv = sys.argv[1:]
if os.environ.get("RANK") == "1":  # a user error on this rank only: a checkpoint it cannot find
    argv = [a.replace("mlp-ce.safetensors", "missing.safetensors") for a in argv]
sys.exit(main(argv))
"""


@pytest.mark.slow
def test_a_user_error_on_one_rank_ends_every_rank_with_one_line(tmp_path):
    """Issue 22.6: the failing rank prints one line and exits 2; torchrun then ends the others (no hang)."""
    import time

    script = tmp_path / "one_rank_fails.py"
    script.write_text(ONE_RANK_FAILS)
    out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "surface", str(CKPT), "--device", "cpu", "--grid", "9", "--samples", "60", "--chunk-size", "2",
           "--no-plots", "--quiet", "--out", str(out)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - t0 < 100  # rank 0 waited at a barrier for rank 1 and was ended, not left hanging
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("landscape surface:")]
    assert ours == [f"landscape surface: error (rank 1): checkpoint {ROOT / 'trained_models' / 'missing.safetensors'} "
                    "does not exist; check the path."], proc.stderr[-3000:]
    assert "exitcode  : 2" in proc.stderr  # torchrun's summary: the rank exited with the CLI's status
    for package in ("viz", "landscape"):  # no traceback through the toolkit's code on any rank
        assert f'File "{ROOT / package}' not in proc.stderr, proc.stderr[-3000:]
    assert not (out / "surface.npz").exists()
