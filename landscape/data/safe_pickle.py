"""Reading pickled dataset files (the python version of CIFAR) without executing anything.

A pickle is a program: every class or function it names is imported and called while it
loads, so ``pickle.load`` on a downloaded file can run any code. :class:`RestrictedUnpickler`
admits only what CIFAR batch files need, the builtin containers, ``bytes``, ``str`` and
``int`` and numpy's array reconstruction, and refuses every other name before it is imported.
Python's standard ``pickle`` has no such mode, so this is hand-written, following the
"Restricting Globals" recipe of the :mod:`pickle` documentation.
"""
from __future__ import annotations

import builtins
import codecs
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import DatasetError

_BUILTINS = frozenset({"dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int"})
# numpy's array reconstruction: _reconstruct (protocols 0-4) and _frombuffer (protocol 5), under numpy 1.x and 2.x names
_NUMPY = {(f"numpy.{core}.{module}", name): module for core in ("core", "_core")
          for module, name in (("multiarray", "_reconstruct"), ("numeric", "_frombuffer"))}


def _numpy_function(module: str, name: str):
    """The numpy function ``module.name`` (from ``numpy._core`` in numpy 2, ``numpy.core`` before)."""
    try:
        from numpy import _core as core  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy import core
    return getattr(getattr(core, module), name)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3 pickles (protocol < 3) call to rebuild ``bytes``: ``_codecs.encode(text, "latin1")`` only."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with {type(text).__name__} and encoding {encoding!r}")
    return text.encode("latin1")


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle names something outside the allowed set."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the names a CIFAR batch file uses; anything else is refused.

    Allowed: ``builtins`` (or Python 2's ``__builtin__``) ``dict, list, tuple, set, frozenset,
    bytes, bytearray, str, int``; ``numpy.core.multiarray._reconstruct`` and
    ``numpy._core.multiarray._reconstruct``; ``numpy.ndarray``; ``numpy.dtype``;
    ``numpy[._]core.numeric._frombuffer`` (how numpy pickles arrays under protocol 5); and
    ``_codecs.encode`` restricted to latin-1 (how Python 3 protocol-2 pickles store bytes).
    Names are mapped to objects here, never imported, so a refused module is never loaded.
    """

    def find_class(self, module: str, name: str) -> Any:
        """The object for ``module.name`` if it is in the allowed set; else :class:`RefusedGlobal`."""
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return getattr(builtins, name)
        if (module, name) in _NUMPY:
            return _numpy_function(_NUMPY[module, name], name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        raise RefusedGlobal(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        """Refused: dataset files have no persistent ids."""
        raise RefusedGlobal(f"persistent id {pid!r}")


def load(source: Path | BinaryIO, what: str) -> Any:
    """Unpickle one file with :class:`RestrictedUnpickler`.

    Python 2 pickles (the CIFAR files as distributed) are read with ``encoding="bytes"``, so
    their ``str`` come back as ``bytes`` (dict keys such as ``b"data"``); Python 3 pickles load
    unchanged. Use :func:`text_keys` to get one form.

    Parameters
    ----------
    source : path or binary file
    what : str
        What the file should be, for messages ("CIFAR-10 batch").

    Raises
    ------
    DatasetError
        The file names anything outside the allowed set (nothing is run), or is truncated or
        not a pickle.
    """
    label = str(getattr(source, "name", source))
    try:
        if isinstance(source, (str, Path)):
            with open(source, "rb") as fh:
                return RestrictedUnpickler(fh, encoding="bytes").load()
        return RestrictedUnpickler(source, encoding="bytes").load()
    except RefusedGlobal as exc:
        raise DatasetError(f"{label}: refused to unpickle: the file calls {exc}, and a {what} holds only "
                           "containers, strings, numbers and numpy arrays; nothing was run. Get the file from "
                           "its original source.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            struct.error, OverflowError, MemoryError, UnicodeDecodeError, RecursionError) as exc:
        raise DatasetError(f"{label}: not a readable {what} ({type(exc).__name__}: {exc}); "
                           "the file is truncated or corrupted.") from None


def text_keys(obj: Any) -> Any:
    """A dict with ``bytes`` keys (a Python 2 pickle read with ``encoding="bytes"``) with ``str`` keys."""
    if isinstance(obj, dict):
        return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    return obj


def text(value: Any) -> str:
    """``bytes`` (Python 2 ``str``) or ``str`` as ``str``."""
    return value.decode("utf-8", errors="replace") if isinstance(value, (bytes, bytearray)) else str(value)
