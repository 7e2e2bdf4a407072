"""viz: rendering of landscape results (matplotlib static, plotly interactive), reports and the CLI.

One function per figure kind, each taking a result object and returning a :class:`Plot`
(the figure plus the exact values it plots). ``viz`` imports ``landscape``; never the reverse.
"""
from __future__ import annotations

import importlib

from landscape._package import shield

from .figure import Plot

# submodules searched, in order, for a public figure function
_MODULES = ("surface", "hessian", "embedding", "phenotype", "gradcam", "report", "geometry")


# viz.embedding(emb) is the figure function of its module viz.embedding
shield(__name__, {"embedding"})


def __getattr__(name: str):
    if name.startswith("_"):
        raise AttributeError(name)
    for mod in _MODULES:
        try:
            module = importlib.import_module(f".{mod}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{mod}":
                continue
            raise
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module 'viz' has no attribute {name!r}")


__all__ = ["Plot"]
