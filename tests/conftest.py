"""Shared fixtures: tiny synthetic datasets in the published layouts, made once per test session.

Treat them as read-only (copy them with ``shutil.copytree`` to modify): several test files use them.

- ``prostate_dir``: MSD Task05 layout, 3 labelled cases + 2 imagesTs cases, 64 x 64 x 6, T2+ADC,
  labels 0/1 PZ/2 TZ, oblique affines, ``._prostate_00.nii.gz`` junk files.
- ``brats_dir``: BraTS 2021 folders, 3 cases, 64 x 64 x 6, FLAIR/T1/T1ce/T2 + seg 0/1/2/4.
- ``png_dir``: the reference code's PNG layout made from ``prostate_dir``: ``train/images``,
  ``train/masks`` (2 patients) and ``test/images``, ``test/masks`` (1 patient); 8-bit T2 slices
  ``prostate_0N_00K.png`` and whole-prostate masks stored as 0/255 (load with label_map {0: 0, 255: 1}).

Helpers for tests that build their own small datasets: ``save_nifti``, ``write_msd_task`` (also as
the ``msd_writer`` fixture) and ``tiny_case``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def prostate_dir(tmp_path_factory) -> Path:
    from jnet.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "Task05_Prostate"
    return synthesize(root, "prostate", cases=3, seed=0, size=64, slices=6, progress=False)


@pytest.fixture(scope="session")
def brats_dir(tmp_path_factory) -> Path:
    from jnet.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "BraTS2021"
    return synthesize(root, "brats", cases=3, seed=0, size=64, slices=6, progress=False)


@pytest.fixture(scope="session")
def png_dir(tmp_path_factory, prostate_dir) -> Path:
    from PIL import Image

    from jnet.data.formats import discover, load_case

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
