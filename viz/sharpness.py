"""Figures of sharpness and generalisation: each measure against the gap, and the geometry card as a table.

Nothing is computed here: every number drawn comes from a :class:`landscape.card.CardComparison`
(or the :class:`landscape.card.GeometryCard` s it is made of).

* :func:`sharpness_vs_gap`: one panel per measure, the measure on x and the generalisation gap on
  y, one labelled point per checkpoint (with its bootstrap interval where there is one), Kendall's
  tau and its p-value in the panel's title (Jiang et al. 2020's ranking).
* :func:`card_table`: the comparison's table, one row per checkpoint and a last row of tau (p).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from landscape.card import CardComparison, GeometryCard, compare_cards
from landscape.errors import ArgumentError

from .figure import Plot

AXIS_LABELS = {"gap": "generalisation gap (train acc - test acc)", "loss_gap": "loss gap (test - train)"}


def _comparison(cards) -> CardComparison:
    if isinstance(cards, CardComparison):
        return cards
    if isinstance(cards, GeometryCard):
        cards = [cards]
    if not isinstance(cards, Sequence) or not cards:
        raise ArgumentError("give a CardComparison (ls.compare_cards) or a list of GeometryCard.")
    return compare_cards(cards)


def _title(measure: str, tau: float, p: float) -> str:
    if not math.isfinite(tau):
        return f"{measure}\nτ undefined (n < 2 or no spread)"
    return f"{measure}\nKendall τ = {tau:.2f} (p = {p:.2g})"


def sharpness_vs_gap(cards, measures: Sequence[str] | None = None, *, title: str | None = None) -> Plot:
    """Each measure against the generalisation gap, one point per checkpoint, tau in the titles.

    Parameters
    ----------
    cards : CardComparison or sequence of GeometryCard
    measures : sequence of str, optional
        Which measures to draw (default: all the comparison holds).
    title : str, optional

    Returns
    -------
    Plot
        ``values``: ``names``, ``gap``, ``against`` and per measure ``{value, tau, p_value}``.
    """
    import matplotlib.pyplot as plt

    cmp = _comparison(cards)
    chosen = list(measures) if measures is not None else list(cmp.measures)
    missing = [m for m in chosen if m not in cmp.measures]
    if missing:
        raise ArgumentError(f"the comparison has no measure {missing[0]!r}; it has {', '.join(cmp.measures)}.")
    cols = min(3, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    values = {"names": list(cmp.names), "gap": cmp.gap, "against": cmp.meta.get("against", "gap"), "measures": {}}
    colours = plt.get_cmap("tab10")
    for ax, m in zip(axes.ravel(), chosen):
        j = cmp.measures.index(m)
        x = cmp.values[:, j]
        for i, name in enumerate(cmp.names):
            ax.scatter([x[i]], [cmp.gap[i]], color=colours(i % 10), zorder=3)
            ax.annotate(name, (x[i], cmp.gap[i]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_title(_title(m, cmp.tau[j], cmp.p_value[j]), fontsize=9)
        ax.set_xlabel(m, fontsize=8)
        ax.set_ylabel(AXIS_LABELS.get(values["against"], values["against"]), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        values["measures"][m] = {"value": x, "tau": float(cmp.tau[j]), "p_value": float(cmp.p_value[j])}
    for ax in axes.ravel()[len(chosen):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    caption = (f"Sharpness measures of {len(cmp.names)} checkpoints against their generalisation gap on "
               f"{cmp.meta.get('data_train')} / {cmp.meta.get('data_test')} (seed {cmp.meta.get('seed')}); Kendall's "
               "tau-b and its two-sided p-value per measure (scipy.stats.kendalltau).")
    return Plot(fig, values, caption, kind="sharpness_vs_gap")


def card_table(cards, digits: int = 4) -> Plot:
    """The comparison (or one card) as a table: accuracies, gap and every measure per checkpoint, tau (p) below.

    Returns
    -------
    Plot
        ``values``: ``{name: {train_accuracy, test_accuracy, gap, <measure>...}}`` and ``tau``, ``p_value``.
    """
    import matplotlib.pyplot as plt

    cmp = _comparison(cards)
    head = ["checkpoint", "train acc", "test acc", cmp.meta.get("against", "gap"), *cmp.measures]
    cells, values = [], {"rows": {}, "tau": dict(zip(cmp.measures, cmp.tau.tolist())),
                         "p_value": dict(zip(cmp.measures, cmp.p_value.tolist()))}
    for i, name in enumerate(cmp.names):
        row = {"train_accuracy": float(cmp.quantities["train_accuracy"][i]),
               "test_accuracy": float(cmp.quantities["test_accuracy"][i]), "gap": float(cmp.gap[i]),
               **{m: float(v) for m, v in zip(cmp.measures, cmp.values[i])}}
        values["rows"][name] = row
        cells.append([name, *(f"{v:.{digits}g}" for v in row.values())])
    cells.append(["Kendall τ (p)", "", "", "", *(f"{t:.2f} ({p:.2g})" if np.isfinite(t) else "n/a"
                                                  for t, p in zip(cmp.tau, cmp.p_value))])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.25 * len(head)), 0.8 + 0.35 * len(cells)))
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=head, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.auto_set_column_width(list(range(len(head))))
    table.scale(1.0, 1.3)
    caption = ("Geometry cards: train and test accuracy, the generalisation gap and every sharpness measure (see "
               "landscape.sharpness for definitions and hyperparameters, recorded in each card's meta).")
    return Plot(fig, values, caption, kind="card_table")
