"""`jnet export`, `jnet predict`, `jnet bench`: deployment sub-commands (thin: parse and call)."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from jnet.cli import comma_list

if TYPE_CHECKING:
    from jnet.deploy.runtime import ModelMeta


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, found {text!r}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export``, ``predict`` and ``bench`` sub-commands."""
    p = subparsers.add_parser(
        "export", help="export a trained model to ONNX (FP32 or INT8) with parity check and metadata",
        description="Export to ONNX: dynamic batch, fixed input size, explicit padding, pinned opset, "
                    "jnet metadata inside; written only if ONNX Runtime matches PyTorch "
                    "(rtol 1e-3, atol 1e-4) and, for --int8, the accuracy gate passes.")
    p.add_argument("source", metavar="RUN_DIR|CKPT", help="run directory (best checkpoint) or checkpoint")
    p.add_argument("--out", required=True, metavar="MODEL.onnx", help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (13 for TensorRT 8.2 / JetPack 4.6)")
    p.add_argument("--int8", action="store_true", help="write an INT8 (QDQ) model calibrated on --calib")
    p.add_argument("--calib", "--data", dest="calib", metavar="PREPARED",
                   help="slice cache for calibration, the INT8 gate and real-input parity checks")
    p.add_argument("--fold", type=int, default=0, help="fold of --calib: train rows calibrate, val rows gate")
    p.add_argument("--int8-symmetric", action="store_true",
                   help="symmetric INT8 (zero points 0) for TensorRT; default suits ONNX Runtime CPU")
    p.add_argument("--force", action="store_true", help="write the INT8 model even if it fails the gate")
    p.add_argument("--no-fold", action="store_true", help="export the head as trained (not folded)")
    p.add_argument("--torchscript", nargs="?", const=True, metavar="PATH",
                   help="also write a TorchScript file (default: OUT with suffix .pt)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a pickled checkpoint (runs code from the file: only for files you trust)")
    p.add_argument("--no-verify", action="store_true",
                   help="load a model file whose recorded SHA-256 does not match (corrupt or edited)")
    p.set_defaults(func=run_export)

    p = subparsers.add_parser(
        "predict", help="segment NIfTI volumes, BraTS case folders or PNG slices with a model",
        description="Masks in each input's own geometry (shape, affine, header) and label values; "
                    "one JSON line per input with timings.")
    p.add_argument("model", metavar="MODEL", help=".onnx file (ONNX Runtime), run directory or checkpoint")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="NIfTI file (2D, 3D or 4D), nnU-Net channel files, BraTS case folder, PNG "
                        "slice, or a folder of those")
    p.add_argument("-i", "--input", dest="more_inputs", action="append", default=[], metavar="INPUT",
                   help="an input as an option (nnU-Net's -i); may be repeated")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--channels", type=comma_list, default=None, metavar="T2,ADC",
                   help="the channels of 4D NIfTI inputs in file order, where no dataset.json beside "
                        "them names them (e.g. an MSD image outside its task folder)")
    p.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png")
    p.add_argument("--probabilities", action="store_true", help="also write probability maps")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="slices per model call (default: as many as 16 256x256 inputs' or 64 256x256 "
                        "outputs' worth, so a volume usually goes in one call)")
    p.add_argument("--threads", type=int, default=None, metavar="T", help="intra-op threads")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--allow-no-metadata", action="store_true",
                   help="accept an .onnx file without jnet metadata (sizes from the graph)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a pickled checkpoint (runs code from the file: only for files you trust)")
    p.add_argument("--no-verify", action="store_true",
                   help="load a model file whose recorded SHA-256 does not match (corrupt or edited)")
    p.set_defaults(func=run_predict)

    p = subparsers.add_parser(
        "bench", help="images/s, latency, memory per model and backend, model-only and end to end",
        description="MODEL: run dir, checkpoint, .onnx, YAML config, or a spec like jnet16, base16, "
                    "baseline32, base256 (random weights; optional ':field=value,...').")
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--batch", type=_ints, default=[1, 16], metavar="1,16", help="batch sizes")
    p.add_argument("--backend", type=comma_list, default=["torch", "onnxruntime"],
                   metavar="torch,onnxruntime,int8",
                   help="backends: torch (eager), torch-folded, torch-unfolded, torch-bf16 (autocast), "
                        "onnxruntime (FP32), int8")
    p.add_argument("--sizes", type=_ints, default=None, metavar="16,32",
                   help="input sizes substituted into spec models")
    p.add_argument("--volume", metavar="F", help="NIfTI volume for the end-to-end measurement")
    p.add_argument("--reps", type=int, default=20, metavar="N", help="timed repetitions")
    p.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed warm-up calls")
    p.add_argument("--threads", type=int, default=None, metavar="T", help="intra-op threads")
    p.add_argument("--calib", metavar="PREPARED", help="slice cache for INT8 calibration")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON")
    p.add_argument("--md", metavar="OUT", help="write the Markdown tables")
    p.add_argument("--trust-pickle", action="store_true", help="load pickled checkpoints")
    p.set_defaults(func=run_bench)


def run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jnet.cli import as_options
    from jnet.deploy.export import export_onnx, export_torchscript

    with as_options({"data.fold": "--fold"}):
        result = export_onnx(args.source, args.out, opset=args.opset, int8=args.int8, calib=args.calib,
                             calib_fold=args.fold, force=args.force, overwrite=args.overwrite,
                             trust_pickle=args.trust_pickle, fold_head=not args.no_fold,
                             verify=not args.no_verify,
                             int8_symmetric=args.int8_symmetric)
    meta = result.meta
    worst = max(result.parity.values()) if result.parity else float("nan")
    print(f"wrote {result.path}: {meta.precision}, input (B, {meta.in_channels}, {meta.in_size}, "
          f"{meta.in_size}) -> logits (B, {meta.classes}, {meta.out_size}, {meta.out_size}), "
          f"opset {args.opset}, head {meta.extra.get('head')}; parity max |diff| {worst:.2g} "
          f"over {len(result.parity)} checks")
    if result.gate:
        g = result.gate
        print(f"INT8 gate: Jaccard {g['int8_jaccard']:.2f} (INT8) vs {g['fp32_jaccard']:.2f} (FP32) "
              f"on {g['n_slices']} validation slices" + (" (forced)" if g["forced"] and not g["passed"] else ""))
    _warn_if_degenerate(meta, result.path)
    if args.torchscript:
        ts = Path(args.out).with_suffix(".pt") if args.torchscript is True else Path(args.torchscript)
        export_torchscript(args.source, ts, overwrite=args.overwrite, trust_pickle=args.trust_pickle,
                           verify=not args.no_verify,
                           fold_head=not args.no_fold)
        print(f"wrote {ts} (TorchScript)")
    return 0


def _warn_if_degenerate(meta: "ModelMeta", source: object) -> None:
    """A model from a checkpoint whose validation found it degenerate is named on stderr."""
    if meta.degenerate:
        print(f"WARNING: {source} comes from a checkpoint that was {meta.degenerate} of its "
              f"validation set: it is not a usable segmenter (train longer, lower train.lr, or "
              f"check the labels)", file=sys.stderr)


def run_predict(args: argparse.Namespace) -> int:
    from jnet.errors import ConfigError
    from jnet.deploy.predict import predict_paths, summary_lines
    from jnet.deploy.runtime import Predictor

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size: expected a positive integer, found {args.batch_size}")
    inputs = [*args.inputs, *args.more_inputs]
    if not inputs:
        raise ConfigError("INPUT: give at least one input (a path after MODEL, or -i PATH)")
    model = Predictor.from_path(args.model, allow_no_metadata=args.allow_no_metadata,
                                trust_pickle=args.trust_pickle, threads=args.threads,
                                verify=not args.no_verify)
    _warn_if_degenerate(model.meta, args.model)
    records = predict_paths(model, inputs, args.out, file_channels=args.channels, overlay=args.overlay,
                            probabilities=args.probabilities, overwrite=args.overwrite,
                            batch_size=args.batch_size, echo=lambda line: print(line, flush=True))
    for line in summary_lines(records):
        print(line, file=sys.stderr)
    print(f"outputs in {args.out}", file=sys.stderr)
    return 2 if any(r["status"] != "ok" for r in records) else 0


def run_bench(args: argparse.Namespace) -> int:
    from jnet.experiments.bench import markdown, run_bench as bench
    from jnet.utils.atomic import write_json, write_text

    result = bench(args.models, backends=args.backend, batches=args.batch, sizes=args.sizes,
                   volume=args.volume, reps=args.reps, warmup=args.warmup, threads=args.threads,
                   calib=args.calib, trust_pickle=args.trust_pickle)
    table = markdown(result)
    print(table)
    if args.json:
        write_json(args.json, result)
    if args.md:
        write_text(args.md, table)
    return 0
