"""Metric golden values on hand-made masks, the empty-mask policy both ways, volume restacking."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jnet.errors import DataError
from jnet.evaluation.metrics import (EMPTY_POLICY, MetricsCollector, evaluate_masks, native_volumes, slice_metrics,
                          summarise, volume_metrics)


def square(shape=(12, 12), rows=(2, 5), cols=(2, 5)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


def one(mask: np.ndarray) -> np.ndarray:
    return mask[None, None]


# ---------------------------------------------------------------- golden values (computed by hand)
def test_outlier_pixel_hd95_is_the_interpolated_percentile():
    # gt: 3x3 square; pred: the same square plus one isolated pixel 6 columns right of its edge.
    # Overlap: |inter| = 9, |union| = 10 -> Jaccard 0.9, Dice 18/19.
    # Edges (boundary pixels): gt 8, pred the same 8 + the lone pixel. pred->gt distances: eight 0 and
    # 6 * col_spacing; gt->pred all 0. 95th percentile of 9 sorted values (linear interpolation):
    # position 0.95 * 8 = 7.6 -> 0 + 0.6 * d. With spacing (1, 1): 3.6; with (2, 0.5): d = 3 -> 1.8.
    gt = square()
    pred = gt.copy()
    pred[3, 10] = True
    iso = slice_metrics(one(pred), one(gt), (1.0, 1.0))
    assert iso["jaccard"][0, 0] == pytest.approx(0.9, rel=1e-6)
    assert iso["dice"][0, 0] == pytest.approx(18 / 19, rel=1e-6)
    assert iso["hd95"][0, 0] == pytest.approx(3.6, rel=1e-5)
    aniso = slice_metrics(one(pred), one(gt), (2.0, 0.5))
    assert aniso["hd95"][0, 0] == pytest.approx(1.8, rel=1e-5)


def test_anisotropic_spacing_follows_the_axis_order():
    # pred = gt shifted one column right. Edge pixels on the far columns are one column from the
    # other mask's edge; the pixel at the centre of the shifted square is one ROW from a gt edge.
    # pred->gt distances: 0,0,0,0, min(row, col spacing), col, col, col -> 95th percentile = col spacing
    # when col >= row. Spacing (rows 1 mm, cols 3 mm) -> 3; (rows 3, cols 1) -> 1.
    # Jaccard 6/12 = 0.5, Dice 12/18.
    gt = square()
    pred = square(cols=(3, 6))
    wide = slice_metrics(one(pred), one(gt), (1.0, 3.0))
    assert wide["hd95"][0, 0] == pytest.approx(3.0, rel=1e-6)
    assert wide["jaccard"][0, 0] == pytest.approx(0.5)
    assert wide["dice"][0, 0] == pytest.approx(2 / 3, rel=1e-6)
    tall = slice_metrics(one(pred), one(gt), np.array([[3.0, 1.0]]))  # (N, 2) per-image form
    assert tall["hd95"][0, 0] == pytest.approx(1.0, rel=1e-6)


def test_per_image_spacing_is_used_per_image():
    gt = np.stack([one(square())[0]] * 2)
    pred = np.stack([one(square(cols=(3, 6)))[0]] * 2)
    out = slice_metrics(pred, gt, [(1.0, 3.0), (1.0, 0.5)])
    # second image: col spacing 0.5 < row spacing 1 -> the shifted edges are 0.5 mm apart
    np.testing.assert_allclose(out["hd95"][:, 0], [3.0, 0.5], rtol=1e-6)


def test_volume_metrics_use_the_slice_spacing():
    # gt occupies slices 1-2, pred slices 2-3 (same 3x3 square): Jaccard 9/27, Dice 18/36.
    # Every voxel of a 2-slice slab is an edge voxel; pred->gt: 9 zeros and 9 * dz -> HD95 = dz.
    gt = np.zeros((5, 1, 8, 8), bool)
    pred = np.zeros_like(gt)
    gt[1:3, 0, 2:5, 2:5] = True
    pred[2:4, 0, 2:5, 2:5] = True
    out = volume_metrics(pred, gt, (2.5, 1.0, 1.0))
    assert out["jaccard"][0] == pytest.approx(1 / 3, rel=1e-6)
    assert out["dice"][0] == pytest.approx(0.5)
    assert out["hd95"][0] == pytest.approx(2.5, rel=1e-6)
    assert volume_metrics(pred, gt, (0.5, 1.0, 1.0))["hd95"][0] == pytest.approx(0.5, rel=1e-6)


def test_a_volume_of_one_slice_is_scored_as_that_slice():
    # pred: the gt box with its top edge two rows lower (spacing 0.5 mm along H). As a slice the
    # top contours lie 2 rows = 1.0 mm apart (a quarter of gt's contour: the 95th percentile); as a
    # one-slice 3D volume every pixel would be surface, and the two moved rows, 9% of gt's area,
    # would put the percentile below 1.0.
    gt, pred = square((40, 30), rows=(8, 30), cols=(6, 24)), square((40, 30), rows=(10, 30), cols=(6, 24))
    volume = volume_metrics(one(pred), one(gt), (3.0, 0.5, 1.0))
    slices = slice_metrics(one(pred), one(gt), (0.5, 1.0))
    for m in ("jaccard", "dice", "hd95"):
        assert volume[m][0] == slices[m][0, 0]
    assert volume["hd95"][0] == pytest.approx(1.0)


# ---------------------------------------------------------------- the empty policy, both ways
def test_empty_policy_for_slices():
    empty, full = np.zeros((12, 12), bool), square()
    pred = np.stack([one(empty)[0], one(full)[0], one(empty)[0]])
    gt = np.stack([one(empty)[0], one(empty)[0], one(full)[0]])
    out = slice_metrics(pred, gt, (1.0, 1.0))
    # both empty -> 1, 1, 0; prediction without ground truth and ground truth missed -> 0, 0, NaN
    np.testing.assert_array_equal(out["jaccard"][:, 0], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(out["dice"][:, 0], [1.0, 0.0, 0.0])
    assert out["hd95"][0, 0] == 0.0
    assert np.isnan(out["hd95"][1, 0]) and np.isnan(out["hd95"][2, 0])
    assert EMPTY_POLICY["both_empty"] == {"jaccard": 1.0, "dice": 1.0, "hd95": 0.0}


def test_empty_policy_for_volumes_per_structure():
    gt = np.zeros((3, 3, 8, 8), bool)
    pred = np.zeros_like(gt)
    gt[1, 0, 2:5, 2:5] = pred[1, 0, 2:5, 2:5] = True  # structure 0: perfect
    pred[1, 1, 2:5, 2:5] = True  # structure 1: predicted, absent; structure 2: absent in both
    out = volume_metrics(pred, gt, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(out["jaccard"], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(out["dice"], [1.0, 0.0, 1.0])
    assert out["hd95"][0] == 0.0 and np.isnan(out["hd95"][1]) and out["hd95"][2] == 0.0


def test_summarise_excludes_and_counts_undefined_hd95():
    values = np.array([[1.0, np.nan], [3.0, np.nan], [np.nan, np.nan]])
    s = summarise(values, ["a", "b"], count_undefined=True)
    assert s["per_class"] == {"a": 2.0, "b": None}
    assert s["mean"] == 2.0  # mean over the structures that have a defined value
    assert s["undefined"] == {"a": 1, "b": 3} and s["n_undefined"] == 4 and s["n"] == 3
    json.dumps(s, allow_nan=False)  # no NaN reaches JSON


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "pred, gt, spacing, match",
    [
        (np.zeros((1, 1, 4, 4), np.uint8), np.zeros((1, 1, 4, 4), bool), (1, 1), "boolean"),
        (np.zeros((1, 1, 4, 4), bool), np.zeros((1, 1, 4, 5), bool), (1, 1), "equal shapes"),
        (np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4), bool), (1, 1), "4 dimensions"),
        (np.zeros((2, 1, 4, 4), bool), np.zeros((2, 1, 4, 4), bool), (1, 1, 1), "spacing"),
        (np.zeros((1, 1, 4, 4), bool), np.zeros((1, 1, 4, 4), bool), (0.0, 1.0), "positive"),
    ],
)
def test_bad_input_raises_data_error(pred, gt, spacing, match):
    with pytest.raises(DataError, match=match):
        slice_metrics(pred, gt, spacing)


# ---------------------------------------------------------------- restacking a split
def manifest(cases):
    return {"cases": cases}


def test_collector_restacks_with_gaps_and_real_slice_spacing():
    # One case, slice_indices [4, 6]: the volume keeps the empty slice 5 between them, so a
    # prediction on slice 6 for a structure on slice 4 is 2 * dz away (not dz).
    m = manifest([{"case_id": "a", "start": 0, "count": 2, "slice_indices": [4, 6], "spacing": [1, 1, 1.5]}])
    gt = np.zeros((2, 1, 8, 8), bool)
    pred = np.zeros_like(gt)
    gt[0, 0, 2:5, 2:5] = True
    pred[1, 0, 2:5, 2:5] = True
    collector = MetricsCollector(m, ["fg"])
    collector.add([1], pred[1:], gt[1:])  # any order
    assert collector.case_rows == []  # the case is open until its last slice arrives
    collector.add([0], pred[:1], gt[:1])
    summary = collector.summary()
    assert summary["volume_hd95"]["per_class"]["fg"] == pytest.approx(3.0, rel=1e-6)
    assert summary["volume_jaccard"]["mean"] == 0.0
    assert summary["hd95_undefined"] == 2 and summary["n_slices"] == 2 and summary["n_cases"] == 1
    assert [r["slice_index"] for r in collector.slice_rows] == [6, 4]


def test_perfect_masks_score_one():
    m = manifest([
        {"case_id": "a", "start": 0, "count": 3, "slice_indices": [0, 1, 2], "spacing": [0.8, 0.8, 3.0]},
        {"case_id": "b", "start": 3, "count": 2, "slice_indices": [5, 6], "spacing": [0.5, 0.7, 2.0]},
    ])
    rng = np.random.default_rng(0)
    gt = rng.random((5, 2, 16, 16)) > 0.7
    gt[4, 1] = False  # an empty structure on one slice: both empty -> still 1
    out = evaluate_masks(gt.copy(), gt, m, ["x", "y"])
    for key in ("jaccard", "dice", "volume_jaccard", "volume_dice"):
        assert out[key]["mean"] == 1.0 and set(out[key]["per_class"].values()) == {1.0}
    assert out["hd95"]["mean"] == 0.0 and out["volume_hd95"]["mean"] == 0.0
    assert out["n_gt_empty"] == {"x": 0, "y": 1} and out["hd95_undefined"] == 0


def test_row_outside_every_case_is_refused():
    m = manifest([{"case_id": "a", "start": 0, "count": 1, "spacing": [1, 1, 1]}])
    with pytest.raises(DataError, match="row 3"):
        MetricsCollector(m, ["fg"]).case_of(3)


def test_native_volumes_invert_the_cache_resampling():
    from jnet.transforms.slicing import label_to_slices

    rng = np.random.default_rng(1)
    original = (rng.random((5, 7, 4)) > 0.5).astype(np.uint8)  # (X, Y, Z), sliced along axis 1
    cached = label_to_slices(original, 1, 16).astype(bool)  # (7, 16, 16): upsampled plane
    case = {"case_id": "c", "axis": 1, "original_shape": [5, 7, 4], "native_spacing": [0.9, 2.0, 1.1]}
    pred, gt, spacing = native_volumes(case, cached[:, None], cached[:, None])
    assert pred.shape == gt.shape == (7, 1, 5, 4)
    np.testing.assert_array_equal(gt[:, 0], np.moveaxis(original, 1, 0).astype(bool))
    assert spacing == (2.0, 0.9, 1.1)
