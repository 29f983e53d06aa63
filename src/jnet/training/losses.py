"""The multi-scale loss: every output of a model against the ground truth resized to its size.

The target pyramid is made once per batch on the device with ``F.interpolate`` from the
high-resolution ground truth (``S x S``):

- an output at ``S``: the ground truth itself;
- the lowest output, if smaller than ``S`` (``lowres_target``): ``nearest`` (the published way:
  hard labels; the same pixel rule as ``jnet.transforms.lowres.downsample(mode="nearest")``, torch's
  ``"nearest-exact"``) or ``area`` (soft targets: the fraction of each coarse pixel a structure
  covers);
- intermediate outputs (``mid_target``): ``bilinear`` (published, soft targets) or ``area``.

Per scale: ``binary`` BCE with logits (published); ``multiclass`` softmax cross-entropy against the
(soft) one-hot target; ``regions`` BCE per channel; each plus ``dice_weight`` x soft Dice
(MONAI ``DiceLoss``: batch Dice, smooth 1e-5; multiclass without the background channel). The
scales are summed with ``weights`` (default 1 each: the published unweighted sum).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from jnet.errors import ConfigError, DataError
from jnet.transforms.tasks import check_kind
from jnet.utils.options import choose

LOWRES_TARGETS = ("nearest", "area")
MID_TARGETS = ("bilinear", "area")
DICE_SCALES = ("all", "final")
# F.interpolate modes; "nearest" means the pixel nearest to the coarse pixel's centre
_MODES = {"nearest": "nearest-exact", "area": "area", "bilinear": "bilinear"}


def _choice(field: str, value: str, valid: tuple[str, ...]) -> str:
    return choose(value, valid, f"loss.{field}")


class MultiScaleLoss(nn.Module):
    """Sum over all outputs of a per-scale segmentation loss against the resized ground truth.

    Args:
        kind: task kind, ``binary`` | ``multiclass`` | ``regions``.
        weights: one weight per output, low to high resolution; ``None`` = 1 each.
        lowres_target: ``nearest`` | ``area``, the target of the lowest output when smaller than S.
        mid_target: ``bilinear`` | ``area``, the target of the outputs in between.
        dice_weight: weight of the soft Dice term (0 = none).
        dice_scales: ``all`` (every scale) or ``final`` (the output at S only: the soft targets
            of the lower scales then get BCE/CE alone, a proper scoring rule, so their logits
            stay calibrated fractions; Dice rewards confident maps).

    Call: ``loss(outputs, target)`` with ``outputs`` a list of logits ``(B, C, h, w)`` (low to
    high) or one tensor, and ``target`` the high-resolution ground truth: ``(B, H, W)`` integer
    labels (multiclass class indices, regions bitmasks, binary 0/1; binary also float 0/1) or
    ``(B, C, H, W)`` float (binary ``C = 1``; soft targets allowed). Returns a scalar.
    """

    def __init__(self, kind: str, weights: Sequence[float] | None = None,
                 lowres_target: str = "nearest", mid_target: str = "bilinear",
                 dice_weight: float = 0.0, dice_scales: str = "all") -> None:
        super().__init__()
        self.kind = check_kind(kind)
        self.lowres_target = _choice("lowres_target", lowres_target, LOWRES_TARGETS)
        self.mid_target = _choice("mid_target", mid_target, MID_TARGETS)
        if weights is not None:
            weights = [float(w) for w in weights]
            if not weights or any(w < 0 for w in weights):
                raise ConfigError(f"loss.weights: expected non-negative numbers, one per output "
                                  f"scale, found {weights}")
        self.weights = weights
        if not dice_weight >= 0:
            raise ConfigError(f"loss.dice_weight: expected a number >= 0, found {dice_weight!r}")
        self.dice_weight = float(dice_weight)
        self.dice_scales = _choice("dice_scales", dice_scales, DICE_SCALES)
        self.dice = None
        if self.dice_weight:
            from monai.losses import DiceLoss

            # batch Dice: slices without foreground do not each demand an empty prediction;
            # multiclass leaves the background channel out (as nnU-Net does)
            multi = kind == "multiclass"
            self.dice = DiceLoss(include_background=not multi, sigmoid=not multi, softmax=multi,
                                 batch=True)

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor],
                target: torch.Tensor) -> torch.Tensor:
        terms = self.terms(outputs, target)
        weights = self.weights or [1.0] * len(terms)
        if len(weights) != len(terms):
            raise ConfigError(f"loss.weights: {len(weights)} weights given, but the model has "
                              f"{len(terms)} outputs (one weight per output scale, low to high)")
        return sum(w * t for w, t in zip(weights, terms))

    def terms(self, outputs: torch.Tensor | Sequence[torch.Tensor],
              target: torch.Tensor) -> list[torch.Tensor]:
        """The unweighted loss of every output, low to high resolution (for logging)."""
        outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        if not outputs:
            raise ConfigError("loss outputs: expected at least one output tensor, found none")
        hr = self.dense_target(target, outputs[-1])
        big = tuple(hr.shape[-2:])
        terms = []
        for i, logits in enumerate(outputs):
            size = tuple(logits.shape[-2:])
            if logits.ndim != 4 or logits.shape[:2] != hr.shape[:2] or size[0] > big[0] or size[1] > big[1]:
                raise ConfigError(f"loss: output {i} has shape {tuple(logits.shape)}, which does not "
                                  f"fit the target of shape {tuple(hr.shape)} (expected (B, C, h, w) "
                                  f"with the same B and C and h, w at most the target's)")
            if size == big:
                tgt = hr
            else:
                mode = self.lowres_target if i == 0 else self.mid_target
                tgt = F.interpolate(hr, size=size, mode=_MODES[mode])
            dice = self.dice_scales == "all" or i == len(outputs) - 1
            terms.append(self.scale_loss(logits, tgt, dice=dice))
        return terms

    def scale_loss(self, logits: torch.Tensor, target: torch.Tensor, dice: bool = True) -> torch.Tensor:
        """Loss at one scale (``dice``: add the Dice term, if any). Shape: ``logits`` and
        ``target`` both ``(B, C, h, w)``."""
        logits = logits.float()
        if self.kind == "multiclass":
            loss = F.cross_entropy(logits, target)  # class probabilities as target
        else:
            loss = F.binary_cross_entropy_with_logits(logits, target)
        if self.dice is not None and dice:
            loss = loss + self.dice_weight * self.dice(logits, target)
        return loss

    def dense_target(self, target: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The ground truth as float ``(B, C, H, W)`` (one-hot / bits / 0-1), checked against the
        output ``like`` ``(B, C, h, w)``."""
        classes = like.shape[1] if like.ndim == 4 else -1
        shape = tuple(target.shape)
        if target.ndim == 4:
            if shape[:2] == (like.shape[0], classes):
                return target if target.is_floating_point() else target.float()
            raise ConfigError(f"loss target: shape {shape} does not match output shape "
                              f"{tuple(like.shape)}: expected (B, C, H, W) with the output's B and C")
        if target.ndim != 3 or shape[0] != like.shape[0]:
            raise ConfigError(f"loss target: shape {shape} does not match output shape "
                              f"{tuple(like.shape)}: expected (B, H, W) labels or (B, C, H, W) floats")
        if self.kind == "binary" and classes != 1:
            raise ConfigError(f"loss target: kind 'binary' needs 1 output channel, found output "
                              f"shape {tuple(like.shape)} for target shape {shape}")
        if target.is_floating_point() and self.kind != "binary":
            raise ConfigError(f"loss target: (B, H, W) labels for kind {self.kind!r} must be integers, "
                              f"found {target.dtype} of shape {shape}")
        limit = {"binary": 1, "multiclass": classes - 1, "regions": 2 ** classes - 1}[self.kind]
        lo, hi = target.aminmax() if target.dtype != torch.bool else (target.min(), target.max())
        if float(lo) < 0 or float(hi) > limit:
            raise DataError(f"loss target: {self.kind} labels must lie in 0..{limit} for "
                            f"{classes} output channels, found values {float(lo):g}..{float(hi):g}")
        if self.kind == "binary":
            return target.unsqueeze(1).float()
        if self.kind == "multiclass":
            return F.one_hot(target.long(), classes).permute(0, 3, 1, 2).float()
        bits = torch.arange(classes, device=target.device).view(1, -1, 1, 1)
        return ((target.long().unsqueeze(1) >> bits) & 1).float()
