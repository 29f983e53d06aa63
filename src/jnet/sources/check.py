"""`jnet data check`: read every byte of a dataset and report every problem, not just the first.

Manifest problems (missing or mistyped ``dataset.json`` keys, missing files, missing modalities or
seg files, duplicate case ids) come from :func:`jnet.sources.registry.scan`; then every file of every
case is read completely (nibabel and Pillow read lazily, so a truncated file is only found that way)
and checked: empty, truncated or wrong-content files, dimensionality, image/label shape and affine
mismatches, undeclared label values, NaN/Inf (errors) and constant images (warnings).
"""
from __future__ import annotations

from pathlib import Path

from jnet.sources.common import Problem, Report
from jnet.sources.registry import read_case, scan


def check_dataset(
    src: str | Path,
    format: str | None = None,
    label_map: dict[int, int] | None = None,
    *,
    case_pattern: str | None = None,
    progress: bool = True,
) -> list[Problem]:
    """Check a dataset completely.

    Args:
        src: the dataset folder (see :func:`jnet.sources.registry.discover`).
        format: ``"msd" | "brats" | "png"``; auto-detected when None.
        label_map: raw label value -> label value (every raw value must be a key).
        case_pattern: PNG only: regex naming the patient id in a slice file name.
        progress: show a progress bar (one step per case).
    Returns:
        Every problem found, in the order found; ``severity`` is ``"error"`` or ``"warning"``.
    Raises:
        DataError: ``src`` is missing or its layout cannot be determined.
        ConfigError: bad ``format``, ``label_map`` or ``case_pattern``.
    """
    from tqdm.auto import tqdm

    source, problems = scan(src, format, label_map, case_pattern=case_pattern)
    if source is None:
        return problems
    for case in tqdm(source.cases, desc="check", unit="case", disable=not progress):
        report = Report(strict=False)
        read_case(source, case, None, report)
        problems.extend(report.problems)
    return problems


def summary(problems: list[Problem], n_cases: int | None = None) -> str:
    """One line: how many errors and warnings (and cases)."""
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    cases = f"{n_cases} case(s) checked: " if n_cases is not None else ""
    return f"{cases}{errors} error(s), {warnings} warning(s)"
