"""Sharded curvature products under torchrun (2 CPU processes, gloo) equal the single-process ones to 1e-6.

Each rank takes half of the samples and the products are all-reduced, so every rank holds the
product of the whole data set; Lanczos extremes, Hutchinson's trace and the SLQ density run on
the sharded operator unchanged. This file is also the worker that torchrun starts
(``python -m torch.distributed.run ... tests/test_operators_distributed.py OUT.npz``).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 90  # 45 per rank: batch_size 20 leaves a remainder batch on each


def checkpoint():
    """A seeded mlp with batchnorm (1,242 parameters; the same in every process) as a checkpoint."""
    import landscape as ls
    from landscape.checkpoint import as_checkpoint

    torch.manual_seed(0)
    model = ls.models.build("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(16,)).eval()
    with torch.no_grad():
        model.body[2].running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(1))
    return as_checkpoint(model)


def compute(op_kwargs: dict) -> dict[str, np.ndarray]:
    """What is compared: Hessian products (float32, float64), GGN products, loss, gradient, extremes, trace, density."""
    import landscape as ls
    from landscape.hessian import extremes, hessian_trace, spectral_density
    from landscape.hvp import GGNOperator, HessianOperator

    ck = checkpoint()
    data = ls.load_dataset("digits", split="test").subset(SAMPLES, seed=0)
    out = {}
    V = torch.randn(1242, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for name, dtype in (("32", torch.float32), ("64", torch.float64)):
        H = HessianOperator.from_checkpoint(ck, data, dtype=dtype, batch_size=20, **op_kwargs)
        out[f"hv{name}"] = H.matmat(V).double().numpy()
    H64 = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64, **op_kwargs)
    G64 = GGNOperator.from_checkpoint(ck, data, dtype=torch.float64, **op_kwargs)
    out["gv64"] = G64.matmat(V).numpy()
    out["loss64"] = np.array(H64.loss())
    out["grad64"] = H64.gradient().numpy()
    ext = extremes(H64, tol=1e-12, max_iter=20, min_iter=20, seed=0)  # a fixed number of steps on both sides
    out["extremes"] = np.array([ext.lam_min, ext.lam_max, ext.hvps])
    out["trace"] = hessian_trace(H64, n_probes=3, seed=0).samples
    out["density"] = spectral_density(H64, n_probes=2, steps=8, seed=0).nodes
    return out


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_gloo_ranks_match_the_single_process_operator(tmp_path):
    out = tmp_path / "sharded.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, str(out)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = dict(np.load(out))
    single = compute({})
    assert sharded.keys() == single.keys()
    for key, ref in single.items():
        got = sharded[key]
        err = np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30)
        assert err <= 1e-6, (key, err)
    assert sharded["extremes"][2] == single["extremes"][2] == 20
    assert sharded["extremes"][0] < 0 < sharded["extremes"][1]


def test_shard_without_a_process_group_names_the_fix(digits_test):
    from landscape.errors import ArgumentError
    from landscape.hvp import HessianOperator

    with pytest.raises(ArgumentError, match="torchrun"):
        HessianOperator.from_checkpoint(checkpoint(), digits_test.subset(10, seed=0), shard=True)


def _worker(path: str) -> None:
    from landscape.distributed import init_distributed

    torch.set_num_threads(1)
    rank, world, _ = init_distributed("cpu")
    assert world == 2
    result = compute({"shard": True})
    gathered = [None] * world
    dist.all_gather_object(gathered, result)
    for other in gathered[1:]:  # every rank holds the same products
        for key in result:
            np.testing.assert_array_equal(other[key], gathered[0][key])
    if rank == 0:
        np.savez(path, **result)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1])
