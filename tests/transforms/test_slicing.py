"""preprocess: slice axis, normalisation, slicing/resampling and its exact inverse."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jnet.transforms.slicing import (
    image_to_slices,
    label_to_slices,
    nearest_index,
    normalise,
    slice_axis,
    slice_spacing,
    slices_to_volume,
)
from jnet.errors import DataError


def _rotation_x(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    r = np.eye(4)
    r[1:3, 1:3] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return r


def test_slice_axis_follows_the_superior_inferior_axis():
    assert slice_axis(np.eye(4)) == 2
    # Voxel axis 0 runs along world z (sagittal-stored volume): slice along 0.
    permuted = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]])
    assert slice_axis(permuted) == 0
    # Oblique by 30 degrees about x: the last axis is still closest to z; 60 degrees: axis 1 is.
    assert slice_axis(_rotation_x(30)) == 2
    assert slice_axis(_rotation_x(60)) == 1
    assert slice_axis(np.diag([-1.0, -1.0, 3.0, 1.0])) == 2  # flips do not matter


def test_slice_axis_defaults_to_last_axis_and_rejects_bad_affines():
    assert slice_axis(np.zeros((4, 4))) == 2
    with pytest.raises(DataError, match="4x4"):
        slice_axis(np.eye(3))


def test_normalise_zscores_nonzero_voxels_per_channel():
    image = np.zeros((2, 2, 2, 1), np.float32)
    image[0, :, :, 0] = [[0, 1], [2, 3]]  # non-zero values 1, 2, 3: mean 2, std sqrt(2/3)
    image[1, :, :, 0] = [[10, 10], [20, 0]]  # 10, 10, 20: mean 40/3
    out = normalise(image)
    assert out.dtype == np.float32
    std0 = np.sqrt(2 / 3)
    np.testing.assert_allclose(out[0, :, :, 0], [[0, -1 / std0], [0, 1 / std0]], rtol=1e-6)
    v = np.array([10, 10, 20.0])
    np.testing.assert_allclose(out[1, :, :, 0], [[(10 - v.mean()) / v.std()] * 2, [(20 - v.mean()) / v.std(), 0]],
                               rtol=1e-6)


def test_normalise_constant_image_is_finite_with_a_warning():
    with pytest.warns(UserWarning, match="constant"):
        out = normalise(np.full((1, 3, 3, 2), 7.0, np.float32), name="case_a")
    assert np.isfinite(out).all() and (out == 0).all()
    with pytest.warns(UserWarning, match="constant"):
        assert (normalise(np.zeros((1, 2, 2, 2), np.float32)) == 0).all()


def test_normalise_rejects_nan_and_wrong_rank():
    image = np.ones((1, 2, 2, 2), np.float32)
    image[0, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="case_b.*1 NaN"):
        normalise(image, name="case_b")
    with pytest.raises(DataError, match=r"\(C, X, Y, Z\)"):
        normalise(np.ones((2, 2, 2), np.float32))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_image_to_slices_cuts_along_axis_in_voxel_order(axis):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)  # asymmetric: every axis differs
    slices = image_to_slices(image, axis, 8)
    assert slices.shape == (image.shape[1 + axis], 2, 8, 8) and slices.dtype == np.float32
    for i in (0, image.shape[1 + axis] - 1):
        plane = torch.from_numpy(np.take(image, i, axis=1 + axis))[None]  # (1, C, A, B), A before B
        expected = F.interpolate(plane, size=(8, 8), mode="bilinear", align_corners=False)[0]
        np.testing.assert_allclose(slices[i], expected.numpy(), atol=1e-6)


def test_image_to_slices_area_when_shrinking_bilinear_when_growing():
    image = np.arange(8 * 2, dtype=np.float32).reshape(1, 8, 2, 1)  # rows shrink 8->4, cols grow 2->4
    out = image_to_slices(image, 2, 4)[0, 0]
    rows = image[0, :, :, 0].reshape(4, 2, 2).mean(axis=1)  # area: mean of row pairs -> (4, 2)
    cols = F.interpolate(torch.from_numpy(rows)[None, None], size=(4, 4), mode="bilinear",
                         align_corners=False)[0, 0].numpy()
    # The two axes are resampled independently (separable): area on rows, bilinear on columns.
    np.testing.assert_allclose(out, cols, atol=1e-5)
    # A non-square plane becomes square, and values keep their row/column orientation.
    ramp = np.broadcast_to(np.arange(10, dtype=np.float32)[:, None], (10, 3)).reshape(1, 10, 3, 1)
    sq = image_to_slices(np.ascontiguousarray(ramp), 2, 5)[0, 0]
    assert (np.diff(sq, axis=0) > 0).all() and np.allclose(np.diff(sq, axis=1), 0)


def test_image_to_slices_torch_in_torch_out():
    out = image_to_slices(torch.ones(1, 4, 4, 3), 2, 2)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 1, 2, 2)


def test_label_to_slices_is_nearest_and_never_invents_values():
    rng = np.random.default_rng(1)
    label = rng.choice(np.array([0, 7], np.uint8), size=(11, 9, 3))
    out = label_to_slices(label, 2, 16)
    assert out.shape == (3, 16, 16) and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 7}
    # Same pixel choice as torch's "nearest-exact" (and PIL's NEAREST), up and down.
    for size in (16, 4):
        t = torch.from_numpy(np.moveaxis(label, 2, 0)).float()[:, None]
        expected = F.interpolate(t, size=(size, size), mode="nearest-exact")[:, 0].to(torch.uint8)
        np.testing.assert_array_equal(label_to_slices(label, 2, size), expected.numpy())


def test_nearest_index_exact_integer_arithmetic():
    np.testing.assert_array_equal(nearest_index(4, 2), [1, 3])
    np.testing.assert_array_equal(nearest_index(2, 4), [0, 0, 1, 1])
    np.testing.assert_array_equal(nearest_index(3, 2), [0, 2])  # floor(0.75)=0, floor(2.25)=2


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_label_round_trip_through_slices_is_exact(axis):
    rng = np.random.default_rng(2)
    label = rng.integers(0, 4, size=(6, 4, 5), dtype=np.uint8)  # asymmetric volume
    size = 12  # an integer multiple of every in-plane extent: nearest up/down is exact
    slices = label_to_slices(label, axis, size)
    assert slices.shape == (label.shape[axis], size, size)
    back = slices_to_volume(slices, axis, label.shape)
    assert back.shape == label.shape and back.dtype == np.uint8
    np.testing.assert_array_equal(back, label)
    # torch in, torch out
    back_t = slices_to_volume(torch.from_numpy(slices), axis, label.shape)
    np.testing.assert_array_equal(back_t.numpy(), label)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_probability_round_trip_keeps_axes_and_channels(axis):
    shape = (6, 4, 5)
    coords = np.indices(shape)[axis].astype(np.float32)  # constant within each slice
    image = np.stack([coords, 10 + coords])  # (C=2, X, Y, Z)
    slices = image_to_slices(image, axis, 7)  # (n, C, S, S)
    back = slices_to_volume(slices, axis, shape)
    assert back.shape == (2, *shape) and back.dtype == np.float32
    np.testing.assert_allclose(back, image, atol=1e-5)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_label_volume_in_fortran_order_is_the_same_volume(axis):
    """fortran=True changes the memory order only (NIfTI's, for a copy-free write), never a voxel."""
    shape = (9, 7, 5)
    n = shape[axis]
    pred = np.random.default_rng(axis).integers(0, 4, (n, 6, 8)).astype(np.uint8)
    plain = slices_to_volume(pred, axis, shape)
    laid = slices_to_volume(pred, axis, shape, fortran=True)
    assert laid.flags["F_CONTIGUOUS"] and laid.dtype == np.uint8
    np.testing.assert_array_equal(laid, plain)


def test_slices_to_volume_checks_slice_count():
    with pytest.raises(DataError, match="3 slices"):
        slices_to_volume(np.zeros((3, 8, 8), np.uint8), 2, (4, 4, 5))


def test_slice_spacing():
    assert slice_spacing((0.5, 0.5, 3.0), (320, 320, 20), 2, 256) == [0.625, 0.625, 3.0]
    assert slice_spacing((1.0, 2.0, 3.0), (10, 20, 30), 0, 10) == [4.0, 9.0, 1.0]


def test_no_warning_for_regular_image():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normalise(np.arange(1, 9, dtype=np.float32).reshape(1, 2, 2, 2))
