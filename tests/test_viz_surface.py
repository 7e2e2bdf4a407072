"""Surface figures: the plotted values are the result's numbers, masked where they diverge; offline HTML; VTK."""
from __future__ import annotations

import json

import numpy as np
import pytest

import viz
from landscape.surface import Curve, Surface
from viz import surface as vs


def make_surface(nx=5, ny=3, seed=0, diverge=True, ce=False) -> Surface:
    """A hand-made surface: loss = 1 + x^2 + 2 y^2 (plus one inf and one NaN), so every number is known."""
    x = np.linspace(-1, 1, nx)
    y = np.linspace(-0.5, 0.5, ny)
    loss = 1.0 + x[None, :] ** 2 + 2.0 * y[:, None] ** 2 + seed
    if diverge:
        loss[0, 0] = np.inf
        loss[-1, -1] = np.nan
    acc = np.clip(1.0 - 0.1 * loss, 0, 1)
    meta = {"checkpoint": f"toy{seed}", "data": "digits/test", "n_samples": 10, "criterion": "ce", "seed": 0,
            "directions": {"names": [], "shapes": [], "meta": {"kind": "random", "norm": "filter", "ignore": "biasbn",
                                                             "seed": 0}}}
    return Surface(x, y, loss, acc, loss + 0.5 if ce else None, meta=meta)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def test_contour_values_are_the_masked_surface_and_levels_span_it():
    surf = make_surface()
    plot = vs.contour(surf, n_levels=7)
    v = plot.values
    np.testing.assert_array_equal(v["x"], surf.x)
    np.testing.assert_array_equal(v["y"], surf.y)
    expect = surf.loss.copy()
    expect[~np.isfinite(expect)] = np.nan
    np.testing.assert_array_equal(v["loss"], expect)
    finite = surf.loss[np.isfinite(surf.loss)]  # 1.0 .. 2.5 (the hand-made surface's finite range)
    assert finite.min() == 1.0 and finite.max() == 2.5
    np.testing.assert_allclose(v["levels"], [1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5])  # step 0.25 (7 levels at most 8)
    assert v["centre"] == [0.0, 0.0]
    assert plot.kind == "contour" and "toy0" in plot.caption and "5 x 3 grid" in plot.caption
    assert not plot.interactive


def test_non_square_contour_keeps_orientation():
    surf = make_surface(nx=6, ny=3, diverge=False)
    plot = vs.contour(surf)
    cs_values = plot.values["loss"]
    assert cs_values.shape == (3, 6)
    # loss[j, i] is at (x[i], y[j]): along a row only x changes
    np.testing.assert_allclose(cs_values[1], 1.0 + surf.x ** 2 + 2.0 * surf.y[1] ** 2)


def _is_round_step(step: float) -> bool:
    mantissa = step / 10.0 ** np.floor(np.log10(step))
    return any(np.isclose(mantissa, m, rtol=1e-9) for m in (1.0, 2.0, 2.5, 5.0, 10.0))


@pytest.mark.parametrize("lo,hi,n", [(0.0642, 6.1, 20), (1.0, 2.5, 7), (-3e-5, 7e-5, 7), (0.31, 0.32, 5),
                                     (-40.0, 205.6, 12), (1e3, 1e3 + 1e-3, 10), (5.0, 5.0, 20)])
def test_linear_levels_are_round_numbers_covering_the_values(lo, hi, n):
    levels = vs.levels_for([np.array([[lo, hi], [np.nan, np.inf]])], n)
    steps = np.diff(levels)
    assert len(levels) >= 2 and len(levels) <= n + 1
    np.testing.assert_allclose(steps, steps[0], rtol=1e-6)  # equally spaced (up to the floats near 1000)
    assert _is_round_step(steps[0]), steps[0]
    np.testing.assert_allclose(levels / steps[0], np.round(levels / steps[0]), atol=1e-6)  # multiples of the step
    assert levels[0] <= lo and levels[-1] >= hi  # every value lies between two levels
    if hi > lo:
        assert levels[0] > lo - steps[0] and levels[-1] < hi + steps[0]  # and no level is wasted beyond them
    else:
        assert levels[0] < lo < levels[-1]  # a flat surface still gets distinct levels around it


@pytest.mark.parametrize("lo,hi,n", [(0.0642, 6.1, 20), (0.0642, 6.1, 8), (2e-3, 4e3, 9), (1e-8, 1e9, 5)])
def test_log_levels_are_round_numbers_per_decade(lo, hi, n):
    levels = vs.levels_for([np.array([lo, hi, 0.0, -1.0])], n, log=True)  # non-positive values are left out
    mantissa = levels / 10.0 ** np.floor(np.log10(levels) + 1e-9)
    assert all(any(np.isclose(m, k) for k in range(1, 10)) for m in mantissa), levels
    assert 2 <= len(levels) <= n + 1 and np.all(np.diff(levels) > 0)
    assert levels[0] <= lo and levels[-1] >= hi


def test_log_contourf_uses_the_log_levels():
    plot = vs.contourf(make_surface(), log=True, n_levels=5)
    np.testing.assert_allclose(plot.values["levels"], [1.0, 2.0, 3.0])  # 1-2-3 of one decade: 1.0 .. 2.5
    assert plot.kind == "contourf"


def test_heatmap_and_static_3d_and_fields():
    surf = make_surface(ce=True)
    heat = vs.contourf(surf, heatmap=True, field="ce_loss")
    np.testing.assert_array_equal(np.isnan(heat.values["ce_loss"]), ~np.isfinite(surf.ce_loss))
    static = vs.surface3d(surf, interactive=False, log=True)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(static.values["z"], np.log10(np.where(np.isfinite(surf.loss), surf.loss, np.nan)))
    from landscape.errors import ArgumentError

    with pytest.raises(ArgumentError, match="with_ce"):
        vs.contour(make_surface(ce=False), field="ce_loss")


def test_interactive_3d_saves_self_contained_html(tmp_path):
    surf = make_surface()
    plot = vs.surface3d(surf)
    assert plot.interactive
    trace = plot.fig.data[0]
    z = np.array(trace.z, dtype=float)
    np.testing.assert_array_equal(np.isnan(z), ~np.isfinite(surf.loss))
    paths = plot.save(tmp_path / "s3d")
    html = paths[0].read_text()
    assert paths[0].suffix == ".html" and len(html) > 1_000_000  # plotly.js is embedded
    assert 'src="https://cdn.plot.ly' not in html and "cdn.plot.ly/plotly" not in html.split("<body>")[0]
    saved = json.loads(paths[1].read_text())
    assert saved["values"]["z"][0][0] is None  # the infinite point is null, not a number


def test_curve_draws_loss_and_accuracy_on_twin_axes():
    t = np.linspace(-1, 1, 5)
    loss = np.array([2.0, 1.0, 0.5, 1.0, np.inf])
    line = Curve(t, loss, np.array([0.5, 0.8, 0.9, 0.8, 0.1]), loss * 2,
                 meta={"checkpoint": "toy", "criterion": "ce", "directions": {"meta": {"kind": "random"}}})
    plot = vs.curve(line, log=True)
    np.testing.assert_array_equal(plot.values["t"], t)
    assert np.isnan(plot.values["loss"][-1]) and plot.values["loss"][2] == 0.5
    assert len(plot.fig.axes) == 2  # twin axis for accuracy
    assert plot.fig.axes[0].get_yscale() == "log"
    np.testing.assert_array_equal(plot.fig.axes[1].lines[0].get_ydata(), line.accuracy)


def test_compare_uses_shared_levels():
    a, b = make_surface(seed=0), make_surface(seed=3)  # finite ranges 1.0 .. 2.5 and 4.0 .. 5.5
    plot = vs.compare([a, b], titles=["CE", "MAM"], n_levels=9)
    np.testing.assert_allclose(plot.values["levels"], np.arange(1.0, 5.51, 0.5))  # one round scale for both
    assert [p["title"] for p in plot.values["panels"]] == ["CE", "MAM"]
    assert len(plot.fig.axes) == 2
    # the same levels on both panels: each axis's contour set carries them
    for ax in plot.fig.axes:
        levels = [c for c in ax.get_children() if hasattr(c, "levels")][0].levels
        np.testing.assert_allclose(levels, plot.values["levels"])


def test_draw_contour_is_reusable_on_any_axes():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    values = vs.draw_contour(ax, make_surface(), levels=[1.5, 2.0, 2.5])
    np.testing.assert_array_equal(values["levels"], [1.5, 2.0, 2.5])
    assert ax.get_xlabel() == "direction 1 (a)"


def test_vtk_export_round_trips_the_numbers(tmp_path):
    surf = make_surface(nx=4, ny=3)
    path = vs.to_vtk(surf, tmp_path / "surf")
    text = path.read_text().splitlines()
    assert path.suffix == ".vtk" and text[3] == "DATASET STRUCTURED_GRID" and text[4] == "DIMENSIONS 4 3 1"
    pts = np.array([[float(v) for v in line.split()] for line in text[6:6 + 12]])
    gx, gy = np.meshgrid(surf.x, surf.y)
    np.testing.assert_allclose(pts[:, 0], gx.ravel())
    np.testing.assert_allclose(pts[:, 1], gy.ravel())
    finite = np.isfinite(surf.loss.ravel())
    np.testing.assert_allclose(pts[finite, 2], surf.loss.ravel()[finite])
    assert np.all(pts[~finite, 2] == surf.loss.ravel()[finite].max())  # diverged points sit at the top
    valid_at = text.index("SCALARS valid double 1") + 2
    np.testing.assert_array_equal(np.array(text[valid_at:valid_at + 12], dtype=float), finite.astype(float))


def test_viz_namespace_finds_the_functions():
    assert viz.contour is vs.contour and viz.surface3d is vs.surface3d and viz.to_vtk is vs.to_vtk


def test_figures_of_a_real_surface(zoo_path, digits_test, tmp_path):
    from landscape.surface import surface

    surf = surface(zoo_path("mlp-ce"), digits_test.subset(60, seed=0), x=(-1, 1, 5), y=(-1, 1, 4), progress=False)
    plot = vs.contour(surf)
    np.testing.assert_array_equal(plot.values["loss"], surf.loss)
    written = plot.save(tmp_path / "c")
    assert written[0].stat().st_size > 10_000
    assert "mlp-ce" in plot.caption and "filter" in plot.caption and "60 samples" in plot.caption


def test_cli_writes_the_surface_and_its_figures(zoo_path, tmp_path, capsys):
    from viz.cli import main

    code = main(["surface", str(zoo_path("mlp-ce")), "--grid", "4x3", "--range", "-1", "1", "-0.5", "0.5",
                 "--samples", "40", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    surf = Surface.load(tmp_path / "surface.npz")
    assert surf.loss.shape == (3, 4) and surf.y[0] == -0.5
    for name in ("contour.png", "contourf.png", "surface3d.html", "contour.json"):
        assert (tmp_path / name).exists(), name
    again = tmp_path / "again"
    assert main(["surface", str(zoo_path("mlp-ce")), "--grid", "4x3", "--range", "-1", "1", "-0.5", "0.5",
                 "--samples", "40", "--dirs", str(tmp_path / "surface.npz"), "--seed", "5",
                 "--out", str(again), "--quiet", "--no-plots"]) == 0
    # the saved directions are reused (the seed now only picks the data subset)
    np.testing.assert_array_equal(Surface.load(again / "surface.npz").directions, surf.directions)
    code = main(["surface", str(zoo_path("mlp-ce")), "--line", "--grid", "5", "--samples", "40",
                 "--out", str(tmp_path), "--quiet", "--no-plots"])
    assert code == 0 and len(Curve.load(tmp_path / "line.npz").t) == 5


@pytest.mark.parametrize("args, message", [(["--grid", "0"], "--grid"), (["--range", "1", "2", "3"], "--range"),
                                           (["--line", "--grid", "3x3"], "--grid")])
def test_cli_bad_arguments_exit_2_with_one_line(zoo_path, tmp_path, capsys, args, message):
    from viz.cli import main

    assert main(["surface", str(zoo_path("mlp-ce")), "--out", str(tmp_path), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def _overlaps(fig, legend) -> list:
    """The axes whose drawing area the legend's box intersects (after the figure is drawn)."""
    fig.canvas.draw()
    box = legend.get_window_extent()
    return [ax for ax in fig.axes if box.overlaps(ax.get_window_extent())]


def _line(t, loss, acc, name="toy", ce=None) -> Curve:
    return Curve(np.asarray(t, float), np.asarray(loss, float), np.asarray(acc, float), ce,
                 meta={"checkpoint": name, "criterion": "ce", "data": "digits/test", "n_samples": 9,
                       "directions": {"meta": {"kind": "random", "norm": "filter", "ignore": "biasbn", "seed": 0}}})


def test_curves_of_several_models_share_one_figure_and_x_range():
    a = _line(np.linspace(-1, 1, 5), [2.0, 1.0, 0.5, 1.0, np.inf], [0.5, 0.8, 0.9, 0.8, 0.1], "mlp-ce")
    b = _line(np.linspace(-0.5, 1.5, 3), [3.0, 0.7, 4.0], [0.4, 0.9, 0.2], "mlp-mam", ce=np.array([2.5, 0.6, 3.5]))
    plot = vs.curves({"ce": a, "mam": b})
    v = plot.values
    assert v["t_range"] == [-1.0, 1.5] and [c["title"] for c in v["curves"]] == ["ce", "mam"]
    np.testing.assert_array_equal(v["curves"][0]["loss"], [2.0, 1.0, 0.5, 1.0, np.nan])  # diverged: masked
    np.testing.assert_array_equal(v["curves"][1]["ce_loss"], [2.5, 0.6, 3.5])
    loss_ax, acc_ax = plot.fig.axes
    assert loss_ax.get_xlim() == acc_ax.get_xlim() == (-1.0, 1.5)  # shared x range
    # the lines drawn are the plotted values: loss, CE dashed, accuracy in the same colour per model
    drawn = {ln.get_label(): ln for ln in loss_ax.lines}
    np.testing.assert_array_equal(drawn["mam: loss (ce)"].get_ydata(), [3.0, 0.7, 4.0])
    assert drawn["mam: CE"].get_linestyle() == "--"
    acc_lines = {ln.get_label(): ln for ln in acc_ax.lines}
    np.testing.assert_array_equal(acc_lines["ce: accuracy"].get_ydata(), [0.5, 0.8, 0.9, 0.8, 0.1])
    assert acc_lines["ce: accuracy"].get_color() == drawn["ce: loss (ce)"].get_color()
    assert drawn["ce: loss (ce)"].get_color() != drawn["mam: loss (ce)"].get_color()
    (legend,) = plot.fig.legends
    assert {t.get_text() for t in legend.get_texts()} == {"ce: loss (ce)", "mam: loss (ce)", "mam: CE"}
    assert not _overlaps(plot.fig, legend), "the legend covers a panel"
    assert "ce: " in plot.caption and "mlp-ce" in plot.caption and "mlp-mam" in plot.caption


def test_single_curve_legend_stays_off_the_data():
    plot = vs.curve(_line(np.linspace(-1, 1, 5), [2.0, 1.0, 0.5, 1.0, 2.0], [0.5, 0.8, 0.9, 0.8, 0.1],
                          ce=np.array([1.0, 0.5, 0.2, 0.5, 1.0])))
    (legend,) = plot.fig.legends
    assert len(legend.get_texts()) == 3 and not _overlaps(plot.fig, legend)


def test_trajectory_axes_are_principal_components_with_their_variance(zoo_path, digits_test):
    """Li et al. label the PCA plane of a trajectory PC1/PC2 with explained variance; the shares are checked
    against numpy's SVD of the centred parameter differences."""
    import landscape as ls
    from landscape.directions import flat_parameters
    from landscape.surface import surface

    snaps = sorted((zoo_path("mlp-ce").parent / "snapshots" / "mlp-ce").glob("*.safetensors"))[::8]
    models = [ls.load_checkpoint(p, device="cpu").model for p in snaps] + [ls.load_checkpoint(zoo_path("mlp-ce"),
                                                                                                device="cpu").model]
    dirs = ls.trajectory_directions(models, n=2)
    diffs = np.stack([flat_parameters(m) - flat_parameters(models[-1]) for m in models]).astype(np.float64)
    sv = np.linalg.svd(diffs - diffs.mean(axis=0), compute_uv=False)
    share = sv ** 2 / np.sum(sv ** 2)
    np.testing.assert_allclose(dirs.meta["explained_variance_ratio"], share[:2], rtol=1e-4)
    surf = surface(zoo_path("mlp-ce"), digits_test.subset(30, seed=0), dirs, x=(-1, 1, 3), y=(-1, 1, 3),
                   verbose=False)
    plot = vs.trajectory(surf, dirs.coords)
    ax = plot.fig.axes[0]
    assert ax.get_xlabel() == f"PC1 ({100 * share[0]:.1f}% of variance)"
    assert ax.get_ylabel() == f"PC2 ({100 * share[1]:.1f}% of variance)"
    np.testing.assert_array_equal(plot.values["path"], dirs.coords)
    assert vs.contour(make_surface()).fig.axes[0].get_xlabel() == "direction 1 (a)"  # random planes stay as they were


def test_save_closes_on_request_and_never_replaces_an_input(tmp_path):
    import matplotlib.pyplot as plt

    from landscape.errors import OutputError

    plot = vs.contour(make_surface())
    victim = tmp_path / "c.json"
    victim.write_text("an input")
    with pytest.raises(OutputError, match="is also an input"):
        plot.save(tmp_path / "c", inputs=[victim])
    assert victim.read_text() == "an input" and not (tmp_path / "c.png").exists()
    assert plot.fig.number in plt.get_fignums()
    written = plot.save(tmp_path / "d", close=True)
    assert [p.name for p in written] == ["d.png", "d.json"] and plot.fig.number not in plt.get_fignums()
    assert plot.png()[:8] == b"\x89PNG\r\n\x1a\n"  # a closed figure still renders (a notebook shows it)


def test_viz_names_are_an_explicit_map():
    import importlib

    for module in set(viz._NAMES.values()):
        mod = importlib.import_module(f"viz.{module}")
        for name in getattr(mod, "__all__", []):
            assert viz._NAMES.get(name) == module, f"viz.{module}.{name} is not in viz._NAMES"
    for name, module in viz._NAMES.items():
        assert getattr(viz, name) is getattr(importlib.import_module(f"viz.{module}"), name)
    with pytest.raises(AttributeError, match="no attribute 'levels'"):
        viz.levels
