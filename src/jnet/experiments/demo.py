"""`jnet demo`: the whole pipeline on built-in synthetic data, end to end, on a CPU.

synthesise a brain MRI set (MSD layout, T1, white matter labelled) -> prepare a slice cache -> sweep (the paper's
baseline, the bilinear baseline trained at the output size, and J-Net at two input sizes, the base
at 4x the smallest size as a reference) -> export the best J-Net
to ONNX -> predict one volume with ONNX Runtime -> ``report.md`` with tables and plots.

The data is the built-in white-matter set (``jnet data synth --kind brain``): thin, branching
structures in subjects that differ in size, contrast, blur and noise, the set on which the input
resolution matters most and on which seeds agree to about a point (on the smooth prostate gland
the demo used before, models of one recipe differed by up to 10 points from seed to seed, so one
seed said nothing). The two presets differ only in size (cases, grid, epochs); the sweep they run
is written to ``sweep.yaml`` in the output so that ``jnet sweep`` can re-run or extend it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from jnet.cache.build import prepare_dataset
from jnet.errors import JnetError
from jnet.experiments.report import write_html
from jnet.experiments.sweep import make_cells, run_cells, write_results
from jnet.synth.generate import synthesize
from jnet.utils.atomic import claim_dir, swap_dir, write_text

# Training recipe shared by every demo cell: the recommended recipe (area-averaged low-resolution
# input, the subpixel head at 20x the learning rate, BCE + Dice at every scale against class
# imbalance, AdamW + cosine, the head's two hidden layers), small enough for a CPU: width 8, flips only.
RECIPE = {
    "data": {"downsample": "area"},
    "model": {"base": "elunet", "variant": "clean", "width": 8, "norm": "batch", "head": "subpixel",
              "head_layers": 2},
    "loss": {"lowres_target": "area", "mid_target": "area", "dice_weight": 1.0},
    "train": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 1e-4, "scheduler": "cosine",
              "warmup": 1, "num_workers": 0, "precision": "32",
              "augment": "flip", "head_lr_scale": 20.0},  # J-Net's head only (docs/method.md)
}

PRESETS = {
    # cases, volume slices, cache size S, input sizes, reference base size, epochs, batch size
    # (quick: batches of 4, so that its ~120 training slices still give 300 steps: with batches of
    # 16 short runs ended near-empty; full: 8 test cases, enough for the paired interval)
    "full": {"cases": 40, "slices": 20, "size": 128, "sizes": [16, 32], "hr_size": 64, "epochs": 20,
             "batch_size": 16},
    "quick": {"cases": 16, "slices": 12, "size": 64, "sizes": [16, 32], "hr_size": 64, "epochs": 10,
              "batch_size": 4},
}


def demo_sweep(preset: dict) -> dict:
    """The demo's sweep config (same schema as configs/sweeps/*.yaml, recipe inlined)."""
    recipe = json.loads(json.dumps(RECIPE))
    recipe["train"]["epochs"] = preset["epochs"]
    recipe["train"]["batch_size"] = preset["batch_size"]
    return {
        "recipe": recipe,
        "overrides": [],
        "out_size": preset["size"],
        "sizes": preset["sizes"],
        "seeds": [0],
        "models": {
            "baseline": {"arch": "baseline", "train_at": "input"},  # the paper's comparison
            # the same base, bilinear upsampling inside training, loss at the output size: what
            # a learned head must beat
            "bilinear": {"arch": "baseline", "train_at": "output"},
            "jnet": {"arch": "jnet"},  # the recipe's (recommended) head
            f"base-{preset['hr_size']}": {"arch": "baseline", "train_at": "input", "in_size": preset["hr_size"]},
        },
        "reference": "bilinear",
        "bench": {"batch": 16, "reps": 20, "onnx": True},  # 5 calls read a J-Net/baseline ratio 0.74-1.20x
        "evaluate": {"split": "test"},
    }


def run_demo(out: str | Path = "jnet-demo", *, quick: bool = False, overwrite: bool = False,
             quiet: bool = False) -> Path:
    """Run the demo into ``out`` and return the path of its ``report.md``.

    Raises:
        DataError: ``out`` exists and is not empty (without ``overwrite``), or is not a demo folder.
    """
    out = Path(out)
    if claim_dir(out, overwrite, marker="sweep.yaml", what="jnet demo folder"):
        swap_dir(None, out)
    out.mkdir(parents=True, exist_ok=True)
    preset = PRESETS["quick" if quick else "full"]
    started = time.perf_counter()
    timings = {}

    def step(name: str) -> None:
        timings[name] = time.perf_counter() - started - sum(timings.values())
        if not quiet:
            print(f"[demo] {name} done ({timings[name]:.0f} s)", flush=True)

    data = synthesize(out / "data" / "brain-wm", "brain", cases=preset["cases"], seed=0,
                      slices=preset["slices"], progress=not quiet)
    step("synthesise")
    prepared = prepare_dataset(data, out / "prepared", task="binary", channels=["T1"], size=preset["size"],
                               seed=0, progress=not quiet)
    step("prepare")

    sweep = demo_sweep(preset)
    sweep["source"] = str(out / "sweep.yaml")
    sweep["data"] = {"path": str(prepared)}
    write_text(out / "sweep.yaml", yaml.safe_dump({k: v for k, v in sweep.items() if k != "source"},
                                                   sort_keys=False))
    cells = make_cells(sweep)
    rows = run_cells(cells, out / "sweep", sweep, quiet=quiet)
    step("sweep (train, evaluate, bench)")

    try:
        best = _best_jnet(rows)
    except JnetError:  # the tables still show what was trained, degenerate cells marked
        write_results(out / "sweep", rows, sweep, cells)
        raise
    onnx_path = out / "jnet.onnx"
    from jnet.deploy.export import export_onnx

    export_onnx(out / "sweep" / "cells" / best / "run", onnx_path)
    step("export")
    from jnet.deploy.predict import predict_paths

    volume = sorted((data / "imagesTr").glob("[!._]*.nii.gz"))[0]
    records = predict_paths(onnx_path, [volume], out / "predictions", overlay=True)
    step("predict")

    report = write_results(out / "sweep", rows, sweep, cells)
    _finish_report(out, report, best, onnx_path, volume, records, timings, quick)
    return out / "report.md"


def _best_jnet(rows: list[dict]) -> str:
    """The best J-Net cell that is not degenerate: a model that predicts nothing is never exported."""
    jnets = [r for r in rows if r.get("arch") == "jnet" and not r.get("degenerate")]
    if not jnets:
        raise JnetError("demo: every J-Net cell is degenerate (predicts no foreground, or "
                        "foreground everywhere); nothing to export. See sweep/results.md")
    best = max(jnets, key=lambda r: r["jaccard"])
    return f"{best['model']}-{best['in_size']}-seed{best['seed']}"


def _finish_report(out: Path, report: Path, best: str, onnx_path: Path, volume: Path, records: list,
                   timings: dict, quick: bool) -> None:
    """Top-level report.md: the sweep report plus the deployment step and where the time went."""
    body = report.read_text().replace("](", "](sweep/")
    record = records[0] if records else {}
    lines = [
        f"# jnet demo{' (quick)' if quick else ''}", "",
        "Synthetic T1 brain MRI (MSD layout, made by `jnet data synth --kind brain`), white matter: "
        "thin, branching, in subjects that differ in size, contrast and noise.",
        "Everything below was measured by this run.", "",
        "## Deployment", "",
        f"- best J-Net cell: `{best}`, exported to `{onnx_path.name}` (ONNX, parity-checked against PyTorch)",
        f"- predicted `{volume.name}` with ONNX Runtime -> `predictions/` "
        f"({record.get('total_s', float('nan')) * 1e3:.0f} ms end to end)", "",
        "## Wall time", "", "| step | seconds |", "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in timings.items()],
        f"| total | {sum(timings.values()):.0f} |", "",
        body.replace("# jnet sweep report", "## Sweep").replace("\n## ", "\n### ").replace("\n### Sweep", "\n## Sweep"),
    ]
    write_text(out / "report.md", "\n".join(lines))
    write_html(out / "report.md")
