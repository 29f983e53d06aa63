"""The one definition of "low-resolution input from a high-resolution slice".

Training, evaluation, export calibration and prediction all call :func:`downsample`, so the input a
model sees can never drift between them (the reference code resized differently in two places).

Modes (``data.downsample`` in configs):

- ``area`` (default): each low-resolution pixel is the mean of the high-resolution pixels it covers
  (``F.interpolate(mode="area")``, i.e. adaptive average pooling). This is what a real
  low-resolution acquisition measures, and it keeps the partial-volume information a learned
  upsampling head can decode (see docs/method.md).
- ``nearest``: the paper's way. Each low-resolution pixel copies the high-resolution pixel nearest
  to its centre, as ``PIL.Image.resize(..., NEAREST)`` does; this is ``F.interpolate`` mode
  ``"nearest-exact"`` (source index ``floor((i + 0.5) * H / size)``), not torch's legacy
  ``"nearest"`` (``floor(i * H / size)``, shifted by half a pixel).
- ``gaussian``: anti-aliased decimation. A Gaussian blur with ``sigma = (f - 1) / 2``
  high-resolution pixels per axis, ``f = H / size`` the downsampling factor (the anti-aliasing rule
  of scikit-image's ``resize``), edges replicated, then bilinear sampling at the centres of the
  low-resolution pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from jnet.errors import ConfigError
from jnet.utils.options import choose

DOWNSAMPLE_MODES = ("area", "nearest", "gaussian")


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is a valid ``data.downsample`` value, else raise ConfigError."""
    return choose(mode, DOWNSAMPLE_MODES, "data.downsample", "mode")


def downsample(x: torch.Tensor, size: int, mode: str = "area") -> torch.Tensor:
    """Simulate a low-resolution acquisition of a batch of high-resolution slices.

    Args:
        x: high-resolution images; integer inputs are converted to float32.
        size: the low-resolution side ``s`` (``1 <= size <= min(H, W)``).
        mode: one of :data:`DOWNSAMPLE_MODES` (see the module docstring).

    Returns:
        The low-resolution images (a new tensor; ``x`` itself when ``size`` equals ``H`` and ``W``).

    Shape: ``(B, C, H, W) -> (B, C, size, size)``.
    """
    check_mode(mode)
    if x.dim() != 4:
        raise ValueError(f"downsample: expected a (B, C, H, W) tensor, found shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= min(height, width):
        raise ConfigError(
            f"data.in_size: the low-resolution size must be an integer in 1..{min(height, width)} "
            f"(the high-resolution slices are {height}x{width}); found {size!r}"
        )
    if not x.is_floating_point():
        x = x.float()
    if (height, width) == (size, size):
        return x
    if mode == "area":
        return F.interpolate(x, size=(size, size), mode="area")
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest-exact")
    return _gaussian_decimate(x, size)


def downsample_mixed(x: torch.Tensor, size: int, modes: tuple[str, ...],
                     generator: torch.Generator | None) -> torch.Tensor:
    """Each image of the batch downsampled by one of ``modes``, drawn uniformly: training on
    several point-spread functions (``data.train_downsample``), so that a model does not learn
    the fine print of one simulated acquisition.

    Shape: ``(B, C, H, W) -> (B, C, size, size)``.
    """
    pick = torch.randint(len(modes), (len(x),), generator=generator)
    x = x if x.is_floating_point() else x.float()  # as downsample returns it
    out = x.new_empty(x.shape[:2] + (size, size))
    for i, mode in enumerate(modes):
        chosen = (pick == i).nonzero().flatten()
        if len(chosen):
            out[chosen] = downsample(x[chosen], size, mode)
    return out


def _gaussian_decimate(x: torch.Tensor, size: int) -> torch.Tensor:
    # MONAI provides the sampled, normalised kernel and the separable convolution; sigma is per
    # axis so a non-square slice is blurred by its own factor along each axis.
    from monai.networks.layers.convutils import gaussian_1d
    from monai.networks.layers.simplelayers import separable_filtering

    kernels = []
    for extent in x.shape[-2:]:
        sigma = max((extent / size - 1.0) / 2.0, 0.0)
        if sigma > 0:
            k = gaussian_1d(torch.tensor(sigma), truncated=4.0, approx="sampled", normalize=True)
        else:
            k = torch.ones(1)
        kernels.append(k.to(device=x.device, dtype=x.dtype))
    blurred = separable_filtering(x, kernels, mode="replicate")
    return F.interpolate(blurred, size=(size, size), mode="bilinear", align_corners=False)
