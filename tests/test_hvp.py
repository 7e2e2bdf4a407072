"""HessianOperator against dense float64 Hessians formed independently with torch.autograd.functional."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

import landscape as ls
from landscape.errors import ArgumentError
from landscape.hvp import HessianError, HessianOperator
from landscape.objective import loss_and_logits


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint, digits_test):
    """A small trained mlp (626 parameters, batchnorm included) and 60 test digits in float64."""
    ck = ls.load_checkpoint(tiny_checkpoint("mlp", hidden=[8], epochs=2), device="cpu")
    data = digits_test.subset(60, seed=0)
    x, y = ck.prepare(data, dtype=torch.float64)
    return ck, data, x, y


def reference_hessian(ck, x, y, names=None, point=None) -> torch.Tensor:
    """Dense Hessian of the training objective w.r.t. ``names``, by autograd.functional (no HVP code)."""
    base = {n: p.detach().double() for n, p in ck.model.named_parameters()}
    base.update({n: t.detach().double() for n, t in (point or {}).items()})
    base.update({n: b.double() if b.is_floating_point() else b for n, b in ck.model.named_buffers()})
    names = names or [n for n, _ in ck.model.named_parameters()]
    shapes = [base[n].shape for n in names]

    def f(flat):
        parts = torch.split(flat, [s.numel() for s in shapes])
        params = dict(base, **{n: q.reshape(s) for n, q, s in zip(names, parts, shapes)})
        return functional_call(ck.model, params, (x,)).log_softmax(1).gather(1, y[:, None]).mean().neg()

    theta = torch.cat([base[n].reshape(-1) for n in names])
    return torch.autograd.functional.hessian(f, theta, vectorize=True)


def test_dense_equals_reference_hessian(tiny):
    ck, data, x, y = tiny
    op = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64)
    H = op.dense()
    ref = reference_hessian(ck, x, y)
    assert op.size == 626 and op.shape == (626, 626)
    assert torch.allclose(H, ref, atol=1e-12, rtol=0)
    # Hessian of a trained net is indefinite: the test would not notice a PSD approximation otherwise
    ev = torch.linalg.eigvalsh(ref)
    assert ev[0] < -1e-3 < 1e-3 < ev[-1]


def test_matvec_matmat_and_scipy_bridge_agree_with_dense(tiny):
    ck, data, x, y = tiny
    op = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64)
    H = reference_hessian(ck, x, y)
    V = torch.randn(op.size, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(op.matvec(V[:, 0]), H @ V[:, 0], atol=1e-12)
    assert torch.allclose(op.matmat(V, block=2), H @ V, atol=1e-12)
    A = op.to_scipy()
    assert A.shape == (626, 626)
    np.testing.assert_allclose(A.matvec(V[:, 1].numpy()), (H @ V[:, 1]).numpy(), atol=1e-12)
    assert op.hvps == 1 + 3 + 1


def test_batches_average_to_the_full_batch_hessian(tiny):
    """60 samples in batches of 7 (last one 4): size-weighted mean equals the full-batch Hessian."""
    ck, data, _, _ = tiny
    v = torch.randn(626, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    full = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64).matvec(v)
    batched = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64, batch_size=7)
    uncached = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64, batch_size=7, cache=False)
    assert len(batched._batches) == 9
    assert torch.allclose(batched.matvec(v), full, atol=1e-13)
    assert torch.allclose(uncached.matvec(v), full, atol=1e-13)


def test_matrices_only_is_the_weight_block_of_the_full_hessian(tiny):
    ck, data, x, y = tiny
    op = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64, params="matrices")
    assert op.names == ["body.1.weight", "head.weight"]
    full = reference_hessian(ck, x, y)
    sizes = {n: p.numel() for n, p in ck.model.named_parameters()}
    starts = np.cumsum([0] + list(sizes.values()))
    idx = np.concatenate([np.arange(starts[i], starts[i] + sizes[n]) for i, n in enumerate(sizes) if n in op.names])
    assert torch.allclose(op.dense(), full[idx][:, idx], atol=1e-12)


def test_operator_at_another_point(tiny):
    ck, data, x, y = tiny
    gen = torch.Generator().manual_seed(3)
    point = {n: p.detach() + 0.3 * torch.randn(p.shape, generator=gen) for n, p in ck.model.named_parameters()}
    before = [p.detach().clone() for p in ck.model.parameters()]
    op = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64).at(point)
    assert torch.allclose(op.dense(), reference_hessian(ck, x, y, point=point), atol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(before, ck.model.parameters()))  # model untouched
    with pytest.raises(ArgumentError, match="does not have"):
        op.at({"nope": torch.zeros(1)})


def test_margin_loss_hvp_matches_finite_differences_of_the_gradient(tiny_checkpoint, digits_test):
    """AM-Softmax needs features and head weight: H v = (g(t + e v) - g(t - e v)) / 2e in float64."""
    ck = ls.load_checkpoint(tiny_checkpoint("mlp", loss="am-softmax", hidden=[8], epochs=2), device="cpu")
    assert ck.criterion.needs_features
    data = digits_test.subset(40, seed=1)
    op = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64)
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    v /= v.norm()
    theta, eps = op.parameters(), 1e-5

    def grad_at(flat):
        return op.at(op.unflatten(flat)).gradient()

    fd = (grad_at(theta + eps * v) - grad_at(theta - eps * v)) / (2 * eps)
    hv = op.matvec(v)
    assert torch.linalg.vector_norm(hv - fd) <= 1e-6 * torch.linalg.vector_norm(hv)
    # and the objective is the margin loss, not plain CE
    x, y = ck.prepare(data)
    with torch.no_grad():
        expected = loss_and_logits(ck.model, ck.criterion, x, y)[0]
        plain_ce = nn.functional.cross_entropy(ck.model(x), y)
    assert op.loss() == pytest.approx(float(expected), rel=1e-5)
    assert op.loss() != pytest.approx(float(plain_ce), rel=1e-3)


class _Unused(nn.Module):
    """A model with a parameter that never reaches the loss."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.spare = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.lin(x)


def test_parameter_without_gradient_has_zero_rows():
    torch.manual_seed(0)
    model = _Unused().double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    op = HessianOperator(model, ls.losses.get("ce"), x, y, dtype=torch.float64)
    assert op.names[0] == "spare"  # a module's own parameters come before its children's
    H = op.dense()
    assert torch.count_nonzero(H[:4]) == 0 and torch.count_nonzero(H[:, :4]) == 0
    assert torch.linalg.matrix_norm(H[4:, 4:]) > 0
    # only the unused parameter selected: the gradient has no graph at all, H = 0 without autograd errors
    op_bias = HessianOperator(model, nn.MSELoss(), x, torch.zeros(5, 2, dtype=torch.float64), params=["spare"])
    assert torch.count_nonzero(op_bias.dense()) == 0


class _NoSecondDerivative(torch.autograd.Function):
    """Stands for an op whose backward is not differentiable (PyTorch raises like this for those)."""

    @staticmethod
    def forward(ctx, g):
        return g.clone()

    @staticmethod
    def backward(ctx, gg):
        raise RuntimeError("derivative for tanh_like_backward is not implemented")


class _Tanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.tanh()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return _NoSecondDerivative.apply(g * (1 - x.tanh() ** 2))


class _NoDoubleBackward(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return _Tanh.apply(self.lin(x))


def test_layer_without_double_backward_raises_a_clear_error():
    model = _NoDoubleBackward()
    op = HessianOperator(model, ls.losses.get("ce"), torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(HessianError, match="no second derivative"):
        op.matvec(torch.ones(op.size))
    assert isinstance(HessianError("x"), ls.errors.LandscapeError)


def test_bad_arguments_name_the_fix(tiny):
    ck, data, _, _ = tiny
    with pytest.raises(ArgumentError, match="'all', 'matrices'"):
        HessianOperator.from_checkpoint(ck, data, params="weights")
    with pytest.raises(ArgumentError, match="Did you mean 'head.weight'"):
        HessianOperator.from_checkpoint(ck, data, params=["head.weigth"])
    with pytest.raises(ArgumentError, match="float32 or torch.float64"):
        HessianOperator.from_checkpoint(ck, data, dtype=torch.float16)
    with pytest.raises(ArgumentError, match="shape \\(626,\\)"):
        HessianOperator.from_checkpoint(ck, data).matvec(torch.ones(3))
    with pytest.raises(ArgumentError, match="limited to 100"):
        HessianOperator.from_checkpoint(ck, data).dense(max_size=100)


def test_float32_operator_is_close_to_float64(tiny):
    ck, data, _, _ = tiny
    v = torch.randn(626, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    hv64 = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64).matvec(v)
    hv32 = HessianOperator.from_checkpoint(ck, data).matvec(v)
    assert hv32.dtype == torch.float32
    assert torch.linalg.vector_norm(hv32.double() - hv64) <= 1e-5 * torch.linalg.vector_norm(hv64)
