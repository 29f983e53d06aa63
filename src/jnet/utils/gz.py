"""Whole-buffer gzip, with ISA-L (python-isal, a dependency: 2-4x zlib's speed) when it imports,
else the standard library. Both produce and read standard gzip streams."""
from __future__ import annotations

import gzip
import zlib


def gunzip(data: bytes) -> bytes:
    """Decompress a whole gzip stream. A truncated stream raises EOFError, a corrupt one OSError
    (whichever library found it)."""
    try:
        from isal import igzip
        from isal.isal_zlib import error as library_error
    except ImportError:
        igzip, library_error = gzip, zlib.error
    try:
        return igzip.decompress(data)
    except library_error as e:
        raise OSError(f"corrupt gzip stream ({e})") from e


def gzip_bytes(data: bytes, level: int = 1) -> bytes:
    """Compress ``data`` as one gzip member with mtime 0 (the same bytes in, the same bytes out)."""
    try:
        from isal import igzip
    except ImportError:
        return gzip.compress(data, compresslevel=level, mtime=0)
    return igzip.compress(data, compresslevel=min(level, 3), mtime=0)
