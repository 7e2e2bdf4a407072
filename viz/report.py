"""One-command reports: a TOML spec in, a folder of figures, JSON and ``index.html`` out.

A spec names checkpoints and lists figures::

    name = "default"
    data = "digits"
    seed = 0

    [models]
    ce = "trained_models/mlp-ce.safetensors"

    [[figure]]
    kind = "contour"
    models = ["ce"]
    grid = 31

Every figure kind (see :data:`KINDS`) separates *compute* options (they change the numbers)
from *style* options (they change only the drawing). Results are cached under
``reports/<name>/.cache/`` keyed by the checkpoint digests, the data, the seed and the
compute options, so re-rendering after a style change recomputes nothing and a changed
input recomputes only what depends on it. The whole spec is validated (unknown model,
figure kind or option, with its line number) before any work starts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import platform
import re
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

import landscape as ls
from landscape.errors import SpecError
from landscape.io import atomic_path, write_json
from landscape.results import Result

from .figure import Plot

CACHE_VERSION = 1


# -- figure kinds ---------------------------------------------------------------------------
@dataclasses.dataclass
class Kind:
    """A figure kind: what it computes (cached) and how it draws.

    ``compute(ctx, opts)`` returns ``{key: Result}`` via ``ctx.cached``; ``draw(results, opts, ctx)``
    returns ``{suffix: Plot}`` (suffix ``""`` for the main figure).
    """

    name: str
    help: str
    compute: Callable[["Context", dict], dict[str, Result]]
    draw: Callable[[dict[str, Result], dict, "Context"], dict[str, Plot]]
    compute_options: dict[str, Any]
    style_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    uses_models: bool = True
    tolerance: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(EXACT))

    def options(self) -> dict[str, Any]:
        """Compute and style options together."""
        return {**self.compute_options, **self.style_options}


KINDS: dict[str, Kind] = {}

# Golden tolerances (keyword arguments of landscape.testing.assert_plotted_values), chosen by how a
# kind's numbers are computed. Values measured between thread counts and CPU kernel sets
# (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, OPENBLAS_CORETYPE) stay 100x inside them.
EXACT = {"rtol": 1e-4, "atol": 1e-6}  # forward passes and closed forms: ~1e-7 relative between machines
ITERATIVE = {"rtol": 1e-2, "atol": 1e-5}  # Lanczos stops at a relative residual of 1e-3: ~1e-5 measured


def kind(name: str, help: str, compute_options: dict, style_options: dict | None = None, uses_models: bool = True,
         tolerance: dict | None = None):
    """Register a figure kind from a pair of functions ``(compute, draw)`` (decorates ``draw``).

    ``tolerance`` is how closely its plotted values are expected to agree between machines
    (keyword arguments of :func:`landscape.testing.assert_plotted_values`; default :data:`EXACT`).
    """
    def deco(pair):
        compute, draw = pair
        KINDS[name] = Kind(name, help, compute, draw, compute_options, style_options or {}, uses_models,
                           dict(tolerance or EXACT))
        return pair

    return deco


# -- context: checkpoints, data and the cache ----------------------------------------------
class Context:
    """What figure functions share: loaded checkpoints, datasets, seed, device and the result cache."""

    def __init__(self, spec: dict, root: Path, out: Path, device: str, quiet: bool, trust_code: bool = False):
        self.spec, self.root, self.out, self.device, self.quiet = spec, root, out, device, quiet
        self.trust_code = bool(trust_code or spec.get("trust_code", False))
        self.seed = int(spec.get("seed", 0))
        self.data_spec = spec.get("data", "digits")
        self.models: dict[str, str] = dict(spec.get("models", {}))
        self._ck: dict[str, ls.Checkpoint] = {}
        self._data: dict[tuple, ls.Dataset] = {}
        self.cache_dir = out / ".cache"
        self.log: list[dict] = []  # cache hits and misses of the current figure

    def checkpoint(self, name: str) -> ls.Checkpoint:
        """The spec's model ``name``, loaded once and kept."""
        if name not in self._ck:
            path = Path(self.models[name])
            self._ck[name] = ls.load_checkpoint(path if path.is_absolute() else self.root / path, device=self.device,
                                                trust_code=self.trust_code)
        return self._ck[name]

    def data(self, split: str = "test", spec: str | None = None) -> ls.Dataset:
        """The ``split`` of the dataset ``spec`` (default the spec's data), loaded once and kept."""
        key = (spec or self.data_spec, split)
        if key not in self._data:
            self._data[key] = ls.load_dataset(key[0], split=split)
        return self._data[key]

    def provenance(self, name: str) -> dict:
        """Record of model ``name``: file, digest, architecture and loss."""
        ck = self.checkpoint(name)
        return {"name": name, "file": self.models[name], "digest": ck.digest, "arch": ck.meta.get("arch"),
                "loss": ck.meta.get("loss"), "loss_kwargs": ck.meta.get("loss_kwargs", {})}

    def cached(self, tag: str, inputs: dict, compute: Callable[[], Result]) -> Result:
        """Return the cached result for ``(tag, inputs)`` or compute and store it."""
        blob = json.dumps({"v": CACHE_VERSION, "tag": tag, **inputs}, sort_keys=True, default=str)
        key = hashlib.sha256(blob.encode()).hexdigest()[:20]
        path = self.cache_dir / f"{tag}-{key}.npz"
        if path.exists():
            self.log.append({"tag": tag, "key": key, "cached": True})
            return Result.load(path)
        result = compute()
        result.save(path)
        self.log.append({"tag": tag, "key": key, "cached": False})
        return result


# -- spec loading and validation -----------------------------------------------------------
TOP_LEVEL = {"name", "title", "data", "seed", "device", "models", "figure", "description", "trust_code"}


def _line_of(text: str, pattern: str, start: int = 0) -> int:
    """1-based line of the first match of ``pattern`` at or after line index ``start``."""
    lines = text.splitlines()
    rx = re.compile(pattern)
    for i in range(start, len(lines)):
        if rx.search(lines[i]):
            return i + 1
    return start + 1


def load_spec(path: str | Path) -> tuple[dict, str]:
    """Read and validate a report spec; return ``(spec, text)``.

    Raises
    ------
    SpecError
        For TOML syntax errors, unknown top-level keys, models, figure kinds or options,
        with the line number.
    """
    path = Path(path)
    if not path.exists():
        raise SpecError(f"report spec {path} does not exist; the default is reports/default.toml.")
    text = path.read_text()
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: {exc}") from exc
    validate_spec(spec, text, path)
    spec.setdefault("name", path.stem)
    return spec, text


def validate_spec(spec: dict, text: str, path: Path | str = "spec") -> None:
    """Check every name in the spec before any work starts (see :func:`load_spec`)."""
    def fail(line: int, msg: str):
        raise SpecError(f"{path}, line {line}: {msg}")

    for key in spec:
        if key not in TOP_LEVEL:
            fail(_line_of(text, rf"^\s*{re.escape(key)}\s*="), f"unknown top-level key {key!r}; "
                 f"allowed: {', '.join(sorted(TOP_LEVEL))}.")
    models = spec.get("models", {})
    if not isinstance(models, dict):
        fail(_line_of(text, r"models"), "'models' must be a table of name = \"checkpoint path\".")
    figures = spec.get("figure", [])
    if not figures:
        fail(1, "no [[figure]] entries; add at least one (see reports/default.toml).")
    headers = [i for i, line in enumerate(text.splitlines()) if re.match(r"^\s*\[\[\s*figure\s*\]\]", line)]
    ids = set()
    for n, fig in enumerate(figures):
        start = headers[n] if n < len(headers) else 0
        kind_name = fig.get("kind")
        if kind_name not in KINDS:
            fail(_line_of(text, r"^\s*kind\s*=", start), f"unknown figure kind {kind_name!r}; available: "
                 f"{', '.join(sorted(KINDS))}.")
        k = KINDS[kind_name]
        allowed = set(k.options()) | {"kind", "id", "title", "models"}
        for opt in fig:
            if opt not in allowed:
                fail(_line_of(text, rf"^\s*{re.escape(opt)}\s*=", start),
                     f"figure kind {kind_name!r} has no option {opt!r}; options: {', '.join(sorted(allowed))}.")
        for m in fig.get("models", []):
            if m not in models:
                fail(_line_of(text, r"^\s*models\s*=", start), f"figure {kind_name!r} names model {m!r}, which is not "
                     f"in [models] ({', '.join(sorted(models)) or 'empty'}).")
        if k.uses_models and not fig.get("models"):
            fail(start + 1, f"figure kind {kind_name!r} needs models = [...].")
        fid = fig.get("id") or f"{n + 1:02d}-{kind_name}"
        if fid in ids:
            fail(_line_of(text, r"^\s*id\s*=", start), f"figure id {fid!r} is used twice.")
        ids.add(fid)


def apply_overrides(spec: dict, overrides: list[str] | tuple[str, ...] | None) -> dict:
    """A copy of ``spec`` with ``KEY=VALUE`` overrides applied (``landscape report --set KEY=VALUE ...``).

    ``KEY`` is a top-level key (``data``, ``seed``, ``title``, ...), ``models.NAME`` (the
    checkpoint of a model the spec names) or ``figure.ID.OPTION``: an option of the figure with
    that id, of every figure of that kind, or with ID ``*`` of every figure that has the option.
    ``VALUE`` is read as a TOML value (``51``, ``0.5``, ``true``, ``[-0.5, 0.5]``) when it is one
    and the key does not already hold a string; otherwise it is taken as written, so paths and
    specs such as ``cifar10:/data/cifar-10-batches-bin`` need no quotes.

    Raises
    ------
    SpecError
        A malformed override, or a key, model, figure or option the spec does not have.
    """
    import copy

    spec = copy.deepcopy(spec)
    for item in overrides or ():
        key, sep, raw = str(item).partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise SpecError(f"--set {item!r}: write KEY=VALUE, e.g. data=cifar10:/data or figure.contours.grid=11.")

        def value(current: Any) -> Any:
            if isinstance(current, str):
                return raw
            try:
                return tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                return raw

        if parts[0] == "models" and len(parts) == 2:
            if parts[1] not in spec.get("models", {}):
                raise SpecError(f"--set {key}: the spec has no model {parts[1]!r} "
                                f"({', '.join(sorted(spec.get('models', {}))) or 'none'}).")
            spec["models"][parts[1]] = raw
        elif parts[0] == "figure" and len(parts) == 3:
            figs = [f for n, f in enumerate(spec["figure"]) if parts[1] in (figure_id(n, f), f["kind"])
                    or (parts[1] == "*" and parts[2] in KINDS[f["kind"]].options())]
            if not figs:
                known = sorted({figure_id(n, f) for n, f in enumerate(spec["figure"])})
                raise SpecError(f"--set {key}: no figure with id or kind {parts[1]!r}; ids: {', '.join(known)}.")
            for fig in figs:
                if parts[2] not in KINDS[fig["kind"]].options():
                    raise SpecError(f"--set {key}: figure kind {fig['kind']!r} has no option {parts[2]!r}; options: "
                                    f"{', '.join(sorted(KINDS[fig['kind']].options()))}.")
                fig[parts[2]] = value(fig.get(parts[2], KINDS[fig["kind"]].options()[parts[2]]))
        elif len(parts) == 1 and parts[0] in TOP_LEVEL - {"models", "figure"}:
            spec[parts[0]] = value(spec.get(parts[0]))
        else:
            top = ", ".join(sorted(TOP_LEVEL - {"models", "figure"}))
            raise SpecError(f"--set {key}: unknown key; use one of {top}, models.NAME or figure.ID.OPTION.")
    return spec


# -- rendering -----------------------------------------------------------------------------
def figure_id(n: int, fig: dict) -> str:
    """The figure's ``id``, else ``<n + 1>-<kind>``."""
    return fig.get("id") or f"{n + 1:02d}-{fig['kind']}"


def build_report(spec_path: str | Path, out_root: str | Path = "reports", device: str = "auto",
                 quiet: bool = False, only: list[str] | None = None, root: str | Path = ".",
                 seed: int | None = None, trust_code: bool = False, overrides: list[str] | None = None) -> dict:
    """Render every figure of a spec into ``<out_root>/<name>/`` and return the provenance record.

    ``seed`` overrides the spec's seed; ``only`` renders the figures with these ids or kinds.
    ``trust_code`` (or ``trust_code = true`` in the spec) lets the checkpoints' meta name
    ``module:Class`` architectures.
    """
    spec = apply_overrides(load_spec(spec_path)[0], overrides)  # --set KEY=VALUE
    if seed is not None:
        spec["seed"] = int(seed)
    known = {figure_id(n, f) for n, f in enumerate(spec["figure"])} | {f["kind"] for f in spec["figure"]}
    unknown = sorted(set(only or []) - known)
    if unknown:
        raise SpecError(f"--only names {unknown}, which are neither figure ids nor kinds of {spec_path} "
                        f"({', '.join(sorted(known))}).")
    root = Path(root)
    out = Path(out_root) / spec["name"]
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(spec, root, out, spec.get("device", device) if device == "auto" else device, quiet, trust_code)
    for name, p in ctx.models.items():
        full = Path(p) if Path(p).is_absolute() else root / p
        if not full.exists():
            raise SpecError(f"{spec_path}: model {name!r} points to {p}, which does not exist.")
    records = []
    t_all = time.perf_counter()
    for n, fig in enumerate(spec["figure"]):
        fid = figure_id(n, fig)
        if only and fid not in only and fig["kind"] not in only:
            continue
        k = KINDS[fig["kind"]]
        opts = {**k.options(), **{o: v for o, v in fig.items() if o in k.options()}, "models": fig.get("models", [])}
        ctx.log = []
        t0 = time.perf_counter()
        results = k.compute(ctx, opts)
        t1 = time.perf_counter()
        plots = k.draw(results, opts, ctx)
        files = []
        for suffix, plot in plots.items():
            stem = out / (fid + (f"-{suffix}" if suffix else ""))
            files += [p.name for p in plot.save(stem)]
            plot.close()
        t2 = time.perf_counter()
        main = plots.get("") or next(iter(plots.values()))
        rec = {"id": fid, "kind": fig["kind"], "title": fig.get("title") or k.help, "caption": main.caption,
               "files": files, "models": [ctx.provenance(m) for m in opts["models"]],
               "data": ctx.data_spec, "seed": ctx.seed,
               "options": {o: opts[o] for o in k.options()}, "cache": ctx.log,
               "seconds": {"compute": round(t1 - t0, 2), "draw": round(t2 - t1, 2)}}
        records.append(rec)
        if not quiet:
            hits = sum(c["cached"] for c in ctx.log)
            print(f"{fid:32s} compute {t1 - t0:6.1f} s  draw {t2 - t1:5.1f} s  "
                  f"({hits}/{len(ctx.log)} results from cache)", flush=True)
    import torch

    report = {"name": spec["name"], "title": spec.get("title", spec["name"]), "spec": str(spec_path),
              "data": ctx.data_spec, "seed": ctx.seed, "device": str(ls.device.resolve_device(ctx.device)),
              "versions": {"landscape": ls.__version__, "torch": torch.__version__,
                           "python": platform.python_version()},
              "figures": records, "seconds": round(time.perf_counter() - t_all, 1)}
    write_json(out / "report.json", report)
    write_index(out, report)
    if not quiet:
        print(f"report written to {out / 'index.html'} in {report['seconds']} s", flush=True)
    return report


def write_index(out: Path, report: dict) -> Path:
    """``index.html``: every figure with its caption; plotly figures in iframes (self-contained files)."""
    parts = []
    for rec in report["figures"]:
        figs = []
        for f in rec["files"]:
            if f.endswith(".png"):
                figs.append(f'<img src="{html.escape(f)}" alt="{html.escape(rec["title"])}" loading="lazy">')
            elif f.endswith(".html"):
                figs.append(f'<iframe src="{html.escape(f)}" title="{html.escape(rec["title"])}"></iframe>')
        data_links = " ".join(f'<a href="{html.escape(f)}">{html.escape(f)}</a>'
                              for f in rec["files"] if f.endswith(".json"))
        parts.append(f"""<section id="{html.escape(rec['id'])}">
<h2>{html.escape(rec['title'])}</h2>
<div class="figs">{''.join(figs)}</div>
<p class="caption">{html.escape(rec['caption'])}</p>
<p class="meta">plotted values: {data_links} &middot; computed in {rec['seconds']['compute']} s,
drawn in {rec['seconds']['draw']} s</p>
</section>""")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>{html.escape(report['title'])}</title>
<style>
body {{ font-family: sans-serif; max-width: 1400px; margin: 2em auto; color: #222; }}
section {{ border-top: 1px solid #ccc; padding: 1em 0; }}
.figs img {{ max-width: 100%; margin: 0.5em 0; }}
.figs iframe {{ width: 100%; height: 640px; border: 0; }}
.caption {{ font-size: 0.95em; }} .meta {{ font-size: 0.8em; color: #666; }}
</style></head><body>
<h1>{html.escape(report['title'])}</h1>
<p>Data: {html.escape(str(report['data']))}, seed {report['seed']}, device {html.escape(report['device'])};
provenance of every figure in <a href="report.json">report.json</a>.</p>
{''.join(parts)}
</body></html>
"""
    path = out / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return path


# The figure kinds live in their own module, which registers them in KINDS on import; importing it
# here (after everything it uses is defined) means KINDS is full wherever viz.report is imported.
from . import kinds as _kinds  # noqa: E402,F401
