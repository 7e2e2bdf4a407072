"""Result objects: small dataclasses of numpy arrays plus a ``meta`` dict.

Every computation returns a :class:`Result` subclass. ``save(path)`` writes one ``.npz``
file (the arrays, plus the scalar fields and ``meta`` as a JSON string inside it) and
``load(path)`` reads it back as the same class. A figure is only ever drawn from a result,
so the numbers behind every figure can be saved, reloaded and pinned in tests.
"""
from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from .errors import ArgumentError
from .io import atomic_path, to_jsonable

R = TypeVar("R", bound="Result")
_REGISTRY: dict[str, type["Result"]] = {}

# Where the toolkit's own result types live, so that ``Result.load`` finds a type in a fresh process
# before anything imported its module (a second ``landscape report`` over its cache loads results
# first). A name is looked up only in this table, never imported from what a file says.
# tests/test_results.py checks that every Result subclass of the package is listed.
RESULT_MODULES = {
    "Surface": "surface", "Curve": "surface",
    "Directions": "directions",
    "EigenMap": "hessian", "Density": "hessian",
    "Extremes": "hessian", "Eigenvalues": "hessian", "TraceEstimate": "hessian", "LayerSpectra": "hessian",
    "Features": "features",
    "Embedding": "embedding", "Sphere": "embedding", "StatsTable": "embedding", "AngularStats": "embedding",
    "Phenotype": "phenotype", "PhenotypeDifference": "phenotype",
    "CAM": "gradcam",
    "NeuralCollapse": "collapse", "CollapseCurve": "collapse", "CKAMatrix": "cka",
    "Faithfulness": "faithfulness",
    "Barrier": "connectivity", "LowLossCurve": "connectivity",
    "Sharpness": "sharpness", "GeometryCard": "card", "CardComparison": "card",
}


def result_class(name: str) -> type["Result"] | None:
    """The result class called ``name``: registered by a subclass already imported, or one of the toolkit's own."""
    if name not in _REGISTRY and name in RESULT_MODULES:
        import importlib

        importlib.import_module(f"landscape.{RESULT_MODULES[name]}")
    return _REGISTRY.get(name)


@dataclasses.dataclass
class Result:
    """Base class: subclasses are dataclasses whose fields are arrays, scalars, strings or dicts.

    Fields holding ``np.ndarray`` are stored as arrays; every other field (and ``meta``)
    goes to JSON. Subclasses must list ``meta`` last with a default, and are declared with
    ``@dataclasses.dataclass(repr=False)`` so that they keep the short summary below as
    their repr instead of dumping every array.
    """

    kind: ClassVar[str] = "result"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    # -- persistence -------------------------------------------------------------------
    def _split(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, other = {}, {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                arrays[f.name] = value
            elif isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
                for k, v in value.items():
                    arrays[f"{f.name}/{k}"] = v
                other.setdefault("__array_dicts__", []).append(f.name)
            else:
                other[f.name] = value
        return arrays, other

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result to ``path`` (``.npz`` is appended when missing), atomically."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        arrays, other = self._split()
        # NaN and inf kept as Python's JSON tokens: this header is read back only by load, and a diverged
        # value must come back as the float it was, not as None
        header = {"class": type(self).__name__, "fields": to_jsonable(other, nonfinite=True)}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, __header__=np.array(json.dumps(header)), **arrays)
        return path

    @classmethod
    def load(cls: type[R], path: str | os.PathLike) -> R:
        """Read a result written by :meth:`save`; ``Result.load`` returns the stored class."""
        path = Path(path)
        if not path.exists():
            raise ArgumentError(f"result file {path} does not exist; check the path.")
        try:
            with np.load(path, allow_pickle=False) as npz:
                header = json.loads(str(npz["__header__"]))
                arrays = {k: npz[k] for k in npz.files if k != "__header__"}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise ArgumentError(f"{path} is not a result file written by Result.save ({exc}).") from exc
        if not isinstance(header, dict) or not isinstance(header.get("fields"), dict):
            raise ArgumentError(f"{path} is not a result file written by Result.save (no header).")
        target = result_class(str(header.get("class")))
        if target is None:
            raise ArgumentError(f"{path} holds a {header.get('class')!r} result, a type this process does not know; "
                                "import the module that defines it before loading.")
        if cls is not Result and not issubclass(target, cls):
            raise ArgumentError(f"{path} holds a {header['class']}, not a {cls.__name__}; "
                                f"load it with {header['class']}.load.")
        fields = dict(header["fields"])
        for name in fields.pop("__array_dicts__", []):
            prefix = name + "/"
            fields[name] = {k[len(prefix):]: arrays.pop(k) for k in list(arrays) if k.startswith(prefix)}
        fields.update(arrays)
        known = {f.name for f in dataclasses.fields(target)}
        return target(**{k: v for k, v in fields.items() if k in known})

    # -- display -----------------------------------------------------------------------
    def summary(self) -> dict[str, str]:
        """One line per field: array shape and range, or the value itself."""
        rows = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                finite = value[np.isfinite(value)] if value.dtype.kind == "f" else value
                rng = (f" range [{finite.min():.4g}, {finite.max():.4g}]"
                       if finite.size and value.dtype.kind in "fiu" else "")
                rows[f.name] = f"array {value.shape} {value.dtype}{rng}"
            elif f.name == "meta":
                rows[f.name] = ", ".join(f"{k}={v}" for k, v in list(value.items())[:8])
            else:
                rows[f.name] = repr(value)[:120]
        return rows

    def __repr__(self) -> str:
        body = "\n".join(f"  {k}: {v}" for k, v in self.summary().items())
        return f"{type(self).__name__}(\n{body}\n)"

    def _repr_html_(self) -> str:
        import html

        rows = "".join(f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(v)}</td></tr>"
                       for k, v in self.summary().items())
        return f"<table><caption>{type(self).__name__}</caption>{rows}</table>"
