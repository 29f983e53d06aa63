"""The learned upsampling heads: from the base's ``s x s`` output to ``S = s * 2**K``.

Every head is called as ``head(base_output, image)`` and returns its outputs from low to high
resolution, the base's logits first, at the scale factors ``head.factors``. ``base_output`` holds
the C logit channels, then the ``head.code_channels`` extra channels the head asks the base for.

- ``paper`` (the published head) and ``chain`` see only the C logits, in K x2 stages, and have no
  activation: affine maps of the logits, folded exactly for inference by :mod:`jnet.models.fold`.
  Outputs ``[s, 2s, ..., S]``.
- ``subpixel`` (jnet's default) works at the input resolution: fixed bilinear upsampling of the
  logits plus a learned correction predicted from the logits, a few code channels of the base and
  the low-resolution image, rearranged into each pixel's ``2**K x 2**K`` block (sub-pixel
  convolution). Outputs ``[s, S]``.
- ``dysample`` (an ablation) reads the logits at learned offsets from the bilinear sampling positions
  instead of adding a correction. Outputs ``[s, S]``.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from jnet.errors import ConfigError
from jnet.models.blocks import conv3x3, neighbourhoods, up2x, upsample_bilinear
from jnet.models.scratch import detached_from, intermediate
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

    foldable = True  # an affine map of the logits: jnet.models.fold applies
    code_channels = 0

    @property
    def factors(self) -> list[int]:
        """Scale factor of each output over the input, low to high."""
        return [2 ** i for i in range(self.k + 1)]

    def forward(self, logits: torch.Tensor, image: torch.Tensor | None = None) -> list[torch.Tensor]:
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

    foldable = True
    code_channels = 0
    factors = PaperHead.factors

    def forward(self, logits: torch.Tensor, image: torch.Tensor | None = None) -> list[torch.Tensor]:
        outs = [logits]
        for i, stage in enumerate(self.stages):
            x = outs[-1]
            if self.skips and i > 0:
                x = torch.cat([x, upsample_bilinear(logits, x.shape[-1])], dim=1)
            outs.append(stage(x))
        return outs


def bilinear_blocks(factor: int) -> torch.Tensor:
    """Bilinear upsampling by ``factor`` (align_corners=False) as a map from a pixel's 3x3
    neighbourhood to its ``factor x factor`` output block, read off ``F.interpolate`` with unit
    impulses. With replicate padding of the neighbourhoods it is exact at the borders too.

    Shape: ``(9, factor * factor)``.
    """
    impulses = torch.eye(9, dtype=torch.float64).reshape(9, 1, 3, 3)
    up = F.interpolate(impulses, size=(3 * factor, 3 * factor), mode="bilinear", align_corners=False)
    return up[:, 0, factor:2 * factor, factor:2 * factor].reshape(9, factor * factor).float()


def _zero_linear(n_in: int, n_out: int) -> nn.Linear:
    """A linear map that starts at zero: a head built on it starts as the bilinear baseline."""
    layer = nn.Linear(n_in, n_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class _LowResView(nn.Module):
    """What the subpixel and dysample heads see, at ``s``: ``body(cat[logits, code, image])``,
    ``layers`` x (``Conv3x3 -> ReLU``) of ``hidden`` channels (none where ``hidden`` = 0), so each
    low-resolution pixel's features come from its 3x3 neighbourhood (5x5 with two layers)."""

    foldable = False  # computed at the input resolution already

    def __init__(self, classes: int, k: int, code: int, hidden: int, in_channels: int, layers: int,
                 dropout: float, image: bool) -> None:
        super().__init__()
        _check_k(k)
        self.classes, self.k, self.code_channels, self.hidden = classes, k, code, hidden
        self.factor = 2 ** k
        self.image = image
        self.c_in = classes + code + (in_channels if image else 0)
        body: list[nn.Module] = []
        for i in range(layers if hidden else 0):
            body += [conv3x3(self.c_in if i == 0 else hidden, hidden), nn.ReLU(inplace=True)]
        if body and dropout:
            body.append(nn.Dropout(dropout))  # an ablation: measured, it lowers J-Net (docs/method.md)
        self.body = nn.Sequential(*body) if body else None

    @property
    def factors(self) -> list[int]:
        return [1, self.factor]

    def view(self, out: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and what the body reads: ``(B, C, s, s), (B, C + code [+ Cin], s, s)``."""
        return out[:, :self.classes], torch.cat([out, image], dim=1) if self.image else out


class SubpixelHead(_LowResView):
    """Bilinear upsampling of the logits plus a learned sub-pixel correction, computed at ``s``.

    ``out_S = bilinear(logits, S) + blocks(body(cat[logits, code, image]))``, ``f = 2**K``: ``body``
    is ``layers`` x (``Conv3x3 -> ReLU``) then a linear map to each pixel's ``f x f`` output block
    (``hidden`` > 0), or one linear map of the 3x3 neighbourhood (``hidden`` = 0, an affine head);
    ``blocks`` lays the blocks out side by side (a sub-pixel convolution, as PixelShuffle). Each
    block is predicted from the 3x3 neighbourhood of its low-resolution pixel: the logits, ``code``
    more channels of the base's last layer (what one number per pixel cannot carry, e.g. where
    inside the pixel a boundary lies) and the image's own partial-volume values. The last layer
    starts at zero, so an untrained head is the fixed bilinear upsampling of the baseline (to float
    round-off): training starts from it, never from an empty map.

    Everything runs at ``s``: one matrix product over the pixels gives the learned blocks and the
    bilinear ones together (:func:`bilinear_blocks`, fixed weights), and the only work at ``S`` is
    writing the output once. (A 1x1 convolution, PixelShuffle and a separate
    ``F.interpolate`` in its place cost several times more on a CPU at batch 16.)

    Args:
        classes: logit channels C.
        k: x2 factors, 1..5 (``f = 2**K``).
        code: extra channels asked of the base (:attr:`code_channels`).
        hidden: channels of the hidden layers; 0 = affine.
        layers: hidden ``Conv3x3 -> ReLU`` layers (each widens the view by one pixel per side).
        dropout: dropout on the hidden features in training (0 = none).
        in_channels: image channels.
        image: whether the head sees the image (false: the base's output alone, an ablation).

    Shape: ``(B, C + code, s, s), (B, in_channels, s, s) -> [(B, C, s, s), (B, C, S, S)]``.
    """

    def __init__(self, classes: int, k: int, code: int = 8, hidden: int = 32,
                 in_channels: int = 1, layers: int = 1, dropout: float = 0.0,
                 image: bool = True) -> None:
        super().__init__(classes, k, code, hidden, in_channels, layers, dropout, image)
        f = self.factor
        self.out = _zero_linear(hidden or 9 * self.c_in, classes * f * f)
        # the fixed bilinear map of each class's logit neighbourhood, (9C, C f^2)
        self.register_buffer("fixed", torch.block_diag(*[bilinear_blocks(f)] * classes), persistent=False)

    def forward(self, out: torch.Tensor, image: torch.Tensor) -> list[torch.Tensor]:
        c, f = self.classes, self.factor
        logits, z = self.view(out, image)
        b, _, h, w = z.shape
        # channels first, (B, K, h*w): the product below reads them transposed, without a copy
        features = self.body(z).flatten(2) if self.body is not None else neighbourhoods(z)
        # learned and bilinear blocks and the bias in one product:
        # [features, logit neighbourhoods, 1] @ [W; bilinear; bias] (baddbmm would first copy the
        # bias into the whole output: a second pass over S x S)
        ones = features.new_ones(b, 1, h * w)
        inputs = torch.cat([features, neighbourhoods(logits, padding="replicate"), ones], dim=1)
        weight = torch.cat([self.out.weight.t(), self.fixed.to(inputs.dtype), self.out.bias[None]])
        buf = intermediate((b, h * w, weight.shape[1]), inputs)
        blocks = torch.bmm(inputs.transpose(1, 2), weight.expand(b, -1, -1), out=buf)
        fine = blocks.view(b, h, w, c, f, f).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h * f, w * f)
        return [logits, detached_from(fine, buf)]


class DySampleHead(_LowResView):
    """Learned sampling (after DySample, Liu et al., ICCV 2023): each output pixel reads the logits
    by bilinear interpolation at its own position moved by a learned offset, instead of predicting
    a correction to them. An ablation against :class:`SubpixelHead`.

    The offsets come from the same view as the subpixel head's (``layers`` x ``Conv3x3 -> ReLU``
    on ``cat[logits, code, image]`` at ``s``), one ``(dx, dy)`` per output pixel from a linear map
    of its low-resolution pixel's features, bounded to ``scope`` input pixels by a tanh. The map
    starts at zero, so an untrained head is the bilinear upsampling of the baseline.

    Args: as :class:`SubpixelHead` (``hidden`` > 0), plus ``scope``: the largest offset, in input pixels.

    Shape: ``(B, C + code, s, s), (B, in_channels, s, s) -> [(B, C, s, s), (B, C, S, S)]``.
    """

    def __init__(self, classes: int, k: int, code: int = 8, hidden: int = 32,
                 in_channels: int = 1, layers: int = 1, image: bool = True, scope: float = 0.5) -> None:
        if hidden < 1:
            raise ConfigError("model.head_hidden: the dysample head needs a hidden layer (>= 1)")
        super().__init__(classes, k, code, hidden, in_channels, layers, 0.0, image)
        self.scope = float(scope)
        self.out = _zero_linear(hidden, 2 * self.factor ** 2)

    def forward(self, out: torch.Tensor, image: torch.Tensor) -> list[torch.Tensor]:
        f = self.factor
        logits, z = self.view(out, image)
        b, _, h, w = z.shape
        # (B, h, w, f*f*2) -> each output pixel's (dx, dy) in input pixels, laid out at S x S
        offsets = self.scope * torch.tanh(self.out(self.body(z).permute(0, 2, 3, 1)))
        offsets = offsets.view(b, h, w, f, f, 2).permute(0, 1, 3, 2, 4, 5).reshape(b, h * f, w * f, 2)
        # grid_sample's coordinates (align_corners=False): pixel centres at (i + 0.5) * 2 / S - 1
        # (built here rather than with F.affine_grid, which ONNX opset 17 cannot export); an offset
        # of one input pixel is 2 / w. Border padding = the edge rule of bilinear resizing.
        ys = (torch.arange(h * f, device=z.device, dtype=z.dtype) + 0.5) * (2.0 / (h * f)) - 1
        xs = (torch.arange(w * f, device=z.device, dtype=z.dtype) + 0.5) * (2.0 / (w * f)) - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (S, S, (x, y))
        grid = grid + offsets * torch.tensor([2.0 / w, 2.0 / h], device=z.device, dtype=z.dtype)
        fine = F.grid_sample(logits, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return [logits, fine]


#: The heads by config name (``model.head``); config validation and :func:`build_head` read it.
#: A new head is a class ``f(classes, k, **options)`` added here; it declares the options it takes
#: (``skips``, ``code``, ``hidden``, ``layers``, ``dropout``, ``image``, ``in_channels``) and
#: ``factors``, ``foldable``, ``code_channels``.
HEADS: dict[str, type[nn.Module]] = {"paper": PaperHead, "chain": ChainHead, "subpixel": SubpixelHead,
                                     "dysample": DySampleHead}


def build_head(name: str, classes: int, k: int, **options) -> nn.Module:
    """The head registered as ``name`` in :data:`HEADS`, given the ``options`` its class takes."""
    cls = HEADS[choose(name, HEADS, "model.head")]
    takes = inspect.signature(cls).parameters
    return cls(classes, k, **{key: v for key, v in options.items() if key in takes and v is not None})
