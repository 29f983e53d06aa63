"""pairs.downsample: golden values for each low-resolution simulation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from jnet.errors import ConfigError
from jnet.transforms.lowres import DOWNSAMPLE_MODES, downsample

X = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)


def test_modes():
    assert DOWNSAMPLE_MODES == ("area", "nearest", "gaussian")


def test_area_is_block_mean():
    out = downsample(X, 2, "area")
    # blocks [[0,1],[4,5]] -> 2.5, [[2,3],[6,7]] -> 4.5, ...
    torch.testing.assert_close(out, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    assert downsample(X, 2).equal(out)  # area is the default


def test_nearest_picks_pixel_centres_like_pil():
    out = downsample(X, 2, "nearest")
    torch.testing.assert_close(out, torch.tensor([[[[5.0, 7.0], [13.0, 15.0]]]]))
    rng = np.random.default_rng(0)
    for side, size in ((256, 16), (10, 4), (7, 3)):
        img = rng.integers(0, 256, size=(side, side), dtype=np.uint8)
        pil = np.asarray(Image.fromarray(img).resize((size, size), Image.NEAREST))
        ours = downsample(torch.from_numpy(img)[None, None], size, "nearest")[0, 0]
        np.testing.assert_array_equal(ours.numpy().astype(np.uint8), pil)


def _gaussian_reference(x: np.ndarray, factor: int) -> np.ndarray:
    """Independent numpy version: sampled Gaussian (sigma (f-1)/2, radius int(4 sigma + 0.5)),
    edge padding, then the mean of the central pixel pair/of each block centre (bilinear at the
    low-res pixel centre for an even factor)."""
    sigma = (factor - 1) / 2
    radius = int(max(4 * sigma, 0.5) + 0.5)
    t = np.arange(-radius, radius + 1)
    k = np.exp(-(t**2) / (2 * sigma**2))
    k /= k.sum()
    for axis in (0, 1):
        padded = np.pad(x, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        x = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), axis, padded)
    c = factor // 2
    return (x[c - 1::factor, c - 1::factor] + x[c::factor, c::factor] + x[c - 1::factor, c::factor]
            + x[c::factor, c - 1::factor]) / 4


@pytest.mark.parametrize("factor", [2, 4])
def test_gaussian_matches_reference(factor):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8 * factor, 8 * factor))
    ours = downsample(torch.from_numpy(x)[None, None].float(), 8, "gaussian")[0, 0].numpy()
    np.testing.assert_allclose(ours, _gaussian_reference(x, factor), atol=1e-5)


def test_gaussian_keeps_constants_and_attenuates_aliasing():
    assert torch.allclose(downsample(torch.full((2, 3, 32, 32), 4.0), 4, "gaussian"), torch.tensor(4.0))
    # A checkerboard at the Nyquist frequency of the high-res grid aliases to a constant under
    # nearest, but is averaged away (to ~0 after centring) by area and gaussian.
    board = (torch.arange(32).view(-1, 1) + torch.arange(32)).remainder(2).float().view(1, 1, 32, 32)
    assert downsample(board, 8, "nearest").std() == 0 and downsample(board, 8, "nearest").mean() in (0, 1)
    assert (downsample(board, 8, "gaussian") - 0.5).abs().max() < 0.02  # edges: replicate padding
    assert (downsample(board, 8, "area") - 0.5).abs().max() < 1e-6


def test_shapes_dtypes_and_identity():
    x = torch.rand(3, 2, 32, 32)
    for mode in DOWNSAMPLE_MODES:
        out = downsample(x, 16, mode)
        assert out.shape == (3, 2, 16, 16) and out.dtype == torch.float32
        assert downsample(x, 32, mode) is x
    assert downsample(torch.ones(1, 1, 4, 4, dtype=torch.uint8), 2).dtype == torch.float32


def test_bad_mode_and_size_raise_config_errors():
    with pytest.raises(ConfigError, match="data.downsample.*'bicubic'"):
        downsample(X, 2, "bicubic")
    with pytest.raises(ConfigError, match="data.in_size.*8"):
        downsample(X, 8)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        downsample(X[0], 2)
