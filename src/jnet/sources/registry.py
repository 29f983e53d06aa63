"""The layout registry: detect a published layout on disk and dispatch to its reader.

:func:`discover` reads a dataset's manifest (``dataset.json``, the case folders, the PNG folders) into
a :class:`DatasetSource`: its cases, channel names and label names, eagerly checked (every manifest
problem is collected, then one :class:`DataError` lists them all). :func:`load_case` reads one case
completely.

One reader per layout (``msd``, ``brats``, ``png``) in :data:`READERS`; the shared types live in
``jnet.sources.types``, the checks the readers share in ``jnet.sources.common``, the task dict in
``jnet.sources.labels`` and the prediction input in ``jnet.sources.volume``. See ``docs/datasets.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from jnet.errors import DataError
from jnet.sources import brats, msd, nnunet, png
from jnet.sources.common import Problem, Report, check_label_map, mapped_label_names
from jnet.sources.types import Case, DatasetSource, LoadedCase
from jnet.utils.options import choose

#: One reader module per layout (``scan``, ``read_case``), by ``--format`` name.
READERS = {"msd": msd, "nnunet": nnunet, "brats": brats, "png": png}
LAYOUTS = tuple(READERS)


# ------------------------------------------------------------------ discovery


def detect_layout(root: Path) -> str:
    """Guess the layout of ``root`` from what is in it (see docs/datasets.md)."""

    if nnunet.is_nnunet(root):
        return "nnunet"
    if (root / "dataset.json").exists() or (root / "imagesTr").is_dir():
        return "msd"
    if brats.find_case_dirs(root):
        return "brats"
    if png.find_groups(root):
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

    root = Path(src).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found" if not root.exists() else f"{root}: not a folder")
    if format is not None:
        choose(format, LAYOUTS, "format", "layout")
    label_map = check_label_map(label_map)
    layout = format or detect_layout(root)
    if layout == "msd":
        found = msd.scan(root)
    elif layout == "nnunet":
        found = nnunet.scan(root)
    elif layout == "brats":
        found = brats.scan(root)
    else:
        found = png.scan(root, case_pattern=case_pattern)
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
        regions=found.regions,
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
    source: DatasetSource, case: Case, channels: Sequence[str] | None, report: Report
) -> LoadedCase | None:
    """Read one case through ``report`` (strict: raise; collect: return None after problems)."""
    return READERS[choose(source.layout, READERS, "layout")].read_case(source, case, channels, report)


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
    loaded = read_case(source, case, channels, Report(strict=True))
    assert loaded is not None  # strict mode raises instead of returning None
    return loaded

