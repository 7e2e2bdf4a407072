"""``landscape gradcam CKPT [CKPT ...]``: Grad-CAM figures of one or more checkpoints.

For each checkpoint: ``gradcam-<name>.png`` (image, heat map, Guided Grad-CAM per image),
its plotted values ``gradcam-<name>.json`` and the maps ``gradcam-<name>.npz`` (``ls.CAM.load``).
With two or more checkpoints also ``gradcam-compare.png/.json``: the same images under each.
With ``--metrics [deletion insertion road]`` the maps of ``--metric-methods`` (default Grad-CAM,
Grad-CAM++ and Guided Grad-CAM) are scored on the same images (see ``landscape.faithfulness``):
the table (score and random-map baseline per checkpoint and method) is printed and drawn into
``faithfulness.png/.json``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import landscape as ls
from landscape.errors import ArgumentError, check_scalar
from landscape.faithfulness import METRICS, faithfulness
from landscape.gradcam import METHODS, gradcam
from viz.cli import add_common, check_outputs, data_spec, input_files, int_arg, load_checkpoint, stamp_threads

EPILOG = """examples:
  landscape gradcam trained_models/cnn-ce.safetensors --out runs/gradcam
  landscape gradcam trained_models/cnn-ce.safetensors --indices 0 5 17 --method gradcam++
  landscape gradcam trained_models/cnn-ce.safetensors trained_models/cnn-mam-softmax.safetensors --images 6
  landscape gradcam trained_models/resnet-ce.safetensors --layer stages.2.conv2 --target 3
  landscape gradcam trained_models/cnn-ce.safetensors trained_models/cnn-mam-softmax.safetensors --images 32 --metrics
"""
METRIC_METHODS = ("gradcam", "gradcam++", "guided-gradcam")


def register(sub) -> None:
    p = sub.add_parser("gradcam", help="Grad-CAM / Guided Grad-CAM figures; several checkpoints are compared",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint file(s); two or more are compared")
    pick = p.add_mutually_exclusive_group()
    # --images, --indices and --target are checked against the data and the model once they are loaded
    pick.add_argument("--images", type=int_arg("--images"), default=8, metavar="N",
                      help="number of test images, drawn at random with --seed (default: 8)")
    pick.add_argument("--indices", type=int_arg("--indices"), nargs="+", metavar="I",
                      help="these images of the split instead")
    p.add_argument("--layer", help="layer to explain, by name (default: the last convolutional layer)")
    p.add_argument("--method", default="guided-gradcam", choices=METHODS,
                   help="what to compute (default: guided-gradcam, which draws the heat map and Guided Grad-CAM)")
    p.add_argument("--target", type=int_arg("--target"),
                   help="class to explain for every image (default: the predicted class)")
    p.add_argument("--data", help="dataset spec (default: the one in the checkpoint's meta)")
    p.add_argument("--split", default="test", choices=ls.data.SPLITS)
    p.add_argument("--arch", help="architecture, for a bare state_dict without meta")
    p.add_argument("--metrics", nargs="*", choices=METRICS, metavar="METRIC",
                   help=f"score the maps' faithfulness ({', '.join(METRICS)}; default all three) and print the table")
    p.add_argument("--metric-methods", nargs="+", choices=METHODS, default=list(METRIC_METHODS), metavar="M",
                   help="map methods scored by --metrics (default: gradcam gradcam++ guided-gradcam)")
    add_common(p, out="runs/gradcam")
    p.set_defaults(func=run)


def select(data: ls.Dataset, count: int, indices: list[int] | None, seed: int) -> tuple[ls.Dataset, list[int]]:
    """The images to explain: ``indices`` of ``data``, or ``count`` of them drawn with ``seed``."""
    if indices is not None:
        bad = [i for i in indices if not 0 <= i < len(data)]
        if bad:
            raise ArgumentError(f"--indices {bad} are outside the {len(data)} images of {data.name!r} "
                                f"(0 to {len(data) - 1}).")
        idx = np.asarray(indices, dtype=np.int64)
        return (ls.Dataset(data.x[idx], data.y[idx], data.classes, f"{data.name}[indices {indices}]"),
                [int(i) for i in idx])
    count = check_scalar(count, "--images", int, min=1)
    chosen = np.sort(np.random.default_rng(seed).choice(len(data), size=min(count, len(data)), replace=False))
    return ls.Dataset(data.x[chosen], data.y[chosen], data.classes, f"{data.name}[{len(chosen)} at seed {seed}]"), \
        [int(i) for i in chosen]


def run(args) -> int:
    from viz.gradcam import gradcam_compare, gradcam_grid

    out = Path(args.out)
    checkpoints = [load_checkpoint(args, path) for path in args.checkpoints]
    names = [ck.name for ck in checkpoints]
    if len(set(names)) != len(names):
        names = [f"{i + 1}:{name}" for i, name in enumerate(names)]  # two files with the same stem
    stems = {name: f"gradcam-{name.replace(':', '-')}" for name in names}
    check_outputs(out, [*stems.values(), "gradcam-compare", "faithfulness"], input_files(args))
    spec = data_spec(args, checkpoints[0])
    images, indices = select(ls.load_dataset(spec, split=args.split), args.images, args.indices, args.seed)
    cams = {}
    for name, ck in zip(names, checkpoints):
        cam = gradcam(ck, images, target_layer=args.layer, method=args.method, target=args.target)
        cam.meta.update(indices=indices, split=args.split, seed=args.seed)
        cams[name] = stamp_threads(cam)
        stem = out / stems[name]
        written = [cam.save(stem), *_save(gradcam_grid(cam, max_images=len(images)), stem)]
        _report(args, name, cam, written)
    if len(cams) > 1:
        guided = all(cam.guided is not None for cam in cams.values())
        written = _save(gradcam_compare(cams, max_images=len(images), guided=guided), out / "gradcam-compare")
        if not args.quiet:
            print(f"compare   {' vs '.join(cams)}: {', '.join(map(str, written))}")
    if args.metrics is not None:
        _metrics(args, dict(zip(names, checkpoints)), images, out)
    return 0


def _metrics(args, checkpoints: dict, images: ls.Dataset, out: Path) -> None:
    """Faithfulness of each checkpoint's maps by each method: print the table, draw the figure."""
    from viz.gradcam import faithfulness_plot, faithfulness_table

    metrics = args.metrics or list(METRICS)
    results = []
    for name, ck in checkpoints.items():
        for method in dict.fromkeys(args.metric_methods):
            cam = gradcam(ck, images, target_layer=args.layer, method=method, target=args.target)
            for metric in metrics:
                fa = faithfulness(ck, cam, metric=metric, seed=args.seed, verbose=not args.quiet)
                fa.meta["checkpoint"] = name
                results.append(stamp_threads(fa))
    written = _save(faithfulness_plot(results), out / "faithfulness")
    print(faithfulness_table(results))
    if not args.quiet:
        print(f"  wrote {', '.join(map(str, written))}")


def _save(plot, stem: Path) -> list[Path]:
    try:
        return plot.save(stem)
    finally:
        plot.close()


def _report(args, name: str, cam, written: list[Path]) -> None:
    if args.quiet:
        return
    shown = ", ".join(f"{cam.classes[p]} {c:.0%}" for p, c in zip(cam.pred, cam.confidence))
    print(f"{name}: {cam.meta['method']} at layer {cam.meta['layer'] or '(input)'} on {len(cam)} images; "
          f"predicted {shown}")
    print(f"  wrote {', '.join(map(str, written))}")
