"""Dataset layouts as published: Medical Segmentation Decathlon, BraTS challenge folders, PNG slices.

:func:`discover` reads a dataset's manifest (``dataset.json``, the case folders, the PNG folders) into
a :class:`DatasetSource`: its cases, channel names and label names, eagerly checked (every manifest
problem is collected, then one :class:`DataError` lists them all). :func:`load_case` reads one case
completely; :func:`load_volume` reads one prediction input. :func:`make_task` turns the dataset's
label metadata into a task dict (see ``jnet.tasks`` and ``docs/design.md``).

The layout readers live in ``formats_msd``, ``formats_brats`` and ``formats_png``; this module holds
the shared types, the region table and the dispatch; ``formats_common`` the checks they share.
See ``docs/datasets.md``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from jnet.data.formats_common import (  # noqa: F401  (re-exported: part of the formats API)
    AFFINE_TOLERANCE,
    Collector,
    Problem,
    check_intensities,
    check_label_map,
    mapped_label_names,
    natural_key,
    select_channels,
    spacing_of,
)
from jnet.errors import ConfigError, DataError

LAYOUTS = ("msd", "brats", "png")
TASK_KINDS = ("binary", "multiclass", "regions")

#: Overlapping tumour regions per (layout, edition): region name -> source label values.
#: The one place that defines them (BraTS: 1 NCR, 2 ED, 4 ET up to 2021, ET = 3 from 2023;
#: MSD Task01: 1 edema, 2 non-enhancing, 3 enhancing).
REGIONS: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {
    ("brats", "2018-2020"): {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
    ("brats", "2021"): {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
    ("brats", "2023"): {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
    ("msd", "Task01_BrainTumour"): {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)},
}


@dataclass(frozen=True)
class Case:
    """One patient: its files as found on disk (nothing read yet).

    ``label`` is None for unlabelled cases (MSD ``imagesTs``, BraTS validation folders). For PNG
    cases ``images`` are the slice files in slice order, ``labels`` the matching masks in the same
    order and ``label`` the mask folder (None when the split has no mask folder).
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None
    labels: tuple[Path, ...] = ()
    split: str | None = None


@dataclass(frozen=True)
class DatasetSource:
    """A discovered dataset: layout, edition, channel and label names, and its cases (by case_id).

    ``label_map`` (raw label value -> label value) is applied by :func:`load_case`; ``labels`` then
    names the mapped values.
    """

    root: Path
    layout: str
    edition: str | None
    channels: tuple[str, ...]
    labels: dict[int, str]
    cases: tuple[Case, ...]
    label_map: dict[int, int] | None = None

    def case(self, case_id: str) -> Case:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise DataError(f"{self.root}: no case {case_id!r}")


@dataclass
class LoadedCase:
    """A case read into memory.

    Shape: ``image`` float32 ``(C, X, Y, Z)`` in the file's voxel order (PNG: ``(C, H, W, n_slices)``);
    ``label`` int16 ``(X, Y, Z)`` or None; ``affine`` ``(4, 4)`` float64 voxel -> world (mm; PNG:
    identity); ``spacing`` the voxel sizes in mm; ``channels`` the names of the image channels
    (empty when the file does not name them).
    """

    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]
    channels: tuple[str, ...] = ()


# ------------------------------------------------------------------ arguments


def parse_label_map(text: str | None) -> dict[int, int] | None:
    """``"0:0,255:1"`` -> ``{0: 0, 255: 1}`` (the ``--label-map`` argument); None/empty -> None."""
    if text is None or not text.strip():
        return None
    mapping: dict[int, int] = {}
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            if len(parts) != 2:
                raise ValueError(item)
            src, dst = int(parts[0]), int(parts[1])
        except ValueError:
            raise ConfigError(
                f"--label-map: expected comma-separated SOURCE:TARGET integer pairs like 0:0,255:1, "
                f"found {item.strip()!r}"
            ) from None
        if src in mapping:
            raise ConfigError(f"--label-map: source value {src} is mapped twice")
        mapping[src] = dst
    return mapping


# ------------------------------------------------------------------ discovery


def detect_layout(root: Path) -> str:
    """Guess the layout of ``root`` from what is in it (see docs/datasets.md)."""
    from jnet.data import formats_brats, formats_png

    if (root / "dataset.json").exists() or (root / "imagesTr").is_dir():
        return "msd"
    if formats_brats.find_case_dirs(root):
        return "brats"
    if formats_png.find_groups(root):
        return "png"
    nested = sorted(p.parent for p in root.glob("*/dataset.json"))
    hint = f" (did you mean {nested[0]}?)" if nested else ""
    raise DataError(
        f"{root}: cannot tell the dataset layout: expected dataset.json (Medical Segmentation "
        f"Decathlon), BraTS case folders (<case>/<case>_flair.nii.gz or <case>-t2f.nii.gz) or PNG "
        f"folders (images/ + masks/, optionally under train/, val/, test/); or pass --format "
        f"{'|'.join(LAYOUTS)}{hint}"
    )


def scan(
    src: str | Path,
    format: str | None = None,
    label_map: dict[int, int] | None = None,
    *,
    case_pattern: str | None = None,
) -> tuple[DatasetSource | None, list[Problem]]:
    """Discover a dataset, collecting every problem instead of raising (used by the check).

    Returns:
        ``(source, problems)``; ``source`` holds the cases that were found usable, None when the
        manifest could not be read at all.
    Raises:
        DataError: ``src`` does not exist or its layout cannot be determined.
        ConfigError: unknown ``format`` or a bad ``label_map`` / ``case_pattern``.
    """
    from jnet.data import formats_brats, formats_msd, formats_png

    root = Path(src).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found" if not root.exists() else f"{root}: not a folder")
    if format is not None and format not in LAYOUTS:
        raise ConfigError(f"format: unknown layout {format!r}; expected one of {', '.join(LAYOUTS)}")
    label_map = check_label_map(label_map)
    layout = format or detect_layout(root)
    if layout == "msd":
        found = formats_msd.scan(root)
    elif layout == "brats":
        found = formats_brats.scan(root)
    else:
        found = formats_png.scan(root, case_pattern=case_pattern)
    found.problems.extend(_duplicate_problems(root, found.cases))
    if found.labels is None:  # the manifest could not be read
        return None, found.problems
    labels = found.labels
    if label_map is not None:
        labels = mapped_label_names(found.labels, label_map)
    elif layout == "png":
        labels = {0: "background", 1: "foreground"}
    unique = {c.case_id: c for c in reversed(found.cases)}  # first one wins
    source = DatasetSource(
        root=root,
        layout=found.layout,
        edition=found.edition,
        channels=tuple(found.channels),
        labels=dict(sorted(labels.items())),
        cases=tuple(sorted(unique.values(), key=lambda c: c.case_id)),
        label_map=label_map,
    )
    return source, found.problems


def _duplicate_problems(root: Path, cases: list[Case]) -> list[Problem]:
    seen: dict[str, list[Case]] = {}
    for case in cases:
        seen.setdefault(case.case_id, []).append(case)
    dups = {k: v for k, v in seen.items() if len(v) > 1}
    if not dups:
        return []
    parts = []
    for case_id, group in sorted(dups.items()):
        where = ", ".join(sorted(
            f"{c.split or ''}{'/' if c.split else ''}{c.images[0].parent.name}/{c.images[0].name}" for c in group
        ))
        parts.append(f"{case_id} ({where})")
    return [Problem(root, f"duplicate case ids: {'; '.join(parts)}")]


def discover(
    src: str | Path,
    format: str | None = None,
    label_map: dict[int, int] | None = None,
    *,
    case_pattern: str | None = None,
) -> DatasetSource:
    """Read a dataset's manifest into a :class:`DatasetSource` (no pixel data is read).

    Args:
        src: the dataset folder (an MSD task folder, a folder of BraTS case folders, or a PNG root).
        format: ``"msd" | "brats" | "png"``; auto-detected when None.
        label_map: raw label value -> label value, applied when loading (PNG 0/255 masks need
            ``{0: 0, 255: 1}``); every raw value in a label file must be a key.
        case_pattern: PNG only: regex whose group ``case`` (or group 1) is the patient id in a
            slice file's stem; default: the stem up to its last ``_<digits>``.
    Returns:
        The dataset source, cases sorted by case_id.
    Raises:
        DataError: one error listing every manifest problem (missing/mistyped dataset.json keys,
            missing files, missing modalities, duplicate case ids, ...).
    """
    source, problems = scan(src, format, label_map, case_pattern=case_pattern)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        root = Path(src).expanduser().resolve()
        lines = "\n".join(f"  - {p.path}: {p.message}" if p.path else f"  - {p.message}" for p in errors)
        raise DataError(f"{root}: {len(errors)} problem(s) in the dataset:\n{lines}")
    assert source is not None  # no errors means the manifest was read
    return source


# ------------------------------------------------------------------ loading


def read_case(
    source: DatasetSource, case: Case, channels: Sequence[str] | None, report: Collector
) -> LoadedCase | None:
    """Read one case through ``report`` (strict: raise; collect: return None after problems)."""
    from jnet.data import formats_brats, formats_msd, formats_png

    reader = {"msd": formats_msd.read_case, "brats": formats_brats.read_case, "png": formats_png.read_case}
    if source.layout not in reader:
        raise ConfigError(f"layout: unknown value {source.layout!r}; expected one of {', '.join(LAYOUTS)}")
    return reader[source.layout](source, case, channels, report)


def load_case(source: DatasetSource, case: Case, channels: Sequence[str] | None = None) -> LoadedCase:
    """Read every byte of one case and check it (shapes, affines, label values, NaN/Inf).

    Args:
        source: from :func:`discover`.
        case: one of ``source.cases``.
        channels: channel names to keep, in this order (case-insensitive); all when None. PNG
            colour datasets also accept ``"gray"`` (luma 0.299 R + 0.587 G + 0.114 B).
    Returns:
        The loaded case; label values are mapped through ``source.label_map`` when set.
        Shape: ``image (C, X, Y, Z)`` float32, ``label (X, Y, Z)`` int16.
    Raises:
        DataError: naming the file (corrupt, truncated, mismatched, undeclared label values).
        ConfigError: unknown channel names (the message lists the available ones).
    """
    loaded = read_case(source, case, channels, Collector(collect=False))
    assert loaded is not None  # strict mode raises instead of returning None
    return loaded


def load_volume(path: str | Path, channels: Sequence[str] | None = None) -> LoadedCase:
    """Read one prediction input: a NIfTI file (3D, or 4D with channels last), a BraTS case folder
    (FLAIR, T1, T1ce, T2 in this order; ``channels`` selects by name) or a PNG slice.

    Returns:
        ``LoadedCase`` with ``label`` None. Shape: ``image (C, X, Y, Z)`` (PNG: ``(C, H, W, 1)``).
    Raises:
        DataError: naming the path (missing, corrupt, unsupported dimensionality or kind).
    """
    from jnet.data import formats_brats, readers

    path = Path(path).expanduser()
    if path.is_dir():
        return formats_brats.load_folder(path, channels)
    if readers.is_png(path):
        from jnet.data.formats_png import LUMA

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
    if data.ndim == 3:
        image = data[None]
    elif data.ndim == 4:
        image = np.moveaxis(data, -1, 0)
    else:
        raise DataError(
            f"{path}: a {data.ndim}D image of shape {data.shape}; expected 3D (X, Y, Z) or 4D "
            f"(X, Y, Z, channels)"
        )
    names = _msd_channel_names(path, image.shape[0])
    if channels is not None and names and len(channels) != image.shape[0]:
        # A NIfTI does not name its channels; an MSD file does through its dataset.json. Without
        # names the caller's channel-count check reports the mismatch.
        keep = select_channels(names, channels)
        image, names = image[keep], tuple(names[i] for i in keep)
    report = Collector(collect=False)
    check_intensities(report, path, image, ())
    return LoadedCase(np.ascontiguousarray(image), None, affine, spacing_of(affine), tuple(names))


def _msd_channel_names(path: Path, count: int) -> tuple[str, ...]:
    """Channel names of an MSD image from the ``dataset.json`` of its task folder, if any."""
    import json

    for folder in (path.parent, path.parent.parent):
        manifest = folder / "dataset.json"
        if manifest.is_file():
            try:
                modality = json.loads(manifest.read_text()).get("modality", {})
                names = tuple(str(modality[str(i)]) for i in range(count))
            except (OSError, ValueError, KeyError, AttributeError):
                return ()
            return names
    return ()


# ------------------------------------------------------------------ tasks


def region_table(source: DatasetSource) -> dict[str, tuple[int, ...]] | None:
    """The regions of ``source`` from :data:`REGIONS`, or None (no table, or a label map in use)."""
    if source.label_map is not None or source.edition is None:
        return None
    return REGIONS.get((source.layout, source.edition))


def _pick(names: Sequence[str], wanted: str, what: str) -> str:
    for name in names:
        if name.lower() == wanted.lower():
            return name
    raise ConfigError(f"structures: no {what} {wanted!r} in this dataset; available: {', '.join(names)}")


def _whole_name(source: DatasetSource, regions: dict) -> str:
    """Name of 'all labels > 0': WT for tumours, the organ for an MSD task (Task05_Prostate ->
    prostate), else foreground."""
    if "WT" in regions:
        return "WT"
    if source.layout == "msd" and source.edition and re.fullmatch(r"Task\d+_[A-Za-z]+", source.edition):
        return source.edition.split("_", 1)[1].lower()
    return "foreground"


def make_task(source: DatasetSource, kind: str, structures: Sequence[str] | None = None) -> dict:
    """Build the task dict (``docs/design.md``, Tasks) from the dataset's label metadata.

    - ``binary``: one channel; all labels > 0 (named ``WT`` where the dataset has tumour regions,
      the organ for an MSD task such as ``prostate``, else ``foreground``), or the one named
      label/region in ``structures``.
    - ``multiclass``: ``background`` + each label (or the named ones; the rest become background).
    - ``regions``: the overlapping regions of :data:`REGIONS` (BraTS WT/TC/ET), or the named ones.

    Raises:
        ConfigError: unknown kind or structure names (listing the valid ones), or no regions.
    """
    if kind not in TASK_KINDS:
        raise ConfigError(f"task: unknown kind {kind!r}; expected one of {', '.join(TASK_KINDS)}")
    fg = {v: n for v, n in sorted(source.labels.items()) if v != 0}
    if not fg:
        raise ConfigError(f"task: {source.root} declares no foreground labels ({source.labels})")
    regions = region_table(source) or {}
    structures = [s.strip() for s in structures if s.strip()] if structures else None
    if kind == "binary":
        if not structures:
            labels = {_whole_name(source, regions): sorted(fg)}
        else:
            if len(structures) != 1:
                raise ConfigError(f"structures: a binary task takes one structure, found {structures}")
            choices = list(fg.values()) + list(regions)
            name = _pick(choices, structures[0], "label or region")
            values = regions[name] if name in regions else [v for v, n in fg.items() if n == name]
            labels = {name: sorted(values)}
        return {"kind": "binary", "names": list(labels), "classes": 1, "labels": labels}
    if kind == "multiclass":
        chosen = [_pick(list(fg.values()), s, "label") for s in structures] if structures else list(fg.values())
        labels = {n: [v for v, m in fg.items() if m == n] for n in chosen}
        used = {v for vs in labels.values() for v in vs}
        labels = {"background": sorted(set(source.labels) - used | {0}), **labels}
        return {"kind": "multiclass", "names": list(labels), "classes": len(labels), "labels": labels}
    if not regions:
        why = "a label map is in use" if source.label_map is not None else "no region table"
        raise ConfigError(
            f"task: kind 'regions' needs overlapping regions, but {source.layout} dataset "
            f"{source.edition or source.root.name} has none ({why}; regions exist for "
            f"{', '.join('/'.join(k) for k in REGIONS)}); use binary or multiclass"
        )
    chosen = [_pick(list(regions), s, "region") for s in structures] if structures else list(regions)
    labels = {n: sorted(regions[n]) for n in chosen}
    return {"kind": "regions", "names": list(labels), "classes": len(labels), "labels": labels}
