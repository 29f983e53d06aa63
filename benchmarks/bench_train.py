"""Training throughput: jnet's Lightning training loop against a loop in the reference code's style.

Both train J-Net (faithful ELU-Net width 16, s -> 256) with the same loss (BCE at every scale)
and Adam, on the same synthetic prostate slices; the reference-style loop trains the published
head (the reference code's model), jnet's loop each head of ``--heads`` (``paper``: the same model;
``subpixel``: the head of jnet's recommended configs):

- **jnet**: ``jnet.training.module.JNetModule`` + ``PreparedDataModule`` (memory-mapped slice cache,
  whole-batch reads, flips and the low-resolution simulation on batched tensors) run by a
  Lightning ``Trainer``, batch 16. The clock runs from the start of batch ``warmup`` to the end of
  the last batch: everything the real loop does per batch (loading, forward, backward, optimizer
  step, logging), nothing of the trainer's set-up.
- **naive**: the reference's way: one PNG per slice and per mask on disk, each sample decoded
  with PIL, resized to ``s`` with NEAREST, its label resized per sample to every output scale
  (NEAREST at ``s``, BILINEAR in between), scaled by 1/255, random flips with numpy per sample,
  batch 2, a plain PyTorch loop.

Prints images/s of each and the ratio of jnet's to the reference-style loop (goal >= 3x).
Example (small, for a shared CPU):

    .venv/bin/python benchmarks/bench_train.py --sizes 16 --steps 6 --warmup 2

The lead's measurement: ``--sizes 16 32 --steps 40 --warmup 5``.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F


def make_data(tmp: Path, cases: int, size: int) -> Path:
    """A prepared synthetic prostate cache (binary whole gland from T2) at ``size``."""
    from jnet.cache.build import prepare_dataset
    from jnet.synth.generate import synthesize

    src = synthesize(tmp / "src", kind="prostate", cases=cases, seed=0, progress=False)
    return prepare_dataset(src, tmp / "cache", task="binary", channels=["T2"], size=size,
                           val_fraction=0.0, test_fraction=0.0)


def model_config(in_size: int, out_size: int, width: int, head: str = "paper") -> dict:
    return {"arch": "jnet", "base": "elunet", "variant": "faithful", "width": width,
            "in_size": in_size, "out_size": out_size, "head": head, "in_channels": 1, "classes": 1}


class _Clock(L.Callback):
    """Times training batches ``start`` .. ``stop - 1`` (optimizer steps), set-up excluded."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop, self.elapsed = start, stop, float("nan")

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.start:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.stop:
            self.elapsed = time.perf_counter() - self.t0


# --- jnet ---------------------------------------------------------------------------------------------


def bench_jnet(cache: Path, in_size: int, width: int, batch: int, steps: int, warmup: int,
               workers: int, head: str = "paper") -> float:
    """Images/s of ``JNetModule`` trained by a Lightning Trainer on the prepared cache."""
    from jnet.training.config import config_from_dict
    from jnet.training.module import JNetModule
    from jnet.training.run import _datamodule, read_prepared, fill_from_cache

    size = int(json.loads((cache / "prepared.json").read_text())["size"])
    raw = {"data": {"path": str(cache), "downsample": "area"},
           "model": model_config(in_size, size, width, head),
           "train": {"batch_size": batch, "optimizer": "adam", "lr": 1e-3, "num_workers": workers,
                     "augment": "flip"}}
    config = config_from_dict(raw)
    root, prepared = read_prepared(config)
    config = fill_from_cache(config, prepared, root)
    module = JNetModule(config, prepared)
    data = _datamodule(config, root, in_size)
    if len(data.dataset("train")) < batch * (steps + warmup):
        raise SystemExit(f"not enough training slices for {steps + warmup} batches of {batch}: "
                         f"raise --cases")

    clock = _Clock(warmup, warmup + steps)
    trainer = L.Trainer(max_steps=warmup + steps, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[clock])
    trainer.fit(module, datamodule=data)
    return batch * steps / clock.elapsed


# --- the reference's way ------------------------------------------------------------------------------


def export_pngs(cache: Path, out: Path) -> list[tuple[Path, Path]]:
    """Each slice of the cache as an 8-bit PNG and its mask as a 0/255 PNG (the reference's input)."""
    from PIL import Image

    images = np.load(cache / "images.npy", mmap_mode="r")
    labels = np.load(cache / "labels.npy", mmap_mode="r")
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    pairs = []
    for i in range(len(images)):
        x = images[i, 0].astype(np.float32)
        x = (x - x.min()) / max(float(x.max() - x.min()), 1e-6) * 255
        pairs.append((out / "images" / f"{i:05d}.png", out / "masks" / f"{i:05d}.png"))
        Image.fromarray(x.astype(np.uint8)).save(pairs[-1][0])
        Image.fromarray((labels[i] > 0).astype(np.uint8) * 255).save(pairs[-1][1])
    return pairs


class NaiveSlices(torch.utils.data.Dataset):
    """Per-sample PNG decode and PIL resizes: input at ``s``, a target per output scale."""

    def __init__(self, pairs: list[tuple[Path, Path]], in_size: int, scales: list[int]) -> None:
        self.pairs, self.in_size, self.scales = pairs, in_size, scales

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        from PIL import Image

        image = Image.open(self.pairs[i][0]).convert("L")
        mask = Image.open(self.pairs[i][1]).convert("L")
        if np.random.rand() < 0.5:
            image, mask = image.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT)
        if np.random.rand() < 0.5:
            image, mask = image.transpose(Image.FLIP_TOP_BOTTOM), mask.transpose(Image.FLIP_TOP_BOTTOM)
        x = np.asarray(image.resize((self.in_size, self.in_size), Image.NEAREST), np.float32) / 255
        x = torch.from_numpy((x - 0.5) / 0.5)[None]
        targets = []
        for k, scale in enumerate(self.scales):
            mode = Image.NEAREST if k == 0 or k == len(self.scales) - 1 else Image.BILINEAR
            y = np.asarray(mask.resize((scale, scale), mode), np.float32) / 255
            targets.append(torch.from_numpy(y)[None])
        return x, targets


def bench_naive(pairs: list[tuple[Path, Path]], in_size: int, out_size: int, width: int, batch: int,
                steps: int, warmup: int, workers: int) -> float:
    """Images/s of a plain PyTorch loop over the PNG slices, the same model and loss."""
    from jnet.models import build_model

    model = build_model(**model_config(in_size, out_size, width)).train()
    scales = list(model.output_scales)
    loader = torch.utils.data.DataLoader(NaiveSlices(pairs, in_size, scales), batch_size=batch,
                                         shuffle=True, num_workers=workers, drop_last=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = iter(loader)
    for step in range(warmup + steps):
        if step == warmup:
            t0 = time.perf_counter()
        x, targets = next(batches)
        outputs = model(x)
        loss = sum(F.binary_cross_entropy_with_logits(o, t) for o, t in zip(outputs, targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32], help="input sizes s")
    parser.add_argument("--out-size", type=int, default=256, help="ground-truth size S")
    parser.add_argument("--batch", type=int, default=16, help="jnet batch size")
    parser.add_argument("--naive-batch", type=int, default=2, help="reference-style batch size")
    parser.add_argument("--steps", type=int, default=20, help="timed jnet batches")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--heads", nargs="+", default=["paper", "subpixel"], choices=("paper", "subpixel"),
                        help="J-Net heads jnet's loop trains (the reference-style loop: paper)")
    parser.add_argument("--cases", type=int, default=None,
                        help="synthetic cases (16 slices each); default: enough for the jnet loop")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (both loops)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = args.cases or math.ceil(args.batch * (args.steps + args.warmup) / 16)
    # the naive loop times as many images as the jnet loop, in batches of --naive-batch
    naive_steps = max(1, args.batch * args.steps // args.naive_batch)
    naive_warmup = max(1, args.batch * args.warmup // args.naive_batch)

    with tempfile.TemporaryDirectory(prefix="jnet-bench-train-") as tmp:
        tmp = Path(tmp)
        cache = make_data(tmp, cases, args.out_size)
        pairs = export_pngs(cache, tmp / "png")
        rows = []
        for s in args.sizes:
            fast = {}
            for head in args.heads:
                torch.manual_seed(0)
                np.random.seed(0)
                fast[head] = bench_jnet(cache, s, args.width, args.batch, args.steps, args.warmup,
                                        args.workers, head)
            torch.manual_seed(0)
            np.random.seed(0)
            slow = bench_naive(pairs, s, args.out_size, args.width, args.naive_batch,
                               naive_steps, naive_warmup, args.workers)
            rows.append((s, fast, slow))
    print(f"\nTraining images/s, J-Net faithful width {args.width}, S={args.out_size}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.workers} loader workers; "
          f"{len(pairs)} slices, {args.steps} timed jnet batches\n")
    head = " | ".join(f"jnet, {h} head (batch {args.batch}) | ratio" for h in args.heads)
    print(f"| s | naive PNG loop, paper head (batch {args.naive_batch}) | {head} |")
    print("|---|---|" + "---|---|" * len(args.heads))
    for s, fast, slow in rows:
        cells = " | ".join(f"{fast[h]:.1f} | {fast[h] / slow:.2f}x" for h in args.heads)
        print(f"| {s} | {slow:.1f} | {cells} |")

if __name__ == "__main__":
    main()
