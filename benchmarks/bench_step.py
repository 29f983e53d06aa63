"""Training-step cost of J-Net against the bilinear baseline trained at high resolution, side by side.

One step = forward, the recipe's multi-scale loss (BCE + Dice), backward and an AdamW step, on a
batch of random 16x16 inputs and a 256x256 label (the data pipeline is not part of it:
``bench_train.py`` measures the whole loop). Same base (faithful ELU-Net, width 16) in every
model; models are timed in turn within each repetition, so machine load hits all of them alike.
Prints images/s and the ratio to the baseline (the goal: J-Net >= 0.8x).

    python benchmarks/bench_step.py                     # s = 16 -> 256, batch 16
    python benchmarks/bench_step.py --sizes 16 32 --reps 7
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from jnet.models import build_model
from jnet.training.losses import MultiScaleLoss
from jnet.transforms import tasks

MODELS = {  # name -> build_model fields (besides sizes); the recommended loss for all
    "bilinear baseline (loss at S)": {"arch": "baseline", "train_at": "output"},
    "J-Net, subpixel head, two hidden layers (recommended)": {"arch": "jnet", "head": "subpixel", "head_layers": 2},
    "J-Net, subpixel head, one hidden layer": {"arch": "jnet", "head": "subpixel"},
    "J-Net, paper head": {"arch": "jnet", "head": "paper"},
}


def step_timer(fields: dict, s: int, big: int, batch: int, width: int):
    torch.manual_seed(0)
    model = build_model(variant="faithful", width=width, in_size=s, out_size=big, **fields).train()
    loss_fn = MultiScaleLoss("binary", lowres_target="area", mid_target="area", dice_weight=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, s, s)
    label = (torch.rand(batch, big, big) > 0.7).to(torch.uint8)
    target = tasks.target_from_label(label, "binary", 1)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), target).backward()
        opt.step()

    return step


def run(sizes: list[int], batch: int, reps: int, warmup: int, width: int, big: int) -> list[dict]:
    rows = []
    for s in sizes:
        steps = {name: step_timer(fields, s, big, batch, width) for name, fields in MODELS.items()}
        for step in steps.values():
            for _ in range(warmup):
                step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(reps):
            for name, step in steps.items():
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)
        ips = {name: batch / statistics.median(t) for name, t in times.items()}
        ref = ips["bilinear baseline (loss at S)"]
        rows += [{"s": s, "S": big, "batch": batch, "model": name, "images_per_s": v, "ratio": v / ref}
                 for name, v in ips.items()]
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| s -> S | batch | model | train img/s | vs baseline |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['s']} -> {r['S']} | {r['batch']} | {r['model']} | {r['images_per_s']:.1f} "
                     f"| {r['ratio']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[16])
    p.add_argument("--out-size", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(markdown(run(a.sizes, a.batch, a.reps, a.warmup, a.width, a.out_size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
