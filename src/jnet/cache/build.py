"""``jnet data prepare``: dataset files -> the slice cache that training and evaluation read.

The cache (schema in docs/design.md) holds every labelled case cut into slices along its
superior-inferior axis, normalised and resampled to ``S x S`` by :mod:`jnet.transforms.slicing`:
``images.npy`` ``(N, C, S, S)``, ``labels.npy`` ``(N, S, S)`` uint8 in the task's encoding,
``splits.json`` (patient-level, :mod:`jnet.cache.splits`) and ``prepared.json`` (written last).

How it stays safe and small:

- Cases are processed one per worker process; each worker writes its case's slices to a part file,
  so memory is bounded by one case per worker, never the dataset. The parent then copies the parts
  in case-id order into the memory-mapped ``.npy`` files, so the output does not depend on
  ``workers``.
- The whole directory is built under a temporary name beside ``out`` and renamed into place at the
  end (:func:`jnet.utils.atomic.atomic_dir`): a crash leaves no directory at ``out`` that looks like a cache.
- An existing ``out`` is replaced only with ``overwrite=True`` and only if it is a jnet cache (has
  ``prepared.json``); the old cache is removed only after the new one is complete.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from jnet import __version__
from jnet.cache.schema import DTYPES, FORMAT_VERSION, IMAGES_FILE, LABELS_FILE, PREPARED_FILE
from jnet.cache.splits import given_splits, make_splits, write_splits
from jnet.errors import ConfigError, DataError
from jnet.sources.common import select_channels
from jnet.sources.labels import make_task
from jnet.sources.registry import discover, load_case
from jnet.transforms.slicing import NORMALISATION, image_slices, label_to_slices, slice_spacing
from jnet.transforms.tasks import encode_label
from jnet.utils.atomic import atomic_dir, claim_dir, write_json
from jnet.utils.options import choose


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to turn one case into cache rows (picklable)."""

    index: int
    source: Any  # jnet.sources.types.DatasetSource
    case: Any  # jnet.sources.types.Case
    channels: tuple[str, ...] | None
    task: dict
    allowed: frozenset[int]
    size: int
    dtype: str
    keep_empty: bool
    parts: Path


def prepare_dataset(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str | None = None,
    task: str | dict = "binary",
    structures: Sequence[str] | None = None,
    channels: Sequence[str] | None = None,
    size: int = 256,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    folds: int = 1,
    seed: int = 0,
    splits_file: str | os.PathLike | None = None,
    workers: int = 1,
    keep_empty: bool = True,
    label_map: Mapping[int, int] | None = None,
    dtype: str = "float16",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Build the slice cache of the dataset at ``src`` in the directory ``out``.

    Args:
        src: the dataset (MSD task folder, BraTS folder, PNG slice folders).
        out: the cache directory to create.
        format: dataset layout (``msd``, ``nnunet``, ``brats``, ``png``); None detects it.
        task: task kind (``binary``, ``multiclass``, ``regions``) or a ready task dict.
        structures: the structures the task predicts (names from the dataset); None = default.
        channels: channel names to keep, in cache order; None keeps all.
        size: ``S``, the side of the square grid every slice is resampled to.
        val_fraction, test_fraction, folds, seed: patient-level splits (:mod:`jnet.cache.splits`).
        splits_file: use this split instead (jnet's splits.json or nnU-Net's splits_final.json;
            :func:`jnet.cache.splits.given_splits`); the fractions, folds and seed are then unused.
        workers: worker processes reading cases in parallel (1 = in this process).
        keep_empty: keep slices without foreground; False drops them (recorded per case in
            ``slice_indices`` and as ``keep_empty`` in prepared.json).
        label_map: source label value -> label value, applied when reading (e.g. ``{255: 1}``).
        dtype: ``float16`` (default) or ``float32`` for ``images.npy``.
        overwrite: replace ``out`` if it is an existing jnet cache.
        progress: show a progress bar.
    Returns:
        ``out`` as an absolute path.
    Raises:
        DataError: unreadable or inconsistent data, label values outside the declared labels,
            an existing ``out`` that may not be replaced.
        ConfigError: bad options.
    """
    src, out = Path(src).absolute(), Path(out).absolute()
    _check_options(size, dtype, workers)
    _check_target(out, src, overwrite)

    source = discover(src, format=format, label_map=label_map)
    task_dict = make_task(source, task, structures) if isinstance(task, str) else dict(task)
    if source.label_map:  # predictions are written back in the files' own values (255, not 1)
        task_dict["file_values"] = file_values(source.label_map)
    chosen = _choose_channels(source, channels)
    cases = sorted((c for c in source.cases if c.label is not None or c.labels), key=lambda c: c.case_id)
    if not cases:
        raise DataError(f"{src}: no labelled cases found; the cache needs images with labels")
    allowed = frozenset({0} | {int(v) for v in source.labels}
                        | {int(v) for values in task_dict["labels"].values() for v in values})
    # Splits depend on the case ids only: made first, so a bad split request fails before the work.
    if splits_file is not None:
        splits = given_splits(splits_file, [c.case_id for c in cases])
    else:
        splits = make_splits([c.case_id for c in cases], seed=seed, val_fraction=val_fraction,
                             test_fraction=test_fraction, folds=folds,
                             fixed={c.case_id: c.split for c in cases})
    # Each job carries the source without its case list (pickled once per case for the workers).
    bare = dataclasses.replace(source, cases=())
    selected = None if channels is None else tuple(chosen)

    with atomic_dir(out) as tmp:  # replaces an old cache only once the new one is complete
        parts = tmp / "parts"
        parts.mkdir()
        jobs = [_Job(i, bare, case, selected, task_dict, allowed, size, dtype, keep_empty, parts)
                for i, case in enumerate(cases)]
        results = list(_run(jobs, workers, progress))
        entries = _assemble(tmp, results, len(chosen), size, dtype, progress)
        shutil.rmtree(parts)
        write_splits(tmp, splits)
        write_json(tmp / PREPARED_FILE, {
            "format_version": FORMAT_VERSION,
            "jnet_version": __version__,
            "layout": source.layout,
            "source": str(source.root),
            "edition": source.edition,
            "task": task_dict,
            "label_map": ({str(k): int(v) for k, v in sorted(source.label_map.items())}
                          if source.label_map else None),
            "channels": list(chosen),
            "size": size,
            "dtype": dtype,
            "normalisation": dict(NORMALISATION),
            "keep_empty": bool(keep_empty),
            "n_slices": sum(e["count"] for e in entries),
            "cases": entries,
        })
    return out


def file_values(label_map: Mapping[int, int]) -> dict[str, int]:
    """``{mapped value: the raw value written back}`` of a ``--label-map`` (the first raw value of
    each mapped one): ``0:0,255:1`` -> ``{"0": 0, "1": 255}``."""
    back: dict[str, int] = {}
    for raw, mapped in sorted(label_map.items()):
        back.setdefault(str(mapped), int(raw))
    return back


def _check_options(size: int, dtype: str, workers: int) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"data.size: expected a positive integer (e.g. 256), found {size!r}")
    choose(dtype, DTYPES, "data.dtype")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers: expected an integer >= 1, found {workers!r}")


def _check_target(out: Path, src: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that may not be replaced (:func:`jnet.utils.atomic.claim_dir`), or that
    holds the dataset itself."""
    if not claim_dir(out, overwrite, marker=PREPARED_FILE, what="jnet slice cache"):
        return
    if src.resolve() == out.resolve() or out.resolve() in src.resolve().parents:
        raise DataError(f"{out}: the dataset {src} lies inside the output directory; refusing to replace it")


def _choose_channels(source: Any, channels: Sequence[str] | None) -> list[str]:
    """The dataset's names of the requested channels (case-insensitive), in the requested order."""
    if isinstance(channels, str):
        channels = [channels]
    if channels is not None and not channels:
        raise ConfigError(f"data.channels: expected at least one channel of {', '.join(source.channels)}")
    return [source.channels[i] for i in select_channels(source.channels, channels)]


def _run(jobs: list[_Job], workers: int, progress: bool) -> Iterator[dict]:
    """Run :func:`_prepare_case` over ``jobs``; yields results in job order."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="prepare", unit="case", disable=not progress)
    try:
        if workers == 1 or len(jobs) == 1:
            for job in jobs:
                yield _prepare_case(job)
                bar.update()
            return
        # spawn, not fork: a forked child of a process that already ran torch's thread pools can hang.
        pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=get_context("spawn"),
                                   initializer=_init_worker)
        try:
            for result in pool.map(_prepare_case, jobs):
                yield result
                bar.update()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    finally:
        bar.close()


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # the workers already use the cores; nested threads only contend


def _prepare_case(job: _Job) -> dict:
    """Load, check, normalise and slice one case; write its rows to part files.

    Returns the case's prepared.json entry (without ``start``) plus the part file names."""
    case = job.case
    loaded = load_case(job.source, case, channels=job.channels)
    if loaded.label is None:
        raise DataError(f"case {case.case_id}: expected a label, found none")
    label = np.asarray(loaded.label)
    if tuple(label.shape) != tuple(loaded.image.shape[1:]):
        raise DataError(
            f"case {case.case_id}: image shape {tuple(loaded.image.shape[1:])} and label shape "
            f"{tuple(label.shape)} differ ({_label_file(case)})"
        )
    _check_label_values(label, job.allowed, case)
    shape = [int(v) for v in label.shape]
    affine = np.asarray(loaded.affine, dtype=np.float64)
    spacing = [float(v) for v in loaded.spacing]
    image = loaded.image
    del loaded  # keep at most one reference to the volume
    images, axis = image_slices(image, affine, job.size, name=f"case {case.case_id}")
    del image
    labels = label_to_slices(encode_label(label, job.task), axis, job.size)
    keep = np.ones(len(labels), bool) if job.keep_empty else labels.reshape(len(labels), -1).any(1)
    images = images[keep].astype(job.dtype)
    if not np.isfinite(images).all():
        raise DataError(f"case {case.case_id}: normalised intensities overflow {job.dtype}; use dtype float32")
    stem = f"{job.index:06d}"
    np.save(job.parts / f"{stem}_images.npy", images)
    np.save(job.parts / f"{stem}_labels.npy", np.ascontiguousarray(labels[keep]))
    return {
        "case_id": case.case_id,
        "count": int(keep.sum()),
        "slice_indices": [int(i) for i in np.flatnonzero(keep)],
        "axis": axis,
        "spacing": slice_spacing(spacing, shape, axis, job.size),
        "native_spacing": spacing,
        "original_shape": shape,
        "affine": affine.tolist(),
        # the label file itself, for scoring at the native grid (evaluate --native); PNG: per slice
        "label_file": str(case.label.resolve()) if case.label is not None and case.label.is_file() else None,
        "_part": stem,
    }


def _assemble(tmp: Path, results: list[dict], n_channels: int, size: int, dtype: str,
              progress: bool) -> list[dict]:
    """Copy the part files, in case order, into ``images.npy`` / ``labels.npy``; return the case
    entries with their ``start`` rows."""
    from tqdm.auto import tqdm

    total = sum(r["count"] for r in results)
    if total == 0:
        raise DataError(
            f"cache: no slices left ({len(results)} cases, all slices without foreground were "
            "dropped); keep empty slices or check the labels"
        )
    files = {IMAGES_FILE: (np.dtype(dtype), (total, n_channels, size, size)),
             LABELS_FILE: (np.dtype(np.uint8), (total, size, size))}
    for name, (dt, shape) in files.items():
        del_me = np.lib.format.open_memmap(tmp / name, mode="w+", dtype=dt, shape=shape)
        del del_me
    entries, start = [], 0
    for r in tqdm(results, desc="write", unit="case", disable=not progress, leave=False):
        entry = {k: v for k, v in r.items() if k != "_part"}
        entry["start"] = start
        for name, suffix in ((IMAGES_FILE, "images"), (LABELS_FILE, "labels")):
            part_path = tmp / "parts" / f"{r['_part']}_{suffix}.npy"
            part = np.load(part_path)
            # Re-open per case so written pages are released and RSS stays at about one case.
            target = np.load(tmp / name, mmap_mode="r+")
            target[start:start + r["count"]] = part
            target.flush()
            del target, part
            part_path.unlink()
        entries.append(entry)
        start += r["count"]
    return entries


def _check_label_values(label: np.ndarray, allowed: Iterable[int], case: Any) -> None:
    """Raise DataError listing the label values that are not declared (by the dataset or task)."""
    if label.dtype.kind == "f":
        if not np.isfinite(label).all() or (label != np.round(label)).any():
            raise DataError(f"{_label_file(case)}: expected integer label values, found non-integer floats")
        label = label.astype(np.int64)
    if label.size and label.min() >= 0 and label.max() < 1 << 16:
        values = np.flatnonzero(np.bincount(label.ravel().astype(np.int64)))
    else:
        values = np.unique(label)
    bad = sorted(int(v) for v in values if int(v) not in set(allowed))
    if bad:
        raise DataError(
            f"{_label_file(case)}: label values {bad} are not declared labels (expected a subset of "
            f"{sorted(allowed)}); pass a label map (e.g. --label-map 255:1) or fix the labels"
        )


def _label_file(case: Any) -> str:
    if case.label is not None:
        return str(case.label)
    if case.labels:
        return f"{Path(case.labels[0]).parent} (case {case.case_id})"
    return f"case {case.case_id}"

