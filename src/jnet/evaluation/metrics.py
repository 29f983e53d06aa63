"""Overlap and boundary metrics (Jaccard, Dice, HD95) on MONAI, with an explicit empty-mask policy.

MONAI computes the numbers; this module fixes what they mean when a mask is empty (MONAI's
``ignore_empty=True`` default gives NaN for an empty ground truth, and its Hausdorff distance gives
NaN with a warning), converts spacing to millimetres per axis, and summarises per structure.
:class:`MetricsCollector` scores a split slice by slice and restacks each case's slices into a
volume for 3D metrics.

Empty policy (:data:`EMPTY_POLICY`), per image (or volume) and structure:

- prediction and ground truth both empty: Jaccard = Dice = 1, HD95 = 0 (a correct "nothing here");
- exactly one empty: Jaccard = Dice = 0, HD95 undefined (NaN). Undefined HD95 values are excluded
  from means and counted separately (``undefined`` in :func:`summarise`), never replaced by an
  arbitrary distance such as the image diagonal.

A structure predicted empty on every slice of a split is *degenerate* (``metrics.json``:
``degenerate``, :mod:`jnet.evaluation.degenerate`); its HD95 means are undefined (None), not the
0.00 its empty slices alone would give.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from jnet.errors import DataError
from jnet.evaluation.degenerate import EMPTY, ForegroundCounter, describe
from jnet.transforms.slicing import slices_to_volume

METRICS = ("jaccard", "dice", "hd95")
HD_PERCENTILE = 95.0
HD95_DEFINITION = ("MONAI compute_hausdorff_distance(percentile=95): the larger of the two directed "
                   "95th-percentile boundary distances, in mm (medpy's hd95 pools both directions)")

EMPTY_POLICY = {
    "both_empty": {"jaccard": 1.0, "dice": 1.0, "hd95": 0.0},
    "one_empty": {"jaccard": 0.0, "dice": 0.0, "hd95": "undefined (NaN): excluded from means, counted"},
}
EMPTY_POLICY_TEXT = (
    "both empty: Jaccard = Dice = 1, HD95 = 0; exactly one empty: Jaccard = Dice = 0, HD95 undefined "
    "(excluded from the HD95 means and counted in 'undefined')"
)


def _as_bool_tensor(x, name: str, ndim: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.dtype != torch.bool:
        raise DataError(f"{name}: expected a boolean mask array, found dtype {t.dtype}")
    if t.ndim != ndim:
        raise DataError(f"{name}: expected {ndim} dimensions, found shape {tuple(t.shape)}")
    return t.detach().cpu()


def _check_pair(pred, gt, ndim: int, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    p = _as_bool_tensor(pred, f"pred {layout}", ndim)
    g = _as_bool_tensor(gt, f"gt {layout}", ndim)
    if p.shape != g.shape:
        raise DataError(f"pred and gt: expected equal shapes {layout}, "
                        f"found {tuple(p.shape)} and {tuple(g.shape)}")
    return p, g


def _check_spacing(spacing, n: int, dims: int) -> np.ndarray:
    """Spacing as an ``(n, dims)`` float64 array of positive, finite millimetres."""
    s = np.asarray(spacing, dtype=np.float64)
    if s.shape == (dims,):
        s = np.broadcast_to(s, (n, dims))
    if s.shape != (n, dims):
        raise DataError(f"spacing: expected shape ({dims},) or ({n}, {dims}) in mm, found {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise DataError(f"spacing: expected positive finite mm, found {s.reshape(-1)[:6].tolist()}")
    return s


def _overlap_and_hd95(p: torch.Tensor, g: torch.Tensor, spacing: np.ndarray) -> dict[str, np.ndarray]:
    """Core on ``(B, K, *spatial)`` bool tensors and ``(B, dims)`` spacing; returns ``(B, K)`` arrays."""
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

    pf, gf = p.float(), g.float()
    # ignore_empty=False is MONAI's "both empty -> 1, gt empty and pred not -> 0", i.e. our policy.
    jaccard = compute_iou(pf, gf, include_background=True, ignore_empty=False).numpy().astype(np.float64)
    dice = compute_dice(pf, gf, include_background=True, ignore_empty=False).numpy().astype(np.float64)

    b, k = p.shape[:2]
    flat_p = p.flatten(2).any(-1)
    flat_g = g.flatten(2).any(-1)
    hd95 = np.full((b, k), np.nan)
    hd95[(~flat_p & ~flat_g).numpy()] = 0.0
    both = (flat_p & flat_g).nonzero().tolist()
    if both:
        idx_b = [i for i, _ in both]
        idx_k = [j for _, j in both]
        # One MONAI call over all defined (image, structure) pairs, each with its image's spacing.
        sub_p = pf[idx_b, idx_k].unsqueeze(1)
        sub_g = gf[idx_b, idx_k].unsqueeze(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # empty-mask warnings cannot occur here; keep logs clean
            values = compute_hausdorff_distance(
                sub_p, sub_g, include_background=True, percentile=HD_PERCENTILE,
                spacing=[tuple(spacing[i]) for i in idx_b],
            )
        hd95[idx_b, idx_k] = values[:, 0].numpy().astype(np.float64)
    return {"jaccard": jaccard, "dice": dice, "hd95": hd95}


def slice_metrics(pred, gt, spacing) -> dict[str, np.ndarray]:
    """Jaccard, Dice and HD95 (mm) of each 2D image and structure, with :data:`EMPTY_POLICY`.

    Args:
        pred: predicted masks, boolean tensor or array.
        gt: ground-truth masks, same shape.
        spacing: pixel size in mm along (H, W): one ``(2,)`` for all images or ``(N, 2)`` per image;
            anisotropic spacing is supported.

    Returns:
        ``{"jaccard", "dice", "hd95"}``, each a float64 array ``(N, K)``; HD95 is NaN where exactly
        one of the two masks is empty.

    Shape: ``pred``, ``gt`` ``(N, K, H, W)`` -> ``(N, K)`` per metric.
    """
    p, g = _check_pair(pred, gt, 4, "(N, K, H, W)")
    s = _check_spacing(spacing, p.shape[0], 2)
    if p.shape[0] == 0:
        return {m: np.zeros((0, p.shape[1])) for m in METRICS}
    return _overlap_and_hd95(p, g, s)


def volume_metrics(pred, gt, spacing) -> dict[str, np.ndarray]:
    """3D Jaccard, Dice and HD95 (mm) of one restacked case, per structure, with :data:`EMPTY_POLICY`.

    Args:
        pred: predicted masks of the case's slices, stacked along the first axis.
        gt: ground-truth masks, same shape.
        spacing: voxel size in mm in the order of the array axes: ``(dz, dh, dw)`` (slice spacing,
            then the in-plane spacing along H and W).

    Returns:
        ``{"jaccard", "dice", "hd95"}``, each a float64 array ``(K,)``.

    A case of one slice (a 2D image) is scored as that slice (:func:`slice_metrics`): in 3D every
    pixel of a one-slice mask would be surface, and HD95 would measure areas, not contours.

    Shape: ``pred``, ``gt`` ``(Z, K, H, W)`` -> ``(K,)`` per metric.
    """
    p, g = _check_pair(pred, gt, 4, "(Z, K, H, W)")
    s = _check_spacing(spacing, 1, 3)
    if p.shape[0] == 1:
        return {m: v[0] for m, v in slice_metrics(p, g, s[0, 1:]).items()}
    # (Z, K, H, W) -> (1, K, Z, H, W): one "batch" item with K channels.
    out = _overlap_and_hd95(p.permute(1, 0, 2, 3).unsqueeze(0), g.permute(1, 0, 2, 3).unsqueeze(0), s)
    return {m: v[0] for m, v in out.items()}


def _float_or_none(x: float) -> float | None:
    # JSON has no NaN: an undefined value is written as null.
    return None if x is None or not math.isfinite(x) else float(x)


def jsonable(obj: Any) -> Any:
    """Plain JSON data: numpy numbers to Python ones, NaN/Inf to None (JSON has none)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def summarise(values: np.ndarray, names: Sequence[str], *, count_undefined: bool = False) -> dict:
    """Mean per structure and over structures, NaN-aware and JSON-ready.

    Args:
        values: one metric per item (slice or case) and structure; NaN = undefined.
        names: structure names, one per column.
        count_undefined: also report how many values were undefined (used for HD95).

    Returns:
        ``{"mean": float|None, "per_class": {name: float|None}, "std": {name: float|None}, "n": N}``
        plus ``"undefined": {name: int}`` and ``"n_undefined": int`` with ``count_undefined``.
        ``mean`` is the mean of the per-structure means; None where nothing was defined.

    Shape: ``values (N, K)``.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != len(names):
        raise DataError(f"metric values: expected shape (N, {len(names)}), found {v.shape}")
    defined = ~np.isnan(v)
    per_class, std = {}, {}
    for k, name in enumerate(names):
        col = v[defined[:, k], k]
        per_class[name] = _float_or_none(float(col.mean())) if col.size else None
        std[name] = _float_or_none(float(col.std())) if col.size else None
    means = [m for m in per_class.values() if m is not None]
    out = {
        "mean": float(np.mean(means)) if means else None,
        "per_class": per_class,
        "std": std,
        "n": int(v.shape[0]),
    }
    if count_undefined:
        undefined = {name: int((~defined[:, k]).sum()) for k, name in enumerate(names)}
        out["undefined"] = undefined
        out["n_undefined"] = int(sum(undefined.values()))
    return out


# --------------------------------------------------------------- accumulation over a split
class MetricsCollector:
    """Collects per-slice metrics and restacks each case's slices into a volume for 3D metrics.

    Slices may arrive in any order and batches may span cases; a case's volume is scored (and its
    memory freed) as soon as its last slice arrives, so a whole split never sits in memory.

    Args:
        cache_meta: the cache's ``prepared.json`` (cases with start, count, slice_indices, spacing).
        names: structure names (``tasks.structure_names``).
        native: also score each volume at its native in-plane resolution.
    """

    def __init__(self, cache_meta: dict, names: list[str], *, native: bool = False) -> None:
        self.names = list(names)
        self.native = native
        self.task = cache_meta.get("task")
        self.label_map = cache_meta.get("label_map")
        self.cases = cache_meta["cases"]
        starts = np.array([c["start"] for c in self.cases], dtype=np.int64)
        self._order = np.argsort(starts, kind="stable")
        self._starts = starts[self._order]
        self.slice_rows: list[dict] = []
        self.slice_values: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
        self.case_rows: list[dict] = []
        self.volume_values: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
        self.native_values: dict[str, list[np.ndarray]] = {f"volume_{m}": [] for m in METRICS}
        self.native_slices: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
        self.native_gt_exact = 0  # cases whose cached labels map back to the original ones exactly
        self.native_gt_files = 0  # cases scored against their label file itself
        self.native_rows: dict[str, dict] = {}  # case_id -> native per-case columns
        self._open: dict[int, dict] = {}
        self._indices: dict[str, list[int]] = {}
        self.n_gt_empty = np.zeros(len(self.names), dtype=np.int64)
        self.gt_present: list[np.ndarray] = []  # per slice (K,): the structure is in the ground truth
        self.foreground = ForegroundCounter(self.names)

    def case_of(self, index: int) -> int:
        """Position in ``cache_meta["cases"]`` of the case holding cache row ``index``."""
        j = int(np.searchsorted(self._starts, index, side="right")) - 1
        c = int(self._order[j]) if j >= 0 else -1
        if c < 0 or not self.cases[c]["start"] <= index < self.cases[c]["start"] + self.cases[c]["count"]:
            raise DataError(f"prepared.json: cache row {index} belongs to no case (start/count)")
        return c

    def add(self, index, pred, gt) -> None:
        """Score a batch of slices. Shape: ``index (B,)``, ``pred``/``gt`` ``(B, K, S, S)`` bool."""
        index = [int(i) for i in np.asarray(index).reshape(-1)]
        pred, gt = torch.as_tensor(pred).cpu(), torch.as_tensor(gt).cpu()
        case_ids = [self.case_of(i) for i in index]
        spacing = np.array([self.cases[c]["spacing"][:2] for c in case_ids], dtype=np.float64)
        values = slice_metrics(pred, gt, spacing)
        present = gt.flatten(2).any(-1).numpy()
        self.n_gt_empty += (~present).sum(0)
        self.gt_present.extend(present)
        self.foreground.add(pred, gt)
        for b, (row, c) in enumerate(zip(index, case_ids)):
            case = self.cases[c]
            local = row - case["start"]
            rec = {"index": row, "case_id": case["case_id"], "slice_index": self._slice_indices(case)[local]}
            for m in METRICS:
                self.slice_values[m].append(values[m][b])
                rec.update({f"{m}_{n}": values[m][b, k] for k, n in enumerate(self.names)})
            self.slice_rows.append(rec)
            self._add_to_volume(c, local, pred[b].numpy(), gt[b].numpy(), values["jaccard"][b])

    def _slice_indices(self, case: dict) -> list[int]:
        cid = case["case_id"]
        if cid not in self._indices:
            idx = case.get("slice_indices") or list(range(case["count"]))
            if len(idx) != case["count"] or len(set(idx)) != len(idx):
                raise DataError(f"prepared.json: case {cid}: slice_indices must be {case['count']} "
                                f"distinct values, found {len(idx)} ({len(set(idx))} distinct)")
            self._indices[cid] = [int(i) for i in idx]
        return self._indices[cid]

    def _add_to_volume(self, c: int, local: int, pred: np.ndarray, gt: np.ndarray, jac: np.ndarray) -> None:
        case = self.cases[c]
        if c not in self._open:
            idx = self._slice_indices(case)
            depth = max(idx) - min(idx) + 1
            shape = (depth,) + pred.shape
            self._open[c] = {"pred": np.zeros(shape, bool), "gt": np.zeros(shape, bool), "seen": set(),
                             "z0": min(idx), "idx": idx, "jaccard": []}
        vol = self._open[c]
        z = vol["idx"][local] - vol["z0"]
        vol["pred"][z], vol["gt"][z] = pred, gt
        vol["seen"].add(local)
        vol["jaccard"].append(jac)
        if len(vol["seen"]) == case["count"]:
            self._finish(c)

    def _finish(self, c: int) -> None:
        case, vol = self.cases[c], self._open.pop(c)
        sx, sy, sz = (float(v) for v in case["spacing"][:3])
        # Slices missing between slice_indices (keep_empty=False) are empty in both volumes, so the
        # slice spacing stays the real one.
        values = volume_metrics(vol["pred"], vol["gt"], (sz, sx, sy))
        row: dict[str, Any] = {"case_id": case["case_id"], "n_slices": len(vol["seen"])}
        for m in METRICS:
            self.volume_values[m].append(values[m])
            row.update({f"volume_{m}_{n}": values[m][k] for k, n in enumerate(self.names)})
        slice_jac = np.mean(np.stack(vol["jaccard"]), axis=0)
        row.update({f"slice_jaccard_{n}": slice_jac[k] for k, n in enumerate(self.names)})
        row["volume_jaccard"] = float(np.mean(values["jaccard"]))
        row["slice_jaccard"] = float(np.mean(slice_jac))
        self.case_rows.append(row)
        if self.native:
            self._score_native(case, vol["pred"], vol["gt"])

    def _score_native(self, case: dict, pred: np.ndarray, gt: np.ndarray) -> None:
        npred, ngt, spacing = native_volumes(case, pred, gt)
        from_file = self._label_file_masks(case, npred.shape)
        if from_file is not None:
            ngt = from_file
            self.native_gt_files += 1
        # Nearest-neighbour up then down at pixel centres is the identity: exact when S >= native.
        self.native_gt_exact += int(from_file is not None or max(npred.shape[-2:]) <= pred.shape[-1])
        values = volume_metrics(npred, ngt, spacing)
        row = {"native_ground_truth": "label file" if from_file is not None else "cache"}
        for m in METRICS:
            self.native_values[f"volume_{m}"].append(values[m])
            row.update({f"native_volume_{m}_{n}": values[m][k] for k, n in enumerate(self.names)})
        self.native_rows[case["case_id"]] = row
        z0 = min(self._slice_indices(case))
        rows = [i - z0 for i in self._slice_indices(case)]  # the cached slices, not the gaps
        per_slice = slice_metrics(npred[rows], ngt[rows], spacing[1:])
        for m in METRICS:
            self.native_slices[m].extend(list(per_slice[m]))

    def _label_file_masks(self, case: dict, shape: tuple) -> np.ndarray | None:
        """The case's label file as masks ``(n, K, A, B)`` over the cached slice range, or None
        when there is no readable file of the expected shape (then the cached label is used)."""
        from jnet.sources.readers import read_nifti
        from jnet.transforms import tasks

        path = case.get("label_file")
        if not path or self.task is None or not Path(path).is_file():
            return None
        try:
            label, _ = read_nifti(Path(path), label=True)
        except DataError:
            return None
        while label.ndim > 3 and label.shape[-1] == 1:
            label = label[..., 0]
        if self.label_map:
            mapped = np.zeros(label.shape, np.int64)
            for raw, value in self.label_map.items():
                mapped[label == int(raw)] = value
            label = mapped
        if list(label.shape) != [int(v) for v in case["original_shape"]][:3]:
            return None
        z0 = min(self._slice_indices(case))
        label = np.moveaxis(label, int(case["axis"]), 0)[z0:z0 + shape[0]]
        encoded = torch.from_numpy(tasks.encode_label(label, self.task).astype(np.int64))
        masks = tasks.masks_from_label(encoded, self.task["kind"], int(self.task["classes"])).numpy()
        return masks if masks.shape == tuple(shape) else None

    def flush(self) -> None:
        """Score cases whose slices did not all arrive (only the seen slices count)."""
        for c in sorted(self._open):
            self._finish(c)

    def summary(self) -> dict:
        """Slice and volume summaries (:func:`jnet.evaluation.metrics.summarise`) keyed like metrics.json."""
        self.flush()
        k = len(self.names)
        out: dict[str, Any] = {}
        for m in METRICS:
            sv = np.array(self.slice_values[m]).reshape(-1, k)
            vv = np.array(self.volume_values[m]).reshape(-1, k)
            out[m] = summarise(sv, self.names, count_undefined=m == "hd95")
            out[f"volume_{m}"] = summarise(vv, self.names, count_undefined=m == "hd95")
        # foreground-only slice means: the slices whose ground truth holds the structure
        present = np.array(self.gt_present, dtype=bool).reshape(-1, k)
        for m in ("jaccard", "dice"):
            sv = np.array(self.slice_values[m], dtype=np.float64).reshape(-1, k)
            out[f"foreground_{m}"] = summarise(np.where(present, sv, np.nan), self.names)
        out["hd95_undefined"] = out["hd95"]["n_undefined"]
        out["hd95_definition"] = HD95_DEFINITION
        out["n_slices"] = len(self.slice_rows)
        out["n_cases"] = len(self.case_rows)
        out["n_gt_empty"] = {n: int(v) for n, v in zip(self.names, self.n_gt_empty)}
        # A structure never predicted has HD95 0 on its empty slices and undefined elsewhere: its
        # mean would read 0.00, the best possible. It is degenerate, and its HD95 is undefined.
        kinds = self.foreground.kinds()
        out["degenerate"] = describe(kinds)
        out["degenerate_structures"] = {n: k for n, k in kinds.items() if k}
        for m in ("hd95", "volume_hd95"):
            for name, kind in kinds.items():
                if kind == EMPTY:
                    out[m]["per_class"][name] = out[m]["std"][name] = None
            means = [v for v in out[m]["per_class"].values() if v is not None]
            out[m]["mean"] = float(np.mean(means)) if means else None
        if self.native:
            native: dict[str, Any] = {}
            for m in METRICS:
                native[m] = summarise(np.array(self.native_slices[m]).reshape(-1, k), self.names,
                                      count_undefined=m == "hd95")
                native[f"volume_{m}"] = summarise(np.array(self.native_values[f"volume_{m}"]).reshape(-1, k),
                                                  self.names, count_undefined=m == "hd95")
            native["n_cases_gt_exact"] = self.native_gt_exact
            native["n_cases_gt_from_file"] = self.native_gt_files
            native["ground_truth"] = ("each case's label file, read again (with the cache's label map); "
                                      "where it is gone, the cached label mapped back by nearest neighbour "
                                      "(exact where S >= the native in-plane size)")
            out["native"] = native
        return out


def evaluate_masks(pred, gt, cache_meta: dict, names: list[str], index=None, *, native: bool = False) -> dict:
    """Metrics of given masks of cache rows (no model): the summary part of metrics.json.

    Args:
        pred: predicted masks.
        gt: ground-truth masks.
        cache_meta: the cache's prepared.json (for cases and spacing).
        names: structure names.
        index: cache row of each mask; default ``0..N-1``.
        native: also score at native resolution.

    Returns:
        The summary dict (see :meth:`MetricsCollector.summary`).

    Shape: ``pred``, ``gt`` ``(N, K, S, S)`` bool.
    """
    collector = MetricsCollector(cache_meta, names, native=native)
    n = len(pred)
    collector.add(np.arange(n) if index is None else index, pred, gt)
    return collector.summary()


def native_volumes(case: dict, pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Map a case's restacked masks from the ``S x S`` grid back to its native in-plane grid.

    Uses :func:`jnet.transforms.slicing.slices_to_volume` (nearest neighbour, the inverse of the
    cache's label resampling). The ground truth is the cached label mapped back the same way: it
    equals the original label exactly when the cache upsampled the plane (``S`` >= the native
    in-plane size) and approximates it otherwise.

    Args:
        case: the case's prepared.json entry (slice_indices, axis, original_shape, native_spacing).
        pred: predicted masks on the cache grid, slices ``min(slice_indices)..max(slice_indices)``.
        gt: ground-truth masks, same shape.

    Returns:
        ``(pred, gt, spacing)``: masks ``(n, K, A, B)`` of the case's original slices
        ``min..max(slice_indices)`` at native in-plane size, and ``(dz, da, db)`` in mm.

    Shape: ``(n, K, S, S)`` -> ``(n, K, A, B)``.
    """
    missing = [k for k in ("axis", "original_shape", "native_spacing") if k not in case]
    if missing:
        raise DataError(f"prepared.json: case {case.get('case_id')} lacks {', '.join(missing)} "
                        "needed for native-resolution metrics")
    axis = int(case["axis"])
    shape = [int(v) for v in case["original_shape"]][:3]
    plane = [i for i in range(3) if i != axis]
    spacing = [float(v) for v in case["native_spacing"]][:3]
    n, k = pred.shape[:2]
    sub_shape = list(shape)
    sub_shape[axis] = n  # only the slice range the cache holds; the rest is not scored
    out = []
    for masks in (pred, gt):
        per_structure = [np.moveaxis(slices_to_volume(masks[:, j], axis, sub_shape), axis, 0) for j in range(k)]
        out.append(np.stack(per_structure, axis=1))
    return out[0], out[1], (spacing[axis], spacing[plane[0]], spacing[plane[1]])
