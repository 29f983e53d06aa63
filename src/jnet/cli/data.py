"""`jnet data synth | check | prepare`: datasets (thin: parse and call the library)."""
from __future__ import annotations

import argparse

from jnet.cli import comma_list
from jnet.sources.types import TASK_KINDS
from jnet.synth import KINDS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``jnet data`` and its sub-commands."""
    data = subparsers.add_parser(
        "data", help="datasets: make synthetic data, check a dataset, prepare the slice cache",
        description="Dataset layouts: MSD (dataset.json), BraTS case folders (2018-2024), PNG slice "
                    "folders. See docs/datasets.md.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser(
        "synth", help="write a synthetic dataset in a published layout (no download needed)",
        description="Prostate: MSD Task05 layout (T2+ADC, PZ/TZ). BraTS: 2021 case folders (FLAIR, "
                    "T1, T1ce, T2, seg 1/2/4). Same seed, same bytes.")
    p.add_argument("out", metavar="OUT", help="dataset folder to create")
    p.add_argument("--kind", choices=KINDS, default="prostate", help="which dataset")
    p.add_argument("--cases", type=int, default=None, metavar="N",
                   help="labelled cases (default 24 prostate, 8 brats, 40 brain)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--size", type=int, default=None, metavar="X",
                   help="in-plane size (default: 256 and 320 alternating for prostate, 240 for brats)")
    p.add_argument("--slices", type=int, default=None, metavar="Z",
                   help="slices per volume (default 16 prostate, 155 brats, 20 brain)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes generating cases (default: 1 for small sets, else up to 4)")
    p.add_argument("--contrast", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="brain: range of the gray/white contrast relative to the usual (default "
                        "0.5 1.3); another range gives the same subjects at an unseen contrast")
    p.add_argument("--scale", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="brain: range of the head size, a scale of the mean brain (default 0.82 1.08); "
                        "another range gives head sizes a model trained on the default has not seen")
    p.add_argument("--shift", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="brain: the head centre's distance from the middle of the field in mm, per "
                        "in-plane axis on a random side (default: uniform in +-15 / +-18 mm)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_synth)

    p = sub.add_parser(
        "check", help="read every file of a dataset and list every problem",
        description="Reads every byte; lists each problem with its file. Exit status 0 when there "
                    "are no errors (warnings allowed), 2 otherwise.")
    p.add_argument("src", metavar="SRC", help="dataset folder")
    _source_options(p)
    p.add_argument("--case-pattern", default=None, metavar="REGEX",
                   help="PNG: regex whose group 'case' is the patient id in a file stem "
                        "(default: the stem up to its last _<digits>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_check)

    p = sub.add_parser(
        "prepare", help="build the slice cache (resampled slices + patient-level splits)",
        description="Reads the dataset, slices and resamples it to SIZE x SIZE, writes images.npy, "
                    "labels.npy, prepared.json and splits.json into --out.")
    p.add_argument("src", metavar="SRC", help="dataset folder")
    p.add_argument("--out", required=True, metavar="DIR", help="cache directory to create")
    _source_options(p)
    p.add_argument("--task", choices=TASK_KINDS, default="binary",
                   help="what the model predicts (default binary: all labels > 0)")
    p.add_argument("--structures", type=comma_list, default=None, metavar="A,B",
                   help="label or region names to keep (e.g. PZ or WT,TC,ET)")
    p.add_argument("--channels", type=comma_list, default=None, metavar="T2,ADC",
                   help="channel names to keep, in this order (default: all)")
    p.add_argument("--size", type=int, default=256, metavar="S", help="HR slice size (default 256)")
    p.add_argument("--val-fraction", type=float, default=0.2, metavar="F", help="validation share of patients")
    p.add_argument("--test-fraction", type=float, default=0.2, metavar="F", help="test share of patients")
    p.add_argument("--folds", type=int, default=1, metavar="K", help="cross-validation folds (default 1)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="split seed (default 0)")
    p.add_argument("--splits", default=None, metavar="FILE",
                   help="use this split: nnU-Net's splits_final.json (its folds; test = the cases no "
                        "fold lists) or a jnet splits.json; replaces the fractions, folds and seed")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes (default 1)")
    p.add_argument("--drop-empty", action="store_true", help="drop slices without foreground")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="images.npy dtype")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache at --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_prepare)


def _source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("msd", "nnunet", "brats", "png"), default=None,
                   help="dataset layout (default: detected)")
    p.add_argument("--label-map", default=None, metavar="0:0,255:1",
                   help="map raw label values (every value in the label files must be listed)")


def run_synth(args: argparse.Namespace) -> int:
    from jnet.synth.generate import synthesize

    out = synthesize(args.out, args.kind, cases=args.cases, seed=args.seed, size=args.size,
                     slices=args.slices, overwrite=args.overwrite, workers=args.workers,
                     progress=not args.quiet, contrast=args.contrast,
                     scale=args.scale, shift=args.shift)
    print(f"wrote {args.kind} dataset: {out}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from jnet.sources.check import check_dataset, summary
    from jnet.sources.labels import parse_label_map

    problems = check_dataset(args.src, args.format, parse_label_map(args.label_map),
                             case_pattern=args.case_pattern, progress=not args.quiet)
    for problem in problems:
        print(problem)
    print(f"{args.src}: {summary(problems)}")
    return 2 if any(p.severity == "error" for p in problems) else 0


def run_prepare(args: argparse.Namespace) -> int:
    from jnet.sources.labels import parse_label_map
    from jnet.cache.build import prepare_dataset

    out = prepare_dataset(
        args.src, args.out, format=args.format, task=args.task, structures=args.structures,
        channels=args.channels, size=args.size, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, folds=args.folds, seed=args.seed, splits_file=args.splits,
        workers=args.workers,
        keep_empty=not args.drop_empty, label_map=parse_label_map(args.label_map), dtype=args.dtype,
        overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote slice cache: {out}")
    return 0
