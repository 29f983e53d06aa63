"""Medical Segmentation Decathlon layout: ``dataset.json`` + ``imagesTr/``, ``labelsTr/``, ``imagesTs/``.

``dataset.json`` is the manifest: ``modality`` ({"0": "T2", "1": "ADC"}) names the channels of the
4D images (channels last), ``labels`` ({"0": "background", "1": "PZ", "2": "TZ"}) the label values,
``training`` lists ``{"image", "label"}`` pairs and ``test`` the unlabelled images, with paths
relative to the task folder ("./imagesTr/prostate_00.nii.gz"). Files the manifest does not list,
such as the macOS ``._*`` files of the published archive, are never read.
"""
from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from jnet.sources import readers
from jnet.sources.common import (
    Found,
    Problem,
    Report,
    check_geometry,
    check_intensities,
    check_label_values,
    select_channels,
    spacing_of,
    squeeze_label,
)
from jnet.sources.types import Case, DatasetSource, LoadedCase

# dataset.json "name" -> task folder name, for tasks whose regions jnet knows (jnet.sources.labels.REGIONS).
MSD_NAMES = {"BRATS": "Task01_BrainTumour", "PROSTATE": "Task05_Prostate"}
REQUIRED_KEYS = {"name": str, "modality": dict, "labels": dict, "numTraining": int, "training": list}
TYPE_NAMES = {str: "a string", dict: "an object", int: "an integer", list: "a list"}


def edition_of(root: Path, name: str) -> str:
    """The task name: ``Task05_Prostate`` from the folder name, else from dataset.json ``name``."""
    match = re.match(r"(Task\d+_[A-Za-z]+)", root.name)
    if match:
        return match.group(1)
    return MSD_NAMES.get(name.strip().upper(), name)


def _short(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _index_map(meta: dict, key: str, errors: list[str]) -> dict[int, str] | None:
    """``{"0": "T2", "1": "ADC"}`` -> ``{0: "T2", 1: "ADC"}``; problems appended to ``errors``."""
    value = meta[key]
    out: dict[int, str] = {}
    for k, v in value.items():
        if not (isinstance(k, str) and k.strip().isdigit()) or not isinstance(v, str):
            errors.append(f"'{key}' should map integer strings to names, found {_short({k: v})}")
            return None
        out[int(k)] = v
    if not out:
        errors.append(f"'{key}' is empty")
        return None
    return out


def _entry(item: object, keys: tuple[str, ...]) -> dict | None:
    if isinstance(item, str) and keys == ("image",):
        return {"image": item}
    if isinstance(item, dict) and all(isinstance(item.get(k), str) for k in keys):
        return item
    return None


def _resolve(root: Path, rel: str) -> Path:
    p = PurePosixPath(rel)
    return Path(p) if p.is_absolute() else root.joinpath(*[part for part in p.parts if part != "."])


def scan(root: Path) -> Found:
    """Read and check ``root/dataset.json``; list its cases (training first, then test)."""
    manifest = root / "dataset.json"
    problems: list[Problem] = []
    found = Found("msd", None, (), None, [], problems)
    if not manifest.is_file():
        problems.append(Problem(manifest, f"missing dataset.json: expected the MSD manifest at {manifest}"))
        return found
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(Problem(manifest, f"not valid JSON ({e})"))
        return found
    if not isinstance(meta, dict):
        problems.append(Problem(manifest, f"expected a JSON object, found {type(meta).__name__}"))
        return found

    errors: list[str] = []
    for key, typ in REQUIRED_KEYS.items():
        if key not in meta:
            errors.append(f"'{key}' missing (expected {TYPE_NAMES[typ]})")
        elif not isinstance(meta[key], typ) or (typ is int and isinstance(meta[key], bool)):
            actual = f"{type(meta[key]).__name__} {_short(meta[key])}"
            errors.append(f"'{key}' should be {TYPE_NAMES[typ]}, found {actual}")
    if "test" in meta and not isinstance(meta["test"], list):
        errors.append(f"'test' should be a list, found {type(meta['test']).__name__} {_short(meta['test'])}")
    modality = _index_map(meta, "modality", errors) if isinstance(meta.get("modality"), dict) else None
    labels = _index_map(meta, "labels", errors) if isinstance(meta.get("labels"), dict) else None
    if modality is not None and sorted(modality) != list(range(len(modality))):
        errors.append(f"'modality' keys should be 0..{len(modality) - 1}, found {sorted(modality)}")
    training, test = [], []
    for key, keys, out in (("training", ("image", "label"), training), ("test", ("image",), test)):
        items = meta.get(key)
        if not isinstance(items, list):
            continue
        bad = []
        for i, item in enumerate(items):
            entry = _entry(item, keys)
            if entry is None:
                bad.append(i)
            else:
                out.append(entry)
        if bad:
            shown = ", ".join(f"{key}[{i}] = {_short(items[i])}" for i in bad[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            want = "{'image': str, 'label': str}" if key == "training" else "a path string"
            errors.append(f"'{key}' entries should be {want}: {shown}{more}")
    if errors:
        problems.append(Problem(manifest, "dataset.json has missing or mistyped keys: " + "; ".join(errors)))
        return found

    cases: list[Case] = []
    missing: list[str] = []
    listed: set[Path] = set()  # every image dataset.json names, usable or not
    for entry, labelled in [(e, True) for e in training] + [(e, False) for e in test]:
        image = _resolve(root, entry["image"])
        label = _resolve(root, entry["label"]) if labelled else None
        listed.add(image)
        pairs = ((entry["image"], image), (entry.get("label"), label))
        absent = [rel for rel, p in pairs if p is not None and not p.is_file()]
        missing.extend(absent)
        if not absent:
            cases.append(Case(readers.nifti_stem(image), (image,), label))
    if meta["numTraining"] != len(training):
        problems.append(Problem(
            manifest, f"'numTraining' is {meta['numTraining']} but 'training' lists {len(training)} cases"))
    if missing:
        problems.append(Problem(
            manifest, f"dataset.json references {len(missing)} file(s) that do not exist: {', '.join(missing)}"))
    for folder in ("imagesTr", "imagesTs"):
        extra = sorted(
            p.name for p in (root / folder).glob("*")
            if readers.is_nifti(p) and not readers.is_hidden(p) and p not in listed
        ) if (root / folder).is_dir() else []
        if extra:
            problems.append(Problem(
                root / folder, f"{len(extra)} file(s) not listed in dataset.json (ignored): {', '.join(extra[:10])}"
                + (" ..." if len(extra) > 10 else ""), "warning"))
    found.edition = edition_of(root, meta["name"])
    found.channels = tuple(modality[i] for i in sorted(modality))  # type: ignore[union-attr]
    found.labels = labels
    found.cases = cases
    return found


def channels_first(report: Report, path: Path, data: np.ndarray, names: Sequence[str]) -> np.ndarray | None:
    """``(X, Y, Z)`` or ``(X, Y, Z, C)`` -> ``(C, X, Y, Z)``, C must match dataset.json 'modality'."""
    n = len(names)
    declared = f"dataset.json 'modality' declares {n} channel(s) ({', '.join(names)})"
    if data.ndim == 3:
        if n == 1:
            return data[None]
        report.error(path, f"a 3D image of shape {data.shape}, but {declared}; expected 4D (X, Y, Z, {n})")
        return None
    if data.ndim == 4:
        if data.shape[3] == n:
            return np.ascontiguousarray(np.moveaxis(data, -1, 0))
        report.error(
            path, f"a 4D image of shape {data.shape} with {data.shape[3]} channels, but {declared}; "
            f"set 'modality' to one name per channel")
        return None
    report.error(
        path, f"a {data.ndim}D image of shape {data.shape}; expected 3D (X, Y, Z) or 4D (X, Y, Z, channels) "
        f"with the channels named in dataset.json 'modality'")
    return None


def read_case(
    source: DatasetSource, case: Case, channels: Sequence[str] | None, report: Report
) -> LoadedCase | None:
    keep = select_channels(source.channels, channels)
    path = case.images[0]
    read = report.read(path, lambda: readers.read_nifti(path))
    if read is None:
        return None
    data, affine = read  # type: ignore[misc]
    image = channels_first(report, path, data, source.channels)
    if image is None:
        return None
    ok = check_intensities(report, path, image, source.channels)
    label = None
    if case.label is not None:
        lab_path = case.label
        read = report.read(lab_path, lambda: readers.read_nifti(lab_path, label=True))
        if read is None:
            return None
        lab, lab_affine = read  # type: ignore[misc]
        lab = squeeze_label(report, lab_path, lab)
        if lab is None:
            return None
        if not check_geometry(report, path, image.shape[1:], affine, lab_path, lab.shape, lab_affine):
            return None
        label = check_label_values(report, source, lab_path, lab)
        if label is None:
            return None
    if not ok:
        return None
    return LoadedCase(
        np.ascontiguousarray(image[keep]), label, affine, spacing_of(affine),
        tuple(source.channels[i] for i in keep),
    )
