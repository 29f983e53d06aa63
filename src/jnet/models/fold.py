"""Exact, fast inference for affine heads: fold the whole head into one batched matmul.

The J-Net heads have no activation, so the final output is an affine map of the base's logits,
and each ``f x f`` output block (``f = S / s``) depends only on a small neighbourhood of its
low-resolution pixel. For every low-resolution position p::

    block(p) = W_p @ neighbourhood(p) + b_p        W_p: (C * (2r+1)^2) -> (C * f * f)

``W_p`` and ``b_p`` are read off the trained head exactly, by running it on a zero input and on
unit impulses (in float64). Impulses ``2r+1`` pixels apart do not interact, so ``C * (2r+1)^2``
probes read every ``W_p``. The radius r comes from the head's impulse response.

Applied as one batched matmul over positions (the neighbourhoods gathered by
:func:`jnet.models.blocks.neighbourhoods`), the head costs ``9 C^2 S^2`` multiply-adds and as many
stored weights (r = 1): 0.6 M and 2.4 MB for 16 -> 256, C = 1. Position-specific maps keep the
border exact. (A shared interior map as a convolution plus a per-position border ring was
measured too: faster for s >= 64, slower for s = 16, 32, where the head's cost matters; at
s >= 64 the head is ~1% of the base either way. Inside the model at batch 1, where the base has
pushed the 2.4 MB of maps out of the cache, a shared interior map as one product plus the ring
was still slower: 0.89x the base against 0.92x.)

The folded head is plain ONNX: Pad, Slice, Concat, Reshape, Transpose, MatMul, Add.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from jnet.errors import ConfigError
from jnet.models.blocks import neighbourhoods
from jnet.models.scratch import detached_from, intermediate

# a response below this fraction of the largest one is float64 round-off, not support
_SUPPORT_TOL = 1e-12
_MAX_GRID = 129


class FoldedHead(nn.Module):
    """The final output of an affine head as ``block(p) = W_p @ neighbourhood(p) + b_p``.

    Args:
        weight: ``(s*s, K, O)``, the map of every position (row-major), ``K = C(2r+1)^2``
            neighbourhood values indexed ``c*(2r+1)^2 + dy*(2r+1) + dx``, ``O = C f^2`` block
            values indexed ``c*f*f + y*f + x``.
        bias: ``(s*s, 1, O)``.
        in_size: s. classes: C. factor: f = S / s. radius: r.

    Shape: ``(B, C, s, s) -> (B, C, s*f, s*f)``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, in_size: int, classes: int,
                 factor: int, radius: int) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.in_size, self.classes, self.factor, self.radius = in_size, classes, factor, radius
        self.hood_size, self.block_size = weight.shape[1:]

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        s, c, f = self.in_size, self.classes, self.factor
        # neighbourhood of every position: (B, C*d*d, s*s) -> (s*s, B, K)
        hood = neighbourhoods(logits, self.radius).permute(2, 0, 1).contiguous()  # 20x faster bmm
        buf = intermediate((s * s, hood.shape[1], self.block_size), hood)
        out = torch.baddbmm(self.bias, hood, self.weight, out=buf)  # (s*s, B, O)
        out = out.reshape(s, s, -1, c, f, f).permute(2, 3, 0, 4, 1, 5)
        return detached_from(out.reshape(-1, c, s * f, s * f), buf)


def _final(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return head(x)[-1]


def head_radius(head: nn.Module, classes: int, factor: int) -> int:
    """Neighbourhood radius r (in low-resolution pixels) of an affine head, from its impulse
    response: the largest distance between an input pixel and an output block it changes.

    Args:
        head: the head (float64, eval), returning the list of outputs low -> high.
        classes: C. factor: f = S / s.

    Raises:
        ConfigError: the response reaches beyond a ``_MAX_GRID`` grid.
    """
    grid = 9
    while grid <= _MAX_GRID:
        centre = grid // 2
        x = torch.zeros(classes + 1, classes, grid, grid, dtype=torch.float64)
        for c in range(classes):
            x[c + 1, c, centre, centre] = 1.0
        with torch.no_grad():
            out = _final(head, x)
        resp = (out[1:] - out[:1]).abs().reshape(classes, classes, grid, factor, grid, factor)
        blocks = resp.amax(dim=(0, 1, 3, 5))
        ys, xs = torch.nonzero(blocks > _SUPPORT_TOL * blocks.max().clamp_min(1e-300), as_tuple=True)
        radius = int(max((ys - centre).abs().max(), (xs - centre).abs().max())) if len(ys) else 0
        if radius <= centre - 2:  # clear of the grid border: the response is not truncated
            return radius
        grid = 2 * grid + 1
    raise ConfigError(f"fold_head: the head's impulse response reaches beyond {_MAX_GRID} pixels; "
                      f"it cannot be folded into a local map")


def fold_affine_head(head: nn.Module, in_size: int, classes: int, factor: int,
                     dtype: torch.dtype = torch.float32) -> FoldedHead:
    """Read an affine head's final output off as a :class:`FoldedHead` (exact, borders included).

    Args:
        head: maps ``(B, C, s, s)`` to a list whose last element is ``(B, C, s*f, s*f)``.
        in_size: s. classes: C. factor: f.
        dtype: dtype of the folded weights.

    Raises:
        ConfigError: the head is not affine (its output differs from the fold's).
    """
    # probe on the CPU in float64: exact enough that zero responses are exactly zero
    probe = copy.deepcopy(head).to("cpu", torch.float64).eval()
    s, c, f = in_size, classes, factor
    r = head_radius(probe, c, f)
    d = 2 * r + 1
    # probe (ci, oy, ox): unit impulses in channel ci at every q with q = (oy, ox) mod d
    x = torch.zeros(1 + c * d * d, c, s, s, dtype=torch.float64)
    for i in range(c * d * d):
        ci, oy, ox = i // (d * d), (i // d) % d, i % d
        x[1 + i, ci, oy::d, ox::d] = 1.0
    with torch.no_grad():
        out = _final(probe, x)
    # (N, C, S, S) -> (N, s, s, C*f*f): the output block of every low-resolution position
    blocks = out.reshape(-1, c, s, f, s, f).permute(0, 2, 4, 1, 3, 5).reshape(-1, s, s, c * f * f)
    bias, resp = blocks[0], (blocks[1:] - blocks[:1]).reshape(c, d, d, s, s, c * f * f)
    weight = torch.zeros(s, s, c, d, d, c * f * f, dtype=torch.float64)
    pos = torch.arange(s)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            qy, qx = pos + dy, pos + dx  # the neighbour q = p + (dy, dx), by p's row and column
            phase_y, phase_x = (qy % d)[:, None], (qx % d)[None, :]
            got = resp[:, phase_y, phase_x, pos[:, None], pos[None, :]]  # (C, s, s, C*f*f)
            inside = ((qy >= 0) & (qy < s))[:, None] & ((qx >= 0) & (qx < s))[None, :]
            weight[:, :, :, dy + r, dx + r] = (got * inside[None, :, :, None]).permute(1, 2, 0, 3)
    folded = FoldedHead(weight.reshape(s * s, c * d * d, c * f * f),
                        bias.reshape(s * s, 1, c * f * f), s, c, f, r)
    _verify(probe, folded, s, c)
    return folded.to(dtype)


def _verify(head: nn.Module, folded: FoldedHead, in_size: int, classes: int) -> None:
    """Refuse a head that the fold does not reproduce (a non-affine head), in float64."""
    gen = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(2, classes, in_size, in_size, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        want, got = _final(head, x), folded(x)
    err = float((want - got).abs().max())
    scale = 1.0 + float(want.abs().max())
    if not err <= 1e-7 * scale:
        raise ConfigError(f"fold_head: the head is not an affine map of the logits (fold differs "
                          f"by {err:.3g} on a random input); only heads without activations fold")


def fold_head(model: nn.Module) -> nn.Module:
    """A copy of a J-Net whose eval forward uses the folded head (exact, much faster on CPU).

    The copy keeps ``config`` and every attribute, is in eval mode and refuses training-mode
    forwards (fold again after training). Parity with the unfolded model is to float32 round-off.

    Args:
        model: a :class:`jnet.models.jnet.JNet` with an affine head.

    Returns:
        The folded copy (``model`` itself is unchanged).

    Raises:
        ConfigError: ``model`` has no learned head (a baseline or plain base) or a non-affine head.
    """
    from jnet.models.jnet import JNet

    if not isinstance(model, JNet):
        arch = getattr(model, "config", {}).get("arch", type(model).__name__)
        raise ConfigError(f"fold_head: model arch {arch!r} has no learned head to fold; "
                          f"only arch 'jnet' folds")
    if not getattr(model.head, "foldable", False):
        raise ConfigError(f"fold_head: the {type(model.head).__name__} is not an affine map of the "
                          f"logits alone; it runs as it is (it works at the input resolution)")
    param = next(model.head.parameters())
    folded_head = fold_affine_head(model.head, model.in_size, model.classes,
                                   model.out_size // model.in_size, param.dtype)
    folded = copy.deepcopy(model)
    folded.folded_head = folded_head.to(param.device)
    return folded.eval()
