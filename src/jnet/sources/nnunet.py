"""nnU-Net v2 raw layout: ``dataset.json`` + ``imagesTr/CASE_XXXX.nii.gz`` (one file per channel),
``labelsTr/CASE.nii.gz``, ``imagesTs/``.

``dataset.json`` names the channels (``channel_names``: {"0": "T2", "1": "ADC"}; file suffix
``_0000`` is channel 0), the labels (``labels``: name -> value, ``"background": 0``; a list of
values is a region, as nnU-Net's region training: ``"whole tumor": [1, 2, 3]``) and the file
ending (``file_ending``: ".nii.gz"). A case is every ``CASE_XXXX`` file of one ``CASE``, read as one
multi-channel image; ``numTraining`` is checked against the cases found.

2D datasets (nnU-Net v2's ``.png``): a case is one slice, a grayscale PNG per channel, or, as
nnU-Net allows for colour images, one colour ``CASE_0000.png`` holding the three channels of a
three-channel ``channel_names``; the label ``labelsTr/CASE.png`` holds one value per pixel.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from jnet.sources import readers
from jnet.sources.common import (
    Found,
    Problem,
    Report,
    check_intensities,
    check_label_values,
    read_channel_files,
    select_channels,
)
from jnet.sources.types import Case, DatasetSource, LoadedCase

REQUIRED_KEYS = {"channel_names": dict, "labels": dict, "numTraining": int, "file_ending": str}
SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".png")


def is_nnunet(root: Path) -> bool:
    """A dataset.json with ``channel_names`` (MSD's has ``modality``)."""
    try:
        meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "channel_names" in meta


def channel_file_pattern(ending: str) -> re.Pattern:
    """``CASE_0001.nii.gz`` -> groups ``case`` and ``channel``."""
    return re.compile(rf"^(?P<case>.+)_(?P<channel>\d{{4}}){re.escape(ending)}$")


def group_channel_files(files: Sequence[Path], ending: str) -> dict[str, dict[int, Path]]:
    """``{case: {channel index: file}}`` of the files named ``CASE_XXXX{ending}``."""
    pattern = channel_file_pattern(ending)
    groups: dict[str, dict[int, Path]] = {}
    for path in files:
        match = pattern.match(path.name)
        if match:
            groups.setdefault(match["case"], {})[int(match["channel"])] = path
    return groups


def _labels(raw: dict, manifest: Path, problems: list[Problem]) -> tuple[dict[int, str], dict[str, tuple[int, ...]]] | None:
    """``labels`` -> (value -> name, region name -> values)."""
    values: dict[int, str] = {}
    regions: dict[str, tuple[int, ...]] = {}
    for name, value in raw.items():
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            values[value] = name
        elif (isinstance(value, list) and value
              and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
            regions[name] = tuple(sorted(value))
        else:
            problems.append(Problem(manifest, f"'labels' entry {name!r}: expected a label value >= 0 or "
                                              f"a list of values > 0 (a region), found {value!r}"))
            return None
    if values.get(0) is None:
        problems.append(Problem(manifest, "'labels' has no background: expected \"background\": 0"))
        return None
    for name, members in regions.items():
        for v in members:
            values.setdefault(v, f"label {v}")  # region datasets may not name the plain values
    return values, regions


def scan(root: Path) -> Found:
    """Read and check ``root/dataset.json``; list its cases (training first, then imagesTs)."""
    manifest = root / "dataset.json"
    problems: list[Problem] = []
    found = Found("nnunet", root.name, (), None, [], problems)
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(Problem(manifest, f"not a readable JSON file ({e})"))
        return found
    wrong = [f"'{key}' missing or not a {typ.__name__}" for key, typ in REQUIRED_KEYS.items()
             if not isinstance(meta.get(key), typ) or isinstance(meta.get(key), bool)]
    if wrong:
        problems.append(Problem(manifest, "dataset.json (nnU-Net v2): " + "; ".join(wrong)))
        return found
    ending = meta["file_ending"]
    if ending not in SUPPORTED_ENDINGS:
        problems.append(Problem(manifest, f"'file_ending' {ending!r}: jnet reads {', '.join(SUPPORTED_ENDINGS)}"))
        return found
    try:
        channels = {int(k): str(v) for k, v in meta["channel_names"].items()}
    except ValueError:
        problems.append(Problem(manifest, f"'channel_names' keys must be channel indices, found "
                                          f"{list(meta['channel_names'])}"))
        return found
    if sorted(channels) != list(range(len(channels))):
        problems.append(Problem(manifest, f"'channel_names' keys should be 0..{len(channels) - 1}, "
                                          f"found {sorted(channels)}"))
        return found
    parsed = _labels(meta["labels"], manifest, problems)
    if parsed is None:
        return found
    found.labels, found.regions = parsed
    found.channels = tuple(channels[i] for i in range(len(channels)))
    n = len(channels)

    cases: list[Case] = []
    for folder, labelled in (("imagesTr", True), ("imagesTs", False)):
        images = root / folder
        if not images.is_dir():
            if labelled:
                problems.append(Problem(images, "missing: expected the training images CASE_0000" + ending))
            continue
        files = sorted(p for p in images.iterdir() if not p.name.startswith("."))
        groups = group_channel_files(files, ending)
        stray = [p.name for p in files if p.name.endswith(ending)
                 and not channel_file_pattern(ending).match(p.name)]
        if stray:
            problems.append(Problem(images, f"{len(stray)} file(s) not named CASE_XXXX{ending} "
                                            f"(ignored): {', '.join(stray[:10])}", "warning"))
        for case_id, by_channel in sorted(groups.items()):
            if ending == ".png" and n == 3 and set(by_channel) == {0}:
                by_channel = {i: by_channel[0] for i in range(n)}  # one colour file: read once
            missing = [f"{case_id}_{i:04d}{ending} ({channels[i]})" for i in range(n) if i not in by_channel]
            extra = sorted(i for i in by_channel if i >= n)
            if missing or extra:
                what = (f"missing {', '.join(missing)}" if missing else "") + (
                    f"{'; ' if missing else ''}channel file(s) {extra} beyond the {n} of "
                    f"'channel_names'" if extra else "")
                problems.append(Problem(images, f"case {case_id}: {what}"))
                continue
            label = root / "labelsTr" / f"{case_id}{ending}" if labelled else None
            if label is not None and not label.is_file():
                problems.append(Problem(label, f"case {case_id}: label file missing"))
                continue
            files = tuple(dict.fromkeys(by_channel[i] for i in range(n)))
            cases.append(Case(case_id, files, label, split=None if labelled else "test"))
    n_train = sum(c.label is not None for c in cases)
    if meta["numTraining"] != n_train:
        problems.append(Problem(manifest, f"'numTraining' is {meta['numTraining']} but imagesTr holds "
                                          f"{n_train} complete labelled case(s)", "warning"))
    found.cases = cases
    return found


def read_case(source: DatasetSource, case: Case, channels: Sequence[str] | None,
              report: Report) -> LoadedCase | None:
    if readers.is_png(case.images[0]):
        return read_png_case(source, case, channels, report)
    return read_channel_files(source, case, channels, report)


def read_png_case(source: DatasetSource, case: Case, channels: Sequence[str] | None,
                  report: Report) -> LoadedCase | None:
    """A 2D case as one slice: ``image (C, H, W, 1)``, ``label (H, W, 1)``, 1 mm pixels."""
    keep = select_channels(source.channels, channels)
    planes: list[np.ndarray] = []
    for path in case.images:
        read = report.read(path, lambda p=path: readers.read_png(p))
        if read is None:
            return None
        pixels = np.asarray(read)
        planes += [pixels] if pixels.ndim == 2 else list(np.moveaxis(pixels, -1, 0))
    first = case.images[0]
    if len(planes) != len(source.channels):
        report.error(first, f"case {case.case_id}: {len(planes)} channel(s) in "
                            f"{', '.join(p.name for p in case.images)}; dataset.json 'channel_names' "
                            f"has {len(source.channels)} ({', '.join(source.channels)})")
        return None
    if len({p.shape for p in planes}) > 1:
        sizes = ", ".join(f"{p.name} {q.shape[1]}x{q.shape[0]}" for p, q in zip(case.images, planes))
        report.error(first, f"case {case.case_id}: its channel images differ in size ({sizes})")
        return None
    image = np.stack([planes[i] for i in keep])[..., None]
    names = tuple(source.channels[i] for i in keep)
    if not check_intensities(report, first, image, names):
        return None
    label = None
    if case.label is not None:
        read = report.read(case.label, lambda: readers.read_png(case.label, mask=True))
        if read is None:
            return None
        mask = np.asarray(read)
        if mask.shape != planes[0].shape:
            report.error(case.label, f"a label of {mask.shape[1]}x{mask.shape[0]} pixels; its image "
                                     f"{first.name} has {planes[0].shape[1]}x{planes[0].shape[0]}")
            return None
        label = check_label_values(report, source, case.label, mask[..., None])
        if label is None:
            return None
    return LoadedCase(np.ascontiguousarray(image, dtype=np.float32), label, np.eye(4), (1.0, 1.0, 1.0), names)
