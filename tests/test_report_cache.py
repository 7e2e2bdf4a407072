"""Report cache keys: derived from each kind's declarations, its inputs' contents and the versions; never stale.

The parameter-flow test follows openTSNE's ``TestTSNEParameterFlow``: every toolkit computation a
figure kind calls is replaced by a recorder, and each option of each kind is changed in turn. A
compute option must change the arguments of some call, and the cache key of every step whose calls
it changes (else a cached result would be served for other arguments); a style option must change
neither a call nor a key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

import landscape as ls
from landscape.grid import array_digest
from tests.conftest import ROOT
from viz import report as vr
from viz.report import KINDS, build_report, load_spec, plan_report

# the toolkit functions the kinds call (ls.random_directions stays real: it is cheap and seeded)
COMPUTATIONS = ("surface", "interpolate", "trajectory_directions", "eigen_ratio_map", "spectral_density",
                "extract_features", "tsne", "hypersphere", "phenotype", "phenotype_difference", "gradcam",
                "hessian_directions", "layer_spectra", "cka_matrix",
                "collapse_curve", "neural_collapse", "faithfulness",
                "barrier", "connect", "curve_plane", "geometry_card")
# the model(s) each kind is tried with (default: the mlp)
MODEL = {"gradcam": "cnn", "faithfulness": "cnn", "connectivity": 'ce", "cnn'}


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _spec(tmp_path, kind: str, opts: dict, name: str = "flow", models: dict | None = None, data: str = "digits",
          seed: int = 0):
    models = models or {"ce": "trained_models/mlp-ce.safetensors", "cnn": "trained_models/cnn-ce.safetensors"}
    lines = [f'name = "{name}"', f'data = "{data}"', f"seed = {seed}", "", "[models]",
             *(f'{m} = "{p}"' for m, p in models.items()), "", "[[figure]]", f'kind = "{kind}"']
    if KINDS[kind].uses_models:
        lines.append(f'models = ["{MODEL.get(kind, next(iter(models)))}"]')
    lines += [f"{k} = {_toml(v)}" for k, v in opts.items() if v is not None]
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _plan(tmp_path, kind: str, opts: dict, **kw) -> vr.Plan:
    return plan_report(load_spec(_spec(tmp_path, kind, opts, **kw)), tmp_path / "out", root=ROOT)


def _alternative(kind: str, name: str, option: vr.Option, tmp_path):
    """Another valid value of the option."""
    d = option.default
    if option.type == "int":
        return 50 if d is None else (d + 1 if option.max is None or d + 1 <= option.max else d - 1)
    if option.type == "float":
        return d * 1.5 if option.max is None or d * 1.5 <= option.max else d / 2
    if option.type == "bool":
        return not d
    if option.type == "choice":
        return next(c for c in option.choices if c != d)
    if option.type == "interval":
        return [2 * d[0], 2 * d[1]]
    if option.type == "loss":
        return "A1"
    if option.type == "losses":
        return [*d, "A1"]
    if option.type == "layer":
        from landscape.features import layer_names
        from landscape.gradcam import conv_layers

        model = ls.load_checkpoint(ROOT / "trained_models" / f"{'cnn' if kind == 'gradcam' else 'mlp'}-ce.safetensors",
                                   device="cpu").model
        return conv_layers(model)[0] if kind == "gradcam" else layer_names(model)[0]
    if option.type == "folder":  # the first five snapshots of the same run
        few = tmp_path / "five-snapshots"
        if not few.exists():
            few.mkdir()
            for p in sorted((ROOT / d).glob("*.safetensors"))[:5]:
                shutil.copy(p, few / p.name)
        return str(few)
    if option.type == "folders":  # another run added
        return [*d, "trained_models/snapshots/mlp-mam-softmax"]
    if option.type == "names":
        return ["epsilon"] if kind == "geometry-card" else ["body.0", "head"]
    if option.type == "str":
        return {"reference": "CE"}.get(name, "another title")
    raise AssertionError(f"no alternative value for option type {option.type!r}: extend this test")


def _describe(obj):
    """A stable description of a call argument (what would make the computation differ)."""
    if isinstance(obj, _Fake):
        return obj.desc
    if isinstance(obj, ls.Checkpoint):
        return ("checkpoint", obj.digest)
    if isinstance(obj, ls.Dataset):
        return ("dataset", obj.name, len(obj), array_digest(obj.x), array_digest(obj.y))
    if isinstance(obj, ls.Directions):
        return ("directions", array_digest(obj.vectors))
    if isinstance(obj, torch.nn.Module):
        return ("module", tuple(array_digest(p.detach().cpu().numpy()) for p in obj.state_dict().values()))
    if isinstance(obj, np.ndarray):
        return ("array", array_digest(obj))
    if isinstance(obj, (list, tuple)):
        return tuple(_describe(v) for v in obj)
    if isinstance(obj, dict):
        return tuple(sorted((k, _describe(v)) for k, v in obj.items()))
    return repr(obj)


class _Fake:
    """What a recorded computation returns: it carries a description of its call to the calls that use it."""

    def __init__(self, desc):
        self.desc = hashlib.sha256(repr(desc).encode()).hexdigest()[:16]
        self.coords = np.array([[0.0, 0.0], [1.0, 2.0], [0.5, 0.5]])  # a trajectory's path


def _observe(tmp_path, monkeypatch, kind: str, opts: dict):
    """The cache keys of a one-figure spec, and the calls its computation makes per (step, item)."""
    plan = _plan(tmp_path, kind, opts)
    fig = plan.figures[0]
    calls: dict = {}
    current: list = [None]

    def cached(self, fig_, step, item, compute):
        current[0] = (step, item)
        try:
            return compute(fig_.params(fig_.kind.step(step), item))
        finally:
            current[0] = None

    def recorder(name):
        def record(*args, **kwargs):
            desc = (name, _describe(args), _describe(kwargs))
            calls.setdefault(current[0], []).append(desc)
            return _Fake(desc)
        return record

    with monkeypatch.context() as m:
        m.setattr(vr.Context, "cached", cached)
        for name in COMPUTATIONS:
            m.setattr(ls, name, recorder(name))
        fig.kind.compute(plan.ctx, fig)
    assert None not in calls, "a computation ran outside Context.cached, so nothing keys its result"
    return dict(fig.keys), calls


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_compute_option_changes_calls_and_keys_and_no_style_option_does(kind, tmp_path, monkeypatch):
    base_keys, base_calls = _observe(tmp_path, monkeypatch, kind, {})
    assert base_calls and set(base_calls) == set(base_keys), "every declared step computes, and only those"
    for name, option in KINDS[kind].options.items():
        keys, calls = _observe(tmp_path, monkeypatch, kind, {name: _alternative(kind, name, option, tmp_path)})
        changed_keys = {s for s in set(keys) | set(base_keys) if keys.get(s) != base_keys.get(s)}
        changed_calls = {s for s in set(calls) | set(base_calls) if calls.get(s) != base_calls.get(s)}
        if option.style:
            assert not changed_keys, f"style option {kind}.{name} changes the cache keys of {changed_keys}"
            assert not changed_calls, f"style option {kind}.{name} changes the computations of {changed_calls}"
        else:
            assert changed_calls, f"compute option {kind}.{name} changes no computation: declare it as style"
            assert changed_calls <= changed_keys, (f"{kind}.{name} changes the computation of "
                                                   f"{changed_calls - changed_keys} but not its key: a stale result "
                                                   "would be served")


def test_the_seed_enters_the_keys_of_the_steps_that_draw_random_numbers(tmp_path):
    for kind, k in KINDS.items():
        def seeded(step):
            return step.seed or any(seeded(k.step(s)) for s in step.after)

        a = _plan(tmp_path, kind, {}).figures[0].keys
        b = _plan(tmp_path, kind, {}, seed=7).figures[0].keys
        for (name, item), key in a.items():
            assert (key != b[(name, item)]) == seeded(k.step(name)), (kind, name)


def test_keys_change_with_the_toolkit_and_step_versions(tmp_path, monkeypatch):
    base = _plan(tmp_path, "contour", {}).figures[0].keys
    monkeypatch.setattr(ls, "__version__", ls.__version__ + ".post1")
    assert _plan(tmp_path, "contour", {}).figures[0].keys != base
    monkeypatch.undo()
    assert _plan(tmp_path, "contour", {}).figures[0].keys == base
    contour = KINDS["contour"]
    monkeypatch.setattr(contour, "steps", tuple(dataclasses.replace(s, version=s.version + 1) for s in contour.steps))
    assert _plan(tmp_path, "contour", {}).figures[0].keys != base


def test_keys_follow_the_inputs_contents_not_their_names(tmp_path):
    ck = ls.load_checkpoint(ROOT / "trained_models" / "mlp-ce.safetensors", device="cpu")
    base = _plan(tmp_path, "contour", {}).figures[0].keys[("surface", "ce")]
    # the same file under another model name and path: the same results
    shutil.copy(ROOT / "trained_models" / "mlp-ce.safetensors", tmp_path / "copy.safetensors")
    renamed = _plan(tmp_path, "contour", {}, models={"other": str(tmp_path / "copy.safetensors")})
    assert renamed.figures[0].keys[("surface", "other")] == base
    # the same weights trained with another loss: another objective, another surface
    ls.save_checkpoint(tmp_path / "focal.safetensors", ck.model, {**ck.meta, "loss": "focal"})
    other = _plan(tmp_path, "contour", {}, models={"ce": str(tmp_path / "focal.safetensors")})
    assert other.figures[0].keys[("surface", "ce")] != base
    # the data by content: the same arrays in a file are the same data, one label changed is other data
    data = ls.load_dataset("digits", "test")
    np.savez(tmp_path / "same.npz", x=data.x, y=data.y, classes=np.array(data.classes))
    y = data.y.copy()
    y[0] = (y[0] + 1) % 10
    np.savez(tmp_path / "changed.npz", x=data.x, y=y, classes=np.array(data.classes))
    keys = {name: _plan(tmp_path, "contour", {}, data=f"npz:{tmp_path / name}.npz").figures[0].keys[("surface", "ce")]
            for name in ("same", "changed")}
    assert keys["same"] == base and keys["changed"] != base


def test_kinds_that_compute_the_same_share_the_cached_result(tmp_path):
    """The contour, 3D and eigenvalue-ratio figures of one plane share its surface (the default report relies on it)."""
    contour = _plan(tmp_path, "contour", {"grid": 51}).figures[0].keys[("surface", "ce")]
    surface3d = _plan(tmp_path, "surface3d", {"grid": 51}).figures[0].keys[("surface", "ce")]
    eigen = _plan(tmp_path, "eigen_ratio", {"contour_grid": 51}).figures[0].keys[("surface", "ce")]
    assert contour == surface3d == eigen
    curves = _plan(tmp_path, "phenotype_curves", {"losses": ["A2", "CE"]}).figures[0].keys[("phenotype", "A2")]
    assert _plan(tmp_path, "phenotype_surface", {"loss": "A2"}).figures[0].keys[("phenotype", None)] == curves


def test_an_algorithm_change_is_never_served_from_the_cache(tmp_path, monkeypatch):
    spec = _spec(tmp_path, "contour", {"grid": 3, "subset": 30})
    first = build_report(spec, out_root=tmp_path / "out", quiet=True, root=ROOT)
    assert [c["cached"] for c in first["figures"][0]["cache"]] == [False]
    assert [c["cached"] for c in build_report(spec, out_root=tmp_path / "out", quiet=True, root=ROOT)
            ["figures"][0]["cache"]] == [True]
    (cached,) = (tmp_path / "out" / "flow" / ".cache").glob("surface-*.npz")
    cached.write_bytes(cached.read_bytes()[:100])  # a damaged cache file is computed again, not a failure
    with pytest.warns(UserWarning, match="could not be read"):
        again = build_report(spec, out_root=tmp_path / "out", quiet=True, root=ROOT)
    assert [c["cached"] for c in again["figures"][0]["cache"]] == [False]
    assert ls.Result.load(cached).loss.shape == (3, 3)
    contour = KINDS["contour"]  # the surface computation changed: its step's version is bumped
    monkeypatch.setattr(contour, "steps", tuple(dataclasses.replace(s, version=s.version + 1) for s in contour.steps))
    third = build_report(spec, out_root=tmp_path / "out", quiet=True, root=ROOT)
    assert [c["cached"] for c in third["figures"][0]["cache"]] == [False]


def test_every_split_a_step_reads_enters_its_key(tmp_path):
    # the geometry card reads both splits: another train split (same test split) is another card
    plan = _plan(tmp_path, "geometry-card", {})
    fig = plan.figures[0]
    step = fig.kind.step("geometry-card")
    assert set(step.splits) == {"train", "test"} and ("digits", "train") in plan.ctx._data
    base = vr.cache_key(plan.ctx, fig, step, "ce")
    plan.ctx._data_id[("digits", "train")] = {**plan.ctx.data_identity("digits", "train"), "x": "other"}
    assert vr.cache_key(plan.ctx, fig, step, "ce") != base
