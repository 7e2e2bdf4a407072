"""Hessian figures draw exactly the result's numbers; the `landscape hessian` command end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest

import landscape as ls
import viz
from landscape.hessian import Density, EigenMap, smooth_density
from viz.cli import main


def hand_made_map() -> EigenMap:
    """A 3 x 2 map with known numbers (no computation), centre at (0, 0)."""
    x, y = np.array([-1.0, 0.0, 1.0]), np.array([-0.5, 0.5])
    lo = np.array([[-0.2, -0.1, -0.3], [-0.05, -0.4, -0.15]])
    hi = np.array([[2.0, 1.0, 1.5], [0.5, 0.8, 3.0]])
    loss = np.array([[1.0, 0.5, 1.2], [0.9, 0.4, 1.1]])
    return EigenMap(x, y, lo, hi, np.abs(lo / hi), loss, np.full((2, 3), 7), np.zeros((2, 2, 3)),
                    np.ones((2, 3), bool),
                    meta={"checkpoint": "hand", "data": "none", "n_samples": 5, "criterion": "ce", "tol": 1e-3,
                          "params": "all", "dtype": "float32",
                          "directions": {"meta": {"kind": "random", "norm": "filter", "ignore": "biasbn", "seed": 0}}})


def test_eigen_ratio_draws_the_map_values(tmp_path):
    emap = hand_made_map()
    plot = viz.eigen_ratio(emap)
    try:
        v = plot.values
        np.testing.assert_allclose(v["ratio"], [[0.1, 0.1, 0.2], [0.1, 0.5, 0.05]], rtol=1e-12)
        np.testing.assert_array_equal(v["lam_min"], emap.lam_min)
        np.testing.assert_array_equal(v["lam_max"], emap.lam_max)
        np.testing.assert_array_equal(v["loss"], emap.loss)  # contour of the map's own loss without a surface
        assert v["ratio_limits"] == [0.0, pytest.approx(0.5)]  # ratio colours start at 0 = convex
        assert v["lam_min_limits"] == [-0.4, 0.4]  # diverging map centred on zero
        ratio_ax = plot.fig.axes[0]
        mesh = ratio_ax.collections[0]
        np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(2, 3), emap.ratio)
        assert mesh.get_cmap().name == "viridis"
        # cell [j, i] of a mesh sits at (x[i], y[j]): the cell at (x=1, y=0.5) holds lam_max[1, 2] = 3
        lam_max_mesh = plot.fig.axes[3].collections[0]
        corners = lam_max_mesh.get_coordinates()
        np.testing.assert_allclose(np.asarray(corners[1:3, 2:4]).reshape(-1, 2).mean(0), [1.0, 0.5])
        assert np.asarray(lam_max_mesh.get_array()).reshape(2, 3)[1, 2] == 3.0
        assert plot.kind == "eigen_ratio" and "Lanczos" in plot.caption and "42 HVPs" in plot.caption
        paths = plot.save(tmp_path / "ratio")
        assert [p.suffix for p in paths] == [".png", ".json"]
        saved = json.loads(paths[1].read_text())
        np.testing.assert_allclose(saved["values"]["lam_max"], emap.lam_max)
    finally:
        plot.close()


def test_eigen_ratio_uses_the_given_surface_for_the_contour(tiny_checkpoint, digits_test):
    ck = ls.load_checkpoint(tiny_checkpoint("mlp", hidden=[8], epochs=2), device="cpu")
    data = digits_test.subset(40, seed=0)
    dirs = ls.random_directions(ck.model, n=2, seed=0)
    emap = ls.eigen_ratio_map(ck, data, dirs, x=(-0.5, 0.5, 2), y=(-0.5, 0.5, 2), progress=False)
    surf = ls.surface(ck, data, dirs, x=(-0.5, 0.5, 5), y=(-0.5, 0.5, 5), progress=False)
    plot = viz.eigen_ratio(emap, surf, vmax=1.0)
    try:
        np.testing.assert_array_equal(plot.values["loss"], surf.loss)
        np.testing.assert_array_equal(plot.values["contour_x"], surf.x)
        assert plot.values["ratio_limits"] == [0.0, 1.0]
        # the map's own loss at its corners is the surface's loss there (same plane, same objective)
        np.testing.assert_allclose(emap.loss[[0, 0, -1, -1], [0, -1, 0, -1]],
                                   surf.loss[[0, 0, -1, -1], [0, -1, 0, -1]], rtol=1e-5)
    finally:
        plot.close()


def test_spectral_density_plot_draws_the_density():
    nodes = np.array([[-1.0, 0.0, 2.0], [0.0, 0.5, 3.0]])
    weights = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    grid = np.linspace(-2, 4, 301)
    dens = Density(nodes, weights, grid, smooth_density(nodes, weights, grid, 0.1), 0.1,
                   {"checkpoint": "hand", "n_probes": 2, "steps": 3, "size": 3})
    plot = viz.spectral_density(dens)
    try:
        line = plot.fig.axes[0].lines[0]
        np.testing.assert_allclose(line.get_ydata(), dens.density)
        np.testing.assert_array_equal(line.get_xdata(), grid)
        assert plot.fig.axes[0].get_yscale() == "log"
        # hand-computed: the peak at 0 carries weight (0.5 + 0.6) / 2 of a N(0, 0.1^2) density
        at0 = plot.values["density"][np.argmin(np.abs(grid))]
        assert at0 == pytest.approx(0.55 / (0.1 * np.sqrt(2 * np.pi)) + 0.15 / (0.1 * np.sqrt(2 * np.pi))
                                    * np.exp(-12.5), rel=1e-6)
        assert "stochastic Lanczos quadrature" in plot.caption
    finally:
        plot.close()


def test_cli_writes_the_map_the_contour_surface_and_figures(tmp_path, tiny_checkpoint, capsys):
    path = tiny_checkpoint("mlp", hidden=[8], epochs=2)
    out = tmp_path / "run"
    args = ["hessian", str(path), "--grid", "3x2", "--subset", "40", "--contour-grid", "5", "--out", str(out),
            "--quiet", "--chunk-size", "2"]
    assert main(args + ["--density", "--probes", "2"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["density.json", "density.npz", "density.png", "eigen_ratio.json", "eigen_ratio.png",
                     "eigenmap.npz", "surface.npz", "trace.json"]
    emap = EigenMap.load(out / "eigenmap.npz")
    assert emap.ratio.shape == (2, 3) and emap.meta["seed"] == 0
    saved = json.loads((out / "eigen_ratio.json").read_text())
    np.testing.assert_allclose(saved["values"]["ratio"], emap.ratio)
    trace = json.loads((out / "trace.json").read_text())
    assert trace["n_probes"] == 100 and trace["trace"] > 0
    assert capsys.readouterr().out == ""  # --quiet


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["hessian", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("landscape hessian: error:") and len(err.strip().splitlines()) == 1
    assert main(["hessian", "x.safetensors", "--grid", "0", "--out", str(tmp_path)]) == 2
    assert "--grid" in capsys.readouterr().err


def test_bench_hessian_prints_every_method(tiny_checkpoint, capsys):
    path = tiny_checkpoint("mlp", hidden=[8], epochs=2)
    assert main(["bench", "hessian", "--checkpoint", str(path), "--grid", "1", "--samples", "30",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert {"engine", "engine-cold", "li-eigsh", "pyhessian"} <= set(rows)
    assert float(rows["engine"][3]) <= 0.01 and float(rows["li-eigsh"][3]) <= 0.01  # ratio errors vs dense
    assert rows["pyhessian"][3] == "n/a"
