"""Augmentation of training batches, applied at high resolution so image and label stay aligned.

Modes (``augment``):

- ``"flip"`` (``True``): random horizontal and vertical flips, each with probability 0.5 per
  sample, as published.
- ``"full"``: flips, then a small random affine per sample (rotation +-10 degrees, scale 0.9-1.1,
  shift +-5 % of the side; image bilinear, label nearest, zeros outside) and intensity jitter on
  the non-zero voxels (``x * U(0.9, 1.1) + U(-0.1, 0.1)`` per sample and channel).
- ``"none"`` (``False``): nothing.

The label is always augmented at high resolution. With flips only and an ``area`` or ``gaussian``
downsample the image is flipped after downsampling: those are mirror-symmetric, so the result is
the same as flipping at high resolution (to float rounding) at a fraction of the cost.

Randomness comes from the seed, the epoch and the batch's rows only (never from worker state), so a
seed gives the same batches whatever ``num_workers`` is.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch
import torch.nn.functional as F

from jnet.errors import ConfigError

AUGMENT_MODES = ("none", "flip", "full")
#: Downsample modes whose result is mirror-symmetric: downsample(flip(x)) == flip(downsample(x)).
FLIP_EQUIVARIANT = ("area", "gaussian")


def batch_generator(seed: int, epoch: int, rows: np.ndarray) -> torch.Generator:
    """The random source of one batch: a function of the seed, the epoch and the batch's rows
    only, so batches do not depend on which loader worker builds them."""
    key = zlib.crc32(np.asarray(rows, dtype=np.int64).tobytes())
    state = np.random.SeedSequence([int(seed), int(epoch), key]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def augment_batch(images: torch.Tensor, labels: torch.Tensor, mode: str = "flip",
                  generator: torch.Generator | None = None,
                  order: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a high-resolution batch; image and label get the same geometric change.

    Args:
        images: images of any dtype. labels: integer label maps (values are only copied).
        mode: ``"none"``, ``"flip"`` or ``"full"`` (module docstring).
        generator: source of randomness.
        order: optional permutation applied first (sample ``k`` of the result is
            ``images[order[k]]``); fused into the same copy.
    Returns:
        New ``(images float32, labels)`` tensors; labels keep their dtype.

    Shape: ``images (B, C, H, W)``, ``labels (B, H, W)``.
    """
    mode = augment_mode(mode)
    b = images.shape[0]
    flips = (torch.rand(b, 2, generator=generator) < 0.5).tolist() if mode != "none" else None
    images, labels = _arrange(images, labels, order, flips)
    if mode == "full":
        images, labels = _affine(images, labels, generator)
        scale = 0.9 + 0.2 * torch.rand(b, images.shape[1], 1, 1, generator=generator)
        shift = -0.1 + 0.2 * torch.rand(b, images.shape[1], 1, 1, generator=generator)
        jittered = images * scale.to(images.device) + shift.to(images.device)
        images = torch.where(images != 0, jittered, images)
    return images, labels


def _arrange(images: torch.Tensor, labels: torch.Tensor, order: np.ndarray | None,
             flips: list[list[bool]] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder, flip (horizontal = last axis, vertical = second to last) and cast to float32 in
    one copy per sample: much faster on CPU than whole-batch ``flip``/``where``."""
    if order is None and flips is None:
        return images.float(), labels
    # the cast is fused into the copy
    out_images = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    out_labels = torch.empty_like(labels)
    for k in range(images.shape[0]):
        src = int(order[k]) if order is not None else k
        dims = [d for d, flip in zip((-1, -2), flips[k]) if flip] if flips is not None else []
        out_images[k] = images[src].flip(dims) if dims else images[src]
        out_labels[k] = labels[src].flip(dims) if dims else labels[src]
    return out_images, out_labels


def _affine(images: torch.Tensor, labels: torch.Tensor,
            generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    b = images.shape[0]
    angle = (torch.rand(b, generator=generator) * 2 - 1) * (np.pi / 18)
    scale = 0.9 + 0.2 * torch.rand(b, generator=generator)
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * 0.1  # 5 % of the side, in [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1).to(images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    warped = F.grid_sample(labels.unsqueeze(1).float(), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)
    return images, warped.squeeze(1).round().to(labels.dtype)


def augment_mode(augment: bool | str) -> str:
    mode = ("flip" if augment else "none") if isinstance(augment, bool) else augment
    if mode not in AUGMENT_MODES:
        raise ConfigError(
            f"data.augment: expected true/false or one of {', '.join(AUGMENT_MODES)}, found {augment!r}")
    return mode


