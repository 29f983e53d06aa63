"""jnet: high-resolution segmentation from low-resolution inputs (J-Net, arXiv 2403.05340).

Importing jnet has no side effects: it creates no files and starts nothing.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "build_model", "JNet", "MultiScaleLoss"]


def __getattr__(name: str):
    # Lazy so that `jnet --help` and `import jnet` stay fast (torch is imported on first use).
    if name in ("build_model", "JNet"):
        from jnet.models import jnet as _m

        return getattr(_m, name)
    if name == "MultiScaleLoss":
        from jnet.losses import MultiScaleLoss

        return MultiScaleLoss
    raise AttributeError(f"module 'jnet' has no attribute {name!r}")
