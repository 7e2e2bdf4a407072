"""``landscape train``: rebuild the shipped checkpoints of trained_models/ deterministically.

Trains the zoo entries one after another (all of them, or those named by ``--only``) and merges
each into ``--out``'s manifest as soon as it is written, so an interrupted rebuild keeps what
it finished. Progress: a bar on a terminal, a plain line with done/total and ETA elsewhere.
"""
from __future__ import annotations

import argparse

from viz.cli import add_common


def register(sub) -> None:
    p = sub.add_parser("train", help="rebuild the shipped checkpoints (trained_models/)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  landscape train --out trained_models\n"
                              "  landscape train --only mlp-ce cnn-ce --out /tmp/zoo\n  landscape train --list")
    p.add_argument("--only", nargs="+", metavar="NAME", help="train only these zoo entries")
    p.add_argument("--list", action="store_true", help="list the zoo entries and exit")
    add_common(p, out="trained_models")
    p.set_defaults(func=run)


def run(args) -> int:
    from landscape.errors import check_choice
    from landscape.progress import bar
    from landscape.train import ZOO, build_zoo

    if args.list:
        for r in ZOO:
            kw = ", ".join(f"{k}={v}" for k, v in r.loss_kwargs.items())
            print(f"{r.name:24s} arch={r.arch:7s} loss={r.loss}{f' ({kw})' if kw else ''} epochs={r.epochs}")
        return 0
    names = [r.name for r in ZOO]
    chosen = [check_choice(name, "--only", names) for name in dict.fromkeys(args.only)] if args.only else names
    with bar(len(chosen), "train", None if not args.quiet else False, unit="model") as progress:
        for name in chosen:  # one at a time: each finished model reaches the manifest at once
            build_zoo(args.out, only=[name], quiet=args.quiet)
            progress.update()
    return 0
