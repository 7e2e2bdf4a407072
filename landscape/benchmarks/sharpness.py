"""Time of each sharpness measure on the shipped mlp and a CIFAR-size ResNet-20, in units of one gradient.

No maintained library computes these measures on a torch model (the papers' own code is per-paper
scripts), so the peer is the cost every measure is built from: one loss-and-gradient evaluation of
the same objective on the same examples (``Problem.loss_and_grad``, all of them at once), timed in
the same run. Each measure's row prints its wall time, the process CPU time and that time as a
multiple of the unit, so a change in a measure's algorithm shows as a change in its multiple on any
machine. The ResNet-20 is the zoo's ``resnet20`` freshly initialised (seeded), on seeded uniform
32x32x3 images with batchnorm statistics of those images (timing only; the values mean nothing).
"""
from __future__ import annotations

import argparse
import time

MODELS = ("mlp", "resnet20")
# every measure with its defaults except where a default would make the CPU run long; printed with the table
FAST = {"hessian": {"n_probes": 20, "max_iter": 30}, "epsilon": {}, "adaptive-average": {},
        "adaptive-worst": {}, "pac-bayes": {"repeats": 1}, "flatness-radius": {"n_directions": 4}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``landscape bench sharpness``."""
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, help="models (default: both)")
    parser.add_argument("--measures", nargs="+", default=list(FAST), choices=list(FAST),
                        help="measures to time (default: all)")
    parser.add_argument("--samples", type=int, default=1024, help="examples per measure (default: 1024, "
                        "Andriushchenko et al.'s n)")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds per measure; the best is kept (default: 1)")


def _setup(name: str, samples: int, seed: int, device: str):
    import landscape as ls
    from landscape.benchmarks.hessian import build_model, calibrate_batchnorm, synthetic_data
    from landscape.checkpoint import as_checkpoint

    if name == "mlp":
        from pathlib import Path

        root = Path(__file__).resolve().parents[2] / "trained_models" / "mlp-ce.safetensors"
        return ls.load_checkpoint(root, device=device), ls.load_dataset("digits", split="train")
    model, _ = build_model("resnet20", seed)
    data = synthetic_data(samples, seed)
    ck = as_checkpoint(model.to(ls.device.resolve_device(device)))
    x, _ = ck.prepare(data)
    calibrate_batchnorm(ck.model, x)
    return as_checkpoint(ck.model.eval()), data


def _best(fn, rounds: int) -> tuple[float, float, object]:
    best_wall, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(rounds):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        best_wall, best_cpu = min(best_wall, time.perf_counter() - w), min(best_cpu, time.process_time() - c)
    return best_wall, best_cpu, out


def run(args) -> int:
    """Time every measure on every model; print one table per model."""
    from landscape.errors import check_scalar
    from landscape.sharpness import Problem, sharpness

    samples = check_scalar(args.samples, "--samples", int, min=2)
    rounds = check_scalar(args.rounds, "--rounds", int, min=1)
    for name in args.models:
        ck, data = _setup(name, samples, args.seed, args.device)
        subset = data.subset(samples, seed=args.seed)
        prob = Problem(ck, subset)
        unit_wall, unit_cpu, _ = _best(lambda: prob.loss_and_grad(prob.flat_centre), max(rounds, 3))
        params = sum(p.numel() for p in ck.model.parameters())
        print(f"\n{name}: {params:,} parameters, {len(subset)} examples; unit = one loss and gradient on all of them: "
              f"{unit_wall * 1e3:.1f} ms wall, {unit_cpu * 1e3:.1f} ms CPU")
        print(f"{'measure':<18}{'wall s':>10}{'cpu s':>10}{'x unit (cpu)':>14}  value       options")
        for m in args.measures:
            wall, cpu, res = _best(lambda m=m: sharpness(ck, subset, m, args.seed, subset=None, verbose=False,
                                                         **FAST[m]), rounds)
            print(f"{m:<18}{wall:>10.2f}{cpu:>10.2f}{cpu / unit_cpu:>14.1f}  {res.value:<11.4g} {FAST[m] or ''}")
    return 0
