"""Run a trained jnet model: an exported ``.onnx`` with ONNX Runtime, or a run dir / checkpoint
with PyTorch, behind one :class:`Predictor` interface.

The ONNX path needs numpy and onnxruntime only (no torch, no training stack): everything the
pre- and post-processing needs (sizes, channels, task, normalisation, input simulation) is read
from the jnet metadata stored in the file (``metadata_props``, JSON strings; see
``docs/deployment.md``).

Every exported file is sealed: ``jnet_sha256`` holds the SHA-256 of the file with that value
zeroed, checked (with hashlib only) before a session is made, so bytes changed after export are
refused (``verify=False``, ``--no-verify``, skips the check).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from jnet import __version__
from jnet.errors import CheckpointError, DataError, ExportError

# Version of the metadata layout below; bump it when keys change meaning.
METADATA_FORMAT = 1
# Keys every jnet .onnx file carries; values are JSON strings.
REQUIRED_KEYS = (
    "jnet_format", "jnet_version", "model", "task", "channels", "in_channels", "in_size",
    "out_size", "classes", "size", "downsample", "normalisation", "precision",
)
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
CHECKSUM_KEY = "jnet_sha256"
_UNSEALED = b"0" * 64
# The serialized metadata entry (protobuf StringStringEntryProto: key, then a 64-byte value).
_CHECKSUM_MARK = b"\x0a" + bytes([len(CHECKSUM_KEY)]) + CHECKSUM_KEY.encode() + b"\x12\x40"


def seal(model_bytes: bytes) -> bytes:
    """Write the SHA-256 of ``model_bytes`` into its ``jnet_sha256`` entry (which holds 64 zeros)."""
    at = model_bytes.find(_CHECKSUM_MARK + _UNSEALED)
    if at < 0:
        raise ExportError(f"internal: the model has no {CHECKSUM_KEY} entry to seal")
    digest = hashlib.sha256(model_bytes).hexdigest().encode()
    start = at + len(_CHECKSUM_MARK)
    return model_bytes[:start] + digest + model_bytes[start + 64:]


def verify_sealed(data: bytes, source: str) -> bool:
    """Check the seal of a serialized model. Returns False for a file without one (not exported
    by this jnet); raises DataError if the bytes changed after export."""
    at = data.find(_CHECKSUM_MARK)
    if at < 0:
        return False
    start = at + len(_CHECKSUM_MARK)
    recorded = data[start:start + 64].decode(errors="replace")
    found = hashlib.sha256(data[:start] + _UNSEALED + data[start + 64:]).hexdigest()
    if found != recorded:
        raise DataError(f"{source}: the file changed after it was exported (SHA-256 {found[:12]}..., "
                        f"its metadata recorded {recorded[:12]}...): it is corrupt or was edited; "
                        f"export it again, or pass --no-verify to load it anyway")
    return True


@dataclass(frozen=True)
class ModelMeta:
    """What a predictor needs to know about its model, stored in every exported file.

    ``size`` is S of the slice cache the model was trained on (normally ``out_size``);
    ``extra`` holds optional keys (head layout, INT8 gate results, ``degenerate``: the note of a
    checkpoint whose validation found a degenerate predictor, ...).
    """

    in_size: int
    out_size: int
    in_channels: int
    classes: int
    channels: list[str]
    task: dict
    normalisation: dict
    downsample: Any
    size: int
    model: dict = field(default_factory=dict)
    jnet_version: str = ""
    precision: str = "fp32"
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: Any, info: dict, **extra: Any) -> "ModelMeta":
        """Build from a jnet model (``.in_size`` ...) and its checkpoint ``info`` dict (its
        ``degenerate`` note, if any, goes into ``extra``)."""
        missing = [k for k in ("task", "channels") if k not in info]
        if missing:
            raise CheckpointError(f"model info: missing fields {missing}; expected the dict that "
                                  f"jnet.training.checkpoint.load_model returns (model, task, channels, size, "
                                  f"downsample, normalisation, jnet_version)")
        return cls(
            in_size=int(model.in_size), out_size=int(model.out_size),
            in_channels=int(model.in_channels), classes=int(model.classes),
            channels=list(info["channels"]), task=dict(info["task"]),
            normalisation=dict(info.get("normalisation") or {}),
            downsample=info.get("downsample", "area"),
            size=int(info.get("size", model.out_size)),
            model=dict(getattr(model, "config", None) or info.get("model") or {}),
            jnet_version=str(info.get("jnet_version", __version__)),
            extra={**({"degenerate": info["degenerate"]} if info.get("degenerate") else {}), **extra},
        )

    @property
    def degenerate(self) -> str | None:
        """The degenerate note of the checkpoint the model came from (None: healthy or unknown)."""
        return self.extra.get("degenerate") or None

    def to_props(self) -> dict[str, str]:
        """The ONNX ``metadata_props``: every field as a JSON string (extra keys flattened)."""
        d = asdict(self)
        extra = d.pop("extra")
        props = {k: json.dumps(v, sort_keys=True) for k, v in d.items()}
        props.update({k: json.dumps(v, sort_keys=True) for k, v in extra.items()})
        props["jnet_format"] = json.dumps(METADATA_FORMAT)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> "ModelMeta":
        """Inverse of :meth:`to_props`. Raises DataError naming ``source`` and the missing keys
        (ExportError for metadata that is present but unreadable)."""
        missing = [k for k in REQUIRED_KEYS if k not in props]
        if missing:
            raise DataError(f"{source}: no jnet metadata (missing keys {missing}); export it with "
                              f"`jnet export`, or pass --allow-no-metadata to guess sizes from the graph")
        values = {}
        for key, text in props.items():
            try:
                values[key] = json.loads(text)
            except json.JSONDecodeError as e:
                if key in REQUIRED_KEYS:
                    raise ExportError(f"{source}: jnet metadata {key!r} is not valid JSON ({e})") from e
                # other tools (e.g. the quantizer) add plain-text keys of their own: not ours
        if values["jnet_format"] != METADATA_FORMAT:
            raise ExportError(f"{source}: jnet metadata format {values['jnet_format']}, expected "
                              f"{METADATA_FORMAT}; re-export with this jnet version")
        names = {f for f in cls.__dataclass_fields__ if f != "extra"}
        extra = {k: v for k, v in values.items() if k not in names
                 and k not in ("jnet_format", CHECKSUM_KEY)}
        return cls(**{k: values[k] for k in names}, extra=extra)

    def describe_channels(self) -> str:
        return f"{self.in_channels} channel(s) {self.channels}"


def check_input(x: Any, meta: ModelMeta, source: str = "input") -> np.ndarray:
    """Check a model input batch before inference; return it unchanged.

    Shape: ``(B, C, s, s)`` float32 with ``C = meta.in_channels`` and ``s = meta.in_size``.
    Raises DataError naming ``source``, what was expected and what was found (ONNX Runtime would
    not check the batch size or the values, and NaN would pass through).
    """
    if not isinstance(x, np.ndarray):
        raise DataError(f"{source}: expected a numpy array, found {type(x).__name__}")
    if x.dtype != np.float32:
        raise DataError(f"{source}: expected dtype float32, found {x.dtype}")
    if x.ndim != 4:
        raise DataError(f"{source}: expected rank 4 (batch, channels, {meta.in_size}, "
                        f"{meta.in_size}), found rank {x.ndim} with shape {tuple(x.shape)}")
    if x.shape[1] != meta.in_channels:
        raise DataError(f"{source}: expected {meta.describe_channels()}, found {x.shape[1]} "
                        f"channel(s) in shape {tuple(x.shape)}")
    if x.shape[2:] != (meta.in_size, meta.in_size):
        raise DataError(f"{source}: expected spatial size {meta.in_size}x{meta.in_size}, found "
                        f"{x.shape[2]}x{x.shape[3]}")
    if x.shape[0] == 0:
        raise DataError(f"{source}: empty batch")
    bad = x.size - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        raise DataError(f"{source}: {bad} NaN/Inf value(s) in the input; expected finite values")
    return x


#: Input pixels per ONNX Runtime call on CPU at most. Past this, large inputs run 2-3x slower per
#: image (measured, the base at 256x256, 2 threads: 122-139 ms per image at batch 1-4, 274 at 8,
#: 423 at 16); at 128x128 and below batch 16 ran as fast as batch 1-4, so the cap leaves them be.
ORT_CPU_BATCH_PIXELS = 4 * 256 * 256

#: Torch intra-op threads for reading, preprocessing and writing around an ONNX Runtime model on
#: CPU. After a parallel region torch's OpenMP workers spin for a few ms, and on a small machine
#: they take the cores ONNX Runtime's own threads need: J-Net-16 on a 320x320x20 volume, 2 cores,
#: ONNX Runtime on 2 threads, model stage 18.8 -> 15.3 ms and end to end 60 -> 53 ms with one torch
#: thread (preprocessing 5.3 -> 4.7 ms); on a 512x512x60 volume 427 -> 420 ms
#: (benchmarks/bench_deploy.py; docs/performance.md).
ORT_CPU_PRE_POST_THREADS = 1

#: Slices per model call when the caller does not say: as many as keep one call within this many
#: input pixels and output values (4 slices of a network at 256x256, 16 at 128x128, 64 of a
#: J-Net's binary 256x256 output), so that a small-input J-Net's volume goes in one call: each
#: call costs eager PyTorch a few ms on top of its work (J-Net-16, 20 slices, 2 threads: 20-21 ms
#: in one call, 28-30 ms in calls of 16 and 4; benchmarks/bench_deploy.py), while large inputs run
#: slower per image in large batches, in PyTorch as in ONNX Runtime (20 slices, 2 threads, three
#: alternated runs: the base at 256x256 1.94-2.39 s in calls of 4 against 2.29-2.60 s in calls of
#: 16; J-Net-128 0.48-0.53 s in calls of 4, 0.54-0.61 s of 16, 0.62-0.63 s in one call).
AUTO_BATCH_INPUT_PIXELS = ORT_CPU_BATCH_PIXELS
AUTO_BATCH_OUTPUT_VALUES = 64 * 256 * 256


class Predictor:
    """Logits from low-resolution slices, with ONNX Runtime or PyTorch.

    Use :meth:`from_path` (``.onnx`` file, run dir or checkpoint) or :meth:`from_model`.
    ``predictor(x)`` checks ``x`` and returns logits.
    Shape: ``(B, C, s, s)`` float32 -> ``(B, classes, S, S)`` float32.
    """

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], meta: ModelMeta, backend: str,
                 source: str = "model") -> None:
        self._run = run
        self.meta = meta
        self.backend = backend
        self.source = source
        self.batch_pixels: int | None = None  # input pixels per model call at most (None: any)
        self.pre_post_threads: int | None = None  # torch threads for the work around the model (None: as is)

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_path(cls, path: str | os.PathLike, *, allow_no_metadata: bool = False,
                  trust_pickle: bool = False, threads: int | None = None,
                  providers: list[str] | None = None, verify: bool = True) -> "Predictor":
        """Open ``path``: an ``.onnx`` file (ONNX Runtime only) or a run dir / checkpoint (PyTorch).

        Args:
            path: model file or run directory.
            allow_no_metadata: accept an .onnx without jnet metadata (sizes read from the graph,
                task and preprocessing guessed; a warning says so).
            trust_pickle: passed to ``jnet.training.checkpoint.load_model`` for old pickled checkpoints.
            threads: intra-op threads (ONNX Runtime session; for torch set only while the
                model runs, see :func:`torch_threads`).
            providers: ONNX Runtime execution providers (default CPU).
            verify: check the SHA-256 recorded when the model was written (the checkpoint's
                run manifest, the .onnx file's seal).
        Returns:
            A Predictor.
        """
        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: model not found; expected an .onnx file, a run directory or "
                            f"a checkpoint")
        if path.suffix.lower() == ".onnx":
            try:
                data = path.read_bytes()
            except OSError as e:
                raise DataError(f"{path}: cannot read the model ({e.strerror or e})") from e
            if verify:
                verify_sealed(data, str(path))
            return cls.from_onnx(data, allow_no_metadata=allow_no_metadata, threads=threads,
                                 providers=providers, source=str(path))
        from jnet.training.checkpoint import load_model

        model, info = load_model(path, trust_pickle=trust_pickle, verify=verify)
        return cls.from_model(model, info, threads=threads, source=str(path))

    @classmethod
    def from_onnx(cls, model: str | os.PathLike | bytes, *, allow_no_metadata: bool = False,
                  threads: int | None = None, providers: list[str] | None = None,
                  source: str | None = None) -> "Predictor":
        """An ONNX Runtime predictor for a file path or serialized model bytes."""
        source = source or (str(model) if not isinstance(model, bytes) else "onnx model")
        session = make_session(model, threads=threads, providers=providers, source=source)
        props = dict(session.get_modelmeta().custom_metadata_map)
        if "jnet_format" in props or not allow_no_metadata:
            meta = ModelMeta.from_props(props, source=source)
        else:
            meta = _guess_meta(session, source)
        input_name = session.get_inputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            return session.run(None, {input_name: x})[0]

        backend = "onnxruntime-int8" if meta.precision == "int8" else "onnxruntime"
        predictor = cls(run, meta, backend, source)
        predictor.session = session
        if session.get_providers()[0] == "CPUExecutionProvider":
            predictor.batch_pixels = ORT_CPU_BATCH_PIXELS
            predictor.pre_post_threads = ORT_CPU_PRE_POST_THREADS
        return predictor

    @classmethod
    def from_model(cls, model: Any, info: dict, *, threads: int | None = None,
                   source: str = "pytorch model", bf16: bool = False) -> "Predictor":
        """A PyTorch (eager) predictor for ``model`` (put in eval mode) and its ``info`` dict;
        ``bf16`` runs it under CPU autocast to bfloat16 (logits come back as float32)."""
        import torch

        model.eval()
        meta = ModelMeta.from_model(model, info)
        if bf16:
            meta = dataclasses.replace(meta, precision="bf16")

        def run(x: np.ndarray) -> np.ndarray:
            with (torch_threads(threads), torch.inference_mode(),
                  torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)):
                out = model(torch.from_numpy(x))
            if isinstance(out, (list, tuple)):  # eval contract is one tensor; be lenient
                out = out[-1]
            return out.float().numpy()

        predictor = cls(run, meta, "torch", source)
        predictor.model = model
        return predictor

    # --- inference ----------------------------------------------------------------------------
    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._run(check_input(x, self.meta, self.source))

    def auto_batch_size(self) -> int:
        """Slices per call by default (:data:`AUTO_BATCH_INPUT_PIXELS`, :data:`AUTO_BATCH_OUTPUT_VALUES`)."""
        meta = self.meta
        return max(1, min(AUTO_BATCH_INPUT_PIXELS // meta.in_size ** 2,
                          AUTO_BATCH_OUTPUT_VALUES // (meta.classes * meta.out_size ** 2)))

    def predict(self, x: np.ndarray, batch_size: int | None = None,
                progress: bool = False) -> np.ndarray:
        """Logits for any number of slices, run in batches of ``batch_size`` (default
        :meth:`auto_batch_size`; on ONNX Runtime's CPU provider at most
        :data:`ORT_CPU_BATCH_PIXELS` input pixels per call).

        Shape: ``(N, C, s, s)`` -> ``(N, classes, S, S)``.
        """
        check_input(x, self.meta, self.source)
        fixed = self.meta.extra.get("static_batch")
        if fixed:  # a graph exported for one batch size: run exactly that many, padding the last
            return self._fixed_batches(x, int(fixed))
        if batch_size is None:
            batch_size = self.auto_batch_size()
        if self.batch_pixels:
            batch_size = min(batch_size, self.batch_pixels // self.meta.in_size ** 2)
        batch_size = max(1, batch_size)
        starts = range(0, x.shape[0], batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="slices", unit="batch", leave=False)
        out = [self._run(np.ascontiguousarray(x[i:i + batch_size])) for i in starts]
        return out[0] if len(out) == 1 else np.concatenate(out)

    def _fixed_batches(self, x: np.ndarray, size: int) -> np.ndarray:
        out = []
        for i in range(0, x.shape[0], size):
            chunk = x[i:i + size]
            pad = size - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            out.append(self._run(np.ascontiguousarray(chunk))[:size - pad])
        return np.concatenate(out)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (None/0: unchanged), then restore the
    process-wide count, so that a Predictor does not change it for the rest of the process."""
    if not threads:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_session(model: str | os.PathLike | bytes, *, threads: int | None = None,
                 providers: list[str] | None = None, source: str = "model"):
    """An ``onnxruntime.InferenceSession`` (all graph optimisations, sequential execution)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    data = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(data, opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped errors for corrupt files
        raise DataError(f"{source}: not a loadable ONNX model ({str(e).splitlines()[0]})") from e


def _guess_meta(session: Any, source: str) -> ModelMeta:
    """Sizes from the graph's static input/output shapes, the rest from jnet's defaults."""
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    shape_in, shape_out = list(inp.shape), list(out.shape)
    ok = (len(shape_in) == 4 and len(shape_out) == 4
          and all(isinstance(v, int) and v > 0 for v in shape_in[1:] + shape_out[1:])
          and shape_in[2] == shape_in[3] and shape_out[2] == shape_out[3])
    if not ok:
        raise ExportError(f"{source}: without jnet metadata the graph must have a static input "
                          f"(B, C, s, s) and output (B, classes, S, S); found {shape_in} -> {shape_out}")
    # a fixed batch dimension (an int, not a name): the graph runs only batches of that size
    static = {"static_batch": shape_in[0]} if isinstance(shape_in[0], int) and shape_in[0] > 0 else {}
    classes = shape_out[1]
    if classes == 1:
        task = {"kind": "binary", "names": ["foreground"], "classes": 1,
                "labels": {"foreground": [1]}}
    else:
        names = ["background"] + [f"class{i}" for i in range(1, classes)]
        task = {"kind": "multiclass", "names": names, "classes": classes,
                "labels": {n: [i] for i, n in enumerate(names)}}
    warnings.warn(f"{source}: no jnet metadata; assuming a {task['kind']} task, z-score "
                  f"normalisation and area downsampling", stacklevel=3)
    return ModelMeta(in_size=shape_in[2], out_size=shape_out[2], in_channels=shape_in[1],
                     classes=classes, channels=[f"channel{i}" for i in range(shape_in[1])],
                     task=task, normalisation={"method": "zscore-nonzero"}, downsample="area",
                     size=shape_out[2], extra={"guessed": True, **static})
