"""Bases: networks that map an ``s x s`` image to ``s x s`` logits. J-Net wraps any of them.

- :class:`ELUNet`: the ELU-Net variant of the J-Net reference ("deep" full-scale skips), in a
  ``faithful`` form (the reference code's weight sharing, its parameter counts) and a ``clean`` one.
- ``unet`` / ``basicunet``: MONAI's ``UNet`` and ``BasicUNet`` (2D) behind :class:`MonaiBase`.

``BASES`` maps each name to a builder ``f(in_channels, classes, width, depth, norm, variant)``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from jnet.errors import ConfigError
from jnet.models.blocks import NORMS, DoubleConv, UpSample, check_bottleneck_norm, group_count, tracing
from jnet.utils.options import choose, unknown

VARIANTS = ("clean", "faithful")
DEFAULT_VARIANT = "clean"


class _DecoderLevel(nn.Module):
    """One ELU-Net decoder level: the path from below upsampled x2, every encoder skip at or below
    this level resized to it (deepest first), concatenated, then a DoubleConv."""

    def __init__(self, level: int, depth: int, channels: list[int], norm: str, share: bool) -> None:
        super().__init__()
        out = channels[level - 1]
        self.level = level
        self.below = UpSample(channels[level], out, 2)
        # faithful variant: the x2 skip from encoder level `level` has the same channel counts as
        # `below`, and the reference code uses that one module (shared weights) for both paths.
        self.share = share
        self.skips = nn.ModuleDict({
            str(j): UpSample(channels[j], out, 2 ** (j - level + 1))
            for j in range(depth - 1, level - 2, -1) if not (share and j == level)})
        n_inputs = 1 + (depth - level + 1)  # the path from below + one per encoder level
        self.conv = DoubleConv(n_inputs * out, out, norm)

    def forward(self, below: torch.Tensor, encoder: list[torch.Tensor]) -> torch.Tensor:
        """``encoder[j]`` is the encoder output at level j (0 = input resolution)."""
        parts = [self.below(below)]
        for j in range(len(encoder) - 2, self.level - 2, -1):
            module = self.below if (self.share and j == self.level) else self.skips[str(j)]
            parts.append(module(encoder[j]))
        return self.conv(torch.cat(parts, dim=1))


class ELUNet(nn.Module):
    """ELU-Net ("deep" variant with full-scale skips), the base of the J-Net reference.

    Encoder: DoubleConv(in -> n) at s, then ``depth`` x (MaxPool2 + DoubleConv) doubling the
    channels (n, 2n, 4n, ...). Decoder level l (l = depth..1, at ``s / 2**(l-1)`` with
    ``2**(l-1) * n`` channels) concatenates the level below upsampled x2 and every encoder level
    from l-1 to depth-1 resized to it (UpSample: ConvTranspose2d x2 steps then Conv3x3), then a
    DoubleConv; a Conv1x1 gives the logits. All convolutions have bias, explicit padding.

    ``variant="faithful"`` reproduces the public reference code, where at levels depth-1..1 the
    module that upsamples the level below also upsamples the encoder skip one level down (same
    channel counts): one shared UpSample. width 16 -> 3,194,081 parameters, width 8 -> 800,113
    (1 input channel, 1 class, depth 4). ``variant="clean"`` (the factory default) gives every
    path its own weights, as in the ELU-Net paper.

    Args:
        in_channels: input image channels.
        classes: output logit channels C.
        width: channels n of the first level.
        depth: number of 2x downsamplings; the input size must be divisible by ``2**depth``.
        norm: ``batch`` | ``instance`` | ``group``.
        variant: ``clean`` | ``faithful`` (the factory default is ``clean``).

    Shape: ``(B, in_channels, s, s) -> (B, classes, s, s)``, ``s`` divisible by ``2**depth``.
    """

    def __init__(self, in_channels: int, classes: int, width: int = 16, depth: int = 4,
                 norm: str = "batch", variant: str = DEFAULT_VARIANT) -> None:
        super().__init__()
        choose(variant, VARIANTS, "model.variant")
        if depth < 1:
            raise ConfigError(f"model.depth: expected an integer >= 1, found {depth}")
        self.in_channels, self.classes, self.width = in_channels, classes, width
        self.depth, self.norm, self.variant = depth, norm, variant
        ch = [width * 2 ** j for j in range(depth + 1)]
        self.pool = nn.MaxPool2d(2)
        self.encoder = nn.ModuleList(
            [DoubleConv(in_channels, ch[0], norm)]
            + [DoubleConv(ch[j - 1], ch[j], norm) for j in range(1, depth + 1)])
        # decoder levels deepest first, the order of the forward pass
        self.decoder = nn.ModuleList([
            _DecoderLevel(level, depth, ch, norm, share=variant == "faithful" and level < depth)
            for level in range(depth, 0, -1)])
        self.out = nn.Conv2d(ch[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not tracing():
            size = min(x.shape[-2:])
            if x.shape[-1] % 2 ** self.depth or x.shape[-2] % 2 ** self.depth:
                raise ConfigError(f"ELU-Net input: spatial size {tuple(x.shape[-2:])} is not "
                                  f"divisible by 2^depth = {2 ** self.depth} (model.depth {self.depth})")
            check_bottleneck_norm(self.norm, size >> self.depth, x.shape[0], self.training)
        feats = [self.encoder[0](x)]
        for block in self.encoder[1:]:
            feats.append(block(self.pool(feats[-1])))
        y = feats[-1]
        for level in self.decoder:
            y = level(y, feats)
        return self.out(y)


def _monai_norm(norm: str, channels: int) -> str | tuple:
    # MONAI's norm spec is one for all layers: GroupNorm's group count must divide every normalised
    # channel count (multiples of width, and for UNet also the classes at its last up layer).
    if norm == "batch":
        return "batch"
    if norm == "instance":
        return ("instance", {"affine": True})
    if norm == "group":
        return ("group", {"num_groups": group_count(channels)})
    raise ConfigError(unknown("model.norm", norm, NORMS))


class MonaiBase(nn.Module):
    """Adapter that gives a MONAI 2D network the attributes of a jnet base and the bottleneck check.

    Args:
        net: the MONAI network, ``(B, in_channels, s, s) -> (B, classes, s, s)``.
        in_channels, classes, width, depth, norm: as passed to the builder.

    Shape: ``(B, in_channels, s, s) -> (B, classes, s, s)``.
    """

    def __init__(self, net: nn.Module, in_channels: int, classes: int, width: int, depth: int,
                 norm: str) -> None:
        super().__init__()
        self.net = net
        self.in_channels, self.classes, self.width, self.depth, self.norm = (
            in_channels, classes, width, depth, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not tracing():
            check_bottleneck_norm(self.norm, min(x.shape[-2:]) >> self.depth, x.shape[0],
                                  self.training)
        return self.net(x)


def build_elunet(in_channels: int, classes: int, width: int, depth: int, norm: str,
                 variant: str | None) -> nn.Module:
    """ELU-Net base (``variant`` defaults to ``clean``)."""
    return ELUNet(in_channels, classes, width, depth, norm, variant or DEFAULT_VARIANT)


def build_unet(in_channels: int, classes: int, width: int, depth: int, norm: str,
               variant: str | None = None) -> nn.Module:
    """MONAI ``UNet``: channels ``(w, 2w, ..., 2**depth w)``, stride-2 levels, 2 residual units per
    level (as in MONAI's tutorials), PReLU. ``width=16, depth=4`` is MONAI's usual
    ``channels=(16, 32, 64, 128, 256)``. Its last up layer normalises the ``classes`` logit
    channels, so ``norm="group"`` uses ``gcd(width, classes)``-based groups (one group, i.e. a
    layer norm, for a binary task)."""
    from monai.networks.nets import UNet

    net = UNet(spatial_dims=2, in_channels=in_channels, out_channels=classes,
               channels=tuple(width * 2 ** j for j in range(depth + 1)), strides=(2,) * depth,
               num_res_units=2, norm=_monai_norm(norm, math.gcd(width, classes)))
    return MonaiBase(net, in_channels, classes, width, depth, norm)


def build_basicunet(in_channels: int, classes: int, width: int, depth: int, norm: str,
                    variant: str | None = None) -> nn.Module:
    """MONAI ``BasicUNet`` (fixed depth 4): features ``(w, w, 2w, 4w, 8w, w)``, so ``width=32`` is
    MONAI's default ``(32, 32, 64, 128, 256, 32)``; LeakyReLU as in MONAI."""
    if depth != 4:
        raise ConfigError(f"model.depth: base 'basicunet' has a fixed depth of 4, found {depth}; "
                          f"use depth=4 (or base 'unet' / 'elunet' for other depths)")
    from monai.networks.nets import BasicUNet

    w = width
    net = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=classes,
                    features=(w, w, 2 * w, 4 * w, 8 * w, w), norm=_monai_norm(norm, width))
    return MonaiBase(net, in_channels, classes, width, depth, norm)


BaseBuilder = Callable[[int, int, int, int, str, "str | None"], nn.Module]

# name -> builder(in_channels, classes, width, depth, norm, variant); look-up only, no registry.
BASES: dict[str, BaseBuilder] = {
    "elunet": build_elunet,
    "unet": build_unet,
    "basicunet": build_basicunet,
}
