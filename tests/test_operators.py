"""Operator algebra, the GGN and block restrictions against dense float64 references built independently.

References: numpy / torch matrix arithmetic for the algebra; ``torch.autograd.functional.hessian``
for Hessians; ``J^T H_loss J`` with ``J`` from ``torch.func.jacrev`` of the logits (or margin
logits) and ``H_loss`` from ``torch.autograd.functional.hessian`` of the loss in the logits.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import aslinearoperator, eigsh
from torch import nn
from torch.func import functional_call, jacrev

import landscape as ls
from landscape.errors import ArgumentError
from landscape.hessian import extremes
from landscape.hvp import GGNOperator, HessianOperator
from landscape.operators import LinearOperator, ProductOperator, SumOperator, as_operator, identity


# -- the algebra on plain matrices -----------------------------------------------------------------
@pytest.fixture(scope="module")
def mats():
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    A = B + B.T
    C = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(5, generator=gen, dtype=torch.float64)
    return A, B, C, x


def test_algebra_matches_matrix_arithmetic(mats):
    A, B, C, x = mats
    a, b, c = as_operator(A), as_operator(B), as_operator(C)
    eye = torch.eye(5, dtype=torch.float64)
    cases = {
        "a + b": (a + b, A + B), "a - b": (a - b, A - B), "2a": (2 * a, 2 * A), "a*3": (a * 3, 3 * A),
        "a/4": (a / 4, A / 4), "-a": (-a, -A), "a - 2": (a - 2, A - 2 * eye), "2 + a": (2 + a, A + 2 * eye),
        "2 - a": (2 - a, 2 * eye - A), "a @ b": (a @ b, A @ B), "a @ b @ a": (a @ b @ a, A @ B @ A),
        "(a + b) @ (a - 1)": ((a + b) @ (a - 1), (A + B) @ (A - eye)), "b.T": (b.T, B.T),
        "(a @ b).T": ((a @ b).T, B.T @ A.T), "(2b + a).T": ((2 * b + a).T, 2 * B.T + A),
        "a @ c": (a @ c, A @ C), "c.T @ a": (c.T @ a, C.T @ A),
    }
    for name, (op, M) in cases.items():
        assert op.shape == tuple(M.shape), name
        assert torch.allclose(op.dense(), M, atol=1e-12, rtol=0), name
        v = torch.randn(M.shape[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        assert torch.allclose(op @ v, M @ v, atol=1e-12, rtol=0), name
    assert (a + b).dtype == torch.float64 and isinstance(a - b, SumOperator) and isinstance(a @ b, ProductOperator)


def test_symmetry_is_tracked_through_the_algebra(mats):
    A, B, _, _ = mats
    a, b = as_operator(A), as_operator(B)
    assert a.symmetric and not b.symmetric
    shifted = a + 1
    assert (2 * a - 1).symmetric and (a @ a).symmetric and (a @ shifted @ a).symmetric  # palindromes of symmetric
    assert not (a @ shifted).symmetric  # symmetric here (they commute), but not declared so: conservative
    assert not (a @ b).symmetric and not (a + b).symmetric and not (b @ a @ b).symmetric


def test_scipy_bridge_and_shift_for_the_smallest_eigenvalue(mats):
    A, B, C, x = mats
    op = as_operator(A)
    S = op.to_scipy()
    np.testing.assert_allclose(S.matvec(x.numpy()), (A @ x).numpy(), atol=1e-12)
    np.testing.assert_allclose(S.matmat(np.eye(5)), A.numpy(), atol=1e-12)
    nonsym = as_operator(B @ C).to_scipy()  # (5, 3): rmatvec is the transpose
    np.testing.assert_allclose(nonsym.rmatvec(x.numpy()), (C.T @ B.T @ x).numpy(), atol=1e-12)
    ev = np.linalg.eigvalsh(A.numpy())
    # Li et al.'s recipe: the largest-magnitude eigenvalue of A - s I (s above the middle) is lambda_min - s
    s = 0.51 * ev[-1] if abs(ev[-1]) >= abs(ev[0]) else 0.0
    mu = eigsh((op - s).to_scipy(), k=1, which="LM", return_eigenvectors=False)[0]
    assert mu + s == pytest.approx(ev[0], abs=1e-9)


def test_as_operator_wraps_arrays_scipy_and_protocol_objects(mats):
    A, _, _, x = mats
    from_numpy = as_operator(A.numpy())
    from_scipy = as_operator(aslinearoperator(A.numpy()), symmetric=True)

    class Protocol:  # only the four attributes of the protocol
        shape, dtype, device = (5, 5), torch.float64, torch.device("cpu")

        def matmat(self, V):
            return A @ V

    proto = as_operator(Protocol(), symmetric=True)
    for op in (from_numpy, from_scipy, proto):
        assert isinstance(op, LinearOperator)
        assert torch.allclose((op + as_operator(A)).matvec(x), 2 * A @ x, atol=1e-12)
        assert torch.allclose(op.matmat(torch.eye(5, dtype=torch.float64)), A, atol=1e-12)
    assert from_scipy.symmetric and proto.symmetric
    assert torch.equal(identity(3, torch.float64) @ x[:3], x[:3])


def test_algebra_mistakes_name_the_fix(mats):
    A, _, C, _ = mats
    a, c = as_operator(A), as_operator(C)
    with pytest.raises(ArgumentError, match="one shape"):
        a + c
    with pytest.raises(ArgumentError, match="cannot compose"):
        c @ a
    with pytest.raises(ArgumentError, match="scalars only"):
        a * a
    with pytest.raises(ArgumentError, match="non-zero scalar"):
        a / 0
    with pytest.raises(ArgumentError, match=r"expected a vector of shape \(5,\)"):
        a.matvec(torch.ones(4))
    with pytest.raises(ArgumentError, match="limited to 3"):
        a.dense(max_size=3)
    with pytest.raises(ArgumentError, match="cannot use a str"):
        as_operator("H")


# -- curvature operators -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tiny_checkpoint, digits_test):
    """A small trained mlp (626 parameters, batchnorm included) and 60 test digits in float64."""
    ck = ls.load_checkpoint(tiny_checkpoint("mlp", hidden=[8], epochs=2), device="cpu")
    data = digits_test.subset(60, seed=0)
    x, y = ck.prepare(data, dtype=torch.float64)
    return ck, data, x, y


def _state64(model):
    state = {n: p.detach().double() for n, p in model.named_parameters()}
    state.update({n: b.double() if b.is_floating_point() else b for n, b in model.named_buffers()})
    return state


def _flat_fn(model, names, fn):
    """``fn(params) -> tensor`` as a function of the flat vector of ``names`` (float64, eval mode)."""
    base = _state64(model)
    shapes = [base[n].shape for n in names]

    def f(flat):
        parts = torch.split(flat, [s.numel() for s in shapes])
        return fn(dict(base, **{n: q.reshape(s) for n, q, s in zip(names, parts, shapes)}))

    return f, torch.cat([base[n].reshape(-1) for n in names])


def reference_hessian(model, x, y, names):
    def loss(params):
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    f, theta = _flat_fn(model, names, loss)
    return torch.autograd.functional.hessian(f, theta)


def reference_ggn(model, x, y, names, logits_fn=None):
    """``J^T H_loss J`` with the Jacobian of the logits (or of ``logits_fn(params)``) and the CE Hessian in them."""
    logits_fn = logits_fn or (lambda params: functional_call(model, params, (x,)))
    f, theta = _flat_fn(model, names, logits_fn)
    z = f(theta)
    J = jacrev(f)(theta).reshape(z.numel(), -1)
    H_loss = torch.autograd.functional.hessian(lambda zz: nn.functional.cross_entropy(zz.reshape(z.shape), y),
                                               z.detach().reshape(-1))
    return J.T @ H_loss @ J


def test_ggn_equals_dense_jacobian_reference_and_is_psd(tiny):
    ck, data, x, y = tiny
    model = ck.model.eval()
    G = GGNOperator.from_checkpoint(ck, data, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    ref = reference_ggn(model, x, y, names)
    dense = G.dense()
    assert G.folded and G.shape == (626, 626)
    assert torch.allclose(dense, ref, atol=1e-12, rtol=0)
    ev = torch.linalg.eigvalsh(dense)
    assert ev[0] >= -1e-12 * ev[-1]
    # the Hessian of the same objective is indefinite, so a GGN that were the Hessian would fail above
    H = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64).dense()
    assert torch.linalg.eigvalsh(H)[0] < -1e-3
    assert torch.linalg.matrix_norm(H - dense) > 1e-2 * torch.linalg.matrix_norm(dense)


def test_ggn_of_a_margin_loss_is_taken_at_its_margin_logits(tiny_checkpoint, digits_test):
    ck = ls.load_checkpoint(tiny_checkpoint("mlp", loss="am-softmax", hidden=[8], epochs=2), device="cpu")
    data = digits_test.subset(30, seed=1)
    x, y = ck.prepare(data, dtype=torch.float64)
    model, crit = ck.model.eval(), ck.criterion
    names = [n for n, _ in model.named_parameters()]

    def margin_logits(params):
        feats = functional_call(_Features(model), {f"model.{k}": v for k, v in params.items()}, (x,))
        return crit.margin_logits(feats, params["head.weight"], y)

    ref = reference_ggn(model, x, y, names, logits_fn=margin_logits)
    G = GGNOperator.from_checkpoint(ck, data, dtype=torch.float64)
    assert torch.allclose(G.dense(), ref, atol=1e-11, rtol=0)
    assert torch.linalg.eigvalsh(ref)[0] >= -1e-10 * torch.linalg.eigvalsh(ref)[-1]


class _Features(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.features(x)


def test_ggn_equals_hessian_for_a_linear_model():
    """CE of ``W x + b``: the network has no second-order term, so G = H exactly (and the Hessian is PSD)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    x, y = torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 3, (20,))
    ce = ls.losses.get("ce")
    H = HessianOperator(model, ce, x, y, dtype=torch.float64).dense()
    G = GGNOperator(model, ce, x, y, dtype=torch.float64).dense()
    assert torch.allclose(G, H, atol=1e-14, rtol=0) and torch.linalg.matrix_norm(H) > 0.1


def test_block_is_the_sub_matrix_of_the_dense_hessian_and_ggn(tiny):
    ck, data, x, y = tiny
    model = ck.model.eval()
    names = [n for n, _ in model.named_parameters()]
    full = reference_hessian(model, x, y, names)
    sizes = [p.numel() for _, p in model.named_parameters()]
    starts = dict(zip(names, np.cumsum([0] + sizes)))
    block = ["body.2.weight", "head.weight", "body.2.bias"]  # any order: the operator's order is kept
    idx = np.concatenate([np.arange(starts[n], starts[n] + model.get_parameter(n).numel())
                          for n in names if n in block])
    H = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64)
    Hb = H.block(block)
    assert Hb.names == ["body.2.weight", "body.2.bias", "head.weight"] and Hb.size == len(idx)
    assert torch.allclose(Hb.dense(), full[idx][:, idx], atol=1e-12, rtol=0)
    assert torch.allclose(H.block(["head.weight"]).dense(), Hb.block("head.weight").dense(), atol=1e-14, rtol=0)
    G = GGNOperator.from_checkpoint(ck, data, dtype=torch.float64)
    assert torch.allclose(G.block(block).dense(), G.dense()[idx][:, idx], atol=1e-12, rtol=0)
    both = (H + 2 * G).block(block)  # sums and multiples restrict term by term
    assert torch.allclose(both.dense(), (full + 2 * G.dense())[idx][:, idx], atol=1e-11, rtol=0)
    with pytest.raises(ArgumentError, match="Did you mean 'head.weight'"):
        H.block(["head.weigth"])
    with pytest.raises(ArgumentError, match="not one of them"):
        Hb.block(["body.1.weight"])


def test_curvature_operators_compose(tiny):
    ck, data, _, _ = tiny
    H = HessianOperator.from_checkpoint(ck, data, dtype=torch.float64)
    G = GGNOperator.from_checkpoint(ck, data, dtype=torch.float64)
    Hd, Gd = H.dense(), G.dense()
    v = torch.randn(H.size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.allclose((2 * H - 3 * G) @ v, 2 * Hd @ v - 3 * Gd @ v, atol=1e-12)
    assert torch.allclose((H @ G) @ v, Hd @ (Gd @ v), atol=1e-11)
    assert torch.allclose((H @ G).T @ v, Gd @ (Hd @ v), atol=1e-11)
    assert (H @ H).symmetric and not (H @ G).symmetric
    h0 = H.hvps
    (H + 0.5 * H).matvec(v)
    assert H.hvps == h0 + 2 and (H + 0.5 * H).hvps == H.hvps
    # Lanczos of landscape.hessian runs on any operator of the protocol: a shift moves the extremes by c
    c = 5.0
    ev = torch.linalg.eigvalsh(Hd)
    shifted = extremes(H - c, tol=1e-8, max_iter=H.size, min_iter=40)
    assert shifted.lam_min == pytest.approx(float(ev[0]) - c, abs=1e-6)
    assert shifted.lam_max == pytest.approx(float(ev[-1]) - c, abs=1e-6)
    damped = torch.linalg.eigvalsh((G + 0.1).dense())
    assert damped[0] >= 0.1 - 1e-10  # damping a PSD GGN keeps it above the damping


def test_ggn_refuses_feature_losses_it_cannot_split():
    class FeatureLoss(nn.Module):
        needs_features = True

        def forward(self, logits, target, features=None, weight=None):
            return features.pow(2).mean()

    model = ls.models.build("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(8,))
    with pytest.raises(ArgumentError, match="margin_logits"):
        GGNOperator(model, FeatureLoss(), torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))


def test_docstring_examples_run():
    import doctest

    import landscape.hvp
    import landscape.operators

    for module in (landscape.operators, landscape.hvp):
        failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert tried > 0 and failures == 0, module.__name__
