"""Loss phenotypes: hand-computed grids, the papers' statements about shapes, figures and the CLI."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from scipy import special as sp

import landscape as ls
from landscape.errors import ArgumentError, LossError
from landscape.phenotype import Phenotype, PhenotypeDifference

EPS = 1e-7
GRID = np.linspace(0, 1, 51)


# -- the two-class convention, by hand -----------------------------------------------------
def test_ce_phenotype_is_the_two_class_sum_by_hand():
    ph = ls.phenotype("CE")
    assert ph.raw.shape == (51, 51) and np.array_equal(ph.y, GRID) and np.array_equal(ph.yhat, GRID)
    j, i = 15, 30  # y = 0.3, yhat = 0.6 ; raw[i, j] = L(y[j], yhat[i])
    expected = -0.3 * math.log(0.6 + EPS) - 0.7 * math.log(0.4 + EPS)
    assert ph.raw[i, j] == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(ph.binary_raw, -np.log(GRID + EPS) - 0.0 * np.log(1 - GRID + EPS), rtol=1e-12)
    np.testing.assert_array_equal(ph.binary_raw, ph.raw[:, -1])


def test_adma_binary_phenotype_is_e_minus_exp_p_to_the_a():
    ph = ls.phenotype("adma", a=0.1)
    np.testing.assert_allclose(ph.binary_raw, math.e - np.exp(GRID ** 0.1), rtol=1e-12, atol=1e-15)
    assert ph.meta["label"] == "adma(a=0.1)" and ph.meta["params"] == {"a": 0.1}


def test_a2_binary_value_against_scipy():
    ph = ls.phenotype("A2")
    # y = 1, yh = 0.5: the target class gives 1 / i0e(ln 0.5), the other class has y = 0
    expected = 1 / (sp.i0e(math.log(0.5 + EPS)) + EPS)
    assert ph.binary_raw[25] == pytest.approx(expected, rel=1e-9)
    assert ph.meta["loss"] == "A2"


def test_normalization_is_min_max_over_the_plotted_grid():
    ph = ls.phenotype("b1", resolution=21)
    raw, b = ph.raw, ph.binary_raw
    np.testing.assert_allclose(ph.normalized, (raw - raw.min()) / (raw.max() - raw.min()))
    np.testing.assert_allclose(ph.binary_normalized, (b - b.min()) / (b.max() - b.min()))
    assert ph.normalized.min() == 0 and ph.normalized.max() == 1


def test_combined_spec_phenotype_is_the_weighted_sum():
    combo = ls.phenotype("0.5*ce + 0.25*a2", resolution=11)
    parts = 0.5 * ls.phenotype("ce", resolution=11).raw + 0.25 * ls.phenotype("a2", resolution=11).raw
    np.testing.assert_allclose(combo.raw, parts, rtol=1e-12)


def test_sce_phenotype_by_hand():
    ph = ls.phenotype("sce", resolution=5)  # yhat = 0.25 at row 1, y = 1 at column 4
    p, y = np.array([0.25, 0.75]), np.array([1.0, 0.0])
    ce = -math.log(0.25 + EPS)
    alpha, weight = np.mean((y - p) ** 2), np.linalg.norm((1 - y) - p)
    assert ph.raw[1, 4] == pytest.approx(0.5 * ce + 0.5 * alpha * weight * ce, rel=1e-9)


# -- user functions and errors -------------------------------------------------------------
def test_a_users_numpy_function_works():
    ph = ls.phenotype(lambda y, yh: (y - yh) ** 2, resolution=11)
    y, yh = np.meshgrid(np.linspace(0, 1, 11), np.linspace(0, 1, 11))
    np.testing.assert_allclose(ph.raw, 2 * (y - yh) ** 2)


def test_a_users_torch_function_works():
    import torch

    def torch_ce(y, yh):
        return -y * torch.log(yh + 1e-7)

    np.testing.assert_allclose(ls.phenotype(torch_ce).raw, ls.phenotype("ce").raw, rtol=1e-12)
    assert ls.phenotype(torch_ce).meta["label"] == "torch_ce"


def test_non_finite_user_function_is_refused_with_the_fix():
    with pytest.raises(ArgumentError, match=r"not finite at y=.*eps"):
        ls.phenotype(lambda y, yh: -y * np.log(yh))


@pytest.mark.parametrize("name", ["am-softmax", "l-softmax", "hinge", "mam-softmax", "0.5*ce + 0.5*hinge"])
def test_margin_and_logit_losses_have_no_phenotype(name):
    with pytest.raises(LossError, match="no phenotype"):
        ls.phenotype(name)


def test_unknown_loss_and_bad_resolution():
    with pytest.raises(LossError, match="Available"):
        ls.phenotype("A7")
    with pytest.raises(ArgumentError, match="resolution"):
        ls.phenotype("ce", resolution=1)


# -- the seeds' statements about shapes ----------------------------------------------------
def test_a2_minus_ce_difference_matches_seed_003_figure_8():
    diff = ls.phenotype_difference("A2", "CE")
    # A2 lies above CE near yh ~ 0 at y = 1 and the corner itself is (1 - 1) = 0
    assert diff.binary_difference[0] == pytest.approx(0.0, abs=1e-12)
    assert np.all(diff.binary_difference[1:20] > 0)
    # the paper: the largest difference, 0.188, is at yh = 0.02 (y = 1); the two-class
    # grid is symmetric, so (y, yh) = (0, 0.98) ties with it
    k = np.argmax(diff.binary_difference)
    assert GRID[k] == pytest.approx(0.02)
    assert diff.binary_difference[k] == pytest.approx(0.17724329, rel=1e-6)
    assert diff.meta["max"] == pytest.approx(0.17724329, rel=1e-6)
    np.testing.assert_allclose(diff.difference, diff.difference[::-1, ::-1], atol=1e-12)


def test_difference_is_antisymmetric_and_zero_with_itself():
    ab, ba = ls.phenotype_difference("a0", "m1", 11), ls.phenotype_difference("m1", "a0", 11)
    np.testing.assert_allclose(ab.difference, -ba.difference)
    assert np.all(ls.phenotype_difference("a1", "a1", 11).difference == 0)


def test_difference_refuses_different_grids():
    with pytest.raises(ArgumentError, match="different grids"):
        ls.phenotype_difference(ls.phenotype("ce", 11), ls.phenotype("a2", 21))


# Each statement below is pinned under the reading where docs/evolved-losses.md finds it (or not);
# the table there is regenerated by landscape.losses.evidence, whose measures these tests repeat by hand.
RATIO = ["b0", "b1", "b2", "c0", "c1", "c2", "r0", "r1", "r2"]


def test_default_reading_drops_the_ratio_terms_of_classes_without_target_mass():
    # support reading: at y = 1 the second class has y = 0, so its yh / (0 + eps) term is left out
    for name in RATIO:
        ph, target_only = ls.phenotype(name), ls.losses.get(name, reading="literal")
        with torch.no_grad():
            by_hand = target_only.elementwise(torch.ones(51, dtype=torch.float64), torch.as_tensor(GRID)).numpy()
        np.testing.assert_allclose(ph.binary_raw, by_hand, rtol=1e-12, atol=1e-12)
    # the literal reading adds the non-target term yh * 1e7: C1 then rises with the target probability
    literal = ls.phenotype("c1", reading="literal").binary_raw
    assert np.all(np.diff(literal[:-1]) > 0) and literal[-2] - literal[0] > 3
    assert np.all(np.diff(ls.phenotype("c1").binary_raw) < 0)


def test_only_r1_peaks_at_yh_1_under_the_default_reading_and_r0_only_under_the_literal_one():
    # seed 003 says only R0 peaks at yh = 1; the support reading gives one loss there too, but R1
    names = RATIO + ["m0", "m1", "m2", "a0", "a1", "a2"]
    peaks = [n for n in names if GRID[np.argmax(ls.phenotype(n).binary_raw)] >= 0.9]
    assert peaks == ["r1"]
    # R0's peak at yh = 1 exists only with the non-target term at the grid's last point (literal reading)
    assert np.argmax(ls.phenotype("r0", reading="literal").binary_raw) == 50
    assert np.argmax(ls.phenotype("r0").binary_raw) == 0


@pytest.mark.parametrize("name", ["a0", "a1", "a2", "m0", "m1", "m2", "ce"])
def test_losses_without_yh_over_y_decrease_monotonically_at_y_1(name):
    # the mixup and "all" losses and CE: largest at yh = 0, smallest at yh = 1, under every reading
    assert np.all(np.diff(ls.phenotype(name).binary_raw) < 0)


def test_the_cutout_hook_is_small_only_for_c0_on_the_authors_grid():
    def hook(b):
        low = int(np.argmin(b))
        return GRID[low], (b[-1] - b[low]) / np.ptp(b)

    # literal reading on the closed grid: the hook is a last-step jump of the whole range
    for name in ("c0", "c2"):
        at, rise = hook(ls.phenotype(name, reading="literal").binary_raw)
        assert at == pytest.approx(0.98) and rise == pytest.approx(1.0)
    # the authors' grid (yh from eps to 1 - eps) leaves C0 a little hook: 4.5 % of its range
    at, rise = hook(ls.phenotype("c0", reading="literal", grid="open").binary_raw)
    assert at == pytest.approx(0.98, abs=1e-6) and rise == pytest.approx(0.0448, abs=5e-4)
    # the default reading has no hook at all: the cutout losses fall monotonically
    for name in ("c0", "c1", "c2"):
        assert np.all(np.diff(ls.phenotype(name).binary_raw) < 0)


def test_m1_and_m2_have_the_same_normalised_shape():
    m1, m2 = ls.phenotype("m1"), ls.phenotype("m2")
    assert np.abs(m1.binary_normalized - m2.binary_normalized).max() < 0.01
    assert np.abs(m1.binary_raw - m2.binary_raw).min() > 0.3  # but a different scale


def test_open_grid_runs_the_predictions_from_eps_and_keeps_targets_at_0_and_1():
    ph = ls.phenotype("ce", 11, grid="open")
    assert ph.yhat[0] == EPS and ph.yhat[-1] == 1 - EPS and ph.y[0] == 0.0 and ph.y[-1] == 1.0
    assert ph.binary_raw[0] == pytest.approx(-math.log(2 * EPS), rel=1e-12)  # -ln(|eps| + eps)
    assert ph.edges.tolist() == [True] + [False] * 9 + [True]
    with pytest.raises(ArgumentError, match="grid"):
        ls.phenotype("ce", grid="half-open")


def test_phenotype_round_trips_through_save(tmp_path):
    ph = ls.phenotype("A2", resolution=7)
    back = Phenotype.load(ph.save(tmp_path / "a2"))
    np.testing.assert_array_equal(back.raw, ph.raw)
    assert back.meta == ph.meta
    diff = ls.phenotype_difference("A2", "CE", 7)
    back = PhenotypeDifference.load(diff.save(tmp_path / "d"))
    np.testing.assert_array_equal(back.difference, diff.difference)


# -- figures -------------------------------------------------------------------------------
def test_curves_plot_every_loss_raw_and_normalised(tmp_path):
    import viz

    phs = [ls.phenotype(f"adma(a={a})", 21) for a in (0.1, 0.3, 0.5)] + [ls.phenotype("CE", 21)]
    plot = viz.phenotype_curves(phs, endpoints="include")
    assert plot.kind == "phenotype_curves"
    np.testing.assert_array_equal(plot.values["yhat"], phs[0].yhat)
    np.testing.assert_array_equal(plot.values["raw"]["adma(a=0.3)"], phs[1].binary_raw)
    np.testing.assert_array_equal(plot.values["normalized"]["CE"], phs[3].binary_normalized)
    axes = plot.fig.axes
    assert [ax.get_title() for ax in axes[:2]] == ["raw", "normalised"]
    assert len(axes[0].lines) == 4
    np.testing.assert_array_equal(axes[1].lines[3].get_ydata(), phs[3].binary_normalized)
    paths = plot.save(tmp_path / "curves")
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths[1].read_text())["values"]["raw"]["CE"][0] == pytest.approx(-math.log(EPS))
    plot.close()


def test_figures_leave_the_endpoint_walls_out_so_the_drawn_range_is_the_real_one():
    import viz

    ce = ls.phenotype("CE")
    plot = viz.phenotype_curves([ce])
    # CE's wall -ln(eps) = 16.1 at yh = 0 is not drawn; the drawn curve starts at yh = 0.02
    np.testing.assert_array_equal(plot.values["yhat"], GRID[1:-1])
    drawn = plot.fig.axes[0].lines[0].get_ydata()
    assert drawn.max() == pytest.approx(-math.log(0.02 + EPS)) and drawn.max() < 4.0
    assert "left out" in plot.caption
    plot.close()
    marked = viz.phenotype_curves([ce], endpoints="mark")
    np.testing.assert_allclose(marked.values["endpoints"]["raw"]["CE"], [-math.log(EPS), -math.log(1 + EPS)])
    assert marked.fig.axes[0].lines[1].get_marker() == "o" and marked.fig.axes[0].lines[1].get_linestyle() == "None"
    marked.close()
    c0 = viz.phenotype_surface(ls.phenotype("c0", reading="literal"), interactive=False)
    # the literal C0's wall at yh = 1 (16.3) dominated the 3-D panel; without it the surface tops at yh = 0.02
    assert c0.values["z"].shape == (49, 51) and c0.values["z"].max() < 5.0
    assert ls.phenotype("c0", reading="literal").raw[-1].max() > 16
    c0.close()
    with pytest.raises(ArgumentError, match="endpoints"):
        viz.phenotype_surface(ce, endpoints="mark")


def test_interactive_surface_is_self_contained_html(tmp_path):
    import viz

    ph = ls.phenotype("A2", 11)
    plot = viz.phenotype_surface(ph, interactive=True)
    np.testing.assert_array_equal(np.asarray(plot.fig.data[0].z), ph.raw[1:-1])
    np.testing.assert_array_equal(np.asarray(plot.fig.data[0].y), ph.yhat[1:-1])
    html = plot.save(tmp_path / "a2")[0].read_text()
    # plotly.js itself is embedded: no script is loaded from the network
    assert not re.search(r"<script[^>]*\bsrc=", html)
    assert "Plotly.newPlot" in html and len(html) > 1_000_000


def test_difference_plot_draws_the_real_maximum_with_the_whole_colour_bar():
    import matplotlib
    import viz

    ph = ls.phenotype("A2", 11)
    plot = viz.phenotype_surface(ph, interactive=False, normalized=True, endpoints="include")
    np.testing.assert_array_equal(plot.values["z"], ph.normalized)
    plot.close()
    diff = ls.phenotype_difference("A2", "CE")
    plot = viz.phenotype_difference(diff)
    drawn = diff.difference[1:-1]
    np.testing.assert_array_equal(plot.values["difference"], drawn)
    # no rows of exact zeros next to rows of 0.17: the drawn rows start at yh = 0.02
    assert np.abs(plot.values["difference"]).max(axis=1).min() > 1e-3
    # A2 - CE is one-signed here, so the colour bar runs from 0 (white, the centre colour) to the maximum
    lo, hi = plot.values["color_limits"]
    assert lo == 0.0 and hi == pytest.approx(drawn.max()) and drawn.min() >= 0
    mesh = plot.fig.axes[1].collections[0]
    assert mesh.norm.vmin == 0.0 and mesh.norm.vmax == pytest.approx(drawn.max())
    white = matplotlib.colormaps["RdBu_r"](0.5)
    np.testing.assert_allclose(mesh.cmap(mesh.norm(0.0)), white, atol=1e-2)
    np.testing.assert_allclose(mesh.cmap(mesh.norm(drawn.max())), matplotlib.colormaps["RdBu_r"](1.0), atol=1e-2)
    # the caption's maximum is the paper's corner, with its mirror image named
    assert plot.values["max"] == pytest.approx(0.17724329, rel=1e-6)
    assert "Largest difference 0.177 at y = 1, ŷ = 0.02" in plot.caption and "mirror image y = 0" in plot.caption
    plot.close()
    # both signs: a two-slope norm, 0 at the centre, the bar spanning exactly the data
    mixed = viz.phenotype_difference(ls.phenotype_difference("a0", "m1", 21))
    lo, hi = mixed.values["color_limits"]
    data = mixed.values["difference"]
    assert lo == data.min() < 0 < data.max() == hi
    norm = mixed.fig.axes[1].collections[0].norm
    assert norm(0.0) == pytest.approx(0.5) and norm(lo) == 0.0 and norm(hi) == 1.0
    mixed.close()


def test_cli_writes_png_html_and_json(tmp_path):
    from viz.cli import main

    assert main(["phenotype", "A2", "CE", "--resolution", "11", "--out", str(tmp_path), "--quiet"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    for stem in ("curves", "surface-A2", "surface-CE", "difference-A2-CE"):
        assert f"{stem}.png" in names and f"{stem}.json" in names, names
    assert "surface-A2.html" in names and "difference-A2-CE.html" in names
    values = json.loads((tmp_path / "difference-A2-CE.json").read_text())["values"]
    np.testing.assert_allclose(values["difference"], ls.phenotype_difference("A2", "CE", 11).difference[1:-1])


def test_cli_reports_a_margin_loss_as_a_user_error(tmp_path, capsys):
    from viz.cli import main

    assert main(["phenotype", "am-softmax", "--out", str(tmp_path), "--quiet"]) == 2
    assert "no phenotype" in capsys.readouterr().err


def test_label_names_a_users_function_and_panels_select_the_figure():
    import viz

    ph = ls.phenotype(lambda y, yh: (y - yh) ** 2, resolution=11, label="squared error")
    assert ph.label == "squared error"
    plot = viz.phenotype_curves([ph, ls.phenotype("CE", 11)], panels=("normalized",))
    assert len(plot.fig.axes) == 1 and set(plot.values) == {"yhat", "normalized"}
    assert plot.fig.axes[0].lines[1].get_linestyle() == "--"  # CE is the dashed reference
    plot.close()
    with pytest.raises(ArgumentError, match="panels"):
        viz.phenotype_curves([ph], panels=("log",))
