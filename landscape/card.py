"""The geometry card: every sharpness measure of one checkpoint beside its accuracy, loss and generalisation gap.

:func:`geometry_card` computes the measures of :mod:`landscape.sharpness` (all on the same
seeded training subset, with the same batchnorm treatment) and the checkpoint's train and test
accuracy and loss; :func:`compare_cards` puts several cards in one table and ranks each measure
by Kendall's tau against the generalisation gap (``scipy.stats.kendalltau``), the way Jiang et
al. (2020) rank measures: tau > 0 means the measure orders the checkpoints as their gaps do.
The gap is ``train accuracy - test accuracy`` (Jiang et al.'s error gap); ``loss_gap`` is
``test loss - train loss``.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .batchnorm import DEFAULT_BN_BATCH_SIZE, DEFAULT_BN_SUBSET
from .checkpoint import as_checkpoint
from .data import as_dataset
from .errors import ArgumentError, check_choice, check_scalar
from .io import atomic_path
from .results import Result
from .sharpness import CARD_MEASURES, DEFAULT_SUBSET, MEASURES, PRESETS, sharpness

QUANTITIES = ("train_accuracy", "test_accuracy", "train_loss", "test_loss", "gap", "loss_gap")
GAPS = ("gap", "loss_gap")


def _fmt(value: float, digits: int) -> str:
    return "nan" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}g}"


def _markdown(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _csv(head: Sequence[str], rows: Sequence[Sequence], path) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(head)
    writer.writerows(rows)
    text = buf.getvalue()
    if path is not None:
        with atomic_path(Path(path)) as tmp:
            Path(tmp).write_text(text)
    return text


@dataclasses.dataclass(repr=False)
class GeometryCard(Result):
    """Sharpness measures, accuracy, loss and generalisation gap of one checkpoint.

    Attributes
    ----------
    measures : list of str
        Labels of the measures (a measure of :data:`landscape.sharpness.MEASURES` or a preset of
        :data:`landscape.sharpness.PRESETS`).
    values, lower, upper : np.ndarray
        ``(k,)`` each measure's value and bootstrap interval (NaN where deterministic).
    train_accuracy, test_accuracy, train_loss, test_loss : float
        The training objective's loss and the top-1 accuracy on each split.
    gap, loss_gap : float
        ``train_accuracy - test_accuracy`` and ``test_loss - train_loss``.
    details : dict
        ``{label: the measure's details}`` (``lam_min``, ``trace``, ``sigma``, ``spread``, ...).
    meta : dict
        Provenance, the data of each split, and under ``"measures"`` each measure's own meta.
    """

    measures: list
    values: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    train_accuracy: float
    test_accuracy: float
    train_loss: float
    test_loss: float
    gap: float
    loss_gap: float
    details: dict = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.measures = [str(m) for m in self.measures]
        for name in ("values", "lower", "upper"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64).reshape(len(self.measures)))
        for name in QUANTITIES:
            value = getattr(self, name)
            setattr(self, name, math.nan if value is None else float(value))

    @property
    def name(self) -> str:
        """The checkpoint's name."""
        return str(self.meta.get("checkpoint", "model"))

    def value(self, label: str) -> float:
        """The value of one measure or quantity (``"gap"``, ``"test_accuracy"``, ...)."""
        if label in QUANTITIES:
            return float(getattr(self, label))
        if label not in self.measures:
            raise ArgumentError(f"this card has no measure {label!r}; it has {', '.join(self.measures)}.")
        return float(self.values[self.measures.index(label)])

    def rows(self) -> list[tuple[str, float, float, float]]:
        """``(quantity, value, low, high)`` for every quantity and measure, in the card's order."""
        out = [(q, getattr(self, q), math.nan, math.nan) for q in QUANTITIES]
        return out + [(m, float(v), float(lo), float(hi))
                      for m, v, lo, hi in zip(self.measures, self.values, self.lower, self.upper)]

    def to_markdown(self, digits: int = 4) -> str:
        """The card as a Markdown table (quantity, value, interval)."""
        body = [[q, _fmt(v, digits), "" if not math.isfinite(lo) else f"[{_fmt(lo, digits)}, {_fmt(hi, digits)}]"]
                for q, v, lo, hi in self.rows()]
        return f"**{self.name}** ({self.meta.get('data_train')}, seed {self.meta.get('seed')})\n\n" + _markdown(
            ["quantity", "value", f"{100 * self.meta.get('confidence', 0.95):g}% interval"], body)

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """The card as CSV (``checkpoint,quantity,value,low,high``); written to ``path`` when given."""
        return _csv(["checkpoint", "quantity", "value", "low", "high"],
                    [[self.name, q, repr(float(v)), repr(lo), repr(hi)] for q, v, lo, hi in self.rows()], path)


def _entries(measures, options: Mapping[str, Mapping] | None) -> list[tuple[str, str, dict]]:
    """``(label, measure, options)`` for each card entry."""
    if isinstance(measures, str):
        measures = [measures]
    out = []
    for label in measures:
        label = check_choice(label, "measures", (*MEASURES, *PRESETS))
        measure, kw = PRESETS.get(label, (label, {}))
        out.append((label, measure, {**kw, **dict((options or {}).get(label, {}))}))
    labels = [e[0] for e in out]
    if not out or len(set(labels)) != len(labels):
        raise ArgumentError(f"measures={labels}: give each measure once (at least one).")
    unknown = sorted(set(options or {}) - set(labels))
    if unknown:
        raise ArgumentError(f"options name {unknown[0]!r}, which is not among the card's measures {labels}.")
    return out


def _metrics(ck, data, batch_size):
    from .objective import evaluate

    x, y = ck.prepare(data)
    return evaluate(ck.model, ck.criterion, x, y, batch_size)


def geometry_card(ck, data, test_data=None, measures: Sequence[str] = CARD_MEASURES, *, seed: int = 0,
                  subset: int | None = DEFAULT_SUBSET, eval_subset: int | None = None, criterion="train",
                  batch_size: int | None = None, bn: str = "eval", bn_data=None,
                  bn_subset: int | None = DEFAULT_BN_SUBSET, bn_batch_size: int = DEFAULT_BN_BATCH_SIZE,
                  options: Mapping[str, Mapping] | None = None, confidence: float = 0.95,
                  verbose: bool | None = None) -> GeometryCard:
    """The geometry card of one checkpoint: sharpness measures, accuracy, loss and generalisation gap.

    Parameters
    ----------
    ck : Checkpoint, path or nn.Module
    data : Dataset, str, (x, y) pair, torch Dataset or DataLoader
        The training data (a spec string: its train split; its test split is then the default
        ``test_data``).
    test_data : optional
        The test data (required unless ``data`` is a spec string).
    measures : sequence of str
        Measures of :data:`landscape.sharpness.MEASURES` and presets of
        :data:`landscape.sharpness.PRESETS` (``plain-average``, ``plain-worst``,
        ``adaptive-worst-l2``, ``pac-bayes-magnitude``); default :data:`landscape.sharpness.CARD_MEASURES`.
    seed : int
        Seed of every measure (and of the subsets).
    subset : int or None
        Training examples the measures use (see :func:`landscape.sharpness.sharpness`).
    eval_subset : int or None
        Seeded subset of each split for the accuracies and losses (default: all of it).
    criterion, bn, bn_data, bn_subset, bn_batch_size, confidence, verbose
        As in :func:`landscape.sharpness.sharpness`, for every measure.
    batch_size : int, optional
        Evaluation batch size of the accuracies and losses.
    options : dict, optional
        ``{label: {option: value}}`` hyperparameters of single measures (``{"epsilon": {"eps": 1e-2}}``).

    Returns
    -------
    GeometryCard
    """
    entries = _entries(measures, options)
    seed = check_scalar(seed, "seed", int, min=0)
    eval_subset = check_scalar(eval_subset, "eval_subset", int, min=1, allow_none=True)
    if test_data is None:
        if not isinstance(data, str):
            raise ArgumentError("the card's generalisation gap needs test data: pass test_data= (or give data as a "
                                "spec string such as 'digits', whose train and test splits are used).")
        test_data = data
    ck = as_checkpoint(ck, criterion=None if criterion in (None, "train") else criterion)
    train = as_dataset(data, split="train")
    test = as_dataset(test_data, eval_subset, seed, split="test")
    was_training = ck.model.training
    ck.model.eval()
    try:
        train_loss, train_acc = _metrics(ck, train.subset(eval_subset, seed=seed), batch_size)
        test_loss, test_acc = _metrics(ck, test, batch_size)
    finally:
        ck.model.train(was_training)
    results = {}
    bn_source = bn_data if bn_data is not None else (data if isinstance(data, str) else train)
    for label, measure, kw in entries:
        results[label] = sharpness(ck, train, measure, seed, subset=subset, bn=bn, bn_data=bn_source,
                                   bn_subset=bn_subset, bn_batch_size=bn_batch_size, confidence=confidence,
                                   verbose=verbose, **kw)
    labels = list(results)
    first = results[labels[0]].meta
    meta = {k: first.get(k) for k in ("checkpoint", "digest", "path", "arch", "loss", "seed", "threads", "bn")}
    meta.update(data_train=train.name, data_test=test.name, n_train=len(train), n_test=len(test), subset=subset,
                eval_subset=eval_subset, confidence=confidence, measures={k: r.meta for k, r in results.items()})
    return GeometryCard(labels, [r.value for r in results.values()], [r.interval[0] for r in results.values()],
                        [r.interval[1] for r in results.values()], train_acc, test_acc, train_loss, test_loss,
                        train_acc - test_acc, test_loss - train_loss, {k: r.details for k, r in results.items()},
                        meta)


@dataclasses.dataclass(repr=False)
class CardComparison(Result):
    """Several geometry cards in one table, each measure ranked by Kendall's tau against a gap.

    Attributes
    ----------
    names : list of str
        The checkpoints, one row each.
    measures : list of str
        The measures every card has.
    values : np.ndarray
        ``(n, k)`` each checkpoint's value of each measure.
    gap : np.ndarray
        ``(n,)`` the gap the measures are ranked against (``meta["against"]``).
    tau, p_value : np.ndarray
        ``(k,)`` Kendall's tau-b of each measure against ``gap`` and its two-sided p-value
        (``scipy.stats.kendalltau``); NaN with fewer than two finite pairs.
    quantities : dict
        ``{quantity: (n,) array}`` train/test accuracy and loss and both gaps.
    meta : dict
    """

    names: list
    measures: list
    values: np.ndarray
    gap: np.ndarray
    tau: np.ndarray
    p_value: np.ndarray
    quantities: dict = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)

    def to_markdown(self, digits: int = 4) -> str:
        """The table (one row per checkpoint) and a last row of tau (p) per measure."""
        head = ["checkpoint", "train acc", "test acc", self.meta.get("against", "gap"), *self.measures]
        q = self.quantities
        rows = [[n, _fmt(q["train_accuracy"][i], digits), _fmt(q["test_accuracy"][i], digits),
                 _fmt(self.gap[i], digits), *(_fmt(v, digits) for v in self.values[i])]
                for i, n in enumerate(self.names)]
        rows.append(["Kendall tau (p)", "", "", "", *(f"{_fmt(t, 3)} ({_fmt(p, 2)})"
                                                      for t, p in zip(self.tau, self.p_value))])
        return _markdown(head, rows)

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """One row per checkpoint (quantities, then measures) and the rows ``kendall_tau`` and ``p_value``."""
        qs = list(self.quantities)
        rows = [[n, *(repr(float(self.quantities[q][i])) for q in qs), *(repr(float(v)) for v in self.values[i])]
                for i, n in enumerate(self.names)]
        rows.append(["kendall_tau", *([""] * len(qs)), *(repr(float(t)) for t in self.tau)])
        rows.append(["p_value", *([""] * len(qs)), *(repr(float(p)) for p in self.p_value)])
        return _csv(["checkpoint", *qs, *self.measures], rows, path)


def kendall(values: np.ndarray, gap: np.ndarray) -> tuple[float, float]:
    """Kendall's tau-b and its p-value over the finite pairs (NaN with fewer than two)."""
    from scipy.stats import kendalltau

    keep = np.isfinite(values) & np.isfinite(gap)
    if keep.sum() < 2 or np.ptp(values[keep]) == 0 or np.ptp(gap[keep]) == 0:
        return math.nan, math.nan
    res = kendalltau(values[keep], gap[keep])
    return float(res.statistic), float(res.pvalue)


def compare_cards(cards: Sequence[GeometryCard], against: str = "gap") -> CardComparison:
    """A table across checkpoints and Kendall's tau of each measure against the generalisation gap.

    Parameters
    ----------
    cards : sequence of GeometryCard
        One per checkpoint (their names label the rows).
    against : {"gap", "loss_gap"}
        The accuracy gap (Jiang et al.) or the loss gap.

    Returns
    -------
    CardComparison
    """
    against = check_choice(against, "against", GAPS)
    cards = list(cards)
    if not cards or not all(isinstance(c, GeometryCard) for c in cards):
        raise ArgumentError("compare_cards needs a list of GeometryCard (from ls.geometry_card).")
    measures = [m for m in cards[0].measures if all(m in c.measures for c in cards)]
    if not measures:
        raise ArgumentError("these cards share no measure; compute them with the same measures=.")
    names, seen = [], {}
    for c in cards:  # unique row names
        seen[c.name] = seen.get(c.name, 0) + 1
        names.append(c.name if seen[c.name] == 1 else f"{c.name}-{seen[c.name]}")
    values = np.array([[c.value(m) for m in measures] for c in cards], dtype=np.float64)
    gap = np.array([c.value(against) for c in cards], dtype=np.float64)
    stats = [kendall(values[:, j], gap) for j in range(len(measures))]
    quantities = {q: np.array([c.value(q) for c in cards], dtype=np.float64) for q in QUANTITIES}
    meta = {"against": against, "checkpoints": [c.meta.get("path") or c.name for c in cards],
            "digests": [c.meta.get("digest") for c in cards], "data_train": cards[0].meta.get("data_train"),
            "data_test": cards[0].meta.get("data_test"), "seed": cards[0].meta.get("seed")}
    return CardComparison(names, measures, values, gap, np.array([s[0] for s in stats]),
                          np.array([s[1] for s in stats]), quantities, meta)
