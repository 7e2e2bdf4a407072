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
    finite = surf.loss[np.isfinite(surf.loss)]
    np.testing.assert_allclose(v["levels"], np.linspace(finite.min(), finite.max(), 7))
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


def test_log_levels_are_geometric():
    plot = vs.contourf(make_surface(), log=True, n_levels=5)
    lv = plot.values["levels"]
    np.testing.assert_allclose(lv[1:] / lv[:-1], np.full(4, lv[1] / lv[0]))
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
    a, b = make_surface(seed=0), make_surface(seed=3)
    plot = vs.compare([a, b], titles=["CE", "MAM"], n_levels=9)
    finite = np.concatenate([s.loss[np.isfinite(s.loss)] for s in (a, b)])
    np.testing.assert_allclose(plot.values["levels"], np.linspace(finite.min(), finite.max(), 9))
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
