"""``landscape bench KIND``: benchmarks against peers in the same run (prints ratios)."""
from __future__ import annotations

import argparse
import importlib

from landscape.benchmarks import KINDS
from viz.cli import add_common


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
        q.set_defaults(func=module.run)
    p.set_defaults(func=lambda args: p.print_help())
