"""``landscape embed``: feature geometry of checkpoints: t-SNE maps, hypersphere, angular statistics.

For each checkpoint the features of a layer (default: the penultimate features) are
extracted on the data. ``--method tsne`` draws an openTSNE map per checkpoint;
``--method sphere`` draws the features on the unit sphere (``--dim 3``, interactive HTML
that works offline) or circle (``--dim 2``). Written to ``--out``: ``<name>-tsne.npz`` /
``<name>-sphere.npz`` (the results), ``<name>-tsne.png``, ``<name>-sphere.html|png``, with
several checkpoints ``tsne-grid.png`` and ``sphere-grid.html|png`` side by side, and always
``stats.npz``, ``stats.md`` and ``stats-table.png``: the angular statistics of every checkpoint
in the full feature space (compactness, separation, ratio, cosine silhouette).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from landscape.io import atomic_path
from viz.cli import (add_common, check_outputs, data_spec, float_arg, input_files, int_arg, load_checkpoint,
                     stamp_threads)

EPILOG = """examples:
  landscape embed trained_models/mlp-ce.safetensors
  landscape embed trained_models/mlp-ce.safetensors trained_models/mlp-mam-softmax.safetensors --method sphere --dim 3
  landscape embed trained_models/cnn-ce.safetensors --method tsne --layer body.conv3 --perplexity 20
  landscape embed trained_models/mlp-ce.safetensors --method tsne --map-split train   # test set onto the train map
  landscape embed trained_models/*-ce.safetensors --method sphere --dim 2 --projection lda --out runs/circle
  landscape embed trained_models/mlp-ce.safetensors trained_models/mlp-mam-softmax.safetensors --method sphere \
      --projection stress   # angles kept as well as 3 dimensions allow
"""


def register(sub) -> None:
    p = sub.add_parser("embed", help="t-SNE maps, hypersphere figures and angular statistics of features",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint files, drawn side by side")
    p.add_argument("--method", default="both", choices=("tsne", "sphere", "both"),
                   help="t-SNE maps, hypersphere figures, or both (default: both)")
    p.add_argument("--layer", default=None,
                   help="submodule whose output is used (default: the penultimate features, model.features); "
                        "a wrong name lists the available ones")
    p.add_argument("--data", default=None,
                   help="dataset spec (default: the one in each checkpoint's meta, else digits)")
    p.add_argument("--split", default="test", choices=("train", "test"), help="data split drawn (default: test)")
    p.add_argument("--samples", "--subset", dest="samples", type=int_arg("--samples", min=1), default=None,
                   help="use a seeded random subset of this size")
    p.add_argument("--arch", default=None, help="architecture, for bare state_dicts without meta")
    g = p.add_argument_group("t-SNE")
    g.add_argument("--perplexity", type=float_arg("--perplexity", min=0, include_min=False), default=30.0,
                   help="t-SNE perplexity (default: 30)")
    g.add_argument("--n-jobs", type=int_arg("--n-jobs", min=1), default=1,
                   help="t-SNE threads; 1 is bit-reproducible (default: 1)")
    g.add_argument("--map-split", choices=("train", "test"), default=None,
                   help="fit the map on this split and place the --split points onto it")
    g = p.add_argument_group("hypersphere")
    g.add_argument("--dim", type=int, default=None, choices=(2, 3),
                   help="unit circle (2) or sphere (3) (default: the feature dimension if 2 or 3, else 3)")
    g.add_argument("--projection", default="auto", choices=("auto", "pca", "lda", "stress", "none"),
                   help="how features reach --dim dimensions before normalisation: PCA, LDA, or 'stress', an "
                        "angle-preserving spherical embedding (default: auto = none if they already have --dim "
                        "dimensions, else PCA); every figure prints the stress and rank correlation of the angles")
    g.add_argument("--landmarks", type=int, default=1000,
                   help="stress projection: points embedded jointly; the rest are placed against them (default: 1000)")
    g.add_argument("--static", action="store_true", help="matplotlib PNG instead of interactive HTML for spheres")
    p.add_argument("--no-plots", action="store_true", help="write only the result files and the statistics")
    add_common(p, out="runs/embed")
    p.set_defaults(func=run)


def _dataset(args, ck, split: str):
    import landscape as ls

    spec = data_spec(args, ck)
    return ls.load_dataset(spec, split=split).subset(args.samples, seed=args.seed)


def _features(args, ck, split: str):
    import landscape as ls

    return ls.extract_features(ck, _dataset(args, ck, split), layer=args.layer)


def _say(args, text: str) -> None:
    if not args.quiet:
        print(text)


def run(args) -> int:
    from landscape.embedding import by_name, compare_stats

    out = Path(args.out)
    cks = by_name([load_checkpoint(args, path) for path in args.checkpoints])
    check_outputs(out, _outputs(cks), input_files(args))
    feats = {name: _features(args, ck, args.split) for name, ck in cks.items()}
    table = compare_stats(feats, seed=args.seed)
    written = _write_table(args, table, out)
    if args.method in ("tsne", "both"):
        written += _run_tsne(args, cks, feats, table, out)
    if args.method in ("sphere", "both"):
        written += _run_sphere(args, feats, out)
    _say(args, table.to_markdown())
    _say(args, f"wrote {len(written)} files to {out}")
    return 0


def _outputs(cks: dict) -> list[str]:
    """The names this command writes in --out (stems cover every suffix)."""
    per_model = [f"{name}-{kind}" for name in cks for kind in ("tsne", "sphere")]
    return ["stats", "stats-table", "tsne-grid", "sphere-grid", *per_model]


def _write_table(args, table, out: Path) -> list[Path]:
    written = [stamp_threads(table).save(out / "stats.npz")]
    with atomic_path(out / "stats.md") as tmp:
        tmp.write_text(table.to_markdown() + "\n")
    written.append(out / "stats.md")
    if not args.no_plots:
        from viz.embedding import stats_table

        written += _save(stats_table(table), out / "stats-table")
    return written


def _run_tsne(args, cks: dict, feats: dict, table, out: Path) -> list[Path]:
    """One map per checkpoint (fitted on --map-split when given, the drawn points placed onto it)."""
    import landscape as ls

    embs, written = {}, []
    for name, ck in cks.items():
        options = dict(seed=args.seed, perplexity=args.perplexity, n_jobs=args.n_jobs)
        if args.map_split and args.map_split != args.split:
            embs[name] = ls.tsne(_features(args, ck, args.map_split), **options).transform(feats[name])
        else:
            embs[name] = ls.tsne(feats[name], **options)
        written.append(stamp_threads(embs[name]).save(out / f"{name}-tsne.npz"))
        _say(args, f"{name}: t-SNE trustworthiness {embs[name].trustworthiness:.3f}, "
                   f"kNN accuracy {embs[name].knn_accuracy:.3f}")
    if args.no_plots:
        return written
    from viz.embedding import embedding, embedding_grid

    for name, emb in embs.items():
        written += _save(embedding(emb, title=name), out / f"{name}-tsne")
    if len(embs) > 1:
        written += _save(embedding_grid(embs, table=table), out / "tsne-grid")
    return written


def _run_sphere(args, feats: dict, out: Path) -> list[Path]:
    import landscape as ls

    spheres = {name: ls.hypersphere(f, dim=args.dim, projection=args.projection, seed=args.seed,
                                    landmarks=args.landmarks) for name, f in feats.items()}
    written = [stamp_threads(sph).save(out / f"{name}-sphere.npz") for name, sph in spheres.items()]
    for name, sph in spheres.items():
        fid = sph.fidelity
        kept = f"{100 * fid['explained_variance']:.0f}% variance, " if fid["explained_variance"] is not None else ""
        _say(args, f"{name}: {sph.projection} picture keeps {kept}angle stress {fid['stress']:.3f}, "
                   f"rank correlation {fid['spearman']:.3f}")
    if len(spheres) > 1:
        from landscape.embedding import separation_ranking

        ranking = separation_ranking(spheres, warn=False)
        if not ranking["agree"]:
            print(f"landscape embed: warning: {ranking['message']}", file=sys.stderr)
    if args.no_plots:
        return written
    from viz.embedding import hypersphere, hypersphere_grid

    interactive = False if args.static else None
    for name, sph in spheres.items():
        written += _save(hypersphere(sph, interactive=interactive, title=name), out / f"{name}-sphere")
    if len(spheres) > 1:
        written += _save(hypersphere_grid(spheres, interactive=interactive), out / "sphere-grid")
    return written


def _save(plot, stem: Path) -> list[Path]:
    try:
        return plot.save(stem)
    finally:
        plot.close()
