"""PNG slice folders, as the J-Net reference code uses them.

Layout: per split a folder of images and a folder of masks, e.g. ``train/images/*.png`` +
``train/masks/*.png`` (also ``img``/``image``/``imgs`` and ``mask``/``label``/``labels``/``seg``), or
``images/`` + ``masks/`` directly under the root (no split). Split folders ``train``/``training``,
``val``/``valid``/``validation``, ``test``/``testing`` are recorded as ``train``/``val``/``test``
(other names are kept as they are), so that ``prepare`` can honour them.

- Images and masks are paired by file name (``masks/<stem>.png``, or ``<stem>_mask``/``_seg``/
  ``_label``), never by sorting two lists.
- A case is a patient: slices are grouped by a case-id pattern applied to the file stem. The default
  takes the stem up to its last ``_<digits>`` (``case01_012.png`` -> case ``case01``, slice 12);
  stems without such a suffix are single-slice cases. A custom regex names the patient in group
  ``case`` (or group 1) and may order slices with group ``slice``.
- Mask values are labels as stored: without a label map only 0 and 1 are accepted; 0/255 masks
  need an explicit map such as ``{0: 0, 255: 1}`` (``--label-map 0:0,255:1``), never a silent /255.
- Images keep their stored values as float32 (8-bit 0..255, 16-bit 0..65535, no /255). Grayscale
  PNGs are one channel ``gray``; RGB/RGBA/palette PNGs are channels ``R``, ``G``, ``B`` (alpha
  dropped), and asking for channel ``gray`` gives their luma 0.299 R + 0.587 G + 0.114 B.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from jnet.errors import ConfigError, DataError
from jnet.sources import readers
from jnet.sources.common import (
    Found,
    Problem,
    Report,
    check_intensities,
    check_label_values,
    natural_key,
    select_channels,
)
from jnet.sources.types import Case, DatasetSource, LoadedCase

IMAGE_DIRS = ("images", "image", "imgs", "img")
MASK_DIRS = ("masks", "mask", "labels", "label", "seg")
SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
          "test": "test", "testing": "test"}
MASK_SUFFIXES = ("_mask", "_seg", "_label")
DEFAULT_CASE_PATTERN = r"(?P<case>.+)_(?P<slice>\d+)"
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Group:
    """One image folder with its mask folder (None: unlabelled) and split name."""

    split: str | None
    images: Path
    masks: Path | None


def _subdir(parent: Path, names: Sequence[str]) -> Path | None:
    dirs = {p.name.lower(): p for p in parent.iterdir() if p.is_dir() and not readers.is_hidden(p)}
    for name in names:
        if name in dirs:
            return dirs[name]
    return None


def find_groups(root: Path) -> list[Group]:
    """Image/mask folder pairs under ``root`` (directly, or one per split folder)."""
    images = _subdir(root, IMAGE_DIRS)
    if images is not None:
        return [Group(None, images, _subdir(root, MASK_DIRS))]
    groups = []
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir() and not readers.is_hidden(p)):
        images = _subdir(split_dir, IMAGE_DIRS)
        if images is not None:
            split = SPLITS.get(split_dir.name.lower(), split_dir.name)
            groups.append(Group(split, images, _subdir(split_dir, MASK_DIRS)))
    return groups


def _pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and readers.is_png(p) and not readers.is_hidden(p))


def compile_pattern(case_pattern: str | None) -> re.Pattern:
    try:
        pattern = re.compile(case_pattern or DEFAULT_CASE_PATTERN)
    except re.error as e:
        raise ConfigError(f"case_pattern: not a valid regular expression {case_pattern!r} ({e})") from e
    if pattern.groups == 0:
        raise ConfigError(f"case_pattern: {case_pattern!r} needs a group for the case id, e.g. (?P<case>.+)_\\d+")
    return pattern


def _case_and_slice(pattern: re.Pattern, stem: str) -> tuple[str, int | None] | None:
    match = pattern.fullmatch(stem)
    if match is None:
        return None
    case_id = match.group("case") if "case" in pattern.groupindex else match.group(1)
    number = match.group("slice") if "slice" in pattern.groupindex else None
    return case_id, int(number) if number is not None and number.isdigit() else None


def _listing(names: list[str]) -> str:
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def _pair(group: Group, pattern: re.Pattern, custom: bool, slices: dict, problems: list[Problem]) -> Path | None:
    """Pair the images of ``group`` with their masks by name and file them under (split, case id)
    in ``slices``. Returns the group's first image (None when it has none)."""
    images = _pngs(group.images)
    if not images:
        problems.append(Problem(group.images, "no .png files in this image folder"))
    masks: dict[str, Path] = {}
    for m in _pngs(group.masks) if group.masks is not None else []:
        masks.setdefault(m.stem, m)
    used: set[Path] = set()
    unpaired, unmatched = [], []
    for image in images:
        mask = None
        if group.masks is not None:
            names = (image.stem, *(image.stem + suffix for suffix in MASK_SUFFIXES))
            mask = next((masks[k] for k in names if k in masks), None)
            if mask is None:
                unpaired.append(f"{group.masks.name}/{image.stem}.png")
                continue
            used.add(mask)
        parsed = _case_and_slice(pattern, image.stem)
        if parsed is None and custom:
            unmatched.append(image.name)
            continue
        case_id, number = parsed if parsed is not None else (image.stem, None)
        key = (0, number) if number is not None else (1, natural_key(image.stem))
        slices.setdefault((group.split, case_id), []).append((key, image, mask))
    if unpaired:
        problems.append(Problem(
            group.masks, f"{len(unpaired)} image(s) in {group.images} have no mask: expected {_listing(unpaired)}"))
    orphans = sorted(m.name for m in set(masks.values()) - used)
    if orphans:
        problems.append(Problem(
            group.masks, f"{len(orphans)} mask(s) have no image in {group.images}: {_listing(orphans)}"))
    if unmatched:
        problems.append(Problem(
            group.images, f"{len(unmatched)} file name(s) do not match the case pattern "
            f"{pattern.pattern!r}: {_listing(unmatched)}"))
    return images[0] if images else None


def scan(root: Path, case_pattern: str | None = None) -> Found:
    """Pair images with masks by name and group slices into cases (see the module docstring)."""
    pattern = compile_pattern(case_pattern)
    problems: list[Problem] = []
    found = Found("png", None, ("gray",), None, [], problems)
    groups = find_groups(root)
    if not groups:
        problems.append(Problem(root, f"no PNG image folder found: expected {root}/images/ or {root}/<split>/images/"))
        return found
    slices: dict[tuple[str | None, str], list[tuple[object, Path, Path | None]]] = {}
    firsts = [_pair(group, pattern, case_pattern is not None, slices, problems) for group in groups]
    for (split, case_id), items in sorted(slices.items(), key=lambda kv: (kv[0][1], kv[0][0] or "")):
        items.sort(key=lambda item: item[0])  # type: ignore[arg-type, return-value]
        keys = [k for k, _, _ in items]
        twice = sorted({image.name for k, image, _ in items if keys.count(k) > 1})
        if twice:
            problems.append(Problem(
                items[0][1].parent, f"case {case_id}: several files for one slice number: {_listing(twice)}"))
            continue
        mask_dir = items[0][2].parent if items[0][2] is not None else None
        masks = tuple(m for _, _, m in items if m is not None)
        found.cases.append(Case(case_id, tuple(i for _, i, _ in items), mask_dir, masks, split))
    first = next((f for f in firsts if f is not None), None)
    if first is not None:
        try:
            if readers.png_is_colour(readers.png_mode(first)):
                found.channels = ("R", "G", "B")
        except DataError:  # a corrupt first image is reported when it is read
            pass
    found.labels = {0: "background", 1: "foreground"}
    return found


def _planes(pixels: np.ndarray, source: DatasetSource, channels: Sequence[str] | None) -> tuple[list, tuple[str, ...]]:
    """``(H, W)`` or ``(H, W, 3)`` pixels -> ``(H, W)`` planes of the requested channels, and their names."""
    colour = source.channels == ("R", "G", "B")
    if pixels.ndim == 2 and colour:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)  # a gray slice is R = G = B
    planes, names = [], []
    for name in list(channels) if channels is not None else list(source.channels):
        if colour and str(name).lower() == "gray":
            planes.append(pixels @ np.asarray(LUMA, dtype=np.float32))
            names.append("gray")
        else:
            i = select_channels(source.channels, [name])[0]
            planes.append(pixels[..., i] if colour else pixels)
            names.append(source.channels[i])
    return planes, tuple(names)


def _read_slice(report: Report, source: DatasetSource, case: Case, i: int, first: tuple | None):
    """Read slice ``i`` (and its mask): ``(pixels, mask, shape)``; None for a part with a problem."""
    path = case.images[i]
    pixels = report.read(path, lambda: readers.read_png(path))
    if pixels is None:
        return None, None, None
    if pixels.ndim == 3 and source.channels != ("R", "G", "B"):  # type: ignore[union-attr]
        report.error(path, f"a colour PNG of shape {pixels.shape} in a grayscale dataset (the first "  # type: ignore[union-attr]
                     f"image is gray); convert it to grayscale")
        return None, None, None
    shape = pixels.shape[:2]  # type: ignore[union-attr]
    if first is not None and shape != first[1]:
        report.error(path, f"slice size {shape} differs from {first[0].name} {first[1]} in case "
                     f"{case.case_id}; nothing is resized")
        return None, None, None
    if not case.labels:
        return pixels, None, shape
    mask_path = case.labels[i]
    mask = report.read(mask_path, lambda: readers.read_png(mask_path, mask=True))
    if mask is not None and mask.shape != shape:  # type: ignore[union-attr]
        report.error(mask_path, f"shape mismatch: mask {mask_path} has shape {mask.shape}, image {path} "  # type: ignore[union-attr]
                     f"has {shape}; nothing is cropped or resized")
        mask = None
    return pixels, mask, shape


def read_case(
    source: DatasetSource, case: Case, channels: Sequence[str] | None, report: Report
) -> LoadedCase | None:
    if channels is not None:  # fail fast on unknown names; colour datasets also offer "gray"
        extra = ("gray",) if source.channels == ("R", "G", "B") else ()
        select_channels((*source.channels, *extra), channels)
    images, masks, names = [], [], ()
    first: tuple[Path, tuple] | None = None
    ok = True
    for i, path in enumerate(case.images):
        pixels, mask, shape = _read_slice(report, source, case, i, first)
        if pixels is None or (case.labels and mask is None):
            ok = False
            continue
        first = first or (path, shape)
        planes, names = _planes(pixels, source, channels)
        images.append(np.stack(planes))
        if case.labels:
            masks.append((case.labels[i], mask))
    if not ok or not images:
        return None
    image = np.stack(images, axis=-1).astype(np.float32)
    if not check_intensities(report, case.images[0], image, names):
        return None
    label = None
    if case.labels:  # name the first mask with an undeclared value
        declared = list(source.label_map) if source.label_map is not None else [0, 1]
        bad = [p for p, m in masks if not np.isin(m, declared).all()]
        stacked = np.stack([m for _, m in masks], axis=-1)
        label = check_label_values(report, source, bad[0] if bad else masks[0][0], stacked)
        if label is None:
            return None
    return LoadedCase(np.ascontiguousarray(image), label, np.eye(4), (1.0, 1.0, 1.0), names)
