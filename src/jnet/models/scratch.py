"""Reused memory for the heads' large intermediate results at inference.

Both fast heads compute their output blocks in one matrix product, then lay the blocks out as the
image (a copy): two buffers of ``B * C * S * S`` values per call, 4 MB each for 16 -> 256 at batch 16.
glibc's allocator gives each such buffer fresh pages from the OS and returns them on free, so every
call page-faults through both; measured at batch 16, that made the subpixel J-Net-16 0.79x its
base instead of 0.94x. The intermediate never leaves the forward call, so it can live in a buffer
kept from call to call: one per thread (concurrent callers never share one), grown to the largest
size asked for, in the dtype and on the device of the call.

Small intermediates are better fresh: the heap hands back memory the base has just freed, still in
the cache, while a kept buffer has been pushed out of it by the base's weights. Measured inside the
subpixel J-Net-16 (16 -> 256), J-Net / base with a kept buffer against a fresh one: 0.91x / 0.94x
at batch 1 (256 kB), 0.92x / 0.93x at batch 8 (2 MB), 0.96x / 0.87x at batch 12 (3 MB), 1.03x /
0.94x at batch 16 (4 MB). So only intermediates above :data:`MIN_BYTES` are kept.
"""
from __future__ import annotations

import threading

import torch

from jnet.models.blocks import tracing

_local = threading.local()
MIN_BYTES = 2 * 2 ** 20  # smaller intermediates are allocated fresh (see above)


def intermediate(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
    """A reused buffer of ``shape`` (dtype and device of ``like``) for a result that the calling
    forward consumes before it returns, or None where a fresh tensor must be used or is faster:
    with autograd on (the result must keep its graph), under autocast (which picks its own
    dtypes), while tracing or exporting (a buffer would become a graph constant), for shape-only
    meta tensors, and at :data:`MIN_BYTES` or below.
    """
    if (like.is_meta or torch.is_grad_enabled() or torch.is_autocast_enabled(like.device.type)
            or tracing() or torch.onnx.is_in_onnx_export()):
        return None
    numel = 1
    for n in shape:
        numel *= n
    if numel * like.element_size() <= MIN_BYTES:
        return None
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    key = (like.dtype, like.device)
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # a plain tensor: writable in and out of inference mode
            buf = buffers[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel].view(shape)


def detached_from(out: torch.Tensor, buf: torch.Tensor | None) -> torch.Tensor:
    """``out``, copied if it still shares memory with the reused ``buf`` (the caller's result
    must never change under it at the next call)."""
    if buf is not None and out.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr():
        return out.clone()
    return out
