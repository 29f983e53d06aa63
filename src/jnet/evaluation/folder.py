"""Score a folder of predicted masks against a folder of label files, as ``nnUNetv2_evaluate_folder``.

Files pair by name (``case.nii.gz`` in both folders; PNG masks, nnU-Net's 2D format, as
``case.png``: one slice of 1 mm pixels). Each pair is scored in its own voxel grid and
spacing (from the label file's affine), per structure: Dice, Jaccard, HD95 and surface Dice (NSD,
MONAI), with the empty-mask policy of :mod:`jnet.evaluation.metrics` (both empty: Dice = Jaccard =
NSD = 1, HD95 = 0; one empty: 0, HD95 undefined). A structure is a label value or a region (a set
of values, e.g. BraTS WT = 1, 2, 4). Writes ``summary.json`` and ``per_case.csv``.

HD95 is MONAI's: the larger of the two directed 95th-percentile surface distances (medpy's
``hd95`` takes the 95th percentile of both directions pooled, which is never larger).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from jnet.errors import ConfigError, DataError, JnetError
from jnet.evaluation.metrics import EMPTY_POLICY_TEXT, HD95_DEFINITION, jsonable, volume_metrics
from jnet.sources import readers
from jnet.sources.common import AFFINE_TOLERANCE, spacing_of
from jnet.utils.atomic import check_writable, write_json, write_text

SUMMARY, PER_CASE = "summary.json", "per_case.csv"


def parse_structures(text: str | None) -> dict[str, list[int]] | None:
    """``"PZ:1,TZ:2"`` or regions ``"WT:1+2+4,TC:1+4,ET:4"`` -> ``{name: values}``; None/empty -> None."""
    if text is None or not text.strip():
        return None
    out: dict[str, list[int]] = {}
    for item in text.split(","):
        name, sep, values = item.strip().partition(":")
        try:
            parsed = sorted({int(v) for v in values.split("+")}) if sep and name.strip() else None
        except ValueError:
            parsed = None
        if not parsed or any(v <= 0 for v in parsed):
            raise ConfigError(f"--labels: expected NAME:VALUE or NAME:V1+V2 items (values > 0), e.g. "
                              f"PZ:1,TZ:2 or WT:1+2+4, found {item.strip()!r}")
        out[name.strip()] = parsed
    return out


def structures_of(labels_dir: Path, gt_values: set[int]) -> dict[str, list[int]]:
    """The structures of a labels folder: the ``labels`` of a dataset.json beside it (nnU-Net: name
    -> value or region list; MSD: value -> name), else one structure per value found."""
    for manifest in (labels_dir.parent / "dataset.json", labels_dir / "dataset.json"):
        try:
            labels = json.loads(manifest.read_text()).get("labels")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(labels, dict) and labels:
            out: dict[str, list[int]] = {}
            for key, value in labels.items():
                if str(key).isdigit() and isinstance(value, str):  # MSD: "1": "PZ"
                    if int(key) > 0:
                        out[value] = [int(key)]
                elif isinstance(value, int) and value > 0:  # nnU-Net: "PZ": 1
                    out[key] = [value]
                elif isinstance(value, list) and value:  # nnU-Net region
                    out[key] = sorted(int(v) for v in value)
            if out:
                return out
    return {f"label {v}": [v] for v in sorted(gt_values) if v > 0}


def pair_files(pred_dir: Path, labels_dir: Path) -> tuple[list[tuple[Path, Path]], list[str], list[str]]:
    """``(pairs, predictions without a label, labels without a prediction)``, by file name."""
    def masks(folder: Path) -> dict[str, Path]:
        return {p.name: p for p in sorted(folder.iterdir())
                if p.is_file() and (readers.is_nifti(p) or readers.is_png(p)) and not readers.is_hidden(p)}

    preds, labels = masks(pred_dir), masks(labels_dir)
    pairs = [(preds[n], labels[n]) for n in sorted(preds) if n in labels]
    return pairs, sorted(set(preds) - set(labels)), sorted(set(labels) - set(preds))


def score_case(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float],
               structures: Mapping[str, Sequence[int]], tolerance_mm: float) -> dict[str, dict[str, float]]:
    """Per structure: dice, jaccard, hd95 (mm, NaN if exactly one mask is empty), nsd, and voxel counts."""
    from monai.metrics import compute_surface_dice

    names = list(structures)
    p = np.stack([np.isin(pred, structures[n]) for n in names])  # (K, X, Y, Z)
    g = np.stack([np.isin(gt, structures[n]) for n in names])
    spacing = tuple(float(s) for s in spacing)
    # volume_metrics takes (Z, K, X, Y) with the spacing of those axes; one slice is scored as one
    m = volume_metrics(torch.from_numpy(p).permute(3, 0, 1, 2), torch.from_numpy(g).permute(3, 0, 1, 2),
                       (spacing[2], spacing[0], spacing[1]))
    if p.shape[3] == 1:  # surface Dice along the contours of the slice, likewise
        p, g, spacing = p[..., 0], g[..., 0], spacing[:2]
    with warnings.catch_warnings():  # MONAI warns on empty masks: the policy above handles them
        warnings.simplefilter("ignore")
        nsd = compute_surface_dice(torch.from_numpy(p)[None].float(), torch.from_numpy(g)[None].float(),
                                   class_thresholds=[float(tolerance_mm)] * len(names),
                                   include_background=True, spacing=spacing)[0].numpy()
    out = {}
    for k, name in enumerate(names):
        empty = not p[k].any() and not g[k].any()
        out[name] = {"dice": float(m["dice"][k]), "jaccard": float(m["jaccard"][k]),
                     "hd95": float(m["hd95"][k]), "nsd": 1.0 if empty else float(nsd[k]),
                     "n_pred": int(p[k].sum()), "n_gt": int(g[k].sum())}
    return out


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if readers.is_png(path):
        return readers.read_png(path, mask=True)[..., None], np.eye(4)
    data, affine = readers.read_nifti(path, label=True)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:  # one slice
        data = data[..., None]
    if data.ndim != 3:
        raise DataError(f"{path}: a mask of shape {data.shape}; expected 2D (X, Y) or 3D (X, Y, Z)")
    return data, affine


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def evaluate_folder(pred_dir: str | os.PathLike, labels_dir: str | os.PathLike, *,
                    structures: Mapping[str, Sequence[int]] | None = None, out_dir: str | os.PathLike | None = None,
                    tolerance_mm: float = 1.0, overwrite: bool = False,
                    progress: bool = False) -> dict[str, Any]:
    """Score every prediction in ``pred_dir`` against the same-named label in ``labels_dir``.

    Args:
        pred_dir, labels_dir: folders of ``.nii``/``.nii.gz`` (or ``.png``) masks.
        structures: name -> label values (a region when several); default :func:`structures_of`.
        out_dir: where ``summary.json`` and ``per_case.csv`` go (default ``pred_dir``).
        tolerance_mm: the surface Dice tolerance.
        overwrite: replace an earlier summary.
    Returns:
        The summary: per structure the mean over cases (``mean``) and over cases where the
        structure is present in the labels (``foreground_mean``), per-case rows, the files left
        out (``unpaired``, ``failed``: one reason each) and the definitions used.
    Raises:
        DataError: a folder missing, no pair to score, an existing summary without ``overwrite``.
    """
    pred_dir, labels_dir = Path(pred_dir), Path(labels_dir)
    for folder, what in ((pred_dir, "predictions"), (labels_dir, "labels")):
        if not folder.is_dir():
            raise DataError(f"{folder}: {what} folder not found")
    out_dir = Path(out_dir) if out_dir is not None else pred_dir
    if (out_dir / SUMMARY).exists() and not overwrite:
        raise DataError(f"{out_dir / SUMMARY}: exists; pass --overwrite to replace it")
    if not tolerance_mm >= 0:
        raise ConfigError(f"--tolerance: expected a distance >= 0 mm, found {tolerance_mm}")
    check_writable(out_dir, what="evaluation summary")
    pairs, no_label, no_pred = pair_files(pred_dir, labels_dir)
    if not pairs:
        if not no_pred:
            raise DataError(f"{labels_dir}: no label file (.nii, .nii.gz, .png) to score against")
        if not no_label:
            raise DataError(f"{pred_dir}: no prediction (.nii, .nii.gz, .png) to score")
        raise DataError(f"{pred_dir}: no prediction has a same-named label file in {labels_dir}")
    from tqdm.auto import tqdm

    rows, failed, loaded = [], [], []
    for pred_path, gt_path in pairs:
        try:
            pred, pred_affine = _read(pred_path)
            gt, gt_affine = _read(gt_path)
            if pred.shape != gt.shape:
                raise DataError(f"{pred_path}: shape {pred.shape}, its label {gt_path} has {gt.shape}")
            if not np.allclose(pred_affine, gt_affine, atol=AFFINE_TOLERANCE):
                raise DataError(f"{pred_path}: its affine differs from {gt_path}'s (another voxel grid)")
            loaded.append((pred_path, gt_path, pred, gt, spacing_of(gt_affine)))
        except JnetError as e:
            failed.append({"file": pred_path.name, "error": str(e)})
    gt_values = {int(v) for case in loaded for v in np.unique(case[3])}
    names_from = dict(structures) if structures else structures_of(labels_dir, gt_values)
    for pred_path, gt_path, pred, gt, spacing in tqdm(loaded, desc="evaluate-folder", unit="case",
                                                      disable=not progress):
        scores = score_case(pred, gt, spacing, names_from, tolerance_mm)
        rows.append({"case": pred_path.name, "spacing_mm": list(spacing), "structures": scores})
    summary = {
        "pred_dir": str(pred_dir.resolve()), "labels_dir": str(labels_dir.resolve()),
        "structures": {k: list(v) for k, v in names_from.items()},
        "n_cases": len(rows), "tolerance_mm": tolerance_mm,
        "mean": _means(rows, names_from, foreground=False),
        "foreground_mean": _means(rows, names_from, foreground=True),
        "per_case": rows,
        "unpaired": {"predictions_without_label": no_label, "labels_without_prediction": no_pred},
        "failed": failed,
        "definitions": {"hd95": HD95_DEFINITION, "empty_policy": EMPTY_POLICY_TEXT,
                        "nsd": f"MONAI compute_surface_dice, tolerance {tolerance_mm} mm; both empty: 1"},
    }
    write_text(out_dir / PER_CASE, _csv(rows, names_from))
    write_json(out_dir / SUMMARY, jsonable(summary))
    return jsonable(summary)


def _means(rows: list[dict], structures: Mapping[str, Sequence[int]], foreground: bool) -> dict:
    """Per structure: the mean of each metric over the cases (or those that contain it), and a 95%
    interval over the cases for Dice, Jaccard and NSD (None below ``compare.MIN_CASES``)."""
    from jnet.evaluation.compare import case_interval

    out = {}
    for name in structures:
        scores = [r["structures"][name] for r in rows if not foreground or r["structures"][name]["n_gt"] > 0]
        out[name] = {m: _mean([s[m] for s in scores]) for m in ("dice", "jaccard", "hd95", "nsd")}
        out[name]["n_cases"] = len(scores)
        out[name]["hd95_undefined"] = sum(1 for s in scores if not math.isfinite(s["hd95"]))
        for m in ("dice", "jaccard", "nsd"):
            values = np.array([s[m] for s in scores], dtype=np.float64)
            interval = case_interval(values, np.ones(len(values)))
            out[name][f"{m}_interval"] = list(interval) if interval else None
    return out


def _csv(rows: list[dict], structures: Mapping[str, Sequence[int]]) -> str:
    buf = io.StringIO()
    fields = ["case"] + [f"{m}_{n}" for n in structures for m in ("dice", "jaccard", "hd95", "nsd")]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        row = {"case": r["case"]}
        for n in structures:
            for m in ("dice", "jaccard", "hd95", "nsd"):
                v = r["structures"][n][m]
                row[f"{m}_{n}"] = "" if not math.isfinite(v) else f"{v:.6g}"
        writer.writerow(row)
    return buf.getvalue()


def summary_table(summary: Mapping[str, Any]) -> str:
    """Markdown: per structure, the foreground-only means first, then the means over all cases."""
    lines = ["| structure | cases with it | Dice | Dice 95% interval | Jaccard | HD95 mm | NSD | "
             "Dice (all cases) | HD95 undef. |", "|---|---|---|---|---|---|---|---|---|"]

    def f(v: Any, digits: int = 4) -> str:
        return "n/a" if v is None else f"{v:.{digits}f}"

    for name, fg in summary["foreground_mean"].items():
        every = summary["mean"][name]
        interval = fg.get("dice_interval")
        shown = f"{interval[0]:.4f}-{interval[1]:.4f}" if interval else "n/a (too few cases)"
        lines.append(f"| {name} | {fg['n_cases']} | {f(fg['dice'])} | {shown} | {f(fg['jaccard'])} | "
                     f"{f(fg['hd95'], 2)} | {f(fg['nsd'])} | {f(every['dice'])} | {every['hd95_undefined']} |")
    return "\n".join(lines)
