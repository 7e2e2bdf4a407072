"""``landscape info [CKPT] [--data SPEC]``: a checkpoint's meta and test accuracy, a dataset's make-up, or both.

With a checkpoint: its meta, parameter count, and the loss and accuracy on --data (default:
the dataset its meta names when that needs no file, else digits). With --data: the dataset's
source, samples, class names and counts, channels, image size, storage and its own
normalisation statistics, and which normalisation the checkpoint applies (its meta's, which
wins). A checkpoint without a recorded normalisation gets one with --normalization.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings

import landscape as ls
from landscape.errors import ArgumentError
from viz.cli import add_common, data_spec, load_checkpoint

EPILOG = """examples:
  landscape info trained_models/mlp-ce.safetensors
  landscape info --data cifar10:~/data                 # a dataset alone: classes, size, statistics
  landscape info bare.pt --arch mlp --normalization train   # normalise with the training split's statistics
  landscape info model.pt --data cifar10:~/data --normalization 0.4914,0.4822,0.4465/0.2470,0.2435,0.2616
"""


def register(sub) -> None:
    p = sub.add_parser("info", help="print a checkpoint's meta and evaluate it, or describe a dataset",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("checkpoint", nargs="?", help="checkpoint file (.safetensors, .pt, .pth, .ckpt)")
    p.add_argument("--arch", help="architecture, for a bare state_dict without meta")
    p.add_argument("--data", help="dataset spec, e.g. cifar10:DIR, mnist:DIR, imagefolder:DIR?resize=48 "
                   "(default with a checkpoint: the one in its meta)")
    p.add_argument("--split", default="test", choices=ls.data.SPLITS)
    p.add_argument("--normalization", metavar="NORM",
                   help="input normalisation for a checkpoint whose meta has none: 'train' (the statistics of "
                        "--data's training split), 'none' (inputs as they are), or MEAN[,MEAN...]/STD[,STD...]; "
                        "replaces the meta's")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_common(p)
    p.set_defaults(func=run)


def parse_normalization(text: str, spec: str) -> dict[str, list[float]]:
    """``--normalization``: ``train``, ``none``, ``MEANS/STDS`` (comma-separated per channel) or a JSON object."""
    word = text.strip().lower()
    if word == "train":
        return ls.load_dataset(spec, split="train").normalization
    if word == "none":
        return {"mean": [0.0], "std": [1.0]}
    try:
        if word.startswith("{"):
            value = json.loads(text)
            means, stds = value["mean"], value["std"]
            means, stds = ([means] if isinstance(means, (int, float)) else means,
                           [stds] if isinstance(stds, (int, float)) else stds)
        else:
            m, s = text.split("/")
            means, stds = [float(v) for v in m.split(",")], [float(v) for v in s.split(",")]
        means, stds = [float(v) for v in means], [float(v) for v in stds]
    except (ValueError, KeyError, TypeError):
        means, stds = [], []
    if not means or len(means) != len(stds) or min(stds) <= 0:
        raise ArgumentError(f"--normalization {text!r}: give train, none, or MEAN[,MEAN...]/STD[,STD...] with one "
                            "mean and one positive std per channel, e.g. 0.1307/0.3081.")
    return {"mean": means, "std": stds}


def run(args) -> int:
    if not args.checkpoint and not args.data:
        raise ArgumentError("give a checkpoint file, --data SPEC, or both (landscape info --help).")
    ck = load_checkpoint(args, args.checkpoint) if args.checkpoint else None
    spec = data_spec(args, ck) if ck is not None else args.data
    if args.normalization:
        if ck is None:
            raise ArgumentError("--normalization applies to a checkpoint; give one before --data.")
        ck = dataclasses.replace(ck, meta={**ck.meta, "normalization": parse_normalization(args.normalization, spec)})
    data = ls.load_dataset(spec, split=args.split)
    report: dict = {"dataset": data.summary()}
    if ck is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ls.data.NormalizationWarning)
            loss, acc = ck.evaluate(data)
        for w in caught:  # one line each, not Python's two-line warning format
            print(f"landscape info: warning: {w.message}", file=sys.stderr)
        report = {"file": str(args.checkpoint), "meta": ck.meta, **report, "evaluated": {
            "dataset": spec, "split": args.split, "loss": loss, "accuracy": acc, "device": str(ck.device),
            "normalization": ck.meta.get("normalization") or None}}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    if ck is not None:
        _print_checkpoint(args, ck, report)
    _print_dataset(report["dataset"], ck)
    if ck is not None:
        ev = report["evaluated"]
        print(f"evaluated   {spec} [{args.split}] on {ck.device}: loss {ev['loss']:.4f}  accuracy {ev['accuracy']:.4f}")
        recorded = (ck.meta.get("metrics") or {}).get(f"{args.split}_accuracy")
        if recorded is not None:
            same = abs(recorded - ev["accuracy"]) < 1e-6
            print(f"recorded    accuracy {recorded:.4f} ({'matches' if same else 'DIFFERS'})")
    return 0


def _print_checkpoint(args, ck, report: dict) -> None:
    print(f"checkpoint  {args.checkpoint}")
    for k, v in ck.meta.items():
        print(f"  {k:14s}{json.dumps(v)}")
    print(f"parameters  {sum(p.numel() for p in ck.model.parameters())}")


def _numbers(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


def _print_dataset(s: dict, ck) -> None:
    names = ", ".join(s["classes"][:12]) + (f", ... ({s['num_classes'] - 12} more)" if s["num_classes"] > 12 else "")
    counts = s["class_counts"]
    size = f"{s['image_size'][0]} x {s['image_size'][1]}" if s["image_size"] else "-"
    storage = "uint8 (scaled to [0, 1] when used)" if s["storage"] == "uint8" else s["storage"]
    print(f"dataset     {s['name']}")
    print(f"  source        {s['source']}")
    print(f"  samples       {s['samples']} (per class {min(counts)}..{max(counts)})")
    print(f"  classes       {s['num_classes']}: {names}")
    print(f"  channels      {s['channels']}")
    print(f"  image size    {size}  (input shape {tuple(s['input_shape'])})")
    print(f"  storage       {storage}, {s['bytes'] / 2**20:.1f} MiB in memory")
    own = s["normalization"]
    print(f"  statistics    mean {_numbers(own['mean'])}  std {_numbers(own['std'])}  (this split's own)")
    if ck is not None:
        norm = ck.meta.get("normalization")
        used = (f"mean {_numbers(_list(norm['mean']))}  std {_numbers(_list(norm['std']))} (the checkpoint's; wins)"
                if norm else "none: the checkpoint's meta has none, inputs are used as they are")
        print(f"  normalised    {used}")


def _list(v) -> list[float]:
    return list(v) if isinstance(v, (list, tuple)) else [v]
