"""Built-in synthetic MRI datasets in the published layouts (the default that needs no download).

``synthesize(out, kind="prostate")`` writes an MSD Task05-style folder (``dataset.json``, 4D T2+ADC
images, PZ/TZ labels, two ``imagesTs`` cases and a macOS ``._*`` junk file like the real archive);
``kind="brats"`` writes BraTS 2021 case folders (FLAIR, T1, T1ce, T2, seg with 1 NCR / 2 ED / 4 ET);
``kind="brain"`` an MSD-layout T1 set with the white matter labelled, the set on which the input
resolution matters most (thin, branching gyral white matter; subjects that differ in size,
position, contrast, blur, bias and noise).

The data is meant to make resolution matter, not to make any model look good: curved, lobulated
anatomy; thin structures (the peripheral-zone crescent, the enhancing tumour rim, sulci) finer than
one pixel of a 16x16 input; unlabelled distractors with the intensities of labelled tissue (seminal
vesicles, periprostatic fat and veins; ventricles, white-matter lesions, enhancing vessels and
choroid plexus); varied sizes, positions and contrasts; partial volume, bias fields and Rician
noise. No label is a threshold of the image. Each case depends only on (seed, kind, case index), and
files are byte-identical for a seed (gzip with mtime 0, no file name in the gzip header).

The anatomy lives in ``synth.prostate`` and ``synth.brain``, the shared geometry and MR physics in
``synth.shapes``; this module writes the datasets.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jnet.errors import ConfigError
from jnet.synth import KINDS
from jnet.synth.brain import WM_CONTRAST, WM_SCALE, WM_SHIFT, brats_case, wm_case
from jnet.synth.prostate import prostate_case
from jnet.utils.atomic import atomic_dir, atomic_write, claim_dir, write_json
from jnet.utils.options import choose

__all__ = ["synthesize", "prostate_case", "brats_case", "nifti_bytes", "KINDS", "DEFAULTS"]

DEFAULTS = {"prostate": {"cases": 24, "slices": 16}, "brats": {"cases": 8, "slices": 155},
            "brain": {"cases": 40, "slices": 20}}
N_TEST = 2  # unlabelled imagesTs cases of the prostate set
# A macOS AppleDouble header, as the ._* files of the published MSD archive start.
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 4070


def nifti_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """A ``.nii.gz`` file's bytes, deterministic: gzip mtime 0 and no file name in its header.

    Noisy images are Huffman-coded only (twice as fast as level 1, 4% larger: noise does not
    repeat); label maps get LZ77 too (they are mostly runs of zeros)."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    strategy = zlib.Z_DEFAULT_STRATEGY if data.dtype == np.uint8 else zlib.Z_HUFFMAN_ONLY
    packer = zlib.compressobj(1, zlib.DEFLATED, 31, 9, strategy)  # wbits 31: gzip, mtime 0, no name
    return packer.compress(img.to_bytes()) + packer.flush()


def _write(path: Path, payload: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(payload)


@dataclass(frozen=True)
class _Job:
    """One case to generate and write (picklable, for worker processes)."""

    kind: str
    root: Path
    index: int  # case number in the dataset
    labelled: bool
    stream: int  # random stream: case i of the training set, 10000 + j for test case j
    seed: int
    size: int
    slices: int
    contrast: tuple[float, float] = WM_CONTRAST  # brain only, as the next two
    scale: tuple[float, float] = WM_SCALE
    shift: tuple[float, float] | None = None


def _write_case(job: _Job) -> None:
    """Generate one case from its own random stream and write its files."""
    rng = np.random.default_rng([job.seed, KINDS.index(job.kind), job.stream])
    if job.kind == "prostate":
        image, label, affine = prostate_case(rng, job.size, job.slices)
        case_id = f"prostate_{job.index:02d}"
        folder = "imagesTr" if job.labelled else "imagesTs"
        _write(job.root / folder / f"{case_id}.nii.gz", nifti_bytes(image, affine))
        if job.labelled:
            _write(job.root / "labelsTr" / f"{case_id}.nii.gz", nifti_bytes(label, affine))
        return
    if job.kind == "brain":
        image, label, affine = wm_case(rng, job.size, job.slices, job.contrast, job.scale, job.shift)
        case_id = f"brain_{job.index:03d}"
        _write(job.root / "imagesTr" / f"{case_id}.nii.gz", nifti_bytes(image, affine))
        _write(job.root / "labelsTr" / f"{case_id}.nii.gz", nifti_bytes(label, affine))
        return
    image, seg, affine = brats_case(rng, job.size, job.slices)
    case_id = f"BraTS2021_{job.index:05d}"
    for c, name in enumerate(("flair", "t1", "t1ce", "t2")):
        _write(job.root / case_id / f"{case_id}_{name}.nii.gz", nifti_bytes(image[c], affine))
    _write(job.root / case_id / f"{case_id}_seg.nii.gz", nifti_bytes(seg, affine))


def _jobs(kind: str, root: Path, cases: int, seed: int, size: int | None, slices: int,
          subjects: dict) -> list[_Job]:
    if kind in ("brats", "brain"):
        return [_Job(kind, root, i, True, i, seed, size or (240 if kind == "brats" else 256), slices,
                     **subjects) for i in range(cases)]
    return [
        _Job(kind, root, i, i < cases, i if i < cases else 10_000 + i - cases, seed,
             size or (256, 320)[i % 2], slices)
        for i in range(cases + N_TEST)
    ]


def _run(jobs: list[_Job], workers: int, bar) -> None:
    if workers <= 1 or len(jobs) == 1:
        for job in jobs:
            _write_case(job)
            bar.update()
        return
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    # spawn, not fork: the caller may hold threads (torch, BLAS) that a forked child inherits badly.
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
        for _ in pool.map(_write_case, jobs):
            bar.update()


def _write_manifest(root: Path, cases: int, seed: int) -> None:
    """dataset.json of the prostate set, and the macOS junk files of the published archive."""
    for folder in ("imagesTr", "labelsTr"):
        _write(root / folder / "._prostate_00.nii.gz", APPLEDOUBLE)
    write_json(root / "dataset.json", {
        "name": "PROSTATE",
        "description": f"Synthetic prostate MRI in the layout of MSD Task05 (jnet data synth, seed {seed}); "
                       "not patient data",
        "reference": "jnet.data.synth", "licence": "generated data, no restrictions", "release": "1.0",
        "tensorImageSize": "4D", "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "numTraining": cases, "numTest": N_TEST,
        "training": [{"image": f"./imagesTr/prostate_{i:02d}.nii.gz",
                      "label": f"./labelsTr/prostate_{i:02d}.nii.gz"} for i in range(cases)],
        "test": [f"./imagesTs/prostate_{i:02d}.nii.gz" for i in range(cases, cases + N_TEST)],
    })


def _write_brain_manifest(root: Path, cases: int, seed: int, subjects: dict) -> None:
    """dataset.json of the white-matter set (MSD layout, 3D T1 images)."""
    shifted = "".join(f", {r.manifest} {subjects[name][0]:g}-{subjects[name][1]:g}{r.unit}"
                      for name, r in BRAIN_RANGES.items() if subjects[name] != r.default)
    write_json(root / "dataset.json", {
        "name": "BRAINWM",
        "description": f"Synthetic T1-weighted brain MRI, white matter labelled (jnet data synth, "
                       f"seed {seed}{shifted}); not patient data",
        "reference": "jnet.synth", "licence": "generated data, no restrictions", "release": "1.0",
        "tensorImageSize": "3D", "modality": {"0": "T1"},
        "labels": {"0": "background", "1": "WM"},
        "numTraining": cases, "numTest": 0,
        "training": [{"image": f"./imagesTr/brain_{i:03d}.nii.gz",
                      "label": f"./labelsTr/brain_{i:03d}.nii.gz"} for i in range(cases)],
        "test": [],
    })


class _Range(NamedTuple):
    """A range of the brain set's subjects that ``synthesize`` can move, and its rule."""

    default: tuple[float, float] | None
    floor: float  # the smallest LOW
    floor_allowed: bool  # whether LOW may equal it
    ceiling: float | None  # the largest HIGH
    manifest: str  # what dataset.json's description calls it
    unit: str = ""


BRAIN_RANGES = {
    "contrast": _Range(WM_CONTRAST, 0.0, False, None, "gray/white contrast"),
    "scale": _Range(WM_SCALE, 0.0, False, 1.5, "head size"),
    "shift": _Range(None, 0.0, True, 60.0, "head centre off the middle by", " mm"),
}


def _subjects(kind: str, **ranges: tuple[float, float] | None) -> dict:
    """The brain set's subject ranges, each given one checked, or its default."""
    subjects = {}
    for name, value in ranges.items():
        r = BRAIN_RANGES[name]
        if value is None:
            subjects[name] = r.default
            continue
        if kind != "brain":
            raise ConfigError(f"{name}: only the brain kind has subjects' {name} to set, not {kind}")
        try:
            low, high = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected two numbers LOW HIGH, found {value!r}") from None
        above_floor = low >= r.floor if r.floor_allowed else low > r.floor
        if not above_floor or low > high or (r.ceiling is not None and high > r.ceiling):
            rule = (f"{r.floor:g} {'<=' if r.floor_allowed else '<'} LOW <= HIGH"
                    + (f" <= {r.ceiling:g}" if r.ceiling is not None else ""))
            usual = (f"uniform in +-{WM_SHIFT[0]:g} / +-{WM_SHIFT[1]:g} mm" if r.default is None
                     else f"{r.default[0]:g} {r.default[1]:g}")
            raise ConfigError(f"{name}: expected {rule} (the default: {usual}), found {low:g} {high:g}")
        subjects[name] = (low, high)
    return subjects


def auto_workers(jobs: list[_Job]) -> int:
    """Worker processes for ``workers=None``: one for small jobs (starting processes costs about a
    second), else up to 4, at most the CPU count."""
    voxels = sum(job.size * job.size * job.slices for job in jobs)
    return 1 if voxels < 16_000_000 else max(1, min(4, os.cpu_count() or 1))


def synthesize(
    out: str | Path,
    kind: str = "prostate",
    cases: int | None = None,
    seed: int = 0,
    size: int | None = None,
    slices: int | None = None,
    *,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
    contrast: tuple[float, float] | None = None,
    scale: tuple[float, float] | None = None,
    shift: tuple[float, float] | None = None,
) -> Path:
    """Write a synthetic dataset in its published layout (see the module docstring).

    Args:
        out: the dataset folder to create (refused when it exists and is not empty, unless
            ``overwrite``); written in a temporary folder and renamed into place.
        kind: ``"prostate"`` (MSD Task05 layout), ``"brats"`` (BraTS 2021 folders) or ``"brain"``
            (MSD layout, T1, white matter labelled: thin branching structures, varied subjects;
            the set on which input resolution matters most).
        cases: labelled cases (default 24 prostate, 8 brats, 40 brain); the prostate set adds 2
            imagesTs cases.
        seed: same seed, same bytes; case i depends only on (seed, kind, i).
        size: in-plane size; default alternates 256 and 320 (prostate), 240 (brats), 256 (brain).
        slices: slices per volume (default 16 prostate, 155 brats, 20 brain).
        overwrite: replace an existing ``out``.
        workers: processes generating cases in parallel (same bytes for any number); None picks
            1 for small sets, else up to 4.
        progress: show a progress bar.
        contrast: brain only: the range of the subjects' gray/white contrast, relative to the usual
            (default :data:`~jnet.synth.brain.WM_CONTRAST`, 0.5-1.3). Another range keeps the
            subjects of a seed and their labels and changes their contrast: a test set a model
            trained on the default has not seen.
        scale: brain only: the range of the subjects' head size, a scale of the mean brain
            (default :data:`~jnet.synth.brain.WM_SCALE`, 0.82-1.08, at most 1.5).
        shift: brain only: the range of the head centre's distance from the middle of the field,
            in mm, per in-plane axis on a random side (at most 60; default: uniform in +-15 mm
            left-right and +-18 mm front-back). With ``scale`` or ``shift`` every other property
            is drawn from its usual range: a test set of head sizes or positions a model trained
            on the default has not seen.
    Returns:
        The dataset folder.
    Raises:
        ConfigError: bad kind, cases, size, slices, contrast, scale or shift. DataError: ``out``
            exists.
    """
    from tqdm.auto import tqdm

    choose(kind, KINDS, "kind")
    cases = DEFAULTS[kind]["cases"] if cases is None else cases
    slices = DEFAULTS[kind]["slices"] if slices is None else slices
    limits = (("cases", cases, 1), ("size", size, 16), ("slices", slices, 2), ("workers", workers, 1))
    for field, value, low in limits:
        if value is not None and (not isinstance(value, (int, np.integer)) or value < low):
            raise ConfigError(f"{field}: expected an integer >= {low}, found {value!r}")
    subjects = _subjects(kind, contrast=contrast, scale=scale, shift=shift)
    out = Path(out).expanduser()
    claim_dir(out, overwrite, what="synthetic dataset folder")
    with atomic_dir(out) as tmp:  # replaces an old folder only once the new one is complete
        jobs = _jobs(kind, tmp, cases, seed, size, slices, subjects)
        with tqdm(total=len(jobs), desc=f"synth {kind}", unit="case", disable=not progress) as bar:
            _run(jobs, auto_workers(jobs) if workers is None else workers, bar)
        if kind == "prostate":
            _write_manifest(tmp, cases, seed)
        elif kind == "brain":
            _write_brain_manifest(tmp, cases, seed, subjects)
    return out
