"""One-command reports: a TOML spec in, a folder of figures, JSON and ``index.html`` out.

A spec names checkpoints and lists figures; paths in it are relative to the spec file's folder::

    name = "default"
    data = "digits"
    seed = 0

    [models]
    ce = "../trained_models/mlp-ce.safetensors"

    [[figure]]
    kind = "contour"
    models = ["ce"]
    grid = 31

:func:`build_report` runs five steps, each its own function:

1. **validate** (:func:`read_spec`, :func:`validate_spec`): every key, name, type and range, each
   error with its line. Every figure kind (:data:`KINDS`, registered by :mod:`viz.kinds`)
   declares its options (:class:`Option`: type, range or choices, default; compute or style),
   so the check is the same for all of them.
2. **plan** (:func:`plan_report`): resolve the paths, load every checkpoint, dataset and snapshot
   the chosen figures name, check their layers, and derive every cache key: a bad input in the
   last figure is found before the first one computes.
3. **compute** and 4. **draw** (:func:`render_figure`): each figure's results come from the
   cache or are computed and stored; its plots are saved beside their plotted values.
5. **index** (:func:`write_report`): ``report.json`` and ``index.html``, keeping the figures of an
   earlier run that ``only`` did not render.

Cache keys are derived from declarations, never built by hand: a kind lists its cached
computations (:class:`Step`), and a result's key is the step's name and version, the
toolkit's version, the values of the compute options the step declares, the checkpoint
(weights digest and meta), the data's digest, the seed, and the keys of the steps it builds on.
Re-rendering after a style change recomputes nothing; a changed input, option or algorithm
(bump the step's ``version``) recomputes exactly what depends on it. Two runs into one output
folder cannot interleave (:func:`landscape.io.output_lock`), and no output ever replaces a file
the run reads.
"""
from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import math
import platform
import re
import time
import tomllib
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import landscape as ls
from landscape import progress
from landscape.errors import (ArgumentError, LandscapeError, OutputError, SpecError, check_choice, check_scalar,
                              did_you_mean)
from landscape.io import atomic_path, check_name, check_not_input, output_lock, write_json
from landscape.results import Result

from .figure import Plot

CACHE_VERSION = 2  # layout of the cache keys; each Step carries the version of its own computation
SEED_MAX = 2 ** 32 - 1  # numpy's and most trainers' seed range

# Golden tolerances (keyword arguments of landscape.testing.assert_plotted_values), chosen by how a
# kind's numbers are computed. Values measured between thread counts and CPU kernel sets
# (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, OPENBLAS_CORETYPE) stay 100x inside them.
EXACT = {"rtol": 1e-4, "atol": 1e-6}  # forward passes and closed forms: ~1e-7 relative between machines
ITERATIVE = {"rtol": 1e-2, "atol": 1e-5}  # Lanczos stops at a relative residual of 1e-3: ~1e-5 measured


# -- declared options ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Option:
    """One option of a figure kind (or of the spec's top level): its default and the values it accepts.

    Attributes
    ----------
    default : object
        The value when the spec leaves the option out.
    type : str
        ``"int"``, ``"float"``, ``"bool"``, ``"str"``, ``"choice"``, ``"interval"`` (``[low, high]``),
        ``"loss"`` (a loss spec with a phenotype), ``"losses"`` (a list of them), ``"layer"`` (a
        layer name of the figure's models, checked when they are loaded), ``"names"`` (a list of
        names: layers, measures), ``"folder"`` (a folder of checkpoint snapshots, relative to the spec) or
        ``"folders"`` (a list of them).
    min, max : float, optional
        Range of a number; ``open_min`` excludes ``min`` itself.
    choices : tuple
        The values of a ``"choice"``.
    optional : bool
        ``None`` (the option left out) is allowed.
    style : bool
        Changes only the drawing: not part of any cache key.
    help : str
        One line for ``landscape report --kinds``.
    """

    default: Any
    type: str
    min: float | None = None
    max: float | None = None
    choices: tuple = ()
    optional: bool = False
    style: bool = False
    open_min: bool = False
    help: str = ""

    def check(self, value: Any, name: str) -> Any:
        """``value`` converted to this option's type.

        Raises
        ------
        ArgumentError
            Naming ``name``, what it must be and what it got.
        """
        if value is None and self.optional:
            return None
        kind = self.type
        if kind in ("int", "float"):
            out = check_scalar(value, name, int if kind == "int" else float, min=self.min, max=self.max,
                               include_min=not self.open_min)
            if not math.isfinite(out):
                raise ArgumentError(f"{name} must be a finite number, got {value!r}.")
            return out
        if kind == "bool":
            if not isinstance(value, bool):
                raise ArgumentError(f"{name} must be true or false, got {value!r}.")
            return value
        if kind in ("str", "layer", "folder"):
            if not isinstance(value, str) or (kind != "str" and not value):
                raise ArgumentError(f"{name} must be a{' non-empty' if kind != 'str' else ''} string, got {value!r}.")
            return value
        if kind == "choice":
            return check_choice(value, name, self.choices)
        if kind == "interval":
            return _check_interval(value, name)
        if kind == "loss":
            return _check_loss(value, name)
        if kind == "losses":
            return _check_losses(value, name)
        if kind in ("names", "folders"):
            return _check_names(value, name, "snapshot folders" if kind == "folders" else "names")
        raise AssertionError(f"option type {kind!r} is not known")  # a kind declared a type that does not exist

    def describe(self) -> str:
        """What the option accepts, for ``landscape report --kinds``: ``int in [2, 1001], default 31``."""
        what = {"int": "int", "float": "number", "bool": "true/false", "str": "string", "interval": "[low, high]",
                "loss": "loss spec", "losses": "list of loss specs", "layer": "layer name",
                "folder": "folder of snapshots", "folders": "list of snapshot folders",
                "names": "list of names"}.get(self.type, "one of " + ", ".join(map(str, self.choices)))
        if self.min is not None or self.max is not None:
            lo = "" if self.min is None else f"{'(' if self.open_min else '['}{self.min:g}"
            hi = "" if self.max is None else f"{self.max:g}]"
            what += f" in {lo or '(-inf'}, {hi or 'inf)'}"
        return f"{what}{' or none' if self.optional else ''}, default {self.default!r}" + \
            (" (style)" if self.style else "")


def _check_interval(value: Any, name: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ArgumentError(f"{name} must be [low, high], two numbers, got {value!r}.")
    lo, hi = (check_scalar(v, f"{name} bound", float) for v in value)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ArgumentError(f"{name} must be [low, high] with finite numbers and low < high, got {value!r}.")
    return [lo, hi]


def _check_loss(value: Any, name: str) -> str:
    """A loss spec that has a phenotype, checked on a 2 x 2 grid by the function the figure itself calls."""
    if not isinstance(value, str) or not value:
        raise ArgumentError(f"{name} must be a loss spec such as \"A2\" or \"adma(a=0.1)\", got {value!r}.")
    try:
        ls.phenotype(value, resolution=2)
    except LandscapeError as exc:
        raise ArgumentError(f"{name}: {exc}") from None
    return value


def _check_losses(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ArgumentError(f"{name} must be a non-empty list of loss specs, e.g. [\"A2\", \"CE\"], got {value!r}.")
    out = [_check_loss(v, f"{name}[{i}]") for i, v in enumerate(value)]
    twice = sorted({v for v in out if out.count(v) > 1})
    if twice:
        raise ArgumentError(f"{name} names {twice} twice; list each loss once.")
    return out


def integer(default: int | None, min: float | None = None, max: float | None = None, **kw) -> Option:
    """An integer option (``optional=True`` admits ``None``)."""
    return Option(default, "int", min, max, **kw)


def number(default: float | None, min: float | None = None, max: float | None = None, **kw) -> Option:
    """A real-number option (``open_min=True`` excludes ``min``)."""
    return Option(default, "float", min, max, **kw)


def flag(default: bool, **kw) -> Option:
    """A true/false option."""
    return Option(default, "bool", **kw)


def text(default: str | None, **kw) -> Option:
    """A string option."""
    return Option(default, "str", **kw)


def choice(default: Any, choices: Iterable, **kw) -> Option:
    """An option with a fixed set of values."""
    return Option(default, "choice", choices=tuple(choices), **kw)


def interval(default: list[float], **kw) -> Option:
    """A ``[low, high]`` pair of finite numbers with ``low < high``."""
    return Option(list(default), "interval", **kw)


def loss_spec(default: str, **kw) -> Option:
    """A loss spec with a phenotype (``"A2"``, ``"adma(a=0.1)"``)."""
    return Option(default, "loss", **kw)


def _check_names(value: Any, name: str, what: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ArgumentError(f"{name} must be a non-empty list of {what} (strings), got {value!r}.")
    twice = sorted({v for v in value if value.count(v) > 1})
    if twice:
        raise ArgumentError(f"{name} names {twice} twice; list each once.")
    return list(value)


def loss_specs(default: list[str], **kw) -> Option:
    """A list of loss specs with phenotypes."""
    return Option(list(default), "losses", **kw)


def layer(**kw) -> Option:
    """A layer name of the figure's models (default: the penultimate features / the last convolution)."""
    return Option(None, "layer", optional=True, **kw)


def folder(default: str, **kw) -> Option:
    """A folder of checkpoint snapshots, relative to the spec file."""
    return Option(default, "folder", **kw)


def folders(default: list[str], **kw) -> Option:
    """A list of folders of checkpoint snapshots, relative to the spec file (one result per folder)."""
    return Option(list(default), "folders", **kw)


def names(**kw) -> Option:
    """A list of layer names of the figure's models (default None: the computation's own choice)."""
    return Option(None, "names", optional=True, **kw)


# -- declared computations -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Step:
    """One cached computation of a figure kind: everything that enters its results' cache key.

    Attributes
    ----------
    name : str
        Cache tag. Kinds that compute the same thing declare the same step and share its results
        (the contour, 3D and eigenvalue-ratio figures share surfaces).
    options : mapping of str to str
        The step's parameters and the kind option each comes from (``{"grid": "contour_grid"}``).
        The computation receives exactly these values.
    per : str or None
        ``"model"``: one result per model of the figure (keyed by its weights and meta); the name
        of a list option: one result per entry (the entry is parameter ``item``); None: one result.
    item : str
        Parameter name of a list entry.
    data : bool
        Reads the figure's data (its ``split`` option, else the test split): the data's digest enters the key.
    seed : bool
        Draws random numbers from the spec's seed.
    after : tuple of str
        Steps (of the same model or entry) whose results it uses: their keys enter this key.
    splits : tuple of str
        Further splits of the figure's data that it reads (``("train", "test")``): their digests
        enter the key too, and they are loaded with the figure's resources.
    version : int
        Bump it when the computation changes, so that no stale result is served.
    """

    name: str
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)
    per: str | None = "model"
    item: str = "item"
    data: bool = True
    seed: bool = True
    after: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    version: int = 1


# -- figure kinds ---------------------------------------------------------------------------
@dataclasses.dataclass
class Kind:
    """A figure kind: its declared options and computations, and the pair of functions that make it.

    ``compute(ctx, fig)`` returns ``{key: Result}``, each through :meth:`Context.cached`;
    ``draw(results, fig)`` returns ``{suffix: Plot}`` (suffix ``""`` for the main figure; others
    are appended to the file name after a dash).
    """

    name: str
    help: str
    compute: Callable[["Context", "Figure"], dict[str, Result]]
    draw: Callable[[dict[str, Result], "Figure"], dict[str, Plot]]
    options: dict[str, Option]
    steps: tuple[Step, ...]
    uses_models: bool = True
    max_models: int | None = None
    check: Callable[[dict], tuple[str, str] | None] | None = None
    tolerance: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(EXACT))

    @property
    def compute_options(self) -> dict[str, Any]:
        """Defaults of the options that change the numbers."""
        return {k: o.default for k, o in self.options.items() if not o.style}

    @property
    def style_options(self) -> dict[str, Any]:
        """Defaults of the options that change only the drawing."""
        return {k: o.default for k, o in self.options.items() if o.style}

    def step(self, name: str) -> Step:
        """The declared step ``name``."""
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"figure kind {self.name!r} computes {name!r} without declaring it as a Step")


KINDS: dict[str, Kind] = {}


def kind(name: str, help: str, options: dict[str, Option], steps: Iterable[Step], *, uses_models: bool = True,
         max_models: int | None = None, check: Callable[[dict], tuple[str, str] | None] | None = None,
         tolerance: dict | None = None):
    """Register a figure kind from a pair of functions ``(compute, draw)``.

    ``check(opts)`` (optional) tests options against each other and returns ``(option, message)``
    for a mistake (or None); ``tolerance`` is how closely its plotted values are
    expected to agree between machines (keyword arguments of
    :func:`landscape.testing.assert_plotted_values`; default :data:`EXACT`).
    """
    steps = tuple(steps)
    for step in steps:
        for param, opt in step.options.items():
            assert opt in options and not options[opt].style, f"{name}: step {step.name} reads {opt!r}"
        assert step.per in (None, "model") or options[step.per].type in ("losses", "folders"), \
            f"{name}: step {step.name}"

    def deco(pair):
        compute, draw = pair
        KINDS[name] = Kind(name, help, compute, draw, dict(options), steps, uses_models, max_models, check,
                           dict(tolerance or EXACT))
        return pair

    return deco


# -- the validated spec --------------------------------------------------------------------
@dataclasses.dataclass
class Figure:
    """One figure of a validated spec, and (after :func:`plan_report`) the cache keys of its results.

    Attributes
    ----------
    n : int
        Its position in the spec (0-based).
    id : str
        File stem of its outputs: the spec's ``id``, else ``<n + 1>-<kind>``.
    kind : Kind
    title : str
    models : list of str
        Model names of the spec's ``[models]``.
    data : str or None
        Its dataset spec (the figure's ``data``, else the spec's); None for kinds without models.
    opts : dict
        Every option of the kind, defaults filled in, values converted.
    line : int
        Line of its ``[[figure]]`` header.
    keys : dict
        ``(step name, model or entry or None) -> cache key``.
    """

    n: int
    id: str
    kind: Kind
    title: str
    models: list[str]
    data: str | None
    opts: dict
    line: int
    keys: dict = dataclasses.field(default_factory=dict)

    def items(self, step: Step) -> list:
        """What ``step`` computes one result for: the models, a list option's entries, or ``[None]``."""
        if step.per == "model":
            return list(self.models)
        return list(self.opts[step.per]) if step.per else [None]

    def params(self, step: Step, item: Any = None) -> dict:
        """The values a computation of ``step`` receives (its declared options, plus the list entry)."""
        out = {param: self.opts[opt] for param, opt in step.options.items()}
        if step.per not in (None, "model"):
            out[step.item] = item
        return out

    @property
    def split(self) -> str:
        """The data split the figure reads."""
        return self.opts.get("split", "test")


@dataclasses.dataclass
class Spec:
    """A validated report spec.

    Attributes
    ----------
    path : Path
        The spec file.
    text : str
        Its text (for line numbers).
    name, title, data : str
        Report name (its output folder), title and default dataset spec.
    seed : int
    device : str or None
        The spec's ``device`` (None: use the caller's).
    models : dict of str to str
        Model name -> checkpoint path as written.
    figures : list of Figure
    lines : dict
        ``(table, key) -> line`` (table ``""``: top level, ``"models"``, or a figure's index).
    """

    path: Path
    text: str
    name: str
    title: str
    data: str
    seed: int
    device: str | None
    models: dict[str, str]
    figures: list[Figure]
    lines: dict

    def line(self, table: Any, key: str | None = None) -> int:
        """Line of ``key`` in ``table`` (else of the table's header, else 1)."""
        return self.lines.get((table, key)) or self.lines.get((table, None)) or 1

    def fail(self, table: Any, key: str | None, message: str) -> SpecError:
        """A :class:`SpecError` for ``message`` at the line of ``key`` in ``table``."""
        return SpecError(f"{self.path}, line {self.line(table, key)}: {message}")


TOP_LEVEL = {"name": text(None, optional=True), "title": text(None, optional=True),
             "description": text(""), "data": text("digits"), "seed": integer(0, 0, SEED_MAX),
             "device": text(None, optional=True), "trust_code": flag(False)}
TOP_TABLES = ("models", "figure")
FIGURE_KEYS = ("kind", "id", "title", "models", "data")


def _key_lines(text_: str) -> dict:
    """``(table, key) -> 1-based line`` of every ``key = value`` and table header of a TOML text.

    Tables are ``""`` (top level), a table's name, or the index of a ``[[figure]]``.
    """
    lines: dict = {}
    table: Any = ""
    figures = -1
    for i, raw in enumerate(text_.splitlines(), 1):
        line = raw.strip()
        if m := re.match(r"^\[\[\s*([^\]]+?)\s*\]\]", line):
            name = m.group(1).strip("\"'")
            if name == "figure":
                figures += 1
                table = figures
            else:
                table = name
            lines.setdefault((table, None), i)
        elif m := re.match(r"^\[\s*([^\]]+?)\s*\]", line):
            table = m.group(1).strip("\"'")
            lines.setdefault((table, None), i)
        elif m := re.match(r"^(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_\-]+)\s*=", line):
            lines.setdefault((table, m.group(1).strip("\"'")), i)
    return lines


def read_spec(path: str | Path) -> tuple[dict, str]:
    """Parse a report spec; return the TOML as a dict and the text (validate it with :func:`validate_spec`).

    Raises
    ------
    SpecError
        The file is missing, unreadable or not TOML (with the line).
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"report spec {path} does not exist; the default is reports/default.toml.")
    try:
        text_ = path.read_text(encoding="utf-8")
        return tomllib.loads(text_), text_
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path} is not UTF-8 text ({exc.reason}); save the spec as UTF-8.") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: {exc}") from None


def load_spec(path: str | Path) -> Spec:
    """Read and validate a report spec (:func:`read_spec`, then :func:`validate_spec`)."""
    raw, text_ = read_spec(path)
    return validate_spec(raw, text_, path)


def _checked(spec: Spec, table: Any, key: str, check: Callable[[], Any], prefix: str = "") -> Any:
    """Run ``check()``; a user error in it becomes a :class:`SpecError` at the line of ``key``."""
    try:
        return check()
    except LandscapeError as exc:
        raise spec.fail(table, key, prefix + str(exc)) from None


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...] | None) -> dict:
    """A copy of a raw spec (as :func:`read_spec` gives it) with ``KEY=VALUE`` overrides applied.

    What ``landscape report --set KEY=VALUE ...`` does, before the spec is validated (so an
    override is checked like the value it replaces). ``KEY`` is a top-level key (``data``,
    ``seed``, ``title``, ...), ``models.NAME`` (the checkpoint of a model the spec names) or
    ``figure.ID.OPTION``: an option of the figure with that id, of every figure of that kind, or
    with ID ``*`` of every figure that has the option. ``VALUE`` is read as a TOML value (``51``,
    ``0.5``, ``true``, ``[-0.5, 0.5]``) when it is one and the key does not already hold a string;
    otherwise it is taken as written, so paths and specs such as ``cifar10:/data`` need no quotes.
    Paths given on the command line are relative to the current directory (not to the spec).

    Raises
    ------
    SpecError
        A malformed override, or a key, model, figure or option the spec does not have.
    """
    import copy

    raw = copy.deepcopy(raw)
    top_keys = sorted(TOP_LEVEL)
    for item in overrides or ():
        key, sep, value_text = str(item).partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise SpecError(f"--set {item!r}: write KEY=VALUE, e.g. data=cifar10:/data or figure.contours.grid=11.")

        def value(current: Any) -> Any:
            if isinstance(current, str):
                return value_text
            try:
                return tomllib.loads(f"v = {value_text}")["v"]
            except tomllib.TOMLDecodeError:
                return value_text

        if parts[0] == "models" and len(parts) == 2:
            models = raw.get("models", {})
            if parts[1] not in models:
                raise SpecError(f"--set {key}: the spec has no model {parts[1]!r} "
                                f"({', '.join(sorted(models)) or 'none'}).")
            models[parts[1]] = str(Path(value_text).expanduser().resolve())
        elif parts[0] == "figure" and len(parts) == 3:
            figures = raw.get("figure", [])

            def matches(n: int, fig: dict) -> bool:
                kind_ = KINDS.get(fig.get("kind"))
                if parts[1] == "*":
                    return kind_ is not None and parts[2] in kind_.options
                return parts[1] in (fig.get("id", f"{n + 1:02d}-{fig.get('kind')}"), fig.get("kind"))

            chosen = [f for n, f in enumerate(figures) if matches(n, f)]
            if not chosen:
                ids = sorted(f.get("id", f"{n + 1:02d}-{f.get('kind')}") for n, f in enumerate(figures))
                raise SpecError(f"--set {key}: no figure with id or kind {parts[1]!r}; ids: {', '.join(ids)}.")
            for fig in chosen:
                kind_ = KINDS.get(fig.get("kind"))
                if kind_ is None or parts[2] not in kind_.options:
                    options = ", ".join(sorted(kind_.options)) if kind_ else "none"
                    raise SpecError(f"--set {key}: figure kind {fig.get('kind')!r} has no option {parts[2]!r}; "
                                    f"options: {options}.")
                fig[parts[2]] = value(fig.get(parts[2], kind_.options[parts[2]].default))
        elif len(parts) == 1 and parts[0] in TOP_LEVEL and parts[0] != "trust_code":
            new = value(raw.get(parts[0], TOP_LEVEL[parts[0]].default))
            if parts[0] == "data" and isinstance(new, str):
                kind_, colon, rest = new.partition(":")
                if colon and rest:
                    new = f"{kind_}:{Path(rest).expanduser().resolve()}"
                elif new.endswith(".npz"):
                    new = str(Path(new).expanduser().resolve())
            raw[parts[0]] = new
        else:
            known = ", ".join(k for k in top_keys if k != "trust_code")
            raise SpecError(f"--set {key}: unknown key; use one of {known}, models.NAME or figure.ID.OPTION.")
    return raw


def validate_spec(raw: dict, text_: str, path: str | Path = "spec") -> Spec:
    """Check every key, name, type and range of a parsed spec; return the :class:`Spec`.

    Raises
    ------
    SpecError
        Unknown keys, figure kinds, options or models; values of the wrong type or out of
        range; unsafe names; duplicate ids; each with its line.
    """
    spec = Spec(Path(path), text_, "", "", "", 0, None, {}, [], _key_lines(text_))
    for key in raw:
        if key not in TOP_LEVEL and key not in TOP_TABLES:
            raise spec.fail("", key, f"unknown top-level key {key!r}.{did_you_mean(key, [*TOP_LEVEL, *TOP_TABLES])}")
    top = {k: _checked(spec, "", k, lambda k=k, o=o: o.check(raw.get(k, o.default), k)) for k, o in TOP_LEVEL.items()}
    spec.name = _checked(spec, "", "name", lambda: check_name(top["name"] or spec.path.stem, "report name"))
    spec.title = top["title"] or spec.name
    spec.data, spec.seed, spec.device = top["data"], top["seed"], top["device"]
    if top["trust_code"]:
        # a spec can come from anywhere, like a checkpoint: running code is the user's own act
        raise spec.fail("", "trust_code", "a report spec cannot opt in to running a checkpoint's code; pass "
                        "--trust-code on the command line (or trust_code=True to build_report) if you trust them.")
    spec.models = _validate_models(spec, raw.get("models", {}))
    figures = raw.get("figure", [])
    if not isinstance(figures, list) or not all(isinstance(f, dict) for f in figures):
        raise spec.fail("", "figure", "figures are [[figure]] tables (see reports/default.toml).")
    if not figures:
        raise SpecError(f"{spec.path}, line 1: no [[figure]] entries; add at least one (see reports/default.toml).")
    for n, fig in enumerate(figures):
        spec.figures.append(_validate_figure(spec, n, fig))
    seen: set[str] = set()
    for f in spec.figures:
        if f.id in seen:
            raise spec.fail(f.n, "id", f"figure id {f.id!r} is used twice; give each figure its own id.")
        seen.add(f.id)
    return spec


def _validate_models(spec: Spec, models: Any) -> dict[str, str]:
    if not isinstance(models, dict):
        raise spec.fail("", "models", "'models' must be a table: [models] then name = \"checkpoint path\" lines.")
    for name, path in models.items():
        _checked(spec, "models", name, lambda: check_name(name, "model name"))
        if not isinstance(path, str) or not path:
            raise spec.fail("models", name, f"model {name!r} must be a checkpoint path (a string), got {path!r}.")
    return dict(models)


def _validate_figure(spec: Spec, n: int, fig: dict) -> Figure:
    """One ``[[figure]]``: its kind, id, title, models, data and options."""
    if "kind" not in fig:
        raise spec.fail(n, None, f"figure {n + 1} has no kind; add kind = \"...\" ({', '.join(sorted(KINDS))}).")
    if fig["kind"] not in KINDS:
        name = fig["kind"]
        hint = did_you_mean(name, KINDS) if isinstance(name, str) else f" Available: {', '.join(sorted(KINDS))}."
        raise spec.fail(n, "kind", f"unknown figure kind {name!r}.{hint}")
    k = KINDS[fig["kind"]]
    where = f"figure {n + 1} ({k.name}): "
    for opt in fig:
        if opt not in k.options and opt not in FIGURE_KEYS:
            allowed = [*FIGURE_KEYS, *k.options]
            raise spec.fail(n, opt, f"figure kind {k.name!r} has no option {opt!r}.{did_you_mean(opt, allowed)}")
    fid = _checked(spec, n, "id", lambda: check_name(text(None).check(fig.get("id", f"{n + 1:02d}-{k.name}"), "id"),
                                                     "figure id"), where)
    title = _checked(spec, n, "title", lambda: text("").check(fig.get("title", k.help), "title"), where)
    models = _figure_models(spec, n, fig, k, where)
    data = None
    if k.uses_models:
        data = _checked(spec, n, "data", lambda: text("").check(fig.get("data", spec.data), "data"), where)
    elif "data" in fig:
        raise spec.fail(n, "data", f"{where}this kind reads no data; remove 'data'.")
    opts = {name: _checked(spec, n, name, lambda name=name, o=o: o.check(fig.get(name, o.default), name), where)
            for name, o in k.options.items()}
    complaint = k.check(opts) if k.check is not None else None
    if complaint is not None:
        raise spec.fail(n, complaint[0], where + complaint[1])
    return Figure(n, fid, k, title, models, data, opts, spec.line(n))


def _figure_models(spec: Spec, n: int, fig: dict, k: Kind, where: str) -> list[str]:
    models = fig.get("models", [])
    if not k.uses_models:
        if "models" in fig:
            raise spec.fail(n, "models", f"{where}this kind draws no models; remove 'models'.")
        return []
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise spec.fail(n, "models", f"{where}needs models = [\"name\", ...] naming models of [models].")
    for m in models:
        if m not in spec.models:
            raise spec.fail(n, "models", f"{where}names model {m!r}, which is not in [models] "
                            f"({', '.join(sorted(spec.models)) or 'empty'}).{did_you_mean(m, spec.models)}")
    if len(set(models)) != len(models):
        raise spec.fail(n, "models", f"{where}names a model twice; list each once.")
    if k.max_models is not None and len(models) > k.max_models:
        raise spec.fail(n, "models", f"{where}draws {k.max_models} model{'s' if k.max_models > 1 else ''}, "
                        f"got {len(models)}; add one figure per model.")
    return list(models)


# -- plan: inputs, resources and cache keys ------------------------------------------------
def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


class Context:
    """What a report's figures share: the inputs (checkpoints, data, snapshots), seed, device and the cache.

    Every input is loaded once, by :func:`plan_report`, before the first computation.
    """

    def __init__(self, spec: Spec, root: Path, out: Path, device: str, verbose: bool | None, trust_code: bool,
                 seed: int):
        self.spec, self.root, self.out, self.device, self.verbose = spec, root, out, device, verbose
        self.trust_code, self.seed = trust_code, seed
        self.cache_dir = out / ".cache"
        self.checkpoints: dict[str, ls.Checkpoint] = {}
        self.snapshots: dict[str, list[ls.Checkpoint]] = {}  # resolved folder -> checkpoints in name order
        self.inputs: list[Path] = [spec.path]  # every file the run reads: no output may replace one
        self._data: dict[tuple[str, str], ls.Dataset] = {}
        self._data_id: dict[tuple[str, str], dict] = {}
        self.log: list[dict] = []  # cache hits and misses of the current figure
        self.say: Callable[[str], None] = lambda line: None  # progress lines of the current figure

    def path(self, written: str) -> Path:
        """A path of the spec, resolved against the spec's folder (or ``root=``)."""
        p = Path(written).expanduser()
        return p if p.is_absolute() else self.root / p

    def data_spec(self, spec: str) -> str:
        """A dataset spec with its path resolved (``cifar10:data`` -> ``cifar10:<root>/data``)."""
        kind_, sep, rest = spec.partition(":")
        if sep and rest:
            return f"{kind_}:{self.path(rest)}"
        return str(self.path(spec)) if spec.endswith(".npz") else spec

    def checkpoint(self, name: str) -> ls.Checkpoint:
        """The spec's model ``name`` (loaded by the plan)."""
        return self.checkpoints[name]

    def data(self, fig: Figure, split: str | None = None) -> ls.Dataset:
        """The figure's dataset, ``split`` (default the figure's split); loaded once."""
        return self._data[(fig.data, split or fig.split)]

    def load_data(self, spec: str, split: str) -> ls.Dataset:
        """Load (once) the ``split`` of dataset ``spec`` as written in the spec."""
        key = (spec, split)
        if key not in self._data:
            resolved = self.data_spec(spec)
            data = ls.load_dataset(resolved, split=split)
            data.name = f"{spec}/{split}"  # provenance as the user wrote it, not this machine's path
            self._data[key] = data
            self.inputs += _data_files(resolved)
        return self._data[key]

    def model_identity(self, name: str) -> dict:
        """What identifies a model's computations: its weights' digest and its meta (loss, normalisation, ...)."""
        ck = self.checkpoints[name]
        return {"digest": ck.digest, "meta": json.loads(_canonical(ck.meta))}

    def data_identity(self, spec: str, split: str) -> dict:
        """What identifies a dataset: the split, the sample count and the digests of its arrays."""
        from landscape.grid import array_digest

        key = (spec, split)
        if key not in self._data_id:
            data = self._data[key]
            self._data_id[key] = {"split": split, "n": len(data), "x": array_digest(data.x),
                                  "y": array_digest(data.y)}
        return self._data_id[key]

    def option_identity(self, fig: Figure, opt: str) -> Any:
        """An option's value as it enters a cache key; a folder of snapshots enters by the snapshots' digests."""
        value = fig.opts[opt]
        kind = fig.kind.options[opt].type
        if kind == "folder":
            return self.snapshot_digests(value)
        if kind == "folders":
            return [self.snapshot_digests(v) for v in value]
        return value

    def snapshot_digests(self, folder: str) -> list[str]:
        """The digests of a snapshot folder's checkpoints (as written in the spec), in name order."""
        return [s.digest for s in self.snapshots[str(self.path(folder))]]

    def provenance(self, name: str) -> dict:
        """Record of model ``name``: file, digest, architecture and loss."""
        ck = self.checkpoint(name)
        return {"name": name, "file": self.spec.models[name], "digest": ck.digest, "arch": ck.meta.get("arch"),
                "loss": ck.meta.get("loss"), "loss_kwargs": ck.meta.get("loss_kwargs", {})}

    def cache_path(self, step: str, key: str) -> Path:
        """Where a result of ``step`` with ``key`` is cached."""
        return self.cache_dir / f"{step}-{key}.npz"

    def cached(self, fig: Figure, step: str, item: Any, compute: Callable[[dict], Result]) -> Result:
        """The result of ``step`` for ``item`` (a model, a list entry or None): from the cache, else computed.

        ``compute(params)`` receives the step's declared parameters (:meth:`Figure.params`) and
        must compute from them only, so that the cache key covers everything the result depends on.
        """
        declared = fig.kind.step(step)
        key = fig.keys[(step, item)]
        path = self.cache_path(step, key)
        if path.exists():
            try:
                result = Result.load(path)
            except (LandscapeError, OSError, ValueError, KeyError) as exc:  # our own file: recompute it
                warnings.warn(f"cached result {path.name} could not be read ({exc}); computing it again.",
                              stacklevel=2)
            else:
                self.log.append({"tag": step, "key": key, "item": item, "cached": True})
                return result
        self.say(f"computing {step}" + (f" of {item}" if item is not None else ""))
        result = compute(fig.params(declared, item))
        result.save(check_not_input(path, self.inputs, "cache file"))
        self.log.append({"tag": step, "key": key, "item": item, "cached": False})
        return result


def _data_files(resolved: str) -> list[Path]:
    """The files a dataset spec reads (the file itself, or the files directly in its folder)."""
    _, sep, rest = resolved.partition(":")
    target = Path(rest if sep and rest else resolved)
    if target.is_dir():
        return sorted(p for p in target.iterdir() if p.is_file())
    return [target] if target.exists() else []


def cache_key(ctx: Context, fig: Figure, step: Step, item: Any) -> str:
    """The cache key of ``step``'s result for ``item``, derived from the step's declaration only (see module doc)."""
    record = {"cache": CACHE_VERSION, "landscape": ls.__version__, "step": step.name, "version": step.version,
              "params": {p: ctx.option_identity(fig, o) for p, o in step.options.items()},
              "after": [fig.keys[(a, item)] for a in step.after]}
    if step.per == "model":
        record["model"] = ctx.model_identity(item)
    elif step.per:
        folders_ = fig.kind.options[step.per].type == "folders"
        record["params"][step.item] = ctx.snapshot_digests(item) if folders_ else item
    elif fig.models:  # one result of all the figure's models (a comparison of two checkpoints)
        record["models"] = [ctx.model_identity(m) for m in fig.models]
    if step.data:
        record["data"] = ctx.data_identity(fig.data, fig.split)
    if step.splits:
        record["splits"] = {sp: ctx.data_identity(fig.data, sp) for sp in step.splits}
    if step.seed:
        record["seed"] = ctx.seed
    return hashlib.sha256(_canonical(record).encode()).hexdigest()[:20]


@dataclasses.dataclass
class Plan:
    """What :func:`plan_report` found: the figures to render (with their cache keys) and their context."""

    spec: Spec
    figures: list[Figure]
    ctx: Context

    @property
    def out(self) -> Path:
        """The report's output folder."""
        return self.ctx.out


def select(spec: Spec, only: Iterable[str] | None) -> list[Figure]:
    """The figures whose id or kind is in ``only`` (all when ``only`` is empty).

    Raises
    ------
    SpecError
        ``only`` names something that is neither.
    """
    only = list(only or [])
    known = {f.id for f in spec.figures} | {f.kind.name for f in spec.figures}
    unknown = sorted(set(only) - known)
    if unknown:
        raise SpecError(f"--only names {unknown}, which are neither figure ids nor kinds of {spec.path} "
                        f"({', '.join(sorted(known))}).")
    return [f for f in spec.figures if not only or f.id in only or f.kind.name in only]


def plan_report(spec: Spec, out_root: str | Path = "reports", *, root: str | Path | None = None,
                device: str = "auto", only: Iterable[str] | None = None, seed: int | None = None,
                trust_code: bool = False, verbose: bool | None = None) -> Plan:
    """Resolve, load and check every input the spec names and derive every cache key; compute nothing.

    Parameters
    ----------
    spec : Spec
        From :func:`load_spec`.
    out_root : path
        The report goes to ``<out_root>/<spec.name>/``.
    root : path, optional
        Folder that the spec's relative paths start from (default: the spec file's folder).
    device : str
        ``"auto"`` uses the spec's ``device`` if it has one, else CUDA when present.
    only : iterable of str, optional
        Figure ids or kinds to render (see :func:`select`).
    seed : int, optional
        Overrides the spec's seed.
    trust_code : bool
        Let checkpoint meta name ``module:Class`` architectures. Only the caller can say so: a
        ``trust_code = true`` in the spec itself is refused, since a spec may come from anywhere.
    verbose : bool or None
        ``False`` silences progress.

    Raises
    ------
    SpecError
        A missing or unreadable checkpoint, dataset or snapshot, an unknown layer, an unusable
        device, with the line that names it.
    OutputError
        The output folder is a file, or an output would replace one of the inputs.
    """
    seed = spec.seed if seed is None else check_scalar(seed, "seed", int, min=0, max=SEED_MAX)
    figures = select(spec, only)
    if device == "auto" and spec.device is not None:
        device = _checked(spec, "", "device", lambda: str(ls.device.resolve_device(spec.device)))
    device = str(ls.device.resolve_device(device))
    out = Path(out_root) / spec.name
    if out.exists() and not out.is_dir():
        raise OutputError(f"the report's output folder {out} is a file; move it or choose another --out.")
    ctx = Context(spec, Path(root) if root is not None else spec.path.resolve().parent, out, device, verbose,
                  bool(trust_code), seed)
    _load_models(ctx)
    for fig in spec.figures:  # all of them: a figure kept from an earlier run is kept only if its keys still hold
        _load_resources(ctx, fig)
        for step in fig.kind.steps:
            for item in fig.items(step):
                fig.keys[(step.name, item)] = cache_key(ctx, fig, step, item)
    _check_outputs(ctx, figures)
    return Plan(spec, figures, ctx)


def _load_models(ctx: Context) -> None:
    """Check that every model file exists; load those that figures draw."""
    spec, used = ctx.spec, {m for f in ctx.spec.figures for m in f.models}
    for name, written in spec.models.items():
        path = ctx.path(written)
        if not path.is_file():
            raise spec.fail("models", name, f"model {name!r} points to {written}, which does not exist "
                            f"(relative paths start at {ctx.root}).")
        if name in used:
            ctx.checkpoints[name] = _checked(spec, "models", name, lambda: ls.load_checkpoint(
                path, device=ctx.device, trust_code=ctx.trust_code), f"model {name!r}: ")
            ctx.inputs.append(path)


def _load_resources(ctx: Context, fig: Figure) -> None:
    """Load the figure's data and snapshots and check its layer names."""
    spec = ctx.spec
    if fig.data is not None:
        own = (fig.n, "data") in spec.lines  # the figure's own data, else the spec's
        for split in dict.fromkeys([fig.split, *(sp for step in fig.kind.steps for sp in step.splits)]):
            _checked(spec, fig.n if own else "", "data", lambda split=split: ctx.load_data(fig.data, split),
                     f"figure {fig.id!r}: " if own else "")
    for name, option in fig.kind.options.items():
        value = fig.opts[name]
        if option.type == "layer" and value is not None:
            from landscape.features import layer_names

            for m in fig.models:
                _checked(spec, fig.n, name, lambda m=m: check_choice(value, name, layer_names(ctx.checkpoint(m).model)),
                         f"figure {fig.id!r}, model {m!r}: ")
        elif option.type == "folder":
            _checked(spec, fig.n, name, lambda: _load_snapshots(ctx, value), f"figure {fig.id!r}: ")
        elif option.type == "folders":
            for v in value:
                _checked(spec, fig.n, name, lambda v=v: _load_snapshots(ctx, v), f"figure {fig.id!r}: ")


def _load_snapshots(ctx: Context, written: str) -> None:
    folder = ctx.path(written)
    if str(folder) in ctx.snapshots:
        return
    if not folder.is_dir():
        raise ArgumentError(f"snapshots folder {written} does not exist (relative paths start at {ctx.root}).")
    paths = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.pt"))
    if len(paths) < 2:
        raise ArgumentError(f"snapshots folder {written} holds {len(paths)} checkpoint snapshots; a training run "
                            "needs at least 2 (.safetensors or .pt files).")
    ctx.snapshots[str(folder)] = [ls.load_checkpoint(p, device="cpu", trust_code=ctx.trust_code) for p in paths]
    ctx.inputs += paths


def output_names(fig: Figure) -> Callable[[str], bool]:
    """Whether a file name in the output folder may be written by figure ``fig``."""
    def match(name: str) -> bool:
        stem, _, suffix = name.rpartition(".")
        return suffix in ("png", "html", "json") and (stem == fig.id or stem.startswith(fig.id + "-"))

    return match


def _check_outputs(ctx: Context, figures: list[Figure]) -> None:
    """Refuse, before any work, a report whose outputs would replace one of its inputs."""
    out = ctx.out.resolve()
    matchers = [output_names(f) for f in figures]
    for path in map(lambda p: Path(p).resolve(), ctx.inputs):
        ours = path.name in ("report.json", "index.html", ".landscape.lock") or any(m(path.name) for m in matchers)
        if (path.parent == out and ours) or out / ".cache" in path.parents:
            raise OutputError(f"{path.name} in the report's output folder {ctx.out} is an input of this report, and "
                              "the report writes a file of that name; move the input, or choose another --out or "
                              "figure id.")


# -- compute, draw and save ----------------------------------------------------------------
def render_figure(ctx: Context, fig: Figure) -> dict:
    """Compute (through the cache), draw and save one figure; return its record for ``report.json``."""
    ctx.log = []
    t0 = time.perf_counter()
    results = fig.kind.compute(ctx, fig)
    t1 = time.perf_counter()
    plots = fig.kind.draw(results, fig)
    plot_records = [_save_plot(ctx, fig, suffix, plot) for suffix, plot in plots.items()]
    t2 = time.perf_counter()
    captions = list(dict.fromkeys(p["caption"] for p in plot_records if p["caption"]))
    return {"id": fig.id, "kind": fig.kind.name, "title": fig.title, "caption": " | ".join(captions),
            "files": [f for p in plot_records for f in p["files"]], "plots": plot_records,
            "models": [ctx.provenance(m) for m in fig.models], "data": fig.data, "seed": ctx.seed,
            "options": dict(fig.opts), "keys": _keys_record(fig), "cache": ctx.log,
            "seconds": {"compute": round(t1 - t0, 2), "draw": round(t2 - t1, 2)}}


def _keys_record(fig: Figure) -> dict[str, str]:
    return {f"{step}/{item}" if item is not None else step: key for (step, item), key in fig.keys.items()}


def _save_plot(ctx: Context, fig: Figure, suffix: str, plot: Plot) -> dict:
    stem = fig.id + (f"-{suffix}" if suffix else "")
    check_name(stem, "figure file name")
    size = {"height": None, "width": None}  # a plotly figure's own size, so that its frame in the index fits it
    if plot.interactive:
        size = {k: int(getattr(plot.fig.layout, k)) if getattr(plot.fig.layout, k) else None for k in size}
    files = plot.save(ctx.out / stem, close=True, inputs=ctx.inputs)
    return {"files": [p.name for p in files], "caption": plot.caption, **size}


def compute_figures(plan: Plan) -> list[dict]:
    """Render the plan's figures in order, with a progress line per figure."""
    ctx, figures = plan.ctx, plan.figures
    records = []
    with progress.bar(len(figures), "report", ctx.verbose, unit="fig") as bar:
        for i, fig in enumerate(figures, 1):
            cached = sum(ctx.cache_path(step, key).exists() for (step, _), key in fig.keys.items())
            label = f"report [{i}/{len(figures)}] {fig.id}"
            bar.write(f"{label} ({fig.kind.name}): {len(fig.keys) - cached} results to compute, {cached} cached")
            ctx.say = lambda line, label=label: bar.write(f"{label}: {line}")
            rec = render_figure(ctx, fig)
            bar.write(f"{label}: computed in {rec['seconds']['compute']} s, drawn in {rec['seconds']['draw']} s")
            records.append(rec)
            bar.update(1)
    return records


# -- index: report.json and index.html -----------------------------------------------------
def _previous_records(out: Path) -> dict[str, dict]:
    """The figure records of an earlier ``report.json`` in ``out`` ({} when there is none or it is unreadable)."""
    try:
        old = json.loads((out / "report.json").read_text())
        return {r["id"]: r for r in old["figures"] if isinstance(r, dict) and "id" in r}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def merge_records(plan: Plan, records: list[dict]) -> tuple[list[dict], list[str]]:
    """The rendered records plus those of an earlier run for the figures not rendered now, in spec order.

    An earlier record is kept only while it still matches the spec (same kind, options and
    cache keys, so same inputs) and its files exist. Returns the records and the ids of the
    figures left out because their earlier rendering is out of date.
    """
    rendered = {r["id"]: r for r in records}
    previous = _previous_records(plan.out) if len(rendered) < len(plan.spec.figures) else {}
    merged, stale = [], []
    for fig in plan.spec.figures:
        old = rendered.get(fig.id) or previous.get(fig.id)
        if old is None:
            continue
        if fig.id not in rendered:
            current = old.get("kind") == fig.kind.name and old.get("options") == json.loads(_canonical(fig.opts)) \
                and old.get("keys") == _keys_record(fig)
            if not (current and all((plan.out / f).is_file() for f in old.get("files", []))):
                stale.append(fig.id)
                continue
        merged.append(old)
    return merged, stale


def write_report(plan: Plan, records: list[dict], seconds: float) -> dict:
    """Write ``report.json`` and ``index.html`` (merged with an earlier run's figures); return the report."""
    import torch

    ctx = plan.ctx
    figures, stale = merge_records(plan, records)
    report = {"name": plan.spec.name, "title": plan.spec.title, "spec": str(plan.spec.path), "data": plan.spec.data,
              "seed": ctx.seed, "device": str(ls.device.resolve_device(ctx.device)),
              "versions": {"landscape": ls.__version__, "torch": torch.__version__,
                           "python": platform.python_version()},
              "rendered": [r["id"] for r in records], "out_of_date": stale, "figures": figures,
              "seconds": round(seconds, 1)}
    for path in (plan.out / "report.json", plan.out / "index.html"):
        check_not_input(path, ctx.inputs, "report file")
    write_json(plan.out / "report.json", report)
    write_index(plan.out, report)
    return report


def _not_in_use(out: Path, name: str) -> None:
    """Fail at once, before loading anything, when another run holds ``out`` (the lock is taken again later)."""
    if (out / ".landscape.lock").is_file():
        with output_lock(out, f"report {name!r}"):
            pass


def build_report(spec_path: str | Path, out_root: str | Path = "reports", device: str = "auto",
                 quiet: bool = False, only: list[str] | None = None, root: str | Path | None = None,
                 seed: int | None = None, trust_code: bool = False, overrides: list[str] | None = None) -> dict:
    """Render the figures of a spec into ``<out_root>/<name>/`` and return the provenance record.

    Parameters
    ----------
    spec_path : path
        The TOML spec.
    out_root : path
        Parent of the report's folder.
    device : str
        ``"auto"`` (the spec's device, else CUDA when present), ``"cpu"`` or ``"cuda[:N]"``.
    quiet : bool
        No progress and no summary line.
    only : list of str, optional
        Render only the figures with these ids or kinds; the index keeps the others rendered before.
    root : path, optional
        Folder that relative paths in the spec start from (default: the spec file's folder).
    seed : int, optional
        Overrides the spec's seed.
    trust_code : bool
        Let the checkpoints' meta name ``module:Class`` architectures.

    Returns
    -------
    dict
        The content of ``report.json``.

    Raises
    ------
    SpecError
        Anything wrong in the spec or its inputs, found before the first computation.
    OutputError
        Another run is writing into the same folder, or an output would replace an input.
    overrides : list of str, optional
        ``KEY=VALUE`` changes to the spec (``--set``), see :func:`apply_overrides`.
    """
    t0 = time.perf_counter()
    raw, text_ = read_spec(spec_path)
    spec = validate_spec(apply_overrides(raw, overrides), text_, spec_path)  # --set KEY=VALUE
    _not_in_use(Path(out_root) / spec.name, spec.name)
    plan = plan_report(spec, out_root, root=root, device=device, only=only, seed=seed, trust_code=trust_code,
                       verbose=False if quiet else None)
    with output_lock(plan.out, f"report {spec.name!r}"):
        records = compute_figures(plan)
        report = write_report(plan, records, time.perf_counter() - t0)
    if not quiet:
        if report["out_of_date"]:
            print(f"not in the index (rendered earlier for other inputs or options; render them again): "
                  f"{', '.join(report['out_of_date'])}", flush=True)
        print(f"report written to {plan.out / 'index.html'} in {report['seconds']} s", flush=True)
    return report


def _figure_html(rec: dict, plot: dict) -> str:
    title = html.escape(rec["title"])
    parts = []
    for f in plot["files"]:
        if f.endswith(".png"):
            parts.append(f'<img src="{html.escape(f)}" alt="{title}" loading="lazy">')
        elif f.endswith(".html"):
            style = (f"height: {plot['height']}px;" if plot.get("height") else "") + \
                (f" min-width: {plot['width']}px;" if plot.get("width") else "")
            size = f' style="{style.strip()}" scrolling="no"' if plot.get("height") else ""
            parts.append(f'<iframe src="{html.escape(f)}" title="{title}"{size}></iframe>')
    own = len(rec.get("plots", [])) > 1 and plot.get("caption")
    caption = f'<figcaption>{html.escape(plot["caption"])}</figcaption>' if own else ""
    return f"<figure>{''.join(parts)}{caption}</figure>"


def write_index(out: Path, report: dict) -> Path:
    """``index.html``: every figure with its caption; plotly figures in iframes (self-contained files)."""
    sections = []
    for rec in report["figures"]:
        plots = rec.get("plots") or [{"files": rec["files"], "caption": rec["caption"]}]
        data_links = " ".join(f'<a href="{html.escape(f)}">{html.escape(f)}</a>'
                              for f in rec["files"] if f.endswith(".json"))
        shared = "" if len(plots) > 1 else f'<p class="caption">{html.escape(rec["caption"])}</p>'
        sections.append(f"""<section id="{html.escape(rec['id'])}">
<h2>{html.escape(rec['title'])}</h2>
<div class="figs">{''.join(_figure_html(rec, p) for p in plots)}</div>
{shared}
<p class="meta">plotted values: {data_links} &middot; computed in {rec['seconds']['compute']} s,
drawn in {rec['seconds']['draw']} s</p>
</section>""")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>{html.escape(report['title'])}</title>
<style>
body {{ font-family: sans-serif; max-width: 1400px; margin: 2em auto; color: #222; }}
section {{ border-top: 1px solid #ccc; padding: 1em 0; }}
figure {{ margin: 0.5em 0; }}
.figs {{ overflow-x: auto; }} .figs img {{ max-width: 100%; }}
.figs iframe {{ width: 100%; height: 640px; border: 0; }}
.caption, figcaption {{ font-size: 0.95em; }} .meta {{ font-size: 0.8em; color: #666; }}
</style></head><body>
<h1>{html.escape(report['title'])}</h1>
<p>Data: {html.escape(str(report['data']))}, seed {report['seed']}, device {html.escape(report['device'])};
provenance of every figure in <a href="report.json">report.json</a>.</p>
{''.join(sections)}
</body></html>
"""
    path = out / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return path


# The figure kinds live in their own module, which registers them in KINDS on import; importing it
# here (after everything it uses is defined) means KINDS is full wherever viz.report is imported.
from . import kinds as _kinds  # noqa: E402,F401
