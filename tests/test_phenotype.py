"""Loss phenotypes: hand-computed grids, the papers' statements about shapes, figures and the CLI."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
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


def test_r0_has_its_maximum_at_yh_1():
    # seed 003: R0 penalises most when the prediction matches the target
    assert np.argmax(ls.phenotype("r0").binary_raw) == 50


@pytest.mark.parametrize("name", ["a0", "a1", "a2", "m0", "m1", "m2", "ce"])
def test_losses_without_yh_over_y_decrease_monotonically_at_y_1(name):
    # the mixup and "all" losses and CE: largest at yh = 0, smallest at yh = 1
    assert np.all(np.diff(ls.phenotype(name).binary_raw) < 0)


@pytest.mark.parametrize("name", ["c0", "c2"])
def test_cutout_losses_have_a_hook_near_yh_1(name):
    b = ls.phenotype(name).binary_raw
    assert np.all(np.diff(b[:-1]) < 0)  # decreasing towards yh ~ 1 ...
    assert b[-1] > b[-2]                # ... then turning up at the end


def test_m1_and_m2_have_the_same_normalised_shape():
    m1, m2 = ls.phenotype("m1"), ls.phenotype("m2")
    assert np.abs(m1.binary_normalized - m2.binary_normalized).max() < 0.01
    assert np.abs(m1.binary_raw - m2.binary_raw).min() > 0.3  # but a different scale


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
    plot = viz.phenotype_curves(phs)
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


def test_interactive_surface_is_self_contained_html(tmp_path):
    import viz

    ph = ls.phenotype("A2", 11)
    plot = viz.phenotype_surface(ph, interactive=True)
    np.testing.assert_array_equal(np.asarray(plot.fig.data[0].z), ph.raw)
    html = plot.save(tmp_path / "a2")[0].read_text()
    # plotly.js itself is embedded: no script is loaded from the network
    assert not re.search(r"<script[^>]*\bsrc=", html)
    assert "Plotly.newPlot" in html and len(html) > 1_000_000


def test_static_surface_and_difference_plots_hold_their_values():
    import viz

    ph = ls.phenotype("A2", 11)
    plot = viz.phenotype_surface(ph, interactive=False, normalized=True)
    np.testing.assert_array_equal(plot.values["z"], ph.normalized)
    plot.close()
    diff = ls.phenotype_difference("A2", "CE", 11)
    plot = viz.phenotype_difference(diff)
    np.testing.assert_array_equal(plot.values["difference"], diff.difference)
    lo, hi = plot.values["color_limits"]
    assert lo == -hi == -np.abs(diff.difference).max()  # diverging map centred on 0
    plot.close()


def test_cli_writes_png_html_and_json(tmp_path):
    from viz.cli import main

    assert main(["phenotype", "A2", "CE", "--resolution", "11", "--out", str(tmp_path), "--quiet"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    for stem in ("curves", "surface-A2", "surface-CE", "difference-A2-CE"):
        assert f"{stem}.png" in names and f"{stem}.json" in names, names
    assert "surface-A2.html" in names and "difference-A2-CE.html" in names
    values = json.loads((tmp_path / "difference-A2-CE.json").read_text())["values"]
    np.testing.assert_allclose(values["difference"], ls.phenotype_difference("A2", "CE", 11).difference)


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
