"""A degenerate predictor: one that predicts no foreground at all, or foreground everywhere.

Such a model can still score: empty ground-truth slices count Jaccard 1 for an empty prediction and
their HD95 is 0, so an all-empty model shows a mean slice Jaccard above 0 and an HD95 mean of 0.00.
Training, evaluation, the sweep and the demo all use this one rule to name it instead of scoring it.

A structure is degenerate on a set of slices when its prediction is empty on every slice although
the ground truth has foreground (``"empty"``), or covers every pixel of every slice although the
ground truth does not (``"full"``).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

EMPTY, FULL = "empty", "full"
_WHAT = {EMPTY: "predicts no foreground on any slice", FULL: "predicts foreground everywhere"}


def degenerate_kind(pred_foreground: int, gt_foreground: int, pixels: int) -> str | None:
    """``"empty"``, ``"full"`` or None from foreground pixel counts over a whole set of slices."""
    if pred_foreground == 0 and gt_foreground > 0:
        return EMPTY
    if pred_foreground >= pixels and gt_foreground < pixels:
        return FULL
    return None


def describe(kinds: Mapping[str, str | None]) -> str | None:
    """One line naming the degenerate structures, e.g. ``"degenerate: predicts no foreground on
    any slice (WM)"``; None when no structure is degenerate."""
    bad = {name: kind for name, kind in kinds.items() if kind}
    if not bad:
        return None
    parts = [f"{_WHAT[kind]} ({', '.join(n for n, k in bad.items() if k == kind)})"
             for kind in (EMPTY, FULL) if kind in bad.values()]
    return "degenerate: " + "; ".join(parts)


class ForegroundCounter:
    """Sums predicted and true foreground pixels per structure over batches of masks.

    Args:
        names: structure names, one per mask channel.

    Shape: ``add(pred, gt)`` with bool masks ``(B, K, H, W)``.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.counts = torch.zeros(3, len(self.names), dtype=torch.float64)  # pred, gt, pixels

    def add(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        pred, gt = torch.as_tensor(pred), torch.as_tensor(gt)
        batch = torch.stack([pred.flatten(2).sum((0, 2)), gt.flatten(2).sum((0, 2)),
                             torch.full((pred.shape[1],), pred[:, 0].numel())])
        self.counts += batch.to(self.counts)

    def kinds(self) -> dict[str, str | None]:
        """Structure name -> ``"empty"``, ``"full"`` or None."""
        pred, gt, pixels = self.counts.tolist()
        return {n: degenerate_kind(int(p), int(g), int(s)) for n, p, g, s in zip(self.names, pred, gt, pixels)}

    def foreground_fraction(self) -> dict[str, float]:
        """Structure name -> fraction of pixels predicted as foreground."""
        pred, _, pixels = self.counts.tolist()
        return {n: p / s if s else 0.0 for n, p, s in zip(self.names, pred, pixels)}
