"""landscape phenotype LOSS [LOSS ...]: draw loss phenotypes (seed 003 section 4.1, seed 001 Fig. 1).

Writes into --out: curves.png (binary phenotypes at y = 1, raw and normalised), per loss
surface-<loss>.png and .html (3D phenotype, static and interactive), and for every loss
but the reference difference-<loss>-<reference>.png and .html (normalised difference);
each figure with a .json of the values it plots. Phenotypes are exact and deterministic:
--device and --seed do not change them.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import landscape as ls
from viz.cli import add_common, int_arg

EPILOG = """examples:
  landscape phenotype A2 CE --out runs/phenotype
  landscape phenotype "adma(a=0.1)" "adma(a=0.3)" "adma(a=0.5)" CE --out runs/adma --no-surfaces
  landscape phenotype C0 C1 C2 CE --reference CE --resolution 101 --out runs/cutout
  landscape phenotype --list
"""


def register(sub) -> None:
    p = sub.add_parser("phenotype", help="draw loss phenotypes: binary curves, 3D surfaces, differences",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("losses", nargs="*", metavar="LOSS",
                   help="registered loss names or specs such as 'adma(a=0.1)' or '0.5*ce + 0.5*a2'")
    p.add_argument("--reference", help="loss the others are compared with in difference plots "
                                       "(default: the last LOSS when there are two or more)")
    p.add_argument("--resolution", type=int_arg("--resolution", min=2), default=51,
                   help="grid points per axis over [0, 1] (default: 51)")
    p.add_argument("--no-surfaces", action="store_true", help="skip the per-loss 3D surfaces")
    p.add_argument("--list", action="store_true", help="list the losses that have a phenotype and exit")
    add_common(p, out="runs/phenotype")
    p.set_defaults(func=run)


def _slug(label: str) -> str:
    """A file-name-safe form of a loss label (``adma(a=0.1)`` -> ``adma_a=0p1``).

    No dots: a figure is saved as ``<stem>.png``, and a dot in the stem would be taken for the
    start of its suffix (``adma(a=0.1)`` and ``adma(a=0.3)`` both became ``...adma_a=0.png``).
    """
    return re.sub(r"[^A-Za-z0-9=-]+", "_", label.replace(".", "p")).strip("_") or "loss"


def run(args) -> int:
    import viz
    from landscape.errors import ArgumentError
    from landscape.phenotype import phenotype_names

    if args.list:
        print("\n".join(phenotype_names()))
        return 0
    if not args.losses:
        raise ArgumentError("name at least one loss, e.g. `landscape phenotype A2 CE`; `--list` shows them.")
    labels = list(dict.fromkeys(args.losses + ([args.reference] if args.reference else [])))
    phs = {label: ls.phenotype(label, resolution=args.resolution) for label in labels}
    reference = args.reference or (args.losses[-1] if len(args.losses) > 1 else None)
    out = Path(args.out)
    written: list[Path] = []

    def save(plot, stem):
        written.extend(plot.save(out / stem, close=True))

    save(viz.phenotype_curves(list(phs.values())), "curves")
    if not args.no_surfaces:
        for label, ph in phs.items():
            save(viz.phenotype_surface(ph, interactive=False), f"surface-{_slug(label)}")
            written.extend(viz.phenotype_surface(ph, interactive=True).save(out / f"surface-{_slug(label)}"))
    if reference:
        for label in labels:
            if label == reference:
                continue
            diff = ls.phenotype_difference(phs[label], phs[reference])
            stem = f"difference-{_slug(label)}-{_slug(reference)}"
            save(viz.phenotype_difference(diff), stem)
            written.extend(viz.phenotype_difference(diff, interactive=True).save(out / stem))
    if not args.quiet:
        for path in dict.fromkeys(written):
            print(path)
    return 0
