"""The :class:`Plot` every viz function returns: a figure plus the numbers it draws."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from landscape.io import atomic_path, write_json


def is_plotly(fig: Any) -> bool:
    """Whether ``fig`` is a plotly figure."""
    return type(fig).__module__.startswith("plotly")


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

    def save(self, stem: str | Path, dpi: int = 130) -> list[Path]:
        """Write ``<stem>.png`` (matplotlib) or ``<stem>.html`` (plotly, self-contained) and ``<stem>.json``.

        The HTML embeds plotly.js, so it works with no network.
        """
        stem = Path(stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        written = []
        if self.interactive:
            path = stem.with_suffix(".html")
            with atomic_path(path) as tmp:
                # plotly's page is 100% high plus the body's default margin: in a report iframe that scrolls
                self.fig.write_html(str(tmp), include_plotlyjs=True, full_html=True,
                                    post_script="document.body.style.margin = '0';")
        else:
            path = stem.with_suffix(".png")
            with atomic_path(path) as tmp:
                self.fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        written.append(path)
        written.append(write_json(stem.with_suffix(".json"),
                                  {"kind": self.kind, "caption": self.caption, "values": self.values}))
        return written

    def close(self) -> None:
        """Free a matplotlib figure (reports render many)."""
        if not self.interactive:
            import matplotlib.pyplot as plt

            plt.close(self.fig)

    # Jupyter: show the figure itself inline (plotly stays interactive).
    def _repr_html_(self):
        if self.interactive:
            return self.fig.to_html(include_plotlyjs=True, full_html=False)
        return None

    def _repr_png_(self):
        if self.interactive:
            return None
        import io

        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        return buf.getvalue()

    def _repr_mimebundle_(self, include=None, exclude=None):
        if self.interactive:
            return self.fig._repr_mimebundle_(include, exclude)
        return {"image/png": self._repr_png_()}

