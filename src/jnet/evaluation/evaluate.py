"""Evaluate a trained model on a prepared slice cache: metrics.json, per-case and per-slice CSVs,
overlay PNGs.

Every number is computed at the cache size ``S`` (the high-resolution grid): the model sees the
low-resolution input that training saw (``info["downsample"]``, through the dataset and
``jnet.transforms.lowres.downsample``; ``downsample=`` makes it another way, a robustness check), and a model whose eval output is smaller than ``S`` (a plain base at ``s``)
gets its logits upsampled bilinearly to ``S`` first, which is recorded. Metrics are per slice (2D)
and per case (the case's slices restacked into a volume), per structure, with the empty-mask policy
of :mod:`jnet.evaluation.metrics` (which also restacks volumes). ``native=True`` adds the same metrics on each
case's native voxel grid (:func:`jnet.evaluation.metrics.native_volumes`).
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from jnet import __version__
from jnet.cache.reader import SliceDataset, make_loader, open_prepared
from jnet.cache.schema import check_compatible
from jnet.errors import ConfigError, DataError, OutputError
from jnet.evaluation.compare import score_intervals
from jnet.evaluation.metrics import EMPTY_POLICY, EMPTY_POLICY_TEXT, MetricsCollector, jsonable
from jnet.models.blocks import upsample_bilinear
from jnet.training.checkpoint import load_model, resolve
from jnet.transforms import tasks
from jnet.transforms.lowres import check_mode
from jnet.utils.atomic import check_writable, output_error, swap_dir, write_json, write_text
from jnet.utils.options import choose

SPLITS = ("test", "val", "train", "all")
RESULT_FILES = ("metrics.json", "per_case.csv", "per_slice.csv", "overlays")


# ----------------------------------------------------------------------------- inputs and checks
def _check_spacing(cache_meta: dict, path: Path) -> None:
    lacking = [c.get("case_id", str(i)) for i, c in enumerate(cache_meta["cases"])
               if not (isinstance(c.get("spacing"), list) and len(c["spacing"]) >= 3)]
    if lacking:
        raise DataError(f"{path}: cases without a 3-value 'spacing' (mm), needed for HD95: "
                        f"{', '.join(lacking[:10])}{' ...' if len(lacking) > 10 else ''}")


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    existing = [name for name in RESULT_FILES if (out_dir / name).exists()]
    if existing and not overwrite:
        raise DataError(f"{out_dir}: already holds evaluation results ({', '.join(existing)}); "
                        "pass overwrite=True (--overwrite) or choose another --out")
    check_writable(out_dir, what="evaluation results")  # before the slow part, not after it


# ----------------------------------------------------------------------------- the command
def evaluate(
    model: torch.nn.Module,
    info: dict,
    prepared_dir: str | os.PathLike,
    *,
    split: str = "test",
    fold: int = 0,
    out_dir: str | os.PathLike,
    batch_size: int = 32,
    native: bool = False,
    overlays: int = 3,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    quiet: bool = False,
    downsample: str | None = None,
) -> dict:
    """Predict every slice of a split, score it and write the results to ``out_dir``.

    Args:
        model: the model (put in eval mode here); eval output ``(B, classes, o, o)`` with ``o <= S``.
        info: the checkpoint info (``model`` config, ``task``, ``channels``, ``downsample``, ...).
        prepared_dir: the slice cache.
        split: ``test``, ``val`` (of ``fold``), ``train`` (of ``fold``) or ``all`` (every slice: for
            testing on another dataset).
        fold: the cross-validation fold for ``val`` / ``train``.
        out_dir: where metrics.json, per_case.csv, per_slice.csv and overlays/ are written.
        batch_size: slices per forward pass.
        native: also score at each case's native voxel grid.
        overlays: how many overlay PNGs (best, median, worst case by volume Jaccard; more are
            spread evenly over the ranking); 0 for none.
        device: torch device for the forward passes.
        overwrite: replace earlier results in ``out_dir`` instead of refusing.
        quiet: no progress bar.
        downsample: make the low-resolution inputs another way than in training (a
            ``data.downsample`` mode): how the model fares when the scanner's point-spread
            function is not the one it was trained on. None: as in training.

    Returns:
        The metrics.json content (``downsample``: the inputs' mode; ``trained_downsample``:
        training's).
    """
    from tqdm.auto import tqdm


    choose(split, SPLITS, "split")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: expected a positive integer, found {batch_size!r}")
    prepared_dir, out_dir = Path(prepared_dir), Path(out_dir)
    prepared = open_prepared(prepared_dir)
    cache_meta = prepared.meta
    check_compatible(info, cache_meta, prepared_dir)
    _check_spacing(cache_meta, prepared_dir / "prepared.json")

    task = cache_meta["task"]
    kind, classes, names = task["kind"], int(task["classes"]), tasks.structure_names(task)
    size = int(cache_meta["size"])
    config = dict(info.get("model") or getattr(model, "config", {}))
    in_size = int(getattr(model, "in_size", None) or config["in_size"])
    trained = info.get("downsample", "area")
    downsample = trained if downsample is None else check_mode(downsample)
    dataset = SliceDataset(prepared, split, fold=fold, in_size=in_size, downsample=downsample, augment=False)
    if len(dataset) == 0:
        raise DataError(f"{prepared_dir}: split {split!r} (fold {fold}) holds no slices")
    out_size = getattr(model, "out_size", None) or config.get("out_size")
    if out_size and int(out_size) > size:
        raise DataError(f"{prepared_dir / 'prepared.json'}: cache size {size} is smaller than the model's "
                        f"output size {out_size}; evaluate on a cache prepared at size >= {out_size}")
    loader = make_loader(dataset, batch_size)  # whole batches from the memory map, in row order
    _prepare_out_dir(out_dir, overwrite)  # before the long part: refuse or fail early

    model.eval().to(device)
    collector = MetricsCollector(cache_meta, names, native=native)
    picks: dict[int, tuple] = {}  # case -> (gt area, pred area, dataset position) of its overlay slice
    model_out: int | None = None
    position = 0
    with torch.inference_mode(), tqdm(total=len(dataset), desc="evaluate", unit="slice",
                                      disable=quiet) as bar:
        for lr, label, meta in loader:
            raw = model(lr.to(device=device, dtype=torch.float32))
            raw = raw[-1] if isinstance(raw, (list, tuple)) else raw
            model_out = int(raw.shape[-1])
            pred = tasks.masks_from_logits(_to_size(raw, size), kind).cpu()
            gt = tasks.masks_from_label(torch.as_tensor(label), kind, classes)
            index = torch.as_tensor(meta["index"]).tolist()
            collector.add(index, pred, gt)
            gt_area, pred_area = gt.flatten(1).sum(1).tolist(), pred.flatten(1).sum(1).tolist()
            for b, row in enumerate(index):
                c = collector.case_of(row)
                key = (gt_area[b], pred_area[b])
                if c not in picks or key > picks[c][:2]:
                    picks[c] = key + (position + b,)
            position += len(index)
            bar.update(len(index))

    summary = collector.summary()
    result = {
        **summary,
        # how far each mean could move on other test cases (None with too few cases)
        "interval": score_intervals(collector.case_rows, names),
        "model": config,
        "arch": config.get("arch"),
        "task": {"kind": kind, "names": list(task["names"]), "structures": names},
        "in_size": in_size,
        "out_size": size,
        "model_out_size": model_out,
        "logits_upsampled_from": model_out if model_out != size else None,
        "downsample": downsample,
        "trained_downsample": trained,
        "split": split,
        "fold": fold if split in ("val", "train") else None,
        "prepared": str(prepared_dir.resolve()),
        "dataset": {k: cache_meta.get(k) for k in ("layout", "source", "edition", "channels", "size")},
        "empty_policy": {"text": EMPTY_POLICY_TEXT, **EMPTY_POLICY},
        "native_resolution": native,
        "jnet_version": __version__,
        "model_jnet_version": info.get("jnet_version"),
        "checkpoint": info.get("checkpoint"),
    }
    # Everything slow happens before the first file is replaced; metrics.json goes last and marks
    # a complete evaluation. Each file (and the overlays folder) is swapped in atomically.
    staged = _render_overlays(out_dir, model, dataset, collector, picks, overlays, size=size, kind=kind,
                              classes=classes, names=names, channel=str(cache_meta["channels"][0]),
                              device=device) if overlays > 0 else None
    _write_csv(out_dir / "per_slice.csv", collector.slice_rows)
    _write_csv(out_dir / "per_case.csv", _case_columns(collector.case_rows, names, collector.native_rows))
    with _writing(out_dir / "overlays"):
        swap_dir(staged, out_dir / "overlays")
    with _writing(out_dir / "metrics.json"):
        write_json(out_dir / "metrics.json", jsonable(result))  # last: marks a complete evaluation
    return jsonable(result)


def evaluate_path(source: str | os.PathLike, data: str | os.PathLike, *, trust_pickle: bool = False,
                  verify: bool = True,
                  **kwargs: Any) -> dict:
    """Load a run directory or checkpoint (``checkpoint.load_model``) and :func:`evaluate` it.

    Args:
        source: run directory (its best checkpoint) or checkpoint file.
        data: the prepared slice cache.
        trust_pickle: allow a pickled (non weights-only) checkpoint; only for files you trust.
        verify: check the checkpoint's recorded SHA-256 first.
        **kwargs: passed to :func:`evaluate` (``out_dir`` is required).

    Returns:
        The metrics.json content (``checkpoint``: the checkpoint file used).
    """
    model, info = load_model(source, trust_pickle=trust_pickle, verify=verify)
    return evaluate(model, {**info, "checkpoint": str(resolve(source).resolve())}, data, **kwargs)


def _to_size(logits: torch.Tensor, size: int) -> torch.Tensor:
    out = logits.shape[-1]
    if out > size:
        raise DataError(f"model output {out}x{out} is larger than the cache size {size}x{size}; "
                        "evaluate on a cache prepared at the model's output size")
    if out < size:  # a plain base predicts at s: compare at S, upsampled as the baseline model does
        logits = upsample_bilinear(logits.float(), size)
    return logits


def _render_overlays(out_dir: Path, model, dataset, collector: MetricsCollector, picks: dict, count: int, *,
                     size: int, kind: str, classes: int, names: list[str], channel: str, device) -> Path:
    """Draw the overlay PNGs into a hidden staging folder in ``out_dir``; return the folder."""
    from jnet.evaluation.overlays import save_overlay

    ranked = sorted(collector.case_rows, key=lambda r: (-_nan_low(r["volume_jaccard"]), r["case_id"]))
    n = len(ranked)
    ranks = sorted({int(round(x)) for x in np.linspace(0, n - 1, min(count, n))})
    case_index = {case["case_id"]: i for i, case in enumerate(collector.cases)}
    with _writing(out_dir / "overlays"):
        tmp = Path(tempfile.mkdtemp(prefix=".overlays.", suffix=".partial", dir=out_dir))
    try:
        for rank in ranks:
            row = ranked[rank]
            tag = "best" if rank == 0 else "worst" if rank == n - 1 else (
                "median" if rank in ((n - 1) // 2, n // 2) else f"rank{rank + 1}")
            lr, label, meta = dataset[picks[case_index[row["case_id"]]][2]]
            with torch.inference_mode():  # the slice is predicted again rather than kept in memory
                raw = model(torch.as_tensor(lr)[None].to(device=device, dtype=torch.float32))
            raw = raw[-1] if isinstance(raw, (list, tuple)) else raw
            pred = tasks.masks_from_logits(_to_size(raw, size), kind)[0].cpu().numpy()
            gt = tasks.masks_from_label(torch.as_tensor(label)[None], kind, classes)[0].numpy()
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(row["case_id"]))
            title = (f"{row['case_id']} slice {int(meta['slice_index'])}: {tag}, "
                     f"volume Jaccard {row['volume_jaccard']:.3f}")
            name = f"{rank + 1:04d}_{tag}_{safe}.png"
            case = collector.cases[case_index[row["case_id"]]]
            high = np.asarray(dataset.prepared.images[int(meta["index"])], dtype=np.float32)
            with _writing(out_dir / "overlays" / name):
                save_overlay(tmp / name, torch.as_tensor(lr).numpy(), pred, gt, names, title=title,
                             channel_name=channel, high_res=high, affine=case.get("affine"),
                             axis=int(case.get("axis", 2)))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _nan_low(x: float) -> float:
    return -math.inf if x is None or not math.isfinite(x) else float(x)


def _case_columns(rows: list[dict], names: list[str], native: dict[str, dict] | None = None) -> list[dict]:
    """Per-case columns: volume figures first, then slice means, then the native-grid ones."""
    order = ["case_id", "n_slices", "volume_jaccard", "slice_jaccard"]
    for n in names:
        order += [f"volume_jaccard_{n}", f"volume_dice_{n}", f"volume_hd95_{n}", f"slice_jaccard_{n}"]
    extra = ["native_ground_truth"] + [f"native_volume_{m}_{n}" for n in names
                                       for m in ("jaccard", "dice", "hd95")] if native else []
    return [{**{k: r[k] for k in order}, **{k: native[r["case_id"]].get(k) for k in extra}}
            for r in rows]


def _cell(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(v) else f"{float(v):.6g}"
    return v


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Name ``path`` (not a staging file) when writing it fails (disk full, read-only)."""
    try:
        yield
    except (OSError, OutputError) as e:
        raise OutputError(f"{output_error(path, e)}; metrics.json was not updated") from e


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)
    with _writing(path):
        write_text(path, buf.getvalue())


def summary_table(metrics: dict) -> str:
    """A Markdown table of a metrics.json: one row per structure and the mean. Per-case (volume)
    figures lead, then the slice means over slices with the structure (foreground), then the
    slice means over every slice (empty slices that are predicted empty score 1)."""
    cols = (("volume_dice", "case Dice"), ("volume_jaccard", "case Jaccard"), ("volume_hd95", "case HD95 mm"),
            ("foreground_dice", "fg-slice Dice"), ("foreground_jaccard", "fg-slice Jaccard"),
            ("jaccard", "slice Jaccard"), ("dice", "slice Dice"), ("hd95", "slice HD95 mm"))

    def fmt(v: Any, key: str) -> str:
        if v is None:
            return "n/a"
        return f"{v:.2f}" if "hd95" in key else f"{v:.4f}"

    lines = ["| structure | " + " | ".join(h for _, h in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in metrics["jaccard"]["per_class"]:
        lines.append(f"| {name} | " + " | ".join(fmt(metrics.get(k, {}).get("per_class", {}).get(name), k)
                                                  for k, _ in cols) + " |")
    lines.append("| **mean** | " + " | ".join(fmt(metrics.get(k, {}).get("mean"), k) for k, _ in cols) + " |")
    return "\n".join(lines)
