"""Model complexity: parameters, and multiply-accumulates (MACs) counted with forward hooks.

Only layers that multiply count: Conv2d, ConvTranspose2d, Linear, and the folded head's matmul.
Normalisation, activations, pooling, additions and biases are not MACs. Counted per call, so a
module applied twice (the published head's shared layers) counts twice.

Hand-checkable rules (the ones fvcore/thop get wrong on this model, see docs/method.md):

- Conv2d: ``output elements x (in_channels / groups) x kh x kw``.
- ConvTranspose2d: ``input elements x (out_channels / groups) x kh x kw`` (each input pixel is
  multiplied into a ``kh x kw`` patch of every output channel of its group; a stride-2 2x2
  transposed convolution therefore costs 4 MACs per input value and output channel, not 4x that).
- Linear: ``output elements x in_features``.
- FoldedHead: ``B x s^2 x (C (2r+1)^2) x (C f^2)``.
- SubpixelHead's block product (its hidden Conv2d counts as a Conv2d):
  ``B x s^2 x (features + 9 C) x (C f^2)``, the fixed bilinear part included.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from jnet.models.fold import FoldedHead
from jnet.models.heads import SubpixelHead


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters; a parameter shared by several modules counts once.

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _layer_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        return inputs[0].numel() * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, FoldedHead):  # every position: one (K -> O) map
        return inputs[0].shape[0] * module.in_size ** 2 * module.hood_size * module.block_size
    if isinstance(module, SubpixelHead):  # its last Linear runs inside one addmm with the bilinear map
        b, _, h, w = inputs[0].shape
        return b * h * w * (module.out.in_features + 9 * module.classes) * module.out.out_features
    return 0


def _run_on_meta(model: nn.Module, shape: tuple[int, ...]) -> None:
    # Shapes only: parameters and buffers swapped for meta tensors, so no arithmetic runs and
    # the model's own weights are neither copied nor touched.
    # one entry per tensor; functional_call(tie_weights=True) maps the tied names to it
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    fake = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
    dtype = next(iter(tensors.values())).dtype if tensors else torch.float32
    x = torch.empty(shape, dtype=dtype, device="meta")
    torch.func.functional_call(model, fake, (x,), tie_weights=True, strict=False)


def macs_by_module(model: nn.Module, input_shape: Sequence[int],
                   meta: bool = True) -> dict[str, int]:
    """MACs of one eval-mode forward pass, per module name (modules called twice summed).

    Args:
        model: any module taking one tensor.
        input_shape: ``(B, C, H, W)``, or ``(C, H, W)`` for batch 1.
        meta: run on PyTorch's meta device (shapes only, instant at any size); ``False`` runs
            the model for real on its own device.

    Returns:
        ``{module name: MACs}`` for every module that multiplies (zero-cost modules left out).
    """
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    counts: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, FoldedHead, SubpixelHead)):
            def hook(mod, inputs, output, name=name):
                counts[name] = counts.get(name, 0) + _layer_macs(mod, inputs, output)
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            if meta:
                _run_on_meta(model, shape)
            else:
                param = next(model.parameters(), None)
                model(torch.zeros(shape, dtype=param.dtype if param is not None else torch.float32,
                                  device=param.device if param is not None else "cpu"))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return counts


def count_macs(model: nn.Module, input_shape: Sequence[int], meta: bool = True) -> int:
    """Total multiply-accumulates of one eval-mode forward pass on an input of ``input_shape``
    (all images of the batch together; pass batch 1 for a per-image figure).

    Args:
        model: any module taking one tensor.
        input_shape: ``(B, C, H, W)``, or ``(C, H, W)`` for batch 1.
        meta: see :func:`macs_by_module`.
    """
    return sum(macs_by_module(model, input_shape, meta).values())
