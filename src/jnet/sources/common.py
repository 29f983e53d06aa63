"""What the layout readers share: problem reporting and the checks every case goes through.

Internal to ``jnet.sources.registry*``; the public names are re-exported by :mod:`jnet.sources.registry`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from jnet.errors import ConfigError, DataError
from jnet.sources import readers
from jnet.sources.types import LoadedCase

if TYPE_CHECKING:
    from jnet.sources.types import Case, DatasetSource  # noqa: F401

#: Largest element-wise difference between two affines (mm) still taken as the same geometry.
AFFINE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Problem:
    """One finding of the dataset check: the file it concerns and what is wrong."""

    path: Path | None
    message: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path is not None else ""
        return f"{self.severity}: {where}{self.message}"


@dataclass
class Found:
    """What a layout reader found: the usable cases and every problem (internal)."""

    layout: str
    edition: str | None
    channels: tuple[str, ...]
    labels: dict[int, str] | None  # None: the manifest could not be read
    cases: list[Case]
    problems: list[Problem]
    regions: dict[str, tuple[int, ...]] | None = None  # declared by the dataset (nnU-Net)


class Report:
    """Where a reader reports problems: ``strict`` raises the first error as DataError (loading);
    otherwise every problem is kept in ``problems`` (the integrity check)."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.problems: list[Problem] = []

    def error(self, path: Path | None, message: str, cause: BaseException | None = None) -> None:
        if self.strict:
            raise DataError(f"{path}: {message}" if path is not None else message) from cause
        self.problems.append(Problem(path, message))

    def warn(self, path: Path | None, message: str) -> None:
        if not self.strict:
            self.problems.append(Problem(path, message, "warning"))

    def read(self, path: Path, reader: Callable[[], object]) -> object | None:
        """Run ``reader``; a DataError becomes a problem for ``path`` (None returned) or is raised."""
        try:
            return reader()
        except DataError as e:
            if self.strict:
                raise
            text = str(e)
            prefix = f"{path}: "
            self.problems.append(Problem(path, text[len(prefix):] if text.startswith(prefix) else text))
            return None


def check_label_map(label_map: dict[int, int] | None) -> dict[int, int] | None:
    """Validate a ``label_map`` argument: integer keys, targets 0..255 (labels are cached as uint8)."""
    if label_map is None:
        return None
    try:
        mapping = {int(k): int(v) for k, v in dict(label_map).items()}
    except (TypeError, ValueError) as e:
        raise ConfigError(f"label_map: expected {{int: int}}, found {label_map!r}") from e
    if any(v < 0 or v > 255 for v in mapping.values()):
        raise ConfigError(f"label_map: target values must be 0..255, found {sorted(set(mapping.values()))}")
    return mapping


def mapped_label_names(labels: dict[int, str], label_map: dict[int, int]) -> dict[int, str]:
    """Names of the label values after ``label_map``: 0 is background; a target that several
    named source values map to gets their names joined with '+'; unnamed targets get 'label<N>'."""
    targets = sorted(set(label_map.values()))
    fg = [t for t in targets if t != 0]
    names: dict[int, str] = {}
    for t in targets:
        sources = [labels[s] for s in sorted(label_map) if label_map[s] == t and s in labels and s != 0]
        if t == 0:
            names[t] = "background"
        elif sources:
            names[t] = "+".join(sources)
        else:
            names[t] = "foreground" if fg == [t] else f"label{t}"
    return names


def select_channels(available: Sequence[str], channels: Sequence[str] | None) -> list[int]:
    """Indices of the requested channel names (case-insensitive) in ``available``; all if None."""
    if channels is None:
        return list(range(len(available)))
    lower = [a.lower() for a in available]
    indices = []
    for name in channels:
        if str(name).lower() not in lower:
            raise ConfigError(
                f"channels: no channel {name!r} in this dataset; available: {', '.join(available)}"
            )
        indices.append(lower.index(str(name).lower()))
    if len(set(indices)) != len(indices):
        raise ConfigError(f"channels: {list(channels)} names a channel twice")
    return indices


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) of a voxel -> world affine: the lengths of its first three columns."""
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def check_geometry(
    report: Report, image_path: Path, image_shape: tuple, image_affine: np.ndarray,
    other_path: Path, other_shape: tuple, other_affine: np.ndarray | None, what: str = "label",
) -> bool:
    """Shape and affine of ``other`` (a label or another channel) must match the image's."""
    if tuple(image_shape) != tuple(other_shape):
        report.error(
            other_path,
            f"shape mismatch: {what} {other_path} has shape {tuple(other_shape)}, image {image_path} "
            f"has {tuple(image_shape)}; nothing is cropped or resized",
        )
        return False
    if other_affine is not None:
        diff = float(np.abs(np.asarray(image_affine) - np.asarray(other_affine)).max())
        if diff > AFFINE_TOLERANCE:
            report.error(
                other_path,
                f"affine mismatch: {what} {other_path} and image {image_path} differ by up to "
                f"{diff:.4g} mm (tolerance {AFFINE_TOLERANCE}); the files do not share one geometry",
            )
            return False
    return True


def squeeze_label(report: Report, path: Path, label: np.ndarray) -> np.ndarray | None:
    """Drop trailing singleton axes ((X, Y, Z, 1) -> (X, Y, Z)); a 2D map is one slice
    ((X, Y) -> (X, Y, 1)); anything else must be 3D."""
    while label.ndim > 3 and label.shape[-1] == 1:
        label = label[..., 0]
    if label.ndim == 2:
        label = label[..., None]
    if label.ndim != 3:
        report.error(path, f"a label map of shape {label.shape}; expected 2D (X, Y) or 3D (X, Y, Z), "
                           f"one value per voxel")
        return None
    return label


def check_intensities(report: Report, path: Path, image: np.ndarray, names: Sequence[str]) -> bool:
    """NaN/Inf are errors (no silent imputation); a constant channel is a warning.

    Shape: ``image (C, ...)``."""
    bad = ~np.isfinite(image)
    if bad.any():
        report.error(path, f"{int(bad.sum())} NaN/Inf intensities; fix the file (jnet does not impute)")
        return False
    for c in range(image.shape[0]):
        channel = image[c]
        if channel.size and channel.min() == channel.max():
            name = f" channel {names[c]}" if len(names) > 1 else ""
            report.warn(path, f"constant image{name} (every voxel is {float(channel.flat[0]):g})")
    return True


def check_label_values(
    report: Report, source: DatasetSource, path: Path, label: np.ndarray
) -> np.ndarray | None:
    """Refuse label values that are not declared; apply the label map. Shape kept."""
    values = np.unique(label)
    if source.label_map is not None:
        declared, where = set(source.label_map), "the label map (--label-map)"
    elif source.layout == "png":
        declared, where = {0, 1}, "the PNG default labels {0, 1}"
    else:
        declared = set(source.labels)
        where = (f"the BraTS {source.edition} labels" if source.layout == "brats"
                 else "dataset.json 'labels'")  # MSD, nnU-Net
    bad = sorted(int(v) for v in values if int(v) not in declared)
    if bad:
        hint = ""
        if 255 in bad:
            hint = "; masks stored as 0/255? pass an explicit label map, e.g. --label-map 0:0,255:1"
        report.error(
            path,
            f"label values {bad} are not declared labels {sorted(declared)} (from {where}); found "
            f"values {[int(v) for v in values]}{hint}",
        )
        return None
    if source.label_map is None:
        return label
    lookup = np.array([source.label_map[int(v)] for v in values], dtype=np.int16)
    return lookup[np.searchsorted(values, label)]


def natural_key(text: str) -> list:
    """Sort key that orders embedded numbers numerically (slice_2 before slice_10)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def read_channels(
    report: Report, paths: Sequence[Path], names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Read one 3D (or 2D: one slice) file per channel; all must share shape and affine. Returns
    ``((C, X, Y, Z), affine)``."""
    volumes: list[np.ndarray] = []
    first: tuple[Path, np.ndarray, np.ndarray] | None = None
    ok = True
    for path in paths:
        read = report.read(path, lambda p=path: readers.read_nifti(p))
        if read is None:
            ok = False
            continue
        data, affine = read  # type: ignore[misc]
        if data.ndim == 2:  # one slice
            data = data[..., None]
        if data.ndim != 3:
            report.error(path, f"a {data.ndim}D image of shape {data.shape}; expected one 2D (X, Y) or "
                         f"3D (X, Y, Z) image per modality file")
            ok = False
            continue
        if first is None:
            first = (path, data, affine)
        elif not check_geometry(report, first[0], first[1].shape, first[2], path, data.shape, affine, "modality"):
            ok = False
            continue
        volumes.append(data)
    if not ok or first is None:
        return None
    image = np.stack(volumes)
    intact = all(check_intensities(report, p, image[i : i + 1], names) for i, p in enumerate(paths))
    return (image, first[2]) if intact else None


def read_channel_files(
    source: DatasetSource, case: Case, channels: Sequence[str] | None, report: Report
) -> LoadedCase | None:
    """A case stored as one 3D file per channel (``case.images`` in ``source.channels`` order) and
    an optional label file: BraTS folders, nnU-Net raw datasets."""
    keep = select_channels(source.channels, channels)
    read = read_channels(report, [case.images[i] for i in keep], [source.channels[i] for i in keep])
    label = None
    if case.label is not None:
        lab_path = case.label
        lab_read = report.read(lab_path, lambda: readers.read_nifti(lab_path, label=True))
        if lab_read is None or read is None:
            return None
        lab, lab_affine = lab_read  # type: ignore[misc]
        lab = squeeze_label(report, lab_path, lab)
        image, affine = read
        if lab is None:
            return None
        if not check_geometry(report, case.images[keep[0]], image.shape[1:], affine, lab_path, lab.shape, lab_affine):
            return None
        label = check_label_values(report, source, lab_path, lab)
        if label is None:
            return None
    if read is None:
        return None
    image, affine = read
    return LoadedCase(image, label, affine, spacing_of(affine), tuple(source.channels[i] for i in keep))
