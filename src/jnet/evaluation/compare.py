"""Intervals over the test cases: for one model's mean scores, and for the gain of one model over
another on the same test slices (per seed, paired).

The spread over seeds says how much training varies; it says nothing of how much the figure would
move on other test subjects, which with a handful of test cases is often the larger part. Test
*cases* are resampled with replacement (slices of one case are not independent), the statistic is
recomputed on each resample, and the interval is the percentile range. For a gain, both models are
scored on the same slices, so the difference is taken slice by slice (paired), and each resample
recomputes every seed's gain on the same resampled cases and averages them: the interval is
conditional on the trained seeds.

Input: the folders ``jnet evaluate`` writes (``per_slice.csv``, ``metrics.json``), or its per-case rows.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from jnet.errors import DataError

RESAMPLES = 2000
LEVEL = 0.95
#: Fewer test cases than this get no interval: resampling 2-3 cases has a handful of distinct
#: outcomes, and its percentile range would look far narrower than the real uncertainty.
MIN_CASES = 8


@dataclass(frozen=True)
class SliceScores:
    """One evaluation's slice Jaccard (mean over structures), by slice of the cache."""

    source: Path
    index: np.ndarray  # (N,) the cache's slice indices, sorted
    case: np.ndarray  # (N,) case id of each slice
    jaccard: np.ndarray  # (N,) float64
    degenerate: str | None  # what `jnet evaluate` flagged, else None
    inputs: str | None = None  # how its low-resolution inputs were made (metrics.json downsample)


def read_scores(folder: str | Path) -> SliceScores:
    """Read ``per_slice.csv`` (and the degenerate flag of ``metrics.json``) from an evaluation folder.

    Raises:
        DataError: the folder has no ``per_slice.csv``, or it holds no Jaccard column or no slices.
    """
    folder = Path(folder)
    table = folder / "per_slice.csv"
    if not table.is_file():
        hint = f" (did you mean {folder / 'eval'}?)" if (folder / "eval" / "per_slice.csv").is_file() else ""
        raise DataError(f"{folder}: no per_slice.csv; expected a folder written by `jnet evaluate "
                        f"--out`{hint}")
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in (rows[0] if rows else {}) if c.startswith("jaccard_")]
    if not rows or not columns or "index" not in rows[0]:
        raise DataError(f"{table}: expected columns index, case_id and jaccard_<structure> and at "
                        f"least one slice")
    try:
        index = np.array([int(r["index"]) for r in rows])
        case = np.array([r["case_id"] for r in rows])
        jaccard = np.array([np.mean([float(r[c]) for c in columns]) for r in rows])
        degenerate = inputs = None
        if (folder / "metrics.json").is_file():
            metrics = json.loads((folder / "metrics.json").read_text())
            degenerate, inputs = metrics.get("degenerate") or None, metrics.get("downsample")
    except (KeyError, TypeError, ValueError) as e:  # a hand-edited or truncated file
        raise DataError(f"{folder}: unreadable per_slice.csv or metrics.json ({type(e).__name__}: {e})") from e
    order = np.argsort(index, kind="stable")
    return SliceScores(folder, index[order], case[order], jaccard[order], degenerate, inputs)


def paired_gain(model: Sequence[SliceScores], reference: Sequence[SliceScores], *,
                resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> dict:
    """The gain of ``model`` over ``reference`` in mean slice Jaccard, paired seed by seed (the
    i-th of each) and slice by slice, with a bootstrap interval over the test cases.

    Pairs where either side is degenerate are left out (a model that predicts nothing is not a
    score) and counted in ``excluded``.

    Returns:
        ``gain`` (mean over the pairs), ``per_seed``, ``ci_low``/``ci_high`` (None with fewer than
        :data:`MIN_CASES` test cases), ``level``, ``ahead`` (pairs with a positive gain),
        ``n_pairs``, ``excluded``, ``n_cases``, ``n_slices``, ``resamples``, and each side's own
        mean slice Jaccard per pair (``model_jaccard``, ``reference_jaccard``: the figures a
        table quotes as mean ± std); Jaccard as a fraction. ``gain`` is None when no pair is left.
        ``inputs``: the ways the evaluations made their low-resolution inputs, where they differ
        (``jnet evaluate --downsample``), else None.
    Raises:
        DataError: the lists differ in length or are empty, or two evaluations scored other slices.
    """
    if not model or len(model) != len(reference):
        raise DataError(f"paired comparison: expected as many reference evaluations as model ones "
                        f"(one per seed, in the same order), found {len(model)} and {len(reference)}")
    first = model[0]
    for other in [*model, *reference]:
        if not np.array_equal(other.index, first.index) or not np.array_equal(other.case, first.case):
            raise DataError(f"{other.source}: scored other slices than {first.source}; a paired "
                            f"comparison needs the same split of the same prepared cache")
    pairs = [(m, r) for m, r in zip(model, reference) if not (m.degenerate or r.degenerate)]
    cases, case_of = np.unique(first.case, return_inverse=True)
    result = {"level": level, "n_pairs": len(pairs), "excluded": len(model) - len(pairs),
              "n_cases": len(cases), "n_slices": len(first.index), "resamples": resamples,
              "gain": None, "per_seed": [], "ahead": 0, "ci_low": None, "ci_high": None,
              "inputs": _differing_inputs([*model, *reference]),
              "model_jaccard": [float(m.jaccard.mean()) for m, _ in pairs],
              "reference_jaccard": [float(r.jaccard.mean()) for _, r in pairs]}
    if not pairs:
        return result
    # per pair and case: the sum of the slice differences; per case: its slice count
    sums = np.stack([np.bincount(case_of, weights=m.jaccard - r.jaccard, minlength=len(cases))
                     for m, r in pairs])
    counts = np.bincount(case_of, minlength=len(cases)).astype(np.float64)
    per_seed = sums.sum(axis=1) / counts.sum()
    result.update(gain=float(per_seed.mean()), per_seed=[float(g) for g in per_seed],
                  ahead=int((per_seed > 0).sum()))
    interval = case_interval(sums, counts, level=level, resamples=resamples, seed=seed)
    if interval is not None:
        result.update(ci_low=interval[0], ci_high=interval[1])
    return result


def _differing_inputs(scores: Sequence[SliceScores]) -> dict[str, str] | None:
    """``{folder: downsample}`` where the evaluations' inputs were not all made one way."""
    modes = {str(s.source): s.inputs for s in scores if s.inputs is not None}
    return modes if len(set(modes.values())) > 1 else None


def case_interval(sums: np.ndarray, counts: np.ndarray, *, level: float = LEVEL,
                  resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float] | None:
    """Bootstrap interval over cases of ``mean_s(sum(sums[s]) / sum(counts))``: the mean over rows
    ``s`` (seeds) of a per-slice mean, each case holding ``sums[s, c]`` over ``counts[c]`` slices
    (counts of 1: a mean over cases). None with fewer than :data:`MIN_CASES` cases.

    Shape: ``sums (S, C)`` or ``(C,)``, ``counts (C,)``.
    """
    sums = np.atleast_2d(np.asarray(sums, dtype=np.float64))
    counts = np.asarray(counts, dtype=np.float64)
    n = len(counts)
    if n < MIN_CASES:
        return None
    draws = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=resamples).astype(np.float64)
    values = ((draws @ sums.T) / (draws @ counts)[:, None]).mean(axis=1)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def score_intervals(case_rows: Sequence[dict], names: Sequence[str], *, level: float = LEVEL) -> dict | None:
    """Intervals over the test cases of one evaluation's mean slice Jaccard, case Jaccard and case
    Dice (means over structures), from its per-case rows (``MetricsCollector.case_rows``); None
    with fewer than :data:`MIN_CASES` cases."""
    if len(case_rows) < MIN_CASES:
        return None
    slices = np.array([float(r["n_slices"]) for r in case_rows])
    ones = np.ones(len(case_rows))
    per_case = {
        "jaccard": (np.array([r["slice_jaccard"] * r["n_slices"] for r in case_rows]), slices),
        "volume_jaccard": (np.array([np.mean([r[f"volume_jaccard_{n}"] for n in names]) for r in case_rows]), ones),
        "volume_dice": (np.array([np.mean([r[f"volume_dice_{n}"] for n in names]) for r in case_rows]), ones),
    }
    out: dict = {"level": level, "n_cases": len(case_rows), "method": "bootstrap over cases"}
    for metric, (sums, counts) in per_case.items():
        out[metric] = list(case_interval(sums, counts, level=level))
    return out


def interval_text(result: dict) -> str:
    """A :func:`paired_gain` result's interval in points, e.g. ``95% CI over the 10 cases +0.6 to
    +1.9``, or why there is none."""
    if result["ci_low"] is None:
        return f"no interval: {result['n_cases']} case(s), fewer than {MIN_CASES}"
    return (f"{100 * result['level']:.0f}% CI over the {result['n_cases']} cases "
            f"{100 * result['ci_low']:+.1f} to {100 * result['ci_high']:+.1f}")


def describe(result: dict, reference: str = "the reference") -> str:
    """One line: the gain in points, the interval and the seeds ahead."""
    if result["gain"] is None:
        return f"no gain measured: every pair has a degenerate model ({result['excluded']} left out)"
    text = f"{100 * result['gain']:+.1f} points, {interval_text(result)}"
    text += f"; ahead of {reference} on {result['ahead']} of {result['n_pairs']} seed(s)"
    if result["excluded"]:
        text += f" ({result['excluded']} pair(s) with a degenerate model left out)"
    return text
