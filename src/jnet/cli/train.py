"""``jnet train``: train a model from a YAML config into a run directory."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``jnet train --config CFG.yaml --out RUN_DIR [KEY=VALUE ...] [--resume | --overwrite]``."""
    parser = subparsers.add_parser(
        "train", help="train a model from a config into a run directory",
        description="Train a J-Net (or a baseline) on a prepared slice cache. The run directory gets "
                    "the resolved config.yaml, manifest.json, info.json, checkpoints/ (best.ckpt by "
                    "validation Jaccard, last.ckpt) and logs/. See docs/training.md.",
        epilog="example: jnet train --config recommended/jnet16 --out runs/j16 "
               "data.path=data/prostate-256 train.epochs=50")
    parser.add_argument("--config", metavar="CFG.yaml|NAME",
                        help="training config: a YAML file or a built-in name such as "
                             "recommended/jnet16 (`jnet config list`); default: the run's "
                             "config.yaml with --resume, else recommended/jnet16")
    parser.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run directory")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides with dotted keys, e.g. data.path=/data/cache "
                             "train.epochs=5 model.width=8")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in RUN_DIR from checkpoints/last.ckpt")
    mode.add_argument("--overwrite", action="store_true",
                      help="delete the earlier run in RUN_DIR first")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar, model summary or Lightning info messages")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from jnet.training.config import load_config
    from jnet.training.presets import DEFAULT_TRAIN, locate
    from jnet.training.rundir import best_of, resume_config
    from jnet.training.run import is_rank_zero, train

    if args.config is not None:
        config = load_config(locate(args.config), args.overrides)
    elif args.resume:
        config = resume_config(args.out, args.overrides)
    else:
        print(f"config: {DEFAULT_TRAIN} (built in; `jnet config show {DEFAULT_TRAIN}`)", file=sys.stderr)
        config = load_config(locate(DEFAULT_TRAIN), args.overrides)
    run_dir = train(config, args.out, resume=args.resume, overwrite=args.overwrite,
                    quiet=args.quiet)
    if not is_rank_zero():  # under DDP every rank runs this command; one reports
        return 0
    best = best_of(run_dir) or {}
    print(f"run directory: {run_dir}")
    if best.get("checkpoint"):
        score = best.get("val_jaccard")
        print(f"best checkpoint: {run_dir / best['checkpoint']}")
        print(f"best val Jaccard: {score:.4f}" if score is not None else "best val Jaccard: n/a")
        if best.get("degenerate"):
            print(f"WARNING: the best checkpoint is {best['degenerate']} of the validation set; it is "
                  f"not a usable segmenter (train longer, lower train.lr, or check the labels)")
    else:
        print("best checkpoint: none (no validation ran)")
    return 0
