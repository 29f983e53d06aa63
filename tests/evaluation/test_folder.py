"""`jnet evaluate-folder`: NIfTI masks against label files, cross-checked by an independent computation."""
from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from jnet.cli import main
from jnet.errors import ConfigError, DataError
from jnet.evaluation.folder import evaluate_folder, parse_structures

SPACING = (0.5, 1.0, 3.0)  # anisotropic, as MRI


def save(path, data, spacing=SPACING):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.uint8), np.diag([*spacing, 1.0])), path)


def independent_hd95(a, b, spacing):
    """Max of the two directed 95th-percentile distances between the masks' edge voxels
    (edge = mask minus its erosion), computed with scipy alone."""
    def edges(m):
        return m & ~ndimage.binary_erosion(m)

    ea, eb = edges(a), edges(b)
    d_to_b = ndimage.distance_transform_edt(~eb, sampling=spacing)
    d_to_a = ndimage.distance_transform_edt(~ea, sampling=spacing)
    return max(np.percentile(d_to_b[ea], 95), np.percentile(d_to_a[eb], 95))


@pytest.fixture
def folders(tmp_path):
    """Two cases: labels 1 (a box) and 2 (a box inside it); predictions shifted and trimmed."""
    shape = (40, 30, 12)
    gts, preds = {}, {}
    for i, shift in enumerate((2, 5)):
        gt = np.zeros(shape, np.uint8)
        gt[8:30, 6:24, 2:10] = 1
        gt[14:22, 10:18, 4:8] = 2
        pred = np.zeros(shape, np.uint8)
        pred[8 + shift:30 + shift, 6:24, 2:10] = 1
        if i == 0:
            pred[14:22, 10:18, 4:7] = 2
        gts[f"case{i}.nii.gz"], preds[f"case{i}.nii.gz"] = gt, pred
        save(tmp_path / "labels" / f"case{i}.nii.gz", gt)
        save(tmp_path / "pred" / f"case{i}.nii.gz", pred)
    return tmp_path, gts, preds


def test_scores_equal_an_independent_computation(folders):
    root, gts, preds = folders
    summary = evaluate_folder(root / "pred", root / "labels", structures={"outer": [1, 2], "inner": [2]})
    assert summary["n_cases"] == 2 and summary["failed"] == []
    for row in summary["per_case"]:
        gt, pred = gts[row["case"]], preds[row["case"]]
        for name, values in (("outer", [1, 2]), ("inner", [2])):
            a, b = np.isin(pred, values), np.isin(gt, values)
            got = row["structures"][name]
            inter = (a & b).sum()
            if not a.any():
                assert got["dice"] == 0 and got["hd95"] is None
                continue
            assert got["dice"] == pytest.approx(2 * inter / (a.sum() + b.sum()), abs=1e-6)
            assert got["jaccard"] == pytest.approx(inter / (a | b).sum(), abs=1e-6)
            assert got["hd95"] == pytest.approx(independent_hd95(a, b, SPACING), abs=1e-4)
            assert 0 <= got["nsd"] <= 1
    # the inner box is missing from case1's prediction: foreground means see it, once
    assert summary["foreground_mean"]["inner"]["n_cases"] == 2
    assert summary["mean"]["inner"]["hd95_undefined"] == 1
    rows = list(csv.DictReader(open(root / "pred" / "per_case.csv")))
    assert [r["case"] for r in rows] == ["case0.nii.gz", "case1.nii.gz"] and rows[1]["hd95_inner"] == ""
    assert json.loads((root / "pred" / "summary.json").read_text())["definitions"]["hd95"].startswith("MONAI")


def test_2d_masks_are_one_slice(tmp_path):
    gt, pred = np.zeros((40, 30), np.uint8), np.zeros((40, 30), np.uint8)
    gt[8:30, 6:24], pred[10:30, 6:24] = 1, 1
    save(tmp_path / "labels" / "c.nii.gz", gt)
    save(tmp_path / "pred" / "c.nii.gz", pred[..., None])  # (X, Y, 1) against (X, Y): one slice both
    (row,) = evaluate_folder(tmp_path / "pred", tmp_path / "labels")["per_case"]
    assert row["structures"]["label 1"]["dice"] == pytest.approx(2 * 20 * 18 / (20 * 18 + 22 * 18))


def test_png_masks_are_scored_as_one_slice_of_1_mm_pixels(tmp_path):
    """nnU-Net's 2D format: CASE.png predictions against CASE.png labels."""
    from PIL import Image

    gt, pred = np.zeros((40, 30), np.uint8), np.zeros((40, 30), np.uint8)
    gt[8:30, 6:24], pred[10:30, 6:24] = 1, 1
    for folder, mask in (("labels", gt), ("pred", pred)):
        (tmp_path / folder).mkdir()
        Image.fromarray(mask).save(tmp_path / folder / "c.png")
    summary = evaluate_folder(tmp_path / "pred", tmp_path / "labels")
    (row,) = summary["per_case"]
    scores = row["structures"]["label 1"]
    assert row["spacing_mm"] == [1.0, 1.0, 1.0]
    assert scores["dice"] == pytest.approx(2 * 20 * 18 / (20 * 18 + 22 * 18))
    # distances along the slice, between contours (in 3D every pixel of one slice is surface)
    assert scores["hd95"] == pytest.approx(independent_hd95(pred > 0, gt > 0, (1.0, 1.0)), abs=1e-4)
    assert scores["hd95"] == pytest.approx(2.0)  # the top edge moved by two pixels
    assert 0 < scores["nsd"] < 1


def test_identical_masks_score_perfectly_and_shifts_within_tolerance_keep_nsd(tmp_path):
    gt = np.zeros((30, 30, 10), np.uint8)
    gt[5:25, 5:25, 2:8] = 1
    pred = np.roll(gt, 1, axis=0)  # one voxel = 0.5 mm along x
    save(tmp_path / "l" / "a.nii.gz", gt)
    save(tmp_path / "p" / "a.nii.gz", gt)
    save(tmp_path / "p2" / "a.nii.gz", pred)
    same = evaluate_folder(tmp_path / "p", tmp_path / "l", structures={"fg": [1]})["per_case"][0]["structures"]["fg"]
    assert same["dice"] == 1 and same["hd95"] == 0 and same["nsd"] == 1
    shifted = evaluate_folder(tmp_path / "p2", tmp_path / "l", structures={"fg": [1]}, tolerance_mm=1.0)
    assert shifted["per_case"][0]["structures"]["fg"]["nsd"] == pytest.approx(1.0)
    strict = evaluate_folder(tmp_path / "p2", tmp_path / "l", structures={"fg": [1]}, tolerance_mm=0.0,
                             overwrite=True)
    assert strict["per_case"][0]["structures"]["fg"]["nsd"] < 1


def test_structures_from_dataset_json_and_unpaired_files(folders, capsys):
    root, _, _ = folders
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "tumour": [1, 2], "core": 2}}))
    save(root / "pred" / "extra.nii.gz", np.zeros((4, 4, 4), np.uint8))
    save(root / "labels" / "lonely.nii.gz", np.zeros((4, 4, 4), np.uint8))
    save(root / "pred" / "lonely_not.nii.gz", np.zeros((4, 4, 4), np.uint8))
    assert main(["evaluate-folder", str(root / "pred"), str(root / "labels"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| tumour | 2 |" in out and "| core | 2 |" in out
    assert "labels without a prediction (1): lonely.nii.gz" in out
    summary = json.loads((root / "pred" / "summary.json").read_text())
    assert summary["structures"] == {"tumour": [1, 2], "core": [2]}
    assert main(["evaluate-folder", str(root / "pred"), str(root / "labels")]) == 2  # no --overwrite


def test_a_mismatched_case_is_reported_and_the_rest_scored(folders, capsys):
    root, _, _ = folders
    save(root / "pred" / "case1.nii.gz", np.zeros((40, 30, 12), np.uint8), spacing=(1.0, 1.0, 1.0))
    code = main(["evaluate-folder", str(root / "pred"), str(root / "labels"), "--labels", "outer:1+2"])
    out = capsys.readouterr().out
    assert code == 2 and "failed:" in out and "affine differs" in out and "1 case(s) scored" in out


def test_bad_arguments():
    assert parse_structures("WT:1+2+4,ET:4") == {"WT": [1, 2, 4], "ET": [4]}
    for bad in ("WT", "WT:0", "WT:a"):
        with pytest.raises(ConfigError, match="--labels"):
            parse_structures(bad)


def test_no_pairs_is_an_error(tmp_path):
    save(tmp_path / "p" / "a.nii.gz", np.zeros((4, 4, 4), np.uint8))
    save(tmp_path / "l" / "b.nii.gz", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(DataError, match="no prediction has a same-named label file"):
        evaluate_folder(tmp_path / "p", tmp_path / "l")


def test_an_empty_folder_is_named(tmp_path):
    save(tmp_path / "p" / "a.nii.gz", np.zeros((4, 4, 4), np.uint8))
    (tmp_path / "l").mkdir()
    with pytest.raises(DataError, match=r"l: no label file \(\.nii, \.nii\.gz, \.png\)"):
        evaluate_folder(tmp_path / "p", tmp_path / "l")
    with pytest.raises(DataError, match=r"l: no prediction \(\.nii, \.nii\.gz, \.png\)"):
        evaluate_folder(tmp_path / "l", tmp_path / "p")


def test_means_come_with_an_interval_over_the_cases(folders, tmp_path):
    from jnet.evaluation.compare import MIN_CASES

    root, _, _ = folders
    few = evaluate_folder(root / "pred", root / "labels", structures={"outer": [1, 2]})
    assert few["foreground_mean"]["outer"]["dice_interval"] is None  # two cases: too few
    gt = np.zeros((20, 20, 4), np.uint8)
    gt[4:16, 4:16, 1:3] = 1
    for i in range(MIN_CASES):
        save(tmp_path / "many" / "labels" / f"c{i}.nii.gz", gt)
        save(tmp_path / "many" / "pred" / f"c{i}.nii.gz", np.roll(gt, i % 4, axis=0))  # 0-3 voxels off
    many = evaluate_folder(tmp_path / "many" / "pred", tmp_path / "many" / "labels", structures={"fg": [1]})
    fg = many["foreground_mean"]["fg"]
    for m in ("dice", "jaccard", "nsd"):
        low, high = fg[f"{m}_interval"]
        assert low < fg[m] < high <= 1, m
    from jnet.evaluation.folder import summary_table

    assert f"{fg['dice_interval'][0]:.4f}-{fg['dice_interval'][1]:.4f}" in summary_table(many)
