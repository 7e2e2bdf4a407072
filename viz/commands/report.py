"""``landscape report [SPEC.toml]``: render every figure of a report spec into reports/<name>/.

Paths in the spec are relative to the spec file. The whole spec (every option's type and range,
every model, dataset, loss, layer and snapshot folder) is checked before the first computation.
"""
from __future__ import annotations

import argparse

from viz.cli import add_common


def register(sub) -> None:
    p = sub.add_parser("report", help="render a report spec (default: reports/default.toml)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  landscape report\n  landscape report reports/default.toml --only contour\n"
                              "  landscape report --kinds   # list figure kinds and their options\n"
                              "  landscape report reports/cifar-scale.toml --set data=cifar10:DIR models.short=FILE "
                              "models.noshort=FILE")
    p.add_argument("spec", nargs="?", default="reports/default.toml", help="report spec (TOML)")
    p.add_argument("--only", nargs="+", metavar="ID_OR_KIND",
                   help="render only these figures; the index keeps the others rendered before")
    p.add_argument("--kinds", action="store_true", help="list the figure kinds and their options, then exit")
    p.add_argument("--set", nargs="+", action="extend", dest="overrides", metavar="KEY=VALUE",
                   help="override the spec: data=cifar10:DIR, models.NAME=FILE, figure.ID.OPTION=VALUE, seed=1")
    add_common(p, out="reports")
    p.set_defaults(func=run, seed=None)  # the spec's seed unless --seed is given


def run(args) -> int:
    from viz.report import KINDS, build_report

    if args.kinds:
        for k in KINDS.values():
            print(f"{k.name}: {k.help}{'' if k.uses_models else ' (no models)'}")
            for name, option in k.options.items():
                print(f"    {name:14s} {option.describe()}{f'  - {option.help}' if option.help else ''}")
        return 0
    build_report(args.spec, out_root=args.out, device=args.device, quiet=args.quiet, only=args.only, seed=args.seed,
                 trust_code=args.trust_code, overrides=args.overrides)
    return 0
