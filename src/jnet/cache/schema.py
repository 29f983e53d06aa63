"""The slice cache on disk: its file names, format version, dtypes and the checks of ``prepared.json``.

Written by ``jnet.cache.build``, read by ``jnet.cache.reader``; see ``docs/design.md``.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

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


def same_channels(a: Sequence[str], b: Sequence[str]) -> bool:
    """Channel lists match: the same names (case-insensitive) in the same order."""
    return [str(c).lower() for c in a] == [str(c).lower() for c in b]


def check_compatible(model: Mapping[str, Any], prepared: Mapping[str, Any], root: str | Path) -> None:
    """Refuse a model whose input channels, task or training cache size differ from a cache's.

    The one model-vs-cache rule (evaluation, INT8 calibration): channels by :func:`same_channels`;
    tasks by kind, classes and output names (the source label values may differ between datasets,
    e.g. BraTS editions); the cache size ``S`` the model was trained on (when ``model`` names one).
    A different normalisation method only warns.

    Args:
        model: the checkpoint info or model metadata (``channels``, ``task``, ``size``,
            ``normalisation``).
        prepared: the cache's prepared.json.
        root: the cache directory (named in the error).

    Raises:
        DataError: naming the prepared.json and both values.
    """
    where = Path(root) / PREPARED_FILE
    model_ch = [str(c) for c in model.get("channels", [])]
    data_ch = [str(c) for c in prepared["channels"]]
    if not same_channels(model_ch, data_ch):
        raise DataError(f"{where}: channels {data_ch} do not match the model's input channels {model_ch}; "
                        "use a cache prepared with the same channels in the same order")
    mt, dt = model.get("task") or {}, prepared["task"]
    key = ("kind", "classes", "names")
    if tuple(mt.get(k) for k in key) != tuple(dt.get(k) for k in key):
        raise DataError(f"{where}: task {dt.get('kind')} {dt.get('names')} does not match the model's task "
                        f"{mt.get('kind')} {mt.get('names')}")
    size = model.get("size")
    if size is not None and int(prepared["size"]) != int(size):
        raise DataError(f"{where}: size {prepared['size']} does not match the cache size the model was "
                        f"trained on ({size}); prepare the data at size {size}")
    model_norm = (model.get("normalisation") or {}).get("method")
    data_norm = (prepared.get("normalisation") or {}).get("method")
    if model_norm and data_norm and model_norm != data_norm:
        warnings.warn(f"{where}: normalisation {data_norm!r} differs from the model's {model_norm!r}",
                      stacklevel=3)
