"""Hessian figures draw exactly the result's numbers, honestly; the `landscape hessian` command end to end."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import landscape as ls
import viz
from landscape.hessian import Density, EigenMap, LayerSpectra, TraceEstimate, smooth_density
from viz.cli import main


def hand_made_map(scale: float = 1.0, x=(-1.0, 0.0, 1.0), y=(-0.5, 0.5)) -> EigenMap:
    """A 3 x 2 map with known numbers (no computation), centre at (0, 0); ``scale`` multiplies lam_min."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    lo = scale * np.array([[-0.2, -0.1, -0.3], [-0.05, -0.4, -0.15]])[:len(y), :len(x)]
    hi = np.array([[2.0, 1.0, 1.5], [0.5, 0.8, 3.0]])[:len(y), :len(x)]
    loss = np.array([[1.0, 0.5, 1.2], [0.9, 0.4, 1.1]])[:len(y), :len(x)]
    shape = lo.shape
    return EigenMap(x, y, lo, hi, np.abs(lo / hi), loss, np.full(shape, 7), np.zeros((2, *shape)),
                    np.ones(shape, bool),
                    meta={"checkpoint": "hand", "data": "none", "n_samples": 5, "criterion": "ce", "tol": 1e-3,
                          "params": "all", "dtype": "float32",
                          "centre": {"lam_min": -0.1, "lam_max": 1.0, "ratio": 0.1, "loss": 0.5, "hvps": 7,
                                     "converged": True, "on_grid": False},
                          "directions": {"meta": {"kind": "random", "norm": "filter", "ignore": "biasbn", "seed": 0}}})


def hand_made_density(shift: float = 0.0, name: str = "hand") -> Density:
    nodes = np.array([[-1.0, 0.0, 2.0], [0.0, 0.5, 3.0]]) + shift
    weights = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    grid = np.linspace(-2 + shift, 4 + shift, 301)
    return Density(nodes, weights, grid, smooth_density(nodes, weights, grid, 0.1), 0.1,
                   {"checkpoint": name, "n_probes": 2, "steps": 3, "size": 3})


def _panel_extent(ax) -> tuple:
    return tuple(ax.get_xlim()) + tuple(ax.get_ylim())


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
        mesh = plot.fig.axes[0].collections[0]
        np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(2, 3), emap.ratio)
        # convex reads as blue (as in the thesis), strong negative curvature as yellow
        r, g, b, _ = mesh.cmap(mesh.norm(0.0))
        assert b > r + 0.2 and b > g + 0.1, (r, g, b)
        r, g, b, _ = mesh.cmap(mesh.norm(0.5))
        assert r > 0.8 and g > 0.8 and b < 0.3
        # cell [j, i] contains (x[i], y[j]): the cell holding lam_max[1, 2] = 3 contains (x=1, y=0.5)
        lam_max_mesh = plot.fig.axes[3].collections[0]
        cell = np.asarray(lam_max_mesh.get_coordinates())[1:3, 2:4].reshape(-1, 2)
        assert cell[:, 0].min() < 1.0 <= cell[:, 0].max() and cell[:, 1].min() < 0.5 <= cell[:, 1].max()
        assert np.asarray(lam_max_mesh.get_array()).reshape(2, 3)[1, 2] == 3.0
        assert plot.kind == "eigen_ratio" and "Lanczos" in plot.caption and "42 HVPs" in plot.caption
        assert "At the centre (0, 0) (computed there, not a grid point): lambda_min -0.1" in plot.caption
        paths = plot.save(tmp_path / "ratio")
        assert [p.suffix for p in paths] == [".png", ".json"]
        saved = json.loads(paths[1].read_text())
        np.testing.assert_allclose(saved["values"]["lam_max"], emap.lam_max)
    finally:
        plot.close()


def test_cells_stop_at_the_grid_and_every_panel_shows_the_contour_extent():
    emap = hand_made_map()
    plot = viz.eigen_ratio(emap)
    try:
        for ax in plot.fig.axes[:4]:
            assert _panel_extent(ax) == (-1.0, 1.0, -0.5, 0.5)
        for k in (0, 2, 3):  # the three maps: no half cell beyond the outermost points
            corners = np.asarray(plot.fig.axes[k].collections[0].get_coordinates())
            assert corners[..., 0].min() == -1.0 and corners[..., 0].max() == 1.0
            assert corners[..., 1].min() == -0.5 and corners[..., 1].max() == 0.5
        assert plot.values["extent"] == [-1.0, 1.0, -0.5, 0.5]
    finally:
        plot.close()
    # a finer contour over a wider plane: every panel shows the contour's extent, the cells stay on the map's
    x, y = np.linspace(-2, 2, 5), np.linspace(-1, 1, 3)
    surf = ls.Surface(x, y, np.add.outer(y ** 2, x ** 2) + 0.1, np.ones((3, 5)), meta={"checkpoint": "hand"})
    plot = viz.eigen_ratio(emap, surf)
    try:
        assert all(_panel_extent(ax) == (-2.0, 2.0, -1.0, 1.0) for ax in plot.fig.axes[:4])
        corners = np.asarray(plot.fig.axes[0].collections[0].get_coordinates())
        assert corners[..., 0].max() == 1.0 and corners[..., 1].max() == 0.5
    finally:
        plot.close()


def test_maps_of_a_comparison_share_one_colour_scale():
    a, b = hand_made_map(1.0), hand_made_map(2.5)
    limits = viz.hessian.shared_limits([a, b])
    assert limits["ratio"] == [0.0, pytest.approx(1.25)] and limits["lam_min"] == [-1.0, 1.0]
    assert limits["lam_max"] == [0.5, 3.0]
    plots = [viz.eigen_ratio(m, limits=limits) for m in (a, b)]
    try:
        for field in ("ratio_limits", "lam_min_limits", "lam_max_limits"):
            assert plots[0].values[field] == plots[1].values[field] == pytest.approx(limits[field[:-7]])
        norms = [p.fig.axes[0].collections[0].norm for p in plots]
        assert norms[0].vmin == norms[1].vmin == 0.0 and norms[0].vmax == norms[1].vmax == pytest.approx(1.25)
        assert "shared" in plots[0].caption
    finally:
        for p in plots:
            p.close()


def test_one_point_and_non_finite_maps_draw_without_errors():
    point = hand_made_map(x=[0.0], y=[0.0])
    plot = viz.eigen_ratio(point)
    try:
        marks = plot.fig.axes[0].collections[0]
        np.testing.assert_allclose(np.asarray(marks.get_offsets()), [[0.0, 0.0]])  # a marker at the point
        np.testing.assert_allclose(marks.get_array(), [0.1])
        assert plot.values["ratio_limits"][1] > plot.values["ratio_limits"][0]
    finally:
        plot.close()
    nan = hand_made_map()
    nan.lam_min[:] = np.nan
    nan.lam_max[:] = np.nan
    nan.ratio[:] = np.nan
    plot = viz.eigen_ratio(nan)
    try:
        assert np.isnan(plot.values["ratio"]).all() and plot.values["lam_min_limits"] == [-1.0, 1.0]
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
        assert all(_panel_extent(ax) == (-0.5, 0.5, -0.5, 0.5) for ax in plot.fig.axes[:4])
        # the map's own loss at its corners is the surface's loss there (same plane, same objective)
        np.testing.assert_allclose(emap.loss[[0, 0, -1, -1], [0, -1, 0, -1]],
                                   surf.loss[[0, 0, -1, -1], [0, -1, 0, -1]], rtol=1e-5)
    finally:
        plot.close()


def _legend_is_outside(fig, ax) -> bool:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return not ax.get_legend().get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))


def test_spectral_density_plot_draws_the_density():
    dens = hand_made_density()
    plot = viz.spectral_density(dens)
    try:
        line = plot.fig.axes[0].lines[0]
        np.testing.assert_allclose(line.get_ydata(), dens.density)
        np.testing.assert_array_equal(line.get_xdata(), dens.grid)
        assert plot.fig.axes[0].get_yscale() == "log"
        # hand-computed: the peak at 0 carries weight (0.5 + 0.6) / 2 of a N(0, 0.1^2) density
        at0 = plot.values["density"][np.argmin(np.abs(dens.grid))]
        assert at0 == pytest.approx(0.55 / (0.1 * np.sqrt(2 * np.pi)) + 0.15 / (0.1 * np.sqrt(2 * np.pi))
                                    * np.exp(-12.5), rel=1e-6)
        assert "stochastic Lanczos quadrature" in plot.caption
    finally:
        plot.close()


def test_densities_of_several_models_overlay_on_a_shared_range_with_the_legend_outside():
    items = {"ce": hand_made_density(0.0, "ce"), "mam": hand_made_density(3.0, "mam"), "a2": hand_made_density(-1.0)}
    plot = viz.spectral_density(items)
    try:
        ax = plot.fig.axes[0]
        assert len(plot.fig.axes) == 1 and len(ax.lines) == 3
        assert ax.get_xlim() == (-3.0, 7.0)  # the union of every grid
        assert plot.values["x_range"] == [-3.0, 7.0]
        assert [c["name"] for c in plot.values["curves"]] == ["ce", "mam", "a2"]
        for line, d in zip(ax.lines, items.values()):
            np.testing.assert_allclose(line.get_ydata(), d.density)
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ce", "mam", "a2"]
        assert _legend_is_outside(plot.fig, ax)
        assert "ce:" in plot.caption and "mam:" in plot.caption
    finally:
        plot.close()


def _spectra(shift: float) -> LayerSpectra:
    nodes = np.array([[[0.0, 1.0, 2.0]], [[0.0, 0.5, np.nan]]]) + shift
    weights = np.array([[[0.5, 0.3, 0.2]], [[0.7, 0.3, 0.0]]])
    grid = np.linspace(-1, 4, 201)
    dens = np.stack([smooth_density(n, w, grid, 0.2) for n, w in zip(nodes, weights)])
    return LayerSpectra(["fc1", "head"], [["fc1.weight"], ["head.weight"]], np.array([30, 2]),
                        np.array([-0.1, 0.0]), np.array([2.0, 0.5]), np.array([True, True]), np.array([12.0, 0.3]),
                        np.array([0.5, 0.01]), nodes, weights, grid, dens, 0.2, np.array([40, 10]),
                        {"checkpoint": "x", "n_probes": 1, "steps": 3, "tol": 1e-3, "trace_probes": 10})


def test_layer_spectra_stack_by_depth_with_models_overlaid_and_a_table(tmp_path):
    sp = {"ce": _spectra(0.0), "mam": _spectra(0.5)}
    plot = viz.layer_spectra(sp)
    try:
        axes = plot.fig.axes
        assert plot.values["groups"] == ["fc1", "head"] and len(axes) == 2
        assert axes[0].get_ylabel().startswith("fc1") and axes[1].get_ylabel().startswith("head")
        assert all(len(ax.lines) == 2 for ax in axes) and axes[0].get_xlim() == axes[1].get_xlim()
        np.testing.assert_allclose(axes[1].lines[1].get_ydata(), sp["mam"].density[1])
        assert [p["model"] for p in plot.values["panels"]] == ["ce", "mam", "ce", "mam"]
        # a padded node (NaN, weight 0) is absent, not a NaN density
        assert np.isfinite(sp["ce"].density[1]).all()
        assert np.trapezoid(sp["ce"].density[1], sp["ce"].grid) == pytest.approx(1.0, abs=1e-3)
        assert _legend_is_outside(plot.fig, axes[0])
    finally:
        plot.close()
    table = viz.layer_table(sp)
    try:
        rows = table.values["rows"]
        assert [(r["model"], r["group"]) for r in rows] == [("ce", "fc1"), ("ce", "head"), ("mam", "fc1"),
                                                           ("mam", "head")]
        assert rows[0]["trace"] == 12.0 and rows[1]["size"] == 2
        cells = table.fig.axes[0].tables[0].get_celld()
        assert cells[(1, 4)].get_text().get_text() == "2"  # lambda_max of (ce, fc1)
    finally:
        table.close()


def test_hessian_plane_labels_its_axes_with_the_eigenvalues(tiny_checkpoint, digits_test):
    ck = ls.load_checkpoint(tiny_checkpoint("mlp", hidden=[8], epochs=2), device="cpu")
    data = digits_test.subset(40, seed=0)
    dirs = ls.hessian_directions(ck, data, k=2, which="BE")
    surf = ls.surface(ck, data, dirs, x=(-0.2, 0.2, 5), y=(-0.2, 0.2, 5), verbose=False)
    plot = viz.hessian_plane({"tiny": surf})
    try:
        ax = plot.fig.axes[0]
        lam = dirs.meta["eigenvalues"]
        assert ax.get_xlabel() == f"v_max (lambda = {lam[0]:.4g})"
        assert ax.get_ylabel() == f"v_min (lambda = {lam[1]:.4g})"
        np.testing.assert_array_equal(plot.values["panels"][0]["loss"], surf.loss)
        assert plot.values["panels"][0]["eigenvalues"] == lam and plot.kind == "hessian_plane"
    finally:
        plot.close()


# -- the command -----------------------------------------------------------------------------
def test_cli_writes_the_map_the_contour_surface_and_figures(tmp_path, tiny_checkpoint, capsys):
    path = tiny_checkpoint("mlp", hidden=[8], epochs=2)
    out = tmp_path / "run"
    args = ["hessian", str(path), "--grid", "3x2", "--subset", "40", "--contour-grid", "5", "--out", str(out),
            "--quiet", "--chunk-size", "2"]
    assert main(args + ["--density", "--probes", "2"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["density.json", "density.npz", "density.png", "eigen_ratio.json", "eigen_ratio.png",
                     "eigenmap.npz", "surface.npz", "trace.npz"]
    emap = EigenMap.load(out / "eigenmap.npz")
    assert emap.ratio.shape == (2, 3) and emap.meta["seed"] == 0
    saved = json.loads((out / "eigen_ratio.json").read_text())
    np.testing.assert_allclose(saved["values"]["ratio"], emap.ratio)
    trace = ls.Result.load(out / "trace.npz")
    assert isinstance(trace, TraceEstimate) and trace.n_probes == 100 and trace.trace > 0
    assert trace.meta["n_samples"] == 40 and trace.interval[0] < trace.trace < trace.interval[1]
    assert capsys.readouterr().out == ""  # --quiet


def test_cli_centre_only_reports_the_centre(tmp_path, tiny_checkpoint, digits_test, capsys):
    path = tiny_checkpoint("mlp", hidden=[8], epochs=2)
    out = tmp_path / "c"
    assert main(["hessian", str(path), "--grid", "1", "--contour-grid", "0", "--subset", "40", "--out", str(out),
                 "--layers", "--eigvecs"]) == 0
    text = capsys.readouterr().out
    ck = ls.load_checkpoint(path, device="cpu")
    data = digits_test.subset(40, seed=0)
    exact = ls.hessian_extremes(ck, data, dtype=torch.float64, tol=1e-9, max_iter=300)
    emap = EigenMap.load(out / "eigenmap.npz")
    assert emap.x.tolist() == [0.0] and emap.meta["centre"]["on_grid"]
    assert "at the centre (0, 0) (a grid point)" in text
    scale = abs(exact.lam_max)
    assert abs(emap.meta["centre"]["lam_min"] - exact.lam_min) <= 1e-3 * scale
    assert f"lambda_max {emap.meta['centre']['lam_max']:.4g}" in text
    assert isinstance(ls.Result.load(out / "layers.npz"), LayerSpectra)
    dirs = ls.Result.load(out / "eigvecs.npz")
    assert dirs.meta["which"] == "BE" and dirs.n == 2
    assert main(["surface", str(path), "--dirs", str(out / "eigvecs.npz"), "--grid", "3", "--subset", "40",
                 "--out", str(tmp_path / "s"), "--quiet", "--no-plots"]) == 0
    # an even grid has no point at the centre: the printed values are computed there, not a corner's
    assert main(["hessian", str(path), "--grid", "2", "--contour-grid", "0", "--subset", "40", "--out",
                 str(tmp_path / "even"), "--no-plots"]) == 0
    text = capsys.readouterr().out
    even = EigenMap.load(tmp_path / "even" / "eigenmap.npz")
    assert "at the centre (0, 0) (computed there)" in text
    assert abs(even.centre["lam_max"] - exact.lam_max) <= 1e-3 * scale
    assert f"lambda_max {even.centre['lam_max']:.4g}," in text
    assert all(f"lambda_max {v:.4g}," not in text for v in even.lam_max.ravel())  # no corner is reported


def test_cli_grid_one_with_density_plots(tmp_path, tiny_checkpoint):
    path = tiny_checkpoint("mlp", hidden=[8], epochs=2)
    assert main(["hessian", str(path), "--grid", "1", "--density", "--subset", "30", "--contour-grid", "5",
                 "--out", str(tmp_path / "g"), "--quiet", "--probes", "1"]) == 0
    assert (tmp_path / "g" / "eigen_ratio.png").exists() and (tmp_path / "g" / "density.png").exists()


def test_cli_stages_resume_independently_and_finished_runs_are_kept(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    import importlib

    from landscape import hessian

    path = tiny_checkpoint("mlp", hidden=[8], epochs=2)
    out = tmp_path / "r"
    args = ["hessian", str(path), "--grid", "2", "--subset", "30", "--contour-grid", "3", "--out", str(out),
            "--quiet", "--no-plots"]
    surface_module = importlib.import_module("landscape.surface")  # the module (ls.surface is the function)
    real_surface = surface_module.surface

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(surface_module, "surface", killed)
    assert main(args) == 130  # killed during the contour stage, after the map finished
    assert (out / "eigenmap.npz").exists() and not (out / "surface.npz").exists()
    monkeypatch.setattr(surface_module, "surface", real_surface)

    def never(*a, **k):
        raise AssertionError("the finished eigenvalue map was recomputed")

    monkeypatch.setattr(hessian, "_map_chunk", never)
    assert main(args + ["--resume"]) == 0
    assert (out / "surface.npz").exists()
    before = (out / "surface.npz").stat().st_mtime_ns
    assert main(args + ["--resume"]) == 0  # everything finished: nothing recomputed or rewritten
    assert (out / "surface.npz").stat().st_mtime_ns == before
    capsys.readouterr()
    assert main(args) == 2  # neither --resume nor --overwrite: the finished run is kept
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    monkeypatch.undo()
    assert main(args + ["--overwrite"]) == 0


def test_cli_centre_stages_follow_the_one_resume_rule(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    """Density, trace, layer spectra and eigenvectors: reused under --resume when their inputs match, else refused."""
    from landscape import hessian

    path = tiny_checkpoint("mlp", hidden=[8], epochs=2)
    out = tmp_path / "c"
    args = ["hessian", str(path), "--grid", "1", "--contour-grid", "0", "--density", "--probes", "1", "--layers",
            "--eigvecs", "--subset", "30", "--out", str(out), "--quiet", "--no-plots"]
    assert main(args) == 0
    files = [out / name for name in ("eigenmap.npz", "density.npz", "trace.npz", "layers.npz", "eigvecs.npz")]
    for f in files[1:]:
        assert isinstance(ls.Result.load(f).meta["fingerprint"], str)
    before = [f.stat().st_mtime_ns for f in files]

    def never(*a, **k):
        raise AssertionError("a finished stage was recomputed")

    for name in ("spectral_density", "hessian_trace", "layer_spectra", "hessian_directions"):
        monkeypatch.setattr(ls, name, never)
    monkeypatch.setattr(hessian, "_map_chunk", never)
    assert main(args + ["--resume"]) == 0
    assert [f.stat().st_mtime_ns for f in files] == before  # nothing recomputed or rewritten
    capsys.readouterr()
    other = [a if a != "1" or i != args.index("--probes") + 1 else "2" for i, a in enumerate(args)]
    assert main(other + ["--resume"]) == 2  # the density of 2 probes is not the finished one of 1
    err = capsys.readouterr().err
    assert "density.npz" in err and "another run" in err and "--overwrite" in err
    assert [f.stat().st_mtime_ns for f in files] == before


def test_cli_non_finite_weights_give_nan_maps_not_tracebacks(tmp_path, tiny_checkpoint, capsys):
    ck = ls.load_checkpoint(tiny_checkpoint("mlp", hidden=[8], epochs=2), device="cpu")
    with torch.no_grad():
        ck.model.head.weight[0, 0] = float("nan")
    bad = ls.save_checkpoint(tmp_path / "nan.safetensors", ck.model, ck.meta)
    with pytest.warns(RuntimeWarning):
        code = main(["hessian", str(bad), "--grid", "2", "--subset", "30", "--contour-grid", "3", "--density",
                     "--probes", "1", "--out", str(tmp_path / "n")])
    assert code == 0
    text = capsys.readouterr().out
    assert "4 non-finite (NaN)" in text
    emap = EigenMap.load(tmp_path / "n" / "eigenmap.npz")
    assert emap.meta["non_finite"] == 4 and math.isnan(emap.centre["lam_max"])  # stored as null, read as NaN
    assert main(["hessian", str(bad), "--grid", "2", "--subset", "30", "--contour-grid", "3", "--resume",
                 "--out", str(tmp_path / "n")]) == 0  # a resumed NaN map prints too


@pytest.mark.parametrize("option,value", [("--max-iter", "0"), ("--max-iter", "-3"), ("--tol", "2"), ("--tol", "0"),
                                          ("--probes", "0"), ("--contour-grid", "-1"), ("--subset", "-1"),
                                          ("--subset", "0"), ("--chunk-size", "0"), ("--batch-size", "-1")])
def test_cli_bad_options_are_one_line_before_any_work(tmp_path, option, value, capsys):
    assert main(["hessian", "does-not-matter.safetensors", option, value, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("landscape hessian: error:") and option in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


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


SPEC = """\
name = "hess"
data = "digits"
seed = 0

[models]
ce = "trained_models/mlp-ce.safetensors"
mam = "trained_models/mlp-mam-softmax.safetensors"

[[figure]]
id = "ratio"
kind = "eigen_ratio"
models = ["ce", "mam"]
grid = 2
subset = 40
contour_grid = 3

[[figure]]
id = "density"
kind = "spectral_density"
models = ["ce", "mam"]
probes = 1
steps = 10
subset = 40

[[figure]]
id = "plane"
kind = "hessian_plane"
models = ["ce", "mam"]
grid = 3
subset = 40

[[figure]]
id = "layers"
kind = "layer_spectra"
models = ["ce"]
subset = 40
probes = 1
steps = 8
trace_probes = 5
"""


@pytest.mark.slow
def test_report_kinds_share_scales_overlay_densities_and_cache(tmp_path):
    from tests.conftest import ROOT
    from viz.report import build_report

    spec = tmp_path / "hess.toml"
    spec.write_text(SPEC)
    report = build_report(spec, out_root=tmp_path, quiet=True, root=ROOT)
    out = tmp_path / "hess"
    files = {r["id"]: r["files"] for r in report["figures"]}
    assert files["density"] == ["density.png", "density.json"]  # one figure for both models
    assert files["layers"] == ["layers.png", "layers.json", "layers-table.png", "layers-table.json"]
    ce, mam = (json.loads((out / f"ratio-{m}.json").read_text())["values"] for m in ("ce", "mam"))
    for field in ("ratio_limits", "lam_min_limits", "lam_max_limits"):
        assert ce[field] == mam[field]
    assert ce["ratio_limits"][1] == pytest.approx(max(np.nanmax(np.array(ce["ratio"], float)),
                                                      np.nanmax(np.array(mam["ratio"], float))))
    dens = json.loads((out / "density.json").read_text())["values"]
    assert [c["name"] for c in dens["curves"]] == ["ce", "mam"]
    plane = json.loads((out / "plane.json").read_text())["values"]
    assert [len(p["eigenvalues"]) for p in plane["panels"]] == [2, 2]
    assert plane["panels"][0]["eigenvalues"][0] > 0 > plane["panels"][0]["eigenvalues"][1]
    again = build_report(spec, out_root=tmp_path, quiet=True, root=ROOT)
    assert all(c["cached"] for r in again["figures"] for c in r["cache"])
