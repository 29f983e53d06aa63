"""Matplotlib without a display, and PNG files written atomically: one rule for every plot."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from jnet.utils.atomic import atomic_path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | Path) -> None:
    """Write ``fig`` as a PNG atomically, then release it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    fig.clf()
    pyplot().close(fig)
