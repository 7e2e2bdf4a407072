"""Loss-surface speed: this engine against Li et al.'s per-point loop and loss_landscapes.random_plane.

All three evaluate the same model on the same data over the same nx x ny grid in one run:

* ``engine``: :func:`landscape.surface.surface` (loss and accuracy per point);
* ``loop``: what Li et al.'s reference code does per point: write ``w + a d1 + b d2`` into the
  model's parameters, then iterate a DataLoader at batch 128 (same directions as the engine,
  so the values are compared too);
* ``loss_landscapes``: ``loss_landscapes.random_plane`` (PyPI ``loss-landscapes``, optional
  peer; its own random filter-normalised directions, loss only).

It prints seconds, ratios, effective GFLOP/s (forward FLOPs of the full model per point,
counted by ``torch.utils.flop_counter``) against a measured float32 matmul peak, and the peak
memory growth of the engine run. Benchmarks never assert; run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import copy
import resource
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_CKPT = Path(__file__).resolve().parents[2] / "trained_models" / "mlp-ce.safetensors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``landscape bench surface``."""
    parser.add_argument("--checkpoint", default=str(DEFAULT_CKPT), help="checkpoint (default: the zoo mlp-ce)")
    parser.add_argument("--data", default="digits", help="dataset spec (default: digits, test split)")
    parser.add_argument("--samples", type=int, default=None, help="seeded subset size (default: the whole split)")
    parser.add_argument("--grid", type=int, default=51, help="points per axis (default: 51)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="rounds; each method's best and median round are reported (default: 5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's default); 1 is steadier on a shared machine")
    parser.add_argument("--no-peer", action="store_true", help="skip loss_landscapes")


def matmul_peak(n: int = 512, windows: int = 8, seconds: float = 0.08, device: torch.device | str = "cpu") -> float:
    """Measured float32 matmul rate in GFLOP/s: ``n x n`` by ``n x n`` products, best of ``windows`` short windows.

    The best window is taken because other work on a shared machine only ever slows a window down.
    """
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    torch.mm(a, b, out=out)
    best = 0.0
    for _ in range(windows):
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            torch.mm(a, b, out=out)
            reps += 1
        _sync(device)
        best = max(best, 2.0 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass over ``x`` (matmuls and convolutions, as FlopCounterMode counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return int(counter.get_total_flops())


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def li_loop(model, criterion, x, y, dirs, xs, ys, batch_size: int = 128) -> np.ndarray:
    """Li et al.'s per-point loop: set weights, iterate a DataLoader, accumulate the loss. Returns loss[j, i]."""
    from torch.utils.data import DataLoader, TensorDataset

    from landscape.objective import loss_and_logits

    model = copy.deepcopy(model)  # once, as Li et al. do; the per-point work is below
    params = list(model.parameters())
    base = [p.detach().clone() for p in params]
    d1 = list(dirs.tensors(0, device=x.device).values())
    d2 = list(dirs.tensors(1, device=x.device).values())
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)
    loss = np.empty((len(ys), len(xs)))
    with torch.no_grad():
        for j, b in enumerate(ys):
            for i, a in enumerate(xs):
                for p, w, u, v in zip(params, base, d1, d2):
                    p.data = w + a * u + b * v
                total, n = 0.0, 0
                for xb, yb in loader:
                    batch_loss, _ = loss_and_logits(model, criterion, xb, yb)
                    total += batch_loss.item() * len(yb)
                    n += len(yb)
                loss[j, i] = total / n
    return loss


def _interleaved(methods: dict, repeat: int) -> tuple[dict[str, list[float]], dict]:
    """Times of each method over ``repeat`` rounds, the methods taking turns within a round.

    Taking turns spreads the load of a shared machine over all methods alike.
    """
    times: dict[str, list[float]] = {name: [] for name in methods}
    outputs = {}
    for _ in range(max(1, repeat)):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return times, outputs


def run(args) -> int:
    """Run the three methods and print the table."""
    import landscape as ls
    from landscape.surface import surface

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(int(args.threads))
    ck = ls.load_checkpoint(args.checkpoint, device=args.device, trust_code=getattr(args, "trust_code", False))
    data = ls.load_dataset(args.data, split="test").subset(args.samples, seed=args.seed)
    x, y = ck.prepare(data)
    n = int(args.grid)
    xs = ys = np.linspace(-1, 1, n)
    dirs = ls.random_directions(ck.model, n=2, seed=args.seed)
    points = n * n
    flops = forward_flops(ck.model, x)
    peak = matmul_peak(device=ck.device)

    methods = {
        "engine (landscape.surface)": lambda: surface(ck, data, dirs, x=(-1, 1, n), y=(-1, 1, n), progress=False),
        "loop (Li et al., DataLoader 128)": lambda: li_loop(ck.model, ck.criterion, x, y, dirs, xs, ys),
    }
    if not args.no_peer:
        try:
            import loss_landscapes
            from loss_landscapes.metrics import Loss
        except ImportError:
            print("loss_landscapes is not installed; skipping that peer (pip install loss-landscapes)")
        else:
            metric = Loss(lambda logits, target: ck.criterion(logits, target), x, y)
            # distance 0.5 spans +-||theta|| per axis, the extent of the engine's [-1, 1] x [-1, 1]
            # over filter-normalised directions (whose norm is that of the weights)
            methods["loss_landscapes.random_plane"] = lambda: loss_landscapes.random_plane(
                copy.deepcopy(ck.model), metric, distance=0.5, steps=n, normalization="filter")

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    surface(ck, data, dirs, x=(-1, 1, n), y=(-1, 1, n), progress=False)
    rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    times, outputs = _interleaved(methods, args.repeat)
    surf, loop = outputs["engine (landscape.surface)"], outputs["loop (Li et al., DataLoader 128)"]
    best = {name: min(ts) for name, ts in times.items()}
    median = {name: float(np.median(ts)) for name, ts in times.items()}
    t_engine = best["engine (landscape.surface)"]
    m_engine = median["engine (landscape.surface)"]

    print(f"surface benchmark: {ck.name} on {data.name} ({len(data)} samples), {n} x {n} grid, device "
          f"{ck.device}, {torch.get_num_threads()} threads")
    print(f"forward FLOPs per point {flops / 1e6:.2f} M; measured matmul peak {peak:.1f} GFLOP/s")
    print(f"best of {max(1, args.repeat)} rounds (median in the last column):")
    print(f"{'method':36s} {'seconds':>9s} {'ms/point':>9s} {'GFLOP/s':>9s} {'% peak':>7s} {'engine speed-up':>16s}"
          f" {'(median)':>9s}")
    for name, t in best.items():
        rate = flops * points / t / 1e9
        print(f"{name:36s} {t:9.3f} {t / points * 1e3:9.3f} {rate:9.2f} {100 * rate / peak:6.1f}% {t / t_engine:15.2f}x"
              f" {median[name] / m_engine:8.2f}x")
    print(f"engine vs loop on the same directions: max |loss difference| "
          f"{np.nanmax(np.abs(surf.loss - loop)):.2e} "
          f"(relative {np.nanmax(np.abs(surf.loss - loop) / np.abs(loop)):.1e})")
    print(f"engine peak memory growth during its run: {max(rss_growth_mb, 0.0):.1f} MB "
          f"(no per-point model copies; GFLOP/s counts the full forward even where the first-layer shortcut skips it)")
    return 0
