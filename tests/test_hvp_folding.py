"""Batchnorm folding (landscape.folding) is an exact rewrite: same outputs, same Hessians, model untouched.

References: the model's own eval-mode forward, and dense float64 Hessians of the unfolded model
by ``torch.autograd.functional.hessian``.
"""
from __future__ import annotations

import pytest
import torch
from torch import fx, nn
from torch.func import functional_call

import landscape as ls
from landscape.folding import affine_batchnorm, eval_mode, fold_batchnorm, folded_conv
from landscape.hvp import GGNOperator, HessianOperator


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters far from the identity, so a wrong fold shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.3)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.3)
    return model.eval()


def _calls(folded, fn) -> int:
    return sum(1 for node in folded.graph.nodes if node.op == "call_function" and node.target is fn)


def _bn_modules(folded) -> int:
    mods = dict(folded.named_modules())
    return sum(1 for node in folded.graph.nodes
               if node.op == "call_module" and isinstance(mods.get(node.target), nn.modules.batchnorm._BatchNorm))


class _AfterActivation(nn.Module):
    """Batchnorm after a ReLU (cannot fold into a layer: becomes its affine form), and a conv with bias."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(3)
        self.bn_after = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 4)

    def forward(self, x):
        h = self.bn_after(torch.relu(self.bn(self.conv(x))))
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize("arch, kwargs, shape, folds", [
    ("mlp", {"hidden": (7, 5)}, (1, 8, 8), 2),
    ("cnn", {"channels": (4, 5, 6)}, (1, 8, 8), 3),
    ("resnet", {"widths": (4, 6), "blocks": (1, 1)}, (3, 8, 8), 6),
])
def test_zoo_models_fold_every_batchnorm_and_compute_the_same_outputs(arch, kwargs, shape, folds):
    torch.manual_seed(0)
    model = _randomise_batchnorm(ls.models.build(arch, input_shape=shape, num_classes=5, **kwargs))
    x = torch.randn(6, *shape)
    for features in (False, True):
        folded = fold_batchnorm(model, features=features, check=x[:2])
        assert folded is not None
        assert _calls(folded, folded_conv) == folds and _bn_modules(folded) == 0
        with torch.no_grad():
            ref = model.features(x) if features else model(x)
            out = folded.features(x) if features else folded(x)
        assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
        assert {n for n, _ in folded.named_parameters()} <= {n for n, _ in model.named_parameters()}
    if features:
        assert folded.head is model.head


def test_batchnorm_after_an_activation_becomes_its_affine_form():
    torch.manual_seed(1)
    model = _randomise_batchnorm(_AfterActivation())
    folded = fold_batchnorm(model)
    assert _calls(folded, folded_conv) == 1 and _calls(folded, affine_batchnorm) == 1 and _bn_modules(folded) == 0
    x = torch.randn(5, 2, 6, 6)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), rtol=1e-5, atol=1e-6)


def test_folded_hessian_and_ggn_equal_the_dense_reference_of_the_unfolded_model():
    torch.manual_seed(2)
    model = _randomise_batchnorm(_AfterActivation()).double()
    x, y = torch.randn(12, 2, 5, 5, dtype=torch.float64), torch.randint(0, 4, (12,))
    ce = ls.losses.get("ce")
    H = HessianOperator(model, ce, x, y, dtype=torch.float64)
    assert H.folded
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    buffers = dict(model.named_buffers())

    def f(flat):
        parts = torch.split(flat, [s.numel() for s in shapes])
        params = {n: q.reshape(s) for n, q, s in zip(names, parts, shapes)}
        return nn.functional.cross_entropy(functional_call(model, {**params, **buffers}, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    ref = torch.autograd.functional.hessian(f, theta)
    assert torch.allclose(H.dense(), ref, atol=1e-12, rtol=0)
    G = GGNOperator(model, ce, x, y, dtype=torch.float64)
    G0 = GGNOperator(model, ce, x, y, dtype=torch.float64, fold=False)
    assert G.folded and not G0.folded
    assert torch.allclose(G.dense(), G0.dense(), atol=1e-13, rtol=0)


class _Untraceable(nn.Module):
    """Data-dependent control flow: fx cannot trace it, so it is used unfolded."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.bn(self.lin(x))
        if h.sum() > 0:
            h = torch.relu(h)
        return self.head(h)


def test_models_fx_cannot_trace_or_without_running_statistics_stay_unfolded():
    torch.manual_seed(3)
    model = _randomise_batchnorm(_Untraceable()).double()
    assert fold_batchnorm(model) is None
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    assert not HessianOperator(model, ls.losses.get("ce"), x, y, dtype=torch.float64).folded
    # batchnorm without running statistics normalises with batch statistics even in eval mode: not affine
    batch_stats = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 2))
    assert fold_batchnorm(batch_stats) is None


def test_a_fold_that_does_not_reproduce_the_model_is_refused(monkeypatch):
    """The check on the first inputs: a wrong rewrite (here: eps ignored) is never used."""
    import landscape.folding as folding

    torch.manual_seed(4)
    model = _randomise_batchnorm(ls.models.build("mlp", input_shape=(1, 8, 8), num_classes=3, hidden=(5,)))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.eps = 0.5
    x = torch.randn(4, 1, 8, 8)
    assert fold_batchnorm(model, check=x) is not None
    wrong = folding._scale_shift

    monkeypatch.setattr(folding, "_scale_shift", lambda mean, var, gamma, beta, eps, bias=None: wrong(
        mean, var, gamma, beta, 0.0, bias))
    assert fold_batchnorm(model, check=x) is None


def test_tracing_and_evaluating_leave_every_module_mode_as_it_was():
    model = ls.models.build("cnn", input_shape=(1, 8, 8), num_classes=3, channels=(2, 3, 4)).train()
    model.body.bn2.eval()
    before = {n: m.training for n, m in model.named_modules()}
    fold_batchnorm(model, check=torch.randn(2, 1, 8, 8))
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert {n: m.training for n, m in model.named_modules()} == before
    assert isinstance(fx.symbolic_trace(model), fx.GraphModule)  # the model itself still traces as before
