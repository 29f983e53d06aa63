"""Overlay figures for evaluation: the low-resolution input the model saw, and the high-resolution
image with the prediction (solid) and the ground truth (dashed) contoured in one panel, one colour
per structure, shown in the orientation radiological viewers use. Matplotlib's object API on the
Agg canvas: no pyplot global state, no display needed."""
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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    view = radiological(affine, axis)
    low = view(np.asarray(image, dtype=np.float32)[0])
    high = view(np.asarray(high_res, dtype=np.float32)[0]) if high_res is not None else low
    pred, gt = view(np.asarray(pred, dtype=bool)), view(np.asarray(gt, dtype=bool))
    size = pred.shape[-1]

    def window(a: np.ndarray) -> tuple[float, float]:
        finite = a[np.isfinite(a)]
        return tuple(np.percentile(finite, [1, 99])) if finite.size else (0.0, 1.0)

    fig = Figure(figsize=(8.6, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    ax_low, ax_high = fig.subplots(1, 2)
    s = low.shape[-1]
    channel = f" ({channel_name})" if channel_name else ""
    ax_low.imshow(low, cmap="gray", vmin=window(low)[0], vmax=window(low)[1], interpolation="nearest")
    ax_low.set_title(f"model input {s}x{s}{channel}", fontsize=10)
    ax_high.imshow(high, cmap="gray", vmin=window(high)[0], vmax=window(high)[1], interpolation="nearest",
                   extent=(0, size, size, 0))
    _contours(ax_high, gt, size, "dashed")
    _contours(ax_high, pred, size, "solid")
    ax_high.set_title(f"{size}x{size}: prediction (solid), ground truth (dashed)", fontsize=10)
    if not pred.any():
        ax_high.text(0.5, 0.04, "no foreground predicted", transform=ax_high.transAxes, ha="center",
                     va="bottom", color="white", fontsize=10,
                     bbox={"facecolor": "#d62728", "alpha": 0.8, "edgecolor": "none"})
    for ax in (ax_low, ax_high):
        ax.set_axis_off()
    if view.edges:  # the radiological convention, said on the image
        left, right = view.edges
        ax_high.text(0.01, 0.5, left, transform=ax_high.transAxes, color="yellow", fontsize=9, va="center")
        ax_high.text(0.97, 0.5, right, transform=ax_high.transAxes, color="yellow", fontsize=9, va="center")
    handles = [Line2D([], [], color=COLOURS[k % len(COLOURS)], label=name) for k, name in enumerate(names)]
    handles += [Line2D([], [], color="gray", label="prediction"),
                Line2D([], [], color="gray", linestyle="dashed", label="ground truth")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.09, wspace=0.04)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
