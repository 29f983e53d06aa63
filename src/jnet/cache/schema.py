"""The slice cache on disk: its file names, format version, dtypes and the checks of ``prepared.json``.

Written by ``jnet.cache.build``, read by ``jnet.cache.reader``; see ``docs/design.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from jnet.errors import DataError

PREPARED_FILE = "prepared.json"
IMAGES_FILE = "images.npy"
LABELS_FILE = "labels.npy"
FORMAT_VERSION = 1
DTYPES = ("float16", "float32")
REQUIRED = {"format_version": int, "task": dict, "channels": list, "size": int, "dtype": str,
            "n_slices": int, "cases": list, "normalisation": dict}


def check_meta(meta: Any, path: Path) -> None:
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"{path}: format_version {version!r} is not supported (this jnet reads {FORMAT_VERSION}); "
            "re-run `jnet data prepare` with this version")
    problems = [f"{key!r} missing or not {kind.__name__}" for key, kind in REQUIRED.items()
                if not isinstance(meta.get(key), kind)]
    if not problems:
        start = 0
        for k, case in enumerate(meta["cases"]):
            ok = isinstance(case, dict) and all(key in case for key in ("case_id", "start", "count", "slice_indices"))
            if not ok or case["start"] != start or len(case["slice_indices"]) != case["count"]:
                problems.append(f"cases[{k}] is malformed or its rows are not contiguous (expected start {start})")
                break
            start += case["count"]
        if not problems and start != meta["n_slices"]:
            problems.append(f"the cases cover {start} rows but n_slices is {meta['n_slices']}")
        task = meta["task"]
        if not all(key in task for key in ("kind", "names", "classes", "labels")):
            problems.append("task must have kind, names, classes and labels")
        if meta["dtype"] not in DTYPES:
            problems.append(f"dtype {meta['dtype']!r} is not one of {', '.join(DTYPES)}")
    if problems:
        raise DataError(f"{path}: corrupt slice cache: {'; '.join(problems)}; re-run `jnet data prepare`")

