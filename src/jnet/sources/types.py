"""The types every stage shares: a :class:`Case` on disk, a discovered :class:`DatasetSource`, a
:class:`LoadedCase` in memory, and the task kinds (:data:`TASK_KINDS`, listed only here). A leaf: it
imports no other jnet module but the errors, and nothing heavy (the CLI reads it for ``--help``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jnet.errors import DataError

if TYPE_CHECKING:
    import numpy as np

#: What a model predicts (see ``jnet.transforms.tasks``): the one list of task kinds.
TASK_KINDS = ("binary", "multiclass", "regions")


@dataclass(frozen=True)
class Case:
    """One patient: its files as found on disk (nothing read yet).

    ``label`` is None for unlabelled cases (MSD ``imagesTs``, BraTS validation folders). For PNG
    cases ``images`` are the slice files in slice order, ``labels`` the matching masks in the same
    order and ``label`` the mask folder (None when the split has no mask folder).
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None
    labels: tuple[Path, ...] = ()
    split: str | None = None


@dataclass(frozen=True)
class DatasetSource:
    """A discovered dataset: layout, edition, channel and label names, and its cases (by case_id).

    ``label_map`` (raw label value -> label value) is applied by :func:`load_case`; ``labels`` then
    names the mapped values. ``regions`` (name -> label values) are those the dataset itself
    declares (nnU-Net region labels); the known datasets' are in ``jnet.sources.labels.REGIONS``.
    """

    root: Path
    layout: str
    edition: str | None
    channels: tuple[str, ...]
    labels: dict[int, str]
    cases: tuple[Case, ...]
    label_map: dict[int, int] | None = None
    regions: dict[str, tuple[int, ...]] | None = None  # overlapping regions the dataset declares

    def case(self, case_id: str) -> Case:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise DataError(f"{self.root}: no case {case_id!r}")


@dataclass
class LoadedCase:
    """A case read into memory.

    Shape: ``image`` float32 ``(C, X, Y, Z)`` in the file's voxel order (PNG: ``(C, H, W, n_slices)``);
    ``label`` int16 ``(X, Y, Z)`` or None; ``affine`` ``(4, 4)`` float64 voxel -> world (mm; PNG:
    identity); ``spacing`` the voxel sizes in mm; ``channels`` the names of the image channels
    (empty when the file does not name them).
    """

    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]
    channels: tuple[str, ...] = ()

