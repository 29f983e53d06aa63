"""jnet: high-resolution segmentation from low-resolution inputs (J-Net, arXiv 2403.05340).

Importing jnet has no side effects: it creates no files and starts nothing. The folders follow the
pipeline (see ``docs/design.md``): sources -> transforms -> cache -> models/training -> evaluation
-> deploy.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "build_model", "JNet", "MultiScaleLoss", "fold_head"]


def __getattr__(name: str):
    # Lazy so that `jnet --help` and `import jnet` stay fast (torch is imported on first use).
    if name in ("build_model", "JNet"):
        from jnet.models import jnet as _m

        return getattr(_m, name)
    if name == "fold_head":
        from jnet.models.fold import fold_head

        return fold_head
    if name == "MultiScaleLoss":
        from jnet.training.losses import MultiScaleLoss

        return MultiScaleLoss
    raise AttributeError(f"module 'jnet' has no attribute {name!r}")
