"""Figures of feature geometry: plotted values, legends, offline HTML, grids, the embed command."""
from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest

import landscape as ls
from landscape.embedding import compare_stats
from landscape.errors import ArgumentError
from viz.cli import main
from viz.embedding import class_colors, embedding, embedding_grid, hypersphere, hypersphere_grid, stats_table

CLASSES = ["cat", "dog", "owl"]


def _features(d: int, seed: int = 0, n: int = 30) -> ls.Features:
    """Three well separated classes around three random directions in ``d`` dimensions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, d))
    y = np.repeat(np.arange(3), n // 3)
    x = centres[y] * 3 + 0.3 * rng.normal(size=(len(y), d))
    return ls.Features(x=x, y=y, pred=y.copy(), classes=CLASSES,
                       meta={"checkpoint": f"toy{d}", "layer": "features", "data": "toy/test"})


def _embedding(seed: int = 0) -> ls.Embedding:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 5)
    return ls.Embedding(coords=rng.normal(size=(15, 2)) + 4 * y[:, None], y=y, pred=y, classes=CLASSES,
                        trustworthiness=0.91, knn_accuracy=0.87,
                        meta={"checkpoint": "toy", "layer": "features", "data": "toy/test", "perplexity": 30,
                              "seed": 0, "k": 10})


def test_tsne_scatter_draws_the_map_with_class_legend():
    emb = _embedding()
    plot = embedding(emb)
    ax = plot.fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == CLASSES
    drawn = np.concatenate([c.get_offsets() for c in ax.collections])
    np.testing.assert_allclose(drawn, emb.coords[np.argsort(emb.y, kind="stable")])
    colors = [matplotlib.colors.to_hex(c.get_facecolor()[0], keep_alpha=False) for c in ax.collections]
    assert colors == class_colors(3)
    np.testing.assert_array_equal(plot.values["x"], emb.coords[:, 0])
    assert plot.values["trustworthiness"] == 0.91 and plot.values["classes"] == CLASSES
    assert "perplexity 30" in plot.caption and "seed 0" in plot.caption and "toy" in plot.caption
    assert "0.910" in plot.caption and "0.870" in plot.caption
    plot.close()


def test_viz_embedding_stays_the_function_after_its_module_is_imported():
    import sys

    import viz.embedding  # noqa: F401  (binds the submodule on the package, which viz must ignore)

    plot = viz.embedding(_embedding())
    assert isinstance(plot, viz.Plot) and plot.kind == "embedding"
    assert sys.modules["viz.embedding"].stats_table is stats_table
    plot.close()


def test_embedding_grid_has_one_panel_per_checkpoint(tmp_path):
    plot = embedding_grid({"softmax": _embedding(0), "mam": _embedding(1)})
    assert [ax.get_title().splitlines()[0] for ax in plot.fig.axes] == ["softmax", "mam"]
    assert set(plot.values["panels"]) == {"softmax", "mam"} and plot.values["table"] is None
    written = plot.save(tmp_path / "grid")
    assert json.loads(written[1].read_text())["values"]["panels"]["mam"]["knn_accuracy"] == 0.87
    plot.close()
    table = compare_stats({"softmax": _features(8, 0), "mam": _features(8, 1)})
    with_table = embedding_grid({"softmax": _embedding(0), "mam": _embedding(1)}, table=table)
    assert sum(len(ax.tables) for ax in with_table.fig.axes) == 1
    assert with_table.values["table"]["mam"]["ratio"] == table.rows["mam"]["ratio"]
    with_table.close()


def test_circle_draws_unit_points_and_centre_directions():
    sph = ls.hypersphere(_features(2))
    plot = hypersphere(sph)
    assert not plot.interactive
    ax = plot.fig.axes[0]
    assert "2-d features" in ax.get_title()
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 1.0, atol=1e-6)
    ends = np.array([line.get_xydata()[-1] for line in ax.lines[1:]])  # line 0 is the unit circle
    np.testing.assert_allclose(ends, sph.centers, atol=1e-12)
    assert plot.values["stats"] == {k: sph.stats[k] for k in plot.values["stats"]}
    assert "as they are" in plot.caption
    plot.close()


def test_sphere_is_interactive_and_offline(tmp_path):
    sph = ls.hypersphere(_features(16), dim=3, projection="pca")
    plot = hypersphere(sph)
    assert plot.interactive
    assert "PCA 16->3" in plot.fig.layout.title.text
    points = [t for t in plot.fig.data if t.type == "scatter3d" and t.mode == "markers"]
    assert [t.name for t in points] == CLASSES
    np.testing.assert_allclose(np.concatenate([np.c_[t.x, t.y, t.z] for t in points]), sph.points, atol=1e-6)
    lines = [t for t in plot.fig.data if t.type == "scatter3d" and t.mode == "lines"]
    ends = np.array([[t.x[1], t.y[1], t.z[1]] for t in lines])
    np.testing.assert_allclose(ends, sph.centers, atol=1e-12)  # the centre lines stop at the sphere
    np.testing.assert_allclose(np.linalg.norm(ends, axis=1), 1.0, atol=1e-12)
    html = plot.save(tmp_path / "sphere")[0].read_text()
    assert "<script src=" not in html  # plotly.js embedded, no CDN: works offline
    assert len(html) > 1_000_000 and "Plotly.newPlot" in html
    assert "projected by PCA to 3 dimensions" in plot.caption
    # what the picture keeps, on the figure and in the caption
    fid = sph.fidelity
    assert f"{100 * fid['explained_variance']:.0f}% variance, stress {fid['stress']:.2f}" in plot.fig.layout.title.text
    assert f"angle rank corr {fid['spearman']:.2f}" in plot.fig.layout.title.text
    assert f"stress {fid['stress']:.3f} and rank correlation {fid['spearman']:.3f}" in plot.caption
    assert plot.values["fidelity"] == fid


def test_interactive_figures_fit_the_report_iframe(tmp_path):
    import re

    from viz.embedding import FRAME_HEIGHT
    from viz.report import write_index

    spheres = {"ce": ls.hypersphere(_features(8, 0), dim=3), "mam": ls.hypersphere(_features(8, 1), dim=3)}
    for plot in (hypersphere(spheres["ce"]), hypersphere_grid(spheres, interactive=True, table=False),
                 hypersphere_grid(spheres, interactive=True, table=True)):
        layout = plot.fig.layout
        # full width of the frame, a fixed height below it, the legend laid out below the panels
        assert layout.width is None and layout.autosize and layout.height == FRAME_HEIGHT
        assert layout.legend.orientation == "h" and layout.legend.yanchor == "top"
    index = write_index(tmp_path, {"title": "t", "data": "d", "seed": 0, "device": "cpu", "figures": [
        {"id": "s", "title": "sphere", "files": ["s.html"], "caption": "", "seconds": {"compute": 0, "draw": 0}}]})
    frame = int(re.search(r"\.figs iframe \{[^}]*height: (\d+)px", index.read_text()).group(1))
    assert FRAME_HEIGHT <= frame
    # plotly's page is 100 % of the frame high; its body's default margin would make the frame scroll
    html = hypersphere(spheres["ce"]).save(tmp_path / "one")[0].read_text()
    assert "<style>html, body { margin: 0; }</style>" in html


def test_static_sphere_centre_lines_end_on_the_sphere():
    sph = ls.hypersphere(_features(8), dim=3)
    plot = hypersphere(sph, interactive=False)
    ax = plot.fig.axes[0]
    ends = np.array([np.asarray(line.get_data_3d())[:, -1] for line in ax.lines])
    np.testing.assert_allclose(ends, sph.centers, atol=1e-6)
    plot.close()


def test_static_sphere_and_interactive_circle():
    sph3 = ls.hypersphere(_features(8), dim=3)
    static = hypersphere(sph3, interactive=False)
    assert not static.interactive and static.fig.axes[0].name == "3d"
    static.close()
    circle = hypersphere(ls.hypersphere(_features(8), dim=2), interactive=True)
    assert circle.interactive and {t.type for t in circle.fig.data} == {"scatter"}


def test_stats_table_shows_the_computed_statistics():
    table = compare_stats({"ce": _features(8, 0), "mam": _features(8, 1)})
    plot = stats_table(table)
    assert list(plot.values) == ["ce", "mam"]
    assert plot.values["mam"]["ratio"] == table.rows["mam"]["ratio"]
    cells = plot.fig.axes[0].tables[0].get_celld()
    assert cells[(1, 0)].get_text().get_text() == "ce"
    assert cells[(2, 2)].get_text().get_text() == f"{table.rows['mam']['compactness']:.2f}"
    plot.close()
    interactive = stats_table(table, interactive=True)
    assert list(interactive.fig.data[0].cells.values[0]) == ["ce", "mam"]


@pytest.mark.parametrize("interactive", [True, False])
def test_grid_warns_on_the_figure_when_the_pictures_rank_separation_the_other_way(interactive):
    a, b = ls.hypersphere(_features(8, 0), dim=3), ls.hypersphere(_features(8, 1), dim=3)
    # make the drawn separation rank them the other way from the full space
    full = sorted([("ce", a), ("mam", b)], key=lambda kv: -kv[1].stats["separation"])
    (hi, s_hi), (lo, s_lo) = full
    s_hi.fidelity["separation_drawn"], s_lo.fidelity["separation_drawn"] = 10.0, 20.0
    with pytest.warns(UserWarning, match=f"rank the class separation {lo} > {hi}"):
        plot = hypersphere_grid({hi: s_hi, lo: s_lo}, interactive=interactive)
    assert plot.caption.startswith("Warning: the pictures rank") and not plot.values["ranking"]["agree"]
    if interactive:
        assert any("Warning" in (a.text or "") for a in plot.fig.layout.annotations)
    else:
        assert plot.fig._suptitle.get_text().startswith("Warning") and plot.fig._suptitle.get_color() == "#b00020"
        plot.close()


@pytest.mark.parametrize("interactive", [True, False])
def test_sphere_grid_puts_the_table_beside_the_panels(interactive):
    spheres = {"ce": ls.hypersphere(_features(8, 0), dim=3), "mam": ls.hypersphere(_features(8, 1), dim=3)}
    plot = hypersphere_grid(spheres, interactive=interactive)
    assert set(plot.values["panels"]) == {"ce", "mam"}
    assert plot.values["table"]["ce"]["separation"] == spheres["ce"].stats["separation"]
    if interactive:
        assert [t.type for t in plot.fig.data].count("table") == 1
        assert {t.name for t in plot.fig.data if t.type == "scatter3d" and t.showlegend} == set(CLASSES)
    else:
        assert sum(len(ax.tables) for ax in plot.fig.axes) == 1
        plot.close()


def test_grid_of_mixed_dimensions_is_refused():
    with pytest.raises(ArgumentError, match="same dimension"):
        hypersphere_grid([ls.hypersphere(_features(8), dim=2), ls.hypersphere(_features(8), dim=3)])
    with pytest.raises(ArgumentError, match="nothing to draw"):
        embedding_grid({})


# -- the command ---------------------------------------------------------------------------
def test_embed_command_writes_results_figures_and_table(zoo_path, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["embed", str(zoo_path("mlp-ce")), str(zoo_path("cnn-ce")), "--method", "sphere",
                 "--samples", "120", "--out", str(out)])
    assert code == 0
    for name in ("mlp-ce-sphere.npz", "mlp-ce-sphere.html", "cnn-ce-sphere.html", "sphere-grid.html",
                 "stats.npz", "stats.md", "stats-table.png"):
        assert (out / name).exists(), name
    sph = ls.Sphere.load(out / "mlp-ce-sphere.npz")
    assert sph.points.shape == (120, 3) and sph.projection == "pca"
    table = ls.Result.load(out / "stats.npz")
    cnn = ls.Sphere.load(out / "cnn-ce-sphere.npz")
    for key in ("compactness", "separation", "ratio", "silhouette"):
        assert table.rows["mlp-ce"][key] == pytest.approx(sph.stats[key])
        assert table.rows["cnn-ce"][key] == pytest.approx(cnn.stats[key])
    assert "| mlp-ce |" in capsys.readouterr().out


def test_embed_command_warns_about_a_misleading_picture_and_offers_the_stress_projection(zoo_path, tmp_path, capsys):
    models = [str(zoo_path("mlp-ce")), str(zoo_path("mlp-mam-softmax"))]
    assert main(["embed", *models, "--method", "sphere", "--out", str(tmp_path / "pca"), "--no-plots"]) == 0
    captured = capsys.readouterr()
    assert "pca picture keeps 40% variance, angle stress 0.48" in captured.out
    assert "warning: the pictures rank the class separation mlp-ce > mlp-mam-softmax" in captured.err
    assert main(["embed", *models, "--method", "sphere", "--projection", "stress", "--out", str(tmp_path / "st"),
                 "--no-plots"]) == 0
    captured = capsys.readouterr()
    assert "stress picture keeps angle stress" in captured.out and "warning" not in captured.err
    assert ls.Sphere.load(tmp_path / "st" / "mlp-ce-sphere.npz").projection == "stress"


def test_embed_command_tsne_onto_the_train_map(zoo_path, tmp_path):
    out = tmp_path / "tsne"
    code = main(["embed", str(zoo_path("mlp-ce")), "--method", "tsne", "--map-split", "train",
                 "--samples", "150", "--out", str(out), "--quiet", "--no-plots"])
    assert code == 0
    emb = ls.Embedding.load(out / "mlp-ce-tsne.npz")
    assert emb.coords.shape == (150, 2) and emb.meta["placed_on"].startswith("digits/train")
    assert emb.knn_accuracy > 0.85
    assert not (out / "mlp-ce-tsne.png").exists()


def test_embed_command_wrong_layer_lists_layers(zoo_path, tmp_path, capsys):
    code = main(["embed", str(zoo_path("mlp-ce")), "--layer", "body.9", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "no layer 'body.9'" in err and "Available: body, body.0" in err and "Traceback" not in err


# -- a real browser, offline ---------------------------------------------------------------
@pytest.mark.browser
@pytest.mark.slow
def test_sphere_grid_renders_offline_in_chromium(tmp_path):
    import shutil

    binary, chromedriver = shutil.which("chromium") or shutil.which("google-chrome"), shutil.which("chromedriver")
    if not binary or not chromedriver:
        pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    spheres = [ls.hypersphere(_features(8, 0), dim=3), ls.hypersphere(_features(8, 1), dim=3)]
    page = hypersphere_grid(spheres).save(tmp_path / "grid")[0]
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    # no name resolves: anything fetched from the network would fail and log an error
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
                 "--disable-dev-shm-usage", "--no-first-run", "--host-resolver-rules=MAP * ~NOTFOUND"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=opts)
    try:
        driver.get(page.as_uri())
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(
            "return typeof window.Plotly !== 'undefined' && document.querySelectorAll('.gl-container').length > 0"))
        legend = driver.execute_script("return Array.from(document.querySelectorAll('g.legend .traces'))"
                                       ".map(t => t.textContent)")
        assert legend == CLASSES
        assert driver.execute_script("return document.querySelectorAll('table, .table').length") >= 1
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        # in a report's 640 px iframe the page neither scrolls nor cuts its legend
        from viz.report import write_index

        index = write_index(tmp_path, {"title": "t", "data": "d", "seed": 0, "device": "cpu", "figures": [
            {"id": "g", "title": "grid", "files": [page.name], "caption": "", "seconds": {"compute": 0, "draw": 0}}]})
        driver.set_window_size(1300, 900)
        driver.get(index.as_uri())
        driver.switch_to.frame(driver.find_element("tag name", "iframe"))
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return !!document.querySelector('g.legend')"))
        doc, legend_box = driver.execute_script(
            "var e = document.documentElement, l = document.querySelector('g.legend').getBoundingClientRect();"
            "return [[e.scrollHeight, e.clientHeight, e.scrollWidth, e.clientWidth], [l.bottom, l.right]]")
        assert doc[0] <= doc[1] and doc[2] <= doc[3]
        assert legend_box[0] <= doc[1] and legend_box[1] <= doc[3]
    finally:
        driver.quit()
