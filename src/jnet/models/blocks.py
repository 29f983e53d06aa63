"""Convolution blocks shared by the bases, and the normalisation check they all run.

Every convolution uses explicit integer padding (``padding=1`` for 3x3), never ``"same"``: the ONNX
export is then a plain Conv and MAC counters see every layer.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from jnet.errors import ConfigError
from jnet.utils.options import unknown

NORMS = ("batch", "instance", "group")
_UNFOLD_MAX = 2048


def group_count(channels: int, max_groups: int = 8) -> int:
    """Number of GroupNorm groups for ``channels``: a divisor of ``channels`` (at most
    ``max_groups``) that leaves at least 2 channels per group where possible, so that a group
    never normalises a single value at a 1x1 bottleneck."""
    groups = math.gcd(channels, max_groups)
    while groups > 1 and channels // groups < 2:
        groups //= 2
    return groups


def make_norm(norm: str, channels: int) -> nn.Module:
    """The normalisation layer named ``norm`` (``batch`` | ``instance`` | ``group``) for ``channels``.

    All three have ``2 * channels`` parameters (affine scale and shift), so parameter counts do not
    depend on the choice. ``group`` uses :func:`group_count` groups.
    """
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "group":
        return nn.GroupNorm(group_count(channels), channels)
    raise ConfigError(unknown("model.norm", norm, NORMS))


def check_bottleneck_norm(norm: str, bottleneck: int, batch: int, training: bool) -> None:
    """Refuse a forward pass that a 1x1 bottleneck makes degenerate, with the fix in the message.

    BatchNorm in training normalises over batch x spatial, which is one value per channel for a
    batch of 1 at 1x1. InstanceNorm normalises over spatial alone, one value at 1x1, in every mode.
    GroupNorm normalises over channel groups and is safe.

    Args:
        norm: the base's ``norm`` field.
        bottleneck: spatial size of the deepest feature map (``in_size / 2**depth``).
        batch: batch size of the input.
        training: whether the module is in training mode.

    Raises:
        ConfigError: naming ``model.norm``, the bottleneck size, the batch size and the fix.
    """
    if bottleneck > 1:
        return
    if norm == "batch" and training and batch < 2:
        raise ConfigError(
            f"model.norm='batch' cannot train with a {bottleneck}x{bottleneck} bottleneck at "
            f"batch size {batch}: BatchNorm sees one value per channel. Use train.batch_size >= 2, "
            f"or model.norm='group' (safe at any batch size)")
    if norm == "instance":
        raise ConfigError(
            f"model.norm='instance' is degenerate with a {bottleneck}x{bottleneck} bottleneck "
            f"(batch size {batch}): InstanceNorm normalises a single value per channel. Use "
            f"model.norm='group' (or 'batch' with batch_size >= 2), or a larger in_size / smaller depth")


def tracing() -> bool:
    """True while torch.jit / ONNX tracing or torch.compile runs: shape checks are then skipped
    (they would be baked into the trace as constants and warn)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def neighbourhoods(x: torch.Tensor, radius: int = 1, padding: str = "zeros") -> torch.Tensor:
    """The ``d x d`` neighbourhood of every pixel (``d = 2 * radius + 1``), as ``F.unfold`` lays
    it out: index ``c * d * d + dy * d + dx``. ``padding``: ``zeros`` (as a convolution) or
    ``replicate`` (the border rule of bilinear resizing). One unfold for small inputs in eager
    mode; otherwise Pad, Slice and Concat, which tracing and export always take (Unfold has no plain
    ONNX form).

    Shape: ``(B, C, h, w) -> (B, C * d * d, h * w)``.
    """
    r, d = radius, 2 * radius + 1
    if padding == "replicate":
        x = nn.functional.pad(x, (r, r, r, r), mode="replicate")
    elif padding != "zeros":
        raise ValueError(f"padding: {padding!r} is not zeros or replicate")
    # unfold copies image by image: faster than the slices below up to about 2k values (measured:
    # 6 against 23 us at 1 x 16 x 16, 50 against 29 us at 16 x 16 x 16)
    if x.numel() <= _UNFOLD_MAX and not (tracing() or torch.onnx.is_in_onnx_export()):
        return nn.functional.unfold(x, d, padding=r if padding == "zeros" else 0)
    if padding == "zeros":
        x = nn.functional.pad(x, (r, r, r, r))
    h, w = x.shape[-2] - 2 * r, x.shape[-1] - 2 * r
    shifts = [x[:, :, dy:dy + h, dx:dx + w] for dy in range(d) for dx in range(d)]
    return torch.stack(shifts, 2).flatten(1, 2).flatten(2)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """3x3 convolution with bias, stride 1, zero padding 1 (spatial size kept)."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


def up2x(channels_in: int, channels_out: int) -> nn.ConvTranspose2d:
    """Learned x2 upsampling: ConvTranspose2d with a 2x2 kernel, stride 2, bias."""
    return nn.ConvTranspose2d(channels_in, channels_out, 2, stride=2)


class DoubleConv(nn.Sequential):
    """Two rounds of Conv3x3 -> norm -> ReLU.

    Shape: ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        super().__init__(
            conv3x3(in_channels, out_channels), make_norm(norm, out_channels), nn.ReLU(inplace=True),
            conv3x3(out_channels, out_channels), make_norm(norm, out_channels), nn.ReLU(inplace=True),
        )


class UpSample(nn.Sequential):
    """``log2(factor)`` learned x2 upsamplings (ConvTranspose2d(c_in, c_in, 2, stride 2)), then one
    Conv3x3 ``c_in -> c_out``. ``factor`` 1 is the Conv3x3 alone.

    Shape: ``(B, c_in, H, W) -> (B, c_out, factor*H, factor*W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, factor: int) -> None:
        steps = int(math.log2(factor))
        if factor < 1 or 2 ** steps != factor:
            raise ConfigError(f"UpSample factor: expected a power of two >= 1, found {factor}")
        super().__init__(*[up2x(in_channels, in_channels) for _ in range(steps)],
                         conv3x3(in_channels, out_channels))


def upsample_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """Fixed bilinear resize of logits to ``size x size`` (align_corners=False, no antialias).

    Shape: ``(B, C, h, w) -> (B, C, size, size)``, laid out NCHW.
    """
    # NCHW: PyTorch's channels-last bilinear kernel took 2.4x as long for 3 channels (16x16 -> 256,
    # batch 16), and a channels-last input (from channels-last weights) would pass its layout on
    return nn.functional.interpolate(x.contiguous(), size=(size, size), mode="bilinear",
                                     align_corners=False)
