"""The low-resolution model input computed straight from a volume, for prediction.

:func:`jnet.transforms.slicing.image_slices` (normalise, resample to ``S x S``) followed by
:func:`jnet.transforms.lowres.downsample` (``S`` -> ``s``) is the definition of a model's input. Every
step after the z-scoring is linear and acts on each in-plane axis on its own, so the chain from a
volume axis of ``n`` voxels to ``s`` pixels is one ``(s, n)`` matrix (:func:`axis_operator`), found by
pushing the identity through those same functions. With ``M`` the non-zero mask of a channel, its
mean ``m`` and standard deviation ``sd`` over ``M``:

    input = (A_rows @ x @ A_cols.T - m * A_rows @ M @ A_cols.T) / sd     (per slice)

which :func:`lowres_input` computes with one matrix product over the whole volume in the file's own
memory order and a small one on its result, instead of writing the normalised volume and its
``S x S`` slices (on a 320 x 320 x 20 volume, ``benchmarks/bench_deploy.py``'s preprocess stage
went from 12.8 to 4.4-5.7 ms, and the copy into C order that the definition's normalisation wants
is not needed). The result equals the
definition to float32 rounding (tested); channels it cannot treat so (non-finite values, constant or
empty channels) go through the definition, which raises or warns as it always does.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from jnet.transforms import lowres
from jnet.transforms import slicing as pre


@functools.lru_cache(maxsize=64)
def axis_operator(n: int, size: int, in_size: int, mode: str) -> torch.Tensor:
    """The linear map from one in-plane axis of ``n`` voxels to the ``in_size`` pixels of the model
    input: :func:`~jnet.transforms.slicing.resize_plane` to ``size`` then
    :func:`~jnet.transforms.lowres.downsample` to ``in_size`` with ``mode``.

    Returns:
        float32 matrix of shape ``(in_size, n)`` (cached; do not modify).
    """
    # n images, each a delta on the row axis and one pixel wide; downsample needs a square output,
    # so each is repeated across in_size columns (in_size -> in_size is the identity in every mode)
    deltas = torch.eye(n).reshape(n, 1, n, 1)
    rows = pre.resize_plane(deltas, (size, 1)).expand(-1, -1, -1, in_size).contiguous()
    return lowres.downsample(rows, in_size, mode)[:, 0, :, 0].T.contiguous()


def _memory_order(x: np.ndarray) -> list[int]:
    """Axes of ``x`` from the slowest-varying in memory to the fastest."""
    return [int(a) for a in np.argsort([-s for s in x.strides], kind="stable")]


def _resample(x: np.ndarray, axis: int, size: int, in_size: int, mode: str) -> torch.Tensor:
    """``A_rows @ plane @ A_cols.T`` for every slice of a 3D array along ``axis``.

    Shape: ``(X, Y, Z)`` -> ``(n, in_size, in_size)``, ``n = (X, Y, Z)[axis]``.
    """
    order = _memory_order(x)
    v = torch.from_numpy(np.ascontiguousarray(x.transpose(order)))  # a view for C or F order
    plane = [a for a in range(3) if a != axis]
    op = {a: axis_operator(x.shape[a], size, in_size, mode) for a in plane}
    # First the in-plane axis at an end of the memory order: one product over the whole volume,
    # reading it in place; the second product runs on an array in_size / n times smaller.
    if order[2] != axis:
        first = order[2]
        u = (v.reshape(-1, v.shape[2]) @ op[first].T).reshape(v.shape[0], v.shape[1], in_size)
        u_axes = [order[0], order[1], first]
    else:
        first = order[0]
        u = (op[first] @ v.reshape(v.shape[0], -1)).reshape(in_size, v.shape[1], v.shape[2])
        u_axes = [first, order[1], order[2]]
    second = plane[1] if plane[0] == first else plane[0]
    # u holds first's output index where first was; contract second, then order (n, rows, cols)
    letters = {a: "xyz"[a] for a in range(3)}
    letters[first] = "f"
    spec = f"{''.join(letters[a] for a in u_axes)},s{'xyz'[second]}->{'xyz'[axis]}"
    spec += "fs" if first == plane[0] else "sf"
    return torch.einsum(spec, u, op[second])


def lowres_input(image: np.ndarray, affine: np.ndarray, size: int, in_size: int, mode: str,
                 name: str = "image") -> tuple[np.ndarray, int]:
    """What ``downsample(image_slices(image, affine, size), in_size, mode)`` returns, computed
    without the ``S x S`` slices.

    Args:
        image: one volume (float32; other dtypes are converted), any memory order.
        affine: its voxel-to-world matrix (picks the slice axis).
        size: the ``S`` grid of the cache the model was trained on.
        in_size: the model's input side ``s``.
        mode: the downsampling mode (:data:`jnet.transforms.lowres.DOWNSAMPLE_MODES`).
        name: what to call the image in warnings and errors.
    Returns:
        ``(inputs, axis)``. Shape: ``image (C, X, Y, Z)`` -> ``inputs (n, C, s, s)`` float32.
    Raises:
        DataError: as :func:`~jnet.transforms.slicing.normalise` does (non-finite values).
    """
    lowres.check_mode(mode)
    axis = pre.slice_axis(affine)
    out = []
    for c in range(image.shape[0]):
        x = np.asarray(image[c], dtype=np.float32)
        flat = np.ascontiguousarray(x.transpose(_memory_order(x))).reshape(-1)  # a view for C or F order
        count = flat.size - int(np.count_nonzero(flat == 0))  # 3x faster than counting floats
        # float64 sums, so the variance from the raw moments keeps float32's precision
        total = float(flat.sum(dtype=np.float64))
        squares = float(np.einsum("i,i", flat, flat, dtype=np.float64))
        mean = total / max(count, 1)
        var = squares / max(count, 1) - mean * mean
        if not (count and np.isfinite(var) and var > 1e-10 * squares / count):
            # non-finite, constant or empty: the definition raises or warns
            slices, axis = pre.image_slices(image, affine, size, name=name)
            return lowres.downsample(torch.from_numpy(slices), in_size, mode).numpy(), axis
        low = _resample(x, axis, size, in_size, mode)
        if count < x.size:
            low -= mean * _resample((x != 0).astype(np.float32), axis, size, in_size, mode)
        else:
            low -= mean  # every voxel counts, and each map keeps constants
        out.append(low / float(np.sqrt(var)))
    return torch.stack(out, 1).numpy(), axis
