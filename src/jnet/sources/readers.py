"""Read one NIfTI or PNG file completely, or fail with a :class:`DataError` naming the file.

nibabel and Pillow open files lazily: a truncated file opens fine and fails only when its pixels
are read, and their messages do not always name the file. So every reader here sniffs the file's
signature first, reads every byte, and wraps any library error as ``DataError`` (the original
exception stays as ``__cause__``).
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from jnet.errors import DataError
from jnet.utils.gz import gunzip

NIFTI_SUFFIXES = (".nii.gz", ".nii")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GZIP_SIGNATURE = b"\x1f\x8b"
# sizeof_hdr, the first int32 of a NIfTI header, in either byte order.
NIFTI_HEADER_SIZES = {348: "NIfTI-1", 540: "NIfTI-2"}


def is_hidden(path: Path) -> bool:
    """True for hidden files, including the macOS ``._*`` resource forks found in the MSD archive."""
    return path.name.startswith(".")


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def is_png(path: Path) -> bool:
    return path.suffix.lower() == ".png"


def nifti_stem(path: Path) -> str:
    """File name without ``.nii.gz`` / ``.nii``: ``prostate_00.nii.gz`` -> ``prostate_00``."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _header_size(head: bytes) -> int | None:
    if len(head) < 4:
        return None
    for order in "<>":
        (size,) = struct.unpack(f"{order}i", head[:4])
        if size in NIFTI_HEADER_SIZES:
            return size
    return None


def _check_header(path: Path, head: bytes, available: int, what: str) -> None:
    """The first 4 bytes must be sizeof_hdr (348 or 540); the header and the 4 extension-flag
    bytes after it must be complete."""
    size = _header_size(head)
    if size is None:
        raise DataError(
            f"{path}: not a NIfTI file: {what} (sizeof_hdr 348 or 540 in the first 4 bytes), "
            f"found {head[:4].hex(' ') or 'nothing'}"
        )
    if available < size + 4:
        raise DataError(f"{path}: truncated NIfTI file: the header has {available} of {size + 4} bytes")


def _gzip_problem(path: Path) -> str | None:
    """Why the gzip stream of ``path`` does not decompress completely, or None (explains a failed read)."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    except EOFError:
        return "truncated .nii.gz file (the compressed stream ends early)"
    except (OSError, zlib.error) as e:
        return f"corrupt gzip stream ({e})"
    return None


def sniff(path: Path) -> None:
    """Check that ``path`` exists, is not empty and starts with the signature its extension promises.

    Raises:
        DataError: missing, empty, or wrong content for the extension (names the path).
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(8)
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        if not head.startswith(GZIP_SIGNATURE):
            raise DataError(
                f"{path}: not a NIfTI/gzip file: a .nii.gz file starts with the gzip signature 1f 8b, "
                f"found {head[:4].hex(' ')}"
            )
        try:
            with gzip.open(path, "rb") as f:
                inner = f.read(544)
        except EOFError as e:
            raise DataError(f"{path}: truncated .nii.gz file (the compressed stream ends early)") from e
        except (OSError, zlib.error) as e:
            raise DataError(f"{path}: corrupt gzip stream ({e})") from e
        _check_header(path, inner, len(inner), "gzip content does not start with a NIfTI-1/2 header")
    elif name.endswith(".nii"):
        with open(path, "rb") as f:
            inner = f.read(544)
        hint = " (this is gzip data: name it .nii.gz)" if head.startswith(GZIP_SIGNATURE) else ""
        _check_header(path, inner, size, f"expected a NIfTI-1/2 header{hint}")
    elif name.endswith(".png"):
        if not head.startswith(PNG_SIGNATURE):
            raise DataError(f"{path}: not a PNG file: the PNG signature is missing, found {head.hex(' ')}")


def _load_whole(path: Path):
    """A ``.nii.gz`` image decompressed in one call (nibabel's streaming reader decompresses in
    small blocks and copies them: the slowest part of predicting one volume)."""
    import nibabel as nib

    raw = gunzip(path.read_bytes())
    kind = nib.Nifti2Image if _header_size(raw[:4]) == 540 else nib.Nifti1Image
    return kind.from_bytes(raw)


def _float32_voxels(img) -> np.ndarray:
    """Every voxel of a nibabel image as float32 with the header's scaling, in the file's order.

    nibabel's ``get_fdata`` scales in float64 and then casts: 2.8x slower on an int16 volume with
    scl_slope/inter (82 against 29 ms for 15 M voxels, ``benchmarks/bench_nifti.py``) for the same
    values to a float32 rounding.
    """
    proxy = img.dataobj
    raw = np.asanyarray(proxy.get_unscaled()) if hasattr(proxy, "get_unscaled") else None
    if raw is None or raw.dtype.kind not in "biuf":
        return img.get_fdata(dtype=np.float32)
    # read with mmap=False, the raw voxels are a fresh buffer: float32 ones are scaled in place
    fresh = raw.flags.writeable and not isinstance(raw, np.memmap)
    data = raw.astype(np.float32, order="K", copy=not fresh)
    slope, inter = float(proxy.slope), float(proxy.inter)
    if slope != 1.0:
        data *= np.float32(slope)
    if inter != 0.0:
        data += np.float32(inter)
    return data


def read_nifti(path: Path, *, label: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read every voxel of a NIfTI file.

    Images come back as float32 with the header's scaling (scl_slope/inter) applied; labels as
    integer values (``int16``), refusing non-integer or non-finite values.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        label: read as a label map instead of an image.
    Returns:
        ``(data, affine)``; data keeps the file's shape and voxel order, affine is ``(4, 4)`` float64.
    Raises:
        DataError: the file is missing, empty, truncated, not NIfTI, or (label) not integer-valued.
    """
    import nibabel as nib

    path = Path(path)
    sniff(path)
    try:
        img = _load_whole(path) if path.name.lower().endswith(".gz") else nib.load(path, mmap=False)
        affine = np.asarray(img.affine, dtype=np.float64)
        # labels: the stored values with the scaling (as_label refuses non-integers below)
        data = np.asarray(img.dataobj) if label else _float32_voxels(img)
    except DataError:
        raise
    except EOFError as e:
        raise DataError(f"{path}: truncated .nii.gz file (the compressed stream ends early)") from e
    except Exception as e:  # nibabel/gzip/numpy raise many types for one cause: a bad file
        why = _gzip_problem(path) if path.name.lower().endswith(".gz") else None
        if why:
            raise DataError(f"{path}: {why}") from e
        # nibabel's messages span lines ("... - could the file be damaged?"): one line here
        detail = " ".join(str(e).replace(str(path), path.name).split())
        raise DataError(f"{path}: truncated or corrupt NIfTI file ({type(e).__name__}: {detail})") from e
    if label:
        data = as_label(data, path)
    return data, affine


def as_label(data: np.ndarray, path: Path | str) -> np.ndarray:
    """Integer-valued array -> ``int16``; non-integer, non-finite or out-of-range values raise.

    Shape: kept.
    """
    if data.dtype.kind == "b":
        return data.astype(np.int16)
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            raise DataError(f"{path}: label map has {int((~finite).sum())} NaN/Inf values; expected integers")
        frac = data != np.round(data)
        if frac.any():
            examples = np.unique(data[frac])[:5].tolist()
            raise DataError(
                f"{path}: label values must be integers, found {int(frac.sum())} non-integer values "
                f"(e.g. {examples})"
            )
    if data.size and (data.min() < np.iinfo(np.int16).min or data.max() > np.iinfo(np.int16).max):
        raise DataError(f"{path}: label values must fit int16, found range [{data.min()}, {data.max()}]")
    return data.astype(np.int16)


# Pillow modes with one value per pixel (PNG stores 16-bit gray as I;16, Pillow may say I).
_GRAY_MODES = ("1", "L", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")
_MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N")


def png_is_colour(mode: str) -> bool:
    """True when a PNG of this Pillow mode loads as three channels R, G, B (see read_png)."""
    return mode not in _GRAY_MODES and mode not in ("LA", "La")


def png_mode(path: Path) -> str:
    """Pillow mode of a PNG from its header only (cheap; does not read pixels)."""
    from PIL import Image

    sniff(path)
    try:
        with Image.open(path) as im:
            return im.mode
    except Exception as e:
        raise DataError(f"{path}: not a readable PNG ({type(e).__name__}: {e})") from e


def read_png(path: Path, *, mask: bool = False) -> np.ndarray:
    """Read every pixel of a PNG.

    Images: grayscale modes (1, L, I;16, I, F) -> ``(H, W)`` float32 with the stored values (no
    /255, a 16-bit PNG keeps 0..65535); RGB/RGBA/palette -> ``(H, W, 3)`` float32 (alpha dropped).
    Masks: single-channel (1, L, P indices, I;16, I) -> ``(H, W)`` int16 with the stored values;
    colour masks are refused.

    Raises:
        DataError: missing, empty, truncated, not PNG, or a colour mask (names the file and shape).
    """
    from PIL import Image

    path = Path(path)
    sniff(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mask:
                if mode in _MASK_MODES:
                    return as_label(np.asarray(im), path)
                shape = (im.height, im.width, len(im.getbands()))
                raise DataError(
                    f"{path}: a mask must be a single-channel PNG (grayscale or palette), found mode "
                    f"{mode} with shape {shape}; save masks as 8-bit grayscale with one value per label"
                )
            if mode in _GRAY_MODES:
                return np.asarray(im).astype(np.float32)
            if mode in ("LA", "La"):
                return np.asarray(im.convert("L")).astype(np.float32)
            return np.asarray(im.convert("RGB")).astype(np.float32)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: truncated or corrupt PNG file ({type(e).__name__}: {e})") from e
