"""ONNX / TorchScript export: parity with PyTorch, metadata round trip, atomic refusal, INT8 gate."""
from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from jnet.cli import main
from jnet.deploy.export import convtranspose_as_conv, export_onnx, export_torchscript, onnx_bytes, read_metadata
from jnet.deploy.quantize import quantize_model
from jnet.deploy.runtime import ModelMeta
from jnet.errors import DataError, ExportError
from jnet.models import build_model

S, SMALL = 64, 16
BINARY = {"kind": "binary", "names": ["prostate"], "classes": 1, "labels": {"prostate": [1]}}


def info_for(channels=("T2", "ADC"), task=BINARY, size=S):
    return {"task": task, "channels": list(channels), "size": size, "downsample": "area",
            "normalisation": {"method": "zscore-nonzero"}, "jnet_version": "0.1.0"}


def tiny(arch="jnet", in_channels=2, **kw):
    torch.manual_seed(0)
    out = SMALL if arch == "base" else S
    model = build_model(arch=arch, width=4, depth=2, in_channels=in_channels, in_size=SMALL,
                        out_size=out, **kw).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that folding them is tested
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def ort_run(path_or_bytes, x):
    session = ort.InferenceSession(path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("arch, options, head", [
    ("jnet", {}, "folded"), ("jnet", {"head": "subpixel"}, "module"), ("jnet", {"head": "dysample"}, "module"),
    ("baseline", {}, "module"), ("base", {}, "module")])
def test_export_matches_pytorch_and_round_trips_metadata(tmp_path, arch, options, head):
    model = tiny(arch, **options)
    if options:  # the subpixel and dysample heads start at zero (= bilinear): give them weights to check
        with torch.no_grad():
            model.head.out.weight.normal_(0, 0.3)
    out = tmp_path / "model.onnx"
    result = export_onnx((model, info_for()), out)
    assert result.path == out and out.is_file()
    assert set(result.parity) == {"random, batch 1", "random, batch 4"}

    meta = read_metadata(out)
    assert meta == result.meta
    assert (meta.in_size, meta.in_channels, meta.classes) == (SMALL, 2, 1)
    assert meta.out_size == model.out_size and meta.size == S
    assert meta.channels == ["T2", "ADC"] and meta.task == BINARY
    assert meta.normalisation == {"method": "zscore-nonzero"} and meta.downsample == "area"
    assert meta.model == model.config and meta.jnet_version == "0.1.0"
    assert meta.precision == "fp32" and meta.extra["head"] == head

    proto = onnx.load(str(out))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["task"])["names"] == ["prostate"]  # plain JSON strings, any reader
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    for node in proto.graph.node:  # explicit padding only
        assert all(a.name != "auto_pad" or a.s in (b"", b"NOTSET") for a in node.attribute), node.name
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 2, SMALL, SMALL]
    dims = [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, model.out_size, model.out_size]  # static sizes, for TensorRT
    from jnet import __version__
    assert proto.producer_name == "jnet" and proto.producer_version == __version__

    x = np.random.default_rng(1).standard_normal((3, 2, SMALL, SMALL)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ort_run(out, x), want, rtol=1e-3, atol=1e-4)


def test_onnx_runtime_on_cpu_caps_the_pixels_per_call(tmp_path):
    """Large inputs run 2-3x slower per image on ONNX Runtime's CPU provider in large batches:
    predict() splits a batch so that no call holds more than ORT_CPU_BATCH_PIXELS input pixels,
    with the same logits."""
    from jnet.deploy.runtime import ORT_CPU_BATCH_PIXELS, Predictor

    model = tiny("base")
    out = tmp_path / "model.onnx"
    export_onnx((model, info_for()), out)
    predictor = Predictor.from_path(out)
    assert predictor.batch_pixels == ORT_CPU_BATCH_PIXELS
    assert ORT_CPU_BATCH_PIXELS // 256 ** 2 == 4  # 256x256 inputs: four per call
    x = np.random.default_rng(0).standard_normal((5, 2, SMALL, SMALL)).astype(np.float32)
    want = predictor.predict(x)
    calls, run = [], predictor._run
    predictor._run = lambda chunk: calls.append(len(chunk)) or run(chunk)
    predictor.batch_pixels = 2 * SMALL ** 2
    np.testing.assert_allclose(predictor.predict(x, batch_size=16), want, rtol=1e-6, atol=1e-6)
    assert calls == [2, 2, 1]
    calls.clear()
    predictor.batch_pixels = SMALL ** 2 // 2  # fewer than one image: still one image per call
    predictor.predict(x[:2])
    assert calls == [1, 1]


def test_explicit_padding_replaces_same_padding():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"), nn.Conv2d(2, 1, (5, 3), padding="same")).eval()
    graph = onnx_bytes(model, 1, SMALL, opset=13)
    convs = [n for n in onnx.load_from_string(graph).graph.node if n.op_type == "Conv"]
    pads = [[list(a.ints) for a in n.attribute if a.name == "pads"] for n in convs]
    assert pads == [[[1, 1, 1, 1]], [[2, 1, 2, 1]]]
    x = np.random.default_rng(0).standard_normal((2, 1, SMALL, SMALL)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(ort_run(graph, x), model(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_convtranspose_rewrite_is_exact():
    model = tiny()
    rewritten = convtranspose_as_conv(model, torch.zeros(1, 2, SMALL, SMALL))
    assert any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in rewritten.modules())
    x = torch.randn(3, 2, SMALL, SMALL)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), model(x), rtol=1e-5, atol=1e-5)
    up = nn.ConvTranspose2d(3, 5, 2, stride=2)
    x = torch.randn(2, 3, 4, 6)
    with torch.no_grad():
        torch.testing.assert_close(convtranspose_as_conv(up, x[:1])(x), up(x), rtol=1e-5, atol=1e-5)


def test_int8_layout_graph_has_no_depth_to_space_and_no_runtime_shapes():
    """The rewritten upsampling exports as transposes and reshapes of constant shape: no
    DepthToSpace (NCHW only in ONNX Runtime) and no Shape node (it would make ONNX Runtime
    transpose and dequantize a tensor only to measure it), and ONNX Runtime runs it exactly."""
    model = tiny()
    rewritten = convtranspose_as_conv(model, torch.zeros(1, 2, SMALL, SMALL))
    graph = onnx_bytes(rewritten, 2, SMALL)
    ops = {n.op_type for n in onnx.load_from_string(graph).graph.node}
    assert "DepthToSpace" not in ops and "ConvTranspose" not in ops and "Shape" not in ops
    x = np.random.default_rng(1).standard_normal((3, 2, SMALL, SMALL)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(ort_run(graph, x), model(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_opset_13_for_older_tensorrt(tmp_path):
    result = export_onnx((tiny(), info_for()), tmp_path / "m13.onnx", opset=13)
    proto = onnx.load(str(result.path))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [13]
    assert read_metadata(result.path).extra["opset"] == 13


def test_an_operator_the_opset_lacks_is_a_one_line_export_error():
    class AffineGrid(nn.Module):  # affine_grid has an ONNX form only from opset 20
        def forward(self, x):
            theta = torch.eye(2, 3).expand(x.shape[0], 2, 3)
            return nn.functional.grid_sample(x, nn.functional.affine_grid(theta, list(x.shape), align_corners=False),
                                             align_corners=False)

    with pytest.raises(ExportError, match=r"cannot be exported to ONNX opset 17 \(.*affine_grid"):
        onnx_bytes(AffineGrid(), 1, 8)


def test_existing_file_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(ExportError, match="exists"):
        export_onnx((tiny("base"), info_for()), out)
    assert out.read_bytes() == b"previous"
    export_onnx((tiny("base"), info_for()), out, overwrite=True)
    assert read_metadata(out).in_size == SMALL


def test_parity_failure_writes_nothing(tmp_path, monkeypatch):
    import jnet.deploy.export as export

    real = export.onnx_bytes

    def perturbed(module, *args, **kwargs):  # an exporter bug: the graph's weights are off
        wrong = copy.deepcopy(module)
        with torch.no_grad():
            for p in wrong.parameters():
                p.add_(0.1)
        return real(wrong, *args, **kwargs)

    monkeypatch.setattr(export, "onnx_bytes", perturbed)
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match=r"differs from PyTorch by up to \d"):
        export_onnx((tiny("base"), info_for()), out)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary
    out.write_bytes(b"previous model")
    with pytest.raises(ExportError, match="differs"):
        export_onnx((tiny("base"), info_for()), out, overwrite=True)
    assert out.read_bytes() == b"previous model" and list(tmp_path.iterdir()) == [out]


def test_read_metadata_refuses_foreign_onnx(tmp_path):
    path = tmp_path / "plain.onnx"
    path.write_bytes(onnx_bytes(tiny("base"), 2, SMALL))
    with pytest.raises(DataError, match="no jnet metadata"):
        read_metadata(path)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ExportError, match="not an ONNX file"):
        read_metadata(tmp_path / "junk.onnx")


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_torchscript_round_trip(tmp_path):
    model = tiny()
    out = export_torchscript((model, info_for()), tmp_path / "model.pt").path
    extra = {"jnet.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    meta = ModelMeta.from_props(json.loads(extra["jnet.json"]))
    assert meta.in_size == SMALL and meta.extra["head"] == "folded"
    x = torch.randn(3, 2, SMALL, SMALL)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------------- INT8
class Threshold(nn.Module):
    """A model whose answer is known: logits = input - 0.5, upsampled x4 by nearest neighbour
    (a ConvTranspose of ones), so it segments ``image > 0.5``."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(1, 1, 1)
        self.up = nn.ConvTranspose2d(1, 1, 4, stride=4, bias=False)
        with torch.no_grad():
            self.body.weight.fill_(1.0)
            self.body.bias.fill_(-0.5)
            self.up.weight.fill_(1.0)
        self.in_size, self.out_size, self.in_channels, self.classes = SMALL, S, 1, 1
        self.config = {"arch": "threshold", "in_size": SMALL, "out_size": S}

    def forward(self, x):
        return self.up(self.body(x))


def blobs(n, seed=0):
    """Smooth images in about [0, 1] at s and their ``> 0.5`` labels at S (nearest)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SMALL, :SMALL]
    images = np.zeros((n, 1, SMALL, SMALL), np.float32)
    for i in range(n):
        for _ in range(3):
            cy, cx, r = rng.uniform(2, SMALL - 2, 2).tolist() + [rng.uniform(2, 5)]
            images[i, 0] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    labels = (images[:, 0] > 0.5).repeat(S // SMALL, 1).repeat(S // SMALL, 2).astype(np.uint8)
    return images, labels


@pytest.fixture(scope="module")
def threshold_graph():
    model = Threshold().eval()
    meta = ModelMeta.from_model(model, info_for(channels=("T2",)))
    return onnx_bytes(model, 1, SMALL), meta


@pytest.mark.parametrize("broken", [lambda x: x * 1000.0, lambda x: np.zeros_like(x)],
                         ids=["scaled-x1000", "all-zeros"])
def test_int8_gate_refuses_broken_calibration(threshold_graph, broken):
    graph, meta = threshold_graph
    calib, _ = blobs(16, seed=1)
    gate = blobs(24, seed=2)
    with pytest.raises(ExportError, match=r"INT8 accuracy gate: Jaccard [\d.]+ \(INT8\) vs [\d.]+ \(FP32\)"):
        quantize_model(graph, None, meta, calibration=broken(calib), gate=gate)


def test_int8_gate_force_records_the_override(threshold_graph):
    graph, meta = threshold_graph
    calib, _ = blobs(16, seed=1)
    _, result = quantize_model(graph, None, meta, calibration=calib * 1000.0, gate=blobs(24, seed=2),
                               force=True)
    assert result.forced and not result.passed and result.int8_jaccard < result.fp32_jaccard - 1


def test_int8_gate_accepts_good_calibration(threshold_graph):
    graph, meta = threshold_graph
    calib, _ = blobs(16, seed=1)
    images, labels = blobs(24, seed=2)
    int8, result = quantize_model(graph, None, meta, calibration=calib, gate=(images, labels))
    assert result.passed and result.fp32_jaccard > 99.0  # the model is right by construction
    assert result.int8_jaccard >= result.fp32_jaccard - 1.0
    ops = {n.op_type for n in onnx.load_from_string(int8).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def make_cache(root, n_cases=5, count=4):
    """A tiny slice cache per the prepared.json / splits.json schema, at S with blob images."""
    n = n_cases * count
    images, _ = blobs(n, seed=3)
    hr = torch.nn.functional.interpolate(torch.from_numpy(images), size=(S, S), mode="bilinear",
                                         align_corners=False).numpy()
    labels = (hr[:, 0] > 0.5).astype(np.uint8)
    cases = [{"case_id": f"case_{c}", "start": c * count, "count": count,
              "slice_indices": list(range(count)), "axis": 2, "spacing": [1.0, 1.0, 3.0],
              "native_spacing": [1.0, 1.0, 3.0], "original_shape": [S, S, count],
              "affine": np.eye(4).tolist()} for c in range(n_cases)]
    prepared = {"format_version": 1, "jnet_version": "0.1.0", "layout": "msd", "source": "/none",
                "edition": None, "task": BINARY, "channels": ["T2"], "size": S, "dtype": "float16",
                "normalisation": {"method": "zscore-nonzero"}, "keep_empty": True, "n_slices": n,
                "cases": cases}
    ids = [c["case_id"] for c in cases]
    splits = {"seed": 0, "val_fraction": 0.2, "test_fraction": 0.2, "test": [ids[0]],
              "folds": [{"train": sorted(ids[1:4]), "val": [ids[4]]}]}
    root.mkdir()
    np.save(root / "images.npy", hr.astype(np.float16))
    np.save(root / "labels.npy", labels)
    (root / "splits.json").write_text(json.dumps(splits))
    (root / "prepared.json").write_text(json.dumps(prepared))
    return root


def test_export_int8_from_prepared_cache(tmp_path):
    cache = make_cache(tmp_path / "cache")
    out = tmp_path / "int8.onnx"
    result = export_onnx((Threshold().eval(), info_for(channels=("T2",))), out, int8=True, calib=cache)
    assert "real, batch 4" in result.parity  # real slices were parity inputs too
    meta = read_metadata(out)
    assert meta.precision == "int8"
    gate = meta.extra["int8_gate"]
    assert gate["passed"] and gate["n_slices"] == 4 and gate["int8_jaccard"] >= gate["fp32_jaccard"] - 1


def test_int8_needs_matching_calibration_data(tmp_path):
    cache = make_cache(tmp_path / "cache")
    with pytest.raises(ExportError, match="--calib"):
        export_onnx((Threshold().eval(), info_for(channels=("T2",))), tmp_path / "a.onnx", int8=True)
    with pytest.raises(DataError, match=r"channels \['T2'\] do not match the model's input channels \['T2', 'ADC'\]"):
        export_onnx((tiny(), info_for()), tmp_path / "b.onnx", int8=True, calib=cache)
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()


def test_cli_export_from_checkpoint(tmp_path, capsys):
    from jnet.training.checkpoint import save_weights

    model = tiny(in_channels=1)
    info = {**info_for(channels=("T2",)), "format_version": 1, "model": model.config, "in_size": SMALL}
    ckpt = save_weights(model, info, tmp_path / "best.ckpt")
    out = tmp_path / "model.onnx"
    assert main(["export", str(ckpt), "--out", str(out)]) == 0
    assert "parity max |diff|" in capsys.readouterr().out
    assert read_metadata(out).model == model.config
    assert main(["export", str(ckpt), "--out", str(out)]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err

    # symmetric INT8 for TensorRT: every zero point is 0 (forced: random weights fail any gate)
    cache = make_cache(tmp_path / "cache")
    q = tmp_path / "int8.onnx"
    assert main(["export", str(ckpt), "--out", str(q), "--int8", "--calib", str(cache),
                 "--int8-symmetric", "--force"]) == 0
    proto = onnx.load(str(q))
    zero_points = {n.input[2] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    values = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.name in zero_points]
    assert values and all(v.dtype == np.int8 and not v.any() for v in values)
    assert not any(n.op_type == "ConvTranspose" for n in proto.graph.node)  # rewritten to Conv
    assert read_metadata(q).extra["int8_symmetric"] is True


def test_a_degenerate_checkpoint_is_named_by_export_and_predict(tmp_path, capsys):
    """The validation record a checkpoint carries travels into the ONNX metadata; export and
    predict warn about a model that was degenerate at its own epoch, not about a healthy one."""
    from conftest import save_nifti

    model = tiny(in_channels=1)
    info = {**info_for(channels=("T2",)), "format_version": 1, "model": model.config, "in_size": SMALL}
    note = "degenerate: predicts no foreground on any slice (prostate)"
    history = [{"epoch": 0, "jaccard": 0.4, "degenerate": note}, {"epoch": 1, "jaccard": 0.6, "degenerate": None}]
    volume = save_nifti(tmp_path / "case.nii.gz", np.random.default_rng(0).normal(size=(20, 20, 3)))
    for epoch, expected in ((0, note), (1, None)):
        ckpt = tmp_path / f"epoch{epoch}.ckpt"
        torch.save({"jnet": info, "state_dict": model.state_dict(), "epoch": epoch,
                    "jnet_validation": history[:epoch + 1]}, ckpt)
        out = tmp_path / f"epoch{epoch}.onnx"
        assert main(["export", str(ckpt), "--out", str(out)]) == 0
        assert read_metadata(out).degenerate == expected
        assert ("WARNING" in capsys.readouterr().err) == bool(expected)
        assert main(["predict", str(out), str(volume), "--out", str(tmp_path / f"pred{epoch}")]) == 0
        err = capsys.readouterr().err
        assert (f"WARNING: {out} comes from a checkpoint that was {note}" in err) == bool(expected)


@pytest.mark.parametrize("classes, in_channels, layers, image",
                         [(1, 1, 2, True), (3, 2, 1, True), (1, 1, 2, False)])
def test_subpixel_head_exports_as_one_convtranspose(classes, in_channels, layers, image):
    """The subpixel head is exported as one ConvTranspose of static shapes: the same logits as the
    eager head, and no node of the graph computes a shape at run time."""
    from jnet.deploy.export import subpixel_as_convtranspose

    torch.manual_seed(0)
    model = build_model(arch="jnet", width=4, depth=2, in_channels=in_channels, classes=classes,
                        in_size=SMALL, out_size=S, head="subpixel", head_layers=layers,
                        head_image=image).eval()
    with torch.no_grad():  # the last layer starts at zero (= bilinear): give it weights to check
        model.head.out.weight.normal_(0, 0.3)
        model.head.out.bias.normal_(0, 0.3)
    rewritten = subpixel_as_convtranspose(model)
    assert rewritten is not model and type(model.head).__name__ == "SubpixelHead"
    x = torch.randn(3, in_channels, SMALL, SMALL)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), model(x), rtol=1e-5, atol=1e-5)
    graph = onnx_bytes(rewritten, in_channels, SMALL)
    nodes = onnx.load_from_string(graph).graph.node
    head = [n.op_type for n in nodes if "/head/" in n.name]
    assert head.count("ConvTranspose") == 1 and "MatMul" not in head
    assert "Shape" not in {n.op_type for n in nodes}  # every size fixed at export
    np.testing.assert_allclose(ort_run(graph, x.numpy()), model(x).detach().numpy(), rtol=1e-4, atol=1e-4)
    affine = build_model(arch="jnet", width=4, depth=2, in_size=SMALL, out_size=S, head="subpixel",
                         head_hidden=0).eval()
    assert subpixel_as_convtranspose(affine) is affine  # no hidden layer to carry the bias: as it is
