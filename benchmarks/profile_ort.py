"""Which ONNX Runtime kernels run, and their share of the time, for a model's FP32 and INT8 graphs.

    .venv/bin/python benchmarks/profile_ort.py [MODEL] [--batch 16] [--threads 2]

MODEL is a run directory, checkpoint or spec (default ``jnet16:head=subpixel``, random weights).
The INT8 graph is built as ``jnet bench``'s int8 backend builds it (transposed convolutions
rewritten as convolution + pixel shuffle, QDQ, per-channel weights), calibrated on random inputs.
Prints, per graph, the median time of one batch and each op type's share of the kernel time
(ONNX Runtime's own profiler), with the number of nodes of that type.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time


def profile(model: bytes, x, threads: int, runs: int = 20) -> tuple[float, list[tuple[str, float, int]]]:
    """Median ms per run, and (op type, share of kernel time, nodes) sorted by share."""
    import onnxruntime as ort

    def session(prefix: str | None):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        if prefix:
            opts.enable_profiling, opts.profile_file_prefix = True, prefix
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])

    plain = session(None)
    feed = {plain.get_inputs()[0].name: x}
    for _ in range(5):
        plain.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        plain.run(None, feed)
        times.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory(prefix="jnet-ortprof-") as tmp:
        traced = session(os.path.join(tmp, "trace"))
        for _ in range(runs):
            traced.run(None, feed)
        with open(traced.end_profiling()) as f:
            events = json.load(f)
    spent, nodes = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"].get("op_name", "?")
            spent[op] += e["dur"]
            nodes[op] += 1
    total = sum(spent.values()) or 1
    return (statistics.median(times) * 1e3,
            [(op, us / total, nodes[op] // runs) for op, us in spent.most_common()])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="jnet16:head=subpixel")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import numpy as np

    from jnet.experiments.bench import graph, load_subject

    subject = load_subject(args.model)
    channels, size = subject.model.in_channels, subject.model.in_size
    x = np.random.default_rng(0).standard_normal((args.batch, channels, size, size)).astype(np.float32)
    print(f"{args.model}, batch {args.batch}, {args.threads} threads\n")
    print("| graph | ms per batch | op types by share of kernel time (nodes) |\n|---|---|---|")
    for backend in ("onnxruntime", "int8"):
        ms, ops = profile(graph(subject, backend), x, args.threads)
        shares = ", ".join(f"{op} {share:.0%} ({n})" for op, share, n in ops[:10])
        print(f"| {'INT8' if backend == 'int8' else 'FP32'} | {ms:.2f} | {shares} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
