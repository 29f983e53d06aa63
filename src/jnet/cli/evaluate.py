"""`jnet evaluate RUN_DIR|CKPT --data PREPARED --out DIR`: score a trained model on a slice cache."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` sub-command."""
    p = subparsers.add_parser(
        "evaluate",
        help="score a trained model on a prepared slice cache (Jaccard, Dice, HD95; slices and volumes)",
        description=(
            "Predict every slice of a split at the model's input size, compare at the cache's "
            "high resolution, and write metrics.json, per_case.csv, per_slice.csv and overlay PNGs."
        ),
    )
    p.add_argument("source", metavar="RUN_DIR|CKPT", help="run directory (best checkpoint) or checkpoint file")
    p.add_argument("--data", required=True, metavar="PREPARED", help="slice cache written by `jnet data prepare`")
    p.add_argument("--split", default="test", choices=("test", "val", "train", "all"),
                   help="which slices: the test split, val/train of --fold, or all (another dataset)")
    p.add_argument("--fold", type=int, default=0, help="cross-validation fold for --split val/train")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory for the results")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="slices per forward pass")
    p.add_argument("--native", action="store_true",
                   help="also score at each case's native voxel grid")
    p.add_argument("--overlays", type=int, default=3, metavar="N",
                   help="overlay PNGs: best, median, worst case by volume Jaccard (0: none)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--downsample", default=None, choices=("area", "nearest", "gaussian"),
                   help="make the low-resolution inputs this way instead of as in training: how the "
                        "model fares with another point-spread function (default: as in training)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a pickled checkpoint (runs code from the file: only for files you trust)")
    p.add_argument("--no-verify", action="store_true",
                   help="load a model file whose recorded SHA-256 does not match (corrupt or edited)")
    p.set_defaults(func=run)

    f = subparsers.add_parser(
        "evaluate-folder", help="score predicted NIfTI masks against label files (as nnUNetv2_evaluate_folder)",
        description="Pair PRED_DIR/NAME with LABELS_DIR/NAME, score each case at its own spacing per "
                    "label or region (Dice, Jaccard, HD95, surface Dice), write summary.json and "
                    "per_case.csv.")
    f.add_argument("pred_dir", metavar="PRED_DIR", help="folder of predicted masks (.nii/.nii.gz/.png)")
    f.add_argument("labels_dir", metavar="LABELS_DIR", help="folder of label files with the same names")
    f.add_argument("--labels", default=None, metavar="PZ:1,TZ:2",
                   help="structures: NAME:VALUE, or a region NAME:V1+V2 (WT:1+2+4); default: the "
                        "labels of a dataset.json beside LABELS_DIR, else each value found")
    f.add_argument("--out", default=None, metavar="DIR", help="where the results go (default PRED_DIR)")
    f.add_argument("--tolerance", type=float, default=1.0, metavar="MM", help="surface Dice tolerance (mm)")
    f.add_argument("--overwrite", action="store_true", help="replace an earlier summary.json")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=run_folder)

    c = subparsers.add_parser(
        "compare", help="paired gain of one model over another on the same test slices, with a "
                        "bootstrap interval over the test cases",
        description="Take the evaluation folders of a model (one per seed) and of a reference (the "
                    "same seeds, in the same order), both written by `jnet evaluate --out` on the "
                    "same split of the same cache; print the gain in mean slice Jaccard per seed "
                    "and a bootstrap confidence interval over the test cases.")
    c.add_argument("model", nargs="+", metavar="EVAL_DIR", help="the model's evaluation folders")
    c.add_argument("--against", nargs="+", required=True, metavar="EVAL_DIR",
                   help="the reference's evaluation folders, paired with the model's in order")
    c.add_argument("--level", type=float, default=0.95, help="confidence level of the interval")
    c.add_argument("--json", metavar="FILE", help="also write the result here")
    c.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    import numpy as np

    from jnet.errors import ConfigError
    from jnet.evaluation.compare import describe, paired_gain, read_scores
    from jnet.utils.atomic import write_json

    if not 0 < args.level < 1:
        raise ConfigError(f"--level: expected a fraction between 0 and 1, found {args.level}")
    result = paired_gain([read_scores(d) for d in args.model], [read_scores(d) for d in args.against],
                         level=args.level)
    if result["per_seed"]:
        for side in ("model", "reference"):
            scores = 100 * np.array(result[f"{side}_jaccard"])
            print(f"{side}: mean slice Jaccard {scores.mean():.1f} ± {scores.std():.1f} % over "
                  f"{len(scores)} seed(s) ({', '.join(f'{v:.1f}' for v in scores)})")
        print("per seed: " + ", ".join(f"{100 * g:+.1f}" for g in result["per_seed"]) + " points")
    print(f"gain in mean slice Jaccard: {describe(result)} ({result['n_slices']} slices)")
    if result["inputs"]:
        print("note: the evaluations made their low-resolution inputs in different ways ("
              + ", ".join(sorted(set(result["inputs"].values()))) + "); the gain mixes that in")
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0 if result["gain"] is not None else 2


def run_folder(args: argparse.Namespace) -> int:
    from jnet.evaluation.folder import evaluate_folder, parse_structures, summary_table

    summary = evaluate_folder(args.pred_dir, args.labels_dir, structures=parse_structures(args.labels),
                              out_dir=args.out, tolerance_mm=args.tolerance, overwrite=args.overwrite,
                              progress=not args.quiet)
    out = Path(args.out or args.pred_dir)
    print(f"{summary['n_cases']} case(s) scored at their own spacing")
    print()
    print(summary_table(summary))
    unpaired = summary["unpaired"]
    for what, names in (("predictions without a label", unpaired["predictions_without_label"]),
                        ("labels without a prediction", unpaired["labels_without_prediction"])):
        if names:
            print(f"{what} ({len(names)}): {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")
    for item in summary["failed"]:
        print(f"failed: {item['error']}")
    print(f"wrote {out / 'summary.json'}, {out / 'per_case.csv'}")
    return 2 if summary["failed"] else 0


def run(args: argparse.Namespace) -> int:
    """Evaluate, then print a Markdown summary table and where the files are."""
    from jnet.cli import as_options
    from jnet.errors import ConfigError
    from jnet.evaluation.evaluate import evaluate_path, summary_table

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: expected a positive integer, found {args.batch_size}")
    if args.overlays < 0:
        raise ConfigError(f"--overlays: expected 0 or more, found {args.overlays}")
    with as_options({"data.fold": "--fold", "split": "--split"}):
        metrics = evaluate_path(
            args.source, args.data, trust_pickle=args.trust_pickle, verify=not args.no_verify,
            split=args.split, fold=args.fold, out_dir=args.out, batch_size=args.batch_size,
            native=args.native, overlays=args.overlays, device=args.device,
            overwrite=args.overwrite, downsample=args.downsample)
    out = Path(args.out)
    up = metrics.get("logits_upsampled_from")
    print(f"{metrics['split']} split: {metrics['n_slices']} slices, {metrics['n_cases']} cases, "
          f"input {metrics['in_size']}x{metrics['in_size']} ({metrics['downsample']}"
          + ("" if metrics["downsample"] == metrics["trained_downsample"]
             else f"; trained on {metrics['trained_downsample']}") + "), scored at "
          f"{metrics['out_size']}x{metrics['out_size']}"
          + (f" (model output {up}x{up} upsampled bilinearly)" if up else ""))
    print()
    print(summary_table(metrics))
    if metrics.get("native"):
        print()
        print("At the native voxel grid:")
        print()
        print(summary_table(metrics["native"]))
    interval = metrics.get("interval")
    if interval:
        print()
        print(f"{100 * interval['level']:.0f}% interval over the {interval['n_cases']} cases (bootstrap): "
              + ", ".join(f"{label} {interval[k][0]:.4f}-{interval[k][1]:.4f}" for k, label in
                          (("volume_dice", "case Dice"), ("volume_jaccard", "case Jaccard"),
                           ("jaccard", "slice Jaccard"))))
    print()
    print(f"HD95 undefined (exactly one mask empty): {metrics['hd95_undefined']} slice-structure pairs")
    if metrics.get("degenerate"):
        print(f"WARNING: {metrics['degenerate']} of the {metrics['split']} split: the model is "
              f"degenerate; its scores come from the slices without foreground only")
    print(f"wrote {out / 'metrics.json'}, {out / 'per_case.csv'}, {out / 'per_slice.csv'}"
          + (f", {out / 'overlays'}/" if args.overlays else ""))
    return 0
