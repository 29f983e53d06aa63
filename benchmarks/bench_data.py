"""Data pipeline throughput: jnet's cache reader against the reference's per-sample PNG loader,
and ``prepare`` throughput / peak memory.

    .venv/bin/python benchmarks/bench_data.py                 # everything, defaults below
    .venv/bin/python benchmarks/bench_data.py --skip-prepare  # reader comparison only

The reference way (as the published J-Net code loads data): one PNG per slice and one mask PNG on
disk; per sample PIL open, convert to L, resize the image to s with NEAREST and the mask to 256,
/255, (x - 0.5) / 0.5, random horizontal/vertical flips with numpy; batch 2. jnet's way: one
memory-mapped slice cache, a batch of rows read at once, flips on the batched tensors, one
``pairs.downsample`` per batch; batch 32. All data is synthetic and lives in a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_msd(root: Path, cases: int, shape: tuple[int, int, int], seed: int = 0) -> Path:
    """A synthetic MSD task (uncompressed .nii): a bright ellipse (label 1) on a noisy disc."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    training = []
    for i in range(cases):
        cx, cy, r = rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), rng.uniform(0.15, 0.35)
        organ = ((x - cx) ** 2 + (y - cy) ** 2 < r**2)[..., None].repeat(shape[2], axis=2)
        organ[..., : shape[2] // 4] = False  # some empty slices
        body = (x**2 + y**2 < 0.9)[..., None]
        image = (body * (100 + 20 * rng.normal(size=shape)) + 80 * organ).astype(np.float32)
        name = f"synth_{i:04d}"
        nib.save(nib.Nifti1Image(image, np.diag([0.6, 0.6, 3.0, 1.0])), root / "imagesTr" / f"{name}.nii")
        nib.save(nib.Nifti1Image(organ.astype(np.uint8), np.diag([0.6, 0.6, 3.0, 1.0])),
                 root / "labelsTr" / f"{name}.nii")
        training.append({"image": f"./imagesTr/{name}.nii", "label": f"./labelsTr/{name}.nii"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "synthetic", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "organ"},
        "numTraining": cases, "training": training}))
    return root


def write_pngs(cache: Path, root: Path, n: int) -> list[tuple[Path, Path]]:
    """The first ``n`` cache rows as 8-bit PNG slices and 0/255 mask PNGs (the reference layout)."""
    from PIL import Image

    images = np.load(cache / "images.npy", mmap_mode="r")
    labels = np.load(cache / "labels.npy", mmap_mode="r")
    (root / "img").mkdir(parents=True)
    (root / "mask").mkdir()
    pairs = []
    for i in range(min(n, len(images))):
        x = images[i, 0].astype(np.float32)
        x = (255 * (x - x.min()) / max(float(np.ptp(x)), 1e-6)).astype(np.uint8)
        a, b = root / "img" / f"{i:05d}.png", root / "mask" / f"{i:05d}.png"
        Image.fromarray(x).save(a)
        Image.fromarray((labels[i] * 255).astype(np.uint8)).save(b)
        pairs.append((a, b))
    return pairs


class ReferenceDataset:
    """Per-sample PNG decode + PIL resize + numpy flips (the published loader's way)."""

    def __init__(self, pairs: list[tuple[Path, Path]], in_size: int, out_size: int = 256) -> None:
        self.pairs, self.in_size, self.out_size = pairs, in_size, out_size
        self.rng = np.random.default_rng(0)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        a, b = self.pairs[i]
        img = Image.open(a).convert("L").resize((self.in_size, self.in_size), Image.NEAREST)
        mask = Image.open(b).convert("L").resize((self.out_size, self.out_size), Image.NEAREST)
        img = (np.asarray(img, np.float32) / 255 - 0.5) / 0.5
        mask = np.asarray(mask, np.float32) / 255
        if self.rng.random() < 0.5:
            img, mask = img[:, ::-1], mask[:, ::-1]
        if self.rng.random() < 0.5:
            img, mask = img[::-1], mask[::-1]
        return torch.from_numpy(img.copy())[None], torch.from_numpy(mask.copy())[None]


def images_per_second(loader, min_images: int, repeats: int = 3) -> float:
    """Median images/s over ``repeats`` passes of at least ``min_images`` images each."""
    rates = []
    for _ in range(repeats):
        seen, start = 0, time.perf_counter()
        while seen < min_images:
            for batch in loader:
                seen += len(batch[0])
                if seen >= min_images:
                    break
        rates.append(seen / (time.perf_counter() - start))
    return float(np.median(rates))


def bench_readers(cache: Path, work: Path, sizes: list[int], batch: int, images: int) -> None:
    import torch
    from torch.utils.data import DataLoader

    from jnet.cache.reader import SliceDataset, make_loader

    pairs = write_pngs(cache, work / "png", 512)
    print(f"\nreader throughput (train split, flips, {torch.get_num_threads()} threads, "
          f"{len(pairs)} PNG slice pairs for the reference)")
    print(f"{'s':>4} {'jnet img/s (batch %d)' % batch:>24} {'reference img/s (batch 2)':>27} {'ratio':>7}"
          f" {'jnet lowres_cache img/s':>25} {'ratio':>7}")
    for s in sizes:
        ours = make_loader(SliceDataset(cache, "train", in_size=s, augment="flip"), batch, shuffle=True)
        fixed = make_loader(SliceDataset(cache, "train", in_size=s, augment="flip", lowres_cache=True),
                            batch, shuffle=True)
        ref = DataLoader(ReferenceDataset(pairs, s), batch_size=2, shuffle=True)
        ours_rate = images_per_second(ours, images)
        ref_rate = images_per_second(ref, max(images // 8, 64))
        fixed_rate = images_per_second(fixed, images)
        print(f"{s:>4} {ours_rate:>24.0f} {ref_rate:>27.0f} {ours_rate / ref_rate:>6.1f}x"
              f" {fixed_rate:>25.0f} {fixed_rate / ref_rate:>6.1f}x")


def prepare_in_subprocess(src: Path, out: Path, size: int, workers: int) -> tuple[float, int, float, float]:
    """Run prepare in a fresh interpreter; returns (slices/s, slices, peak RSS in MiB of the
    main process, of the largest worker process (0 without workers; an upper bound: it includes
    the pages shared with the main process when the worker was started))."""
    code = (
        "import json, resource, sys, time\n"
        "from jnet.cache.build import prepare_dataset\n"
        "import jnet.sources.registry, jnet.transforms.slicing, jnet.cache.splits, jnet.transforms.tasks, tqdm.auto  # not timed\n"
        "t = time.perf_counter()\n"
        f"out = prepare_dataset({str(src)!r}, {str(out)!r}, size={size}, workers={workers}, progress=False)\n"
        "dt = time.perf_counter() - t\n"
        "n = json.loads((out / 'prepared.json').read_text())['n_slices']\n"
        # VmHWM, not ru_maxrss: the latter keeps the forking parent's RSS across exec.
        "status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
        "main = int(status.split()[0]) / 1024\n"
        "worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps([n / dt, n, main, worker]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    rate, n, main, worker = json.loads(done.stdout.strip().splitlines()[-1])
    return rate, int(n), main, worker


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32], help="input sizes s")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=2048, help="images per timed pass (jnet)")
    parser.add_argument("--reader-cases", type=int, default=24, help="cases in the 256 px cache")
    parser.add_argument("--prepare-cases", type=int, nargs="+", default=[50, 200],
                        help="dataset sizes for prepare throughput and peak RSS")
    parser.add_argument("--prepare-shape", type=int, nargs=3, default=[96, 96, 16])
    parser.add_argument("--prepare-size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--skip-prepare", action="store_true")
    parser.add_argument("--skip-readers", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from jnet.cache.build import prepare_dataset

    with tempfile.TemporaryDirectory(prefix="jnet-bench-data-") as tmp:
        work = Path(tmp)
        if not args.skip_readers:
            src = write_msd(work / "reader_src", args.reader_cases, (192, 192, 16))
            cache = prepare_dataset(src, work / "reader_cache", size=256, progress=False)
            bench_readers(cache, work, args.sizes, args.batch, args.images)
        if not args.skip_prepare:
            print(f"\nprepare throughput ({args.prepare_shape[0]}x{args.prepare_shape[1]}x"
                  f"{args.prepare_shape[2]} volumes -> S={args.prepare_size}, float16)")
            print("(slices/s include starting the worker processes; peak RSS of the main process and"
                  " of the largest worker)")
            print(f"{'cases':>6} {'workers':>8} {'slices':>7} {'slices/s':>9} {'RSS main MiB':>13}"
                  f" {'RSS worker MiB':>15}")
            for cases in args.prepare_cases:
                src = write_msd(work / f"prep_src_{cases}", cases, tuple(args.prepare_shape), seed=1)
                for workers in args.workers:
                    out = work / f"prep_{cases}_{workers}"
                    rate, n, main, worker = prepare_in_subprocess(src, out, args.prepare_size, workers)
                    print(f"{cases:>6} {workers:>8} {n:>7} {rate:>9.0f} {main:>13.0f} {worker:>15.0f}")
                    _remove(out)


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
