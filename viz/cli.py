"""The ``landscape`` command.

Each subcommand lives in ``viz/commands/<name>.py`` and defines ``register(subparsers)``,
which adds its parser and sets ``func`` to the function that runs it. This module holds what
every command shares, so that every command behaves the same way:

* options are checked where they are parsed (:func:`int_arg`, :func:`float_arg`, the plane
  options), so a bad value stops the run before anything is loaded or written;
* a user mistake (:class:`landscape.errors.LandscapeError`, or a bad option) prints one line
  on stderr and exits with status 2, never a traceback; under torchrun the failing rank says
  which rank it is, and torchrun ends the other ranks;
* a command that writes into ``--out`` holds its lock (:func:`landscape.io.output_lock`), so a
  second run into the same folder fails at once, and never writes over a file it reads
  (:func:`check_outputs`); ``--overwrite`` lets a run replace finished results;
* ``--threads N`` (default: the free cores, :mod:`landscape.threads`) sets torch's and the BLAS
  pools' thread count for the whole command; ``--quiet`` silences every progress report.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator

from landscape.errors import ArgumentError, LandscapeError, check_scalar

COMMANDS = ("info", "train", "surface", "hessian", "embed", "phenotype", "gradcam", "report", "bench",
            "collapse", "cka", "connect", "sharpness")

EPILOG = """examples:
  landscape info trained_models/mlp-ce.safetensors
  landscape surface trained_models/mlp-ce.safetensors --grid 51 --out runs/ce
  landscape phenotype A2 CE --out runs/phenotype
  landscape report reports/default.toml
"""

SEED_MAX = 2 ** 32 - 1  # every seeded library accepts this range (numpy, torch, scikit-learn, openTSNE)
# commands that manage their output folder themselves (a report locks reports/<name>/, not the root)
OWN_LOCK = ("report",)


class Parser(argparse.ArgumentParser):
    """argparse with the toolkit's manners: one-line errors, and ``-1e30`` read as a number, not an option."""

    # argparse's own pattern (``-1``, ``-.5``) misses exponents, so ``--range -1e30 1`` failed
    NEGATIVE = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = self.NEGATIVE

    def error(self, message: str):
        """Print ``<prog>: error: <message>`` as one line and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- option types: checked at parse time, with the wording of landscape.errors.check_scalar ----------
def _number(text: str) -> int | float:
    text = str(text).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}.") from None


def _check(value, name: str, kind, hint: str, **bounds):
    try:
        return check_scalar(value, name, kind, **bounds)
    except ArgumentError as exc:
        message = str(exc)
        message = message[len(name) + 1:] if message.startswith(name + " ") else message
        raise argparse.ArgumentTypeError(message + hint) from None


def int_arg(name: str, *, min: int | None = None, max: int | None = None, hint: str = "") -> Callable[[str], int]:
    """An argparse ``type`` for an integer option in ``[min, max]`` (``1e3`` is read as 1000)."""
    def parse(text: str) -> int:
        return _check(_number(text), name, int, hint, min=min, max=max)

    parse.__name__ = "integer"
    return parse


def float_arg(name: str, *, min: float | None = None, max: float | None = None, include_min: bool = True,
              hint: str = "") -> Callable[[str], float]:
    """An argparse ``type`` for a finite real option in ``[min, max]``."""
    def parse(text: str) -> float:
        value = _check(_number(text), name, float, hint, min=min, max=max, include_min=include_min)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}.{hint}")
        return value

    parse.__name__ = "number"
    return parse


SEED = int_arg("--seed", min=0, max=SEED_MAX, hint=" Seeds are integers from 0 to 2**32 - 1.")


def add_common(parser: argparse.ArgumentParser, out: str | None = None) -> None:
    """The options every subcommand shares: --device, --seed, --out, --threads, --quiet, --trust-code."""
    g = parser.add_argument_group("common options")
    g.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu' or 'cuda[:N]' (default: auto)")
    g.add_argument("--seed", type=SEED, default=0, help="seed of every random choice, 0 to 2**32-1 (default: 0)")
    g.add_argument("--out", default=out, help=f"output folder{f' (default: {out})' if out else ''}")
    if "--threads" not in parser._option_string_actions:  # a benchmark may declare its own
        g.add_argument("--threads", type=int_arg("--threads", min=1), default=None, metavar="N",
                       help="CPU threads of torch and BLAS (default: the free cores, or LANDSCAPE_THREADS / "
                            "OMP_NUM_THREADS when set)")
    g.add_argument("--quiet", action="store_true", help="no progress reports or chatter")
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
    """The options of commands that evaluate a grid over a plane (surface, hessian), each checked when parsed."""
    parser.add_argument("checkpoint", help="checkpoint file (the centre of the plane)")
    parser.add_argument("--arch", help="architecture name or module:Class, for a checkpoint without meta")
    parser.add_argument("--data", default="digits", help="dataset spec (default: digits); see `landscape info`")
    parser.add_argument("--split", default="test", choices=("train", "test"), help="data split (default: test)")
    parser.add_argument("--subset", "--samples", dest="subset", type=int_arg("--subset", min=1), default=None,
                        help="use a seeded random subset of this many samples")
    parser.add_argument("--grid", type=grid_arg, default=grid,
                        help=f"points per axis: N or NXxNY, e.g. 51 or 41x21 (default: {grid})")
    parser.add_argument("--range", nargs="+", type=float_arg("--range"), default=[-1.0, 1.0], metavar="V",
                        help="LO HI for both axes or XLO XHI YLO YHI (default: -1 1)")
    parser.add_argument("--batch-size", type=int_arg("--batch-size", min=1), default=None,
                        help="evaluate the data in batches of this size (default: all at once)")
    parser.add_argument("--chunk-size", type=int_arg("--chunk-size", min=1), default=chunk_size,
                        help=f"grid points per flushed chunk (default: {chunk_size})")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in the same --out")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the finished results (or discard the progress) of an earlier run in --out")
    parser.add_argument("--no-plots", action="store_true", help="write only the result files")


def _grid_parts(text: str) -> list[int]:
    try:
        return [int(v) for v in str(text).lower().split("x")]
    except ValueError:
        return []


def grid_arg(text: str) -> str:
    """The argparse ``type`` of ``--grid``: ``N`` or ``NXxNY`` with positive integers that fit in memory."""
    try:
        parse_grid(text)
    except ArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def parse_grid(text: str, line: bool = False, plots: bool = False) -> tuple[int, int]:
    """``"51"`` -> (51, 51); ``"41x21"`` -> (41, 21); checked before any work.

    ``line`` allows only ``N``; ``plots`` asks for at least 2 points per axis (a figure cannot
    draw one point). A grid whose arrays would not fit in memory is refused with an estimate
    (:func:`landscape.plane.check_grid_size`).
    """
    from landscape.plane import check_grid_size

    parts = _grid_parts(text)
    if len(parts) not in (1, 2) or min(parts) < 1 or (line and len(parts) != 1):
        raise ArgumentError(f"--grid {text!r}: give N{'' if line else ' or NXxNY'} with positive integers, e.g. 51"
                            f"{'' if line else ' or 41x21'}.")
    nx, ny = parts[0], parts[-1]
    if plots and min(nx, ny) < 2:
        raise ArgumentError(f"--grid {text}: one point per axis is the centre alone, and a figure needs at least 2 "
                            "points per axis; use --grid 2 or more, or --no-plots to compute the centre only.")
    check_grid_size(nx * (1 if line else ny), f"--grid {text}")
    return nx, ny


def parse_range(values: list[float], line: bool = False) -> tuple[tuple[float, float], tuple[float, float]]:
    """``--range LO HI`` (both axes) or ``XLO XHI YLO YHI``; finite, each LO below its HI."""
    if len(values) == 2:
        pairs = [(values[0], values[1])] * 2
    elif len(values) == 4 and not line:
        pairs = [(values[0], values[1]), (values[2], values[3])]
    else:
        raise ArgumentError(f"--range takes LO HI{'' if line else ' or XLO XHI YLO YHI'}, got {len(values)} numbers.")
    for lo, hi in pairs:
        if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
            raise ArgumentError(f"--range {lo:g} {hi:g}: give finite numbers with LO < HI, e.g. --range -1 1.")
    return pairs[0], pairs[1]


# -- what a run reads and writes ------------------------------------------------------------------
def data_files(spec: str | None) -> list[Path]:
    """The file or folder a dataset spec reads (``npz:/d/x.npz`` -> that path); none for embedded data."""
    if not spec:
        return []
    _, _, path = str(spec).partition(":")
    return [Path(path)] if path else []


def input_files(args: argparse.Namespace) -> list[Path]:
    """Every file a command's arguments name as input: checkpoints, saved directions, data files."""
    files: list[Path] = []
    for name in ("checkpoint", "checkpoints", "between", "dirs"):
        value = getattr(args, name, None)
        if value:
            files += [Path(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return files + data_files(getattr(args, "data", None))


def check_outputs(out: str | os.PathLike, stems: Iterable[str], inputs: Iterable) -> None:
    """Refuse a run that would write over one of its inputs, before it starts.

    ``stems`` are the names the run writes in ``out`` (``"surface.npz"``, or a figure's stem
    ``"contour"``, which covers ``contour.png``, ``contour.json``, ...), progress files included.

    Raises
    ------
    OutputError
        An input is one of those files.
    """
    from landscape.io import check_not_input

    folder = Path(out).resolve()
    stems = list(stems)
    for item in inputs:
        path = Path(item).resolve()
        if path.parent != folder:
            continue
        if any(path.name == s or path.name.startswith(s + ".") for s in stems):
            check_not_input(Path(out) / path.name, [item], what="output")


def stamp_threads(result):
    """Record the CPU thread count in a result's meta (provenance of runs outside a plane)."""
    from landscape.threads import current_threads

    result.meta.setdefault("threads", current_threads())
    return result


# -- the command line -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``landscape`` argument parser with every command's subparser."""
    parser = Parser(
        prog="landscape",
        description="Loss landscapes, Hessian curvature, feature geometry, loss phenotypes and Grad-CAM "
                    "for PyTorch classifiers.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version="landscape 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"viz.commands.{name}").register(sub)
    return parser


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _rank() -> int:
    """The rank of this process under torchrun (known before any process group exists), 0 otherwise."""
    return _env_int("RANK", 0)


def _threads(args: argparse.Namespace) -> int:
    """``--threads``; on ``--resume`` the count the interrupted run used; else the free cores."""
    from landscape.grid import recorded_threads
    from landscape.threads import default_threads

    if getattr(args, "threads", None):
        return args.threads
    if getattr(args, "resume", False) and getattr(args, "out", None) and Path(args.out).is_dir():
        recorded = recorded_threads(args.out)
        if recorded:
            return recorded
    return default_threads()


def _writes_out(args: argparse.Namespace) -> bool:
    return (getattr(args, "out", None) is not None and args.command not in OWN_LOCK
            and not getattr(args, "list", False) and not getattr(args, "kinds", False))


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """``--quiet``: silence every progress report of the run (landscape.progress reads LANDSCAPE_QUIET)."""
    from landscape.progress import QUIET_ENV

    before = os.environ.get(QUIET_ENV)
    if enabled:
        os.environ[QUIET_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(QUIET_ENV, None)
        else:
            os.environ[QUIET_ENV] = before


def _run(args: argparse.Namespace) -> int:
    from landscape.grid import overwriting
    from landscape.io import output_lock
    from landscape.threads import limit_threads

    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet(getattr(args, "quiet", False)))
        stack.enter_context(overwriting(getattr(args, "overwrite", False)))
        stack.enter_context(limit_threads(_threads(args)))
        if _writes_out(args) and _rank() == 0:  # the ranks of one torchrun share the folder
            stack.enter_context(output_lock(args.out, what=f"landscape {args.command}"))
        return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Run the command in ``argv``; returns the exit code (2 on a user mistake, 130 when interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad option (already printed as one line)
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return _run(args)
    except LandscapeError as exc:
        where = f" (rank {_rank()})" if _env_int("WORLD_SIZE", 1) > 1 else ""
        print(f"landscape {args.command}: error{where}: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"landscape {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
