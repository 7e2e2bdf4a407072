"""The training side: deterministic CPU training of zoo models and the shipped ``trained_models/``.

:func:`fit` trains one model and returns it with the checkpoint meta of docs/architecture.md (seeds and
hyperparameters recorded). :data:`ZOO` lists the shipped checkpoints; :func:`build_zoo`
rebuilds them and writes the manifest ``trained_models/README.md``.

What is reproducible: :func:`fit` runs on the CPU with a fixed number of threads
(``Recipe.threads``, default 1), ``torch.use_deterministic_algorithms(True)``, its model
initialisation and data order drawn from ``Recipe.seed`` alone. Two trainings with the same torch
version, thread count and CPU kind give bit-identical weights (tests/test_train.py trains in two
processes). A CPU with other vector instructions, another thread count or another torch version
rounds differently; the weights then differ in the last bits, growing to about 1e-4 over the
40 epochs of the zoo (measured: mlp-ce, 2.1e-4). Each file's meta records the torch version,
thread count and machine (architecture and the vector instructions torch uses) under ``train``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import models
from .checkpoint import _digest, build_criterion, save_checkpoint
from .data import Dataset, load_dataset, normalization_of
from .errors import ArgumentError, check_choice, check_scalar
from .objective import evaluate, loss_and_logits, set_output

OPTIMIZERS = ("sgd", "adam")


@dataclasses.dataclass
class Recipe:
    """How one shipped checkpoint is trained.

    ``optimizer`` is ``"sgd"`` (momentum 0.9, the zoo's) or ``"adam"`` (seed 003's search
    optimizer); ``threads`` is the number of CPU threads training runs on (part of what makes
    a retraining bit-identical).
    """

    name: str
    arch: str
    loss: str = "ce"
    loss_kwargs: dict = dataclasses.field(default_factory=dict)
    arch_kwargs: dict = dataclasses.field(default_factory=dict)
    epochs: int = 40
    lr: float = 0.01
    weight_decay: float = 5e-4
    batch_size: int = 64
    seed: int = 0
    dataset: str = "digits"
    snapshots: bool = False
    output: int | str | None = None  # the output adapter of a model whose forward returns more than logits
    optimizer: str = "sgd"
    threads: int = 1
    snapshot_every: int = 1  # with snapshots: keep epoch 1, every this many epochs, and the last


def _normalize(x: torch.Tensor, norm: dict) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - torch.tensor(norm["mean"]).reshape(shape)) / torch.tensor(norm["std"]).reshape(shape)


@contextlib.contextmanager
def deterministic(threads: int):
    """Run the block on ``threads`` CPU threads with deterministic algorithms; restore both afterwards.

    The global random state is forked too, so seeding inside the block leaves the caller's untouched.
    """
    threads = check_scalar(threads, "threads", int, min=1)
    old_threads, old_flag = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_flag, warn_only=old_warn)


def _optimizer(recipe: Recipe, model: torch.nn.Module) -> torch.optim.Optimizer:
    name = check_choice(recipe.optimizer, "optimizer", OPTIMIZERS)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, weight_decay=recipe.weight_decay)


def fit(recipe: Recipe, on_epoch: Callable[[int, torch.nn.Module, dict], None] | None = None,
        train: Dataset | None = None, test: Dataset | None = None) -> tuple[torch.nn.Module, dict]:
    """Train ``recipe`` deterministically on the CPU; return ``(model, meta)``.

    SGD with momentum 0.9 (or Adam) and a cosine schedule; the initialisation and the data order
    come from ``recipe.seed``, the arithmetic from ``recipe.threads`` threads with deterministic
    algorithms (module docstring: what is reproducible). ``on_epoch(epoch, model, meta)`` is called
    after every epoch (used for snapshots).

    Parameters
    ----------
    recipe : Recipe
    on_epoch : callable, optional
    train, test : Dataset, optional
        Default: ``recipe.dataset``'s splits.

    Returns
    -------
    (nn.Module, dict)
        The trained model in eval mode and its checkpoint meta.
    """
    check_scalar(recipe.epochs, "epochs", int, min=1)
    check_choice(recipe.optimizer, "optimizer", OPTIMIZERS)
    with deterministic(recipe.threads):
        return _fit(recipe, on_epoch, train, test)


def _fit(recipe: Recipe, on_epoch, train: Dataset | None, test: Dataset | None) -> tuple[torch.nn.Module, dict]:
    train = train or load_dataset(recipe.dataset, "train")
    test = test or load_dataset(recipe.dataset, "test")
    norm = normalization_of(train)
    torch.manual_seed(recipe.seed)
    model = set_output(models.build(recipe.arch, input_shape=train.input_shape, num_classes=len(train.classes),
                                    **recipe.arch_kwargs), recipe.output)
    meta: dict[str, Any] = {
        "arch": recipe.arch, "arch_kwargs": recipe.arch_kwargs, "loss": recipe.loss,
        "loss_kwargs": recipe.loss_kwargs, "dataset": recipe.dataset, "input_shape": list(train.input_shape),
        "num_classes": len(train.classes), "classes": list(train.classes), "normalization": norm,
        "seed": recipe.seed, "epoch": 0, **({"output": recipe.output} if recipe.output is not None else {}),
        "train": {"optimizer": recipe.optimizer, "momentum": 0.9 if recipe.optimizer == "sgd" else None,
                  "lr": recipe.lr, "weight_decay": recipe.weight_decay, "batch_size": recipe.batch_size,
                  "epochs": recipe.epochs, "schedule": "cosine", "threads": recipe.threads,
                  "deterministic": True, "torch": torch.__version__,
                  "machine": f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}"},
    }
    criterion = build_criterion(meta)
    xtr, ytr = _normalize(torch.as_tensor(train.x), norm), torch.as_tensor(train.y)
    xte, yte = _normalize(torch.as_tensor(test.x), norm), torch.as_tensor(test.y)
    opt = _optimizer(recipe, model)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs)
    gen = torch.Generator().manual_seed(recipe.seed)
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        order = torch.randperm(len(ytr), generator=gen)
        for i in range(0, len(order), recipe.batch_size):
            idx = order[i:i + recipe.batch_size]
            if len(idx) < 2:  # batchnorm needs two samples
                continue
            loss, _ = loss_and_logits(model, criterion, xtr[idx], ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        meta["epoch"] = epoch
        if on_epoch is not None or epoch == recipe.epochs:
            tr_loss, tr_acc = evaluate(model, criterion, xtr, ytr)
            te_loss, te_acc = evaluate(model, criterion, xte, yte)
            meta["metrics"] = {"train_loss": tr_loss, "train_accuracy": tr_acc,
                               "test_loss": te_loss, "test_accuracy": te_acc}
            if on_epoch is not None:
                on_epoch(epoch, model, meta)
    return model.eval(), meta


# -- the shipped zoo -----------------------------------------------------------------------
NO_BIAS = {"head_bias": False}  # L-/A-/AM-Softmax use only the classifier weights
SEED000_COMBINED = "0.25*hinge + 0.65*l-softmax(m=4) + 0.34*a-softmax(m=4)"

ZOO: list[Recipe] = [
    Recipe("mlp-ce", "mlp", snapshots=True),
    Recipe("cnn-ce", "cnn", epochs=30),
    Recipe("resnet-ce", "resnet", epochs=30),
    Recipe("plain-ce", "plain", epochs=30),
    Recipe("mlp-hinge", "mlp", loss="hinge"),
    # beta: Liu et al.'s annealing weight; the pure formula (beta=0) kills classes on ReLU features
    Recipe("mlp-l-softmax", "mlp", loss="l-softmax", loss_kwargs={"m": 4, "beta": 5}, arch_kwargs=NO_BIAS),
    Recipe("mlp-a-softmax", "mlp", loss="a-softmax", loss_kwargs={"m": 4, "beta": 5}, arch_kwargs=NO_BIAS),
    Recipe("mlp-combined", "mlp", loss=SEED000_COMBINED, arch_kwargs=NO_BIAS),
    Recipe("mlp-am-softmax", "mlp", loss="am-softmax", arch_kwargs=NO_BIAS, snapshots=True, snapshot_every=4),
    Recipe("mlp-sm-softmax", "mlp", loss="sm-softmax"),
    Recipe("mlp-mam-softmax", "mlp", loss="mam-softmax", snapshots=True, snapshot_every=4),
    Recipe("mlp-sce", "mlp", loss="sce"),
    Recipe("mlp-focal", "mlp", loss="focal"),
    Recipe("mlp-adma", "mlp", loss="adma"),
    Recipe("mlp-a2", "mlp", loss="a2"),
    Recipe("cnn-mam-softmax", "cnn", loss="mam-softmax", epochs=30),
    # second seeds of the CE and MAM-SoftMax mlps: the endpoints of mode-connectivity figures (issue 17)
    Recipe("mlp-ce-seed1", "mlp", seed=1),
    Recipe("mlp-mam-softmax-seed1", "mlp", loss="mam-softmax", seed=1),
]


def build_zoo(out: str | Path = "trained_models", only: list[str] | None = None, quiet: bool = False,
              fmt: str = "safetensors") -> list[dict]:
    """Train every recipe of :data:`ZOO` (or those named in ``only``) and write the manifest."""
    out = Path(out)
    recipes = [r for r in ZOO if not only or r.name in only]
    unknown = set(only or []) - {r.name for r in ZOO}
    if unknown:
        raise ArgumentError(f"unknown zoo entries {sorted(unknown)}; available: {', '.join(r.name for r in ZOO)}.")
    rows = []
    for r in recipes:
        t0 = time.perf_counter()
        snaps: list[str] = []

        def on_epoch(epoch, model, meta, r=r, snaps=snaps):
            if r.snapshots and (epoch == 1 or epoch % r.snapshot_every == 0 or epoch == r.epochs):
                path = out / "snapshots" / r.name / f"epoch{epoch:03d}.{fmt}"
                save_checkpoint(path, model, meta)
                snaps.append(str(path.relative_to(out)))

        model, meta = fit(r, on_epoch if r.snapshots else None)
        path = save_checkpoint(out / f"{r.name}.{fmt}", model, meta)
        row = {"name": r.name, "file": path.name, "arch": r.arch, "loss": r.loss, "loss_kwargs": r.loss_kwargs,
               "params": sum(p.numel() for p in model.parameters()), **meta["metrics"],
               "seconds": round(time.perf_counter() - t0, 1), "snapshots": len(snaps),
               "digest": _digest(model.state_dict()),
               **{k: meta["train"][k] for k in ("torch", "threads", "machine")}}
        rows.append(row)
        if not quiet:
            print(f"{r.name:24s} test acc {row['test_accuracy']:.4f}  train acc {row['train_accuracy']:.4f}  "
                  f"({row['seconds']} s)", flush=True)
    write_manifest(out, rows)
    return rows


def write_manifest(out: Path, rows: list[dict]) -> None:
    """Merge ``rows`` into ``out/manifest.json`` and regenerate ``out/README.md``."""
    from .io import atomic_path, write_json

    mpath = out / "manifest.json"
    existing = {r["name"]: r for r in json.loads(mpath.read_text())} if mpath.exists() else {}
    existing.update({r["name"]: r for r in rows})
    order = {r.name: i for i, r in enumerate(ZOO)}
    merged = sorted(existing.values(), key=lambda r: order.get(r["name"], len(order)))
    write_json(mpath, merged)
    lines = ["# trained_models", "",
             "Checkpoints shipped with the toolkit, trained on the embedded `digits` data (scikit-learn's 8x8 digits,",
             "stratified 80/20 split) by `landscape train` on the CPU (seeds and hyperparameters in each file's meta).",
             "Rebuild all of them with `landscape train --out trained_models`, or one with `--only NAME`.", "",
             "What is reproducible: training runs on a fixed number of threads (1) with deterministic algorithms,",
             "and the initialisation and data order come from the recipe's seed, so retraining with the same torch",
             "version, thread count and CPU kind (the `built on` column: architecture and the vector instructions",
             "torch uses) gives bit-identical weights, with the digest shown. On another CPU kind or torch version",
             "the weights differ in the last bits: up to 2.1e-4 after 40 epochs for mlp-ce, with the same test",
             "accuracy and a test loss within 1e-6. Files whose row has no `built on` entry were trained before",
             "this was recorded, on another machine.", "",
             "| file | arch | loss | loss parameters | params | train acc | test acc | test loss | built on | digest |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in merged:
        kw = ", ".join(f"{k}={v}" for k, v in (r.get("loss_kwargs") or {}).items()) or "-"
        built = (f"torch {r['torch']}, {r['threads']} thread{'s' if r['threads'] != 1 else ''}, {r['machine']}"
                 if r.get("torch") else "-")
        lines.append(f"| {r['file']} | {r['arch']} | {r['loss']} | {kw} | {r['params']} | "
                     f"{r['train_accuracy']:.4f} | {r['test_accuracy']:.4f} | {r['test_loss']:.4f} | {built} | "
                     f"{r.get('digest', '-')} |")
    snap = [r for r in merged if r.get("snapshots")]
    if snap:
        lines += ["", "Per-epoch snapshots (for trajectory plots): " +
                  ", ".join(f"`snapshots/{r['name']}/` ({r['snapshots']} epochs)" for r in snap) + "."]
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


__all__ = ["Recipe", "fit", "deterministic", "ZOO", "build_zoo", "write_manifest", "OPTIMIZERS"]
