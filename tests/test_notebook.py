"""reports/explore.ipynb runs top to bottom (executed with nbclient) and its outputs are what a reader wants.

Each figure shows once, plotly.js is in the notebook once (not in every interactive cell), nothing
is loaded from the network, and progress appears as plain lines without tqdm's IProgress warning
(ipywidgets is not a dependency).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "reports" / "explore.ipynb"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def executed():
    import os

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel runs as a user's would: progress on, matplotlib's inline backend (not the suite's Agg)
    env = {k: v for k, v in os.environ.items() if k not in ("LANDSCAPE_QUIET", "MPLBACKEND")}
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    client.execute(env=env)  # raises CellExecutionError on the first failing cell
    return nb


def _outputs(nb):
    return [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code" for o in c.get("outputs", [])]


def _text(output) -> str:
    if output.output_type == "stream":
        return output.text
    return json.dumps(output.get("data", {})) + str(output.get("evalue", ""))


def test_explore_notebook_executes(executed):
    errors = [o for _, o in _outputs(executed) if o.output_type == "error"]
    assert not errors
    mimes = {k for _, o in _outputs(executed) for k in o.get("data", {})}
    assert "image/png" in mimes and "application/vnd.plotly.v1+json" in mimes and "text/html" in mimes


def test_each_figure_shows_once(executed):
    from collections import Counter

    pngs = Counter(i for i, o in _outputs(executed) if "image/png" in o.get("data", {}))
    assert pngs and max(pngs.values()) == 1, f"cells showing a figure twice: {[i for i, n in pngs.items() if n > 1]}"
    plotly = Counter(i for i, o in _outputs(executed) if "application/vnd.plotly.v1+json" in o.get("data", {}))
    assert len(plotly) == 3 and max(plotly.values()) == 1


def test_plotly_js_is_in_the_notebook_once_and_nothing_comes_from_the_network(executed):
    import nbformat
    import plotly.offline

    library = plotly.offline.get_plotlyjs()
    marker = library[:60]  # its licence header, "/**\n* plotly.js v..."
    html = [o["data"]["text/html"] for _, o in _outputs(executed) if "text/html" in o.get("data", {})]
    assert sum(h.count(marker) for h in html) == 1
    assert marker in next(h for h in html if "plotly" in h.lower()), "the first interactive figure carries plotly.js"
    assert not [h for h in html if 'src="http' in h or "src='http" in h or 'src="//' in h]
    size = len(nbformat.writes(executed))
    assert size < len(library) + 3_000_000, f"executed notebook is {size / 1e6:.1f} MB"


def test_progress_is_plain_text_without_the_iprogress_warning(executed):
    texts = [_text(o) for _, o in _outputs(executed)]
    assert not [t for t in texts if "IProgress" in t or "ipywidgets" in t]
    streams = "".join(o.text for _, o in _outputs(executed) if o.output_type == "stream")
    assert "surface: 441/441 pt (100.0%)" in streams  # the 21 x 21 surface reported its progress
