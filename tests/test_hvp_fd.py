"""Finite-difference Hessian-vector products against their documented error (landscape.hvp module docstring).

References: the exact product by double backward in float64, and the third derivative of the
gradient along ``u = v / ||v||``, ``g'''_u = d^3/dt^3 grad L(w + t u)``, by nested ``torch.func.jacfwd``
over ``torch.func.grad``, which gives the leading truncation term ``(delta^2 / 6) ||v|| g'''_u`` of
central differences.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacfwd

import landscape as ls
from landscape.hvp import HessianOperator


@pytest.fixture(scope="module")
def smooth():
    """A tanh mlp (87 parameters) on 40 samples in float64, and a unit-free direction ``v``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 9), nn.Tanh(), nn.Linear(9, 3)).double()
    x = torch.randn(40, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(1))
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64) * 3.0
    return model, x, y, v


def _third_derivative(model, x, y, theta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``d^3/dt^3 grad L(theta + t u)`` at ``t = 0`` (three forward-mode derivatives over reverse)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]

    def loss(flat):
        parts = torch.split(flat, [s.numel() for s in shapes])
        params = {n: q.reshape(s) for n, q, s in zip(names, parts, shapes)}
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    along = lambda t: grad(loss)(theta + t * u)  # noqa: E731
    return jacfwd(jacfwd(jacfwd(along)))(torch.zeros((), dtype=torch.float64))


@pytest.mark.slow  # torch.func warms up for ~7 s on its first nested jacfwd
def test_truncation_error_is_the_documented_leading_term(smooth):
    """With steps where truncation dominates, fd - Hv is (delta^2 / 6) ||v|| g'''_u to within 2 %."""
    model, x, y, v = smooth
    exact = HessianOperator(model, ls.losses.get("ce"), x, y, dtype=torch.float64, method="autograd")
    hv = exact.matvec(v)
    u = v / v.norm()
    T = _third_derivative(model, x, y, exact.parameters(), u)
    errors = []
    for delta in (2e-2, 1e-2):
        fd = HessianOperator(model, ls.losses.get("ce"), x, y, dtype=torch.float64, method="fd", fd_step=delta)
        assert fd.step(v) * float(v.norm()) == pytest.approx(delta, rel=1e-12)
        err = fd.matvec(v) - hv
        leading = delta ** 2 / 6 * v.norm() * T
        assert torch.linalg.vector_norm(err - leading) <= 0.02 * torch.linalg.vector_norm(err)
        errors.append(float(err.norm()))
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.02)  # quadratic in delta


def test_default_step_meets_the_documented_bound(smooth):
    model, x, y, v = smooth
    for dtype in (torch.float64, torch.float32):
        m = copy.deepcopy(model).to(dtype)
        exact = HessianOperator(model, ls.losses.get("ce"), x, y, dtype=torch.float64, method="autograd")
        fd = HessianOperator(m, ls.losses.get("ce"), x.to(dtype), y, method="fd", dtype=dtype)
        eps = torch.finfo(dtype).eps
        delta = eps ** (1 / 3) * (1 + float(exact.parameters().norm()))
        assert fd.step(v) == pytest.approx(delta / float(v.norm()), rel=1e-6)
        hv = exact.matvec(v)
        err = float((fd.matvec(v).double() - hv).norm())
        T = _third_derivative(model, x, y, exact.parameters(), v / v.norm())
        g = exact.gradient()
        bound = delta ** 2 / 6 * float(T.norm() * v.norm()) + eps * float(g.norm() * v.norm()) / delta
        assert err <= 2 * bound, dtype
        assert err / float(hv.norm()) < (1e-8 if dtype == torch.float64 else 1e-3), dtype


def test_shipped_mlp_with_a_smooth_activation_reaches_the_documented_accuracy(zoo_path, digits_test):
    """The module docstring's numbers: 1e-4..1e-3 in float32 and ~1e-9 in float64 on a smooth shipped network."""
    ck = ls.load_checkpoint(zoo_path("mlp-ce"), device="cpu")
    model = copy.deepcopy(ck.model)
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.Tanh())
    data = digits_test.subset(100, seed=0)
    x64, y = ck.prepare(data, dtype=torch.float64)
    exact = HessianOperator(model, ck.criterion, x64, y, dtype=torch.float64, method="autograd")
    v = torch.randn(exact.size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    hv = exact.matvec(v)
    rel = {}
    for dtype in (torch.float32, torch.float64):
        fd = HessianOperator(model, ck.criterion, x64.to(dtype), y, dtype=dtype, method="fd")
        rel[dtype] = float((fd.matvec(v).double() - hv).norm() / hv.norm())
    assert rel[torch.float32] < 2e-3 and rel[torch.float64] < 1e-8, rel
    assert rel[torch.float64] < 1e-3 * rel[torch.float32]  # the step follows the dtype's epsilon
