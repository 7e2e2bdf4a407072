"""Seed 003's statements about its evolved losses, measured under each reading of Table 4.

The paper says things about its losses that a reading of Table 4 must reproduce (issue 21):
only R0 peaks at ``yh = 1``; the cutout losses have a little hook near ``yh ~ 1``; C0 and C1 are
alike in 3-D and unlike C2; C1, R1 and R2 train (Table 5: 94-96 % on CIFAR-10); Fig. 8's
largest normalised difference A2 - CE is 0.188 at ``yh = 0.02``; M1 and M2 have the same
normalised shape (appendix A.3). :func:`phenotype_statements` and :func:`training_statements`
measure each under a reading with the toolkit's own phenotypes and training, and
:func:`evidence_markdown` writes the table of ``docs/evolved-losses.md``::

    python -m landscape.losses.evidence            # the whole table (trains 15 x 6 small models)
    python -m landscape.losses.evidence --no-train # phenotype statements only (seconds)

How each statement is measured (51-point grids, binary phenotype = the ``y = 1`` column):

* peaks at 1: the losses whose binary phenotype is largest at ``yh >= 0.9``; holds when that is R0 alone.
* hook: the binary phenotype's minimum lies at ``0.5 <= yh < 1`` (not at the last point) and the
  curve rises from it to ``yh = 1`` by more than 0 and at most 25 % of its range; holds for all of C0-C2.
* C0 ~ C1 unlike C2: Pearson correlation of the raw 3-D phenotypes; holds when C0-C1 is the most
  correlated of the three pairs and correlated at 0.5 or more.
* Fig. 8: the largest ``normalized(A2) - normalized(CE)`` off the endpoint rows; holds within 0.02
  of 0.188 at ``0.01 <= yh <= 0.03``.
* M1 ~ M2: largest absolute difference of their normalised binary phenotypes; holds below 0.05.
* trains: test accuracy of the zoo's mlp on digits after the zoo recipe (SGD, 40 epochs), and with
  Adam (lr 1e-3), seed 003's search optimizer; holds at 90 % and above (CE: 97.8 %).
"""
from __future__ import annotations

import argparse
from typing import Iterable

import numpy as np
import torch

from .evolved import _FORMULAS, Evolved

FORMULAS = tuple(_FORMULAS)
PAPER_FIG8 = 0.188

#: The readings compared, as ``(label, reading, grid, second_class)``: ``second_class`` is the
#: prediction of the phenotype's second class, ``1 - yh`` (two-class convention) or ``yh``.
VARIANTS = (
    ("support (default)", "support", "closed", "1 - yh"),
    ("literal", "literal", "closed", "1 - yh"),
    ("literal, the authors' grid", "literal", "open", "1 - yh"),
    ("literal, second class at yh", "literal", "closed", "yh"),
    ("target class only", "target", "closed", "1 - yh"),
    ("search sign, the authors' grid", "search", "open", "1 - yh"),
    ("log read as ln", "ln", "closed", "1 - yh"),
)


def _grid(resolution: int, grid: str) -> np.ndarray:
    from ..phenotype import phenotype_grid

    return phenotype_grid(resolution, grid)


def _raw(formula: str, reading: str, grid: str, resolution: int, second_class: str = "1 - yh") -> np.ndarray:
    """Raw 3-D phenotype ``raw[i, j] = L(y_j, yh_i)`` summed over the two classes (as :func:`landscape.phenotype`).

    ``second_class`` is the second class's prediction: ``1 - yh`` (the two-class convention) or ``yh``.
    The reading ``"target"`` keeps the target class only for CE too, so that Fig. 8 compares like with like.
    """
    from ..phenotype import phenotype_grid
    from .base import get

    loss = Evolved(formula, reading=reading) if formula in _FORMULAS else get(formula)
    yhat = phenotype_grid(resolution, grid)
    y, yh = np.meshgrid(np.linspace(0.0, 1.0, resolution), yhat)
    target = torch.as_tensor(np.stack([y, 1.0 - y], -1))
    pred = torch.as_tensor(np.stack([yh, yh if second_class == "yh" else 1.0 - yh], -1))
    with torch.no_grad():
        terms = loss.elementwise(target, pred)
    if reading == "target":
        terms = torch.where(target == target.amax(-1, keepdim=True), terms, torch.zeros_like(terms))
    return terms.sum(-1).numpy()


def _minmax(v: np.ndarray) -> np.ndarray:
    return (v - v.min()) / (v.max() - v.min())


def phenotype_statements(reading: str = "support", grid: str = "closed", second_class: str = "1 - yh",
                         resolution: int = 51) -> dict:
    """The phenotype statements of seed 003 measured under one reading (module docstring).

    Parameters
    ----------
    reading : str
        A reading of :data:`landscape.losses.evolved.READINGS`.
    grid : {"closed", "open"}
        The phenotype grid (:func:`landscape.phenotype.phenotype`).
    second_class : {"1 - yh", "yh"}
        The prediction of the phenotype's second class.
    resolution : int
        Points per axis.

    Returns
    -------
    dict
        ``peak_at`` (the ``yh`` of each loss's largest binary value), ``peaks_at_1`` (list),
        ``hook`` (per cutout loss: ``min_at``, ``rise``, ``last_step`` as fractions of the
        range), ``corr`` (``c0-c1``, ``c0-c2``, ``c1-c2``), ``range`` (raw 3-D range of C0-C2),
        ``fig8`` (``max``, ``y``, ``yhat``), ``m1_m2`` and ``holds`` (statement -> bool).
    """
    from ..phenotype import _largest, edge_rows

    points = _grid(resolution, grid)
    raws = {f: _raw(f, reading, grid, resolution, second_class) for f in FORMULAS}
    binary = {f: raw[:, -1] for f, raw in raws.items()}
    peak_at = {f: float(points[int(np.argmax(b))]) for f, b in binary.items()}
    peaks_at_1 = [f for f in FORMULAS if peak_at[f] >= 0.9]
    hook = {}
    for f in ("c0", "c1", "c2"):
        b = binary[f]
        span, low = float(b.max() - b.min()), int(np.argmin(b))
        hook[f] = {"min_at": float(points[low]), "rise": float((b[-1] - b[low]) / span),
                   "last_step": float((b[-1] - b[-2]) / span)}

    def corr(a: str, b: str) -> float:
        return float(np.corrcoef(raws[a].ravel(), raws[b].ravel())[0, 1])

    pairs = {"c0-c1": corr("c0", "c1"), "c0-c2": corr("c0", "c2"), "c1-c2": corr("c1", "c2")}
    d = _minmax(raws["a2"]) - _minmax(_raw("ce", reading, grid, resolution, second_class))
    top, where = _largest(d, np.linspace(0.0, 1.0, resolution), points, ~edge_rows(points))
    fig8 = {"max": top, **where[0]}
    m1_m2 = float(np.abs(_minmax(binary["m1"]) - _minmax(binary["m2"])).max())
    holds = {
        "only R0 peaks at yh = 1": peaks_at_1 == ["r0"],
        "small hook (C0, C1, C2)": all(0.5 <= h["min_at"] < points[-1] and 0 < h["rise"] <= 0.25
                                       for h in hook.values()),
        "C0 ~ C1 unlike C2": pairs["c0-c1"] >= 0.5 and pairs["c0-c1"] > max(pairs["c0-c2"], pairs["c1-c2"]),
        "Fig. 8: 0.188 at yh ~ 0.02": abs(fig8["max"] - PAPER_FIG8) <= 0.02 and 0.01 <= fig8["yhat"] <= 0.03,
        "M1 ~ M2 normalised": m1_m2 < 0.05,
    }
    return {"peak_at": peak_at, "peaks_at_1": peaks_at_1, "hook": hook, "corr": pairs,
            "range": {f: float(np.ptp(raws[f])) for f in ("c0", "c1", "c2")}, "fig8": fig8, "m1_m2": m1_m2,
            "holds": holds}


def train_accuracy(formula: str, reading: str, optimizer: str = "sgd", epochs: int = 40, seed: int = 0) -> float:
    """Test accuracy of the zoo's mlp on digits trained with one evolved loss under one reading.

    The zoo's recipe (:class:`landscape.train.Recipe`: SGD, lr 0.01, cosine, 40 epochs) or Adam at
    lr 1e-3 (seed 003's search optimizer), on one thread, deterministically.
    """
    from ..train import Recipe, fit

    lr = 1e-3 if optimizer == "adam" else 0.01
    recipe = Recipe(f"evidence-{formula}", "mlp", loss=formula, loss_kwargs={"reading": reading}, epochs=epochs,
                    lr=lr, optimizer=optimizer, seed=seed)
    return float(fit(recipe)[1]["metrics"]["test_accuracy"])


def training_statements(reading: str, optimizers: Iterable[str] = ("sgd", "adam"), epochs: int = 40) -> dict:
    """Test accuracy of every evolved loss under ``reading`` for each optimizer: ``{optimizer: {formula: acc}}``."""
    return {opt: {f: train_accuracy(f, reading, opt, epochs) for f in FORMULAS} for opt in optimizers}


def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def evidence_markdown(train: bool = True, resolution: int = 51) -> str:
    """The evidence table of ``docs/evolved-losses.md``: each statement against each reading, with the numbers."""
    head = "| statement (measure) | " + " | ".join(label for label, *_ in VARIANTS) + " |"
    rows = [head, "|---" * (len(VARIANTS) + 1) + "|"]
    measured = [phenotype_statements(reading, grid, second, resolution) for _, reading, grid, second in VARIANTS]

    def row(name: str, cell) -> None:
        rows.append(f"| {name} | " + " | ".join(cell(m) for m in measured) + " |")

    row("only R0 peaks at yh = 1 (losses largest at yh >= 0.9)",
        lambda m: f"{_mark(m['holds']['only R0 peaks at yh = 1'])}: {', '.join(m['peaks_at_1']).upper() or 'none'}")
    for f in ("c0", "c1", "c2"):
        row(f"small hook, {f.upper()} (min at yh; rise to yh = 1 / range)",
            lambda m, f=f: (f"{_mark(0.5 <= m['hook'][f]['min_at'] < 0.999 and 0 < m['hook'][f]['rise'] <= 0.25)}: "
                            f"{m['hook'][f]['min_at']:.2f}; {m['hook'][f]['rise']:.3f}"))
    row("C0 ~ C1 unlike C2 (3-D correlation C0-C1 / C0-C2 / C1-C2)",
        lambda m: (f"{_mark(m['holds']['C0 ~ C1 unlike C2'])}: {m['corr']['c0-c1']:.2f} / {m['corr']['c0-c2']:.2f} / "
                   f"{m['corr']['c1-c2']:.2f}"))
    row("Fig. 8: 0.188 at yh ~ 0.02 (max A2 - CE at y, yh)",
        lambda m: (f"{_mark(m['holds']['Fig. 8: 0.188 at yh ~ 0.02'])}: {m['fig8']['max']:.3f} at "
                   f"{m['fig8']['y']:.2f}, {m['fig8']['yhat']:.2f}"))
    row("M1 ~ M2 normalised (largest difference)",
        lambda m: f"{_mark(m['holds']['M1 ~ M2 normalised'])}: {m['m1_m2']:.3f}")
    if train:
        readings = {}
        for _, reading, *_rest in VARIANTS:
            if reading not in readings:
                readings[reading] = training_statements(reading)
        for opt, label in (("sgd", "zoo recipe, SGD"), ("adam", "Adam")):
            accs = [readings[reading][opt] for _, reading, *_ in VARIANTS]
            rows.append("| C1, R1, R2 train (test accuracy, " + label + ") | " + " | ".join(
                f"{_mark(all(a[f] >= 0.9 for f in ('c1', 'r1', 'r2')))}: "
                + " / ".join(f"{100 * a[f]:.0f}" for f in ("c1", "r1", "r2")) for a in accs) + " |")
            rows.append("| all 15 train, Table 5 (losses below 90 %, " + label + ") | " + " | ".join(
                ", ".join(f"{f.upper()} {100 * a[f]:.0f}" for f in FORMULAS if a[f] < 0.9) or "none"
                for a in accs) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Print the evidence table (``python -m landscape.losses.evidence [--no-train]``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-train", action="store_true", help="phenotype statements only")
    args = parser.parse_args(argv)
    print(evidence_markdown(train=not args.no_train))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
