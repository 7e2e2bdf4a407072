"""Directions: filter normalisation against numpy references, biasbn zeros, seeds, lines/planes, trajectory PCA."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import landscape as ls
from landscape.directions import Directions, offset_parameters
from landscape.errors import ArgumentError


def _split(dirs: Directions, i: int) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in dirs.tensors(i).items()}


def _weights(model) -> dict[str, np.ndarray]:
    return {k: v.detach().double().numpy() for k, v in model.named_parameters()}


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_filter_norms_match_the_weights_filter_by_filter(which, request):
    model = request.getfixturevalue(which).model
    dirs = ls.random_directions(model, n=2, seed=3)
    w = _weights(model)
    for i in range(2):
        for name, d in _split(dirs, i).items():
            if d.ndim <= 1:
                continue
            dn = np.linalg.norm(d.reshape(len(d), -1), axis=1)
            wn = np.linalg.norm(w[name].reshape(len(d), -1), axis=1)
            np.testing.assert_allclose(dn, wn, rtol=1e-5, err_msg=name)


def test_filter_normalisation_equals_a_numpy_rescaling_of_the_raw_draw(cnn):
    raw = ls.random_directions(cnn.model, n=1, seed=5, norm="none", ignore=None)
    filt = ls.random_directions(cnn.model, n=1, seed=5, norm="filter")
    w = _weights(cnn.model)
    g, d = _split(raw, 0), _split(filt, 0)
    for name in w:
        if w[name].ndim <= 1:
            assert not d[name].any(), f"{name} should be zero under biasbn"
            continue
        flat_g = g[name].reshape(len(g[name]), -1).astype(np.float64)
        scale = np.linalg.norm(w[name].reshape(len(flat_g), -1), axis=1) / np.linalg.norm(flat_g, axis=1)
        expect = (flat_g * scale[:, None]).reshape(g[name].shape)
        np.testing.assert_allclose(d[name], expect, rtol=2e-5, atol=1e-7)


def test_layer_and_weight_normalisations(mlp):
    raw = _split(ls.random_directions(mlp.model, n=1, seed=1, norm="none"), 0)
    layer = _split(ls.random_directions(mlp.model, n=1, seed=1, norm="layer"), 0)
    weight = _split(ls.random_directions(mlp.model, n=1, seed=1, norm="weight"), 0)
    w = _weights(mlp.model)
    name = "body.5.weight"
    assert np.linalg.norm(layer[name]) == pytest.approx(np.linalg.norm(w[name]), rel=1e-5)
    np.testing.assert_allclose(weight[name], raw[name] * w[name], rtol=1e-5, atol=1e-8)


def test_biasbn_zeroes_one_dimensional_parameters_and_none_keeps_them(mlp):
    zeroed = ls.random_directions(mlp.model, n=2, seed=0)
    kept = ls.random_directions(mlp.model, n=2, seed=0, ignore=None)
    w = _weights(mlp.model)
    for i in range(2):
        z, k = _split(zeroed, i), _split(kept, i)
        for name in w:
            if w[name].ndim == 1:
                assert not z[name].any(), name
                assert np.linalg.norm(k[name]) == pytest.approx(np.linalg.norm(w[name]), rel=1e-5)
            else:
                assert z[name].any()
    # batchnorm running statistics are buffers: never part of a direction
    assert not any("running" in n for n in zeroed.names)


def test_same_seed_same_directions_other_seed_others(mlp):
    a = ls.random_directions(mlp.model, n=2, seed=7)
    b = ls.random_directions(mlp, n=2, seed=7)  # a Checkpoint works too
    c = ls.random_directions(mlp.model, n=2, seed=8)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert not np.allclose(a.vectors, c.vectors)
    assert a.vectors.shape == (2, sum(p.numel() for p in mlp.model.parameters()))
    assert a.meta == {"kind": "random", "seed": 7, "norm": "filter", "ignore": "biasbn", "n": 2}


def test_directions_roundtrip_through_save(tmp_path, mlp):
    dirs = ls.random_directions(mlp.model, n=2, seed=0)
    back = Directions.load(dirs.save(tmp_path / "dirs"))
    np.testing.assert_array_equal(back.vectors, dirs.vectors)
    assert back.names == dirs.names and back.shapes == dirs.shapes and back.meta == dirs.meta
    t = back.tensors(1)
    assert list(t) == [n for n, _ in mlp.model.named_parameters()]
    assert all(tuple(t[n].shape) == tuple(p.shape) for n, p in mlp.model.named_parameters())


def test_offset_parameters_is_theta_plus_combination(mlp):
    dirs = ls.random_directions(mlp.model, n=2, seed=2)
    params = offset_parameters(mlp.model, dirs, [0.25, -1.5])
    w = _weights(mlp.model)
    d0, d1 = _split(dirs, 0), _split(dirs, 1)
    for name, p in params.items():
        assert p.dtype == torch.float32 and p.device.type == "cpu"
        np.testing.assert_allclose(p.numpy(), w[name] + 0.25 * d0[name] - 1.5 * d1[name], rtol=1e-5, atol=1e-6)
    assert mlp.model.body[1].weight.data_ptr() != params["body.1.weight"].data_ptr()


def test_offset_parameters_refuses_other_architectures(mlp, cnn):
    dirs = ls.random_directions(cnn.model, n=2, seed=0)
    with pytest.raises(ArgumentError, match="another architecture"):
        offset_parameters(mlp.model, dirs, [0.0, 0.0])
    with pytest.raises(ArgumentError, match="2 directions"):
        offset_parameters(cnn.model, dirs, [0.0])


def test_unknown_norm_suggests_the_closest(mlp):
    with pytest.raises(ArgumentError, match="Did you mean 'filter'"):
        ls.random_directions(mlp.model, norm="filtre")


def test_plane_through_three_checkpoints_hits_them(zoo_path, mlp):
    snaps = zoo_path("mlp-ce").parent / "snapshots" / "mlp-ce"
    a, b = snaps / "epoch010.safetensors", snaps / "epoch020.safetensors"
    dirs = ls.directions_between(mlp, a, b)
    assert dirs.n == 2 and dirs.meta["kind"] == "between"
    for coords, path in (([1.0, 0.0], a), ([0.0, 1.0], b)):
        target = _weights(ls.load_checkpoint(path, device="cpu").model)
        for name, p in offset_parameters(mlp.model, dirs, coords).items():
            np.testing.assert_allclose(p.numpy(), target[name], rtol=1e-5, atol=1e-6)


def test_trajectory_pca_matches_an_svd_reference(zoo_path):
    snaps = sorted((zoo_path("mlp-ce").parent / "snapshots" / "mlp-ce").glob("epoch*.safetensors"))[-8:]
    dirs = ls.trajectory_directions(snaps, n=2)
    models = [ls.load_checkpoint(p, device="cpu", arch="mlp").model for p in snaps]
    m = np.stack([np.concatenate([v.ravel() for v in _weights(mm).values()]) for mm in models])
    diffs = m - m[-1]
    centred = diffs - diffs.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    ratio = s[:2] ** 2 / (s ** 2).sum()
    np.testing.assert_allclose(dirs.meta["explained_variance_ratio"], ratio, rtol=1e-6)
    # components agree up to sign
    for i in range(2):
        assert abs(float(dirs.vectors[i].astype(np.float64) @ vt[i])) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(dirs.coords, diffs @ dirs.vectors.T.astype(np.float64), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(dirs.coords[-1], [0.0, 0.0])
    assert dirs.coords.shape == (8, 2)


# -- directions over the model's state (Li et al.'s dir_type=states) ------------------------------
def _state(model) -> dict[str, np.ndarray]:
    """Parameters and floating buffers by name, float64 (an independent reading of the model)."""
    out = {k: v.detach().double().numpy() for k, v in model.named_parameters()}
    out.update({k: v.double().numpy() for k, v in model.named_buffers() if v.is_floating_point()})
    return out


def test_states_directions_cover_buffers_after_the_parameters(mlp):
    weights = ls.random_directions(mlp.model, n=2, seed=4)
    states = ls.random_directions(mlp.model, n=2, seed=4, dir_type="states")
    params = [n for n, _ in mlp.model.named_parameters()]
    buffers = [n for n, b in mlp.model.named_buffers() if b.is_floating_point()]
    assert states.names == params + buffers and "body.2.running_var" in states.names
    assert not any(n.endswith("num_batches_tracked") for n in states.names)
    assert states.dir_type == "states" and weights.dir_type == "weights" and states.meta["dir_type"] == "states"
    # the parameter part is the weights direction of the same seed; biasbn zeroes the 1-D statistics
    np.testing.assert_array_equal(states.vectors[:, :weights.vectors.shape[1]], weights.vectors)
    assert not states.vectors[:, weights.vectors.shape[1]:].any()
    kept = ls.random_directions(mlp.model, n=1, seed=4, dir_type="states", ignore=None)
    d, w = _split(kept, 0), _state(mlp.model)
    for name in buffers:
        assert np.linalg.norm(d[name]) == pytest.approx(np.linalg.norm(w[name]), rel=1e-5), name


def test_states_line_between_checkpoints_is_the_state_difference(zoo_path, mlp):
    other = zoo_path("mlp-ce").parent / "snapshots" / "mlp-ce" / "epoch010.safetensors"
    dirs = ls.directions_between(mlp, other, dir_type="states")
    target = _state(ls.load_checkpoint(other, device="cpu").model)
    start = _state(mlp.model)
    d = _split(dirs, 0)
    for name in target:
        np.testing.assert_allclose(d[name], target[name] - start[name], rtol=1e-5, atol=1e-7, err_msg=name)
    moved = offset_parameters(mlp.model, dirs, [1.0])
    assert "body.2.running_mean" in moved
    for name, t in moved.items():
        np.testing.assert_allclose(t.numpy(), target[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # weights directions leave the statistics out (they stay the origin's)
    assert "body.2.running_mean" not in offset_parameters(mlp.model, ls.directions_between(mlp, other), [1.0])


def test_states_directions_check_the_buffers_and_survive_a_save(tmp_path, mlp, cnn):
    dirs = ls.random_directions(mlp.model, n=2, seed=0, dir_type="states")
    back = Directions.load(dirs.save(tmp_path / "states"))
    assert back.dir_type == "states"
    back.check_model(mlp.model)
    with pytest.raises(ArgumentError, match="another architecture"):
        back.check_model(cnn.model)
    with pytest.raises(ArgumentError, match="dir_type='state' is not one of the choices"):
        ls.random_directions(mlp.model, dir_type="state")


def test_draws_are_pinned_and_follow_the_documented_order(zoo_path):
    """The values of seeded directions never change silently (they are the coordinates of saved surfaces).

    Reference: the documented recipe written out here, one ``torch.randn`` per tensor in float64 on
    the CPU, every direction's parameters before any buffer, filter norms by numpy; plus values
    pinned from the shipped mlp-ce (seed 0).
    """
    ck = ls.load_checkpoint(zoo_path("mlp-ce"), device="cpu")
    dirs = ls.random_directions(ck.model, n=2, seed=0)
    np.testing.assert_allclose(dirs.vectors[0, :4], [-0.14502586424350739, -0.02342917025089264,
                                                     -0.06658806651830673, 0.0627397745847702], rtol=1e-6)
    np.testing.assert_allclose(np.abs(dirs.vectors.astype(np.float64)).sum(), 1820.5078375545254, rtol=1e-6)

    model = ls.models.build("cnn", input_shape=(1, 8, 8), num_classes=3, channels=(2, 3, 4))
    states = ls.random_directions(model, n=2, seed=7, dir_type="states")
    gen = torch.Generator().manual_seed(7)
    params = [t.detach().double().numpy() for t in model.parameters()]
    buffers = [b.double().numpy() for b in model.buffers() if b.is_floating_point()]

    def draw(tensors):
        out = []
        for w in tensors:
            d = torch.randn(w.shape, generator=gen, dtype=torch.float64).numpy()
            if w.ndim <= 1:
                d = np.zeros_like(d)
            else:
                flat, wf = d.reshape(len(d), -1), w.reshape(len(w), -1)
                d = (flat * (np.linalg.norm(wf, axis=1) / (np.linalg.norm(flat, axis=1) + 1e-10))[:, None]).reshape(
                    d.shape)
            out.append(d.ravel())
        return np.concatenate(out)

    rows = [draw(params) for _ in range(2)]
    rows = [np.concatenate([r, draw(buffers)]) for r in rows]
    np.testing.assert_allclose(states.vectors, np.stack(rows).astype(np.float32), rtol=1e-6, atol=1e-8)
