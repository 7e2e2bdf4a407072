"""``landscape bench KIND``: benchmarks against peers in the same run (prints ratios)."""
from __future__ import annotations

import argparse
import functools
import importlib
import math

from landscape.benchmarks import KINDS
from viz.cli import add_common

# bounds of the options benchmarks share, checked before a benchmark starts (each declares its own options)
POSITIVE_INTS = ("samples", "grid", "repeat", "rounds", "dense_max", "points_per_batch", "batch_size")
POSITIVE_FLOATS = ("range", "tol")


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks against peers (surface, hessian, data)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  landscape bench surface --grid 51\n  landscape bench hessian\n"
                              "  landscape bench data")
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    for kind in KINDS:
        module = importlib.import_module(f"landscape.benchmarks.{kind}")
        q = kinds.add_parser(kind, help=(module.__doc__ or kind).strip().splitlines()[0], description=module.__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(q)
        add_common(q)
        q.set_defaults(func=functools.partial(_checked, module.run))
    p.set_defaults(func=lambda args: p.print_help())


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse a non-positive size, count or tolerance before the benchmark starts (one line, exit 2)."""
    from landscape.errors import ArgumentError, check_scalar

    for name in POSITIVE_INTS + POSITIVE_FLOATS + ("threads",):
        value = getattr(args, name, None)
        if value is None:
            continue
        option = "--" + name.replace("_", "-")
        if name in POSITIVE_FLOATS:
            check_scalar(value, option, float, min=0, include_min=False)
            if not math.isfinite(value):
                raise ArgumentError(f"{option} must be a finite number, got {value!r}.")
        else:
            check_scalar(value, option, int, min=1)


def _checked(run, args: argparse.Namespace) -> int:
    check_arguments(args)
    return run(args)
