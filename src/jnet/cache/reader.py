"""Read the slice cache: training pairs ``(low-res image, high-res label)``; no Lightning in here.

- :func:`open_prepared` checks a cache directory and maps its arrays (lazily, once per process:
  loader workers never receive a copy of the arrays, only the paths).
- :class:`SliceDataset` serves one split. ``dataset[i]`` is one sample; the DataLoader's batched
  path (``__getitems__``) reads a whole batch of rows from the memory maps at once (sorted rows),
  augments the batch with tensor ops (``jnet.transforms.augment``) and calls
  :func:`jnet.transforms.lowres.downsample` once per batch.
- :func:`make_loader` wraps a dataset in a DataLoader whose batches depend on the seed and epoch only.

The Lightning data module over these is ``jnet.training.datamodule.PreparedDataModule``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from jnet.cache.schema import IMAGES_FILE, LABELS_FILE, PREPARED_FILE, check_meta
from jnet.cache.splits import load_splits, split_indices
from jnet.errors import ConfigError, DataError
from jnet.transforms.augment import FLIP_EQUIVARIANT, augment_batch, augment_mode, batch_generator
from jnet.transforms.lowres import check_mode, downsample, downsample_mixed


class Prepared:
    """An opened slice cache: the checked ``prepared.json`` (``meta``) and its arrays.

    ``images`` ``(N, C, S, S)`` and ``labels`` ``(N, S, S)`` are read-only memory maps, opened on
    first use in each process; pickling (to loader workers) drops them.
    """

    def __init__(self, root: Path, meta: dict) -> None:
        self.root = root
        self.meta = meta
        cases = meta["cases"]
        self.case_ids = [c["case_id"] for c in cases]
        # Row -> (case number, slice index in the original volume), for batch metadata.
        self.row_case = np.repeat(np.arange(len(cases), dtype=np.int32),
                                  [c["count"] for c in cases])
        self.row_slice = np.concatenate(
            [np.asarray(c["slice_indices"], dtype=np.int64) for c in cases] or [np.zeros(0, np.int64)])
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        self._pid = -1

    @property
    def task(self) -> dict:
        return self.meta["task"]

    @property
    def channels(self) -> list[str]:
        return list(self.meta["channels"])

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @property
    def in_channels(self) -> int:
        return len(self.meta["channels"])

    @property
    def n_slices(self) -> int:
        return int(self.meta["n_slices"])

    @property
    def images(self) -> np.ndarray:
        return self._open()[0]

    @property
    def labels(self) -> np.ndarray:
        return self._open()[1]

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None or self._pid != os.getpid():
            self._arrays = tuple(_load_npy(self.root / name) for name in (IMAGES_FILE, LABELS_FILE))
            self._pid = os.getpid()
        return self._arrays

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None, "_pid": -1}


def open_prepared(root: str | os.PathLike) -> Prepared:
    """Open and check the slice cache in ``root``.

    Raises:
        DataError: naming the file, if ``prepared.json`` is missing, unreadable, of another format
            version or inconsistent, or if an array file is missing, truncated or of the wrong
            shape/dtype.
    """
    root = Path(root)
    path = root / PREPARED_FILE
    if not path.is_file():
        raise DataError(f"{root}: not a jnet slice cache ({PREPARED_FILE} missing); run `jnet data prepare`")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: corrupt or unreadable JSON ({e}); re-run `jnet data prepare`") from e
    check_meta(meta, path)
    n, c, s = meta["n_slices"], len(meta["channels"]), meta["size"]
    _check_npy(root / IMAGES_FILE, (n, c, s, s), np.dtype(meta["dtype"]))
    _check_npy(root / LABELS_FILE, (n, s, s), np.dtype(np.uint8))
    return Prepared(root, meta)


class SliceDataset(Dataset):
    """The slices of one split of a slice cache, as training pairs.

    Args:
        root: the cache directory (or an opened :class:`Prepared`).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        fold: the fold of ``splits.json`` for train/val.
        in_size: ``s``, the low-resolution input side.
        downsample: low-resolution simulation (:data:`jnet.transforms.lowres.DOWNSAMPLE_MODES`).
        augment: ``"none"``/False, ``"flip"``/True or ``"full"`` (module docstring).
        seed: seed of the augmentation.
        lowres_cache: compute the low-res images of the split once and keep them in memory
            (see :class:`PreparedDataModule`).
        train_downsample: with augmentation, each sample's input is made by one of these modes,
            drawn per sample (:func:`jnet.transforms.lowres.downsample_mixed`); None: ``downsample``.

    ``dataset[i]`` returns ``(lr_image, hr_label, meta)``: ``lr_image (C, s, s)`` float32,
    ``hr_label (S, S)`` uint8 and ``{"index": row, "case_id": str, "slice_index": int}``.
    ``dataset.__getitems__(positions)`` returns the batch ``(lr (B, C, s, s), hr (B, S, S),
    meta)`` with ``meta["index"]`` / ``meta["slice_index"]`` LongTensors ``(B,)`` and
    ``meta["case_id"]`` a list.
    """

    def __init__(self, root: str | os.PathLike | Prepared, split: str = "train", fold: int = 0,
                 in_size: int = 16, downsample: str = "area", augment: bool | str = False,
                 seed: int = 0, lowres_cache: bool = False,
                 train_downsample: Sequence[str] | None = None) -> None:
        self.prepared = root if isinstance(root, Prepared) else open_prepared(root)
        self.split, self.fold = split, fold
        self.in_size = check_in_size(in_size, self.prepared.size)
        self.downsample = check_mode(downsample)
        self.augment = augment_mode(augment)
        self.seed = int(seed)
        self.epoch = 0
        self.rows = split_indices(self.prepared, load_splits(self.prepared.root), split, fold)
        # several modes only where the batch is augmented (training): the others see downsample
        modes = tuple(check_mode(m) for m in train_downsample or ())  # checked either way
        self.modes = modes if modes and self.augment != "none" else None
        self._augment_low_res = self.augment == "none" or (
            self.augment == "flip" and self.downsample in FLIP_EQUIVARIANT and self.modes is None)
        if lowres_cache and not self._augment_low_res:
            raise ConfigError(
                f"data.lowres_cache: a fixed low-res cache needs augment none, or flip with downsample "
                f"{' or '.join(FLIP_EQUIVARIANT)}; found augment {self.augment!r}, downsample {self.downsample!r}")
        self.lowres_cache = bool(lowres_cache)
        self._lowres: torch.Tensor | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_lowres": None}  # each worker builds its own, if asked

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Vary the per-sample augmentation of ``dataset[i]`` by epoch (batches vary by their rows)."""
        self.epoch = int(epoch)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        if not -len(self) <= position < len(self):
            raise IndexError(f"position {position} out of range for {len(self)} slices")
        lr, hr, meta = self._batch([position % len(self)], extra=self.epoch)
        return lr[0], hr[0], {"index": int(meta["index"][0]), "case_id": meta["case_id"][0],
                              "slice_index": int(meta["slice_index"][0])}

    def __getitems__(self, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        return self._batch(positions)

    def _batch(self, positions: Sequence[int], extra: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
        positions = np.asarray(positions, dtype=np.int64)
        rows = self.rows[positions]
        order = np.argsort(rows, kind="stable")  # read the memory maps in row order...
        back = np.argsort(order)  # ...and hand the samples back in the requested order
        labels = torch.from_numpy(self.prepared.labels[rows[order]])
        generator = batch_generator(self.seed, extra, rows) if self.augment != "none" else None
        if self.lowres_cache:
            lr = self._lowres_images()[torch.from_numpy(positions[order])]  # self.rows is sorted
        else:
            images = torch.from_numpy(self.prepared.images[rows[order]]).float()
            if not self._augment_low_res:
                images, labels = augment_batch(images, labels, self.augment, generator, order=back)
                if self.modes:
                    return downsample_mixed(images, self.in_size, self.modes, generator), labels, self._meta(rows)
                return downsample(images, self.in_size, self.downsample), labels, self._meta(rows)
            lr = downsample(images, self.in_size, self.downsample)
        # Flips of the low-res image equal flips at high resolution here (module docstring).
        lr, labels = augment_batch(lr, labels, self.augment, generator, order=back)
        return lr, labels, self._meta(rows)

    def _meta(self, rows: np.ndarray) -> dict:
        return {"index": torch.from_numpy(rows),
                "case_id": [self.prepared.case_ids[i] for i in self.prepared.row_case[rows]],
                "slice_index": torch.from_numpy(self.prepared.row_slice[rows])}

    def _lowres_images(self) -> torch.Tensor:
        """The low-res images of every row of the split, computed once per process.

        Shape: ``(len(self), C, s, s)`` float32."""
        if self._lowres is None:
            chunks = [downsample(torch.from_numpy(self.prepared.images[self.rows[i:i + 256]]).float(),
                                 self.in_size, self.downsample) for i in range(0, len(self.rows), 256)]
            c = self.prepared.in_channels
            self._lowres = torch.cat(chunks) if chunks else torch.zeros(0, c, self.in_size, self.in_size)
        return self._lowres


class EpochSampler(Sampler[int]):
    """Positions ``0..n-1``, reshuffled each epoch from ``(seed, epoch)`` when ``shuffle``.

    Lightning calls :meth:`set_epoch`; without it each new iteration counts as the next epoch."""

    def __init__(self, n: int, shuffle: bool, seed: int = 0) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, int(seed)
        self.epoch, self._explicit = 0, False

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._explicit = int(epoch), True

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        if not self._explicit:
            self.epoch += 1
        return iter(order.tolist())


def _keep_batch(batch: Any) -> Any:
    return batch  # SliceDataset.__getitems__ already returns a collated batch


def make_loader(dataset: SliceDataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader that reads whole batches through ``SliceDataset.__getitems__``.

    ``drop_last`` drops a final incomplete batch, unless it would be the only batch."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"data.batch_size: expected a positive integer, found {batch_size!r}")
    drop = drop_last and len(dataset) >= batch_size
    # batch_size + sampler (not a batch_sampler) so that Lightning can swap in a
    # DistributedSampler under DDP and keep the batch size; the fetcher still reads whole
    # batches through __getitems__.
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(len(dataset), shuffle, seed),
                      drop_last=drop, collate_fn=_keep_batch, num_workers=num_workers,
                      persistent_workers=num_workers > 0, pin_memory=pin_memory)


def check_in_size(in_size: int, size: int) -> int:
    if not isinstance(in_size, int) or isinstance(in_size, bool) or not 1 <= in_size <= size:
        raise ConfigError(
            f"data.in_size: expected an integer in 1..{size} (the cache's size S), found {in_size!r}")
    return in_size


def _check_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Check an .npy file's header and size without mapping it."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            found_shape, _, found_dtype = read_header(f)
            offset = f.tell()
    except FileNotFoundError as e:
        raise DataError(f"{path}: missing; the slice cache is incomplete, re-run `jnet data prepare`") from e
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npy file ({e}); re-run `jnet data prepare`") from e
    if tuple(found_shape) != shape or found_dtype != dtype:
        raise DataError(f"{path}: expected an array {shape} {dtype}, found {tuple(found_shape)} {found_dtype}")
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if path.stat().st_size < expected:
        raise DataError(f"{path}: truncated: expected {expected} bytes, found {path.stat().st_size}")


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot map the array ({e}); re-run `jnet data prepare`") from e
