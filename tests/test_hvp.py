"""HessianOperator against dense float64 Hessians formed independently with torch.autograd.functional."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

import landscape as ls
from landscape.errors import ArgumentError
from landscape.hvp import GGNOperator, HessianError, HessianOperator
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


def _tanh_reference(model, x, y) -> torch.Tensor:
    """Dense Hessian of CE(tanh(lin(x))) in float64, by autograd.functional on plain torch ops."""
    w, b = model.lin.weight.detach().double(), model.lin.bias.detach().double()

    def f(flat):
        W, B = flat[:6].reshape(2, 3), flat[6:]
        return nn.functional.cross_entropy(torch.tanh(x.double() @ W.T + B), y)

    return torch.autograd.functional.hessian(f, torch.cat([w.reshape(-1), b]))


def test_layer_without_double_backward_falls_back_to_finite_differences_once():
    torch.manual_seed(0)
    model = _NoDoubleBackward()
    x, y = torch.randn(16, 3), torch.tensor([0, 1] * 8)
    op = HessianOperator(model, ls.losses.get("ce"), x, y)
    V = torch.randn(op.size, 2, generator=torch.Generator().manual_seed(1))
    with pytest.warns(RuntimeWarning, match="no second derivative.*finite differences") as record:
        hv = op.matmat(V)
        op.at({"lin.bias": model.lin.bias.detach() + 0.1}).matvec(V[:, 0])  # same family: no second warning
    assert len([w for w in record if "finite differences" in str(w.message)]) == 1
    ref = _tanh_reference(model, x, y) @ V.double()
    assert torch.linalg.matrix_norm(hv.double() - ref) <= 1e-3 * torch.linalg.matrix_norm(ref)
    assert op.hvps == 2


def test_layer_without_double_backward_raises_a_clear_error_without_fallback():
    model = _NoDoubleBackward()
    op = HessianOperator(model, ls.losses.get("ce"), torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), method="autograd")
    with pytest.raises(HessianError, match="no second derivative.*method='fd'"):
        op.matvec(torch.ones(op.size))
    assert isinstance(HessianError("x"), ls.errors.LandscapeError)


class _FailingSecondBackward(torch.autograd.Function):
    """An op whose double backward fails with a chosen error (out of memory, or any other)."""

    error: Exception = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    @staticmethod
    def forward(ctx, g):
        return g.clone()

    @staticmethod
    def backward(ctx, gg):
        raise _FailingSecondBackward.error


class _TanhFailing(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.tanh()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return _FailingSecondBackward.apply(g * (1 - x.tanh() ** 2))


class _Failing(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return _TanhFailing.apply(self.lin(x))


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")])
def test_out_of_memory_is_not_reported_as_a_missing_second_derivative(monkeypatch, error):
    monkeypatch.setattr(_FailingSecondBackward, "error", error)
    op = HessianOperator(_Failing(), ls.losses.get("ce"), torch.randn(8, 3), torch.tensor([0, 1] * 4), batch_size=8)
    with pytest.raises(RuntimeError) as info:
        op.matvec(torch.ones(op.size))
    assert not isinstance(info.value, HessianError) and info.value is error
    notes = " ".join(getattr(info.value, "__notes__", []))
    if hasattr(info.value, "add_note"):
        assert "ran out of memory" in notes and "batch_size=2" in notes


def test_other_errors_speak_for_themselves(monkeypatch):
    error = ValueError("some unrelated failure")
    monkeypatch.setattr(_FailingSecondBackward, "error", error)
    op = HessianOperator(_Failing(), ls.losses.get("ce"), torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="some unrelated failure") as info:
        op.matvec(torch.ones(op.size))
    assert info.value is error


class _ItemGrad(torch.autograd.Function):
    """Identity whose backward reads a Python number from its input: fine column by column, impossible under vmap."""

    @staticmethod
    def forward(ctx, g):
        return g.clone()

    @staticmethod
    def backward(ctx, gg):
        return gg * (1.0 + 0.0 * float(gg.sum().item()))


class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return _ItemGrad.apply(2 * x * g)


class _NoVmap(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return _Square.apply(self.lin(x))


def test_batched_products_fall_back_to_columns_and_say_so_once():
    torch.manual_seed(0)
    model = _NoVmap().double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1, 0])
    op = HessianOperator(model, ls.losses.get("ce"), x, y, dtype=torch.float64)
    eye = torch.eye(op.size, dtype=torch.float64)
    assert op.probe_batch == 1  # the CPU default: one column at a time, even where a caller allows more
    op = HessianOperator(model, ls.losses.get("ce"), x, y, dtype=torch.float64, probe_batch=4)
    with pytest.warns(RuntimeWarning, match="one column at a time") as record:
        H = op.matmat(eye, block=8)
        op.matmat(eye)
    assert len(record) == 1
    w, b = model.lin.weight.detach(), model.lin.bias.detach()

    def f(flat):
        z = x @ flat[:6].reshape(2, 3).T + flat[6:]
        return nn.functional.cross_entropy(z * z, y)

    ref = torch.autograd.functional.hessian(f, torch.cat([w.reshape(-1), b]))
    assert torch.allclose(H, ref, atol=1e-12, rtol=0)
    assert op.hvps == 2 * op.size


def test_callers_model_is_left_in_the_mode_it_came_in(tiny):
    ck, data, x, y = tiny
    model = ck.model
    model.train()
    model.body[1].eval()  # a mixed state must come back exactly as it was
    before = {name: m.training for name, m in model.named_modules()}
    try:
        op = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64)
        v = torch.randn(op.size, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
        hv, loss, grad = op.matvec(v), op.loss(), op.gradient()
        assert {name: m.training for name, m in model.named_modules()} == before
        # and the operator is the eval-mode Hessian (dropout off, running statistics), as before
        model.eval()
        assert torch.allclose(hv, reference_hessian(ck, x, y) @ v, atol=1e-12)
        x32, y32 = ck.prepare(data)
        with torch.no_grad():
            expected = float(loss_and_logits(model, ck.criterion, x32, y32)[0])
        assert torch.isfinite(grad).all() and loss == pytest.approx(expected, rel=1e-5)
    finally:
        model.eval()


def test_bad_arguments_name_the_fix(tiny):
    ck, data, _, _ = tiny
    with pytest.raises(ArgumentError, match="'all', 'matrices'"):
        HessianOperator.from_checkpoint(ck, data, params="weights")
    with pytest.raises(ArgumentError, match="Did you mean 'head.weight'"):
        HessianOperator.from_checkpoint(ck, data, params=["head.weigth"])
    with pytest.raises(ArgumentError, match="float32 or torch.float64"):
        HessianOperator.from_checkpoint(ck, data, dtype=torch.int64)
    with pytest.raises(ArgumentError, match="batch_size must be >= 1"):
        HessianOperator.from_checkpoint(ck, data, batch_size=0)
    with pytest.raises(ArgumentError, match="method='exact' is not one of"):
        HessianOperator.from_checkpoint(ck, data, method="exact")
    with pytest.raises(ArgumentError, match="'head.wieght', which MLP does not have.*Did you mean 'head.weight'"):
        HessianOperator.from_checkpoint(ck, data, point={"head.wieght": torch.zeros(1)})
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


def test_bfloat16_autocast_products_are_float32_and_close(tiny):
    """bfloat16 under autocast: float32 vectors, an error of bfloat16's size (not float32's, not garbage)."""
    ck, data, _, _ = tiny
    v = torch.randn(626, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    hv64 = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64).matvec(v)
    op = HessianOperator.from_checkpoint(ck, data, dtype=torch.bfloat16)
    assert op.dtype == torch.float32 and op.compute_dtype == torch.bfloat16
    hv = op.matvec(v)
    assert hv.dtype == torch.float32
    err = float(torch.linalg.vector_norm(hv.double() - hv64) / torch.linalg.vector_norm(hv64))
    assert 1e-4 < err < 0.1


def test_folded_batchnorm_is_used_and_exact(tiny):
    """The zoo mlp's Linear -> BatchNorm1d pairs are folded; products equal the unfolded ones in float64."""
    ck, data, x, y = tiny
    folded = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64)
    plain = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64, fold=False)
    assert folded.folded and not plain.folded
    V = torch.randn(626, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    assert torch.allclose(folded.matmat(V), plain.matmat(V), atol=1e-13, rtol=0)


def test_batched_columns_equal_single_columns(tiny):
    ck, data, _, _ = tiny
    V = torch.randn(626, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    batched = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64, probe_batch=3)
    single = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64)
    assert torch.allclose(batched.matmat(V), single.matmat(V, block=5), atol=1e-13, rtol=0)
    assert batched.hvps == single.hvps == 5


@pytest.mark.gpu
def test_cuda_products_equal_the_cpu_float64_products(tiny):
    ck, data, _, _ = tiny
    gpu = ls.load_checkpoint(ck.path, device="cuda")
    V = torch.randn(626, 20, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    ref = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64).matmat(V)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        op = HessianOperator.from_checkpoint(gpu, data, dtype=dtype)
        assert op.device.type == "cuda" and op.probe_batch == 16 and op.folded
        hv = op.matmat(V).double().cpu()
        assert torch.linalg.matrix_norm(hv - ref) <= tol * torch.linalg.matrix_norm(ref)
    G = GGNOperator.from_checkpoint(gpu, data, dtype=torch.float64).matmat(V).cpu()
    assert torch.allclose(G, GGNOperator.from_checkpoint(ck, data, dtype=torch.float64).matmat(V), atol=1e-12)


def test_wide_bfloat16_convolutions_run_in_float32_under_the_guard():
    from landscape.hvp import WIDE_KERNEL, FloatWideConvolutions

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 12, 12, generator=gen).to(torch.bfloat16)
    wide = torch.randn(8, 8, WIDE_KERNEL + 1, WIDE_KERNEL + 1, generator=gen).to(torch.bfloat16)
    narrow = torch.randn(8, 8, 3, 3, generator=gen).to(torch.bfloat16)
    with FloatWideConvolutions():
        got_wide = torch.nn.functional.conv2d(x, wide, padding=1)
        got_narrow = torch.nn.functional.conv2d(x, narrow, padding=1)
    assert got_wide.dtype == got_narrow.dtype == torch.bfloat16
    # the wide one is the float32 convolution rounded once; the narrow one is untouched
    assert torch.equal(got_wide, torch.nn.functional.conv2d(x.float(), wide.float(), padding=1).to(torch.bfloat16))
    assert torch.equal(got_narrow, torch.nn.functional.conv2d(x, narrow, padding=1))
    ref = torch.nn.functional.conv2d(x.double(), wide.double(), padding=1)
    assert float((got_wide.double() - ref).norm() / ref.norm()) < 5e-3  # bfloat16 rounding of the output


def test_bfloat16_products_of_a_two_convolution_net_are_close_to_float64():
    # the cross term H[w2, w1] v1 goes through a convolution whose kernel is the 16x16 activation map
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    crit = nn.CrossEntropyLoss()
    exact = HessianOperator(net.double(), crit, x.double(), y, dtype=torch.float64)
    v = torch.randn(exact.size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = exact.matvec(v)
    got = HessianOperator(net.float(), crit, x, y, dtype=torch.bfloat16).matvec(v.float()).double()
    assert float((got - ref).norm() / ref.norm()) < 0.05
