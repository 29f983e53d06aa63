"""`jnet predict`: geometry kept, label values decoded, ONNX == PyTorch, every input check."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from jnet.cli import main
from jnet.deploy.export import export_onnx, onnx_bytes
from jnet.deploy.predict import STAGES, predict_paths
from jnet.deploy.runtime import Predictor
from jnet.errors import DataError
from jnet.models import build_model

S, SMALL = 64, 16
# BraTS-like regions: the mask must come back in the dataset's own values 1, 2, 4.
REGIONS = {"kind": "regions", "names": ["WT", "TC", "ET"], "classes": 3,
           "labels": {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}}
BINARY = {"kind": "binary", "names": ["prostate"], "classes": 1, "labels": {"prostate": [1]}}


def info_for(task, channels):
    return {"task": task, "channels": list(channels), "size": S, "downsample": "area",
            "normalisation": {"method": "zscore-nonzero"}, "jnet_version": "0.1.0"}


def make_model(task=REGIONS, in_channels=2):
    torch.manual_seed(0)
    return build_model(arch="jnet", width=4, depth=2, in_channels=in_channels, classes=task["classes"],
                       in_size=SMALL, out_size=S).eval()


def centre_logits(model, x):
    """Shift the head's last bias so that every output channel is positive on about half of the
    pixels of ``x``: random weights alone may predict one label everywhere (a vacuous test)."""
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        out = model(torch.from_numpy(x))
        last.bias -= out.transpose(0, 1).flatten(1).median(1).values
        positive = (model(torch.from_numpy(x)) > 0).float().mean((0, 2, 3))
    assert ((positive > 0.3) & (positive < 0.7)).all(), positive


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The same regions model as PyTorch predictor and as exported .onnx (2 channels T2, ADC)."""
    from jnet.sources.volume import load_volume
    from jnet.deploy.predict import preprocess

    model = make_model()
    info = info_for(REGIONS, ("T2", "ADC"))
    folder = tmp_path_factory.mktemp("model")
    case = load_volume(write_volume(folder / "sample.nii.gz"))
    centre_logits(model, preprocess(case.image, case.affine, Predictor.from_model(model, info).meta)[0])
    path = folder / "model.onnx"
    export_onnx((model, info), path)
    return Predictor.from_model(model, info), path


def oblique_affine():
    """Voxel sizes (0.8, 0.7, 3.0) mm, rotated 20 degrees about x, shifted: an oblique acquisition."""
    a = np.deg2rad(20)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 0.7, 3.0])
    affine[:3, 3] = [-20.0, 15.0, 7.5]
    return affine


def write_volume(path, shape=(40, 48, 5), channels=2, seed=0, dtype=np.float32, fill=None):
    """A synthetic MRI-like NIfTI: bright blobs on a noisy background, channels last (MSD 4D)."""
    rng = np.random.default_rng(seed)
    x, y = np.mgrid[:shape[0], :shape[1]]
    data = rng.normal(100, 10, shape + (channels,))
    for c in range(channels):
        blob = np.exp(-((x - 18 - 3 * c) ** 2 + (y - 25) ** 2) / 60.0)
        data[..., c] += 300 * blob[..., None]
    if fill is not None:
        data.flat[:3] = fill
    data = data[..., 0] if channels == 1 and len(shape) == 3 else data
    img = nib.Nifti1Image(data.astype(dtype), oblique_affine())
    img.header["descrip"] = b"synthetic"
    nib.save(img, str(path))
    return path


def test_mask_keeps_geometry_and_label_values(models, tmp_path):
    predictor, _ = models
    src = write_volume(tmp_path / "case_001.nii.gz")
    records = predict_paths(predictor, [src], tmp_path / "out", overlay=True, probabilities=True)

    mask = nib.load(str(tmp_path / "out" / "case_001.nii.gz"))
    assert mask.shape == (40, 48, 5)
    np.testing.assert_allclose(mask.affine, nib.load(str(src)).affine, atol=1e-5)
    assert mask.header["descrip"].tobytes().startswith(b"synthetic")  # the input's header kept
    values = np.asarray(mask.dataobj)
    assert values.dtype == np.uint8
    found = set(np.unique(values).tolist())
    assert found <= {0, 1, 2, 4} and len(found) >= 3, found  # WT only -> 2, WT+TC -> 1, all -> 4

    probs = nib.load(str(tmp_path / "out" / "case_001_prob.nii.gz")).get_fdata()
    assert probs.shape == (40, 48, 5, 3) and 0 <= probs.min() and probs.max() <= 1
    assert Image.open(tmp_path / "out" / "case_001_overlay.png").size[0] >= 256

    (record,) = records
    assert record["shape"] == [40, 48, 5] and record["slices"] == 5 and record["axis"] == 2
    assert set(record["timing_s"]) == set(STAGES)
    assert sum(record["labels"].values()) == 40 * 48 * 5
    logged = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert logged == records


def test_onnx_and_pytorch_agree(models, tmp_path):
    predictor, onnx_path = models
    src = write_volume(tmp_path / "v.nii.gz", seed=1)
    predict_paths(predictor, [src], tmp_path / "torch", probabilities=True)
    predict_paths(onnx_path, [src], tmp_path / "onnx", probabilities=True)
    a = np.asarray(nib.load(str(tmp_path / "torch" / "v.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "onnx" / "v.nii.gz")).dataobj)
    assert (a == b).mean() > 0.999  # logits agree to 1e-4; a pixel at 0 may flip
    pa = nib.load(str(tmp_path / "torch" / "v_prob.nii.gz")).get_fdata()
    pb = nib.load(str(tmp_path / "onnx" / "v_prob.nii.gz")).get_fdata()
    np.testing.assert_allclose(pa, pb, atol=1e-4)


class Bright(torch.nn.Module):
    """A model whose answer is known: foreground where the normalised input exceeds 1, upsampled
    x4 by nearest neighbour (a ConvTranspose of ones)."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Conv2d(1, 1, 1)
        self.up = torch.nn.ConvTranspose2d(1, 1, 4, stride=4, bias=False)
        with torch.no_grad():
            self.body.weight.fill_(1.0)
            self.body.bias.fill_(-1.0)
            self.up.weight.fill_(1.0)
        self.in_size, self.out_size, self.in_channels, self.classes = SMALL, S, 1, 1
        self.config = {"arch": "bright"}

    def forward(self, x):
        return self.up(self.body(x))


@pytest.mark.parametrize("shape", [(40, 48, 3), (96, 80, 2)])
def test_mask_lands_on_the_input_grid(tmp_path, shape):
    """Smaller and larger than S, non-square, oblique: the mask written back on the input's voxel
    grid covers the bright blob where it is in the input (no transposition, shift or crop)."""
    src = write_volume(tmp_path / "v.nii.gz", shape=shape, channels=1)
    predictor = Predictor.from_model(Bright().eval(), info_for(BINARY, ("T2",)))
    predict_paths(predictor, [src], tmp_path / "out")
    mask = np.asarray(nib.load(str(tmp_path / "out" / "v.nii.gz")).dataobj) > 0
    data = nib.load(str(src)).get_fdata()
    truth = (data - data.mean()) / data.std() > 1
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert truth.sum() > 100 and dice > 0.75, dice
    assert 2 * (mask.transpose(1, 0, 2)[: shape[0], : shape[1]] & truth[: shape[1], : shape[0]]).sum() \
        < dice * (mask.sum() + truth.sum())  # a transposed mask would not fit


def test_png_slice_in_png_mask_out(tmp_path):
    model = make_model(BINARY, 1)
    predictor = Predictor.from_model(model, info_for(BINARY, ("T2",)))
    pixels = (np.random.default_rng(0).random((40, 52)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "slice_07.png")
    (record,) = predict_paths(predictor, [tmp_path], tmp_path / "out", overlay=True, probabilities=True)
    mask = np.asarray(Image.open(tmp_path / "out" / "slice_07.png"))
    assert mask.shape == (40, 52) and set(np.unique(mask).tolist()) <= {0, 1}
    assert np.load(tmp_path / "out" / "slice_07_prob.npy").shape == (1, 40, 52)
    assert record["slices"] == 1


def test_default_batch_sends_a_volume_in_one_call_within_the_pixel_caps(models, monkeypatch):
    from jnet.deploy import runtime

    predictor = Predictor.from_model(make_model(), info_for(REGIONS, ("T2", "ADC")))
    x = np.random.default_rng(0).standard_normal((30, 2, SMALL, SMALL)).astype(np.float32)
    calls, run = [], predictor._run
    predictor._run = lambda chunk: calls.append(len(chunk)) or run(chunk)
    want = predictor.predict(x)
    assert calls == [30]  # 30 slices of 16x16 -> 3 x 64x64: far below both caps
    calls.clear()
    np.testing.assert_allclose(predictor.predict(x, batch_size=8), want, rtol=1e-5, atol=1e-5)
    assert calls == [8, 8, 8, 6]
    calls.clear()
    monkeypatch.setattr(runtime, "AUTO_BATCH_OUTPUT_VALUES", 12 * 3 * S * S)  # 12 slices' outputs
    np.testing.assert_allclose(predictor.predict(x), want, rtol=1e-5, atol=1e-5)
    assert calls == [12, 12, 6]


def test_existing_outputs_are_kept_without_overwrite(models, tmp_path):
    predictor, _ = models
    src = write_volume(tmp_path / "a.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.nii.gz").write_bytes(b"earlier result")
    with pytest.raises(DataError, match=r"exist.*--overwrite"):
        predict_paths(predictor, [src], out)
    assert (out / "a.nii.gz").read_bytes() == b"earlier result"
    predict_paths(predictor, [src], out, overwrite=True)
    assert nib.load(str(out / "a.nii.gz")).shape == (40, 48, 5)


# ----------------------------------------------------------------------------------- input checks
def test_wrong_channel_count_names_the_expected_channels(models, tmp_path):
    predictor, _ = models
    src = write_volume(tmp_path / "one.nii.gz", channels=1)
    with pytest.raises(DataError, match=r"one\.nii\.gz.*2 channel\(s\) \['T2', 'ADC'\], found 1"):
        predict_paths(predictor, [src], tmp_path / "out")
    assert not (tmp_path / "out" / "one.nii.gz").exists()


def test_nan_and_inf_are_refused(models, tmp_path):
    predictor, _ = models
    for fill in (np.nan, np.inf):
        src = write_volume(tmp_path / "bad.nii.gz", fill=fill)
        with pytest.raises(DataError, match=r"bad\.nii\.gz.*3 NaN/Inf"):
            predict_paths(predictor, [src], tmp_path / "out")


def test_a_2d_nifti_is_one_slice_and_its_outputs_are_2d(tmp_path):
    volume = nib.load(str(write_volume(tmp_path / "v.nii.gz", shape=(40, 48, 1), channels=1)))
    data = np.asarray(volume.dataobj)  # (40, 48, 1)
    predictor = Predictor.from_model(Bright().eval(), info_for(BINARY, ("T2",)))
    two_d = tmp_path / "two_d.nii.gz"
    nib.save(nib.Nifti1Image(data[:, :, 0], volume.affine), str(two_d))
    (record,) = predict_paths(predictor, [two_d], tmp_path / "out", probabilities=True, overlay=True)
    mask = nib.load(str(tmp_path / "out" / "two_d.nii.gz"))
    assert mask.shape == (40, 48) and record["slices"] == 1 and record["shape"] == [40, 48, 1]
    np.testing.assert_allclose(mask.affine, volume.affine, atol=1e-5)
    assert nib.load(str(tmp_path / "out" / "two_d_prob.nii.gz")).shape == (40, 48, 1)
    labels = np.asarray(mask.dataobj)
    assert set(np.unique(labels).tolist()) == {0, 1}  # the blob found: not a vacuous comparison
    # the same slice as a 3D file of one slice: the same labels
    predict_paths(predictor, [tmp_path / "v.nii.gz"], tmp_path / "out3d")
    np.testing.assert_array_equal(labels, np.asarray(nib.load(str(tmp_path / "out3d" / "v.nii.gz")).dataobj)[:, :, 0])


def test_wrong_rank_is_refused(models, tmp_path):
    predictor, _ = models
    path = tmp_path / "five.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 2, 2, 2), np.float32), np.eye(4)), str(path))
    with pytest.raises(DataError, match=r"five\.nii\.gz.*5D"):
        predict_paths(predictor, [path], tmp_path / "out")


def test_predictor_checks_dtype_rank_channels_size_and_values(models):
    predictor, onnx_path = models
    for p in (predictor, Predictor.from_path(onnx_path)):
        good = np.zeros((2, 2, SMALL, SMALL), np.float32)
        assert p(good).shape == (2, 3, S, S)
        cases = [
            (good.astype(np.float64), r"expected dtype float32, found float64"),
            (good[0], r"expected rank 4"),
            (np.zeros((2, 1, SMALL, SMALL), np.float32), r"2 channel\(s\) \['T2', 'ADC'\], found 1"),
            (np.zeros((2, 2, 32, 32), np.float32), r"spatial size 16x16, found 32x32"),
            (np.full((1, 2, SMALL, SMALL), np.nan, np.float32), r"512 NaN/Inf"),
        ]
        for x, message in cases:
            with pytest.raises(DataError, match=message):
                p(x)


def test_onnx_without_metadata_needs_allow_no_metadata(tmp_path):
    model = make_model(BINARY, 1)
    path = tmp_path / "bare.onnx"
    path.write_bytes(onnx_bytes(model, 1, SMALL))
    src = write_volume(tmp_path / "v.nii.gz", channels=1)
    with pytest.raises(DataError, match=r"bare\.onnx: no jnet metadata.*--allow-no-metadata"):
        predict_paths(path, [src], tmp_path / "out")
    with pytest.warns(UserWarning, match="no jnet metadata"):
        (record,) = predict_paths(path, [src], tmp_path / "out", allow_no_metadata=True)
    assert record["shape"] == [40, 48, 5]


def test_cli_predict_and_error_exit_code(models, tmp_path, capsys):
    _, onnx_path = models
    src = write_volume(tmp_path / "c.nii.gz")
    assert main(["predict", str(onnx_path), str(src), "--out", str(tmp_path / "out")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line)["outputs"]["mask"].endswith("c.nii.gz")
    assert main(["predict", str(onnx_path), str(src), "--out", str(tmp_path / "out")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["predict", str(onnx_path), str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "o2")]) == 2


def test_brats_case_folder(tmp_path):
    """A folder of BraTS case folders: modalities found by name, one mask per case."""
    channels = ("FLAIR", "T1", "T1ce", "T2")
    case = tmp_path / "cases" / "BraTS2021_00007"
    case.mkdir(parents=True)
    for i, name in enumerate(("flair", "t1", "t1ce", "t2")):
        write_volume(case / f"BraTS2021_00007_{name}.nii.gz", channels=1, seed=i)
    (case / "._BraTS2021_00007_t1.nii.gz").write_bytes(b"macOS resource fork")  # ignored
    predictor = Predictor.from_model(make_model(REGIONS, 4), info_for(REGIONS, channels))
    (record,) = predict_paths(predictor, [tmp_path / "cases"], tmp_path / "out")
    assert record["channels"] == 4
    mask = nib.load(str(tmp_path / "out" / "BraTS2021_00007.nii.gz"))
    assert mask.shape == (40, 48, 5)
    np.testing.assert_allclose(mask.affine, oblique_affine(), atol=1e-5)
    assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1, 2, 4}


def test_onnx_runtime_path_needs_no_torch(models, tmp_path):
    import subprocess
    import sys

    _, onnx_path = models
    code = (
        "import sys, numpy as np\n"
        "from jnet.deploy.runtime import Predictor\n"
        f"p = Predictor.from_path({str(onnx_path)!r})\n"
        f"out = p(np.zeros((1, 2, {SMALL}, {SMALL}), np.float32))\n"
        f"assert out.shape == (1, 3, {S}, {S}), out.shape\n"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_msd_volume_channels_are_selected_by_name(tmp_path):
    """A 4D MSD image (T2, ADC) given to a T2-only model: the T2 channel is picked via dataset.json."""
    import json

    from jnet.sources.volume import load_volume

    task = tmp_path / "Task05_Prostate"
    (task / "imagesTr").mkdir(parents=True)
    (task / "dataset.json").write_text(json.dumps({"modality": {"0": "T2", "1": "ADC"}}))
    src = write_volume(task / "imagesTr" / "p.nii.gz", channels=2)
    full = load_volume(src)
    t2 = load_volume(src, ["T2"])
    adc = load_volume(src, ["adc"])
    assert full.image.shape[0] == 2 and t2.channels == ("T2",) and adc.channels == ("ADC",)
    np.testing.assert_array_equal(t2.image[0], full.image[0])
    np.testing.assert_array_equal(adc.image[0], full.image[1])


def test_msd_volume_outside_its_task_folder_needs_channels(tmp_path, capsys):
    """A T2+ADC 4D file without its dataset.json: --channels names its channels, then T2 is picked."""
    from jnet.sources.volume import load_volume

    model = make_model(BINARY, 1)
    path = tmp_path / "t2.onnx"
    export_onnx((model, info_for(BINARY, ("T2",))), path)
    src = write_volume(tmp_path / "loose.nii.gz", channels=2)
    assert main(["predict", str(path), str(src), "-o", str(tmp_path / "a")]) == 2
    assert "name a 4D file's channels with --channels" in capsys.readouterr().err
    assert main(["predict", str(path), "-i", str(src), "-o", str(tmp_path / "b"),
                 "--channels", "T2,ADC"]) == 0
    assert (tmp_path / "b" / "loose.nii.gz").is_file()
    picked = load_volume(src, ["T2"], file_channels=["T2", "ADC"])
    np.testing.assert_array_equal(picked.image[0], load_volume(src).image[0])
    with pytest.raises(DataError, match="--channels names 3 channel"):
        load_volume(src, ["T2"], file_channels=["T2", "ADC", "DWI"])


def test_torch_predictor_gives_the_thread_count_back():
    before = torch.get_num_threads()
    predictor = Predictor.from_model(make_model(BINARY, 1), info_for(BINARY, ("T2",)), threads=before + 1)
    assert torch.get_num_threads() == before  # building it changes nothing
    out = predictor(np.zeros((1, 1, SMALL, SMALL), np.float32))
    assert out.shape == (1, 1, S, S) and torch.get_num_threads() == before


def test_nnunet_channel_files_are_one_case(models, tmp_path):
    """CASE_0000 (T2) + CASE_0001 (ADC): one input, one mask CASE.nii.gz, equal to the 4D file's."""
    torch_model, _ = models
    src = write_volume(tmp_path / "4d.nii.gz", channels=2)
    img = nib.load(src)
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    for c in range(2):
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., c], img.affine), folder / f"case7_{c:04d}.nii.gz")
    records = predict_paths(torch_model, [folder], tmp_path / "out")
    assert [Path(r["outputs"]["mask"]).name for r in records] == ["case7.nii.gz"]
    assert records[0]["channels"] == 2
    (reference,) = predict_paths(torch_model, [src], tmp_path / "ref")
    got = nib.load(tmp_path / "out" / "case7.nii.gz").get_fdata()
    want = nib.load(reference["outputs"]["mask"]).get_fdata()
    np.testing.assert_array_equal(got, want)
    files = sorted(folder.iterdir())  # the same files named one by one
    (record,) = predict_paths(torch_model, files, tmp_path / "out2")
    assert Path(record["outputs"]["mask"]).name == "case7.nii.gz"


def test_nnunet_png_channel_files_are_one_slice(models, tmp_path):
    """nnU-Net's 2D format: CASE_0000.png (T2) + CASE_0001.png (ADC) -> one mask CASE.png, equal to
    the mask of the same pixels as a one-slice NIfTI (PNG rows are the NIfTI's first axis)."""
    torch_model, _ = models
    data = np.asarray(nib.load(write_volume(tmp_path / "v.nii.gz", shape=(40, 48, 1))).dataobj)[:, :, 0]
    pixels = np.clip(data, 0, 255).astype(np.uint8)  # (40, 48, 2)
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    for c in range(2):
        Image.fromarray(pixels[..., c]).save(folder / f"case3_{c:04d}.png")
    (record,) = predict_paths(torch_model, [folder], tmp_path / "out", probabilities=True)
    assert Path(record["outputs"]["mask"]).name == "case3.png" and record["channels"] == 2
    mask = np.asarray(Image.open(tmp_path / "out" / "case3.png"))
    assert mask.shape == (40, 48) and len(np.unique(mask)) >= 2
    assert np.load(tmp_path / "out" / "case3_prob.npy").shape == (3, 40, 48)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(pixels[:, :, None, :].astype(np.float32), np.eye(4)), flat)
    (reference,) = predict_paths(torch_model, [flat], tmp_path / "ref")
    np.testing.assert_array_equal(mask, np.asarray(nib.load(reference["outputs"]["mask"]).dataobj)[:, :, 0])


def test_png_masks_come_back_in_the_files_own_values(png_dir, tmp_path):
    """Prepared with --label-map 0:0,255:1, a model writes 0/255 masks, as its training masks."""
    from jnet.cache.build import prepare_dataset

    cache = prepare_dataset(png_dir, tmp_path / "cache", size=32, label_map={0: 0, 255: 1},
                            progress=False, test_fraction=0.0)
    task = json.loads((cache / "prepared.json").read_text())["task"]
    assert task["file_values"] == {"0": 0, "1": 255}
    model = make_model(task, 1)
    predictor = Predictor.from_model(model, info_for(task, ("gray",)))
    pixels = (np.random.default_rng(0).random((40, 52)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "slice_07.png")
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():  # foreground everywhere: the value written is the file's 255
        last.bias += 100.0
    predict_paths(predictor, [tmp_path / "slice_07.png"], tmp_path / "out")
    mask = np.asarray(Image.open(tmp_path / "out" / "slice_07.png"))
    assert np.unique(mask).tolist() == [255]
    from jnet.transforms.tasks import decode_label
    assert decode_label(np.array([0, 1]), task).tolist() == [0, 255]


def test_decode_label_returns_the_smallest_dtype_and_skips_an_identity_table():
    from jnet.transforms.tasks import decode_label

    codes = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    same = decode_label(codes, BINARY)  # values 0/1 are the codes: nothing to look up
    assert same.dtype == np.uint8 and same.tolist() == codes.tolist()
    regions = decode_label(np.arange(8, dtype=np.uint8), REGIONS)
    assert regions.dtype == np.uint8 and regions.tolist() == [0, 2, 1, 1, 4, 4, 4, 4]
    big = dict(BINARY, labels={"prostate": [300]})
    assert decode_label(codes, big).dtype == np.int16 and decode_label(codes, big).max() == 300


def test_label_counts_match_numpy_unique():
    from jnet.deploy.predict import label_counts

    labels = np.asfortranarray(np.random.default_rng(0).choice([0, 1, 2, 4], (12, 10, 6)).astype(np.uint8))
    values, counts = np.unique(labels, return_counts=True)
    assert label_counts(labels, REGIONS) == {str(v): int(c) for v, c in zip(values, counts)}
    assert label_counts(np.zeros((4, 4, 2), np.uint8), BINARY) == {"0": 32}  # absent values left out


def test_written_mask_is_the_same_file_in_either_memory_order(tmp_path):
    from jnet.deploy.writers import write_nifti

    labels = np.random.default_rng(0).integers(0, 3, (11, 9, 4)).astype(np.uint8)
    affine = np.diag([0.5, 0.5, 3.0, 1.0])
    write_nifti(tmp_path / "c.nii.gz", labels, affine, None)
    write_nifti(tmp_path / "f.nii.gz", np.asfortranarray(labels), affine, None)
    a, b = nib.load(tmp_path / "c.nii.gz"), nib.load(tmp_path / "f.nii.gz")
    np.testing.assert_array_equal(np.asarray(a.dataobj), labels)
    np.testing.assert_array_equal(np.asarray(b.dataobj), labels)
    assert (tmp_path / "c.nii.gz").read_bytes() == (tmp_path / "f.nii.gz").read_bytes()


def test_overlay_is_shown_in_the_radiological_view(tmp_path):
    """The predicted overlay follows the evaluation overlays' orientation rule: with the volume's
    affine, patient's right on the viewer's left and anterior at the top; without one (PNG
    inputs), as stored."""
    from types import SimpleNamespace

    from jnet.deploy.writers import write_overlay

    image = np.zeros((1, 4, 5, 1), np.float32)  # rows = x, cols = y
    encoded = np.zeros((4, 5, 1), np.uint8)
    encoded[3, 4, 0] = 1  # with an RAS affine: the most right and most anterior voxel
    meta = SimpleNamespace(task={"kind": "binary", "classes": 1})

    def coloured(path):
        rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
        rows, cols = np.nonzero(rgb.sum(-1) > 0)
        return rgb.shape[:2], (rows.min() / rgb.shape[0], cols.min() / rgb.shape[1])

    write_overlay(tmp_path / "ras.png", image, encoded, 2, meta, affine=np.diag([1.0, 1.0, 3.0, 1.0]))
    shape, corner = coloured(tmp_path / "ras.png")
    assert shape[0] > shape[1] and corner == (0.0, 0.0)  # 5 rows (y) x 4 columns (x); top left
    write_overlay(tmp_path / "png.png", image, encoded, 2, meta)
    shape, corner = coloured(tmp_path / "png.png")
    assert shape[0] < shape[1] and corner == (3 / 4, 4 / 5)  # as stored: bottom right


def test_work_around_onnx_runtime_runs_on_one_torch_thread(models, tmp_path, monkeypatch):
    """torch's OpenMP workers spin after each parallel region and would take the cores ONNX
    Runtime needs: around an ONNX Runtime model on CPU, reading, preprocessing and writing run on
    one torch thread, and the process's thread count comes back afterwards."""
    from jnet.deploy import predict

    torch_predictor, onnx_path = models
    ort_predictor = Predictor.from_path(onnx_path)
    assert ort_predictor.pre_post_threads == 1 and torch_predictor.pre_post_threads is None
    seen, preprocess = [], predict.preprocess
    monkeypatch.setattr(predict, "preprocess",
                        lambda *a: seen.append(torch.get_num_threads()) or preprocess(*a))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        src = write_volume(tmp_path / "v.nii.gz", seed=1)
        predict_paths(ort_predictor, [src], tmp_path / "onnx")
        assert torch.get_num_threads() == 2
        predict_paths(torch_predictor, [src], tmp_path / "torch")
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
