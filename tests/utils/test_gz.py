"""Whole-buffer gzip: standard streams both ways, deterministic, clear failures."""
from __future__ import annotations

import gzip

import pytest

from jnet.utils.gz import gunzip, gzip_bytes


def test_round_trip_and_standard_gzip_both_ways():
    data = bytes(range(256)) * 1000 + b"\0" * 50_000
    packed = gzip_bytes(data)
    assert gzip.decompress(packed) == data  # the standard library reads it
    assert gunzip(gzip.compress(data)) == data  # and we read the standard library's
    assert gzip_bytes(data) == packed  # mtime 0: the same bytes every time
    assert len(packed) < len(data) // 4


def test_truncated_and_corrupt_streams_raise():
    packed = gzip_bytes(b"jnet" * 10_000)
    with pytest.raises(EOFError):
        gunzip(packed[: len(packed) // 2])
    with pytest.raises(OSError):
        gunzip(packed[:10] + b"\xff" * 40 + packed[50:])


def test_every_member_is_read_and_zero_padding_ignored():
    """gzip allows several members in one file (e.g. concatenated or block-compressed files)."""
    first, second = b"jnet" * 5_000, bytes(range(256)) * 100
    assert gunzip(gzip.compress(first) + gzip.compress(second) + b"\0" * 64) == first + second
    assert gunzip(gzip_bytes(first) + b"\0" * 8) == first
    with pytest.raises(OSError):
        gunzip(gzip_bytes(first) + b"not gzip")
