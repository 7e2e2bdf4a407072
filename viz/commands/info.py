"""``landscape info CKPT``: print a checkpoint's meta and evaluate its test accuracy."""
from __future__ import annotations

import argparse
import json

import landscape as ls
from viz.cli import add_common, data_spec, load_checkpoint


def register(sub) -> None:
    p = sub.add_parser("info", help="print a checkpoint's meta and evaluate it",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  landscape info trained_models/mlp-ce.safetensors")
    p.add_argument("checkpoint", help="checkpoint file (.safetensors, .pt, .pth, .ckpt)")
    p.add_argument("--arch", help="architecture, for a bare state_dict without meta")
    p.add_argument("--data", help="dataset spec to evaluate on (default: the one in the meta)")
    p.add_argument("--split", default="test", choices=ls.data.SPLITS)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    ck = load_checkpoint(args, args.checkpoint)
    spec = data_spec(args, ck)
    loss, acc = ck.evaluate(ls.load_dataset(spec, split=args.split))
    report = {"file": str(args.checkpoint), "meta": ck.meta, "evaluated": {
        "dataset": spec, "split": args.split, "loss": loss, "accuracy": acc, "device": str(ck.device)}}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"checkpoint  {args.checkpoint}")
    for k, v in ck.meta.items():
        print(f"  {k:14s}{json.dumps(v)}")
    n_params = sum(p.numel() for p in ck.model.parameters())
    print(f"parameters  {n_params}")
    print(f"evaluated   {spec} [{args.split}] on {ck.device}: loss {loss:.4f}  accuracy {acc:.4f}")
    recorded = (ck.meta.get("metrics") or {}).get(f"{args.split}_accuracy")
    if recorded is not None:
        print(f"recorded    accuracy {recorded:.4f} ({'matches' if abs(recorded - acc) < 1e-6 else 'DIFFERS'})")
    return 0
