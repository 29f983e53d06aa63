"""The input chain of ``jnet predict`` in numpy and nibabel alone: a reference for device runtimes.

A TensorRT engine or ONNX Runtime on a Jetson needs the exact tensor ``jnet predict`` feeds the
model, without torch or jnet installed. This file imports nothing but numpy and nibabel: copy it
next to the runtime. It reproduces, to float32 round-off (tested against ``jnet predict``):

1. the slice axis: the voxel axis closest to the world superior-inferior axis;
2. per-channel z-score over the non-zero voxels (zeros stay 0; a constant channel becomes 0);
3. each slice resampled to ``size x size``, each in-plane axis on its own: area averaging where
   it shrinks (PyTorch ``adaptive_avg_pool``), bilinear (``align_corners=False``) where it grows;
4. the low-resolution input: ``size`` -> ``in_size`` by area averaging (``downsample: area``) or
   nearest neighbour at pixel centres (``nearest``). (``gaussian`` is not reproduced here.)

The numbers to use (``size``, ``in_size``, ``downsample``, ``channels``) are in the exported
model's metadata: :func:`settings` reads them from ONNX Runtime's ``custom_metadata_map``.

    import onnxruntime as ort
    session = ort.InferenceSession("jnet16.onnx")
    opts = settings(session.get_modelmeta().custom_metadata_map)
    image, affine = load_nifti("case.nii.gz")
    inputs, axis = preprocess(image, affine, opts["size"], opts["in_size"], opts["downsample"])
    logits = session.run(None, {"image": inputs})[0]          # (n, C, S, S), slices along axis
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np


def settings(metadata: Mapping[str, str]) -> dict[str, Any]:
    """``size``, ``in_size``, ``downsample`` and ``channels`` from jnet's ONNX metadata (JSON strings)."""
    return {key: json.loads(metadata[key]) for key in ("size", "in_size", "downsample", "channels")}


def load_nifti(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI file as ``(image (C, X, Y, Z) float32, affine (4, 4))``; 4D files are channels last."""
    import nibabel as nib

    img = nib.load(path)
    data = np.asarray(img.get_fdata(dtype=np.float32))
    image = data[None] if data.ndim == 3 else np.moveaxis(data, -1, 0)
    return np.ascontiguousarray(image), np.asarray(img.affine, dtype=np.float64)


def slice_axis(affine: np.ndarray) -> int:
    """The voxel axis closest to the world superior-inferior axis (2 if the affine says nothing)."""
    from nibabel.orientations import io_orientation

    try:
        ornt = io_orientation(np.asarray(affine, dtype=np.float64))
    except Exception:  # a singular affine carries no orientation
        return 2
    matches = np.flatnonzero(ornt[:, 0] == 2)
    return int(matches[0]) if matches.size else 2


def normalise(image: np.ndarray) -> np.ndarray:
    """Z-score each channel over its non-zero voxels (float64 statistics); zeros stay 0."""
    out = np.zeros(image.shape, dtype=np.float32)
    for c in range(image.shape[0]):
        mask = image[c] != 0
        values = image[c][mask].astype(np.float64)
        std = values.std() if values.size else 0.0
        if std > 0:
            out[c][mask] = ((values - values.mean()) / std).astype(np.float32)
    return out


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of adaptive average pooling: output i averages inputs
    ``floor(i n_in / n_out) .. ceil((i + 1) n_in / n_out) - 1``."""
    m = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of linear interpolation with ``align_corners=False`` (as PyTorch:
    source ``(i + 0.5) n_in / n_out - 0.5``, clamped at 0)."""
    m = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        m[i, i0] += 1.0 - frac
        m[i, i1] += frac
    return m


def nearest_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` selection of nearest neighbours at pixel centres (``nearest-exact``)."""
    m = np.zeros((n_out, n_in), dtype=np.float64)
    idx = np.minimum(np.floor((np.arange(n_out) + 0.5) * n_in / n_out).astype(int), n_in - 1)
    m[np.arange(n_out), idx] = 1.0
    return m


def _resize(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Apply ``rows`` to the second-to-last axis and ``cols`` to the last. Shape ``(..., H, W)``."""
    return np.einsum("ih,...hw,jw->...ij", rows, x.astype(np.float64), cols).astype(np.float32)


def plane_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The cache's in-plane resampling of one axis: area where it shrinks, bilinear where it grows."""
    if n_out < n_in:
        return area_matrix(n_in, n_out)
    if n_out > n_in:
        return bilinear_matrix(n_in, n_out)
    return np.eye(n_in)


def preprocess(image: np.ndarray, affine: np.ndarray, size: int, in_size: int,
               downsample: str = "area") -> tuple[np.ndarray, int]:
    """The model input of a volume, as ``jnet predict`` computes it.

    Returns:
        ``(inputs, axis)``: float32 ``(n, C, in_size, in_size)``, one row per slice along ``axis``.
    Shape: ``image (C, X, Y, Z)``.
    """
    if downsample not in ("area", "nearest"):
        raise ValueError(f"downsample {downsample!r}: this reference reproduces area and nearest")
    axis = slice_axis(affine)
    slices = np.moveaxis(normalise(image), 1 + axis, 0)  # (n, C, H, W)
    h, w = slices.shape[-2:]
    grid = _resize(slices, plane_matrix(h, size), plane_matrix(w, size))
    low = area_matrix(size, in_size) if downsample == "area" else nearest_matrix(size, in_size)
    inputs = grid if in_size == size else _resize(grid, low, low)
    return np.ascontiguousarray(inputs, dtype=np.float32), axis
