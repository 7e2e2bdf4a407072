"""The ``landscape`` command.

Each subcommand lives in ``viz/commands/<name>.py`` and defines ``register(subparsers)``,
which adds its parser and sets ``func`` to the function that runs it. User mistakes
(:class:`landscape.errors.LandscapeError`) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from landscape.errors import ArgumentError, LandscapeError

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
    g.add_argument("--trust-code", action="store_true",
                   help="let a checkpoint's meta name a 'module:Class' architecture (importing it runs its code)")


def load_checkpoint(args: argparse.Namespace, path, device: str | None = None):
    """Load a checkpoint the way every subcommand does: ``--device``, ``--arch`` and ``--trust-code`` applied."""
    import landscape as ls

    return ls.load_checkpoint(path, device=device or args.device, arch=getattr(args, "arch", None),
                              trust_code=getattr(args, "trust_code", False))


def data_spec(args: argparse.Namespace, ck) -> str:
    """``--data``, else the dataset the checkpoint's meta names when that needs no file, else digits.

    A checkpoint's meta is a hint, never an instruction to read a file: a spec with a path in it
    (``cifar10:/data``) is used only when the user names it with ``--data``.
    """
    from landscape.data import spec_needs_file

    if getattr(args, "data", None):
        return args.data
    hint = ck.meta.get("dataset")
    if not hint:
        return "digits"
    if spec_needs_file(hint):
        raise ArgumentError(f"checkpoint {ck.name!r} was trained on {hint!r}, which is read from files; a checkpoint "
                            f"never chooses what to read: pass --data {hint} (or another dataset spec) to use it.")
    return hint


def add_plane_options(parser: argparse.ArgumentParser, grid: str, chunk_size: int) -> None:
    """The options of commands that evaluate a grid over a plane (surface, hessian)."""
    parser.add_argument("checkpoint", help="checkpoint file (the centre of the plane)")
    parser.add_argument("--arch", help="architecture name or module:Class, for a checkpoint without meta")
    parser.add_argument("--data", default="digits", help="dataset spec (default: digits); see `landscape info`")
    parser.add_argument("--split", default="test", choices=("train", "test"), help="data split (default: test)")
    parser.add_argument("--subset", "--samples", dest="subset", type=int, default=None,
                        help="use a seeded random subset of this many samples")
    parser.add_argument("--grid", default=grid, help=f"points per axis: N or NXxNY, e.g. 51 or 41x21 (default: {grid})")
    parser.add_argument("--range", nargs="+", type=float, default=[-1.0, 1.0], metavar="V",
                        help="LO HI for both axes or XLO XHI YLO YHI (default: -1 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="evaluate the data in batches of this size")
    parser.add_argument("--chunk-size", type=int, default=chunk_size,
                        help=f"grid points per flushed chunk (default: {chunk_size})")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in the same --out")
    parser.add_argument("--no-plots", action="store_true", help="write only the result files")


def parse_grid(text: str, line: bool = False) -> tuple[int, int]:
    """``"51"`` -> (51, 51); ``"41x21"`` -> (41, 21)."""
    try:
        parts = [int(v) for v in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1 or (line and len(parts) != 1):
        raise ArgumentError(f"--grid {text!r}: give N{'' if line else ' or NXxNY'} with positive integers, e.g. 51"
                            f"{'' if line else ' or 41x21'}.")
    return parts[0], parts[-1]


def parse_range(values: list[float], line: bool = False) -> tuple[tuple[float, float], tuple[float, float]]:
    """``--range LO HI`` (both axes) or ``XLO XHI YLO YHI``."""
    if len(values) == 2:
        return (values[0], values[1]), (values[0], values[1])
    if len(values) == 4 and not line:
        return (values[0], values[1]), (values[2], values[3])
    raise ArgumentError(f"--range takes LO HI{'' if line else ' or XLO XHI YLO YHI'}, got {len(values)} numbers.")


def build_parser() -> argparse.ArgumentParser:
    """The ``landscape`` argument parser with every command's subparser."""
    parser = argparse.ArgumentParser(
        prog="landscape",
        description="Loss landscapes, Hessian curvature, feature geometry, loss phenotypes and Grad-CAM "
                    "for PyTorch classifiers.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version="landscape 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"viz.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command in ``argv``; returns the exit code (2 on a toolkit error, 130 when interrupted)."""
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
