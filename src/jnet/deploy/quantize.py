"""INT8 models with ONNX Runtime static quantization, behind an accuracy gate.

Calibration runs the FP32 graph on low-resolution slices of a prepared slice cache (train rows of
a fold, made with ``jnet.transforms.lowres.downsample`` exactly as in training) to fix the activation ranges; the
result is a QDQ graph (QuantizeLinear/DequantizeLinear around each quantized op), per-channel
weights. The gate then segments the fold's validation rows with both models: the INT8 Jaccard
must be within :data:`MAX_JACCARD_LOSS` points of the FP32 Jaccard, or nothing is written.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from jnet.cache.reader import SliceDataset, open_prepared
from jnet.cache.schema import check_compatible
from jnet.deploy.runtime import INPUT_NAME, ModelMeta, make_session
from jnet.errors import DataError, ExportError

MAX_JACCARD_LOSS = 1.0  # Jaccard points (0..100) INT8 may lose against FP32
N_CALIB = 64  # calibration slices: enough for stable min/max on our small bodies
N_GATE = 256  # validation slices the gate segments
# What runs faster in INT8 on ONNX Runtime's CPU kernels (measured on J-Net-16, AVX2): convolutions
# (QLinearConv), with max-pooling and concatenation kept in the quantized domain between them.
# ConvTranspose has no INT8 CPU kernel (quantizing it only adds a dequantization of its weights
# on every run), and the folded head's MatMul is cheap and decides the boundary: both stay FP32.
QUANTIZED_OPS = ("Conv", "MaxPool", "Concat")


@dataclass(frozen=True)
class GateResult:
    """The INT8 accuracy gate: Jaccard (points, 0..100) of both models on the same slices."""

    fp32_jaccard: float
    int8_jaccard: float
    n_slices: int
    max_loss: float = MAX_JACCARD_LOSS
    forced: bool = False

    @property
    def passed(self) -> bool:
        return self.int8_jaccard >= self.fp32_jaccard - self.max_loss

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


class PreparedSlices:
    """Low-resolution inputs and high-resolution labels from a prepared slice cache.

    Rows are taken evenly spaced (deterministic) from the fold's ``train`` split for calibration
    and from its ``val`` split for the accuracy gate, through ``jnet.cache.reader.SliceDataset``
    with the model's input size and input simulation.
    """

    def __init__(self, root: str | os.PathLike, meta: ModelMeta, fold: int = 0,
                 n_calib: int = N_CALIB, n_gate: int = N_GATE) -> None:
        self.root, self.meta, self.fold = Path(root), meta, fold
        self.n_calib, self.n_gate = n_calib, n_gate
        self.prepared = open_prepared(self.root)
        check_compatible(asdict(meta), self.prepared.meta, self.root)

    def _rows(self, split: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
        dataset = SliceDataset(self.prepared, split, fold=self.fold, in_size=self.meta.in_size,
                               downsample=str(self.meta.downsample), augment=False)
        if len(dataset) == 0:
            raise DataError(f"{self.root}: the {split} split of fold {self.fold} has no slices")
        index = np.unique(np.linspace(0, len(dataset) - 1, min(limit, len(dataset))).round())
        images, labels, _ = dataset.__getitems__([int(i) for i in index])
        return images.numpy().astype(np.float32), labels.numpy().astype(np.uint8)

    def calibration_inputs(self, limit: int | None = None) -> np.ndarray:
        """Calibration inputs. Shape: ``(N, C, s, s)`` float32."""
        return self._rows("train", limit or self.n_calib)[0]

    def gate_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Validation inputs and labels. Shape: ``(N, C, s, s)`` float32, ``(N, S, S)`` uint8."""
        return self._rows("val", self.n_gate)


class ArrayReader(CalibrationDataReader):
    """An ONNX Runtime ``CalibrationDataReader`` over an array of inputs, in small batches."""

    def __init__(self, inputs: np.ndarray, batch_size: int = 8, input_name: str = INPUT_NAME) -> None:
        self.inputs, self.batch_size, self.input_name = inputs, batch_size, input_name
        self._it: Iterator[dict] | None = None

    def _batches(self) -> Iterator[dict]:
        for i in range(0, len(self.inputs), self.batch_size):
            yield {self.input_name: np.ascontiguousarray(self.inputs[i:i + self.batch_size])}

    def get_next(self) -> dict | None:
        if self._it is None:
            self._it = self._batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def quantize_int8(model_bytes: bytes, calibration: np.ndarray, *, per_channel: bool = True,
                  reduce_range: bool = False, symmetric: bool = False,
                  op_types: Sequence[str] = QUANTIZED_OPS) -> bytes:
    """Static QDQ quantization of an FP32 graph with min/max calibration on ``calibration``.

    Args:
        model_bytes: the FP32 ONNX graph.
        calibration: model inputs ``(N, C, s, s)`` float32 that fix the activation ranges.
        per_channel: one weight scale per output channel (helps the thin J-Net convolutions).
        reduce_range: 7-bit weights, for CPUs without VNNI where u8 x s8 products can saturate.
        symmetric: signed INT8 activations with zero point 0 (TensorRT accepts only symmetric
            Q/DQ); the default, unsigned asymmetric activations, suits ONNX Runtime's CPU kernels.
        op_types: the op types to quantize (see :data:`QUANTIZED_OPS`).
    Returns:
        The INT8 (QDQ) graph as bytes (metadata of the input is not carried over).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration.ndim != 4 or len(calibration) == 0:
        raise DataError(f"calibration data: expected a non-empty (N, C, s, s) array, found shape "
                        f"{calibration.shape}")
    reader = ArrayReader(calibration)
    with tempfile.TemporaryDirectory(prefix="jnet-int8-") as tmp:
        fp32, pre, int8 = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        fp32.write_bytes(model_bytes)
        try:  # shape inference + graph clean-up makes ORT quantize more ops
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation; quantize the raw graph instead
            pre = fp32
        quantize_static(
            str(pre), str(int8), reader, quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8, per_channel=per_channel, reduce_range=reduce_range,
            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(op_types),
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
        )
        return int8.read_bytes()


def gate_jaccard(logits: np.ndarray, labels: np.ndarray, task: dict) -> float:
    """Mean Jaccard in points (0..100) over slices, then structures, with jnet.evaluation.metrics' empty-mask
    policy (both empty = 1, one empty = 0).

    Shape: ``logits (N, classes, S, S)``, ``labels (N, S, S)`` cached-label encoding.
    """
    import torch
    from monai.metrics import compute_iou

    from jnet.transforms.tasks import masks_from_label, masks_from_logits

    t = torch.from_numpy(logits)
    if t.shape[-2:] != labels.shape[-2:]:  # a plain base predicts at s: compare at S, as evaluate does
        t = torch.nn.functional.interpolate(t, size=labels.shape[-2:], mode="bilinear",
                                            align_corners=False)
    pred = masks_from_logits(t, task["kind"]).float()
    gt = masks_from_label(torch.from_numpy(labels), task["kind"], int(task["classes"])).float()
    iou = compute_iou(pred, gt, include_background=True, ignore_empty=False)  # (N, K)
    return float(iou.mean(dim=0).mean()) * 100.0


def run_batches(session: Any, inputs: np.ndarray, batch_size: int = 16, desc: str = "") -> np.ndarray:
    """Run an ONNX Runtime session over ``inputs`` in batches (with a progress bar)."""
    from tqdm.auto import tqdm

    name = session.get_inputs()[0].name
    starts = tqdm(range(0, len(inputs), batch_size), desc=desc, unit="batch", leave=False,
                  disable=None)
    return np.concatenate([session.run(None, {name: inputs[i:i + batch_size]})[0] for i in starts])


def accuracy_gate(fp32_bytes: bytes, int8_bytes: bytes, images: np.ndarray, labels: np.ndarray,
                  task: dict, *, max_loss: float = MAX_JACCARD_LOSS, force: bool = False) -> GateResult:
    """Jaccard of both models on ``images`` vs ``labels``; raise ExportError if INT8 loses more
    than ``max_loss`` points (unless ``force``, which records that the gate was overridden)."""
    scores = {}
    for name, graph in (("fp32", fp32_bytes), ("int8", int8_bytes)):
        session = make_session(graph, source=f"{name} model")
        scores[name] = gate_jaccard(run_batches(session, images, desc=f"gate {name}"), labels, task)
    result = GateResult(scores["fp32"], scores["int8"], len(images), max_loss, forced=force)
    if not result.passed and not force:
        raise ExportError(f"INT8 accuracy gate: Jaccard {result.int8_jaccard:.2f} (INT8) vs "
                          f"{result.fp32_jaccard:.2f} (FP32) on {len(images)} validation slices, a "
                          f"loss above {max_loss} point(s); nothing written (--force writes anyway)")
    return result


def quantize_model(fp32_bytes: bytes, data: PreparedSlices | None, meta: ModelMeta, *,
                   force: bool = False, calibration: np.ndarray | None = None,
                   gate: tuple[np.ndarray, np.ndarray] | None = None,
                   **options: Any) -> tuple[bytes, GateResult]:
    """Quantize ``fp32_bytes`` and pass it through the accuracy gate.

    Args:
        fp32_bytes: the FP32 graph (parity already checked).
        data: the prepared slices (calibration and gate rows), or None when both arrays are given.
        meta: the model's metadata (task for the Jaccard).
        force: write even if the gate fails (recorded in the result).
        calibration: override the calibration inputs ``(N, C, s, s)``.
        gate: override the gate pairs ``((N, C, s, s), (N, S, S))``.
        options: passed to :func:`quantize_int8`.
    Returns:
        The INT8 graph and the gate result.
    """
    if calibration is None or gate is None:
        if data is None:
            raise ExportError("INT8: needs calibration and validation slices (--calib PREPARED_DIR)")
        calibration = data.calibration_inputs() if calibration is None else calibration
        gate = data.gate_pairs() if gate is None else gate
    int8_bytes = quantize_int8(fp32_bytes, calibration, **options)
    return int8_bytes, accuracy_gate(fp32_bytes, int8_bytes, *gate, meta.task, force=force)


__all__ = ["GateResult", "PreparedSlices", "ArrayReader", "quantize_int8", "quantize_model",
           "accuracy_gate", "gate_jaccard", "MAX_JACCARD_LOSS"]
