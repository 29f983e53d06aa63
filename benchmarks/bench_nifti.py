"""Reading a NIfTI image to float32: jnet's scaling against nibabel's ``get_fdata``, side by side.

For each stored form (int16 with and without ``scl_slope``/``scl_inter``, float32; ``.nii.gz`` and
``.nii``) of one synthetic volume: the median ms of ``jnet.sources.readers.read_nifti`` (the whole
read), and of its last step, turning the loaded image's voxels into float32 with the header's
scaling, done by jnet (``readers._float32_voxels``) and by ``img.get_fdata(dtype=np.float32)`` on
the same image loaded the same way (timed in turn within every repetition), as a Markdown table.

    python benchmarks/bench_nifti.py                       # 512 x 480 x 60, 7 repetitions
    python benchmarks/bench_nifti.py --shape 320 320 20 --reps 11
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# (name, stored dtype, slope, inter): the forms scanners and converters write
FORMS = [("int16, scaled", np.int16, 0.5, 10.0), ("int16", np.int16, np.nan, np.nan),
         ("float32", np.float32, np.nan, np.nan)]


def write_volumes(folder: Path, shape: tuple[int, int, int]) -> list[tuple[str, Path]]:
    """One noisy volume with a zero background, in every form of :data:`FORMS`, gzipped and not."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    values = rng.normal(800, 100, shape)
    values[: shape[0] // 5] = 0
    files = []
    for name, dtype, slope, inter in FORMS:
        img = nib.Nifti1Image(values.astype(dtype), np.diag([0.5, 0.5, 3.0, 1.0]))
        img.header.set_slope_inter(slope, inter)
        for suffix in (".nii.gz", ".nii"):
            path = folder / f"{name.replace(', ', '_')}{suffix}"
            nib.save(img, path)
            files.append((f"{name} {suffix}", path))
    return files


def compare(files: list[tuple[str, Path]], reps: int) -> list[dict]:
    """Median ms of the whole read and of both float32 conversions per file."""
    import nibabel as nib

    from jnet.sources import readers

    def load(path: Path):  # as read_nifti loads: the whole file in memory, then the header's view
        return readers._load_whole(path) if path.name.endswith(".gz") else nib.load(path, mmap=False)

    steps = {"read": lambda p: readers.read_nifti(p)[0],
             "jnet": lambda img: readers._float32_voxels(img),
             "nibabel": lambda img: img.get_fdata(dtype=np.float32)}
    rows = []
    for label, path in files:
        np.testing.assert_allclose(steps["jnet"](load(path)), steps["nibabel"](load(path)), rtol=1e-6)
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(reps):
            for key, step in steps.items():
                arg = path if key == "read" else load(path)  # a fresh image: get_fdata caches
                start = time.perf_counter()
                step(arg)
                times[key].append(time.perf_counter() - start)
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        rows.append({"file": label, "read_ms": ms["read"], "jnet_ms": ms["jnet"],
                     "nibabel_ms": ms["nibabel"], "ratio": ms["nibabel"] / ms["jnet"]})
    return rows


def markdown(rows: list[dict], shape: tuple[int, int, int], reps: int) -> str:
    lines = [f"Reading a {shape[0]}x{shape[1]}x{shape[2]} volume to float32, median ms of {reps}",
             "", "| stored as | read_nifti | to float32: jnet | to float32: nibabel get_fdata | speed-up |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['file']} | {r['read_ms']:.1f} | {r['jnet_ms']:.1f} | {r['nibabel_ms']:.1f} | "
              f"{r['ratio']:.2f}x |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 480, 60], metavar=("X", "Y", "Z"))
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args(argv)
    shape = tuple(args.shape)
    with tempfile.TemporaryDirectory(prefix="jnet-bench-nifti-") as tmp:
        rows = compare(write_volumes(Path(tmp), shape), args.reps)
    print(markdown(rows, shape, args.reps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
