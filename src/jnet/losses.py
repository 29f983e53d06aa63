"""Kept for ``from jnet.losses import MultiScaleLoss``; the loss lives in :mod:`jnet.training.losses`."""
from jnet.training.losses import MultiScaleLoss

__all__ = ["MultiScaleLoss"]
