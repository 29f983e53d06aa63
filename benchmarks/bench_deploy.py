"""Deployment benchmark: the comparisons of the Deploy issue, side by side in one process.

    .venv/bin/python benchmarks/bench_deploy.py [--run RUN_DIR --data PREPARED] [--threads 2]
        [--reps 20] [--volume F] [--md OUT.md] [--json OUT.json]

1. J-Net-16 model-only: PyTorch eager vs eager with the folded head vs ONNX Runtime FP32 vs INT8,
   batch 1 and 16, and PyTorch under bfloat16 autocast (goals: ONNX Runtime >= 2x eager at batch 1;
   INT8 >= 1.3x ONNX FP32 at batch 16).
2. INT8 accuracy (needs a trained --run and its --data cache): Jaccard of INT8 vs FP32 on the
   validation rows (goal: <= 1 point lost).
3. The head's cost in ONNX Runtime: J-Net-16 against its own base at 16 (same base settings,
   random weights), FP32 and INT8, batch 1 and 16 (the quality issue asks <= 10% of the base).
4. End to end on one 320x320x20 volume (synthetic unless --volume): J-Net-16 vs the base network
   at 256, same backend (goal: >= 50x), and where J-Net-16's time goes, per stage, for the
   volume as given and for an uncompressed copy of it (a .nii.gz volume's load is mostly gzip).

Without --run the models have random weights (speed does not depend on them). Prints Markdown.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def synthetic_volume(path: Path, shape=(320, 320, 20), channels: int = 1) -> Path:
    """An MRI-like NIfTI (noise plus a bright ellipsoid), 0.5 x 0.5 x 3 mm, written with nibabel;
    4D with channels last when ``channels > 1`` (the MSD layout)."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    x, y, z = np.mgrid[:shape[0], :shape[1], :shape[2]]
    body = ((x - 160) / 90.0) ** 2 + ((y - 150) / 70.0) ** 2 + ((z - 10) / 8.0) ** 2 <= 1
    data = rng.normal(200, 20, shape) + 400 * body
    if channels > 1:
        data = np.stack([data * (1 + 0.2 * c) for c in range(channels)], axis=-1)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([0.5, 0.5, 3.0, 1.0])), str(path))
    return path


def uncompressed_copy(volume: Path, folder: Path) -> Path | None:
    """``volume`` saved as ``.nii`` in ``folder`` (None if it is not a ``.nii.gz`` file)."""
    import nibabel as nib

    if not volume.name.lower().endswith(".nii.gz"):
        return None
    target = folder / (volume.name[:-len(".nii.gz")] + "_uncompressed.nii")
    nib.save(nib.load(str(volume)), str(target))
    return target


def measure(plan, reps, warmup, threads, volume, calib=None, plain=None):
    """Rows in the format of ``jnet.experiments.bench.run_bench`` for ``plan``: a list of ``(spec, backends,
    batch sizes, end-to-end repetitions)``; all model-only timings interleaved (side by side)."""
    import torch

    from jnet.experiments.bench import (bench_end_to_end, bench_interleaved, count_model, load_subject,
                            make_predictor, volume_channels)

    rows, skipped, runs, predictors = [], [], {}, {}
    for spec, backends, batches, e2e_reps in plan:
        subject = load_subject(spec, in_channels=volume_channels(volume))
        for backend in backends:
            try:
                # a model of random weights is calibrated on random inputs (its speed is all it shows)
                predictor = make_predictor(subject, backend, threads=threads,
                                           calib=None if subject.random_weights else calib)
            except Exception as e:  # report and go on: one missing backend must not stop the table
                skipped.append({"model": spec, "backend": backend, "reason": str(e)})
                continue
            meta = predictor.meta
            head = {"torch": "module", "torch-folded": "folded"}.get(backend, meta.extra.get("head"))
            params, macs = count_model(subject, folded=head == "folded")
            key = (spec, backend)
            predictors[key] = (predictor, e2e_reps)
            runs[key] = (predictor, (meta.in_channels, meta.in_size, meta.in_size), batches)
            rows.append({"model": spec, "backend": backend, "in_size": meta.in_size,
                         "out_size": meta.out_size, "in_channels": meta.in_channels, "head": head,
                         "params": params, "macs": macs, "threads": threads or torch.get_num_threads()})
    print(f"timing {len(runs)} model/backend pairs side by side", file=sys.stderr)
    timed = bench_interleaved(runs, reps, warmup)
    for row in rows:
        key = (row["model"], row["backend"])
        row["batches"] = timed[key]
        predictor, e2e_reps = predictors[key]
        if not e2e_reps:  # timed model-only (the head's own base)
            continue
        print(f"end to end: {key[0]} / {key[1]}", file=sys.stderr)
        row["end_to_end"] = bench_end_to_end(predictor, volume, e2e_reps, 1)  # as jnet predict batches
        if plain is not None:
            row["end_to_end_uncompressed"] = bench_end_to_end(predictor, plain, e2e_reps, 1)
    return rows, skipped, {key: p for key, (p, _) in predictors.items()}


def int8_accuracy(run: str, data: str) -> dict:
    """Export FP32 parity + INT8 with the gate forced open, to report both Jaccards."""
    from jnet.deploy.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        result = export_onnx(run, Path(tmp) / "int8.onnx", int8=True, calib=data, force=True)
    return result.gate


def head_shares(predictors, jnet, own_base, rounds: int = 30) -> dict:
    """The head's cost in ONNX Runtime: J-Net-16's time over its own base's, minus 1, per backend
    and batch size. Timed in turn in blocks, with a rest before each so that the other session's
    spinning threads are idle (interleaved call by call, two sessions' thread pools fight over the
    cores and the ratio means nothing); the median over the rounds of the per-round ratios, and
    their interquartile range."""
    import statistics
    import time

    from jnet.experiments.bench import SETTLE_S, time_calls

    shares = {}
    for backend in ("onnxruntime", "int8"):
        pair = [predictors.get((spec, backend)) for spec in (jnet, own_base)]
        if None in pair:
            continue
        for batch in (1, 16):
            meta = pair[0].meta
            shape = (batch, meta.in_channels, meta.in_size, meta.in_size)
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            ratios = []
            for _ in range(rounds):
                times = []
                for predictor in pair:
                    time.sleep(SETTLE_S)
                    calls = time_calls(lambda: predictor(x), 20 if batch == 1 else 6, 3)
                    times.append(statistics.median(calls))
                ratios.append(times[0] / times[1] - 1)
            ratios.sort()
            shares[(backend, batch)] = (statistics.median(ratios), ratios[len(ratios) // 4],
                                        ratios[-(len(ratios) // 4) - 1])
    return shares


def own_base_spec(jnet_model) -> str:
    """The spec of a J-Net's base alone at its input size, with the J-Net's base settings."""
    cfg = jnet_model.config
    keys = [k for k in ("base", "variant", "width", "depth", "norm", "in_channels") if k in cfg]
    return f"base{jnet_model.in_size}:" + ",".join(f"{k}={cfg[k]}" for k in keys)


def goals_table(rows, gate, model_name, base_name, shares=None) -> str:
    def ips(backend, batch=1, model=model_name):
        for r in rows:
            if r["model"] == model and r["backend"] == backend:
                return {b["batch"]: b["images_per_s"] for b in r["batches"]}.get(batch)
        return None

    def e2e(model, backend, key="end_to_end"):
        for r in rows:
            if r["model"] == model and r["backend"] == backend and r.get(key):
                return r[key]
        return None

    lines = ["| goal | measured | target | met |", "|---|---|---|---|"]

    def add(goal, value, target, ok):
        shown = "-" if value is None else f"{value:.2f}"
        lines.append(f"| {goal} | {shown} | {target} | {'-' if value is None else ('yes' if ok else 'NO')} |")

    ort, eager, int8 = ips("onnxruntime"), ips("torch"), ips("int8")
    add("ONNX Runtime / PyTorch eager, images/s at batch 1 (J-Net-16)",
        ort / eager if ort and eager else None, ">= 2", ort and eager and ort / eager >= 2)
    add("INT8 / ONNX Runtime FP32, images/s at batch 1", int8 / ort if int8 and ort else None,
        "(info)", True)
    ort16, int816 = ips("onnxruntime", 16), ips("int8", 16)
    add("INT8 / ONNX Runtime FP32, images/s at batch 16", int816 / ort16 if int816 and ort16 else None,
        ">= 1.3", int816 and ort16 and int816 / ort16 >= 1.3)
    bf16, eager16 = ips("torch-bf16", 16), ips("torch", 16)
    add("PyTorch bf16 autocast / FP32 eager, images/s at batch 16", bf16 / eager16 if bf16 and eager16
        else None, "(info)", True)
    for (backend, b), (share, low, high) in (shares or {}).items():
        add(f"the head's cost in {backend}, % of its base's time at batch {b} (J-Net-16 / its base "
            f"at 16 - 1; interquartile {100 * low:.1f} to {100 * high:.1f})", 100 * share, "<= 10",
            share <= 0.10)
    loss = gate["fp32_jaccard"] - gate["int8_jaccard"] if gate else None
    add("Jaccard points lost by INT8 (validation rows)", loss, "<= 1", loss is not None and loss <= 1)
    for backend in ("onnxruntime", "torch"):
        j, b = e2e(model_name, backend), e2e(base_name, backend)
        add(f"end to end, one volume: {base_name} time / J-Net-16 time ({backend})",
            b["total_ms"] / j["total_ms"] if j and b else None, ">= 50", j and b and b["total_ms"] / j["total_ms"] >= 50)
    for backend in ("onnxruntime", "torch"):
        j, b = (e2e(m, backend, "end_to_end_uncompressed") for m in (model_name, base_name))
        add(f"the same, the volume uncompressed (.nii) ({backend})",
            b["total_ms"] / j["total_ms"] if j and b else None, "(info)", True)
    for backend in ("onnxruntime", "int8"):
        for key, what in (("end_to_end", "the volume"), ("end_to_end_uncompressed", "uncompressed (.nii)")):
            j = e2e(model_name, backend, key)
            if j:
                split = ", ".join(f"{k} {v:.1f}" for k, v in j["stages_ms"].items())
                lines.append(f"\nJ-Net-16 end to end ({backend}), {what}: {j['total_ms']:.0f} ms ({split} ms)")
    if gate:
        lines.append(f"\nINT8 gate: Jaccard {gate['int8_jaccard']:.2f} (INT8) vs {gate['fp32_jaccard']:.2f} "
                     f"(FP32) on {gate['n_slices']} validation slices")
    else:
        lines.append("\nINT8 accuracy not measured: pass --run RUN_DIR --data PREPARED (a trained J-Net-16)")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="trained J-Net-16 run dir / checkpoint (default: random weights)")
    parser.add_argument("--data", help="its slice cache (INT8 calibration and accuracy)")
    parser.add_argument("--base", default="base256", help="the high-resolution network to compare")
    parser.add_argument("--volume", help="NIfTI volume for the end-to-end run (default: synthetic 320x320x20)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: libraries')")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--md", help="also write the Markdown here")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(argv)

    import torch

    from jnet.experiments.bench import environment, load_subject, markdown
    from jnet.utils.atomic import write_json, write_text

    if args.threads:
        torch.set_num_threads(args.threads)
    jnet = args.run or "jnet16"
    with tempfile.TemporaryDirectory(prefix="jnet-bench-") as tmp:
        if args.volume:
            volume = Path(args.volume)
        else:  # as many channels as the J-Net takes (a spec: 1)
            channels = load_subject(jnet).model.in_channels
            volume = synthetic_volume(Path(tmp) / "volume_320x320x20.nii.gz", channels=channels)
        plain = uncompressed_copy(volume, Path(tmp))
        # end to end: 15 volumes for J-Net (about 50 ms each: a median of 3 moved by 10-30% between
        # runs), 3 for the base at 256 (3 s each); the base's model-only run at batch 1 only (slow)
        own_base = own_base_spec(load_subject(jnet).model)
        plan = [(jnet, ["torch", "torch-folded", "torch-bf16", "onnxruntime", "int8"], [1, 16], 15),
                (own_base, ["onnxruntime", "int8"], [1, 16], 0),  # model only: the head's cost
                (args.base, ["torch", "onnxruntime"], [1], 3)]
        rows, skipped, predictors = measure(plan, args.reps, args.warmup, args.threads, volume,
                                            calib=args.data, plain=plain)
        print("the head's cost in ONNX Runtime", file=sys.stderr)
        shares = head_shares(predictors, jnet, own_base)
    gate = int8_accuracy(args.run, args.data) if args.run and args.data else None
    result = {"environment": environment(args.threads), "rows": rows, "skipped": skipped, "gate": gate,
              "settings": {"reps": args.reps, "warmup": args.warmup, "batches": [1, 16],
                           "calibration": args.data or "random inputs (speed only)"}}
    text = ("## Deployment benchmark\n\n" + markdown(result) + "\n"
            + goals_table(rows, gate, jnet, args.base, shares))
    print(text)
    if args.md:
        write_text(args.md, text)
    if args.json:
        write_json(args.json, json.loads(json.dumps(result, default=str)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
