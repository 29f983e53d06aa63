"""Whole-buffer gzip, with ISA-L (python-isal, a dependency: 2-4x zlib's speed) when it imports,
else the standard library. Both produce and read standard gzip streams."""
from __future__ import annotations

import gzip
import zlib


def gunzip(data: bytes) -> bytes:
    """Decompress a whole gzip stream, every member of it (trailing zero padding ignored, as the
    standard library does). A truncated stream raises EOFError, a corrupt one OSError (whichever
    library found it).

    One decompressor per member rather than ``igzip.decompress``, which splits the work into
    more steps: on a 7 MB ``.nii.gz`` volume 20 against 26 ms (``benchmarks/bench_deploy.py``'s).
    """
    try:
        from isal import isal_zlib as library
    except ImportError:
        library = zlib
    members = []
    while data:
        if not data.startswith(b"\x1f\x8b"):
            raise OSError(f"corrupt gzip stream (member {len(members) + 1} does not start with the "
                          f"gzip signature 1f 8b)")
        inflate = library.decompressobj(wbits=31)  # 31: the gzip wrapper, header and CRC checked
        try:
            members.append(inflate.decompress(data))
        except library.error as e:
            raise OSError(f"corrupt gzip stream ({e})") from e
        if not inflate.eof:
            raise EOFError("truncated gzip stream: it ends before its end-of-stream marker")
        data = inflate.unused_data.lstrip(b"\0")
    return members[0] if len(members) == 1 else b"".join(members)


def gzip_bytes(data: bytes, level: int = 1) -> bytes:
    """Compress ``data`` as one gzip member with mtime 0 (the same bytes in, the same bytes out)."""
    try:
        from isal import igzip
    except ImportError:
        return gzip.compress(data, compresslevel=level, mtime=0)
    return igzip.compress(data, compresslevel=min(level, 3), mtime=0)
