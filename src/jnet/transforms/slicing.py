"""The one definition of preprocessing: used by ``jnet data prepare`` and by prediction.

A volume goes through three steps, and a prediction comes back through the inverse of the last:

1. :func:`slice_axis` picks the voxel axis to slice along: the one closest to the world
   superior-inferior axis (axial slices), read from the affine.
2. :func:`normalise` z-scores each channel on its non-zero voxels.
3. :func:`image_to_slices` / :func:`label_to_slices` cut the volume along that axis and resample
   every slice to the square ``S x S`` grid of the cache.
4. :func:`slices_to_volume` maps ``S x S`` predictions back onto the volume's own voxel grid.

:func:`image_slices` is steps 1-3 for an image: the one input chain of the cache and of prediction.

Slices keep the voxel order of the file: the two in-plane axes stay in their original order (the
first becomes the rows) and nothing is flipped or transposed, so the inverse is exact.
"""
from __future__ import annotations

import warnings
from typing import Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from jnet.errors import DataError

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

#: Written into prepared.json, checkpoints and exported models: how intensities were normalised.
NORMALISATION = {
    "method": "zscore-nonzero",
    "channel_wise": True,
    "statistics": "per volume, over the voxels != 0 of each channel",
    "zero_stays_zero": True,
}


def slice_axis(affine: np.ndarray) -> int:
    """The voxel axis (0, 1 or 2) closest to the world superior-inferior axis.

    Uses nibabel's ``io_orientation`` (the best axis-to-world match, also for oblique affines).
    Falls back to the last axis (2) when the affine does not determine one (e.g. singular).

    Args:
        affine: voxel-to-world matrix, shape ``(4, 4)``.
    Returns:
        The axis index along which the volume is cut into slices.
    """
    from nibabel.orientations import io_orientation

    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise DataError(f"affine: expected a finite 4x4 matrix, found shape {affine.shape}")
    try:
        ornt = io_orientation(affine)
    except Exception:  # singular or degenerate affines: nothing to read an orientation from
        return 2
    matches = np.flatnonzero(ornt[:, 0] == 2)
    return int(matches[0]) if matches.size else 2


def normalise(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Z-score each channel over its non-zero voxels; zero voxels (background) stay 0.

    For channel ``c`` with non-zero voxels ``M = {v : x[c, v] != 0}``: ``mean`` and the population
    ``std`` of ``x[c, M]`` are computed in float64 over the whole volume, and the result is
    ``(x[c, v] - mean) / std`` for ``v`` in ``M`` and ``0`` elsewhere. A channel whose non-zero
    voxels are constant (``std == 0``) or that has none becomes all zeros with a warning, so the
    output is always finite.

    Args:
        image: one volume, any real dtype; must be finite.
        name: what to call the image in warnings and errors (a file name or case id).
    Returns:
        A new float32 array.

    Shape: ``(C, X, Y, Z) -> (C, X, Y, Z)``.
    """
    image = np.asarray(image)
    if image.ndim != 4:
        raise DataError(f"{name}: expected an image of shape (C, X, Y, Z), found shape {image.shape}")
    out = np.empty(image.shape, dtype=np.float32)
    # Whole-array passes, no gathered copy of the non-zero voxels: zeros add nothing to the sum,
    # and are set back to 0 after centring (3x faster on a 320x320x20 volume).
    for c in range(image.shape[0]):
        channel, centred = image[c], out[c]
        total = channel.sum(dtype=np.float64)
        if not np.isfinite(total):
            count = int((~np.isfinite(channel)).sum())
            raise DataError(f"{name}: channel {c} holds {count} NaN/Inf voxels; expected finite values")
        zero = channel == 0
        n = zero.size - np.count_nonzero(zero)
        np.subtract(channel, total / n if n else 0.0, out=centred, casting="unsafe")
        np.copyto(centred, 0, where=zero)
        std = np.sqrt(np.square(centred).sum(dtype=np.float64) / n) if n else 0.0
        if std == 0:
            warnings.warn(f"{name}: channel {c} is constant; normalised to all zeros", stacklevel=2)
            centred[...] = 0
            continue
        centred /= np.float32(std)
    return out


def image_slices(image: np.ndarray, affine: np.ndarray, size: int,
                 name: str = "image") -> tuple[np.ndarray, int]:
    """The input chain shared by the cache and prediction: slice axis, normalisation, ``S`` grid.

    Returns:
        ``(slices, axis)``. Shape: ``image (C, X, Y, Z)`` -> ``slices (n, C, size, size)`` float32.
    Raises:
        DataError: naming ``name``, for a constant or non-finite channel (see :func:`normalise`).
    """
    axis = slice_axis(affine)
    return image_to_slices(normalise(image, name=name), axis, size), axis


def image_to_slices(image: ArrayT, axis: int, size: int) -> ArrayT:
    """Cut a volume into slices along ``axis`` and resample each to ``size x size``.

    Each in-plane axis is resampled on its own (so a non-square slice becomes square): by area
    averaging where it shrinks (``F.interpolate(mode="area")``), by bilinear interpolation
    (``align_corners=False``) where it grows, unchanged where it already has ``size`` voxels.

    Args:
        image: one normalised volume (numpy or torch; the result has the same type), float32.
        axis: the spatial axis (0, 1, 2 of ``X, Y, Z``) to slice along.
        size: the side ``S`` of the square slice grid.
    Returns:
        float32 slices, in the order of ``axis``.

    Shape: ``(C, X, Y, Z) -> (n, C, S, S)`` with ``n = (X, Y, Z)[axis]``.
    """
    _check_axis(axis)
    t = torch.as_tensor(image)
    if t.dim() != 4:
        raise DataError(f"image: expected shape (C, X, Y, Z), found {tuple(t.shape)}")
    # (C, n, H, W) views the usual last-axis slicing in channels-last order, which the resizing
    # kernels read in place (3x faster than copying every slice out first)
    slices = resize_plane(t.float().movedim(1 + axis, 1), (size, size)).movedim(0, 1).contiguous()
    return slices.numpy() if isinstance(image, np.ndarray) else slices


def label_to_slices(label: ArrayT, axis: int, size: int) -> ArrayT:
    """Cut a label volume into slices along ``axis`` and resample each to ``size x size`` by
    nearest neighbour (pixel centres, as ``F.interpolate`` mode ``"nearest-exact"``), so label
    values are only ever copied, never interpolated.

    Args:
        label: an integer label volume (numpy or torch; the result has the same type and dtype).
        axis: the spatial axis to slice along.
        size: the side ``S`` of the square slice grid.
    Returns:
        The label slices.

    Shape: ``(X, Y, Z) -> (n, S, S)`` with ``n = (X, Y, Z)[axis]``.
    """
    _check_axis(axis)
    if label.ndim != 3:
        raise DataError(f"label: expected shape (X, Y, Z), found {tuple(label.shape)}")
    if isinstance(label, torch.Tensor):
        moved = label.movedim(axis, 0)
    else:
        moved = np.moveaxis(np.asarray(label), axis, 0)
    return _nearest_plane(moved, (size, size))


def slices_to_volume(pred: ArrayT, axis: int, shape: Sequence[int], *, fortran: bool = False) -> ArrayT:
    """Map slice predictions on the ``S x S`` grid back to the volume's voxel grid.

    Inverse of :func:`label_to_slices` / :func:`image_to_slices`: a label map (integer or bool)
    is resampled by nearest neighbour; probabilities (float) by the same rule as images (area
    where the plane shrinks, bilinear where it grows).

    Args:
        pred: ``(n, S, S)`` integer/bool labels or ``(n, C, S, S)`` float probabilities.
        axis: the axis the volume was sliced along.
        shape: the volume's spatial shape ``(X, Y, Z)``; ``shape[axis]`` must equal ``n``.
        fortran: (numpy labels) lay the volume out first axis fastest, NIfTI's voxel order, so
            that writing it is a plain copy (a transposing copy of a uint8 volume costs more
            than the resampling).
    Returns:
        Same type as ``pred``: labels ``(X, Y, Z)`` of ``pred``'s dtype, or probabilities
        ``(C, X, Y, Z)`` float32.

    Shape: ``(n, S, S) -> (X, Y, Z)``; ``(n, C, S, S) -> (C, X, Y, Z)``.
    """
    _check_axis(axis)
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3:
        raise DataError(f"shape: expected the spatial shape (X, Y, Z), found {shape}")
    if pred.shape[0] != shape[axis]:
        raise DataError(
            f"prediction: {pred.shape[0]} slices do not match the volume's {shape[axis]} voxels "
            f"along axis {axis} (volume shape {shape})"
        )
    plane = tuple(n for i, n in enumerate(shape) if i != axis)
    is_numpy = isinstance(pred, np.ndarray)
    floating = pred.dtype.kind == "f" if is_numpy else pred.is_floating_point()
    if not floating:
        if pred.ndim != 3:
            raise DataError(f"prediction: expected label slices (n, S, S), found {tuple(pred.shape)}")
        if fortran and is_numpy and axis == 2:  # gathered in reversed axis order: (Z, Y, X)
            rows, cols = nearest_index(pred.shape[1], plane[0]), nearest_index(pred.shape[2], plane[1])
            return np.take(np.take(pred, cols, axis=2).swapaxes(1, 2), rows, axis=2).T
        planes = _nearest_plane(pred, plane)
        if not is_numpy:
            return planes.movedim(0, axis)
        volume = np.moveaxis(planes, 0, axis)
        return np.asfortranarray(volume) if fortran else volume
    if pred.ndim != 4:
        raise DataError(f"prediction: expected probabilities (n, C, S, S), found {tuple(pred.shape)}")
    planes = resize_plane(torch.as_tensor(pred).float(), plane)  # (n, C, A, B)
    volume = planes.movedim(0, axis + 1).contiguous()  # (C, X, Y, Z)
    return volume.numpy() if is_numpy else volume


def resize_plane(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample the last two axes to ``size``, each axis on its own: area averaging where it
    shrinks, bilinear (``align_corners=False``) where it grows.

    Shape: ``(N, C, H, W) -> (N, C, *size)``.
    """
    grow = [target > current for current, target in zip(x.shape[2:], size)]
    shrink = [target < current for current, target in zip(x.shape[2:], size)]
    # Both filters are separable: one 2D call when both axes go the same way, else one per axis.
    if any(shrink):
        x = F.interpolate(x, size=tuple(t if s else c for c, t, s in zip(x.shape[2:], size, shrink)),
                          mode="area")
    if any(grow):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for nearest-neighbour resampling at pixel centres:
    ``floor((i + 0.5) * n_in / n_out)``, in exact integer arithmetic (PIL's NEAREST, torch's
    ``"nearest-exact"``)."""
    i = np.arange(n_out, dtype=np.int64)
    return np.minimum(((2 * i + 1) * n_in) // (2 * n_out), n_in - 1)


def slice_spacing(spacing: Sequence[float], shape: Sequence[int], axis: int, size: int) -> list[float]:
    """Voxel spacing of the cached slices: ``[rows, cols]`` in-plane at the ``S`` grid, then the
    spacing between slices (mm). E.g. spacing (0.5, 0.5, 3), shape (320, 320, 20), axis 2, S 256
    -> [0.625, 0.625, 3.0]."""
    _check_axis(axis)
    plane = [i for i in range(3) if i != axis]
    return [float(spacing[i]) * int(shape[i]) / size for i in plane] + [float(spacing[axis])]


def _nearest_plane(x: ArrayT, size: tuple[int, int]) -> ArrayT:
    rows = nearest_index(x.shape[-2], size[0])
    cols = nearest_index(x.shape[-1], size[1])
    if isinstance(x, torch.Tensor):
        return x[..., torch.from_numpy(rows)[:, None], torch.from_numpy(cols)[None, :]]
    return x[..., rows[:, None], cols[None, :]]


def _check_axis(axis: int) -> None:
    if axis not in (0, 1, 2):
        raise DataError(f"slice axis: expected 0, 1 or 2, found {axis!r}")
