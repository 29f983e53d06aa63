"""How much can an upsampling head add on a data set? Ceilings from the true low-resolution labels.

A perfect base would hand its head the ground truth area-averaged to ``s x s`` (the label
fractions). This script feeds those true fractions to upsamplers and scores them at the cache's
resolution ``S`` on one split (mean slice Jaccard, both-empty counts 1, as `jnet evaluate`):

- fixed bilinear upsampling of the fractions, threshold 0.5, at ``s`` and at ``2s`` (four times
  the input pixels): about what a bilinear baseline can reach;
- J-Net's subpixel head (one hidden layer of 32, a 3x3 view, as deployed), fitted on the
  training split's fractions with BCE at ``S``, once per seed.

With ``--runs``, each trained model on the same cache is scored as trained, and its own
low-resolution probabilities are upsampled bilinearly and by the head fitted on true fractions
(with their RMSE against the true fractions): how much of the ceiling survives the base's error.
Two more rows split the model's error into *how much* and *where*: in each ``f x f`` block of the
output (one input pixel) the true number of foreground pixels is given to the model's ranking of
its pixels (its output logits), or the model's number (its thresholded output) to the true
ranking.

    python benchmarks/headroom.py --data wm-128 --in-size 16 --seeds 0 1 2 [--runs RUN ...]
"""
from __future__ import annotations

import argparse
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from jnet.cache.reader import open_prepared
from jnet.cache.splits import load_splits, split_indices
from jnet.models.heads import SubpixelHead
from jnet.training.module import masks_jaccard
from jnet.transforms.lowres import downsample

EPS = 1e-3  # fractions are clamped to [EPS, 1 - EPS] before the logit


def split_arrays(data: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, C, S, S)`` and binary foreground ``(N, 1, S, S)`` of one split, as floats."""
    prepared = open_prepared(data)
    if prepared.task["kind"] != "binary":
        raise SystemExit(f"{data}: headroom needs a binary cache (found {prepared.task['kind']})")
    rows = split_indices(prepared, load_splits(data), split)
    images = torch.from_numpy(np.asarray(prepared.images[rows], dtype=np.float32))
    return images, torch.from_numpy(np.asarray(prepared.labels[rows]) > 0).float()[:, None]


def jaccard(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Mean slice Jaccard in % of boolean masks ``(N, 1, S, S)``."""
    return 100 * float(masks_jaccard(pred.bool(), gt.bool()).mean())


def bilinear_mask(frac: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(frac, size=size, mode="bilinear") > 0.5


def fit_head(labels: torch.Tensor, s: int, seed: int, steps: int, batch: int) -> SubpixelHead:
    """A subpixel head (no code channels; the fractions as its image) fitted to upsample the true
    ``s x s`` fractions of ``labels`` with BCE at full size."""
    torch.manual_seed(seed)
    k = (labels.shape[-1] // s).bit_length() - 1
    head = SubpixelHead(1, k, code=0, in_channels=1)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    frac = downsample(labels, s, "area")
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(labels), (batch,), generator=gen)
        loss = F.binary_cross_entropy_with_logits(upsample_with(head, frac[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return head.eval()


def upsample_with(head: SubpixelHead, frac: torch.Tensor) -> torch.Tensor:
    """The head's logits at full size from fractions ``(N, 1, s, s)``."""
    return head(torch.logit(frac.clamp(EPS, 1 - EPS)), frac)[-1]


def count_decode(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Masks ``(N, 1, S, S)`` with the ``counts (N, 1, s, s)`` highest ``scores`` of each
    ``S/s x S/s`` block set: a given amount of foreground per input pixel, placed by ``scores``."""
    n, _, size, _ = scores.shape
    s = counts.shape[-1]
    f = size // s
    blocks = scores.view(n, s, f, s, f).permute(0, 1, 3, 2, 4).reshape(n, s, s, f * f)
    rank = blocks.argsort(-1, descending=True).argsort(-1)  # each pixel's place in its block
    mask = rank < counts.view(n, s, s, 1).round()
    return mask.view(n, s, s, f, f).permute(0, 1, 3, 2, 4).reshape(n, 1, size, size)


def run_rows(run: str, images: torch.Tensor, labels: torch.Tensor, head: SubpixelHead) -> list[str]:
    """A trained model's own score, and its low-resolution probabilities upsampled two ways."""
    from jnet.training.checkpoint import load_model

    model, info = load_model(run)
    s = model.in_size
    lr = downsample(images, s, info.get("downsample", "area"))
    with torch.no_grad():
        scores = torch.cat([model(x) for x in lr.split(256)])
        own = scores > 0
        low = torch.sigmoid(torch.cat([model.base(x)[:, :1] for x in lr.split(256)]))
        headed = torch.cat([upsample_with(head, x) for x in low.split(256)]) > 0
    true = downsample(labels, s, "area")
    rmse = float((low - true).square().mean().sqrt())
    pixels = (labels.shape[-1] // s) ** 2
    own_counts = downsample(own.float(), s, "area") * pixels
    # the labels ranked first, ties broken at random: the true placement of any count
    truth = labels + 0.5 * torch.rand(labels.shape, generator=torch.Generator().manual_seed(0))
    return [f"| {run}: as trained | {jaccard(own, labels):.1f} |",
            f"| {run}: its {s}x{s} probabilities (RMSE {rmse:.3f} against the true fractions), "
            f"bilinear | {jaccard(bilinear_mask(low, labels.shape[-1]), labels):.1f} |",
            f"| {run}: its {s}x{s} probabilities, the head fitted on true fractions | "
            f"{jaccard(headed, labels):.1f} |",
            f"| {run}: its placement, the true count per input pixel | "
            f"{jaccard(count_decode(scores, true * pixels), labels):.1f} |",
            f"| {run}: its count per input pixel, the true placement | "
            f"{jaccard(count_decode(truth, own_counts), labels):.1f} |"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a binary slice cache (jnet data prepare)")
    parser.add_argument("--in-size", type=int, default=16)
    parser.add_argument("--split", default="test", help="the split scored (fitting uses train)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1500, help="fitting steps per head")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runs", nargs="*", default=[], help="trained runs on this cache")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    _, train = split_arrays(args.data, "train")
    images, test = split_arrays(args.data, args.split)
    s, size = args.in_size, test.shape[-1]
    print(f"{args.data}: {len(train)} training and {len(test)} {args.split} slices, "
          f"{s}x{s} -> {size}x{size}")
    print("| upsampler of the true fractions | mean slice Jaccard % |\n|---|---|")
    for n in (s, 2 * s):
        print(f"| bilinear, {n}x{n} | {jaccard(bilinear_mask(downsample(test, n, 'area'), size), test):.1f} |")
    test_frac = downsample(test, s, "area")
    t0 = time.perf_counter()
    heads = [fit_head(train, s, seed, args.steps, args.batch) for seed in args.seeds]
    with torch.no_grad():
        scores = [jaccard(upsample_with(h, test_frac) > 0, test) for h in heads]
    print(f"| subpixel head, {s}x{s} | {np.mean(scores):.1f} ± {np.std(scores):.1f} (seeds: "
          f"{', '.join(f'{v:.1f}' for v in scores)}; fitted in {time.perf_counter() - t0:.0f} s) |")
    for run in args.runs:
        print("\n".join(run_rows(run, images, test, heads[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
