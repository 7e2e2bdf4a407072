"""Exceptions for user mistakes.

Every error a user can cause (a bad file, a bad argument, an unknown name) is a
:class:`LandscapeError`. Its message names the thing that is wrong and says how to fix
it; the CLI prints the message and exits with status 2, without a traceback.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable


class LandscapeError(Exception):
    """Base class of every user-facing error of the toolkit."""


class CheckpointError(LandscapeError):
    """A checkpoint file is missing, unreadable, unsafe or does not fit its architecture."""


class ArchitectureError(LandscapeError):
    """An architecture name is unknown or its arguments are wrong."""


class DatasetError(LandscapeError):
    """A dataset name, path or file is wrong."""


class LossError(LandscapeError):
    """A loss name, spec string or loss parameter is wrong."""


class ArgumentError(LandscapeError, ValueError):
    """A function argument is out of range or of the wrong kind."""


class SpecError(LandscapeError):
    """A report spec (TOML) names an unknown model, figure kind or option."""


class ResumeError(LandscapeError):
    """A progress file does not belong to the run that tries to resume from it, or is corrupt."""


class OutputError(LandscapeError):
    """An output path is unsafe: outside its folder, an input or finished result, or in use by another run."""


class HessianError(LandscapeError):
    """The Hessian of this model and loss cannot be computed (an operation without second derivatives)."""


def did_you_mean(name: str, choices) -> str:
    """Return a hint listing ``choices``, with the closest match first when there is one."""
    import difflib

    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{hint} Available: {', '.join(choices)}."


def check_scalar(value: Any, name: str, kind: type | tuple[type, ...] = int, *, min: float | None = None,
                 max: float | None = None, include_min: bool = True, include_max: bool = True,
                 allow_none: bool = False) -> Any:
    """Check one scalar argument and return it converted to ``kind``; the one check every module uses.

    In the spirit of :func:`sklearn.utils.check_scalar`: the message names the argument, what
    it must be and what it got, so a user mistake is one line that says how to fix it.

    Parameters
    ----------
    value : object
        The argument as given.
    name : str
        Its name as the user wrote it (``"batch_size"``, ``"--grid"``).
    kind : type or tuple of types
        ``int`` (any integral number, booleans refused; an integral float such as ``1e3`` is
        accepted), ``float`` (any real number) or a tuple of these.
    min, max : float, optional
        Bounds; ``include_min``/``include_max`` say whether they are allowed.
    allow_none : bool
        Accept ``None`` (an optional argument left out) and return it.

    Returns
    -------
    int or float
        The value converted to the first matching entry of ``kind``.

    Raises
    ------
    ArgumentError
        Wrong type, NaN, or out of range.
    """
    if value is None and allow_none:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = " or ".join("an integer" if k is int else "a number" for k in kinds)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentError(f"{name} must be {names}, got {value!r}.")
    if isinstance(value, float) and math.isnan(value):
        raise ArgumentError(f"{name} must be {names}, got NaN.")
    out = None
    for k in kinds:
        if k is int:
            if isinstance(value, numbers.Integral):
                out = int(value)
            elif float(value).is_integer() and abs(value) < 2 ** 63:
                out = int(value)
        else:
            out = float(value)
        if out is not None:
            break
    if out is None:
        raise ArgumentError(f"{name} must be {names}, got {value!r}.")
    low_bad = min is not None and (out < min or (not include_min and out == min))
    high_bad = max is not None and (out > max or (not include_max and out == max))
    if low_bad or high_bad:
        lo = "" if min is None else f"{'>=' if include_min else '>'} {min:g}"
        hi = "" if max is None else f"{'<=' if include_max else '<'} {max:g}"
        raise ArgumentError(f"{name} must be {' and '.join(p for p in (lo, hi) if p)}, got {value!r}.")
    return out


def check_choice(value: Any, name: str, choices: Iterable[str]) -> str:
    """Check that ``value`` is one of ``choices`` and return it; the message suggests the closest one.

    Raises
    ------
    ArgumentError
        ``value`` is not one of ``choices``.
    """
    choices = list(choices)
    if isinstance(value, str) and value in choices:
        return value
    hint = did_you_mean(value, choices) if isinstance(value, str) else f" Available: {', '.join(sorted(choices))}."
    raise ArgumentError(f"{name}={value!r} is not one of the choices.{hint}")
