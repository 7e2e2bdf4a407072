"""``landscape bench KIND``: benchmarks against peers in the same run (prints ratios)."""
from __future__ import annotations

import argparse
import importlib

from landscape.benchmarks import KINDS
from viz.cli import add_common


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks against peers (surface, hessian)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  landscape bench surface --grid 51\n"
                              "  landscape bench surface --arch resnet20 --samples 256 --grid 5 --repeat 2\n"
                              "  landscape bench hessian")
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    for kind in KINDS:
        module = importlib.import_module(f"landscape.benchmarks.{kind}")
        q = kinds.add_parser(kind, help=(module.__doc__ or kind).strip().splitlines()[0], description=module.__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(q)
        add_common(q)
        q.set_defaults(func=_runner(kind, module))
    p.set_defaults(func=lambda args: p.print_help())


def _runner(kind: str, module):
    """``args -> exit code``: a benchmark that returns its results is printed here (and written with --json)."""
    def run(args) -> int:
        result = module.run(args)
        if not hasattr(result, "to_dict"):
            return int(result or 0)
        print(PRINTERS[kind](result))
        if getattr(args, "json", None):
            from landscape.io import write_json

            write_json(args.json, result.to_dict())
        return 0

    return run


# -- bench surface --------------------------------------------------------------------------------
def _mb(nbytes) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2 ** 20:.1f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def surface_table(b) -> str:
    """The table of a :class:`landscape.benchmarks.surface.SurfaceBenchmark`."""
    lines = [f"surface benchmark: {b.model}, {b.parameters / 1e6:.2f}M parameters",
             f"data: {b.data}, {b.samples} samples; {b.grid} x {b.grid} grid; device {b.device}, {b.threads} threads",
             f"forward GFLOP per point {b.flops_per_point / 1e9:.3f}; measured float32 matmul peak "
             f"{b.peak_gflops:.1f} GFLOP/s; best of {b.rounds} rounds",
             f"{'method':36s} {'s/point':>9s} {'ms/point':>9s} {'CPU ms/pt':>9s} {'GFLOP/s':>8s} {'% peak':>7s} "
             f"{'peak MB':>8s} {'engine speed-up':>16s} {'on CPU time':>11s} {'51x51 on 10k':>13s}"]
    for m in b.methods:
        rate = b.gflops(m)
        cpu = "n/a" if m.cpu_per_point is None else f"{m.cpu_per_point * 1e3:.2f}"
        cpu_ratio = b.cpu_speedup(m)
        lines.append(f"{m.name:36s} {m.per_point:9.4f} {m.per_point * 1e3:9.2f} {cpu:>9s} {rate:8.2f} "
                     f"{100 * rate / b.peak_gflops:6.1f}% {_mb(m.peak_bytes):>8s} {b.speedup(m):15.2f}x "
                     f"{'n/a' if cpu_ratio is None else f'{cpu_ratio:.2f}x':>11s} "
                     f"{_duration(b.projected_seconds(m)):>13s}")
    diffs = [(m.name, m.max_rel_diff) for m in b.methods if m.max_rel_diff is not None]
    for name, d in diffs:
        lines.append(f"{name} vs the loop on the same directions: max relative loss difference {d:.1e}")
    mem = b.memory
    bound = mem["model"] + mem["data"] + mem["activations"]
    lines.append(f"memory bound: model {_mb(mem['model'])} MB + data {_mb(mem['data'])} MB + one forward piece of "
                 f"{mem['piece']} samples {_mb(mem['activations'])} MB = {_mb(bound)} MB; engine peak "
                 f"{_mb(b.engine.peak_bytes)} MB ({(b.engine.peak_bytes or 0) / max(bound, 1):.2f}x the bound)")
    lines.append("GFLOP/s counts the full forward per point, also where the engine's exact shortcuts skip work; "
                 "the projection scales the best round linearly in points and samples; CPU time is the process's "
                 "(all its threads), steadier than wall time when other work shares the machine.")
    return "\n".join(lines)


PRINTERS = {"surface": surface_table}
