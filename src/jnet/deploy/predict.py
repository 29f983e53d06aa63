"""Segment volumes and slices with a trained model: ``jnet predict MODEL INPUT... --out DIR``.

Each input goes through exactly the training preprocessing (``jnet.transforms.slicing``: slice axis
from the affine, per-channel z-score, slices resampled to the model's ``S`` grid, then
``lowres.downsample`` to the input size ``s``), the model in batches, and back: labels are resampled
onto the input's own voxel grid (nearest), decoded to the dataset's label values
(``tasks.decode_label``, e.g. BraTS regions back to 1/2/4) and written with the input's affine and
header. Optional: probability maps, overlay PNGs. Every file is written atomically; existing
outputs are refused unless ``overwrite``. One JSON line per input (timings per stage) goes to
``predictions.jsonl`` in the output folder and to the caller.

A bad input (unreadable, wrong channels, ...) does not stop a batch: its record says
``"status": "failed"`` and why, the files it had written are removed, and the next input runs.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jnet.deploy.runtime import ModelMeta, Predictor, torch_threads
from jnet.deploy.writers import write_nifti, write_overlay, write_png
from jnet.errors import DataError, JnetError
from jnet.sources.brats import edition_of
from jnet.sources.nnunet import group_channel_files
from jnet.sources.readers import is_hidden, is_nifti, is_png, nifti_stem
from jnet.sources.volume import load_channel_files, load_volume
from jnet.utils.atomic import atomic_write, check_writable, write_text

STAGES = ("load", "preprocess", "model", "postprocess", "write")
LOG_NAME = "predictions.jsonl"


@dataclass(frozen=True)
class Item:
    """One prediction input and the files it produces."""

    path: Path
    kind: str  # "nifti" | "nnunet" | "brats" | "png"
    name: str  # output stem
    files: tuple[Path, ...] = ()  # nnunet: the channel files in order

    @property
    def png(self) -> bool:
        """A PNG slice, or an nnU-Net 2D case of PNG channel files: PNG in, PNG out."""
        return is_png(self.path)

    def outputs(self, out: Path, overlay: bool, probabilities: bool) -> dict[str, Path]:
        ext = ".png" if self.png else ".nii.gz"
        files = {"mask": out / f"{self.name}{ext}"}
        if probabilities:
            files["probabilities"] = out / (f"{self.name}_prob.npy" if self.png
                                            else f"{self.name}_prob.nii.gz")
        if overlay:
            files["overlay"] = out / f"{self.name}_overlay.png"
        return files


def discover_inputs(inputs: Sequence[str | os.PathLike], meta: ModelMeta) -> list[Item]:
    """Expand the INPUT arguments: NIfTI files, PNG slices, BraTS case folders, or folders of those.

    Hidden files (``._*`` from macOS archives) are skipped. Raises DataError for a missing path,
    a folder with nothing to predict, or two inputs that would write the same output name.
    """
    items: list[Item] = []

    def add(path: Path, top: bool) -> None:
        if path.is_dir():
            if is_case_folder(path, meta):
                items.append(Item(path, "brats", path.name))
                return
            if not top:
                return
            found = sorted(p for p in path.iterdir() if not is_hidden(p))
            before = len(items)
            cases, found = nnunet_cases(found, meta.in_channels)
            items.extend(Item(files[0], "nnunet", case, files) for case, files in cases.items())
            for child in found:
                if child.is_dir() or is_nifti(child) or is_png(child):
                    add(child, top=False)
            if len(items) == before:
                raise DataError(f"{path}: no .nii/.nii.gz/.png files or case folders to predict")
        elif is_nifti(path):
            items.append(Item(path, "nifti", nifti_stem(path)))
        elif is_png(path):
            items.append(Item(path, "png", path.stem))
        elif not path.exists():
            raise DataError(f"{path}: input not found")
        elif top:
            raise DataError(f"{path}: expected a .nii/.nii.gz file, a .png slice, a BraTS case "
                            f"folder or a folder of those")

    paths = [Path(raw).expanduser() for raw in inputs]
    cases, paths = nnunet_cases(paths, meta.in_channels)  # CASE_0000, CASE_0001 given as files
    items.extend(Item(files[0], "nnunet", case, files) for case, files in cases.items())
    for path in paths:
        add(path, top=True)
    seen: dict[str, Path] = {}
    for item in items:
        if item.name in seen:
            raise DataError(f"inputs {seen[item.name]} and {item.path} would both write "
                            f"{item.name!r}; predict them into different --out folders")
        seen[item.name] = item.path
    return items


def nnunet_cases(paths: Sequence[Path], n_channels: int) -> tuple[dict[str, tuple[Path, ...]], list[Path]]:
    """Group nnU-Net channel files (``CASE_0000.nii.gz`` ... ``CASE_000{n-1}``) into cases.

    Only a complete set of exactly the model's ``n_channels`` files forms a case (so a lone
    ``scan_0003.nii.gz`` stays a file of its own). PNG files (nnU-Net's 2D format) are grouped
    only for a model of several channels: for one channel, ``CASE_0000.png`` is a PNG slice like
    any other (PNG slice folders often number their slices so). Returns ``({case: files in
    channel order}, the other paths)``.
    """
    by_ending: dict[str, list[Path]] = {}
    for path in paths:
        if path.is_file() and is_nifti(path):
            by_ending.setdefault(".nii.gz" if path.name.lower().endswith(".gz") else ".nii", []).append(path)
        elif path.is_file() and is_png(path) and n_channels > 1:
            by_ending.setdefault(path.suffix, []).append(path)
    cases: dict[str, tuple[Path, ...]] = {}
    for ending, files in by_ending.items():
        for case, channels in group_channel_files(files, ending).items():
            if sorted(channels) == list(range(n_channels)):
                cases[case] = tuple(channels[i] for i in range(n_channels))
    used = {p for files in cases.values() for p in files}
    return cases, [p for p in paths if p not in used]


def is_case_folder(folder: Path, meta: ModelMeta) -> bool:
    """A folder is one BraTS case (one NIfTI file per modality) when its file names follow a BraTS
    edition; otherwise it is a folder of inputs."""
    return edition_of(folder) is not None


def check_volume(image: np.ndarray, meta: ModelMeta, source: str) -> None:
    """Input checks before inference (DataError naming ``source``): dtype, rank, channels,
    spatial size and finite values.

    Shape: ``image (C, X, Y, Z)``.
    """
    if image.dtype != np.float32:
        raise DataError(f"{source}: expected float32 intensities, found dtype {image.dtype}")
    if image.ndim != 4:
        raise DataError(f"{source}: expected a volume (C, X, Y, Z), found shape {image.shape}")
    if image.shape[0] != meta.in_channels:
        hint = ("; name a 4D file's channels with --channels (in file order, e.g. --channels "
                "T2,ADC) where no dataset.json beside it does" if image.shape[0] > meta.in_channels else "")
        raise DataError(f"{source}: the model expects {meta.describe_channels()}, found "
                        f"{image.shape[0]} channel(s) (image shape {image.shape[1:]} x "
                        f"{image.shape[0]} channels){hint}")
    if min(image.shape[1:]) < 1:
        raise DataError(f"{source}: empty volume of shape {image.shape[1:]}")
    bad = image.size - int(np.count_nonzero(np.isfinite(image)))
    if bad:
        raise DataError(f"{source}: {bad} NaN/Inf intensities; expected finite values")


def preprocess(image: np.ndarray, affine: np.ndarray, meta: ModelMeta,
               source: str = "image") -> tuple[np.ndarray, int]:
    """The training preprocessing: slice axis, normalisation, ``S`` grid, low-resolution input
    (for a model whose input is smaller than ``S``, computed directly: :mod:`jnet.transforms.direct`).

    Returns:
        ``(inputs, axis)``. Shape: ``image (C, X, Y, Z)`` -> ``inputs (n, C, s, s)`` float32.
    """
    from jnet.transforms import direct
    from jnet.transforms import slicing as pre

    method = (meta.normalisation or {}).get("method", pre.NORMALISATION["method"])
    if method != pre.NORMALISATION["method"]:
        raise DataError(f"{source}: the model was trained with normalisation {method!r}; this jnet "
                        f"implements {pre.NORMALISATION['method']!r} only")
    if meta.in_size < meta.size:
        low, axis = direct.lowres_input(image, affine, meta.size, meta.in_size, str(meta.downsample),
                                        name=source)
    else:  # normalise writes C order: from a file's Fortran order one copy first is faster
        low, axis = pre.image_slices(np.ascontiguousarray(image), affine, meta.size, name=source)
    return np.ascontiguousarray(low, dtype=np.float32), axis


def postprocess(logits: np.ndarray, axis: int, shape: Sequence[int], meta: ModelMeta,
                probabilities: bool = False, encoded: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Logits on the ``S`` grid -> labels (and probabilities) on the volume's voxel grid.

    Returns:
        ``(labels, codes, probs)``: labels in the dataset's values (``decode_label``), laid out in
        NIfTI's voxel order; the cached-label encoding (``encoded``, else None); probabilities
        (``probabilities``, else None).
    Shape: ``logits (n, classes, S, S)`` -> ``(X, Y, Z)``, ``(X, Y, Z)``, ``(classes, X, Y, Z)``.
    """
    import torch

    from jnet.transforms import tasks
    from jnet.transforms import slicing as pre

    t = torch.from_numpy(logits)
    codes = tasks.label_from_logits(t, meta.task["kind"]).numpy()
    # decoded on the S x S slices, before the volume's (usually larger) grid multiplies the voxels
    decoded = tasks.decode_label(codes, meta.task)
    labels = pre.slices_to_volume(decoded, axis, shape, fortran=True)
    volume_codes = None
    if encoded:
        volume_codes = labels if decoded is codes else pre.slices_to_volume(codes, axis, shape)
    probs = None
    if probabilities:
        probs = pre.slices_to_volume(tasks.probabilities(t, meta.task["kind"]).numpy(), axis, shape)
    return labels, volume_codes, probs


def _header(item: Item) -> Any | None:
    """The NIfTI header to copy onto the outputs (a BraTS folder: its first image file)."""
    import nibabel as nib

    path = item.path
    if item.kind == "brats":
        files = sorted(p for p in path.iterdir() if is_nifti(p) and not is_hidden(p))
        path = files[0]
    return nib.load(path).header


def predict_item(predictor: Predictor, item: Item, files: dict[str, Path], *,
                 batch_size: int | None = None, write: bool = True,
                 file_channels: Sequence[str] | None = None) -> dict[str, Any]:
    """Predict one input and write its outputs; return its JSON record (timings in seconds).

    The work around the model runs on the predictor's ``pre_post_threads`` torch threads. If
    writing fails part-way, the outputs of this input already written are removed."""
    with torch_threads(predictor.pre_post_threads):
        return _predict_item(predictor, item, files, batch_size, write, file_channels)


def _predict_item(predictor: Predictor, item: Item, files: dict[str, Path], batch_size: int | None,
                  write: bool, file_channels: Sequence[str] | None) -> dict[str, Any]:
    import jnet.transforms.direct  # noqa: F401 - imported before the clock starts: time work, not imports
    import jnet.transforms.slicing  # noqa: F401
    import jnet.transforms.tasks  # noqa: F401

    meta, source, timing = predictor.meta, str(item.path), {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timing[stage] = now - clock
        clock = now

    if item.kind == "nnunet":
        loaded = load_channel_files(item.files, list(meta.channels))
    else:
        loaded = load_volume(item.path, list(meta.channels) if item.kind != "png" else None,
                             file_channels)
    header = None if item.png else _header(item)
    check_volume(loaded.image, meta, source)
    lap("load")
    inputs, axis = preprocess(loaded.image, loaded.affine, meta, source)
    lap("preprocess")
    logits = predictor.predict(inputs, batch_size=batch_size)
    lap("model")
    shape = loaded.image.shape[1:]
    labels, encoded, probs = postprocess(logits, axis, shape, meta, "probabilities" in files,
                                         encoded="overlay" in files)
    lap("postprocess")
    if write:
        written: list[Path] = []
        try:
            _write(item, files, loaded, header, labels, encoded, probs, axis, meta, written)
        except BaseException:
            # each file is atomic (a failed one keeps its previous version); the set is made so here
            for path in written:
                path.unlink(missing_ok=True)
            raise
    lap("write")
    counts = label_counts(labels, meta.task)
    return {
        "input": source, "outputs": {k: str(v) for k, v in files.items()},
        "backend": predictor.backend, "shape": list(shape), "channels": int(loaded.image.shape[0]),
        "slices": int(inputs.shape[0]), "axis": axis,
        "labels": counts,
        "timing_s": {k: round(timing[k], 6) for k in STAGES},
        "total_s": round(sum(timing.values()), 6),
        "status": "ok",
    }


def label_counts(labels: np.ndarray, task: dict) -> dict[str, int]:
    """Voxels per label value present, e.g. ``{"0": 2031187, "1": 16813}``: one comparison pass per
    value the task can write (np.unique sorts, bincount first widens every voxel to int64)."""
    from jnet.transforms import tasks

    values = np.unique(tasks.decode_label(np.arange(tasks.code_count(task)), task))
    flat = labels.ravel(order="K")  # a view in the volume's own memory order
    counts = {str(int(v)): int(np.count_nonzero(flat == v)) for v in values}
    return {v: c for v, c in counts.items() if c}


def _write(item: Item, files: dict[str, Path], loaded: Any, header: Any, labels: np.ndarray,
           encoded: np.ndarray, probs: np.ndarray | None, axis: int, meta: ModelMeta,
           written: list[Path]) -> None:
    """Write the outputs of one input, appending each finished file to ``written``."""
    if item.png:
        write_png(files["mask"], labels[:, :, 0])
        written.append(files["mask"])
        if probs is not None:
            with atomic_write(files["probabilities"], "wb") as f:
                np.save(f, probs[..., 0].astype(np.float32))
            written.append(files["probabilities"])
    else:
        if len(header.get_data_shape()) == 2:  # a 2D input, read as one slice: 2D outputs
            labels, probs = labels[..., 0], None if probs is None else probs[..., 0]
        write_nifti(files["mask"], labels, loaded.affine, header)
        written.append(files["mask"])
        if probs is not None:  # (classes, X, Y[, Z]) -> (X, Y[, Z], classes), the MSD channel layout
            write_nifti(files["probabilities"], np.moveaxis(probs, 0, -1).astype(np.float32),
                        loaded.affine, header)
            written.append(files["probabilities"])
    if "overlay" in files:
        write_overlay(files["overlay"], loaded.image, encoded, axis, meta, title=item.name,
                      affine=None if item.png else loaded.affine)
        written.append(files["overlay"])


def predict_paths(model: Predictor | str | os.PathLike, inputs: Sequence[str | os.PathLike],
                  out: str | os.PathLike, *, overlay: bool = False, probabilities: bool = False,
                  overwrite: bool = False, batch_size: int | None = None, allow_no_metadata: bool = False,
                  trust_pickle: bool = False, threads: int | None = None, verify: bool = True,
                  file_channels: Sequence[str] | None = None,
                  echo: Any = None) -> list[dict[str, Any]]:
    """Segment every input and write masks (and optional extras) into ``out``.

    Args:
        model: a Predictor, or an ``.onnx`` file / run dir / checkpoint to open as one.
        inputs: NIfTI files (3D, or 4D with channels last as in MSD), BraTS case folders, PNG
            slices, or folders of those.
        out: output folder (created).
        overlay: also write ``NAME_overlay.png`` (the slice with the most foreground).
        probabilities: also write ``NAME_prob.nii.gz`` (``(X, Y, Z, classes)`` float32; PNG
            inputs: ``NAME_prob.npy`` ``(classes, H, W)``).
        overwrite: replace existing outputs (otherwise any existing output is an error, raised
            before anything runs).
        batch_size: slices per model call (default: ``Predictor.auto_batch_size``).
        allow_no_metadata: accept an .onnx file without jnet metadata.
        trust_pickle: load an old pickled checkpoint.
        verify: check the model file's recorded SHA-256 first.
        file_channels: the channel names of 4D NIfTI inputs in file order, where no
            ``dataset.json`` beside them names them (an MSD file outside its task folder).
        threads: intra-op threads of the backend.
        echo: called with each JSON line as it is produced (the CLI prints it).
    Returns:
        One record per input: ``status`` ``"ok"`` with outputs, shape, label voxel counts and
        ``timing_s`` per stage, or ``"failed"`` with ``error`` (the input's outputs are removed).
    """
    if not isinstance(model, Predictor):
        model = Predictor.from_path(model, allow_no_metadata=allow_no_metadata,
                                    trust_pickle=trust_pickle, threads=threads, verify=verify)
    out = Path(out)
    items = discover_inputs(inputs, model.meta)
    if not items:
        raise DataError("predict: no inputs given")
    plan = [(item, item.outputs(out, overlay, probabilities)) for item in items]
    log_path = out / LOG_NAME
    existing = [str(p) for _, files in plan for p in files.values() if p.exists()]
    existing += [str(log_path)] if log_path.exists() else []
    if existing and not overwrite:
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise DataError(f"{out}: output(s) exist: {shown}; pass --overwrite to replace them")
    check_writable(out, what="predictions")
    from tqdm.auto import tqdm

    records, lines = [], []
    for item, files in tqdm(plan, desc="predict", unit="input", disable=None if len(plan) > 1 else True):
        try:
            record = predict_item(model, item, files, batch_size=batch_size,
                                  file_channels=file_channels)
        except Exception as e:  # noqa: BLE001 - one bad input must not stop the batch
            if len(plan) == 1:
                raise
            why = str(e) if isinstance(e, (JnetError, OSError)) else f"{type(e).__name__}: {e}"
            record = {"input": str(item.path), "status": "failed", "error": why.splitlines()[0]}
        records.append(record)
        lines.append(json.dumps(record, sort_keys=True))
        write_text(log_path, "\n".join(lines) + "\n")  # rewritten whole: atomic, never half a line
        if echo is not None:
            echo(lines[-1])
    return records


def summary_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    """One line per input: ``ok  INPUT -> MASK`` or ``failed  INPUT: why``, and a count."""
    def failure(r: dict[str, Any]) -> str:
        # errors name their file already ("a.nii.gz: not a NIfTI/gzip file ..."): not twice
        why = r["error"]
        return f"failed  {why}" if why.startswith(f"{r['input']}:") else f"failed  {r['input']}: {why}"

    lines = [f"ok      {r['input']} -> {r['outputs']['mask']}" if r["status"] == "ok" else failure(r)
             for r in records]
    failed = sum(r["status"] != "ok" for r in records)
    lines.append(f"{len(records) - failed} of {len(records)} input(s) predicted"
                 + (f", {failed} failed" if failed else ""))
    return lines


__all__ = ["Item", "summary_lines", "discover_inputs", "check_volume", "preprocess", "postprocess", "predict_item",
           "predict_paths", "write_nifti", "STAGES"]
