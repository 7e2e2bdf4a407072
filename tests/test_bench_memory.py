"""The surface bench's memory figures: the allocation counter, the bound's bookkeeping, the engine within it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from landscape.benchmarks.surface import (AllocatedPeak, MethodTiming, SurfaceBenchmark, bound_bytes, memory_bound,
                                          running_peak)
from landscape.checkpoint import as_checkpoint
from landscape.directions import random_directions
from landscape.evaluator import GridEvaluator
from viz.commands.bench import surface_table

MiB = 2 ** 20


def test_running_peak_is_the_largest_running_total_in_time_order():
    # +4 +8 -4 +2 -8 in time order: totals 4, 12, 8, 10, 2
    events = [(3, 2), (0, 4), (4, -8), (1, 8), (2, -4)]
    assert running_peak(events) == 12
    assert running_peak([]) == 0
    assert running_peak([(0, -5), (1, 3)]) == 0  # frees of memory allocated before the block never count


def test_allocated_peak_counts_the_tensors_a_block_holds_at_once():
    with AllocatedPeak("cpu") as meter:
        a = torch.ones(1_000_000)  # 4 MB
        b = a * 2  # 8 MB live
        del a
        c = b + 1  # 8 MB live again, never 12
        del b, c
    if meter.peak is None:
        pytest.skip("torch.profiler gives no memory events here")
    assert meter.peak == pytest.approx(8_000_000, rel=0.01)


def _mlp_case(n: int = 200):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    ck = as_checkpoint(model, criterion="ce")
    x = torch.randn(n, 20)
    y = torch.randint(0, 10, (n,))
    return ck, x, y, random_directions(model, n=2, seed=0)


def test_memory_bound_parts_are_the_hand_counted_bytes():
    ck, x, y, dirs = _mlp_case()
    mem = memory_bound(ck, x, y, dirs)
    params = (20 * 64 + 64 + 64 * 10 + 10) * 4
    assert mem["model"] == params  # no buffers
    assert mem["data"] == 200 * 20 * 4
    assert mem["piece"] == 200  # 64 floats per sample at most: the whole data is one piece
    assert mem["weights"] == (2 + 3) * params  # centre, two directions, the point, the self-check's copy
    assert mem["shortcut"] == (2 + 2) * 200 * 64 * 4  # the first linear's output on all the data, 4 copies
    # a plain forward over the piece holds at least the first layer's and the ReLU's outputs
    assert 2 * 200 * 64 * 4 <= mem["activations"] <= 4 * 200 * 64 * 4
    assert bound_bytes(mem) == mem["data"] + mem["activations"] + mem["weights"] + mem["shortcut"]


def test_the_engine_allocates_within_its_bound_on_a_small_mlp():
    """Construction and evaluation together, counted by the allocation events (not the resident set)."""
    ck, x, y, dirs = _mlp_case()
    mem = memory_bound(ck, x, y, dirs)
    with AllocatedPeak("cpu") as meter:
        ev = GridEvaluator(ck.model, ck.criterion, x, y, dirs)
        ev(np.array([[0.1, -0.2], [0.5, 0.5], [-1.0, 0.3]]))
        used_shortcut = ev.shortcut_layer is not None
        del ev
    if meter.peak is None:
        pytest.skip("torch.profiler gives no memory events here")
    assert used_shortcut
    # the engine holds its three flat vectors with the shortcut's parts in them: the counter sees them
    assert meter.peak >= mem["shortcut"]
    assert meter.peak <= 1.0 * bound_bytes(mem)


def _bench(engine_allocated: int | None, engine_rss: int = 9 * MiB) -> SurfaceBenchmark:
    methods = [MethodTiming("engine", [0.2], 100, engine_rss, None, [0.2], engine_allocated),
               MethodTiming("loss_landscapes", [0.5], 100, 3 * MiB, None, [0.5], 2 * MiB)]
    memory = {"model": MiB, "data": MiB, "activations": MiB, "piece": 500, "weights": 4 * MiB, "shortcut": 2 * MiB}
    return SurfaceBenchmark(model="m", data="d", synthetic=False, samples=500, grid=10, device="cpu", threads=1,
                            rounds=1, flops_per_point=2e7, peak_gflops=100.0, methods=methods, memory=memory)


def test_bench_holds_each_peak_against_the_bound_and_says_so():
    b = _bench(6 * MiB)
    assert b.bound == 8 * MiB and b.plain_bound == 3 * MiB
    engine, peer = b.methods
    assert b.peak(engine) == 6 * MiB  # allocations, not the resident set, where they were counted
    assert b.over_bound(engine) == pytest.approx(0.75) and b.over_bound(peer) == pytest.approx(0.25)
    text = surface_table(b)
    assert "= 8.0 MB" in text and "plain bound, model + data + piece: 3.0 MB" in text
    assert "engine: peak 6.0 MB, within the bound (0.75x; 2.00x the plain bound)" in text
    d = b.to_dict()
    assert d["bound"] == 8 * MiB and d["methods"][0]["over_bound"] == pytest.approx(0.75)
    # without an allocation count the resident set is held against the bound, and an excess is named
    over = _bench(None)
    assert over.over_bound(over.engine) == pytest.approx(9 / 8)
    assert "engine: peak 9.0 MB, OVER the bound (1.12x" in surface_table(over)
