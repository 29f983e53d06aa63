"""Eager CPU throughput of the base alone vs J-Net (folded and unfolded head), as a Markdown table.

For each input size s: the ELU-Net base (width 16; the reference's faithful variant, or with
``--variant clean`` the recommended configs') at s, and J-Net-s = that base plus a
head up to S (256; 320 for s = 80 and 160): the published head (``--head paper``), evaluated on
the default eval path (``model.eval(); model(x)``, which folds an affine head by itself) and
unfolded (``auto_fold = False``, to show what the fold buys), or jnet's
subpixel head (``--head subpixel``) or another head of the registry (``--head dysample``), which
run as they are. Parameters, MACs per image, images/s at each batch size (median over
repetitions, after warm-up; base and J-Net timed in turn within every repetition so load drift
hits both), and the ratio J-Net / base images/s (1.0 = the head is
free): the median of the ratios paired within each repetition, with their range in brackets.
The bilinear baseline (the same base, no head, fixed bilinear upsampling to S) is timed alongside:
what any model that writes an S x S output pays, the floor of a J-Net's ratio. So is the base with
its weights laid out NCHW instead of channels last (``build_model``'s layout): what that layout
buys (base img/s channels last / NCHW). And the head alone on the default eval path
(``JNet.upsample`` on the base's output, the folded head where it folds), timed in turn with the
base: its time as a share of the base's (the quality issue's "head cost"), the median of the
paired shares and their range.

    python benchmarks/bench_models.py                       # the full table (minutes)
    python benchmarks/bench_models.py --sizes 16 --reps 3   # a quick check
    python benchmarks/bench_models.py --head subpixel --sizes 16 32
    python benchmarks/bench_models.py --head subpixel --sizes 16 --in-channels 2 --classes 3  # zones
    python benchmarks/bench_models.py --head subpixel --head-layers 2 --variant clean --sizes 16  # recommended
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from typing import Callable

import torch
from tqdm import tqdm

from jnet.experiments.profiling import count_macs, count_parameters
from jnet.models import build_model, fold_head
from jnet.models.heads import HEADS


def out_size_for(s: int) -> int:
    """S: 256, or 320 where s does not divide 256 (80, 160)."""
    return 256 if 256 % s == 0 else 320


def per_image_seconds(fn: Callable[[], object], batch: int, min_time: float) -> Callable[[], float]:
    """A timer for ``fn``: returns seconds per image of one repetition (looped to ``min_time``)."""
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    loops = max(1, int(min_time / once))

    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        return (time.perf_counter() - t0) / (loops * batch)

    return run


def bench_size(s: int, batches: list[int], reps: int, warmup: int, min_time: float,
               width: int, head: str = "paper", in_channels: int = 1, classes: int = 1,
               head_hidden: int | None = None, head_layers: int | None = None,
               variant: str = "faithful") -> list[dict]:
    big = out_size_for(s)
    io = {"in_channels": in_channels, "classes": classes, "variant": variant, "width": width}
    jnet = build_model(arch="jnet", in_size=s, out_size=big, head=head, head_hidden=head_hidden,
                       head_layers=head_layers, **io).eval()
    # the base as the baselines use it: C logit channels (a subpixel J-Net's base emits more)
    base = build_model(arch="base", in_size=s, **io).eval()
    # the default eval path (an affine head folds itself) against the head as trained
    unfolded = copy.deepcopy(jnet)
    unfolded.auto_fold = False
    # the floor of any model that predicts at S: the same base, no head, a fixed bilinear upsampling
    bilinear = build_model(arch="baseline", in_size=s, out_size=big, train_at="output", **io).eval()
    # what the factory's channels-last weights buy: the same base with its weights laid out NCHW
    nchw = copy.deepcopy(base).to(memory_format=torch.contiguous_format)
    models = {"base": base, "folded": jnet, "unfolded": unfolded, "bilinear": bilinear, "nchw": nchw}
    rows = []
    for batch in batches:
        x = torch.randn(batch, in_channels, s, s)
        with torch.inference_mode():
            calls = {name: (lambda m=m: m(x)) for name, m in models.items()}
            features = jnet.base(x)
            calls["head"] = lambda: jnet.upsample(features, x)
            for fn in calls.values():
                for _ in range(warmup):
                    fn()
            timers = {name: per_image_seconds(fn, batch, min_time) for name, fn in calls.items()}
            times: dict[str, list[float]] = {name: [] for name in calls}
            for _ in range(reps):
                for name, timer in timers.items():
                    times[name].append(timer())
        ips = {name: 1.0 / statistics.median(t) for name, t in times.items()}
        # paired within each repetition, so drift between repetitions cancels
        ratios = {name: sorted(b / m for b, m in zip(times["base"], t)) for name, t in times.items()}
        head_share = sorted(h / b for b, h in zip(times["base"], times["head"]))
        rows.append({
            "s": s, "S": big, "batch": batch,
            "params_base": count_parameters(base), "params_jnet": count_parameters(jnet),
            "macs_base": count_macs(base, (1, in_channels, s, s)),
            "macs_jnet": count_macs(fold_head(jnet) if jnet.head.foldable else jnet, (1, in_channels, s, s)),
            "ips_base": ips["base"], "ips_folded": ips["folded"], "ips_unfolded": ips["unfolded"],
            "ips_bilinear": ips["bilinear"], "ips_nchw": ips["nchw"], "ratios": ratios,
            "head_share": head_share,
        })
    return rows


def _ratio(ratios: list[float]) -> str:
    """The median paired ratio and its range over the repetitions."""
    return f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"


def _share(shares: list[float]) -> str:
    """The median paired share, in percent, and its range over the repetitions."""
    return f"{100 * statistics.median(shares):.1f}% ({100 * shares[0]:.1f}-{100 * shares[-1]:.1f})"


def markdown(rows: list[dict]) -> str:
    head = ("| s | S | batch | params base | params J-Net | MACs base | MACs J-Net | base img/s "
            "| J-Net img/s (default eval path) | ratio | J-Net img/s (unfolded) | ratio unfolded "
            "| head alone, % of the base's time | bilinear baseline img/s | ratio "
            "| base img/s, NCHW weights | channels last / NCHW |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ratio = r["ratios"]
        lines.append(
            f"| {r['s']} | {r['S']} | {r['batch']} | {r['params_base']:,} | {r['params_jnet']:,} "
            f"| {r['macs_base'] / 1e6:.1f} M | {r['macs_jnet'] / 1e6:.1f} M | {r['ips_base']:.0f} "
            f"| {r['ips_folded']:.0f} | {_ratio(ratio['folded'])} "
            f"| {r['ips_unfolded']:.0f} | {_ratio(ratio['unfolded'])} "
            f"| {_share(r['head_share'])} "
            f"| {r['ips_bilinear']:.0f} | {_ratio(ratio['bilinear'])} "
            f"| {r['ips_nchw']:.0f} | {_ratio(sorted(1 / q for q in ratio['nchw']))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 128, 160])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per model first")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per repetition")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--width", type=int, default=16, help="base width n (16 = the reference)")
    parser.add_argument("--variant", default="faithful", choices=["faithful", "clean"],
                        help="ELU-Net variant: faithful (the reference's shared weights) or clean "
                             "(the recommended configs')")
    parser.add_argument("--head", default="paper", choices=list(HEADS),
                        help="the J-Net head (an affine head is deployed folded; the others as they are)")
    parser.add_argument("--head-hidden", type=int, default=None,
                        help="the subpixel or dysample head's hidden width (default: the model's, 32)")
    parser.add_argument("--head-layers", type=int, default=None,
                        help="the subpixel or dysample head's hidden layers (default: the model's, 1; "
                             "the recommended configs: 2)")
    parser.add_argument("--in-channels", type=int, default=1, help="image channels (2: T2 + ADC)")
    parser.add_argument("--classes", type=int, default=1, help="logit channels C (3: prostate zones)")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for s in args.sizes:
        ratio = out_size_for(s) // s
        if out_size_for(s) % s or ratio & (ratio - 1) or s % 16:
            parser.error(f"--sizes: {s} is not a multiple of 16 that reaches 256 or 320 by x2 steps")
    rows = []
    for s in tqdm(args.sizes, desc="sizes", file=sys.stderr):
        rows += bench_size(s, args.batches, args.reps, args.warmup, args.min_time, args.width, args.head,
                           args.in_channels, args.classes, args.head_hidden, args.head_layers, args.variant)
    table = markdown(rows)
    options = [f"hidden {args.head_hidden}"] * (args.head_hidden is not None) + \
        [f"{args.head_layers} hidden layers"] * (args.head_layers is not None)
    head = f"{args.head} ({', '.join(options)})" if options else args.head
    header = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, eager, inference_mode, "
              f"median of {args.reps} repetitions after {args.warmup} warm-up calls (ratios: median "
              f"of the ratios paired within each repetition, and their range); ELU-Net "
              f"{args.variant} width {args.width}; head {head}; {args.in_channels} image channel(s), "
              f"{args.classes} logit channel(s); ratio = J-Net img/s / base img/s\n\n")
    print(header + table)
    if args.out:
        from jnet.utils.atomic import write_text

        write_text(args.out, header + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
