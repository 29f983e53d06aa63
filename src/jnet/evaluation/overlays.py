"""Overlay figures for evaluation: the low-resolution input, the prediction and the ground truth side
by side, one contour colour per structure. Matplotlib's object API on the Agg canvas: no pyplot
global state, no display needed."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from jnet.utils.atomic import atomic_path

# Distinct, colour-blind-friendly contour colours (matplotlib's tab10), one per structure.
COLOURS = ("#ff7f0e", "#2ca02c", "#d62728", "#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _contours(ax, masks: np.ndarray, size: int) -> None:
    centres = np.arange(size) + 0.5  # pixel centres in the panel's (0, size) extent
    for k, mask in enumerate(masks):
        if mask.any():  # matplotlib warns on a contour level that is never crossed
            ax.contour(centres, centres, mask.astype(np.float32), levels=[0.5],
                       colors=[COLOURS[k % len(COLOURS)]], linewidths=1.2)


def save_overlay(
    path: str | os.PathLike,
    image: np.ndarray,
    pred: np.ndarray,
    gt: np.ndarray,
    names: Sequence[str],
    *,
    title: str = "",
    channel_name: str = "",
) -> Path:
    """Write a three-panel PNG atomically: input, prediction contours, ground-truth contours.

    The input is shown at its own (low) resolution, stretched over the output grid with nearest
    interpolation, so that its pixels stay visible under the high-resolution contours.

    Args:
        path: the PNG to write.
        image: the low-resolution model input; only channel 0 is shown.
        pred: predicted masks, one per structure.
        gt: ground-truth masks, same shape as ``pred``.
        names: structure names, one per mask (legend).
        title: figure title (e.g. case id and score).
        channel_name: name of the displayed input channel.

    Returns:
        The path written.

    Shape: ``image (C, s, s)``, ``pred`` and ``gt`` ``(K, S, S)`` bool.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    image = np.asarray(image, dtype=np.float32)
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    size = pred.shape[-1]
    shown = image[0]
    finite = shown[np.isfinite(shown)]
    vmin, vmax = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))

    fig = Figure(figsize=(10.5, 3.9), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    s = image.shape[-1]
    panels = (
        (f"input {s}x{s}" + (f" ({channel_name})" if channel_name else ""), None),
        (f"prediction {size}x{size}", pred),
        (f"ground truth {size}x{size}", gt),
    )
    for ax, (label, masks) in zip(axes, panels):
        ax.imshow(shown, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest",
                  extent=(0, size, size, 0))
        if masks is not None:
            _contours(ax, masks, size)
        ax.set_title(label, fontsize=10)
        ax.set_axis_off()
    handles = [Line2D([], [], color=COLOURS[k % len(COLOURS)], label=name) for k, name in enumerate(names)]
    fig.legend(handles=handles, loc="lower center", ncol=max(1, len(handles)), frameon=False, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.85, bottom=0.1, wspace=0.04)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
