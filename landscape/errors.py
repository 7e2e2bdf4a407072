"""Exceptions for user mistakes.

Every error a user can cause (a bad file, a bad argument, an unknown name) is a
:class:`LandscapeError`. Its message names the thing that is wrong and says how to fix
it; the CLI prints the message and exits with status 2, without a traceback.
"""
from __future__ import annotations


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
    """A progress file does not belong to the run that tries to resume from it."""


def did_you_mean(name: str, choices) -> str:
    """Return a hint listing ``choices``, with the closest match first when there is one."""
    import difflib

    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{hint} Available: {', '.join(choices)}."
