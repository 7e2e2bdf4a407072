"""viz: rendering of landscape results (matplotlib static, plotly interactive), reports and the CLI.

One function per figure kind, each taking a result object and returning a :class:`Plot`
(the figure plus the exact values it plots). ``viz`` imports ``landscape``; never the reverse.
Names are imported lazily (``viz.contour`` imports :mod:`viz.surface` on first use), so that
``import viz`` stays fast.
"""
from __future__ import annotations

import importlib

from landscape._package import shield

from .figure import Plot

# public name -> submodule that defines it (add a new figure function here; tests/test_viz_surface.py
# checks that every name of a submodule's __all__ is listed and that each entry resolves)
_NAMES = {
    **dict.fromkeys(("contour", "contourf", "surface3d", "curve", "curves", "compare", "trajectory", "to_vtk",
                     "draw_contour", "levels_for", "masked", "caption", "axis_labels"), "surface"),
    **dict.fromkeys(("eigen_ratio", "spectral_density", "draw_map", "hessian_plane", "layer_spectra", "layer_table",
                    "shared_limits"), "hessian"),
    **dict.fromkeys(("embedding", "embedding_grid", "hypersphere", "hypersphere_grid", "stats_table",
                     "class_colors"), "embedding"),
    **dict.fromkeys(("phenotype_curves", "phenotype_surface", "phenotype_difference"), "phenotype"),
    **dict.fromkeys(("gradcam_grid", "gradcam_compare"), "gradcam"),
    **dict.fromkeys(("collapse_curves", "collapse_table", "cka_heatmap"), "geometry"),
    **dict.fromkeys(("faithfulness_plot", "faithfulness_table", "faithfulness_rows"), "gradcam"),
    **dict.fromkeys(("build_report", "load_spec", "KINDS"), "report"),
}

# viz.embedding(emb) is the figure function of its module viz.embedding
shield(__name__, {"embedding"})


def __getattr__(name: str):
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'viz' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__():
    return sorted(set(globals()) | set(_NAMES))


__all__ = ["Plot", *_NAMES]
