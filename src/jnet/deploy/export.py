"""Export a trained model to ONNX (optionally INT8) or TorchScript, checked against PyTorch.

The exported graph is the model's eval contract: input ``image (B, C, s, s)`` float32 with a
dynamic batch and a fixed spatial size, output ``logits (B, classes, S, S)``. The J-Net head is
folded (``jnet.models.fold.fold_head``) when possible: exact and much faster. Padding is explicit
(no ``auto_pad``; older TensorRT releases mishandle it), the opset is pinned, and the jnet metadata
(sizes, channels, task, normalisation, input simulation, config, version) is stored in the file.
Nothing is written unless ONNX Runtime reproduces PyTorch (rtol 1e-3, atol 1e-4).
"""
from __future__ import annotations

import copy
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jnet import __version__
from jnet.deploy.runtime import CHECKSUM_KEY, INPUT_NAME, OUTPUT_NAME, ModelMeta, make_session, seal
from jnet.errors import ConfigError, ExportError, JnetError
from jnet.models.blocks import tracing
from jnet.models.fold import fold_head
from jnet.training.checkpoint import load_model
from jnet.utils.atomic import atomic_path, check_writable

log = logging.getLogger(__name__)

RTOL, ATOL = 1e-3, 1e-4
PARITY_BATCHES = (1, 4)
# Opsets torch's exporter and ONNX Runtime both handle; 13 is the last one TensorRT 8.2
# (JetPack 4.6, Jetson Nano) supports in full.
MIN_OPSET, MAX_OPSET = 13, 20


@dataclass
class ExportResult:
    """What an export wrote and how it was checked."""

    path: Path
    meta: ModelMeta
    parity: dict[str, float] = field(default_factory=dict)  # check name -> max abs difference
    gate: dict[str, Any] | None = None  # INT8 accuracy gate (quantize.GateResult as a dict)


def load_source(source: Any, trust_pickle: bool = False,
                verify: bool = True) -> tuple[torch.nn.Module, dict]:
    """``(model, info)`` from a run dir / checkpoint path, or a ``(model, info)`` pair as is."""
    if isinstance(source, (tuple, list)) and len(source) == 2:
        model, info = source
    else:
        model, info = load_model(source, trust_pickle=trust_pickle, verify=verify)
    return model.eval(), info


def inference_module(model: torch.nn.Module, fold: bool = True) -> tuple[torch.nn.Module, str]:
    """The module to export and how its head is computed (``folded`` or ``module``).

    Folding is an exact rewrite of an affine head; models it does not apply to (baselines,
    heads with a nonlinearity) are exported as they are.
    """
    if not fold:
        return model, "module"
    try:
        folded = fold_head(model)
    except JnetError as e:  # no learned head, or one with a nonlinearity
        log.info("head not folded (%s); exporting the model as it is", e)
        return model, "module"
    return folded.eval(), "folded"


class _PixelShuffleUp(torch.nn.Module):
    """``ConvTranspose2d(kernel 2, stride 2)`` as ``Conv1x1(c_in -> 4 c_out)`` and a pixel shuffle
    spelt for ONNX Runtime's channels-last INT8 kernels: exact, since each input pixel feeds its
    own 2x2 output block.

    The shuffle is Transpose (to NHWC) -> Reshape -> Transpose -> Reshape -> Transpose (to NCHW).
    ONNX Runtime runs QLinearConv in NHWC, so it cancels the outer transposes against its own, and
    the middle one moves a single axis of uint8 data: a copy of contiguous blocks. (Its
    DepthToSpace has only an NCHW kernel: each one cost two full layout transposes, half of the
    INT8 run.) The convolution orders its outputs (i, j, channel) so that one axis moves, and the
    reshapes of a trace use the spatial size of the last eager call (:func:`convtranspose_as_conv`
    makes one): a shape read from the tensor at run time makes ONNX Runtime transpose and
    dequantize the tensor only to measure it.
    """

    def __init__(self, up: torch.nn.ConvTranspose2d) -> None:
        super().__init__()
        c_in, c_out = up.in_channels, up.out_channels
        self.channels = c_out
        self.size: tuple[int, int] | None = None  # (h, w) of the last eager input
        self.conv = torch.nn.Conv2d(c_in, 4 * c_out, 1, bias=up.bias is not None)
        with torch.no_grad():  # weight (c_in, c_out, i, j) -> output channel (2i + j) c_out + c
            self.conv.weight.copy_(up.weight.permute(2, 3, 1, 0).reshape(4 * c_out, c_in, 1, 1))
            if up.bias is not None:
                self.conv.bias.copy_(up.bias.repeat(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not tracing():  # eager: the real size, kept for the trace
            self.size = (int(x.shape[2]), int(x.shape[3]))
        (h, w), c = self.size, self.channels
        y = self.conv(x).permute(0, 2, 3, 1)  # (B, h, w, [i, j, c])
        y = y.reshape(-1, h, w, 2, 2 * c).transpose(2, 3)  # (B, h, i, w, [j, c])
        return y.reshape(-1, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


def convtranspose_as_conv(module: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """A copy of ``module`` with every 2x2 stride-2 transposed convolution rewritten exactly as a
    1x1 convolution + pixel shuffle (:class:`_PixelShuffleUp`), for inputs of ``example``'s
    spatial size (any batch). ONNX Runtime has INT8 kernels for the convolution but none for
    ConvTranspose (see quantize.QUANTIZED_OPS), and in FP32 too the rewrite runs faster there."""
    module = copy.deepcopy(module).eval()
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if (isinstance(child, torch.nn.ConvTranspose2d) and child.kernel_size == (2, 2)
                    and child.stride == (2, 2) and child.padding == (0, 0)
                    and child.output_padding == (0, 0) and child.dilation == (1, 1)
                    and child.groups == 1):
                setattr(parent, name, _PixelShuffleUp(child))
    with torch.enable_grad():  # as traced: an affine head is not folded on the fly
        module(example)  # records each shuffle's spatial size
    return module


class _SubpixelAsConvTranspose(torch.nn.Module):
    """The subpixel head (:class:`jnet.models.heads.SubpixelHead` with hidden layers) spelt for
    ONNX Runtime: its product with the block weights and the layout of the blocks as one
    ConvTranspose (kernel = stride = the block size, which writes each input pixel's block in
    place), of shapes fixed at export. Exact: the same sums as the eager product. The bias rides
    on a constant channel that the last hidden convolution makes (weights 0, bias 1, through the
    ReLU), so that no node computes a shape at run time. Traced as it is, the head was 214 ONNX
    nodes, most of them shape arithmetic: J-Net-16 runs 6% faster at batch 1 in FP32 and 11% in
    INT8 this way, 0-3% at batch 16 (docs/performance.md).
    """

    def __init__(self, head: torch.nn.Module, size: int) -> None:
        super().__init__()
        c, f, hidden = head.classes, head.factor, head.hidden
        self.classes, self.factor, self.size, self.image = c, f, size, head.image
        body = copy.deepcopy(head.body)
        last = [m for m in body if isinstance(m, torch.nn.Conv2d)][-1]
        one = torch.nn.Conv2d(last.in_channels, hidden + 1, last.kernel_size, padding=last.padding)
        with torch.no_grad():
            one.weight.zero_()
            one.weight[:hidden] = last.weight
            one.bias.copy_(torch.cat([last.bias, torch.ones(1)]))
            # rows in the order of the channels below: hidden features, the constant 1, then the
            # logit neighbourhoods by tap and class (the eager head's are by class and tap);
            # (K, C f^2) -> (K, C, f, f)
            taps = head.fixed.reshape(c, 9, -1).transpose(0, 1).reshape(9 * c, -1)
            weight = torch.cat([head.out.weight.t(), head.out.bias[None], taps])
        self.body = torch.nn.Sequential(*[one if m is last else m for m in body])
        self.register_buffer("weight", weight.reshape(-1, c, f, f).contiguous())

    def forward(self, out: torch.Tensor, image: torch.Tensor) -> list[torch.Tensor]:
        s, logits = self.size, out[:, :self.classes]
        z = torch.cat([out, image], dim=1) if self.image else out
        padded = torch.nn.functional.pad(logits, (1, 1, 1, 1), mode="replicate")
        # the 3x3 neighbourhoods, of a size known at export: one slice per tap, all classes
        taps = [padded[:, :, dy:dy + s, dx:dx + s] for dy in range(3) for dx in range(3)]
        inputs = torch.cat([self.body(z), *taps], dim=1)
        return [logits, torch.nn.functional.conv_transpose2d(inputs, self.weight, stride=self.factor)]


def subpixel_as_convtranspose(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a J-Net whose subpixel head (with hidden layers) is rewritten for export as
    :class:`_SubpixelAsConvTranspose`; any other model is returned as it is."""
    from jnet.models.heads import SubpixelHead

    head = getattr(model, "head", None)
    if not isinstance(head, SubpixelHead) or head.body is None:
        return model
    model = copy.deepcopy(model).eval()
    model.head = _SubpixelAsConvTranspose(head, model.in_size)
    return model


def export_graph(model: torch.nn.Module, module: torch.nn.Module, meta: ModelMeta, *,
                 opset: int = 17, real: np.ndarray | None = None,
                 seed: int = 0) -> tuple[bytes, dict[str, float]]:
    """The ONNX graph of ``module`` and its parity with ``model`` (raises ExportError on failure).

    Transposed convolutions and the subpixel head are rewritten first
    (:func:`convtranspose_as_conv`, :func:`subpixel_as_convtranspose`): exact, and faster in ONNX
    Runtime in FP32 as well as INT8 (``benchmarks/profile_ort.py``).
    """
    module = subpixel_as_convtranspose(module)
    module = convtranspose_as_conv(module, torch.zeros(1, meta.in_channels, meta.in_size, meta.in_size))
    graph = onnx_bytes(module, meta.in_channels, meta.in_size, opset)
    return graph, check_parity(model, graph, parity_inputs(meta, real, seed))


def onnx_bytes(module: torch.nn.Module, in_channels: int, in_size: int, opset: int = 17) -> bytes:
    """Trace ``module`` to an ONNX graph with a dynamic batch, explicit padding and pinned opset.

    Shape: input ``image (B, C, s, s)``, output ``logits (B, classes, S, S)``.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"opset: expected {MIN_OPSET}..{MAX_OPSET}, found {opset}")
    example = torch.zeros(2, in_channels, in_size, in_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter is deprecated in favour of the dynamo one, which needs
        # onnxscript (not a jnet dependency); the graphs it makes are what we check below.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                _EvalOutput(module), (example,), buffer, dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
        except torch.onnx.errors.OnnxExporterError as e:  # an operator this opset cannot express
            raise ExportError(f"model: cannot be exported to ONNX opset {opset} "
                              f"({str(e).splitlines()[0]})") from e
    import onnx

    proto = onnx.load_from_string(buffer.getvalue())
    explicit_padding(proto)
    return proto.SerializeToString()


class _EvalOutput(torch.nn.Module):
    """The eval contract as a graph: the final logits only."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        # Created in eval mode: exporters restore the wrapper's mode afterwards, recursively,
        # and a wrapper left in training mode would switch BatchNorm to batch statistics.
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[-1] if isinstance(out, (list, tuple)) else out


def explicit_padding(proto: Any) -> None:
    """Replace ``auto_pad=SAME_*`` on stride-1 convolutions by explicit ``pads`` (in place)."""
    from onnx import helper

    for node in proto.graph.node:
        if node.op_type not in ("Conv", "MaxPool", "AveragePool"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        mode = attrs.get("auto_pad", b"NOTSET")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ("SAME_UPPER", "SAME_LOWER"):
            continue
        kernel = list(attrs["kernel_shape"])
        strides = list(attrs.get("strides", [1] * len(kernel)))
        dilations = list(attrs.get("dilations", [1] * len(kernel)))
        if any(s != 1 for s in strides):
            raise ExportError(f"node {node.name}: auto_pad {mode} with strides {strides} cannot be "
                              f"made explicit; use integer padding in the model")
        total = [d * (k - 1) for k, d in zip(kernel, dilations)]
        small = [t // 2 for t in total]
        begin = small if mode == "SAME_UPPER" else [t - s for t, s in zip(total, small)]
        end = [t - b for t, b in zip(total, begin)]
        keep = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend(keep + [helper.make_attribute("pads", begin + end)])


def add_metadata(model_bytes: bytes, meta: ModelMeta) -> bytes:
    """Store ``meta`` as ONNX ``metadata_props`` (JSON strings), replacing older jnet keys."""
    import onnx

    proto = onnx.load_from_string(model_bytes)
    props = {**meta.to_props(), CHECKSUM_KEY: "0" * 64}  # sealed below, once the bytes are final
    keep = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in sorted(props.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.doc_string = "jnet", "jnet segmentation model; see metadata_props"
    proto.producer_version = __version__
    # the exporter names the output's sizes symbolically; they are fixed: (batch, C, S, S)
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    for dim, size in zip(list(dims)[1:], (meta.classes, meta.out_size, meta.out_size)):
        dim.ClearField("dim_param")
        dim.dim_value = int(size)
    onnx.checker.check_model(proto)
    return seal(proto.SerializeToString())


def read_metadata(path: str | os.PathLike) -> ModelMeta:
    """The jnet metadata of an exported ``.onnx`` file. Raises ExportError if it has none."""
    import onnx

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, OSError ...
        raise ExportError(f"{path}: not an ONNX file ({e})") from e
    props = {p.key: p.value for p in proto.metadata_props}
    return ModelMeta.from_props(props, source=str(path))


def check_parity(model: torch.nn.Module, model_bytes: bytes, inputs: dict[str, np.ndarray],
                 rtol: float = RTOL, atol: float = ATOL) -> dict[str, float]:
    """Compare ONNX Runtime (CPU) with PyTorch on each named input batch.

    Returns the max absolute difference per input; raises ExportError at the first batch outside
    ``|onnx - torch| <= atol + rtol * |torch|``.
    """
    session = make_session(model_bytes, source="exported graph")
    diffs = {}
    for name, x in inputs.items():
        with torch.no_grad():
            ref = _EvalOutput(model)(torch.from_numpy(x)).float().numpy()
        got = session.run(None, {INPUT_NAME: x})[0]
        if got.shape != ref.shape:
            raise ExportError(f"parity ({name}): ONNX output shape {got.shape}, PyTorch {ref.shape}")
        diff = float(np.max(np.abs(got - ref)))
        diffs[name] = diff
        if not np.allclose(got, ref, rtol=rtol, atol=atol):
            raise ExportError(f"parity ({name}): ONNX Runtime differs from PyTorch by up to {diff:.3g} "
                              f"(allowed atol {atol} + rtol {rtol} x |value|); nothing written")
    return diffs


def parity_inputs(meta: ModelMeta, real: np.ndarray | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random (and, if given, real) input batches of sizes 1 and 4. Shape: ``(B, C, s, s)``."""
    rng = np.random.default_rng(seed)
    shape = (meta.in_channels, meta.in_size, meta.in_size)
    inputs = {f"random, batch {b}": rng.standard_normal((b, *shape)).astype(np.float32)
              for b in PARITY_BATCHES}
    if real is not None and len(real):
        for b in PARITY_BATCHES:
            rows = np.resize(np.arange(len(real)), b)  # repeat rows if fewer than b
            inputs[f"real, batch {b}"] = np.ascontiguousarray(real[rows], dtype=np.float32)
    return inputs


def export_onnx(source: Any, out: str | os.PathLike, *, opset: int = 17, int8: bool = False,
                calib: str | os.PathLike | None = None, calib_fold: int = 0, force: bool = False,
                overwrite: bool = False, trust_pickle: bool = False, fold_head: bool = True,
                int8_symmetric: bool = False, seed: int = 0, verify: bool = True) -> ExportResult:
    """Export a model to ONNX after checking parity with PyTorch; write ``out`` atomically.

    Args:
        source: run dir or checkpoint path, or a ``(model, info)`` pair.
        out: the ``.onnx`` file to write (refused if it exists, unless ``overwrite``).
        opset: ONNX opset (pinned in the file).
        int8: write an INT8 (QDQ) model calibrated on ``calib``, behind the accuracy gate.
        calib: a prepared slice cache; its slices are also used as real parity inputs.
        calib_fold: cross-validation fold of ``calib`` whose train rows calibrate and val rows gate.
        force: write the INT8 model even if it fails the accuracy gate.
        overwrite: replace an existing ``out``.
        trust_pickle: load an old pickled checkpoint (runs code from the file).
        fold_head: export the folded J-Net head (exact) when the model has one.
        verify: check the checkpoint's recorded SHA-256 first.
        int8_symmetric: symmetric INT8 (zero points 0), the only kind TensorRT reads.
        seed: seed of the random parity inputs.
    Returns:
        An ExportResult (path, metadata, parity differences, gate numbers).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out}: exists; pass --overwrite to replace it")
    check_writable(out.parent, what="exported model")  # before parity checks and calibration
    if int8 and calib is None:
        raise ExportError("--int8: needs calibration data; pass --calib PREPARED_DIR (a slice cache "
                          "made by `jnet data prepare`)")
    model, info = load_source(source, trust_pickle, verify)
    module, head = inference_module(model, fold_head)
    meta = ModelMeta.from_model(model, info, head=head, opset=opset)

    data = None
    if calib is not None:
        from jnet.deploy.quantize import PreparedSlices

        data = PreparedSlices(calib, meta, fold=calib_fold)
    real = data.calibration_inputs(limit=4) if data is not None else None
    graph, parity = export_graph(model, module, meta, opset=opset, real=real, seed=seed)
    gate = None
    if int8:
        from jnet.deploy.quantize import quantize_model

        graph, gate = quantize_model(graph, data, meta, force=force, symmetric=int8_symmetric)
        meta = _with(meta, precision="int8", extra={**meta.extra, "int8_gate": gate.as_dict(),
                                                     "int8_symmetric": int8_symmetric})
    graph = add_metadata(graph, meta)
    with atomic_path(out) as tmp:
        tmp.write_bytes(graph)
    return ExportResult(out, meta, parity, gate.as_dict() if gate else None)


def export_torchscript(source: Any, out: str | os.PathLike, *, overwrite: bool = False,
                       trust_pickle: bool = False, fold_head: bool = True, verify: bool = True,
                       seed: int = 0) -> ExportResult:
    """Trace the inference module with ``torch.jit.trace`` and save it with the metadata.

    The metadata is stored as the extra file ``jnet.json`` (``torch.jit.load(path,
    _extra_files={"jnet.json": ""})``). Parity with the eager model is checked before writing.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out}: exists; pass --overwrite to replace it")
    model, info = load_source(source, trust_pickle, verify)
    module, head = inference_module(model, fold_head)
    meta = ModelMeta.from_model(model, info, head=head)
    inputs = parity_inputs(meta, None, seed)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated; the traced file still loads
        traced = torch.jit.trace(_EvalOutput(module), (torch.from_numpy(inputs["random, batch 4"]),))
    parity = {}
    for name, x in inputs.items():
        with torch.no_grad():
            ref = _EvalOutput(model)(torch.from_numpy(x)).numpy()
            got = traced(torch.from_numpy(x)).numpy()
        parity[name] = float(np.max(np.abs(got - ref)))
        if not np.allclose(got, ref, rtol=RTOL, atol=ATOL):
            raise ExportError(f"parity ({name}): TorchScript differs from eager by up to "
                              f"{parity[name]:.3g}; nothing written")
    extra = {"jnet.json": json.dumps(meta.to_props(), sort_keys=True)}
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(traced, str(tmp), _extra_files=extra)
    return ExportResult(out, meta, parity)


def _with(meta: ModelMeta, **changes: Any) -> ModelMeta:
    from dataclasses import replace

    return replace(meta, **changes)


__all__ = ["ExportResult", "export_onnx", "export_torchscript", "read_metadata", "onnx_bytes",
           "export_graph", "check_parity", "add_metadata", "inference_module", "load_source",
           "convtranspose_as_conv", "subpixel_as_convtranspose"]
