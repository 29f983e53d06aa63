"""Overlay figures for evaluation: the low-resolution input the model saw, and the high-resolution
image with the prediction (solid) and the ground truth (dashed) contoured in one panel, one colour
per structure, shown in the orientation radiological viewers use and framed on the anatomy (a
small head in a large field of view is shown large enough to read its contours). Matplotlib's
object API on the Agg canvas: no pyplot global state, no display needed."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from jnet.utils.atomic import atomic_path

# Distinct, colour-blind-friendly contour colours (matplotlib's tab10), one per structure.
COLOURS = ("#ff7f0e", "#2ca02c", "#d62728", "#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def radiological(affine: np.ndarray | None, axis: int):
    """A function that turns a slice (rows, columns = the volume's in-plane axes, in order) into the
    radiological view: patient's right on the viewer's left, anterior (axial) or superior
    (coronal, sagittal) at the top, anterior on the left in sagittal views. Identity without an
    affine. Works on ``(..., rows, cols)`` arrays."""
    if affine is None:
        def same(a: np.ndarray) -> np.ndarray:
            return np.asarray(a)

        same.edges = None  # type: ignore[attr-defined]
        return same
    plane = [i for i in range(3) if i != axis]
    dirs = np.asarray(affine, dtype=np.float64)[:3, plane]  # world (RAS) direction of rows, cols
    dominant = [int(np.argmax(np.abs(dirs[:, j]))) for j in range(2)]  # 0 = x (R), 1 = y (A), 2 = z (S)
    # the horizontal axis is the more left-right one (anterior-posterior in a sagittal slice)
    horizontal = min(range(2), key=lambda j: (dominant[j], -abs(dirs[dominant[j], j])))
    vertical = 1 - horizontal
    # increasing column -> patient left (-x) or posterior (-y); increasing row -> posterior or inferior
    flip_cols = dirs[dominant[horizontal], horizontal] > 0
    flip_rows = dirs[dominant[vertical], vertical] > 0

    def view(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        if horizontal == 0:  # rows run left-right: swap to make them the columns
            a = np.swapaxes(a, -1, -2)
        if flip_cols:
            a = a[..., :, ::-1]
        if flip_rows:
            a = a[..., ::-1, :]
        return a

    view.edges = ("R", "L") if dominant[horizontal] == 0 else ("A", "P")  # type: ignore[attr-defined]
    return view


def _contours(ax, masks: np.ndarray, size: int, style: str = "solid") -> None:
    centres = np.arange(size) + 0.5  # pixel centres in the panel's (0, size) extent
    for k, mask in enumerate(masks):
        if mask.any():  # matplotlib warns on a contour level that is never crossed
            ax.contour(centres, centres, mask.astype(np.float32), levels=[0.5],
                       colors=[COLOURS[k % len(COLOURS)]], linewidths=1.3, linestyles=style)


def save_overlay(
    path: str | os.PathLike,
    image: np.ndarray,
    pred: np.ndarray,
    gt: np.ndarray,
    names: Sequence[str],
    *,
    title: str = "",
    channel_name: str = "",
    high_res: np.ndarray | None = None,
    affine: np.ndarray | None = None,
    axis: int = 2,
) -> Path:
    """Write a two-panel PNG atomically: the model's input, and the high-resolution image with the
    prediction (solid) and ground-truth (dashed) contours.

    Args:
        path: the PNG to write.
        image: the low-resolution model input; only channel 0 is shown.
        pred: predicted masks, one per structure.
        gt: ground-truth masks, same shape as ``pred``.
        names: structure names, one per mask (legend).
        title: figure title (e.g. case id, slice number and score).
        channel_name: name of the displayed input channel.
        high_res: the slice at the masks' resolution (channel 0 shown); default: the input
            stretched (nearest) over the output grid.
        affine, axis: the volume's affine and slice axis, for the radiological orientation.

    Returns:
        The path written.

    Shape: ``image (C, s, s)``, ``high_res (C, S, S)``, ``pred`` and ``gt`` ``(K, S, S)`` bool.
    """
    fig = _figure((8.6, 4.6))
    ax_low, ax_high = fig.subplots(1, 2)
    s, size = _row(ax_low, [ax_high], image, high_res, [pred], gt, radiological(affine, axis))
    channel = f" ({channel_name})" if channel_name else ""
    ax_low.set_title(f"model input {s}x{s}{channel}", fontsize=10)
    ax_high.set_title(f"{size}x{size}: prediction (solid), ground truth (dashed)", fontsize=10)
    _legend(fig, names)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.09, wspace=0.04)
    return _save(fig, path)


def save_comparison(path: str | os.PathLike, rows: Sequence[dict], models: Sequence[str],
                    names: Sequence[str], *, title: str = "") -> Path:
    """Write a PNG atomically that compares models on the same slices: one row per slice, the
    model input first, then one panel per model with its prediction (solid) and the ground truth
    (dashed) contoured on the high-resolution image, titled with the slice's Jaccard.

    Args:
        path: the PNG to write.
        rows: one dict per slice: ``label`` (row name), ``image`` (the model input), ``high_res``,
            ``gt``, ``preds`` (model name -> masks), ``jaccard`` (model name -> the slice's mean
            Jaccard over structures), and optionally ``affine`` and ``axis`` (orientation).
        models: the models to show, in column order (keys of each row's ``preds``).
        names: structure names, one per mask (legend).
        title: figure title.

    Returns:
        The path written.

    Shape: ``image (C, s, s)``, ``high_res (C, S, S)``, ``gt`` and each prediction ``(K, S, S)`` bool.
    """
    if not rows:
        raise ValueError("save_comparison: no rows to draw")
    fig = _figure((2.6 * (len(models) + 1), 2.75 * len(rows) + 0.5))
    axes = fig.subplots(len(rows), len(models) + 1, squeeze=False)
    for r, row in enumerate(rows):
        s, _ = _row(axes[r][0], axes[r][1:], row["image"], row["high_res"],
                    [row["preds"][model] for model in models], row["gt"],
                    radiological(row.get("affine"), int(row.get("axis", 2))))
        if r == 0:
            axes[r][0].set_title(f"model input {s}x{s}", fontsize=8)
        axes[r][0].text(-0.04, 0.5, row.get("label", ""), transform=axes[r][0].transAxes, rotation=90,
                        ha="right", va="center", fontsize=8)
        for c, model in enumerate(models, start=1):
            axes[r][c].set_title(f"{model}: Jaccard {row['jaccard'][model]:.2f}", fontsize=8)
    _legend(fig, names)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0.02, 0.05, 1, 0.95 if title else 1))
    return _save(fig, path)


def _row(ax_low, pred_axes, image: np.ndarray, high_res: np.ndarray | None, preds: Sequence[np.ndarray],
         gt: np.ndarray, view) -> tuple[int, int]:
    """One slice: the model input on ``ax_low``, and each prediction with the ground truth on the
    high-resolution image (the input stretched where there is none) on ``pred_axes``, all shown
    in ``view`` and framed on the same region; returns ``(s, S)``."""
    low = view(np.asarray(image, dtype=np.float32)[0])
    high = view(np.asarray(high_res, dtype=np.float32)[0]) if high_res is not None else low
    gt = view(np.asarray(gt, dtype=bool))
    preds = [view(np.asarray(p, dtype=bool)) for p in preds]
    _image(ax_low, low, "")
    for ax, pred in zip(pred_axes, preds):
        _panel(ax, high, pred, gt, view)
    size = gt.shape[-1]
    box = _zoom(high, size, gt, *preds)  # one frame per row: the panels stay comparable
    _frame(ax_low, box, size, low.shape[-1])
    for ax in pred_axes:
        _frame(ax, box, size, size)
    return low.shape[-1], size


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def grey_window(a: np.ndarray) -> tuple[float, float]:
    """The 1st-99th percentile grey window (robust to a few bright voxels)."""
    finite = a[np.isfinite(a)]
    return tuple(np.percentile(finite, [1, 99])) if finite.size else (0.0, 1.0)


def _image(ax, a: np.ndarray, title: str, size: int | None = None) -> None:
    lo, hi = grey_window(a)
    extent = (0, size, size, 0) if size else None
    ax.imshow(a, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", extent=extent)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)


def _panel(ax, high: np.ndarray, pred: np.ndarray, gt: np.ndarray, view) -> int:
    """The high-resolution image with the ground truth (dashed) and the prediction (solid)
    contoured, a banner where nothing is predicted, and the patient's sides; returns S."""
    size = pred.shape[-1]
    _image(ax, high, "", size)
    _contours(ax, gt, size, "dashed")
    _contours(ax, pred, size, "solid")
    if not pred.any():
        ax.text(0.5, 0.04, "no foreground predicted", transform=ax.transAxes, ha="center",
                va="bottom", color="white", fontsize=9,
                bbox={"facecolor": "#d62728", "alpha": 0.8, "edgecolor": "none"})
    if view.edges:  # the radiological convention, said on the image
        left, right = view.edges
        ax.text(0.01, 0.5, left, transform=ax.transAxes, color="yellow", fontsize=8, va="center")
        ax.text(0.99, 0.5, right, transform=ax.transAxes, color="yellow", fontsize=8, va="center",
                ha="right")
    return size


def _zoom(image: np.ndarray, size: int, *masks: np.ndarray) -> tuple[float, float, float, float]:
    """The square ``(x0, x1, y0, y1)``, in pixels of the ``size x size`` panel, that holds the
    anatomy (pixels of ``image`` away from the background value of its border), the masks and a
    margin: a small head in a large field of view is shown large enough to read its contours. The
    whole field where the background is not uniform."""
    scale = size / image.shape[-1]  # the image may be the input, on a coarser grid
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    lo, hi = grey_window(image)
    rows, cols = np.nonzero(np.abs(image - np.median(border)) > 0.1 * max(hi - lo, 1e-6))
    boxes = [(rows.min() * scale, (rows.max() + 1) * scale, cols.min() * scale, (cols.max() + 1) * scale)] \
        if rows.size else []
    for m in masks:
        r, c = np.nonzero(np.asarray(m).reshape(-1, size, size).any(0))
        if r.size:
            boxes.append((r.min(), r.max() + 1, c.min(), c.max() + 1))
    if not boxes:
        return 0.0, float(size), 0.0, float(size)
    top, bottom = min(b[0] for b in boxes), max(b[1] for b in boxes)
    left, right = min(b[2] for b in boxes), max(b[3] for b in boxes)
    side = min(float(size), max(size / 4, 1.1 * max(bottom - top, right - left) + 4))
    x0, y0 = (min(max((a + b) / 2 - side / 2, 0.0), size - side) for a, b in ((left, right), (top, bottom)))
    return x0, x0 + side, y0, y0 + side


def _frame(ax, box: tuple[float, float, float, float], size: int, shown: int) -> None:
    """Show ``box`` (in pixels of the ``size`` grid) of a panel drawn on a ``shown`` grid: the
    ``S x S`` panels span (0, S), an input of ``s x s`` pixels spans (-0.5, s - 0.5)."""
    x0, x1, y0, y1 = (v * shown / size for v in box)
    shift = 0.0 if shown == size else -0.5
    ax.set_xlim(x0 + shift, x1 + shift)
    ax.set_ylim(y1 + shift, y0 + shift)  # rows grow downwards


def _legend(fig, names: Sequence[str]) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=COLOURS[k % len(COLOURS)], label=name) for k, name in enumerate(names)]
    handles += [Line2D([], [], color="gray", label="prediction"),
                Line2D([], [], color="gray", linestyle="dashed", label="ground truth")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
