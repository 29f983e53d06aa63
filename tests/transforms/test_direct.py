"""lowres_input: the model input straight from a volume equals the definition (normalise, resample
to S, downsample to s) for every mode, slice axis, memory order and background."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from jnet.errors import DataError
from jnet.transforms import lowres
from jnet.transforms.direct import axis_operator, lowres_input
from jnet.transforms.slicing import image_slices

# an affine whose superior-inferior axis is voxel axis 0, 1 or 2
AXIS_AFFINES = {
    0: np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]]),
    1: np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 3.0, 0, 0], [0, 0, 0, 1]]),
    2: np.diag([0.8, 0.6, 3.0, 1.0]),
}


def definition(image, affine, size, in_size, mode):
    slices, axis = image_slices(np.ascontiguousarray(image), affine, size)
    return lowres.downsample(torch.from_numpy(slices), in_size, mode).numpy(), axis


def volume(shape, channels=1, background=False, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(300, 60, (channels, *shape)).astype(np.float32)
    if background:
        image[:, : shape[0] // 3] = 0  # zeros that the z-score keeps at 0
        image[:, :, -2:] = 0
    return image


@pytest.mark.parametrize("mode", ["area", "nearest", "gaussian"])
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("order", ["C", "F"])
def test_equals_the_definition(mode, axis, order):
    shape = [45, 70, 38]
    shape[axis] = 5
    image = np.asarray(volume(shape, channels=2, background=True), order=order)
    want, want_axis = definition(image, AXIS_AFFINES[axis], 32, 8, mode)
    got, got_axis = lowres_input(image, AXIS_AFFINES[axis], 32, 8, mode)
    assert got_axis == want_axis == axis
    assert got.shape == want.shape == (5, 2, 8, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("background", [False, True])
def test_a_file_in_nifti_order_and_a_plane_that_grows(background):
    # (C, X, Y, Z) viewed from an (X, Y, Z) Fortran array, as the NIfTI reader returns it;
    # 20 x 12 slices: one axis grows to S = 16 (bilinear), the other shrinks (area)
    data = np.asfortranarray(volume((20, 12, 6), background=background)[0])
    image = data[None]
    want, _ = definition(image, AXIS_AFFINES[2], 16, 4, "area")
    got, _ = lowres_input(image, AXIS_AFFINES[2], 16, 4, "area")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


def test_other_dtypes_are_read_as_float32():
    image = volume((20, 12, 6), background=True)
    want, _ = lowres_input(image, AXIS_AFFINES[2], 16, 4, "area")
    got, _ = lowres_input(image.astype(np.float64), AXIS_AFFINES[2], 16, 4, "area")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_axis_operator_keeps_constants():
    op = axis_operator(37, 24, 6, "gaussian")
    assert op.shape == (6, 37)
    torch.testing.assert_close(op.sum(1), torch.ones(6))


def test_bad_channels_go_through_the_definition():
    image = volume((16, 16, 3), channels=2)
    image[1] = 7.0  # constant: the definition warns and gives zeros
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, _ = lowres_input(image, AXIS_AFFINES[2], 16, 4, "area", name="case.nii.gz")
    assert any("constant" in str(w.message) for w in caught)
    assert np.all(got[:, 1] == 0) and np.abs(got[:, 0]).max() > 0.1
    image[0, 3, 4, 1] = np.nan
    with pytest.raises(DataError, match="case.nii.gz.*NaN"):
        lowres_input(image, AXIS_AFFINES[2], 16, 4, "area", name="case.nii.gz")
