"""Loading and saving checkpoints, safely.

Formats (see ``docs`` in the README):

* ``.safetensors`` with the meta as JSON under the header key ``landscape_meta``;
* ``.pt`` / ``.pth`` holding ``{"state_dict": ..., "meta": ...}``;
* a bare state_dict (``.pt``/``.pth``/``.bin``) whose architecture the caller names;
* a PyTorch Lightning ``.ckpt`` (prefixed keys, ``hyper_parameters``);
* Li et al.'s ``.t7`` files (github.com/tomgoldstein/loss-landscape, ``cifar10/main.py``):
  ``torch.save({"acc", "epoch", "state_dict"})`` with their model classes' parameter names,
  in the legacy or the zip format (see :data:`LI2018`).

Parameter names are matched to the model's on load: a prefix that every key shares
(DataParallel's ``module.``, ``torch.compile``'s ``_orig_mod.``) or, in a Lightning file, the
submodule prefix of the model is removed; the zoo class's documented ``foreign_keys`` map
(e.g. Li et al.'s ``linear.`` -> ``head.``) and a caller's ``key_map`` rename what is left;
batchnorm ``num_batches_tracked`` counters that files of PyTorch < 0.4.1 lack are set to 0
(they only count training steps). Anything else that does not fit is an error naming the keys.

Checkpoints are data, never code: pickles are read with ``torch.load(weights_only=True)``
and a file that needs anything beyond tensors and plain containers is refused.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from . import losses, models
from .data import Dataset
from .device import resolve_device
from .errors import ArchitectureError, CheckpointError, DatasetError, LandscapeError, LossError
from .io import atomic_path
from .objective import OutputSpec, check_output, output_of, set_output

META_KEYS = ("arch", "arch_kwargs", "loss", "loss_kwargs", "dataset", "input_shape", "num_classes", "classes",
             "normalization", "seed", "epoch", "metrics")
SAFETENSORS_META_KEY = "landscape_meta"

#: What a file of Li et al.'s ``cifar10/main.py`` means without a meta: CIFAR-10 32x32x3 inputs,
#: normalised with their ``dataloader.py``'s per-channel mean and deviation, cross-entropy;
#: ``acc`` is their test accuracy in percent. Entries a caller passes in ``meta=`` win (a net
#: trained with their ``--raw_data`` needs ``meta={"normalization": None}``).
LI2018 = {
    "dataset": "cifar10", "input_shape": [3, 32, 32], "loss": "ce",
    "normalization": {"mean": [125.3 / 255, 123.0 / 255, 113.9 / 255], "std": [63.0 / 255, 62.1 / 255, 66.7 / 255]},
    "source": "li2018",
}
#: The architectures of Li et al.'s zoo (``cifar10/model_loader.py``) that this zoo has, under the
#: same names; a Li et al. file without ``arch=`` is matched against them by parameter names and shapes.
LI2018_ZOO = ("resnet20", "resnet56", "resnet110", "resnet20_noshort", "resnet32_noshort", "resnet44_noshort",
              "resnet56_noshort", "resnet110_noshort", "resnet18", "resnet34", "resnet50", "vgg9", "vgg16", "vgg19",
              "densenet121", "wrn56_2", "wrn56_4")


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes
    ----------
    model : nn.Module
        The network, in eval mode, on ``device``.
    meta : dict
        The checkpoint meta of docs/architecture.md (``arch``, ``loss``, ``normalization``, ``metrics``, ...).
    criterion : landscape.losses.Loss
        The training objective rebuilt from ``meta["loss"]`` and ``meta["loss_kwargs"]``.
    device : torch.device
    path : pathlib.Path or None
    digest : str
        SHA-256 of the weights (stable id used for caching).
    """

    model: nn.Module
    meta: dict
    criterion: nn.Module
    device: torch.device
    path: Path | None = None
    digest: str = ""

    @property
    def name(self) -> str:
        """Short name: the file stem, else the architecture."""
        return self.path.stem if self.path else str(self.meta.get("arch", "model"))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the input normalisation recorded in ``meta["normalization"]`` (if any)."""
        norm = self.meta.get("normalization")
        if not norm:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = torch.as_tensor(norm["mean"], dtype=x.dtype, device=x.device).reshape(shape)
        std = torch.as_tensor(norm["std"], dtype=x.dtype, device=x.device).reshape(shape)
        return (x - mean) / std

    def prepare(self, data: Dataset, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of ``data`` on the checkpoint's device, normalised as in training.

        Every computation feeds data to the model through this function (or through
        :meth:`check_data` and ``data.batches(..., transform=ck.normalize)`` when it streams).
        8-bit images travel as ``uint8`` and are scaled to [0, 1] in ``dtype`` on the device.
        """
        self.check_data(data)
        x, y = data.tensors(self.device, dtype=dtype)
        return self.normalize(x), y

    def check_data(self, data: Dataset) -> None:
        """Check that ``data`` fits this checkpoint before any work; warn once when normalisation is missing.

        The normalisation in ``meta`` always wins over the dataset's own statistics. Without one,
        inputs are used as they are, and for a checkpoint file a
        :class:`landscape.data.NormalizationWarning` says how to pass one when the inputs look raw
        (see :meth:`landscape.Dataset.looks_normalized`); a plain module gets its data as given.

        Raises
        ------
        DatasetError
            Inputs of another shape than ``meta["input_shape"]`` (the message names both and how to
            resize), labels beyond ``meta["num_classes"]``, or a normalisation whose channel count
            differs from the data's.
        """
        import warnings

        from .data import NormalizationWarning, shape_hint

        expected = self.meta.get("input_shape")
        if expected is not None and tuple(data.input_shape) != tuple(expected):
            raise DatasetError(f"dataset {data.name!r} has inputs of shape {data.input_shape}, but checkpoint "
                               f"{self.name!r} expects {tuple(expected)}: {shape_hint(expected)} (it was trained on "
                               f"{self.meta.get('dataset') or 'data of that shape'}).")
        n_classes = self.meta.get("num_classes")
        if n_classes is not None and int(data.y.max()) >= n_classes:
            raise DatasetError(f"dataset {data.name!r} has labels up to {int(data.y.max())} "
                               f"({len(data.classes)} classes), but checkpoint {self.name!r} has {n_classes} outputs; "
                               f"use the dataset it was trained on ({self.meta.get('dataset') or 'see its meta'}).")
        norm = self.meta.get("normalization")
        if norm:
            channels = len(norm["mean"]) if isinstance(norm["mean"], (list, tuple)) else 1
            if channels not in (1, data.channels):
                raise DatasetError(f"checkpoint {self.name!r} normalises {channels} channel(s), but dataset "
                                   f"{data.name!r} has {data.channels}; use data with {channels} channel(s) or give "
                                   "one mean and std per channel.")
        elif self.path is not None and not data.looks_normalized():  # a module of one's own takes data as given
            own = data.normalization
            warnings.warn(f"checkpoint {self.name!r} has no normalisation in its meta and the inputs of {data.name!r} "
                          f"look unnormalised (never negative, channel means {[round(m, 3) for m in own['mean']]}), "
                          "so they are used as they are; if the model was trained on normalised inputs, pass "
                          "meta={'normalization': {'mean': [...], 'std': [...]}} to load_checkpoint (CLI: "
                          "--normalization train or MEAN/STD), or {'mean': [0], 'std': [1]} if it takes raw inputs.",
                          NormalizationWarning, stacklevel=3)

    def evaluate(self, data: Dataset, batch_size: int | None = None) -> tuple[float, float]:
        """Mean training-objective loss and accuracy on ``data``."""
        from .objective import evaluate

        x, y = self.prepare(data)
        return evaluate(self.model, self.criterion, x, y, batch_size)


# -- reading -------------------------------------------------------------------------------
def _sniff(path: Path) -> str:
    """Tell the format from the first bytes: 'safetensors', 'zip' (torch.save), 'pickle' or 'unknown'."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    # safetensors before pickle: a header length of 128 mod 256 also starts with 0x80
    if len(head) == 9 and head[8:9] == b"{":
        n = struct.unpack("<Q", head[:8])[0]
        if 0 < n <= path.stat().st_size - 8:
            return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the safetensors file cannot be read ({exc}); "
                              "it is truncated or corrupted.") from exc
    meta = {}
    if SAFETENSORS_META_KEY in header:
        try:
            meta = json.loads(header[SAFETENSORS_META_KEY])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: the meta in the safetensors header is not valid JSON ({exc}).") from exc
    return state, meta


def _check_zip(path: Path) -> None:
    """torch.load does not verify the CRCs of its zip container; do it so corruption is caught."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"{path}: the zip container cannot be read ({exc}); "
                              "the file is truncated or corrupted.") from exc
    if bad is not None:
        raise CheckpointError(f"{path}: entry {bad!r} fails its CRC check; the file is truncated or corrupted.")


def _read_torch(path: Path, fmt: str) -> Any:
    if fmt == "zip":
        _check_zip(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects that would run code when unpickled, and "
            "checkpoints are loaded as data only (weights_only=True). Re-save it from trusted code as "
            "{'state_dict': model.state_dict(), 'meta': {...}} or as .safetensors.") from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, struct.error) as exc:
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); "
                              "it is truncated or corrupted.") from exc


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_checkpoint_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, str]:
    """Read ``(state_dict, meta_found_in_file, kind)`` from any supported file, without building a model.

    ``kind`` is one of ``"safetensors"``, ``"dict"``, ``"bare"``, ``"lightning"``, ``"li2018"``.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path.")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; give the checkpoint file inside it.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); the save was probably interrupted.")
    fmt = _sniff(path)
    if fmt == "safetensors":
        state, meta = _read_safetensors(path)
        return state, meta, "safetensors"
    if fmt == "unknown":
        raise CheckpointError(f"{path}: not a checkpoint: expected .safetensors or a torch.save file "
                              "(.pt/.pth/.ckpt); the first bytes match neither.")
    obj = _read_torch(path, fmt)
    if _is_state_dict(obj):
        return dict(obj), {}, "bare"
    if isinstance(obj, Mapping) and "state_dict" in obj:
        state = obj["state_dict"]
        if not _is_state_dict(state):
            raise CheckpointError(f"{path}: 'state_dict' is not a mapping of parameter names to tensors.")
        if "hyper_parameters" in obj or "pytorch-lightning_version" in obj:
            hp = obj.get("hyper_parameters") or {}
            meta = dict(hp.get("meta") or {k: hp[k] for k in META_KEYS if k in hp})
            meta.setdefault("epoch", obj.get("epoch"))
            return dict(state), meta, "lightning"
        if "meta" not in obj and {"acc", "epoch"} <= set(obj):
            return dict(state), _li_meta(obj), "li2018"
        meta = obj.get("meta") or {}
        if not isinstance(meta, Mapping):
            raise CheckpointError(f"{path}: 'meta' must be a dict, got {type(meta).__name__}.")
        return dict(state), dict(meta), "dict"
    keys = sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(f"{path}: holds {keys}, which is neither a state_dict nor {{'state_dict', 'meta'}}; "
                          "save `{'state_dict': model.state_dict(), 'meta': meta}`.")


def _li_meta(obj: Mapping) -> dict:
    """The meta a Li et al. ``{"acc", "epoch", "state_dict"}`` file carries: its epoch and test accuracy."""
    meta: dict[str, Any] = {}
    if isinstance(obj.get("epoch"), int) and not isinstance(obj.get("epoch"), bool):
        meta["epoch"] = obj["epoch"]
    acc = obj.get("acc")
    acc = float(acc) if isinstance(acc, (int, float, torch.Tensor)) and not isinstance(acc, bool) and \
        (not isinstance(acc, torch.Tensor) or acc.numel() == 1) else None
    if acc is not None and 0 <= acc <= 100:
        meta["metrics"] = {"test_accuracy": acc / 100}  # their acc is 100 - test error in percent
    return meta


def _shared_prefixes(state: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """``state`` with the prefixes every key shares removed one at a time (``module.``, ``_orig_mod.``, ...)."""
    out, cur = [], dict(state)
    while cur and all("." in k for k in cur):
        first = {k.split(".", 1)[0] for k in cur}
        if len(first) != 1:
            break
        n = len(first.pop()) + 1
        cur = {k[n:]: v for k, v in cur.items()}
        out.append(cur)
    return out


def match_keys(state: Mapping[str, torch.Tensor], model: nn.Module, key_map: Mapping[str, str] | None = None,
               kind: str = "dict") -> dict[str, torch.Tensor]:
    """``state`` renamed to the model's parameter names where a documented rule says how (see the module docstring).

    Parameters
    ----------
    state : mapping of str to Tensor
        The file's tensors.
    model : nn.Module
        The model they are for; its ``foreign_keys`` (see :mod:`landscape.models`) are applied.
    key_map : mapping of str to str, optional
        More prefix renames ``{"their.prefix.": "our.prefix."}``, applied after the model's own.
    kind : str
        The file kind; in a ``"lightning"`` file the keys under one submodule prefix are taken.

    Returns
    -------
    dict
        The renamed state, with the candidate (prefix removed or not) that names the most of
        the model's keys; keys that still do not fit are left for :func:`_load_state` to report.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return _match(state, expected, {**models.foreign_keys(model), **dict(key_map or {})}, kind)


def _match(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple], renames: Mapping[str, str],
           kind: str = "dict") -> dict[str, torch.Tensor]:
    """:func:`match_keys` against a layout ``{name: shape}`` and prefix ``renames``."""
    def rename(key: str) -> str:
        if key in expected:
            return key
        for theirs, ours in renames.items():
            if key.startswith(theirs):
                return ours + key[len(theirs):]
        return key

    candidates = [dict(state), *_shared_prefixes(state)]
    if kind == "lightning":  # a LightningModule holds the model as one of its submodules
        for prefix in sorted({k.split(".", 1)[0] + "." for k in state if "." in k}):
            candidates.append({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    renamed = [{rename(k): v for k, v in c.items()} for c in candidates]
    best = max(renamed, key=lambda c: len(set(c) & set(expected)))  # the first of equals: no prefix removed
    for key, shape in expected.items():  # files of PyTorch < 0.4.1 have no step counters
        if key.endswith(".num_batches_tracked") and key not in best and \
                key[:-len("num_batches_tracked")] + "running_mean" in best:
            best[key] = torch.zeros(shape, dtype=torch.int64)
    return best


@functools.lru_cache(maxsize=64)
def _layout(name: str, input_shape: tuple[int, ...]) -> tuple[dict[str, tuple], dict[str, str]]:
    """``({name: shape}, foreign_keys)`` of architecture ``name`` with its defaults, built on the meta device."""
    with torch.device("meta"):
        model = models.build(name, input_shape=input_shape, num_classes=10)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, models.foreign_keys(model)


def detect_architecture(state: Mapping[str, torch.Tensor], candidates: tuple[str, ...] = LI2018_ZOO,
                        input_shape=(3, 32, 32)) -> list[tuple[str, int]]:
    """The ``(arch, num_classes)`` of the ``candidates`` whose parameter names and shapes ``state`` has exactly.

    Every candidate is built once on the meta device (no memory, no weights), with its default
    arguments; the head's width is read from the file, so any number of classes fits.
    """
    found = []
    for name in candidates:
        expected, renames = _layout(name, tuple(input_shape))
        mapped = _match(state, expected, renames)
        head = mapped.get("head.weight")
        if set(mapped) != set(expected) or head is None or head.dim() != 2:
            continue
        if all(tuple(v.shape) == expected[k] for k, v in mapped.items() if not k.startswith("head.")) \
                and tuple(head.shape[1:]) == expected["head.weight"][1:]:
            found.append((name, int(head.shape[0])))
    return found


def _head_classes(state: Mapping[str, torch.Tensor], arch: str, meta: Mapping[str, Any]) -> int | None:
    """Width of the file's classifier for registered architecture ``arch`` (read through its key map), or None."""
    try:
        with torch.device("meta"):
            model = models.build(arch, input_shape=meta.get("input_shape"), num_classes=10,
                                 **dict(meta.get("arch_kwargs") or {}))
    except (ArchitectureError, LandscapeError):
        return None  # the build fails again, with its message, when the model is built for real
    head = match_keys(state, model).get("head.weight")
    return int(head.shape[0]) if isinstance(head, torch.Tensor) and head.dim() == 2 else None


def _li_defaults(state: Mapping[str, torch.Tensor], meta: Mapping[str, Any], path: Path) -> dict:
    """Meta entries a Li et al. file implies: :data:`LI2018`, its architecture (detected when unnamed), its classes."""
    out = {**LI2018, **({"input_shape": list(meta["input_shape"])} if meta.get("input_shape") else {})}
    arch = meta.get("arch")
    if arch:
        classes = _head_classes(state, arch, {**out, **meta}) if arch in models.names() else None
        return {**out, **({"num_classes": classes} if classes and not meta.get("num_classes") else {})}
    found = detect_architecture(state, LI2018_ZOO, tuple(out["input_shape"]))
    if not found:
        raise CheckpointError(f"{path}: a file of Li et al.'s loss-landscape code whose weights match none of their "
                              f"architectures this toolkit has ({', '.join(LI2018_ZOO)}); pass arch='...' (and "
                              "arch_kwargs in meta=) or --arch.")
    if len(found) > 1:
        raise CheckpointError(f"{path}: the weights fit several architectures ({', '.join(n for n, _ in found)}); "
                              "pass arch='...' or --arch.")
    return {**out, "arch": found[0][0], "num_classes": found[0][1]}


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:6]}{' ...' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
        raise CheckpointError(f"{path}: the weights do not fit architecture {type(model).__name__}: "
                              f"{'; '.join(parts)}. Check meta['arch'] / meta['arch_kwargs'] or the arch you named, "
                              "or rename the file's keys with key_map={'their.prefix.': 'our.prefix.'}.")
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}" for k, v in state.items()
           if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise CheckpointError(f"{path}: shape mismatch with architecture {type(model).__name__}: {'; '.join(bad[:4])}. "
                              "Check meta['arch_kwargs'], meta['input_shape'] and meta['num_classes'].")
    model.load_state_dict(state, strict=True)


def _digest(state: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def build_criterion(meta: Mapping[str, Any]) -> nn.Module:
    """The training objective named by ``meta["loss"]`` (a name or a combined spec) and ``meta["loss_kwargs"]``."""
    name = meta.get("loss") or "ce"
    kwargs = dict(meta.get("loss_kwargs") or {})
    return losses.build(name, **kwargs)


def _check_meta(meta: Any, path: Path) -> dict:
    """The meta as a plain dict whose entries have the types the rest of the toolkit relies on."""
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"{path}: the meta must be a JSON object (a dict), got {type(meta).__name__}; "
                              "pass meta={'arch': ..., 'num_classes': ..., ...}.")
    meta = dict(meta)

    def bad(key: str, want: str):
        raise CheckpointError(f"{path}: meta[{key!r}] must be {want}, got {meta[key]!r}; fix the meta in the file or "
                              f"pass meta={{{key!r}: ...}} to override it.")

    for key in ("arch_kwargs", "loss_kwargs", "metrics"):
        if meta.get(key) is not None and not isinstance(meta[key], Mapping):
            bad(key, "a dict")
    for key in ("arch", "loss", "dataset"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            bad(key, "a string")
    nc = meta.get("num_classes")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc < 1):
        bad("num_classes", "a positive integer")
    shape = meta.get("input_shape")
    if shape is not None and (not isinstance(shape, (list, tuple)) or not shape
                              or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
        bad("input_shape", "a list of positive integers such as [3, 32, 32]")
    classes = meta.get("classes")
    if classes is not None and not isinstance(classes, (list, tuple)):
        bad("classes", "a list of class names")
    norm = meta.get("normalization")
    if norm:
        if not isinstance(norm, Mapping) or not {"mean", "std"} <= set(norm):
            bad("normalization", "{'mean': [...], 'std': [...]} with one value per channel")
        mean, std = norm["mean"], norm["std"]
        mean, std = (([mean] if isinstance(mean, (int, float)) else mean),
                     ([std] if isinstance(std, (int, float)) else std))
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in [*mean, *std]) \
                or len(mean) != len(std) or any(v <= 0 for v in std):
            bad("normalization", "{'mean': [...], 'std': [...]}: numbers, as many means as deviations, deviations > 0")
        if shape and len(mean) not in (1, shape[0]):
            raise CheckpointError(f"{path}: meta['normalization'] has {len(mean)} channel(s) but meta['input_shape'] "
                                  f"{list(shape)} has {shape[0]}; give one mean and std per channel.")
    return meta


def _warn_non_finite(model: nn.Module, path: Path) -> None:
    """Warn once, naming them, when weights hold NaN or inf (a diverged run): every number will be NaN."""
    import warnings

    bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        warnings.warn(f"{path}: {len(bad)} tensor(s) hold NaN or inf values ({', '.join(bad[:5])}"
                      f"{' ...' if len(bad) > 5 else ''}); the training run probably diverged, and losses computed "
                      "from these weights will be NaN.", RuntimeWarning, stacklevel=3)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "auto", arch: str | None = None,
                    meta: Mapping[str, Any] | None = None, *, trust_code: bool = False,
                    output: OutputSpec = None, key_map: Mapping[str, str] | None = None) -> Checkpoint:
    """Load a checkpoint as data and rebuild its model and training objective.

    Parameters
    ----------
    path : path-like
        ``.safetensors``, ``.pt``/``.pth`` (dict with ``state_dict`` and ``meta`` or a bare
        state_dict), a Lightning ``.ckpt`` or a ``.t7`` file of Li et al.'s loss-landscape code.
    device : str or torch.device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda[:N]"``.
    arch : str, optional
        Architecture name or ``"module:Class"``; overrides ``meta["arch"]``. Needed for a bare
        state_dict without meta. A path given here is trusted: you named it. A Li et al. file
        without it is matched against :data:`LI2018_ZOO` by its parameter names and shapes.
    meta : dict, optional
        Meta entries supplied by the caller (for bare state_dicts, Lightning and Li et al.
        files); they override what the file holds and what its format implies (:data:`LI2018`).
    trust_code : bool
        Let the file's own meta name a ``"module:Class"`` architecture. Off by default: a file's
        meta may name only registered architectures, because importing a module runs its code.
    output : int, str or callable, optional
        The output adapter of a model whose forward returns a tuple, a dict or an object with
        ``.logits`` (see :mod:`landscape.objective`); default ``meta["output"]``. A position or
        a key/attribute name is recorded in the meta; a function only on the model.
    key_map : dict, optional
        Prefix renames ``{"their.prefix.": "our.prefix."}`` for a file saved by other code,
        applied after the architecture's own ``foreign_keys``.

    Returns
    -------
    Checkpoint
        With ``.model`` in eval mode on the device, ``.meta`` and ``.criterion``.

    Raises
    ------
    CheckpointError
        Missing, empty, truncated, corrupted, unsafe or mismatched files; meta of the wrong types;
        a code path in the file's meta without ``trust_code``.
    """
    path = Path(path)
    state, file_meta, kind = read_checkpoint_file(path)
    file_meta = _check_meta(file_meta, path)
    given = dict(_check_meta(meta or {}, path))
    if arch is not None:
        given["arch"] = arch
    implied = _li_defaults(state, {**file_meta, **given}, path) if kind == "li2018" else {}
    full = _check_meta({**implied, **file_meta, **given}, path)
    if output is None and full.get("output") is not None:
        if isinstance(full["output"], bool) or not isinstance(full["output"], (int, str)):
            raise CheckpointError(f"{path}: meta['output'] must be a tuple position (int) or a key or attribute name "
                                  f"(str), got {full['output']!r}; pass output= to override it.")
        output = full["output"]
    output = check_output(output)
    if callable(output):
        full.pop("output", None)  # a function is code: it lives on the model, never in a meta
    elif output is not None:
        full["output"] = output
    if not full.get("arch"):
        raise CheckpointError(f"{path}: no architecture known for this {kind} checkpoint; pass arch='mlp' "
                              f"(or 'module:Class') and meta={{'input_shape': ..., 'num_classes': ...}}, "
                              "or --arch on the CLI.")
    # a code path is followed only if the caller named it (arch=, meta=) or opted in for the file's own
    named_by_caller = arch is not None or (meta is not None and "arch" in meta)
    try:
        model = models.build(full["arch"], input_shape=full.get("input_shape"), num_classes=full.get("num_classes"),
                             trust_code=trust_code or named_by_caller, **dict(full.get("arch_kwargs") or {}))
    except ArchitectureError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    state = match_keys(state, model, key_map, kind)
    _load_state(model, state, path)
    _warn_non_finite(model, path)
    set_output(model, output)
    try:
        criterion = build_criterion(full)
    except LossError as exc:
        raise CheckpointError(f"{path}: meta names loss {full.get('loss')!r}, which cannot be built: {exc}") from exc
    dev = resolve_device(device)
    model.to(dev).eval()
    criterion.to(dev)
    return Checkpoint(model=model, meta=full, criterion=criterion, device=dev, path=path, digest=_digest(state))


def as_checkpoint(ck, device: str | torch.device = "auto", criterion=None, output: OutputSpec = None) -> Checkpoint:
    """A :class:`Checkpoint` from anything a user holds: a Checkpoint, a path, or a plain ``nn.Module``.

    Every computation takes its model through this function, so each accepts the same forms.

    Parameters
    ----------
    ck : Checkpoint, path-like or nn.Module
        A loaded checkpoint, a checkpoint file (loaded with :func:`load_checkpoint`), or a model
        of your own (used where it is, on its own device and dtype; never moved or modified).
    device : str or torch.device
        Device a file is loaded to.
    criterion : str or nn.Module, optional
        The loss: a :mod:`landscape.losses` name or spec, or any ``loss(logits, y)`` module such
        as ``nn.CrossEntropyLoss()``. It replaces a checkpoint's own training objective; a plain
        module without one gets cross-entropy.
    output : int, str or callable, optional
        The output adapter of a model whose forward returns a tuple, a dict or an object with
        ``.logits`` (see :mod:`landscape.objective`). It is set on the model (the one attribute
        :data:`landscape.objective.OUTPUT_ATTRIBUTE`), so every computation given the returned
        checkpoint, or the model itself afterwards, reads its logits the same way.

    Returns
    -------
    Checkpoint
    """
    if isinstance(ck, (str, os.PathLike)):
        ck = load_checkpoint(ck, device=device, output=output)
    elif output is not None and isinstance(ck, (Checkpoint, nn.Module)):
        set_output(ck.model if isinstance(ck, Checkpoint) else ck, output)
        if isinstance(ck, Checkpoint):  # the meta records a position or name, never a function
            meta = {k: v for k, v in ck.meta.items() if k != "output"}
            ck = dataclasses.replace(ck, meta=meta if callable(output) else {**meta, "output": output})
    if isinstance(ck, Checkpoint):
        if criterion is None:
            return ck
        return dataclasses.replace(ck, criterion=_criterion_module(criterion, ck.device),
                                   meta={**ck.meta, "loss": _criterion_name(criterion), "loss_kwargs": {}})
    if isinstance(ck, nn.Module):
        param = next(ck.parameters(), None)
        dev = param.device if param is not None else resolve_device(device)
        crit = criterion if criterion is not None else "ce"
        meta = {"arch": type(ck).__name__, "loss": _criterion_name(crit), "loss_kwargs": {}}
        adapter = output_of(ck)
        if adapter is not None and not callable(adapter):
            meta["output"] = adapter
        return Checkpoint(model=ck, meta=meta, criterion=_criterion_module(crit, dev), device=dev, path=None,
                          digest=_digest(ck.state_dict()))
    from .errors import ArgumentError

    raise ArgumentError(f"expected a Checkpoint, a checkpoint path or an nn.Module, got {type(ck).__name__}.")


def _criterion_module(criterion, device: torch.device) -> nn.Module:
    if isinstance(criterion, str):
        return losses.build(criterion).to(device)
    if isinstance(criterion, nn.Module) or callable(criterion):
        return criterion
    from .errors import ArgumentError

    raise ArgumentError(f"criterion must be a loss name or a loss module such as nn.CrossEntropyLoss(), got "
                        f"{type(criterion).__name__}.")


def _criterion_name(criterion) -> str:
    return criterion if isinstance(criterion, str) else type(criterion).__name__


# -- writing -------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, model: nn.Module | Mapping[str, torch.Tensor],
                    meta: Mapping[str, Any]) -> Path:
    """Write weights and meta atomically (a crash never leaves half a file where a good one was).

    The format follows the suffix: ``.safetensors`` (meta in the header) or ``.pt``/``.pth``
    (``{"state_dict", "meta"}``).
    """
    path = Path(path)
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    try:
        meta_json = json.dumps(dict(meta))
    except TypeError as exc:
        raise CheckpointError(f"meta for {path} must be JSON-serialisable (plain numbers, strings, lists, dicts): "
                              f"{exc}") from exc
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata={SAFETENSORS_META_KEY: meta_json})
        elif path.suffix in (".pt", ".pth"):
            torch.save({"state_dict": state, "meta": json.loads(meta_json)}, tmp)
        else:
            raise CheckpointError(f"cannot save {path}: use a .safetensors, .pt or .pth suffix.")
    return path
