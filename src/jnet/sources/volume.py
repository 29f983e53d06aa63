"""Read one prediction input: a NIfTI file, the channel files of an nnU-Net case, a BraTS case
folder or a PNG slice (no label)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from jnet.errors import DataError
from jnet.sources import brats, readers
from jnet.sources.common import Report, check_intensities, read_channels, select_channels, spacing_of
from jnet.sources.png import LUMA
from jnet.sources.types import LoadedCase


def load_volume(path: str | Path, channels: Sequence[str] | None = None,
                file_channels: Sequence[str] | None = None) -> LoadedCase:
    """Read one prediction input: a NIfTI file (2D, 3D, or 4D with channels last), a BraTS case folder
    (FLAIR, T1, T1ce, T2 in this order; ``channels`` selects by name) or a PNG slice.

    A NIfTI file does not name its channels: an MSD file's come from the ``dataset.json`` of its
    task folder, else from ``file_channels`` (the file's channels in order, ``--channels``).

    Returns:
        ``LoadedCase`` with ``label`` None. Shape: ``image (C, X, Y, Z)`` (PNG: ``(C, H, W, 1)``).
    Raises:
        DataError: naming the path (missing, corrupt, unsupported dimensionality or kind).
    """

    path = Path(path).expanduser()
    if path.is_dir():
        return brats.load_folder(path, channels)
    if readers.is_png(path):
        pixels = readers.read_png(path)
        if pixels.ndim == 2:
            planes, names = {"gray": pixels}, ("gray",)
        else:
            planes = {"R": pixels[..., 0], "G": pixels[..., 1], "B": pixels[..., 2],
                      "gray": pixels @ np.asarray(LUMA, dtype=np.float32)}
            names = ("R", "G", "B")
        keep = [list(planes)[i] for i in select_channels(list(planes), channels)] if channels else list(names)
        image = np.stack([planes[k] for k in keep])[..., None]
        return LoadedCase(image.astype(np.float32), None, np.eye(4), (1.0, 1.0, 1.0), tuple(keep))
    if not readers.is_nifti(path):
        raise DataError(f"{path}: expected a .nii/.nii.gz file, a BraTS case folder or a .png file")
    data, affine = readers.read_nifti(path)
    if data.ndim == 2:  # one slice: a volume of one, written back 2D (predict)
        image = data[None, :, :, None]
    elif data.ndim == 3:
        image = data[None]
    elif data.ndim == 4:
        image = np.moveaxis(data, -1, 0)
    else:
        raise DataError(
            f"{path}: a {data.ndim}D image of shape {data.shape}; expected 2D (X, Y), 3D (X, Y, Z) "
            f"or 4D (X, Y, Z, channels)"
        )
    names = _manifest_channel_names(path, image.shape[0], "modality")
    if not names and file_channels:
        if len(file_channels) != image.shape[0]:
            raise DataError(f"{path}: --channels names {len(file_channels)} channel(s) "
                            f"({', '.join(file_channels)}), the file has {image.shape[0]}")
        names = tuple(file_channels)
    if channels is not None and names and len(channels) != image.shape[0]:
        # A NIfTI does not name its channels; an MSD file does through its dataset.json. Without
        # names the caller's channel-count check reports the mismatch.
        keep = select_channels(names, channels)
        image, names = image[keep], tuple(names[i] for i in keep)
    report = Report(strict=True)
    check_intensities(report, path, image, ())
    # the file's voxel order (Fortran for NIfTI): the input chain reads any order, a copy costs 4 ms
    return LoadedCase(image, None, affine, spacing_of(affine), tuple(names))


def load_channel_files(paths: Sequence[Path], channels: Sequence[str] | None = None) -> LoadedCase:
    """Read an nnU-Net case (``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ... in channel order; or
    ``CASE_0000.png``, ... : one slice).

    The channels are named by the ``channel_names`` of a ``dataset.json`` beside the files (or one
    folder up); without one, file ``_000i`` is the model's channel i, as in nnU-Net.
    """
    paths = [Path(p) for p in paths]
    if readers.is_png(paths[0]):  # nnU-Net's 2D format: one grayscale PNG per channel, one slice
        image, affine = _png_channels(paths), np.eye(4)
    else:
        read = read_channels(Report(strict=True), paths, [p.name for p in paths])
        assert read is not None  # strict mode raises instead
        image, affine = read
    names = _manifest_channel_names(paths[0], len(paths), "channel_names")
    if names and channels is not None:
        keep = select_channels(names, channels)
        image, names = image[keep], tuple(names[i] for i in keep)
    elif not names and channels is not None and len(channels) == len(paths):
        names = tuple(channels)
    return LoadedCase(image, None, affine, spacing_of(affine), tuple(names))  # any order: see load_volume


def _png_channels(paths: Sequence[Path]) -> np.ndarray:
    """``(C, H, W, 1)`` from one grayscale PNG per channel, all of one size."""
    planes = [readers.read_png(p) for p in paths]
    for path, plane in zip(paths, planes):
        if plane.ndim != 2:
            raise DataError(f"{path}: a colour PNG as one channel file of {len(paths)}; expected grayscale")
        if plane.shape != planes[0].shape:
            raise DataError(f"{path}: {plane.shape[1]}x{plane.shape[0]} pixels, but {paths[0].name} has "
                            f"{planes[0].shape[1]}x{planes[0].shape[0]}")
    image = np.stack(planes)[..., None]
    check_intensities(Report(strict=True), paths[0], image, [p.name for p in paths])
    return image


def _manifest_channel_names(path: Path, count: int, key: str) -> tuple[str, ...]:
    """Channel names from the ``dataset.json`` beside an image or one folder up: ``key`` is
    ``modality`` (MSD) or ``channel_names`` (nnU-Net); () when there is none or it does not fit."""
    for folder in (path.parent, path.parent.parent):
        manifest = folder / "dataset.json"
        if manifest.is_file():
            try:
                names = json.loads(manifest.read_text()).get(key, {})
                return tuple(str(names[str(i)]) for i in range(count))
            except (OSError, ValueError, KeyError, AttributeError):
                return ()
    return ()
