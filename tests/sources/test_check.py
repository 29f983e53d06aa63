"""`jnet data check` and the readers' errors: cases 1-16 of RELIABILITY.md, each on its own fixture."""
from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest
from conftest import save_nifti, tiny_case, write_msd_task
from PIL import Image

from jnet.cli import main
from jnet.errors import DataError
from jnet.sources.check import check_dataset
from jnet.sources.registry import discover, load_case
from jnet.sources.volume import load_volume


@pytest.fixture
def msd(tmp_path):
    """A valid MSD task: three 8 x 8 x 3 single-channel cases, labels 0/1/2."""
    return write_msd_task(tmp_path / "Task05_Prostate", {f"case_{i}": tiny_case(i) for i in range(3)})


@pytest.fixture
def png(tmp_path, png_dir):
    return shutil.copytree(png_dir, tmp_path / "png")


@pytest.fixture
def brats(tmp_path, brats_dir):
    return shutil.copytree(brats_dir, tmp_path / "brats")


def check(src, **kwargs):
    return check_dataset(src, progress=False, **kwargs)


def errors(problems):
    return [(p.path.name if p.path else None, p.message) for p in problems if p.severity == "error"]


def case(source, case_id):
    return next(c for c in source.cases if c.case_id == case_id)


def test_valid_datasets_have_no_problems(msd, prostate_dir, brats_dir, png_dir):
    assert check(msd) == []
    assert check(prostate_dir) == []
    assert check(brats_dir) == []
    assert check(png_dir, label_map={0: 0, 255: 1}) == []


# 1. empty files


def test_empty_files_are_listed_and_the_check_goes_on(msd, png):
    (msd / "imagesTr" / "case_0.nii.gz").write_bytes(b"")
    (msd / "labelsTr" / "case_2.nii.gz").write_bytes(b"")
    assert errors(check(msd)) == [("case_0.nii.gz", "empty file (0 bytes)"), ("case_2.nii.gz", "empty file (0 bytes)")]
    source = discover(msd)
    with pytest.raises(DataError, match=r"imagesTr/case_0.nii.gz: empty file"):
        load_case(source, case(source, "case_0"))
    (png / "train" / "masks" / "prostate_01_003.png").write_bytes(b"")
    assert errors(check(png, label_map={0: 0, 255: 1})) == [("prostate_01_003.png", "empty file (0 bytes)")]


# 2. truncated files


def test_truncated_files_are_found_by_reading_every_byte(msd, png, tmp_path):
    gz = msd / "imagesTr" / "case_1.nii.gz"
    data = gz.read_bytes()
    gz.write_bytes(data[: len(data) // 2])
    assert errors(check(msd)) == [("case_1.nii.gz", "truncated .nii.gz file (the compressed stream ends early)")]
    nii = save_nifti(tmp_path / "plain.nii", np.ones((20, 20, 20), np.float32))
    nii.write_bytes(nii.read_bytes()[:2000])
    with pytest.raises(DataError, match=r"plain.nii: truncated or corrupt NIfTI file") as info:
        load_volume(nii)
    assert info.value.__cause__ is not None  # the library's error is kept
    image = png / "test" / "images" / "prostate_02_002.png"
    image.write_bytes(image.read_bytes()[:200])
    [(name, message)] = errors(check(png, label_map={0: 0, 255: 1}))
    assert name == "prostate_02_002.png" and "truncated or corrupt PNG" in message


# 3. wrong content for the extension


def test_wrong_content_for_the_extension(msd, png):
    rng = np.random.default_rng(0)
    (msd / "imagesTr" / "case_0.nii.gz").write_bytes(rng.bytes(500))
    (msd / "labelsTr" / "case_1.nii.gz").write_bytes(gzip.compress(rng.bytes(500)))
    (png / "train" / "images" / "prostate_00_001.png").write_bytes(b"GIF89a" + rng.bytes(100))
    found = errors(check(msd))
    assert found[0][0] == "case_0.nii.gz" and found[0][1].startswith("not a NIfTI/gzip file")
    assert found[1][0] == "case_1.nii.gz" and found[1][1].startswith("not a NIfTI file: gzip content")
    [(name, message)] = errors(check(png, label_map={0: 0, 255: 1}))
    assert name == "prostate_00_001.png" and message.startswith("not a PNG file")


# 4. hidden files


def test_hidden_and_macos_files_are_ignored(msd, brats, png):
    apple = b"\x00\x05\x16\x07" + b"\x00" * 100
    for path in (msd / "imagesTr" / "._case_0.nii.gz", msd / "labelsTr" / "._case_0.nii.gz", msd / ".DS_Store",
                 brats / "BraTS2021_00000" / "._BraTS2021_00000_flair.nii.gz", png / "train" / "images" / "._x_1.png",
                 png / "train" / "masks" / "._x_1.png"):
        path.write_bytes(apple)
    (brats / "._BraTS2021_00009").mkdir()
    (brats / "._BraTS2021_00009" / "._BraTS2021_00009_flair.nii.gz").write_bytes(apple)
    assert check(msd) == [] and check(brats) == [] and check(png, label_map={0: 0, 255: 1}) == []
    assert len(discover(msd).cases) == 3 and len(discover(brats).cases) == 3 and len(discover(png, label_map={0: 0, 255: 1}).cases) == 3


# 5. dimensionality


def test_wrong_dimensionality_names_shape_and_field(msd, png):
    image, _ = tiny_case(0, channels=2)
    save_nifti(msd / "imagesTr" / "case_0.nii.gz", image)
    save_nifti(msd / "labelsTr" / "case_1.nii.gz", np.zeros((8, 8, 3, 2, 2), np.uint8))
    found = errors(check(msd))
    assert found[0][0] == "case_0.nii.gz" and "(8, 8, 3, 2)" in found[0][1] and "'modality'" in found[0][1]
    assert found[1][0] == "case_1.nii.gz" and "(8, 8, 3, 2, 2)" in found[1][1]
    Image.fromarray(np.zeros((64, 64, 4), np.uint8), "RGBA").save(png / "train" / "masks" / "prostate_00_000.png")
    [(name, message)] = errors(check(png, label_map={0: 0, 255: 1}))
    assert name == "prostate_00_000.png" and "mode RGBA with shape (64, 64, 4)" in message


# 6. and 7. geometry


def test_shape_mismatch_names_both_files_and_shapes(msd):
    save_nifti(msd / "labelsTr" / "case_2.nii.gz", np.zeros((8, 8, 4), np.uint8))
    [(name, message)] = errors(check(msd))
    assert name == "case_2.nii.gz" and "labelsTr/case_2.nii.gz has shape (8, 8, 4)" in message
    assert "imagesTr/case_2.nii.gz has (8, 8, 3)" in message and "nothing is cropped or resized" in message


def test_affine_mismatch_names_both_files_and_the_difference(msd):
    shifted = np.eye(4)
    shifted[0, 3] = 2.5
    save_nifti(msd / "labelsTr" / "case_1.nii.gz", tiny_case(1)[1], shifted)
    [(name, message)] = errors(check(msd))
    assert name == "case_1.nii.gz" and "labelsTr/case_1.nii.gz" in message and "imagesTr/case_1.nii.gz" in message
    assert "differ by up to 2.5 mm" in message


# 8. label values


def test_undeclared_label_values_are_listed(msd, png):
    _, label = tiny_case(0)
    label[0, 0, 0] = 3
    label[0, 1, 0] = 7
    save_nifti(msd / "labelsTr" / "case_0.nii.gz", label)
    save_nifti(msd / "labelsTr" / "case_1.nii.gz", np.full((8, 8, 3), 0.5, np.float32))
    found = errors(check(msd))
    assert found[0] == ("case_0.nii.gz", "label values [3, 7] are not declared labels [0, 1, 2] (from dataset.json "
                        "'labels'); found values [0, 1, 2, 3, 7]")
    assert found[1][0] == "case_1.nii.gz" and "non-integer" in found[1][1]
    found = errors(check(png))  # 0/255 masks without a label map: no silent /255
    assert len(found) == 3 and all("--label-map 0:0,255:1" in m for _, m in found)


# 9. to 12. intensities, empty masks, 16 bit


def test_nan_inf_constant_images_and_empty_masks(msd, capsys):
    image, _ = tiny_case(0)
    image[0, 0, :2] = np.nan
    image[1, 1, 1] = np.inf
    save_nifti(msd / "imagesTr" / "case_0.nii.gz", image)
    assert errors(check(msd)) == [("case_0.nii.gz", "3 NaN/Inf intensities; fix the file (jnet does not impute)")]
    save_nifti(msd / "imagesTr" / "case_0.nii.gz", np.full((8, 8, 3), 5.0, np.float32))
    save_nifti(msd / "labelsTr" / "case_0.nii.gz", np.zeros((8, 8, 3), np.uint8))  # empty mask: fine
    problems = check(msd)
    assert [(p.severity, p.path.name, p.message) for p in problems] == [
        ("warning", "case_0.nii.gz", "constant image (every voxel is 5)")]
    assert main(["data", "check", str(msd), "--quiet"]) == 0
    assert "warning:" in capsys.readouterr().out
    loaded = load_case(discover(msd), discover(msd).cases[0])
    assert loaded.label.sum() == 0


def test_16_bit_png_passes_the_check(tmp_path):
    root = tmp_path / "png"
    for z in range(2):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000 + z).save(root / "images" / f"p_{z}.png")
        Image.fromarray(np.eye(3, 4, dtype=np.uint8)).save(root / "masks" / f"p_{z}.png")
    assert check(root) == []
    assert load_case(discover(root), discover(root).cases[0]).image.max() == 55001


# 13. to 16. manifest


def test_missing_manifest_modality_and_seg_name_the_expected_path(msd, brats):
    (msd / "dataset.json").unlink()
    [(name, message)] = errors(check(msd))
    assert name == "dataset.json" and f"expected the MSD manifest at {msd / 'dataset.json'}" in message
    (brats / "BraTS2021_00001" / "BraTS2021_00001_t1ce.nii.gz").unlink()
    (brats / "BraTS2021_00002" / "BraTS2021_00002_seg.nii.gz").unlink()
    found = errors(check(brats))
    assert found == [
        ("BraTS2021_00001", f"missing T1ce: expected {brats / 'BraTS2021_00001' / 'BraTS2021_00001_t1ce.nii.gz'}"),
        ("BraTS2021_00002", f"missing seg: expected {brats / 'BraTS2021_00002' / 'BraTS2021_00002_seg.nii.gz'}"),
    ]
    with pytest.raises(DataError, match="2 problem"):
        discover(brats)


def test_mistyped_manifest_keys_are_one_error(msd):
    meta = json.loads((msd / "dataset.json").read_text())
    del meta["labels"]
    meta["numTraining"] = "3"
    meta["modality"] = ["T2"]
    meta["training"][1] = {"image": "./imagesTr/case_1.nii.gz"}
    (msd / "dataset.json").write_text(json.dumps(meta))
    [(name, message)] = errors(check(msd))
    assert name == "dataset.json"
    for key in ("'labels' missing", "'numTraining' should be an integer", "'modality' should be an object", "training[1]"):
        assert key in message
    with pytest.raises(DataError, match="1 problem") as info:
        discover(msd)
    assert "'labels' missing" in str(info.value) and "training[1]" in str(info.value)


def test_missing_files_and_count_mismatch_are_listed(msd):
    meta = json.loads((msd / "dataset.json").read_text())
    meta["numTraining"] = 5
    (msd / "dataset.json").write_text(json.dumps(meta))
    (msd / "imagesTr" / "case_0.nii.gz").unlink()
    (msd / "labelsTr" / "case_2.nii.gz").unlink()
    found = errors(check(msd))
    assert ("dataset.json", "'numTraining' is 5 but 'training' lists 3 cases") in found
    assert ("dataset.json", "dataset.json references 2 file(s) that do not exist: ./imagesTr/case_0.nii.gz, "
            "./labelsTr/case_2.nii.gz") in found
    with pytest.raises(DataError) as info:
        discover(msd)
    assert "case_0.nii.gz" in str(info.value) and "case_2.nii.gz" in str(info.value) and "numTraining" in str(info.value)


def test_duplicate_case_ids_are_listed(msd, png):
    meta = json.loads((msd / "dataset.json").read_text())
    meta["training"].append(meta["training"][0])
    meta["test"] = ["./imagesTr/case_1.nii.gz"]
    meta["numTraining"] = 4
    (msd / "dataset.json").write_text(json.dumps(meta))
    [(name, message)] = errors(check(msd))
    assert message.startswith("duplicate case ids: case_0 (") and "case_1 (" in message
    # one patient in two split folders (patient leakage)
    shutil.copy(png / "train" / "images" / "prostate_00_000.png", png / "test" / "images" / "prostate_00_009.png")
    shutil.copy(png / "train" / "masks" / "prostate_00_000.png", png / "test" / "masks" / "prostate_00_009.png")
    [(name, message)] = errors(check(png, label_map={0: 0, 255: 1}))
    assert "duplicate case ids: prostate_00 (test/images/prostate_00_009.png, train/images/prostate_00_000.png)" in message


# CLI


def test_cli_check_exit_codes_and_messages(msd, capsys):
    assert main(["data", "check", str(msd), "--quiet"]) == 0
    assert "0 error(s), 0 warning(s)" in capsys.readouterr().out
    (msd / "imagesTr" / "case_0.nii.gz").write_bytes(b"")
    save_nifti(msd / "labelsTr" / "case_2.nii.gz", np.zeros((8, 8, 4), np.uint8))
    assert main(["data", "check", str(msd), "--quiet"]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"error: {msd / 'imagesTr' / 'case_0.nii.gz'}: empty file (0 bytes)"
    assert lines[1].startswith(f"error: {msd / 'labelsTr' / 'case_2.nii.gz'}: shape mismatch")
    assert lines[2].endswith("2 error(s), 0 warning(s)")
    assert main(["data", "check", str(msd / "missing"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "missing: dataset folder not found" in err and len(err.strip().splitlines()) == 1
    assert main(["data", "check", str(msd), "--label-map", "0=1"]) == 2
    assert "--label-map" in capsys.readouterr().err


def test_cli_check_png_with_label_map(png_dir, capsys):
    assert main(["data", "check", str(png_dir), "--quiet"]) == 2
    assert "--label-map 0:0,255:1" in capsys.readouterr().out
    assert main(["data", "check", str(png_dir), "--label-map", "0:0,255:1", "--quiet"]) == 0
