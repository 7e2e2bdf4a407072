"""Shipped evidence: every analysis runs on every new architecture, and its numbers agree with plain evaluation.

Each architecture, randomly initialised (seeded) at its real size, its batchnorm statistics
measured on the batch (default running statistics make deep plain nets output zeros), sees 8
images of 16x16x3: ``surface`` (2x2 plane), ``interpolate`` (3 steps), ``extract_features``,
``tsne``, ``hypersphere`` and ``gradcam``. ``eigen_ratio_map`` (2x2) costs 12 or more
Hessian-vector products per point, whose time grows with depth, so it runs once per layout on a
narrowed instance (fewer blocks or channels through arch_kwargs, the same classes and code
paths): the narrowed ResNet-20 ... 110 and WRN-56-k are one and the same net, and so on (see
:data:`LAYOUTS`). Briefly trained ``resnet20`` and ``vgg11`` (a few SGD steps on synthetic data)
(VGG-11's configuration at 16-32 channels, for time) go through every analysis, the Hessian
map included.

References, independent of the engines under test:

* loss at any plane point: ``torch.func.functional_call`` of the model at
  ``landscape.directions.offset_parameters`` (no shortcut algebra) and ``F.cross_entropy``;
* features and predictions: ``model.features(x)`` and ``argmax model(x)`` called directly;
* the Hessian map's loss at its points: the same functional evaluation (the map uses the HVP
  objective, another engine than the surface's);
* sphere points: unit norm; Grad-CAM maps: in [0, 1], predictions equal the direct ones.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import landscape as ls
from landscape import models
from landscape.checkpoint import as_checkpoint
from landscape.directions import Directions, offset_parameters

from .test_models_zoo import NEW

SHAPE = (3, 16, 16)
N_CLASSES = 4
PLANE = (-0.5, 0.5, 2)
NARROW_VGG = {"config": (16, "M", 16, "M", 32, 32, "M", 32, 32, "M", 32, 32, "M")}  # VGG-11's A, narrow
# one narrowed instance per layout for the Hessian map: (arch, arch_kwargs, the architectures it stands for)
LAYOUTS = [
    ("resnet20", {"blocks": (1, 1, 1)}, "resnet20 resnet32 resnet44 resnet56 resnet110 wrn56_2 wrn56_4"),
    ("resnet20_noshort", {"blocks": (1, 1, 1)}, "resnet20_noshort ... resnet110_noshort"),
    ("resnet18", {"blocks": (1, 1, 1, 1), "widths": (8, 8, 16, 16)}, "resnet18 resnet34"),
    ("resnet50", {"blocks": (1, 1, 1, 1), "widths": (4, 4, 8, 8)}, "resnet50"),
    ("vgg11", NARROW_VGG, "vgg9 vgg11 vgg16 vgg19"),
    ("densenet121", {"blocks": (1, 2, 1, 1), "growth": 8}, "densenet121 densenet_bc100"),
    ("wrn16_4", {"width": 1}, "wrn16_4 wrn28_10"),
    ("resnet9", {"widths": (8, 8, 16, 16)}, "resnet9"),
    ("vit_tiny", {"depth": 2, "dim": 48}, "vit_tiny"),
]
SLOW = {"resnet18", "resnet34", "resnet50", "vgg11", "vgg16", "vgg19", "densenet121", "wrn56_4", "wrn28_10",
        "resnet9", "resnet110", "resnet110_noshort"}


def synthetic(n: int, seed: int) -> ls.Dataset:
    """Four classes of 16x16x3 images: a class prototype plus noise (learnable in a few steps)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(N_CLASSES, *SHAPE, generator=torch.Generator().manual_seed(1234))
    y = torch.arange(n) % N_CLASSES
    x = (0.7 * protos[y] + 0.3 * torch.rand(n, *SHAPE, generator=g)).clamp(0, 1)
    return ls.Dataset(x.numpy(), y.numpy().astype(np.int64), [f"c{i}" for i in range(N_CLASSES)], f"synthetic-{seed}")


def calibrate(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Set every batchnorm's running statistics to those of the batch ``x`` (one cumulative pass)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        model.train()(x)
    for m in bns:
        m.momentum = 0.1
    return model.eval()


def random_checkpoint(arch: str, seed: int = 0, calibrated: bool = True, **kwargs) -> ls.Checkpoint:
    torch.manual_seed(seed)
    model = models.build(arch, input_shape=SHAPE, num_classes=N_CLASSES, **kwargs)
    return as_checkpoint(calibrate(model, torch.as_tensor(synthetic(8, seed=0).x)) if calibrated else model.eval())


def plain_loss(ck: ls.Checkpoint, dirs, coords, x, y) -> float:
    params = offset_parameters(ck.model, dirs, coords)
    with torch.no_grad():
        logits = functional_call(ck.model, {**params, **dict(ck.model.named_buffers())}, (x,))
    return float(F.cross_entropy(logits, y))


# Float32 rounding is amplified by depth without shortcuts: on the random resnet110_noshort the plain forward
# pass in float32 is 10 % away from float64, and channels-last memory order alone moves the loss by 9e-4, so the
# engine (which may reorder memory and fold batchnorm) is compared with it at a tolerance of that size.
ILL_CONDITIONED = {"resnet110_noshort": 2e-2}


def check_plane_and_line(ck: ls.Checkpoint, data: ls.Dataset, rtol: float = 1e-4) -> None:
    x, y = ck.prepare(data)
    dirs = ls.random_directions(ck.model, n=2, seed=0)
    surf = ls.surface(ck, data, dirs, x=PLANE, y=PLANE, verbose=False)
    with torch.no_grad():
        centre = float(F.cross_entropy(ck.model(x), y))
    assert surf.meta["centre"]["loss"] == pytest.approx(centre, rel=rtol, abs=1e-6)
    assert abs(surf.loss[0, 0] - centre) > 1e-3 * centre  # the plane moves the loss: the checks below can fail
    for i in (0, 1):  # two opposite corners of the plane (the other two use the same code)
        assert surf.loss[i, i] == pytest.approx(plain_loss(ck, dirs, (surf.x[i], surf.y[i]), x, y), rel=rtol,
                                                abs=1e-6)
    d1 = Directions(dirs.vectors[:1], dirs.names, dirs.shapes, meta={**dirs.meta, "n": 1})
    line = ls.interpolate(ck, d1, data, steps=3, verbose=False)
    assert line.loss[1] == pytest.approx(centre, rel=rtol, abs=1e-6)
    assert line.loss[0] == pytest.approx(plain_loss(ck, d1, (line.t[0],), x, y), rel=rtol, abs=1e-6)


def check_features_and_cam(ck: ls.Checkpoint, data: ls.Dataset) -> None:
    x, _ = ck.prepare(data)
    with torch.no_grad():
        f_ref, pred = ck.model.features(x), ck.model(x).argmax(1)
    feat = ls.extract_features(ck, data)
    np.testing.assert_allclose(feat.x, f_ref.numpy(), rtol=1e-5, atol=1e-6 * max(1.0, float(f_ref.abs().max())))
    np.testing.assert_array_equal(feat.pred, pred.numpy())
    emb = ls.tsne(feat, seed=0, perplexity=2.0, n_iter=100)
    assert emb.coords.shape == (len(data), 2) and np.isfinite(emb.coords).all()
    sph = ls.hypersphere(feat, dim=3)
    np.testing.assert_allclose(np.linalg.norm(sph.points, axis=1), 1.0, atol=1e-6)
    cams = ls.gradcam(ck, data)
    assert cams.maps.shape == (len(data), *SHAPE[1:])
    assert np.isfinite(cams.maps).all() and cams.maps.min() >= 0 and cams.maps.max() <= 1
    np.testing.assert_array_equal(cams.pred, pred.numpy())


def check_hessian_map(ck: ls.Checkpoint, data: ls.Dataset, rtol: float = 1e-4) -> None:
    x, y = ck.prepare(data)
    dirs = ls.random_directions(ck.model, n=2, seed=0)
    emap = ls.eigen_ratio_map(ck, data, dirs, x=PLANE, y=PLANE, max_iter=12, tol=0.1, verbose=False)
    assert np.isfinite(emap.lam_max).all() and np.isfinite(emap.lam_min).all()
    assert (emap.lam_max >= emap.lam_min).all()
    for j, b in enumerate(emap.y):
        for i, a in enumerate(emap.x):
            assert emap.loss[j, i] == pytest.approx(plain_loss(ck, dirs, (a, b), x, y), rel=rtol, abs=1e-6)


PARAMS = [pytest.param(a, marks=pytest.mark.slow) if a in SLOW else a for a in NEW]


@pytest.mark.parametrize("arch", PARAMS)
def test_every_analysis_on_a_random_instance(arch):
    data = synthetic(8, seed=0)
    ck = random_checkpoint(arch)
    check_plane_and_line(ck, data, ILL_CONDITIONED.get(arch, 1e-4))
    check_features_and_cam(ck, data)


def test_he_option_a_shortcuts():
    """The parameter-free shortcut (subsample + zero channels) goes through the same analyses."""
    data = synthetic(8, seed=0)
    ck = random_checkpoint("resnet20", shortcut="padding")
    check_plane_and_line(ck, data)
    check_features_and_cam(ck, data)


def test_every_architecture_has_a_hessian_layout():
    covered = {a for _, _, names in LAYOUTS for a in names.split() if a != "..."}
    covered |= {a for a in NEW if a.endswith("_noshort")}
    assert covered == set(NEW)


@pytest.mark.parametrize("arch,kwargs", [pytest.param(a, k, marks=[pytest.mark.slow] if i > 1 else [])
                                         for i, (a, k, _) in enumerate(LAYOUTS)], ids=[a for a, _, _ in LAYOUTS])
def test_hessian_map_on_each_layout(arch, kwargs):
    check_hessian_map(random_checkpoint(arch, **kwargs), synthetic(8, seed=0), ILL_CONDITIONED.get(arch, 1e-4))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet20", "vgg11"])
def test_every_analysis_on_a_briefly_trained_instance(arch):
    """A few SGD steps on synthetic data lower the loss; every analysis then runs and agrees with plain evaluation."""
    from landscape.train import Recipe, fit

    train, test = synthetic(64, seed=0), synthetic(16, seed=1)
    # 32 steps: enough for the batchnorm running statistics (momentum 0.1) to follow the weights
    kwargs = NARROW_VGG if arch == "vgg11" else {}  # VGG-11's configuration A at 16-32 channels: 9.5M -> 40k
    recipe = Recipe(f"{arch}-synthetic", arch, epochs=8, lr=0.02, batch_size=16, arch_kwargs=kwargs)
    before = random_checkpoint(arch, calibrated=False, **kwargs)  # fit seeds the same initialisation
    model, meta = fit(recipe, train=train, test=test)
    ck = as_checkpoint(model)
    for c in (ck, before):
        c.meta.update(normalization=meta["normalization"], input_shape=meta["input_shape"])
    loss, acc = ck.evaluate(train)
    assert loss < 0.5 * before.evaluate(train)[0] and loss < 0.5 * np.log(N_CLASSES) and acc > 0.9
    check_plane_and_line(ck, test)
    check_features_and_cam(ck, test)
    check_hessian_map(ck, test)


@pytest.mark.gpu
@pytest.mark.parametrize("arch", NEW)
def test_cuda_agrees_with_cpu(arch):
    """On CUDA (points batched with vmap) the plane gives the CPU's numbers, and every analysis runs."""
    import copy

    data = synthetic(8, seed=0)
    cpu = random_checkpoint(arch)
    gpu = as_checkpoint(copy.deepcopy(cpu.model).cuda())
    dirs = ls.random_directions(cpu.model, n=2, seed=0)
    a = ls.surface(cpu, data, dirs, x=PLANE, y=PLANE, verbose=False)
    b = ls.surface(gpu, data, dirs, x=PLANE, y=PLANE, verbose=False)
    np.testing.assert_allclose(b.loss, a.loss, rtol=1e-2, atol=1e-4)  # cuDNN may use TF32 convolutions
    check_features_and_cam(gpu, data)
    check_hessian_map(as_checkpoint(random_checkpoint(arch, **dict(LAYOUTS_BY_ARCH.get(arch, {}))).model.cuda()),
                      data)


LAYOUTS_BY_ARCH = {a: k for a, k, _ in LAYOUTS}
