"""The Lightning data module: train/val/test/predict loaders over a slice cache (``jnet.cache``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from jnet.cache.reader import SliceDataset, check_in_size, make_loader, open_prepared
from jnet.transforms.augment import augment_mode
from jnet.transforms.lowres import check_mode


class PreparedDataModule(pl.LightningDataModule):
    """Train/val/test/predict loaders over a slice cache.

    Args:
        root: the cache directory.
        in_size: ``s``, the low-resolution input side.
        downsample: low-resolution simulation (``area``, ``nearest``, ``gaussian``).
        batch_size: training batch size; ``eval_batch_size`` (default: the same) for the others.
        num_workers: loader worker processes (persistent).
        fold: the fold of ``splits.json``.
        augment: training augmentation, ``"flip"``/True (as published), ``"full"`` or False.
        seed: seed of shuffling and augmentation.
        drop_last: drop the last incomplete training batch (BatchNorm cannot train on one sample
            at a 1x1 bottleneck); kept when it is the only batch.
        predict_split: the split the predict loader serves.
        lowres_cache: keep the low-res images of each split in memory (computed once per process;
            ``C * s * s * 4`` bytes per slice); only with augment none/flip and an area or gaussian
            downsample, where flipping the low-res image equals flipping at high resolution.

    Batches: ``(lr (B, C, s, s) float32, hr_label (B, S, S) uint8, meta)``, ``meta`` with
    ``index`` and ``slice_index`` LongTensors ``(B,)`` and ``case_id`` a list of strings.
    Attributes from prepared.json: ``task``, ``channels``, ``size``, ``in_channels``, ``classes``.
    """

    def __init__(self, root: str | os.PathLike, in_size: int, downsample: str = "area",
                 batch_size: int = 16, num_workers: int = 0, fold: int = 0,
                 augment: bool | str = True, seed: int = 0, eval_batch_size: int | None = None,
                 drop_last: bool = True, predict_split: str = "test", pin_memory: bool = False,
                 lowres_cache: bool = False, train_downsample: Sequence[str] | None = None) -> None:
        super().__init__()
        self.root = Path(root)
        self.prepared = open_prepared(self.root)
        self.in_size = check_in_size(in_size, self.prepared.size)
        self.downsample = check_mode(downsample)
        self.augment = augment_mode(augment)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.fold, self.seed = num_workers, fold, int(seed)
        self.drop_last, self.predict_split, self.pin_memory = drop_last, predict_split, pin_memory
        self.lowres_cache = lowres_cache
        self.train_downsample = tuple(train_downsample) if train_downsample else None
        self.task = self.prepared.task
        self.channels = self.prepared.channels
        self.size = self.prepared.size
        self.in_channels = self.prepared.in_channels
        self.classes = int(self.task["classes"])
        self._datasets: dict[str, SliceDataset] = {}

    def dataset(self, split: str) -> SliceDataset:
        """The dataset of ``split`` (train is augmented; the others are not)."""
        if split not in self._datasets:
            self._datasets[split] = SliceDataset(
                self.prepared, split, self.fold, self.in_size, self.downsample,
                self.augment if split == "train" else "none", self.seed, self.lowres_cache,
                self.train_downsample if split == "train" else None)
        return self._datasets[split]

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                  "predict": (self.predict_split,)}.get(stage or "", ("train", "val", "test"))
        for split in wanted:
            self.dataset(split)

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        return make_loader(self.dataset(split), self.batch_size if train else self.eval_batch_size,
                           shuffle=train, seed=self.seed, drop_last=train and self.drop_last,
                           num_workers=self.num_workers, pin_memory=self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split)

