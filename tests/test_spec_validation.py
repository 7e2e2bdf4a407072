"""Report specs are checked whole before the first computation: every type, range, name and input, each with its line.

One row per mistake a user makes in a spec. Each must raise a :class:`SpecError` (exit 2 on the
CLI) whose message names the line where the mistake is, and no output folder may exist
afterwards: nothing was computed or written.
"""
from __future__ import annotations

import re

import pytest

from landscape.errors import SpecError
from tests.conftest import ROOT
from tests.test_cli import run_cli
from viz.report import build_report

BASE = """\
name = "checked"
data = "digits"
seed = 0

[models]
ce = "trained_models/mlp-ce.safetensors"
mam = "trained_models/mlp-mam-softmax.safetensors"

[[figure]]
id = "contours"
kind = "contour"
models = ["ce", "mam"]
grid = 5
subset = 60

[[figure]]
id = "line"
kind = "interpolation"
models = ["ce"]
steps = 5

[[figure]]
id = "features"
kind = "tsne"
models = ["ce"]

[[figure]]
id = "path"
kind = "trajectory"
models = ["ce"]
snapshots = "trained_models/snapshots/mlp-ce"

[[figure]]
id = "curves"
kind = "phenotype_curves"
losses = ["A2", "CE"]
"""

# (what to replace, its replacement, the text of the line the message must name, what the message must say)
ROWS = {
    # types and ranges of options (issue 22.4)
    "grid-string": ("grid = 5", 'grid = "abc"', 'grid = "abc"', "grid must be an integer, got 'abc'"),
    "range-word": ("subset = 60", 'subset = 60\nrange = "wide"', 'range = "wide"', r"range must be \[low, high\]"),
    "range-reversed": ("subset = 60", "subset = 60\nrange = [1.0, -1.0]", "range = [1.0, -1.0]", "low < high"),
    "range-infinite": ("subset = 60", "subset = 60\nrange = [-1.0, inf]", "range = [-1.0, inf]", "finite"),
    "seed-string": ("seed = 0", 'seed = "abc"', 'seed = "abc"', "seed must be an integer"),
    "seed-negative": ("seed = 0", "seed = -1", "seed = -1", "seed must be >= 0 and <= 4.29497e\\+09, got -1"),
    "seed-huge": ("seed = 0", "seed = 1e20", "seed = 1e20", "seed must be an integer, got 1e\\+20"),
    "subset-negative": ("subset = 60", "subset = -5", "subset = -5", "subset must be >= 1, got -5"),
    "grid-huge": ("grid = 5", "grid = 1e6", "grid = 1e6", "grid must be >= 2 and <= 1001, got 1000000.0"),
    "grid-one": ("grid = 5", "grid = 1", "grid = 1", "grid must be >= 2"),
    "grid-fraction": ("grid = 5", "grid = 5.5", "grid = 5.5", "grid must be an integer, got 5.5"),
    "bool-string": ("grid = 5", 'grid = 5\nfilled = "yes"', 'filled = "yes"', "filled must be true or false"),
    "steps-zero": ("steps = 5", "steps = 0", "steps = 0", "steps must be >= 2"),
    "choice-typo": ('models = ["ce"]\n\n[[figure]]\nid = "path"',
                    'models = ["ce"]\nsplit = "tset"\n\n[[figure]]\nid = "path"', 'split = "tset"',
                    "Did you mean 'test'"),
    "perplexity-zero": ('models = ["ce"]\n\n[[figure]]\nid = "path"',
                        'models = ["ce"]\nperplexity = 0\n\n[[figure]]\nid = "path"', "perplexity = 0",
                        "perplexity must be > 0"),
    "pad-negative": ('snapshots = "trained_models/snapshots/mlp-ce"',
                     'snapshots = "trained_models/snapshots/mlp-ce"\npad = -1', "pad = -1", "pad must be >= 0"),
    "top-level-type": ("seed = 0", "seed = 0\ntrust_code = \"yes\"", 'trust_code = "yes"', "true or false"),
    # names, kinds and keys
    "unknown-kind": ('kind = "phenotype_curves"', 'kind = "phenotype_curvez"', 'kind = "phenotype_curvez"',
                     "unknown figure kind 'phenotype_curvez'. Did you mean 'phenotype_curves'"),
    "unknown-option": ("grid = 5", 'grid = 5\ncolour = "red"', 'colour = "red"', "has no option 'colour'"),
    "unknown-model": ('models = ["ce", "mam"]', 'models = ["ce", "adma"]', 'models = ["ce", "adma"]',
                      "names model 'adma', which is not in \\[models\\]"),
    "unknown-top-level": ("seed = 0", "seed = 0\nthreads = 4", "threads = 4", "unknown top-level key 'threads'"),
    "toml-syntax": ("grid = 5", "grid = = 5", "grid = = 5", "Invalid|Expected"),
    "no-models": ('models = ["ce"]\nsteps = 5', "steps = 5", '[[figure]]\nid = "line"', "needs models"),
    "models-on-phenotype": ('losses = ["A2", "CE"]', 'losses = ["A2", "CE"]\nmodels = ["ce"]', 'models = ["ce"]\n',
                            "draws no models"),
    "too-many-models": ('models = ["ce"]\nsnapshots', 'models = ["ce", "mam"]\nsnapshots', 'models = ["ce", "mam"]\ns',
                        "draws 1 model, got 2"),
    "model-twice": ('models = ["ce", "mam"]', 'models = ["ce", "ce"]', 'models = ["ce", "ce"]', "names a model twice"),
    "model-not-a-path": ('mam = "trained_models/mlp-mam-softmax.safetensors"', "mam = 5", "mam = 5",
                         "must be a checkpoint path"),
    "duplicate-id": ('id = "line"', 'id = "contours"', 'id = "contours"\nkind = "interpolation"', "used twice"),
    # names that would write outside the output folder (issue 22.3)
    "name-escapes": ('name = "checked"', 'name = "../x"', 'name = "../x"', "report name '../x' must be one plain"),
    "id-escapes": ('id = "line"', 'id = "../../x"', 'id = "../../x"', "figure id '../../x' must be one plain"),
    "model-name-escapes": ('mam = "trained', '"../m" = "trained', '"../m" = ', "model name '../m' must be one plain"),
    # losses, data, models, layers and snapshots named anywhere, found before the first figure computes
    "unknown-loss-last-figure": ('losses = ["A2", "CE"]', 'losses = ["A2", "nope"]', 'losses = ["A2", "nope"]',
                                 r"losses\[1\]: .*'nope'"),
    "loss-without-phenotype": ('losses = ["A2", "CE"]', 'losses = ["A2", "am-softmax"]', "losses = [",
                               "no phenotype"),
    "reference-not-listed": ('losses = ["A2", "CE"]', 'losses = ["A2", "CE"]\nreference = "A0"', "reference = ",
                             "reference='A0' must be"),
    "missing-checkpoint": ("mlp-ce.safetensors", "mlp-nope.safetensors", "ce = ",
                           "model 'ce' points to trained_models/mlp-nope.safetensors, which does not exist"),
    "bad-data-last-figure": ('losses = ["A2", "CE"]', 'losses = ["A2", "CE"]\n\n[[figure]]\nkind = "tsne"\n'
                             'models = ["mam"]\ndata = "cifar10:nowhere"', 'data = "cifar10:nowhere"',
                             "nowhere does not exist"),
    "unknown-dataset": ('data = "digits"', 'data = "imagenet"', 'data = "imagenet"', "unknown dataset 'imagenet'"),
    "unknown-layer": ('models = ["ce"]\n\n[[figure]]\nid = "path"',
                      'models = ["ce"]\nlayer = "body.99"\n\n[[figure]]\nid = "path"', 'layer = "body.99"',
                      "model 'ce': layer='body.99' is not one of the choices"),
    "missing-snapshots": ('snapshots = "trained_models/snapshots/mlp-ce"', 'snapshots = "nowhere"',
                          'snapshots = "nowhere"', "snapshots folder nowhere does not exist"),
    "bad-device": ("seed = 0", 'seed = 0\ndevice = "tpu"', 'device = "tpu"', "device 'tpu' is not a device"),
}


def _line_of(text: str, anchor: str) -> int:
    """1-based line where the last occurrence of ``anchor`` starts."""
    return text.count("\n", 0, text.rindex(anchor)) + 1


@pytest.mark.parametrize("case", list(ROWS))
def test_each_mistake_names_its_line_before_any_work(tmp_path, case):
    old, new, anchor, message = ROWS[case]
    assert old in BASE, "the row edits text the base spec does not have"
    text = BASE.replace(old, new, 1)
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    out = tmp_path / "out"
    with pytest.raises(SpecError) as info:
        build_report(spec, out_root=out, quiet=True, root=ROOT)
    msg = str(info.value)
    assert re.search(message, msg), msg
    line = _line_of(text, anchor)
    assert re.search(rf"(, line {line}:|at line {line},)", msg), (line, msg)
    assert len(msg.splitlines()) == 1, msg
    assert not out.exists(), "work started before the whole spec was checked"


def test_the_base_spec_is_valid(tmp_path):
    """The rows above fail because of their edit, not because the base spec is broken."""
    from viz.report import load_spec, plan_report

    spec = tmp_path / "spec.toml"
    spec.write_text(BASE)
    plan = plan_report(load_spec(spec), tmp_path / "out", root=ROOT)
    assert [f.id for f in plan.figures] == ["contours", "line", "features", "path", "curves"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["grid-string", "unknown-loss-last-figure", "id-escapes"])
def test_cli_prints_one_line_and_exits_2(tmp_path, case):
    old, new, _, message = ROWS[case]
    spec = tmp_path / "spec.toml"
    spec.write_text(BASE.replace(old, new, 1).replace('"trained_models/', f'"{ROOT}/trained_models/'))
    proc = run_cli("report", spec, "--out", tmp_path / "out", "--quiet")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert re.search(message, proc.stderr), proc.stderr
    assert not (tmp_path / "out").exists()


def test_seed_override_is_checked(tmp_path):
    from landscape.errors import ArgumentError

    spec = tmp_path / "spec.toml"
    spec.write_text(BASE)
    with pytest.raises(ArgumentError, match="seed must be"):
        build_report(spec, out_root=tmp_path / "out", quiet=True, root=ROOT, seed=-1)
    assert not (tmp_path / "out").exists()
