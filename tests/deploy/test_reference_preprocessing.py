"""The numpy + nibabel preprocessing reference gives the tensor `jnet predict` gives, without torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from jnet.deploy import reference_preprocessing as ref
from jnet.deploy.predict import preprocess
from jnet.deploy.runtime import ModelMeta

BINARY = {"kind": "binary", "names": ["fg"], "classes": 1, "labels": {"fg": [1]}}


def meta(size, in_size, downsample):
    return ModelMeta(in_size=in_size, out_size=size, in_channels=2, classes=1, channels=["T2", "ADC"],
                     task=BINARY, normalisation={"method": "zscore-nonzero"}, downsample=downsample,
                     size=size)


@pytest.mark.parametrize("shape, affine, size, in_size, downsample", [
    ((40, 70, 5), np.diag([0.8, 0.6, 3.0, 1.0]), 64, 16, "area"),      # one axis grows, one shrinks
    ((90, 90, 4), np.diag([-0.5, -0.5, 3.0, 1.0]), 64, 32, "nearest"),  # LPS, both shrink
    ((6, 48, 40), np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]]), 32, 16, "area"),
])
def test_same_tensor_as_jnet_predict(tmp_path, shape, affine, size, in_size, downsample):
    rng = np.random.default_rng(0)
    data = rng.normal(100, 20, (*shape, 2)).astype(np.float32)
    data[:3] = 0  # background that stays 0
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    image, aff = ref.load_nifti(str(path))
    got, axis = ref.preprocess(image, aff, size, in_size, downsample)
    want, want_axis = preprocess(image, aff, meta(size, in_size, downsample))
    assert axis == want_axis and got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_settings_come_from_the_onnx_metadata():
    props = meta(64, 16, "area").to_props()
    assert ref.settings(props) == {"size": 64, "in_size": 16, "downsample": "area", "channels": ["T2", "ADC"]}


def test_it_imports_neither_torch_nor_jnet():
    code = (f"import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('r', {str(Path(ref.__file__))!r})\n"
            f"m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            f"import numpy as np\n"
            f"m.preprocess(np.ones((1, 8, 8, 2), np.float32), np.eye(4), 8, 4)\n"
            f"bad = [n for n in sys.modules if n == 'torch' or n.startswith('jnet')]\n"
            f"assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
