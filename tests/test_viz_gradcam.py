"""Grad-CAM figures (viz.gradcam) and the ``landscape gradcam`` command.

Most tests draw hand-made CAMs, so the numbers a figure should show are known exactly;
the CLI tests run the shipped ``cnn`` and ``resnet`` checkpoints on a few images.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import landscape as ls
from landscape.errors import ArgumentError
from landscape.gradcam import CAM, gradcam
from viz.cli import main
from viz.gradcam import gradcam_compare, gradcam_grid


def make_cam(n=3, guided=True, labels=(2, 1, 0), seed=0, channels=1) -> CAM:
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(n, channels, 4, 4)).astype(np.float32)
    maps = rng.uniform(size=(n, 4, 4)).astype(np.float32)
    g = rng.normal(size=(n, channels, 4, 4)).astype(np.float32) if guided else None
    if g is not None:
        g[-1] = 0  # an all-zero guided map must still draw (scale 1, not 0)
    return CAM(images=images, maps=maps, guided=g, raw=None,
               pred=np.array([2, 0, 0][:n]), target=np.array([2, 0, 1][:n]),
               confidence=np.array([0.97123, 0.5, 0.25][:n], dtype=np.float32),
               labels=None if labels is None else np.array(labels[:n]), classes=["zero", "one", "two"],
               meta={"method": "guided-gradcam" if guided else "gradcam", "layer": "conv", "layer_shape": [2, 2],
                     "checkpoint": "hand", "data": "made up"})


def panels(plot, row):
    """The axes of one row of the figure's panel grid (colour bars excluded)."""
    grid = [ax for ax in plot.fig.axes if ax.get_label() != "<colorbar>"]
    cols = len(plot.values["pred"]) if "pred" in plot.values else len(plot.values["images"])
    return grid[row * cols:(row + 1) * cols]


def test_grid_draws_the_cam_values():
    cam = make_cam()
    plot = gradcam_grid(cam)
    np.testing.assert_array_equal(plot.values["maps"], cam.maps)
    np.testing.assert_array_equal(plot.values["guided"], cam.guided)
    # the drawn pixels are exactly the values: image row, heat map on top of the image, guided row
    for i, ax in enumerate(panels(plot, 0)):
        np.testing.assert_array_equal(ax.images[0].get_array(), cam.images[i, 0])
    for i, ax in enumerate(panels(plot, 1)):
        np.testing.assert_array_equal(ax.images[1].get_array(), cam.maps[i])
        assert ax.images[1].get_interpolation() == "nearest"
    scale = np.abs(cam.guided).reshape(3, -1).max(1)
    np.testing.assert_allclose(plot.values["guided_scale"], [scale[0], scale[1], 1.0])
    for i, ax in enumerate(panels(plot, 2)):
        assert ax.images[0].get_clim() == pytest.approx((-plot.values["guided_scale"][i],
                                                         plot.values["guided_scale"][i]))
    plot.close()


def test_titles_give_class_confidence_and_mistakes():
    plot = gradcam_grid(make_cam())
    assert plot.values["titles"] == ["two (97.1%)", "zero (50.0%)\ntrue one", "zero (25.0%)\nmap for one"]
    colors = [ax.title.get_color() for ax in panels(plot, 0)]
    assert colors == ["black", "tab:red", "black"]
    assert "hand" in plot.caption and "conv" in plot.caption and "given" in plot.caption
    plot.close()


def test_grid_without_guided_has_two_rows_and_honours_max_images():
    plot = gradcam_grid(make_cam(guided=False, labels=None), max_images=2)
    assert len(panels(plot, 0)) == 2 and len(panels(plot, 2)) == 0
    assert "guided" not in plot.values and "labels" not in plot.values
    assert plot.values["maps"].shape == (2, 4, 4)
    plot.close()


def test_colour_images_are_drawn_as_rgb():
    cam = make_cam(channels=3)
    plot = gradcam_grid(cam)
    np.testing.assert_array_equal(panels(plot, 0)[0].images[0].get_array(), cam.images[0].transpose(1, 2, 0))
    guided = panels(plot, 2)[0].images[0].get_array()
    np.testing.assert_allclose(
        guided, np.clip(0.5 + cam.guided[0].transpose(1, 2, 0) / (2 * np.abs(cam.guided[0]).max()), 0, 1), rtol=1e-6)
    plot.close()


def test_compare_rows_values_and_errors():
    a, b = make_cam(seed=0), make_cam(seed=0)
    b.maps = b.maps[:, ::-1].copy()
    plot = gradcam_compare({"CE": a, "MAM": b}, guided=True)
    assert len([ax for ax in plot.fig.axes if ax.get_label() != "<colorbar>"]) == 5 * 3
    np.testing.assert_array_equal(plot.values["CE/maps"], a.maps)
    np.testing.assert_array_equal(plot.values["MAM/maps"], b.maps)
    np.testing.assert_array_equal(plot.values["MAM/guided"], b.guided)
    assert "CE vs MAM" in plot.fig._suptitle.get_text()
    plot.close()
    with pytest.raises(ArgumentError, match="same images"):
        gradcam_compare({"CE": a, "other": make_cam(seed=1)})
    with pytest.raises(ArgumentError, match="guided-gradcam"):
        gradcam_compare({"CE": a, "plain": make_cam(seed=0, guided=False)}, guided=True)
    with pytest.raises(ArgumentError, match="at least one"):
        gradcam_compare({})
    with pytest.raises(ArgumentError, match="CAM"):
        gradcam_grid(a.maps)


def test_plot_save_writes_png_and_values(tmp_path):
    plot = gradcam_grid(make_cam())
    png, js = plot.save(tmp_path / "grid")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(js.read_text())
    assert saved["kind"] == "gradcam_grid"
    np.testing.assert_allclose(saved["values"]["confidence"], [0.97123, 0.5, 0.25], rtol=1e-6)
    plot.close()


# -- the command ------------------------------------------------------------------------------------
def test_cli_compares_two_checkpoints(zoo_path, tmp_path, capsys):
    cnn, resnet = zoo_path("cnn-ce"), zoo_path("resnet-ce")
    code = main(["gradcam", str(cnn), str(resnet), "--indices", "0", "7", "--device", "cpu", "--out", str(tmp_path)])
    assert code == 0
    assert "body.relu3" in capsys.readouterr().out
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted([f"gradcam-{n}.{ext}" for n in ("cnn-ce", "resnet-ce") for ext in ("png", "json", "npz")]
                             + ["gradcam-compare.png", "gradcam-compare.json"])
    cam = CAM.load(tmp_path / "gradcam-cnn-ce.npz")
    data = ls.load_dataset("digits", split="test")
    np.testing.assert_array_equal(cam.images, data.x[[0, 7]])
    assert cam.meta["indices"] == [0, 7] and cam.meta["method"] == "guided-gradcam"
    direct = gradcam(ls.load_checkpoint(cnn, device="cpu"), data.x[[0, 7]], method="guided-gradcam")
    np.testing.assert_allclose(cam.maps, direct.maps, atol=1e-6)
    values = json.loads((tmp_path / "gradcam-compare.json").read_text())["values"]
    np.testing.assert_allclose(values["cnn-ce/maps"], cam.maps, atol=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["--layer", "body.conv9"], "Did you mean 'body.conv3'"),
    (["--indices", "5000"], "outside the 360 images"),
    (["--images", "0"], "--images must be >= 1"),
    (["--target", "12"], r"\[0, 9\]"),
])
def test_cli_user_mistakes_exit_2_with_one_line(zoo_path, tmp_path, capsys, argv, message):
    code = main(["gradcam", str(zoo_path("cnn-ce")), "--device", "cpu", "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("landscape gradcam: error:") and len(err.strip().splitlines()) == 1
    assert re.search(message, err)
    assert not list(tmp_path.iterdir())  # nothing written on error


def test_cli_model_without_convolution(zoo_path, tmp_path, capsys):
    code = main(["gradcam", str(zoo_path("mlp-ce")), "--device", "cpu", "--out", str(tmp_path)])
    assert code == 2 and "no convolutional layer" in capsys.readouterr().err


# -- faithfulness figure, table and CLI -------------------------------------------------------------
def _faith_results():
    from landscape.faithfulness import Faithfulness

    rng = np.random.default_rng(0)
    out = []
    for ck in ("ce", "mam"):
        for method in ("gradcam", "guided-gradcam"):
            for metric in ("deletion", "road"):
                k = 5 if metric == "deletion" else 3
                out.append(Faithfulness(
                    x=np.linspace(0, 1, k), curves=rng.random((4, k)), random=rng.random((4, k)),
                    curves_lerf=rng.random((4, k)) if metric == "road" else None,
                    random_lerf=rng.random((4, k)) if metric == "road" else None,
                    scores=rng.random(4), random_scores=rng.random(4), original=np.ones(4), target=np.zeros(4, int),
                    metric=metric, higher_is_better=metric != "deletion",
                    meta={"checkpoint": ck, "method": method, "seed": 0}))
    return out


def test_faithfulness_plot_draws_the_result_values():
    from viz.gradcam import faithfulness_plot

    results = _faith_results()
    plot = faithfulness_plot(results)
    fa = results[0]
    np.testing.assert_allclose(plot.values["ce Grad-CAM/deletion/curve"], fa.curves.mean(0))
    assert plot.values["ce Grad-CAM/deletion/score"] == fa.score
    road = [r for r in results if r.metric == "road" and r.meta["checkpoint"] == "mam"][0]
    assert plot.values["mam/road/random/score"] == road.baseline
    np.testing.assert_allclose(plot.values["mam Guided Grad-CAM/road/lerf"],
                               results[-1].curves_lerf.mean(0))
    bars = plot.fig.axes[2].patches  # bottom-left: the deletion bars
    heights = [b.get_height() for b in bars]
    assert heights == pytest.approx([results[0].score, results[2].score, results[0].baseline,
                                     results[4].score, results[6].score, results[4].baseline])
    plot.close()


def test_faithfulness_table_lists_every_result_and_its_baseline():
    from viz.gradcam import faithfulness_table

    results = _faith_results()
    lines = faithfulness_table(results).splitlines()
    assert len(lines) == 2 + len(results)
    assert f"{results[1].score:.4f}" in lines[3] and f"{results[1].baseline:.4f}" in lines[3]
    assert "lower" in lines[2] and "higher" in lines[3]
    with pytest.raises(ArgumentError):
        faithfulness_table([])


def test_cli_metrics_prints_the_table(zoo_path, tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["gradcam", str(zoo_path("cnn-ce")), "--images", "4", "--metrics", "deletion",
                 "--metric-methods", "gradcam", "--out", str(out), "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "cnn-ce" in text and "deletion" in text and "random map" in text
    values = json.loads((out / "faithfulness.json").read_text())["values"]
    assert "cnn-ce Grad-CAM/deletion/score" in values
