"""The ``landscape`` command.

Each subcommand lives in ``viz/commands/<name>.py`` and defines ``register(subparsers)``,
which adds its parser and sets ``func`` to the function that runs it. User mistakes
(:class:`landscape.errors.LandscapeError`) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from landscape.errors import LandscapeError

COMMANDS = ("info", "train", "surface", "hessian", "embed", "phenotype", "gradcam", "report", "bench")

EPILOG = """examples:
  landscape info trained_models/mlp-ce.safetensors
  landscape surface trained_models/mlp-ce.safetensors --grid 51 --out runs/ce
  landscape phenotype A2 CE --out runs/phenotype
  landscape report reports/default.toml
"""


def add_common(parser: argparse.ArgumentParser, out: str | None = None) -> None:
    """The options every subcommand shares: --device, --seed, --out, --quiet."""
    g = parser.add_argument_group("common options")
    g.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu' or 'cuda[:N]' (default: auto)")
    g.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    g.add_argument("--out", default=out, help=f"output folder{f' (default: {out})' if out else ''}")
    g.add_argument("--quiet", action="store_true", help="no progress bars or chatter")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="landscape",
        description="Loss landscapes, Hessian curvature, feature geometry, loss phenotypes and Grad-CAM "
                    "for PyTorch classifiers.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version="landscape 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"viz.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"viz.commands.{name}":
                continue  # command not available in this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        code = args.func(args)
    except LandscapeError as exc:
        print(f"landscape {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"landscape {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
