"""Speed and memory of models across backends, batch sizes and input sizes, side by side.

``jnet bench MODEL... --backend torch,onnxruntime,int8 --batch 1,16 [--volume F]``. A MODEL is a
run dir / checkpoint / ``.onnx`` file, a YAML config (its ``model`` section) or a spec such as
``jnet16``, ``base16``, ``baseline32`` or ``base256`` (``ARCH`` + input size, optional
``:field=value,...`` build_model overrides). Configs and specs get random weights: speed does not
depend on them, so every size can be measured without training.

Model-only rows: images/s at each batch size, latency p50/p95 (per call), peak resident memory
growth while the backend runs (Linux ``VmHWM``, reset before each measurement), parameters,
multiply-accumulates and threads. End-to-end rows (``--volume``): one NIfTI in, mask out, with
the time per stage (load, preprocess, model, postprocess, write). Model-only timings are
interleaved (every model in each of :data:`ROUNDS` passes), so that load changes on a shared
machine hit all models alike; ratios are against the first row: compare models measured in one run.
"""
from __future__ import annotations

import copy
import os
import platform
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from jnet.deploy.runtime import torch_threads
from jnet.errors import ConfigError, DataError, JnetError

# torch: eager, the default path (an affine head folds itself in eval mode); torch-folded: the
# explicitly folded copy (jnet.models.fold_head); torch-unfolded: the head as trained; torch-bf16:
# the default path under CPU autocast to bfloat16 (oneDNN's AMX / AVX512-BF16 kernels where the
# CPU has them).
BACKENDS = ("torch", "torch-folded", "torch-unfolded", "torch-bf16", "onnxruntime", "int8")
SPEC = re.compile(r"^(jnet|baseline|base)(\d+)(?::(.*))?$")
DEFAULT_S = 256  # the high-resolution grid of the paper's data, for specs
CALIB_SLICES = 32
ROUNDS = 4  # passes over all models in a side-by-side measurement
#: Seconds of rest before each model's block of calls in a side-by-side measurement, so that the
#: previous model's thread pool (ONNX Runtime's spinning workers, torch's OpenMP ones) is idle and
#: each model is timed as it runs alone. Without it, INT8 after ONNX Runtime FP32 read 1.13-1.41x
#: of it at batch 16 in three runs on 2 cores, 1.29-1.85x with it (same process, alternated).
SETTLE_S = 0.02


@dataclass
class Subject:
    """A model to measure: PyTorch module (if any), exported bytes (if any), metadata."""

    name: str
    model: Any | None
    info: dict
    onnx: bytes | None = None  # an .onnx given as MODEL
    random_weights: bool = False
    _graphs: dict = field(default_factory=dict)
    _folded: tuple | None = None

    def inference_module(self) -> tuple[Any, str]:
        """The module that inference runs (folded J-Net head where possible), computed once."""
        if self._folded is None:
            from jnet.deploy.export import inference_module

            self._folded = inference_module(self.model)
        return self._folded


# ----------------------------------------------------------------------------------- models
def parse_spec(spec: str) -> dict | None:
    """``jnet16`` / ``base256`` / ``baseline32:width=8,head=chain`` -> build_model config, or None."""
    import yaml

    m = SPEC.match(spec)
    if not m:
        return None
    arch, size, extra = m.group(1), int(m.group(2)), m.group(3)
    config: dict[str, Any] = {"arch": arch, "in_size": size}
    if arch != "base":
        config["out_size"] = max(DEFAULT_S, size)
    for part in filter(None, (extra or "").split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"model spec {spec!r}: expected field=value after ':', found {part!r}")
        config[key.strip()] = yaml.safe_load(value)
    return config


def random_info(model: Any) -> dict:
    """Checkpoint-like info for a randomly initialised model (binary task, z-score, area)."""
    from jnet.transforms.slicing import NORMALISATION

    classes = int(model.classes)
    if classes == 1:
        task = {"kind": "binary", "names": ["foreground"], "classes": 1, "labels": {"foreground": [1]}}
    else:
        names = ["background"] + [f"class{i}" for i in range(1, classes)]
        task = {"kind": "multiclass", "names": names, "classes": classes,
                "labels": {n: [i] for i, n in enumerate(names)}}
    return {"task": task, "channels": [f"channel{i}" for i in range(model.in_channels)],
            "size": max(int(model.out_size), DEFAULT_S), "downsample": "area",
            "normalisation": dict(NORMALISATION), "model": dict(model.config)}


def load_subject(spec: str, *, trust_pickle: bool = False, in_channels: int | None = None) -> Subject:
    """Resolve one MODEL argument (see the module docstring)."""
    path = Path(spec)
    config = None
    if path.suffix.lower() == ".onnx" and path.is_file():
        return Subject(spec, None, {}, onnx=path.read_bytes())
    if path.suffix.lower() in (".yaml", ".yml") and path.is_file():
        from jnet.training.config import load_config

        config = dict(load_config(path).model)
    elif path.exists():
        from jnet.training.checkpoint import load_model

        model, info = load_model(path, trust_pickle=trust_pickle)
        return Subject(spec, model, info)
    else:
        config = parse_spec(spec)
        if config is None:
            raise ConfigError(f"model {spec!r}: not a file or run dir, and not a spec like jnet16, "
                              f"base16, baseline32 or base256 (ARCH + input size)")
    if in_channels and "in_channels" not in config:
        config["in_channels"] = in_channels
    from jnet.models.jnet import build_model

    model = build_model(**config).eval()
    return Subject(spec, model, random_info(model), random_weights=True)


def count_model(subject: Subject, folded: bool = False) -> tuple[int | None, int | None]:
    """Parameters (as trained) and multiply-accumulates per image of the module that runs (the
    folded head when ``folded``), from :mod:`jnet.experiments.profiling`; None where unknown (an .onnx file)."""
    if subject.model is None:
        return None, None
    from jnet.experiments import profiling

    model = subject.inference_module()[0] if folded else subject.model
    params = profiling.count_parameters(subject.model)
    shape = (1, model.in_channels, model.in_size, model.in_size)
    return int(params), int(profiling.count_macs(model, shape))


# ----------------------------------------------------------------------------------- backends
def make_predictor(subject: Subject, backend: str, *, threads: int | None = None,
                   calib: str | os.PathLike | None = None):
    """A :class:`jnet.deploy.runtime.Predictor` for ``subject`` on ``backend``; raises JnetError when the
    combination does not exist (e.g. torch for an .onnx file)."""
    from jnet.deploy.runtime import Predictor

    if backend not in BACKENDS:
        raise ConfigError(f"--backend: unknown {backend!r}; expected some of {', '.join(BACKENDS)}")
    if backend.startswith("torch"):
        if subject.model is None:
            raise ConfigError(f"{subject.name}: an .onnx file has no PyTorch weights; backend "
                              f"{backend} is not available")
        model = subject.model
        if backend == "torch-folded":
            model, head = subject.inference_module()
            if head != "folded":
                raise ConfigError(f"{subject.name}: no affine J-Net head to fold")
        elif backend == "torch-unfolded":
            if not getattr(getattr(model, "head", None), "foldable", False):
                raise ConfigError(f"{subject.name}: no affine J-Net head: torch-unfolded is torch")
            model = copy.deepcopy(model)
            model.auto_fold = False
        return Predictor.from_model(model, subject.info, threads=threads, source=subject.name,
                                    bf16=backend == "torch-bf16")
    return Predictor.from_onnx(graph(subject, backend, calib), threads=threads, source=subject.name)


def graph(subject: Subject, backend: str, calib: str | os.PathLike | None = None) -> bytes:
    """The FP32 or INT8 ONNX graph of ``subject`` (exported in memory, parity-checked, cached)."""
    if backend in subject._graphs:
        return subject._graphs[backend]
    from dataclasses import replace

    from jnet.deploy.export import add_metadata, export_graph
    from jnet.deploy.runtime import ModelMeta, Predictor

    int8 = backend == "int8"
    if subject.onnx is not None:  # a file: run it as it is, or quantize it as it is
        data = subject.onnx
        meta = Predictor.from_onnx(data, source=subject.name).meta
    else:
        module, head = subject.inference_module()
        meta = ModelMeta.from_model(subject.model, subject.info, head=head)
        if int8:  # the FP32 graph, quantized below
            data = graph(subject, "onnxruntime")
        else:
            data = add_metadata(export_graph(subject.model, module, meta)[0], meta)
    if int8 and meta.precision != "int8":
        from jnet.deploy.quantize import PreparedSlices, quantize_int8

        if calib is not None:
            inputs = PreparedSlices(calib, meta).calibration_inputs()
        else:  # speed only: the ranges of random weights on random inputs
            rng = np.random.default_rng(0)
            inputs = rng.standard_normal((CALIB_SLICES, meta.in_channels, meta.in_size,
                                          meta.in_size)).astype(np.float32)
        data = add_metadata(quantize_int8(data, inputs), replace(meta, precision="int8"))
    subject._graphs[backend] = data
    return data


# ----------------------------------------------------------------------------------- measuring
class PeakRSS:
    """Peak resident-memory growth of this process over a block (Linux: VmHWM reset through
    ``/proc/self/clear_refs``; elsewhere the growth of ``ru_maxrss``, a lower bound)."""

    def __enter__(self) -> "PeakRSS":
        self.exact = _reset_peak()
        self.start = _status_kb("VmRSS") if self.exact else _maxrss_kb()
        return self

    def __exit__(self, *exc: Any) -> None:
        end = _status_kb("VmHWM") if self.exact else _maxrss_kb()
        self.mb = max(0, (end or 0) - (self.start or 0)) / 1024.0


_FRESH_PEAK = """
import sys, numpy as np, torch
from jnet.experiments.bench import _reset_peak, _status_kb
from jnet.training.checkpoint import load_model
model, _ = load_model(sys.argv[1])
x = torch.from_numpy(np.random.default_rng(0).standard_normal(
    (int(sys.argv[2]), model.in_channels, model.in_size, model.in_size)).astype(np.float32))
torch.set_num_threads(int(sys.argv[3]))
_reset_peak()
before = _status_kb("VmRSS")
with torch.inference_mode():
    for _ in range(3):
        model(x)
print(_status_kb("VmHWM") - before)
"""


def fresh_process_peak_mb(checkpoint: str | os.PathLike, batch: int, threads: int = 1) -> float | None:
    """Peak resident memory (MB) that predicting one batch adds to a fresh process that has loaded
    the model: what a deployment needs beyond the runtime and the weights. In-process figures
    say nothing here: memory freed by earlier work (training, other models) is reused. None where
    ``/proc`` is missing (not Linux) or the child fails."""
    import subprocess
    import sys

    if _status_kb("VmHWM") is None:
        return None
    done = subprocess.run([sys.executable, "-c", _FRESH_PEAK, str(checkpoint), str(batch), str(threads)],
                          capture_output=True, text=True, timeout=300)
    try:
        return int(done.stdout.strip().splitlines()[-1]) / 1024.0
    except (ValueError, IndexError):
        return None


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


def _maxrss_kb() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def time_calls(fn: Callable[[], Any], reps: int, warmup: int) -> list[float]:
    """Seconds per call of ``fn`` over ``reps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _stats(batch: int, times: Sequence[float], peak_mb: float) -> dict[str, Any]:
    p50 = percentile(times, 50)
    return {"batch": batch, "images_per_s": batch / p50, "latency_ms_p50": 1e3 * p50,
            "latency_ms_p95": 1e3 * percentile(times, 95), "peak_rss_mb": peak_mb}


def bench_interleaved(runs: dict[Any, tuple[Callable[[np.ndarray], Any], Sequence[int], Sequence[int]]],
                      reps: int, warmup: int, rounds: int = ROUNDS) -> dict[Any, list[dict]]:
    """Time several models side by side: ``rounds`` passes over all of them, each timing its
    share of ``reps`` calls per batch size, so that load changes on a shared machine hit every
    model alike and their ratios stay meaningful; each block after a rest of :data:`SETTLE_S` and
    one untimed call (the rest leaves the thread pools cold: without the call, a block of one or
    two timed calls read a 2 ms model at up to 30 ms).

    Args:
        runs: key -> ``(run, sample shape (C, s, s), batch sizes)``.
        reps: timed calls per model and batch size, spread over the rounds.
        warmup: untimed calls before the first round (peak memory includes them).
    Returns:
        key -> one :func:`bench_callable`-style dict per batch size.
    """
    rounds = max(1, min(rounds, reps))
    share = [reps // rounds + (r < reps % rounds) for r in range(rounds)]
    rng = np.random.default_rng(0)
    inputs = {(key, b): rng.standard_normal((b, *sample)).astype(np.float32)
              for key, (_, sample, batches) in runs.items() for b in batches}
    times: dict[tuple, list[float]] = {k: [] for k in inputs}
    peaks: dict[tuple, float] = {}
    for r in range(rounds):
        for key, (run, _, batches) in runs.items():
            for b in batches:
                x = inputs[(key, b)]
                time.sleep(SETTLE_S)
                if r == 0:
                    with PeakRSS() as peak:
                        times[(key, b)] += time_calls(lambda: run(x), share[r], warmup)
                    peaks[(key, b)] = peak.mb
                else:  # one untimed call first: after the rest, the thread pools start cold
                    times[(key, b)] += time_calls(lambda: run(x), share[r], 1)
    return {key: [_stats(b, times[(key, b)], peaks[(key, b)]) for b in batches]
            for key, (_, _, batches) in runs.items()}


def bench_callable(run: Callable[[np.ndarray], Any], sample: Sequence[int], batch: int, reps: int,
                   warmup: int) -> dict[str, Any]:
    """Time ``run`` alone on a random float32 batch ``(batch, *sample)``: images/s (batch /
    median latency), latency p50/p95 in ms per call, peak memory growth in MB."""
    return bench_interleaved({0: (run, sample, [batch])}, reps, warmup, rounds=1)[0][0]


def _summary(run: Callable[[np.ndarray], Any], shape: Sequence[int], batch: int, reps: int,
             warmup: int) -> dict[str, Any]:
    one = bench_callable(run, shape[1:], 1, reps, warmup)
    many = bench_callable(run, shape[1:], batch, reps, warmup)
    return {"images_per_s": many["images_per_s"], "batch": batch,
            "latency_p50_ms": one["latency_ms_p50"], "latency_p95_ms": one["latency_ms_p95"],
            "peak_mem_mb": max(one["peak_rss_mb"], many["peak_rss_mb"])}


def torch_runner(model: Any) -> Callable[[np.ndarray], Any]:
    """A call of ``model`` (eval mode) on a float32 batch, without autograd."""
    import torch

    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    return run


def onnx_runner(model: str | os.PathLike | bytes, threads: int | None = None) -> Callable[[np.ndarray], Any]:
    """A call of an ONNX Runtime session of ``model`` (a file or a graph) on a float32 batch."""
    from jnet.deploy.runtime import make_session

    session = make_session(model, threads=threads, source=str(model)[:200])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def measure_torch(model: Any, shape: Sequence[int], *, batch: int = 16, reps: int = 10,
                  warmup: int = 3, threads: int | None = None) -> dict[str, Any]:
    """Eager PyTorch speed of ``model`` (the sweep's per-cell figure).

    Args:
        model: a module in eval mode. shape: ``(1, C, s, s)``, the per-image input.
        batch: batch size of the throughput figure. reps, warmup: calls per measurement.
        threads: torch intra-op threads for the measurement (restored afterwards).
    Returns:
        ``images_per_s`` (at ``batch``), ``latency_p50_ms``/``latency_p95_ms`` (batch 1),
        ``peak_mem_mb``, ``batch``.
    """
    with torch_threads(threads):
        return _summary(torch_runner(model), shape, batch, reps, warmup)


def measure_onnx(model: str | os.PathLike | bytes, shape: Sequence[int], *, batch: int = 16,
                 reps: int = 10, warmup: int = 3, threads: int | None = None) -> dict[str, Any]:
    """ONNX Runtime (CPU) speed of an .onnx file or graph; same keys as :func:`measure_torch`."""
    return _summary(onnx_runner(model, threads), shape, batch, reps, warmup)


def bench_end_to_end(predictor: Any, volume: Path, reps: int, warmup: int,
                     batch_size: int | None = None) -> dict[str, Any]:
    """Median seconds per stage of predicting ``volume`` (mask written to a temporary folder)."""
    from jnet.deploy.predict import STAGES, Item, predict_item

    from jnet.sources.readers import nifti_stem

    item = Item(volume, "nifti", nifti_stem(volume))
    records = []
    with tempfile.TemporaryDirectory(prefix="jnet-bench-") as tmp, PeakRSS() as peak:
        files = item.outputs(Path(tmp), overlay=False, probabilities=False)
        for i in range(warmup + reps):
            record = predict_item(predictor, item, files, batch_size=batch_size)
            if i >= warmup:
                records.append(record)
    stages = {s: statistics.median(r["timing_s"][s] for r in records) for s in STAGES}
    return {"volume": str(volume), "shape": records[0]["shape"], "slices": records[0]["slices"],
            "total_ms": 1e3 * statistics.median(r["total_s"] for r in records),
            "stages_ms": {s: 1e3 * v for s, v in stages.items()}, "peak_rss_mb": peak.mb}


def volume_channels(volume: str | os.PathLike) -> int:
    """Channel count of a NIfTI volume from its header (4D = channels last)."""
    import nibabel as nib

    try:
        shape = nib.load(str(volume)).shape
    except Exception as e:
        raise DataError(f"{volume}: cannot read the NIfTI header ({e})") from e
    return int(shape[3]) if len(shape) == 4 else 1


def run_bench(models: Sequence[str], *, backends: Sequence[str] = ("torch", "onnxruntime"),
              batches: Sequence[int] = (1, 16), sizes: Sequence[int] | None = None,
              volume: str | os.PathLike | None = None, reps: int = 20, warmup: int = 3,
              threads: int | None = None, calib: str | os.PathLike | None = None,
              trust_pickle: bool = False, progress: bool = True) -> dict[str, Any]:
    """Measure every model x backend (x batch size, and end to end with ``volume``).

    Args:
        models: MODEL arguments (see the module docstring).
        backends: any of :data:`BACKENDS` (combinations that do not exist are reported as skipped).
        batches: batch sizes of the model-only measurement.
        sizes: input sizes to substitute into specs (``jnet16`` with ``sizes=[16, 32]`` measures
            jnet16 and jnet32); ignored for files.
        volume: a NIfTI file for the end-to-end measurement.
        reps, warmup: timed and untimed calls per measurement (end to end: at most 5 and 1).
        threads: intra-op threads for both torch and ONNX Runtime (default: the libraries').
        calib: a prepared slice cache for INT8 calibration (default: random inputs, speed only).
        trust_pickle: load old pickled checkpoints.
        progress: show a progress bar.
    Returns:
        ``{"environment": {...}, "rows": [...], "skipped": [...]}``; each row has model, backend,
        sizes, params, macs, threads, ``batches`` (one dict per batch size) and ``end_to_end``.
    """
    if reps < 1 or warmup < 0 or not batches or any(b < 1 for b in batches):
        raise ConfigError(f"bench: expected reps >= 1, warmup >= 0 and positive batch sizes, found "
                          f"reps {reps}, warmup {warmup}, batches {list(batches)}")
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ConfigError(f"--backend: unknown {unknown}; expected some of {', '.join(BACKENDS)}")
    with torch_threads(threads):  # torch's thread count is process-wide: given back afterwards
        return _run(models, backends, batches, sizes, volume, reps, warmup, threads, calib,
                    trust_pickle, progress)


def _run(models, backends, batches, sizes, volume, reps, warmup, threads, calib, trust_pickle,
         progress) -> dict[str, Any]:
    import torch
    from tqdm.auto import tqdm

    channels = volume_channels(volume) if volume else None
    specs = expand_sizes(models, sizes)
    rows, skipped = [], []
    work = [(s, b) for s in specs for b in backends]
    bar = tqdm(work, desc="bench", unit="run", disable=None if progress else True)
    subjects: dict[str, Subject] = {}
    predictors = {}
    for spec, backend in bar:  # build everything first, then measure side by side
        bar.set_postfix_str(f"{spec} {backend}")
        if spec not in subjects:
            subjects[spec] = load_subject(spec, trust_pickle=trust_pickle, in_channels=channels)
        subject = subjects[spec]
        try:
            predictor = make_predictor(subject, backend, threads=threads, calib=calib)
        except JnetError as e:
            skipped.append({"model": spec, "backend": backend, "reason": str(e)})
            continue
        meta = predictor.meta
        auto = getattr(getattr(subject.model, "head", None), "foldable", False)
        default_path = "folded" if auto else "module"
        head = {"torch": default_path, "torch-bf16": default_path, "torch-folded": "folded",
                "torch-unfolded": "module"}.get(backend, meta.extra.get("head"))
        params, macs = count_model(subject, folded=head == "folded")
        predictors[(spec, backend)] = predictor
        rows.append({"model": spec, "backend": backend, "precision": meta.precision,
                     "in_size": meta.in_size, "out_size": meta.out_size,
                     "in_channels": meta.in_channels, "head": head,
                     "random_weights": subject.random_weights, "params": params, "macs": macs,
                     "threads": threads or (torch.get_num_threads() if backend.startswith("torch")
                                            else "ort-default")})
    timed = bench_interleaved({k: (p, (p.meta.in_channels, p.meta.in_size, p.meta.in_size), batches)
                               for k, p in predictors.items()}, reps, warmup)
    for row in rows:
        key = (row["model"], row["backend"])
        row["batches"] = timed[key]
        if volume:
            row["end_to_end"] = bench_end_to_end(predictors[key], Path(volume), min(reps, 5),
                                                 min(warmup, 1))  # as jnet predict batches
    return {"environment": environment(threads), "rows": rows, "skipped": skipped,
            "settings": {"reps": reps, "warmup": warmup, "batches": list(batches),
                         "backends": list(backends), "volume": str(volume) if volume else None,
                         "calibration": str(calib) if calib else "random inputs (speed only)"}}


def expand_sizes(models: Sequence[str], sizes: Sequence[int] | None) -> list[str]:
    """Substitute each of ``sizes`` into spec models (files are kept as they are)."""
    if not sizes:
        return list(models)
    out = []
    for spec in models:
        m = SPEC.match(spec)
        if m and not Path(spec).exists():
            tail = f":{m.group(3)}" if m.group(3) else ""
            out += [f"{m.group(1)}{s}{tail}" for s in sizes]
        else:
            out.append(spec)
    return list(dict.fromkeys(out))


def environment(threads: int | None) -> dict[str, Any]:
    import onnxruntime
    import torch

    from jnet import __version__

    return {"jnet": __version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "processor": _cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "threads": threads}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ----------------------------------------------------------------------------------- reporting
def _num(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _si(v: int | None) -> str:
    if v is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.2f}{unit}"
    return str(v)


def markdown(result: dict[str, Any]) -> str:
    """Markdown tables: model-only (images/s per batch, latency at the smallest batch, memory,
    ratio to the first row) and, if measured, end to end with the time per stage."""
    rows = result["rows"]
    batches = result["settings"]["batches"]
    b0 = batches[0]
    lines = []
    head = (["model", "backend", "in->out", "params", "MACs", "threads"]
            + [f"img/s b{b}" for b in batches]
            + [f"p50 ms b{b0}", f"p95 ms b{b0}", "peak MB", f"x first (b{b0})"])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = rows[0]["batches"][0]["images_per_s"] if rows else None
    for r in rows:
        per = {m["batch"]: m for m in r["batches"]}
        backend = r["backend"] + (" (int8 file)" if r.get("precision") == "int8"
                                  and r["backend"] == "onnxruntime" else "")
        cells = [r["model"], backend, f"{r['in_size']}->{r['out_size']}", _si(r["params"]),
                 _si(r["macs"]), str(r["threads"])]
        cells += [_num(per[b]["images_per_s"]) if b in per else "-" for b in batches]
        cells += [_num(per[b0]["latency_ms_p50"], 2), _num(per[b0]["latency_ms_p95"], 2),
                  _num(max(m["peak_rss_mb"] for m in r["batches"])),
                  _num(per[b0]["images_per_s"] / first, 2) if first else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    e2e = [r for r in rows if r.get("end_to_end")]
    if e2e:
        from jnet.deploy.predict import STAGES

        e = e2e[0]["end_to_end"]
        lines += ["", f"End to end: {e['volume']} (shape {e['shape']}, {e['slices']} slices), "
                      f"median ms per stage", ""]
        head = ["model", "backend", "total ms"] + list(STAGES) + ["model share", "x first"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        base = e2e[0]["end_to_end"]["total_ms"]
        for r in e2e:
            t = r["end_to_end"]
            cells = [r["model"], r["backend"], _num(t["total_ms"])]
            cells += [_num(t["stages_ms"][s]) for s in STAGES]
            cells += [f"{100 * t['stages_ms']['model'] / t['total_ms']:.0f}%",
                      _num(base / t["total_ms"], 2)]
            lines.append("| " + " | ".join(cells) + " |")
    if result.get("skipped"):
        lines += ["", "Skipped:"] + [f"- {s['model']} / {s['backend']}: {s['reason']}"
                                     for s in result["skipped"]]
    env = result["environment"]
    lines += ["", f"{env['processor']}, {env['cpu_count']} CPUs; torch {env['torch']} "
                  f"({env['torch_threads']} threads), onnxruntime {env['onnxruntime']}; "
                  f"{result['settings']['reps']} reps after {result['settings']['warmup']} warm-up; "
                  f"INT8 calibration: {result['settings']['calibration']}"]
    return "\n".join(lines) + "\n"


__all__ = ["BACKENDS", "run_bench", "markdown", "load_subject", "parse_spec", "make_predictor",
           "bench_callable", "bench_interleaved", "bench_end_to_end", "measure_torch", "measure_onnx",
           "torch_runner", "onnx_runner",
           "PeakRSS"]
