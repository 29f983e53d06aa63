"""Prediction outputs, each written atomically: label maps as NIfTI (with the input's affine and
header) or PNG, and an overlay PNG of the most covered slice."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jnet.deploy.runtime import ModelMeta
from jnet.utils.atomic import atomic_write
from jnet.utils.gz import gzip_bytes

OVERLAY_MIN_SIDE = 256  # small images are enlarged (nearest) so the overlay stays readable


def label_dtype(labels: np.ndarray) -> type:
    return np.uint8 if labels.size == 0 or (labels.min() >= 0 and labels.max() <= 255) else np.int16


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, header: Any | None) -> None:
    """Write ``data`` with the input's affine and header (shape and dtype updated), atomically."""
    import nibabel as nib

    header = header.copy() if header is not None else None
    img = nib.Nifti1Image(data, affine, header=header)
    img.set_data_dtype(data.dtype)
    img.header.set_slope_inter(1.0, 0.0)  # values are stored as is, never rescaled
    payload = img.to_bytes()
    if path.name.lower().endswith(".gz"):
        # level 1: masks are mostly zeros and compress well anyway; higher levels only cost time
        payload = gzip_bytes(payload, level=1)
    with atomic_write(path, "wb") as f:
        f.write(payload)


def write_png(path: Path, labels: np.ndarray) -> None:
    """A 2D label PNG (8-bit, or 16-bit when a label value exceeds 255), atomically."""
    from PIL import Image

    image = Image.fromarray(labels.astype(np.uint8) if label_dtype(labels) is np.uint8
                            else labels.astype(np.uint16))
    with atomic_write(path, "wb") as f:
        image.save(f, format="PNG")


def write_overlay(path: Path, image: np.ndarray, encoded: np.ndarray, axis: int, meta: ModelMeta,
                  title: str = "", affine: np.ndarray | None = None) -> None:
    """The slice with the most predicted foreground (else the middle one), channel 0 in gray,
    each structure blended in its colour; with the volume's ``affine``, in the radiological view
    the evaluation overlays use (patient's right on the left), else as stored (PNG inputs).
    Shape: ``image (C, X, Y, Z)``, ``encoded (X, Y, Z)``."""
    import torch
    from PIL import Image

    from jnet.transforms import tasks
    # the evaluation overlays' colours, grey window and orientation rule
    from jnet.evaluation.overlays import COLOURS, grey_window, radiological

    view = radiological(affine, axis)
    enc = np.moveaxis(encoded, axis, 0)
    img = np.moveaxis(image[0], axis, 0)
    area = (enc > 0).reshape(len(enc), -1).sum(1)
    k = int(area.argmax()) if area.max() > 0 else len(enc) // 2
    enc_k = np.ascontiguousarray(view(enc[k]))
    gray = np.array(view(img[k]), dtype=np.float32)
    lo, hi = grey_window(gray)
    gray = np.clip((gray - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(gray[..., None] * 255.0, 3, axis=-1)
    masks = tasks.masks_from_label(torch.from_numpy(enc_k[None].astype(np.int64)),
                                   meta.task["kind"], int(meta.task["classes"]))[0].numpy()
    for i, mask in enumerate(masks):
        colour = COLOURS[i % len(COLOURS)].lstrip("#")
        rgb[mask] = 0.55 * rgb[mask] + 0.45 * np.array([int(colour[j:j + 2], 16) for j in (0, 2, 4)],
                                                       np.float32)
    picture = Image.fromarray(rgb.round().astype(np.uint8))
    scale = max(1, -(-OVERLAY_MIN_SIDE // max(1, min(gray.shape))))
    if scale > 1:
        picture = picture.resize((gray.shape[1] * scale, gray.shape[0] * scale), Image.NEAREST)
    with atomic_write(path, "wb") as f:
        picture.save(f, format="PNG", pnginfo=_png_text(title or f"slice {k} along axis {axis}"))


def _png_text(text: str):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Description", text)
    return info
