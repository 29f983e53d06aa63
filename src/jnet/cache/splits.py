"""Patient-level, seeded, persisted splits of a slice cache (``splits.json``).

A case (patient) is the unit of splitting: all slices of one case land in one split, so no
patient's slices are seen in training and in evaluation. The schema (docs/design.md)::

    {"seed": 0, "val_fraction": 0.2, "test_fraction": 0.2,
     "test": [case ids], "folds": [{"train": [case ids], "val": [case ids]}, ...]}

Rules of :func:`make_splits`:

- Fractions are of all cases: ``round(n * test_fraction)`` cases go to test, then
  ``round(n * val_fraction)`` to val (at least one case each when the fraction is > 0; at least one
  case always stays in train).
- ``folds == 1``: one train/val partition. ``folds > 1``: K-fold cross-validation over the
  non-test cases (each fold's val is one of K near-equal parts; ``val_fraction`` is then unused).
- Split folders (PNG datasets with ``train/``, ``val/``, ``test/`` folders; see ``fixed``) are
  honoured where they exist: cases in a test folder are the test set and cases in a val folder
  the validation set. A split no folder provides is drawn at random from the other cases (e.g.
  only ``train/`` and ``test/``: val is drawn from the train cases; only ``train/``: test and val
  are drawn from them).
- Drawing uses ``numpy.random.default_rng(seed)`` on the sorted case ids; all lists are sorted, so
  the same inputs give a byte-identical ``splits.json``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from jnet.errors import ConfigError, DataError
from jnet.utils.atomic import write_json
from jnet.utils.options import choose

SPLITS_FILE = "splits.json"
SPLIT_NAMES = ("train", "val", "test", "all")
# Folder names of PNG datasets and the split each one means.
FOLDER_SPLITS = {
    "train": "train", "training": "train", "tr": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "ts": "test",
}


def make_splits(
    case_ids: Iterable[str],
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    folds: int = 1,
    fixed: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """Split cases into test and per-fold train/val, by patient, reproducibly.

    Args:
        case_ids: the case (patient) ids; duplicates are an error.
        seed: seed of the random draw.
        val_fraction: fraction of all cases for validation (``folds == 1``).
        test_fraction: fraction of all cases held out for testing.
        folds: number of train/val folds; > 1 means K-fold cross-validation.
        fixed: case id -> split folder name (e.g. ``"train"``, ``"test"``) or None; see the
            module docstring.
    Returns:
        The ``splits.json`` dict.
    """
    ids = sorted(case_ids)
    duplicates = sorted({c for c in ids if ids.count(c) > 1}) if len(set(ids)) != len(ids) else []
    if duplicates:
        raise DataError(f"case ids: expected unique ids, found duplicates {duplicates}")
    _check_fractions(val_fraction, test_fraction, folds)
    folder = _folder_splits(fixed or {}, ids)
    rng = np.random.default_rng(seed)
    n = len(ids)

    test = [c for c in ids if folder.get(c) == "test"]
    fixed_val = [c for c in ids if folder.get(c) == "val"]
    if not test:  # no test folder: draw test from every case a val folder does not claim
        test = _draw([c for c in ids if folder.get(c) != "val"], _count(n, test_fraction), rng)
    pool = [c for c in ids if c not in set(test) | set(fixed_val)]
    if fixed_val and folds > 1:
        raise ConfigError(
            f"data.folds: {folds} folds need a free choice of validation cases, but "
            f"{len(fixed_val)} cases sit in a val folder; use folds=1"
        )

    fold_list = []
    if fixed_val:
        fold_list.append({"train": sorted(pool), "val": sorted(fixed_val)})
    elif folds == 1:
        val = _draw(pool, min(_count(n, val_fraction), max(len(pool) - 1, 0)), rng)
        fold_list.append({"train": sorted(set(pool) - set(val)), "val": sorted(val)})
    else:
        if len(pool) < folds:
            raise DataError(
                f"cases: {folds} folds need at least {folds} non-test cases, found {len(pool)}"
            )
        order = [pool[i] for i in rng.permutation(len(pool))]
        parts = [sorted(order[k::folds]) for k in range(folds)]
        fold_list = [{"train": sorted(set(pool) - set(p)), "val": p} for p in parts]

    if not fold_list[0]["train"]:
        raise DataError(
            f"cases: {n} cases leave none for training with val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}; add cases or lower the fractions"
        )
    return {
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "test_fraction": float(test_fraction),
        "test": sorted(test),
        "folds": fold_list,
    }


def given_splits(path: str | os.PathLike, case_ids: Iterable[str]) -> dict[str, Any]:
    """A split the user gives (``data prepare --splits FILE``), as a ``splits.json`` dict.

    Accepts jnet's own ``splits.json`` and nnU-Net's ``splits_final.json`` (a list of folds
    ``{"train": [...], "val": [...]}``; nnU-Net keeps no test cases, so the test split is the cases
    that no fold lists). Every case id in the file must be a case of the dataset.

    Raises:
        DataError: unreadable or malformed file, a patient in two splits, unknown case ids.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the splits file ({e})") from e
    ids = set(case_ids)
    if isinstance(raw, list):  # nnU-Net splits_final.json
        if not raw or not all(isinstance(f, dict) and {"train", "val"} <= set(f) for f in raw):
            raise DataError(f"{path}: expected nnU-Net folds [{{\"train\": [...], \"val\": [...]}}, ...] "
                            f"or a jnet splits.json object")
        folds = [{"train": sorted(map(str, f["train"])), "val": sorted(map(str, f["val"]))} for f in raw]
        listed = {c for f in folds for c in f["train"] + f["val"]}
        raw = {"seed": None, "val_fraction": None, "test_fraction": None,
               "test": sorted(ids - listed), "folds": folds}
    check_splits(raw, path)
    listed = set(raw["test"]) | {c for f in raw["folds"] for c in f["train"] + f["val"]}
    unknown = sorted(listed - ids)
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise DataError(f"{path}: {len(unknown)} case id(s) are not cases of the dataset: {shown}")
    return {**raw, "source": str(path.resolve())}


def write_splits(directory: str | os.PathLike, splits: Mapping[str, Any]) -> Path:
    """Check ``splits`` and write it as ``directory/splits.json`` (atomic, key-sorted)."""
    path = Path(directory) / SPLITS_FILE
    check_splits(splits, path)
    write_json(path, splits)
    return path


def load_splits(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``directory/splits.json`` (schema, no patient in two splits).

    Raises:
        DataError: naming the file for a missing or malformed file or a leak (patients listed).
    """
    path = Path(directory) / SPLITS_FILE
    try:
        splits = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DataError(f"{path}: splits file missing; re-run `jnet data prepare`") from e
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: expected a JSON splits file, could not read it ({e})") from e
    check_splits(splits, path)
    return splits


def check_splits(splits: Any, path: str | os.PathLike = SPLITS_FILE) -> None:
    """Raise DataError unless ``splits`` follows the schema and no case is in two splits of a
    fold (train, val, test)."""
    problems = []
    if not isinstance(splits, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(splits).__name__}")
    for key in ("seed", "val_fraction", "test_fraction", "test", "folds"):
        if key not in splits:
            problems.append(f"missing key {key!r}")
    folds = splits.get("folds")
    if "folds" in splits and (not isinstance(folds, list) or not folds):
        problems.append("'folds' must be a non-empty list")
        folds = []
    for k, fold in enumerate(folds or []):
        if not isinstance(fold, dict) or not {"train", "val"} <= set(fold):
            problems.append(f"folds[{k}] must be an object with 'train' and 'val' lists")
    lists = [("test", splits.get("test", []))] + [
        (f"folds[{k}].{part}", fold[part])
        for k, fold in enumerate(folds or [])
        if isinstance(fold, dict)
        for part in ("train", "val")
        if part in fold
    ]
    for name, ids in lists:
        if not isinstance(ids, list) or not all(isinstance(c, str) for c in ids):
            problems.append(f"{name!r} must be a list of case id strings")
    if problems:
        raise DataError(f"{path}: malformed splits file: {'; '.join(problems)}")

    test = set(splits["test"])
    leaks: dict[str, set[str]] = {}
    for k, fold in enumerate(folds):
        train, val = set(fold["train"]), set(fold["val"])
        for a, b, where in ((train, val, "train and val"), (train, test, "train and test"),
                            (val, test, "val and test")):
            for case in a & b:
                leaks.setdefault(case, set()).add(f"{where} of fold {k}")
        for name in ("train", "val"):
            ids = fold[name]
            if len(set(ids)) != len(ids):
                for case in {c for c in ids if ids.count(c) > 1}:
                    leaks.setdefault(case, set()).add(f"twice in {name} of fold {k}")
    if leaks:
        listing = "; ".join(f"{c} ({', '.join(sorted(w))})" for c, w in sorted(leaks.items()))
        raise DataError(
            f"{path}: patient leakage: {len(leaks)} case(s) are in more than one split: {listing}"
        )


def split_cases(splits: Mapping[str, Any], split: str, fold: int = 0) -> list[str] | None:
    """The case ids of ``split`` in ``fold`` (None for ``"all"``)."""
    choose(split, SPLIT_NAMES, "split")
    if split == "all":
        return None
    if split == "test":
        return list(splits["test"])
    n_folds = len(splits["folds"])
    if not isinstance(fold, int) or not 0 <= fold < n_folds:
        raise ConfigError(f"data.fold: expected an integer in 0..{n_folds - 1}, found {fold!r}")
    return list(splits["folds"][fold][split])


def split_indices(prepared: Any, splits: Mapping[str, Any], split: str = "train",
                  fold: int = 0) -> np.ndarray:
    """The slice rows of the cache that belong to ``split`` (of ``fold``).

    Args:
        prepared: the ``prepared.json`` dict, or an object with a ``.meta`` holding it.
        splits: the ``splits.json`` dict.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        fold: the fold for train/val.
    Returns:
        Sorted int64 row indices into ``images.npy`` / ``labels.npy``.

    Shape: ``(n_rows,)``.
    """
    meta = getattr(prepared, "meta", prepared)
    wanted = split_cases(splits, split, fold)
    ranges = {c["case_id"]: (int(c["start"]), int(c["count"])) for c in meta["cases"]}
    if wanted is None:
        wanted = list(ranges)
    unknown = sorted(set(wanted) - set(ranges))
    if unknown:
        raise DataError(
            f"{SPLITS_FILE}: {split} lists {len(unknown)} case(s) that are not in the cache "
            f"(prepared.json): {unknown}"
        )
    parts = [np.arange(s, s + n, dtype=np.int64) for s, n in (ranges[c] for c in wanted)]
    rows = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return np.sort(rows)


def _folder_splits(fixed: Mapping[str, str | None], ids: list[str]) -> dict[str, str]:
    known = set(ids)
    out = {}
    for case, name in fixed.items():
        if name is None or case not in known:
            continue
        split = FOLDER_SPLITS.get(str(name).lower())
        if split is None:
            raise DataError(
                f"case {case}: split folder {name!r} is not a known split name; expected one of "
                f"{', '.join(sorted(FOLDER_SPLITS))}"
            )
        out[case] = split
    return out


def _check_fractions(val_fraction: float, test_fraction: float, folds: int) -> None:
    for field, value in (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction)):
        if not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ConfigError(f"{field}: expected a number in [0, 1), found {value!r}")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"data.val_fraction + data.test_fraction: expected a sum below 1 (some cases must train), "
            f"found {val_fraction} + {test_fraction}"
        )
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 1:
        raise ConfigError(f"data.folds: expected an integer >= 1, found {folds!r}")


def _count(n: int, fraction: float) -> int:
    count = int(round(n * fraction))
    return max(count, 1) if fraction > 0 and n > 1 else count


def _draw(ids: list[str], count: int, rng: np.random.Generator) -> list[str]:
    count = min(count, len(ids))
    picked = rng.choice(len(ids), size=count, replace=False) if count else []
    return sorted(ids[i] for i in picked)
