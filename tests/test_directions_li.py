"""random_directions(one_d="li"): Li et al.'s rule for one-dimensional parameters with ignore=None.

Reference: Li et al.'s ``net_plotter.normalize_directions_for_weights``, which, when biases and
batchnorm parameters are not ignored, sets such a parameter's direction to the parameter itself
(``d.copy_(w)``) and filter-normalises the rest.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import landscape as ls
from landscape.directions import normalize_direction
from landscape.errors import ArgumentError


def _li_reference(model: torch.nn.Module, seed: int) -> np.ndarray:
    """Li et al.'s rule written out: one Gaussian draw per parameter, 1-D ones replaced by the weights."""
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for p in model.parameters():
        w = p.detach().cpu().double()
        d = torch.randn(w.shape, generator=gen, dtype=torch.float64)
        parts.append((w.clone() if w.dim() <= 1 else normalize_direction(d, w, "filter")).reshape(-1))
    return torch.cat(parts).numpy()


def test_li_rule_copies_one_dimensional_parameters_and_leaves_the_rest_alone(mlp):
    li = ls.random_directions(mlp.model, n=1, seed=3, ignore=None, one_d="li")
    np.testing.assert_allclose(li.vectors[0], _li_reference(mlp.model, 3).astype(np.float32), rtol=0, atol=0)
    rnd = ls.random_directions(mlp.model, n=1, seed=3, ignore=None)
    for name, p in mlp.model.named_parameters():
        a, b = li.tensors(0)[name], rnd.tensors(0)[name]
        if p.dim() <= 1:
            torch.testing.assert_close(a, p.detach().float())   # Li: the weights themselves
            assert not torch.allclose(a, b)                      # the toolkit's default: a random draw
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0)    # the same draw for every other parameter
    assert li.meta["one_d"] == "li" and rnd.meta["one_d"] == "random"


def test_li_rule_is_irrelevant_when_one_dimensional_parameters_are_ignored(mlp):
    a = ls.random_directions(mlp.model, seed=0, one_d="li")
    b = ls.random_directions(mlp.model, seed=0)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert "one_d" not in a.meta  # the default meta (and every cache key built on it) is unchanged
    with pytest.raises(ArgumentError, match="one_d='lee' is not one of the choices"):
        ls.random_directions(mlp.model, ignore=None, one_d="lee")
