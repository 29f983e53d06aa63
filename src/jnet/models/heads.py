"""The learned upsampling heads: from the base's ``s x s`` logits to ``S = s * 2**K`` in K x2 stages.

Both heads see only the C logit channels, have no activation (they are affine maps of the logits,
see :mod:`jnet.models.fold`) and return every output from low to high resolution, the input logits
first: ``[out1 (s), out2 (2s), ..., out_{K+1} (S)]``.
"""
from __future__ import annotations

import torch
from torch import nn

from jnet.errors import ConfigError
from jnet.models.blocks import conv3x3, up2x, upsample_bilinear
from jnet.utils.options import choose

MAX_STAGES = 5


def _check_k(k: int) -> None:
    if not isinstance(k, int) or not 1 <= k <= MAX_STAGES:
        raise ConfigError(f"head stages K: expected an integer in 1..{MAX_STAGES} "
                          f"(out_size = in_size * 2^K), found {k!r}")


class _Stage(nn.Sequential):
    """One x2 stage: ConvTranspose2d(c_in, c_mid, 2, stride 2) then Conv3x3(c_mid -> c_out).

    Shape: ``(B, c_in, h, w) -> (B, c_out, 2h, 2w)``.
    """

    def __init__(self, c_in: int, c_mid: int, c_out: int) -> None:
        super().__init__(up2x(c_in, c_mid), conv3x3(c_mid, c_out))


class _SkipPath(nn.Module):
    """``out1`` upsampled by ``2**steps``: ``steps`` ConvTranspose2d x2 (own weights), each followed
    by the SAME Conv3x3 (one shared module, as in the published head).

    Shape: ``(B, C, s, s) -> (B, C, 2**steps * s, 2**steps * s)``.
    """

    def __init__(self, classes: int, steps: int) -> None:
        super().__init__()
        self.ups = nn.ModuleList([up2x(classes, classes) for _ in range(steps)])
        self.conv = conv3x3(classes, classes)  # shared by every step of this path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for up in self.ups:
            x = self.conv(up(x))
        return x


class PaperHead(nn.Module):
    """The published J-Net head, generalised to K = 1..5 stages.

    - out2, out3: ``Conv3x3(C->C)(ConvT2x(prev))``, own weights each (K = 1, 2 stop here).
    - out_i for i >= 4: ``up_concat(cat[skip_i(out1), out_{i-1}])`` where ``skip_i`` upsamples out1
      by ``2**(i-2)`` (:class:`_SkipPath`: i-2 ConvT2x, one shared Conv3x3) and ``up_concat`` =
      ``ConvT2x(2C->2C)`` + ``Conv3x3(2C->C)`` is ONE module reused by every such stage (the
      published head reuses out4's module for out5).

    K=4 (16->256) is the published head exactly (112 parameters for C=1); K=3 (32->256) stops at
    out4 (87 parameters). ``skips=False`` is the skip ablation: every stage a plain
    ``ConvT2x + Conv3x3(C->C)`` with its own weights.

    Args:
        classes: logit channels C.
        k: number of x2 stages, 1..5.
        skips: keep the skip paths from out1 (stages 4 and up).

    Shape: ``(B, C, s, s) -> [(B, C, s * 2**i, s * 2**i) for i in 0..K]``.
    """

    def __init__(self, classes: int, k: int, skips: bool = True) -> None:
        super().__init__()
        _check_k(k)
        self.classes, self.k, self.skips = classes, k, skips
        n_plain = k if not skips else min(k, 2)
        self.stages = nn.ModuleList([_Stage(classes, classes, classes) for _ in range(n_plain)])
        n_skip = k - n_plain
        self.skip_paths = nn.ModuleList([_SkipPath(classes, steps) for steps in range(2, 2 + n_skip)])
        self.up_concat = _Stage(2 * classes, 2 * classes, classes) if n_skip else None

    def forward(self, logits: torch.Tensor) -> list[torch.Tensor]:
        outs = [logits]
        for stage in self.stages:
            outs.append(stage(outs[-1]))
        for path in self.skip_paths:
            outs.append(self.up_concat(torch.cat([path(logits), outs[-1]], dim=1)))
        return outs


class ChainHead(nn.Module):
    """A plain chain of K x2 stages, ``ConvT2x(c_in -> C)`` then ``Conv3x3(C -> C)`` each.

    With ``skips=True`` every stage after the first also sees out1 resized (fixed bilinear) to its
    input size, concatenated to its input (``c_in = 2C``), so late stages keep direct access to
    the base's prediction.

    Args:
        classes: logit channels C.
        k: number of x2 stages, 1..5.
        skips: feed out1 into stages 2..K.

    Shape: ``(B, C, s, s) -> [(B, C, s * 2**i, s * 2**i) for i in 0..K]``.
    """

    def __init__(self, classes: int, k: int, skips: bool = True) -> None:
        super().__init__()
        _check_k(k)
        self.classes, self.k, self.skips = classes, k, skips
        self.stages = nn.ModuleList([
            _Stage(2 * classes if (skips and i > 0) else classes, classes, classes)
            for i in range(k)])

    def forward(self, logits: torch.Tensor) -> list[torch.Tensor]:
        outs = [logits]
        for i, stage in enumerate(self.stages):
            x = outs[-1]
            if self.skips and i > 0:
                x = torch.cat([x, upsample_bilinear(logits, x.shape[-1])], dim=1)
            outs.append(stage(x))
        return outs


#: The heads by config name (``model.head``); config validation and :func:`build_head` read it.
#: A new head is a class ``f(classes, k, skips) -> nn.Module`` added here.
HEADS: dict[str, type[nn.Module]] = {"paper": PaperHead, "chain": ChainHead}


def build_head(name: str, classes: int, k: int, skips: bool = True) -> nn.Module:
    """The head registered as ``name`` in :data:`HEADS`."""
    return HEADS[choose(name, HEADS, "model.head")](classes, k, skips)
