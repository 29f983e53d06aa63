"""BraTS challenge folders: one folder per case, one NIfTI file per modality plus the segmentation.

Editions and their file names (the folder name is the case id):

- 2018-2020: ``BraTS20_Training_001/BraTS20_Training_001_{flair,t1,t1ce,t2,seg}.nii.gz``
  (2018: ``Brats18_...``, also under ``HGG/`` and ``LGG/``); labels 1 NCR, 2 ED, 4 ET.
- 2021: ``BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz``; same labels.
- 2023-2024 (GLI, MEN, MET, SSA): ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t2f,t1n,t1c,t2w,seg}.nii.gz``;
  labels 1 NCR, 2 ED, 3 ET.

Modalities get the common names FLAIR, T1, T1ce, T2 (in this channel order). A release without any
``seg`` file (a validation set) is read as unlabelled.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

from jnet.errors import DataError
from jnet.sources import readers
from jnet.sources.common import (
    Found,
    Problem,
    Report,
    read_channel_files,
    read_channels,
    select_channels,
    spacing_of,
)
from jnet.sources.types import Case, DatasetSource, LoadedCase

CHANNELS = ("FLAIR", "T1", "T1ce", "T2")
_OLD = {"sep": "_", "files": ("flair", "t1", "t1ce", "t2"),
        "labels": {0: "background", 1: "NCR", 2: "ED", 4: "ET"}}
#: Per edition: separator after the case id, file suffix per channel (CHANNELS order), label names.
EDITIONS: dict[str, dict] = {
    "2018-2020": _OLD,
    "2021": _OLD,
    "2023": {"sep": "-", "files": ("t2f", "t1n", "t1c", "t2w"),
             "labels": {0: "background", 1: "NCR", 2: "ED", 3: "ET"}},
}
SEG = "seg"


def _files(case_dir: Path) -> dict[str, Path]:
    """Lower-case file name -> path of the visible NIfTI files in a folder."""
    try:
        entries = list(case_dir.iterdir())
    except OSError:
        return {}
    return {p.name.lower(): p for p in entries if readers.is_nifti(p) and not readers.is_hidden(p)}


def edition_of(case_dir: Path) -> str | None:
    """The edition whose file names this folder uses, or None when it is not a BraTS case folder."""
    names = _files(case_dir)
    stem = case_dir.name.lower()
    for edition in ("2023", "2021"):
        spec = EDITIONS[edition]
        for suffix in (*spec["files"], SEG):
            if any(f"{stem}{spec['sep']}{suffix}{ext}" in names for ext in readers.NIFTI_SUFFIXES):
                if edition == "2023":
                    return "2023"
                return "2021" if stem.startswith("brats2021_") else "2018-2020"
    return None


def find_case_dirs(root: Path) -> list[Path]:
    """Case folders directly under ``root``, or one level deeper (BraTS 2018's HGG/ and LGG/)."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not readers.is_hidden(p))
    cases = [d for d in subdirs if edition_of(d)]
    if cases:
        return cases
    return [
        d for sub in subdirs for d in sorted(sub.iterdir())
        if d.is_dir() and not readers.is_hidden(d) and edition_of(d)
    ]


def case_files(case_dir: Path, edition: str) -> tuple[list[Path | None], Path | None, list[Path]]:
    """``(modality files in CHANNELS order, seg file, expected paths)``; None where absent."""
    spec = EDITIONS[edition]
    names = _files(case_dir)

    def find(suffix: str) -> Path | None:
        for ext in readers.NIFTI_SUFFIXES:
            hit = names.get(f"{case_dir.name.lower()}{spec['sep']}{suffix}{ext}")
            if hit is not None:
                return hit
        return None

    expected = [case_dir / f"{case_dir.name}{spec['sep']}{s}.nii.gz" for s in (*spec["files"], SEG)]
    return [find(s) for s in spec["files"]], find(SEG), expected


def scan(root: Path) -> Found:
    """List the case folders under ``root``; every missing modality or seg file is a problem."""
    problems: list[Problem] = []
    found = Found("brats", None, CHANNELS, None, [], problems)
    dirs = find_case_dirs(root)
    if not dirs:
        problems.append(Problem(
            root, "no BraTS case folders found: expected <case>/<case>_flair.nii.gz (2018-2021) or "
            "<case>/<case>-t2f.nii.gz (2023-2024) folders"))
        return found
    editions = {d: edition_of(d) for d in dirs}
    counts = Counter(editions.values())
    edition = sorted(counts, key=lambda e: (-counts[e], e))[0]
    schemes = {"2023" if e == "2023" else "2018-2021" for e in counts}
    if len(schemes) > 1:
        odd = sorted(d.name for d, e in editions.items() if (e == "2023") != (edition == "2023"))
        problems.append(Problem(
            root, f"case folders mix BraTS label schemes (2018-2021: ET = 4, 2023: ET = 3); most are "
            f"{edition}, these are not: {', '.join(odd)}"))
    labelled = any(case_files(d, editions[d] or edition)[1] is not None for d in dirs)  # type: ignore[arg-type]
    for d in dirs:
        images, seg, expected = case_files(d, editions[d] or edition)  # type: ignore[arg-type]
        missing = [str(expected[i]) for i, p in enumerate(images) if p is None]
        if labelled and seg is None:
            missing.append(str(expected[-1]))
        if missing:
            what = ", ".join(CHANNELS[i] for i, p in enumerate(images) if p is None)
            if labelled and seg is None:
                what = f"{what}, seg" if what else "seg"
            problems.append(Problem(d, f"missing {what}: expected {', '.join(missing)}"))
            continue
        found.cases.append(Case(d.name, tuple(images), seg))  # type: ignore[arg-type]
    if not labelled:
        problems.append(Problem(root, "no seg files in any case folder: read as an unlabelled set", "warning"))
    found.edition = edition
    found.labels = dict(EDITIONS[edition]["labels"])
    return found


def read_case(
    source: DatasetSource, case: Case, channels: Sequence[str] | None, report: Report
) -> LoadedCase | None:
    return read_channel_files(source, case, channels, report)


def load_folder(case_dir: Path, channels: Sequence[str] | None = None) -> LoadedCase:
    """Read the modalities of one BraTS case folder (no seg) for prediction."""
    edition = edition_of(case_dir)
    if edition is None:
        raise DataError(
            f"{case_dir}: not a BraTS case folder: expected {case_dir.name}_flair.nii.gz ... (2018-2021) "
            f"or {case_dir.name}-t2f.nii.gz ... (2023-2024) inside it")
    images, _, expected = case_files(case_dir, edition)
    keep = select_channels(CHANNELS, channels)
    missing = [str(expected[i]) for i in keep if images[i] is None]
    if missing:
        raise DataError(f"{case_dir}: missing modality file(s): expected {', '.join(missing)}")
    paths = [images[i] for i in keep]
    read = read_channels(Report(strict=True), paths, [CHANNELS[i] for i in keep])  # type: ignore[arg-type]
    assert read is not None  # strict mode raises instead
    image, affine = read
    return LoadedCase(image, None, affine, spacing_of(affine), tuple(CHANNELS[i] for i in keep))
