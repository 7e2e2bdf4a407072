"""landscape: loss-landscape and feature-geometry analysis of PyTorch classifiers.

Computation only; drawing lives in the ``viz`` package. The public API (see docs/architecture.md)::

    import landscape as ls
    ck = ls.load_checkpoint("trained_models/mlp-ce.safetensors")
    data = ls.load_dataset("digits", split="test")
    dirs = ls.random_directions(ck.model, n=2, seed=0)
    surf = ls.surface(ck, data, dirs, x=(-1, 1, 51), y=(-1, 1, 51))

Names are imported lazily so that ``import landscape`` stays fast.
"""
from __future__ import annotations

import importlib

from . import errors
from ._package import shield
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .data import Dataset, load_dataset
from .results import Result

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "losses": None, "models": None, "testing": None, "grid": None, "objective": None,
    "phenotype": "phenotype", "phenotype_difference": "phenotype", "Phenotype": "phenotype",
    "PhenotypeDifference": "phenotype",
    "random_directions": "directions", "trajectory_directions": "directions", "directions_between": "directions",
    "Directions": "directions",
    "surface": "surface", "interpolate": "surface", "Surface": "surface", "Curve": "surface",
    "hessian_extremes": "hessian", "eigen_ratio_map": "hessian", "hessian_trace": "hessian",
    "spectral_density": "hessian", "EigenMap": "hessian", "HessianOperator": "hessian",
    "extract_features": "features", "Features": "features",
    "tsne": "embedding", "hypersphere": "embedding", "angular_stats": "embedding",
    "Embedding": "embedding", "Sphere": "embedding",
    "gradcam": "gradcam", "CAM": "gradcam",
    "train": "train",
    "AngularStats": "embedding",
    "lanczos_extremes": "hessian", "hessian_eigenvalues": "hessian", "hessian_directions": "hessian",
    "trace": "hessian", "layer_spectra": "hessian", "Extremes": "hessian", "Eigenvalues": "hessian",
    "TraceEstimate": "hessian", "Density": "hessian", "LayerSpectra": "hessian",
    "neural_collapse": "collapse", "NeuralCollapse": "collapse", "collapse_curve": "collapse",
    "CollapseCurve": "collapse", "cka": "cka", "cka_matrix": "cka", "CKAMatrix": "cka",
    "GGNOperator": "hvp", "as_operator": "operators",
    "recompute_statistics": "batchnorm",
    "faithfulness": "faithfulness", "Faithfulness": "faithfulness",
    "barrier": "connectivity", "Barrier": "connectivity", "connect": "connectivity", "LowLossCurve": "connectivity",
    "curve_plane": "connectivity", "connectivity": None,
    "sharpness": "sharpness", "Sharpness": "sharpness", "geometry_card": "card", "compare_cards": "card",
    "GeometryCard": "card", "CardComparison": "card",
}


# ls.surface, ls.phenotype and ls.gradcam are functions that share their module's name
shield(__name__, {name for name, module in _LAZY.items() if module == name})


def __getattr__(name: str):
    if name in _LAZY:
        target = _LAZY[name]
        if target is None:
            return importlib.import_module(f".{name}", __name__)
        module = importlib.import_module(f".{target}", __name__)
        if target == name and not hasattr(module, name):
            return module
        return getattr(module, name)
    raise AttributeError(f"module 'landscape' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["errors", "Checkpoint", "load_checkpoint", "save_checkpoint", "Dataset", "load_dataset", "Result",
           *_LAZY]
