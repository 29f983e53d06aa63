"""Shared fixtures: tiny synthetic datasets in the published layouts, made once per test session.

Treat them as read-only (copy them with ``shutil.copytree`` to modify): several test files use them.

- ``prostate_dir``: MSD Task05 layout, 3 labelled cases + 2 imagesTs cases, 64 x 64 x 6, T2+ADC,
  labels 0/1 PZ/2 TZ, oblique affines, ``._prostate_00.nii.gz`` junk files.
- ``brats_dir``: BraTS 2021 folders, 3 cases, 64 x 64 x 6, FLAIR/T1/T1ce/T2 + seg 0/1/2/4.
- ``png_dir``: the reference code's PNG layout made from ``prostate_dir``: ``train/images``,
  ``train/masks`` (2 patients) and ``test/images``, ``test/masks`` (1 patient); 8-bit T2 slices
  ``prostate_0N_00K.png`` and whole-prostate masks stored as 0/255 (load with label_map {0: 0, 255: 1}).

Helpers for tests that build their own small datasets: ``save_nifti``, ``write_msd_task`` (also as
the ``msd_writer`` fixture) and ``tiny_case``; a hand-written slice cache (``write_cache``, ``TASKS``)
and a config that trains in seconds (``tiny``); cases whose image is a function of the label
(``write_aligned_msd``) and their slice cache (``aligned_cache``), to check augmentation alignment.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def prostate_dir(tmp_path_factory) -> Path:
    from jnet.synth.generate import synthesize

    root = tmp_path_factory.mktemp("synth") / "Task05_Prostate"
    return synthesize(root, "prostate", cases=3, seed=0, size=64, slices=6, progress=False)


@pytest.fixture(scope="session")
def brats_dir(tmp_path_factory) -> Path:
    from jnet.synth.generate import synthesize

    root = tmp_path_factory.mktemp("synth") / "BraTS2021"
    return synthesize(root, "brats", cases=3, seed=0, size=64, slices=6, progress=False)


@pytest.fixture(scope="session")
def png_dir(tmp_path_factory, prostate_dir) -> Path:
    from PIL import Image

    from jnet.sources.registry import discover, load_case

    root = tmp_path_factory.mktemp("png") / "prostate_png"
    source = discover(prostate_dir)
    labelled = [c for c in source.cases if c.label is not None]
    for i, case in enumerate(labelled):
        split = "test" if i == len(labelled) - 1 else "train"
        loaded = load_case(source, case, channels=["T2"])
        t2 = loaded.image[0]
        scaled = np.clip(t2 / max(float(np.percentile(t2, 99.5)), 1e-6) * 255, 0, 255).astype(np.uint8)
        for z in range(t2.shape[2]):
            name = f"{case.case_id}_{z:03d}.png"
            for folder, array in (("images", scaled[..., z]), ("masks", (loaded.label[..., z] > 0).astype(np.uint8) * 255)):
                path = root / split / folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
    return root


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``data`` as NIfTI (``.nii`` or ``.nii.gz`` by the name), creating folders."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def write_msd_task(root: Path, cases: dict, modality=("T2",), labels=None, name="PROSTATE", test=()) -> Path:
    """A tiny MSD task folder. ``cases[case_id] = (image, label)`` with image ``(X, Y, Z)`` or
    ``(X, Y, Z, C)`` and label ``(X, Y, Z)``; ``test`` lists case ids written to imagesTs
    (their labels are ignored). Returns ``root``."""
    import json

    labels = labels or {"0": "background", "1": "PZ", "2": "TZ"}
    training, tests = [], []
    for case_id, (image, label) in cases.items():
        folder = "imagesTs" if case_id in test else "imagesTr"
        save_nifti(root / folder / f"{case_id}.nii.gz", image)
        if case_id in test:
            tests.append(f"./imagesTs/{case_id}.nii.gz")
        else:
            save_nifti(root / "labelsTr" / f"{case_id}.nii.gz", label)
            training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
    meta = {"name": name, "modality": {str(i): m for i, m in enumerate(modality)}, "labels": labels,
            "numTraining": len(training), "training": training, "test": tests}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def msd_writer():
    """``write_msd_task`` (see above), for tests that build their own small MSD task."""
    return write_msd_task


def tiny_case(seed: int = 0, shape=(8, 8, 3), channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A random float32 image (channels last when ``channels`` > 1) and a uint8 label 0/1/2."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(1, 100, size=shape if channels == 1 else (*shape, channels)).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[2:5, 2:5] = 1
    label[3:4, 3:4] = 2
    return image, label


TASKS = {
    "binary": {"kind": "binary", "names": ["prostate"], "classes": 1, "labels": {"prostate": [1, 2]}},
    "multiclass": {"kind": "multiclass", "names": ["background", "PZ", "TZ"], "classes": 3,
                   "labels": {"background": [0], "PZ": [1], "TZ": [2]}},
    "regions": {"kind": "regions", "names": ["WT", "TC", "ET"], "classes": 3,
                "labels": {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}},
}


def write_cache(root: Path, kind: str = "binary", channels=("T2",), size: int = 64, cases: int = 4,
                slices: int = 4, seed: int = 0) -> Path:
    """A slice cache (docs/design.md schema): a bright disk per slice, nested disks for the inner
    structures; the last case is the validation fold, there is no test case."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    n = cases * slices
    yy, xx = np.mgrid[:size, :size] / size
    images = np.zeros((n, len(channels), size, size), np.float16)
    labels = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.35, 0.65, 2)
        d = np.hypot(yy - cy, xx - cx) / rng.uniform(0.15, 0.3)
        if kind == "binary":
            labels[i] = d < 1
        elif kind == "multiclass":
            labels[i] = np.where(d < 0.5, 2, np.where(d < 1, 1, 0))
        else:  # region bitmask: WT | TC | ET
            labels[i] = (d < 1) * 1 + (d < 0.5) * 2 + (d < 0.25) * 4
        for c in range(len(channels)):
            images[i, c] = (d < 1) * (1.0 + 0.5 * c) + (d < 0.5) * 0.7 + rng.normal(0, 0.3, (size, size))
    np.save(root / "images.npy", images)
    np.save(root / "labels.npy", labels)
    ids = [f"case_{k:02d}" for k in range(cases)]
    meta = {"format_version": 1, "jnet_version": "0.1.0", "layout": "msd", "source": "/synthetic",
            "edition": None, "task": TASKS[kind], "channels": list(channels), "size": size,
            "dtype": "float16", "normalisation": {"method": "zscore-nonzero"}, "keep_empty": True,
            "n_slices": n,
            "cases": [{"case_id": c, "start": k * slices, "count": slices,
                       "slice_indices": list(range(slices)), "axis": 2, "spacing": [1.0, 1.0, 3.0],
                       "native_spacing": [1.0, 1.0, 3.0], "original_shape": [size, size, slices],
                       "affine": np.eye(4).tolist()} for k, c in enumerate(ids)]}
    splits = {"seed": 0, "val_fraction": 0.25, "test_fraction": 0.0, "test": [],
              "folds": [{"train": ids[:-1], "val": ids[-1:]}]}
    (root / "splits.json").write_text(json.dumps(splits, indent=2, sort_keys=True))
    (root / "prepared.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return root


def tiny(cache: Path, model: dict | None = None, **train) -> dict:
    """A raw config that trains in seconds: 3 batches of 4 per epoch, width 4, 16 -> 64."""
    return {"data": {"path": str(cache)},
            "model": {"width": 4, "in_size": 16, **(model or {})},
            "loss": {},
            "train": {"epochs": 2, "batch_size": 4, "num_workers": 0, "lr": 3e-3, "log_every": 1,
                      "optimizer": "adamw", "scheduler": "cosine", "warmup": 0.5, **train}}


def write_aligned_msd(root: Path, n_cases: int = 6, S: int = 16) -> Path:
    """Cases whose image is an affine function of the label (1 + 10 * label, never 0), so the
    image/label alignment of any sample can be checked after augmentation."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n_cases):
        label = np.zeros((S, S, 4), np.uint8)
        for z in range(1, 4):
            x, y = rng.integers(0, S - 6, size=2)
            label[x:x + rng.integers(2, 7), y:y + rng.integers(2, 7), z] = 1
        image = 1.0 + 10.0 * label
        name = f"case_{i:02d}"
        for folder, data in (("imagesTr", image.astype(np.float32)), ("labelsTr", label)):
            nib.save(nib.Nifti1Image(data, np.eye(4)), root / folder / f"{name}.nii.gz")
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "toy", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "organ"},
        "numTraining": n_cases, "training": training}))
    return root


def aligned_cache(base: Path, S: int = 16) -> Path:
    """A slice cache (S x S) of :func:`write_aligned_msd` cases, with val and test splits."""
    from jnet.cache.build import prepare_dataset

    return prepare_dataset(write_aligned_msd(base / "toy", S=S), base / "cache", size=S, val_fraction=0.2,
                           test_fraction=0.2, progress=False)
