"""The geometry card and its comparison across checkpoints (issue 15)."""
from __future__ import annotations

import csv
import io

import numpy as np
import pytest

import landscape as ls
from landscape.card import GeometryCard, compare_cards
from landscape.errors import ArgumentError

FAST = {"adaptive-average": {"n_noise": 2}, "plain-worst": {"n_iter": 3}, "epsilon": {"max_iter": 3}}


@pytest.fixture(scope="module")
def card(mlp):
    return ls.geometry_card(mlp, "digits", measures=list(FAST), options=FAST, subset=256, seed=0, verbose=False)


def test_card_numbers(card, mlp, digits_train, digits_test):
    train_loss, train_acc = mlp.evaluate(digits_train)
    test_loss, test_acc = mlp.evaluate(digits_test)
    assert card.train_accuracy == pytest.approx(train_acc, abs=1e-12)
    assert card.test_accuracy == pytest.approx(test_acc, abs=1e-12)
    assert card.train_loss == pytest.approx(train_loss, rel=1e-5)
    assert card.test_loss == pytest.approx(test_loss, rel=1e-5)
    assert card.gap == pytest.approx(train_acc - test_acc, abs=1e-12)
    assert card.loss_gap == pytest.approx(test_loss - train_loss, rel=1e-4)
    # each entry is the measure computed on its own with the same arguments
    alone = ls.sharpness(mlp, "digits", "adaptive-worst", 0, subset=256, adaptive=False, n_iter=3, verbose=False)
    assert card.value("plain-worst") == alone.value
    assert card.meta["measures"]["plain-worst"]["adaptive"] is False
    assert card.meta["digest"] == mlp.digest and card.meta["data_test"].startswith("digits")


def test_card_tables_and_saving(card, tmp_path):
    md = card.to_markdown()
    assert "| gap |" in md and "| plain-worst |" in md
    rows = list(csv.DictReader(io.StringIO(card.to_csv(tmp_path / "card.csv"))))
    assert (tmp_path / "card.csv").read_text() == card.to_csv()
    by = {r["quantity"]: r for r in rows}
    assert float(by["epsilon"]["value"]) == card.value("epsilon")  # repr round-trips floats exactly
    assert float(by["adaptive-average"]["low"]) == card.lower[card.measures.index("adaptive-average")]
    back = ls.Result.load(card.save(tmp_path / "card.npz"))
    assert isinstance(back, GeometryCard) and back.measures == card.measures
    np.testing.assert_array_equal(back.values, card.values)
    assert back.gap == card.gap


def _card(name, values, gap):
    k = len(values)
    return GeometryCard([f"m{i}" for i in range(k)], values, np.full(k, np.nan), np.full(k, np.nan), 1.0, 1.0 - gap,
                        0.1, 0.2, gap, 0.1, meta={"checkpoint": name})


def test_compare_cards_kendall_by_hand():
    # m0 orders the gaps exactly (tau 1); m1 reverses them (tau -1); m2: pairs (a,b) + (a,c) + (b,c) -> 1 - 1 + 1 = 1/3
    cards = [_card("a", [1.0, 3.0, 0.2], 0.01), _card("b", [2.0, 2.0, 0.1], 0.02), _card("c", [3.0, 1.0, 0.3], 0.03)]
    cmp = compare_cards(cards)
    np.testing.assert_allclose(cmp.tau, [1.0, -1.0, 1 / 3], rtol=1e-12)
    # exact two-sided p-values of tau over 3 items: P(|T| >= 1) = 2/6, P(|T| >= 1/3) = 1
    np.testing.assert_allclose(cmp.p_value, [1 / 3, 1 / 3, 1.0], rtol=1e-9)
    assert cmp.names == ["a", "b", "c"]
    text = cmp.to_markdown()
    assert "Kendall tau (p)" in text and "-1 (0.33)" in text
    rows = list(csv.reader(io.StringIO(cmp.to_csv())))
    assert rows[-2][0] == "kendall_tau" and float(rows[-2][-1]) == pytest.approx(1 / 3)


def test_compare_cards_errors_and_names(card):
    with pytest.raises(ArgumentError, match="GeometryCard"):
        compare_cards([1, 2])
    with pytest.raises(ArgumentError, match="share no measure"):
        compare_cards([_card("a", [1.0], 0.1), GeometryCard(["x"], [1.0], [np.nan], [np.nan], 1, 1, 0, 0, 0, 0)])
    cmp = compare_cards([card, card])
    assert cmp.names == [card.name, f"{card.name}-2"]
    assert np.all(np.isnan(cmp.tau))  # no spread: tau is undefined, never a crash


def test_card_errors(mlp, digits_train):
    with pytest.raises(ArgumentError, match="test_data"):
        ls.geometry_card(mlp, digits_train, measures=["epsilon"])
    with pytest.raises(ArgumentError, match="measures"):
        ls.geometry_card(mlp, "digits", measures=["sharp"])
    with pytest.raises(ArgumentError, match="not among the card's measures"):
        ls.geometry_card(mlp, "digits", measures=["epsilon"], options={"hessian": {}})


def test_cli(zoo_path, tmp_path, capsys):
    import json

    from viz.cli import main

    out = tmp_path / "run"
    paths = [str(zoo_path("mlp-ce")), str(zoo_path("mlp-a2"))]
    rc = main(["sharpness", *paths, "--measures", "epsilon", "flatness-radius", "--subset", "128", "--out", str(out),
               "--threads", "1"])
    assert rc == 0
    assert "Kendall tau (p)" in capsys.readouterr().out
    saved = json.loads((out / "sharpness.json").read_text())
    assert saved["names"] == ["mlp-ce", "mlp-a2"] and saved["measures"] == ["epsilon", "flatness-radius"]
    card = ls.Result.load(out / "mlp-ce-card.npz")
    assert saved["values"][0][0] == card.value("epsilon")
    fig = json.loads((out / "sharpness-gap.json").read_text())
    assert fig["values"]["measures"]["epsilon"]["tau"] == saved["tau"][0]
    assert main(["sharpness", paths[0], "--measures", "sharp"]) == 2
