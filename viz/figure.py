"""The :class:`Plot` every viz function returns: a figure plus the numbers it draws."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable

from landscape.io import atomic_path, check_not_input, write_json

# Whether this process has already shown a plotly figure in a notebook with plotly.js inlined. Every
# figure after the first refers to that copy (window.Plotly), so an executed notebook holds plotly.js
# once (~4 MB) instead of once per figure; the notebook stays usable offline.
_plotlyjs_sent = False


def is_plotly(fig: Any) -> bool:
    """Whether ``fig`` is a plotly figure."""
    return type(fig).__module__.startswith("plotly")


def plotly_bundle(fig: Any) -> dict:
    """The notebook display of a plotly figure: its JSON (JupyterLab renders it) and HTML (every other frontend).

    The HTML of the first figure shown in this process carries plotly.js inline; later ones use it.
    Written here rather than through plotly's ``notebook`` renderer, which also loads MathJax
    from a CDN (no network is assumed).
    """
    global _plotlyjs_sent

    import plotly.io as pio

    html = pio.to_html(fig, include_plotlyjs=not _plotlyjs_sent, full_html=False, default_width="100%",
                       validate=False)
    _plotlyjs_sent = True
    return {**pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict()), "text/html": html}


@dataclasses.dataclass
class Plot:
    """A rendered figure and the values plotted in it.

    Attributes
    ----------
    fig : matplotlib.figure.Figure or plotly.graph_objects.Figure
    values : dict
        Every array or number the figure draws, by name (what regression tests pin).
    caption : str
        What was computed: checkpoint, data, grid, seed.
    kind : str
        Figure kind (``"contour"``, ``"phenotype_curves"``, ...).
    """

    fig: Any
    values: dict
    caption: str = ""
    kind: str = ""

    @property
    def interactive(self) -> bool:
        """Whether the figure is plotly (saved as HTML)."""
        return is_plotly(self.fig)

    def save(self, stem: str | Path, dpi: int = 130, *, close: bool = False,
             inputs: Iterable[str | Path] = ()) -> list[Path]:
        """Write ``<stem>.png`` (matplotlib) or ``<stem>.html`` (plotly, self-contained) and ``<stem>.json``.

        The HTML embeds plotly.js, so it works with no network.

        Parameters
        ----------
        stem : path
            Output path without suffix.
        dpi : int
            Resolution of a PNG.
        close : bool
            Free the matplotlib figure afterwards (also when saving fails): what a script that
            renders many figures wants.
        inputs : iterable of path
            Files the run reads; writing over one of them raises
            :class:`landscape.errors.OutputError` before anything is written.

        Returns
        -------
        list of Path
            The figure file and the JSON of its plotted values.
        """
        stem = Path(stem)
        # with_name, not with_suffix: a stem such as "adma(a=0.1)" has a dot that is not a suffix
        path = stem.with_name(stem.name + (".html" if self.interactive else ".png"))
        data = stem.with_name(stem.name + ".json")
        inputs = list(inputs)
        try:
            for target in (path, data):
                check_not_input(target, inputs, "figure file")
            stem.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                if self.interactive:  # no page margin: a frame of the figure's size shows all of it, no scrolling
                    page = self.fig.to_html(include_plotlyjs=True, full_html=True)
                    tmp.write_text(page.replace("<head>", "<head><style>html, body { margin: 0; }</style>", 1),
                                   encoding="utf-8")
                else:
                    self.fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
            write_json(data, {"kind": self.kind, "caption": self.caption, "values": self.values})
        finally:
            if close:
                self.close()
        return [path, data]

    def close(self) -> None:
        """Free a matplotlib figure (reports render many); the Plot can still be saved or shown."""
        if not self.interactive:
            import matplotlib.pyplot as plt

            plt.close(self.fig)

    def png(self, dpi: int = 100) -> bytes:
        """The figure as PNG bytes (matplotlib figures only)."""
        import io

        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        return buf.getvalue()

    # Jupyter shows the figure itself inline, once: displaying a Plot takes its matplotlib figure off
    # pyplot's list, so the inline backend does not show it a second time at the end of the cell.
    def _repr_mimebundle_(self, include=None, exclude=None):
        if self.interactive:
            return plotly_bundle(self.fig)
        self.close()
        return {"image/png": self.png()}
