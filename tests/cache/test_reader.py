"""The cache reader: open_prepared checks, SliceDataset items and batches, augmentation alignment,
determinism (the Lightning data module: tests/training/test_datamodule.py)."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import aligned_cache

from jnet.cache.reader import EpochSampler, SliceDataset, make_loader, open_prepared
from jnet.errors import ConfigError, DataError
from jnet.transforms.augment import augment_batch, batch_generator
from jnet.transforms.lowres import downsample

S = 16


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return aligned_cache(tmp_path_factory.mktemp("dm"), S)


def test_open_prepared_exposes_metadata_and_arrays(cache):
    p = open_prepared(cache)
    assert p.size == S and p.channels == ["MRI"] and p.in_channels == 1 and p.n_slices == 24
    assert p.task["kind"] == "binary"
    assert p.images.shape == (24, 1, S, S) and p.labels.shape == (24, S, S)
    assert isinstance(p.images, np.memmap)


def _copy(cache: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(cache, dst)
    return dst


def test_open_prepared_errors_name_the_file(cache, tmp_path):
    with pytest.raises(DataError, match="prepared.json missing"):
        open_prepared(tmp_path)
    broken = _copy(cache, tmp_path)
    (broken / "prepared.json").write_text("{not json")
    with pytest.raises(DataError, match="prepared.json: corrupt"):
        open_prepared(broken)
    meta = json.loads((cache / "prepared.json").read_text())
    (broken / "prepared.json").write_text(json.dumps({**meta, "format_version": 2}))
    with pytest.raises(DataError, match="format_version 2"):
        open_prepared(broken)
    (broken / "prepared.json").write_text(json.dumps({**meta, "n_slices": 25}))
    with pytest.raises(DataError, match="n_slices"):
        open_prepared(broken)
    (broken / "prepared.json").write_text(json.dumps(meta))
    data = (broken / "images.npy").read_bytes()
    (broken / "images.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="images.npy: truncated"):
        open_prepared(broken)
    (broken / "labels.npy").unlink()
    (broken / "images.npy").write_bytes(data)
    with pytest.raises(DataError, match="labels.npy: missing"):
        open_prepared(broken)


def test_item_shapes_dtypes_and_values(cache):
    ds = SliceDataset(cache, "train", in_size=4)
    p = open_prepared(cache)
    lr, hr, meta = ds[0]
    assert lr.shape == (1, 4, 4) and lr.dtype == torch.float32
    assert hr.shape == (S, S) and hr.dtype == torch.uint8
    assert set(meta) == {"index", "case_id", "slice_index"} and isinstance(meta["index"], int)
    row = meta["index"]
    expected = downsample(torch.from_numpy(np.array(p.images[row : row + 1])).float(), 4, "area")[0]
    torch.testing.assert_close(lr, expected)
    np.testing.assert_array_equal(hr.numpy(), p.labels[row])
    case = next(c for c in p.meta["cases"] if c["case_id"] == meta["case_id"])
    assert case["start"] <= row < case["start"] + case["count"]
    assert meta["slice_index"] == case["slice_indices"][row - case["start"]]
    splits = json.loads((cache / "splits.json").read_text())
    train_rows = sum(c["count"] for c in p.meta["cases"] if c["case_id"] in splits["folds"][0]["train"])
    assert len(ds) == train_rows and meta["case_id"] in splits["folds"][0]["train"]


def test_batched_path_equals_items(cache):
    ds = SliceDataset(cache, "all", in_size=8, downsample="nearest")
    positions = [5, 0, 17, 3]
    lr, hr, meta = ds.__getitems__(positions)
    assert lr.shape == (4, 1, 8, 8) and hr.shape == (4, S, S) and hr.dtype == torch.uint8
    assert meta["index"].dtype == torch.int64 and meta["index"].tolist() == positions
    for k, pos in enumerate(positions):
        lr_i, hr_i, meta_i = ds[pos]
        torch.testing.assert_close(lr[k], lr_i)
        assert torch.equal(hr[k], hr_i) and meta["case_id"][k] == meta_i["case_id"]
        assert meta["slice_index"][k] == meta_i["slice_index"]


def _aligned(lr: torch.Tensor, hr: torch.Tensor) -> bool:
    """lr must be an affine function of the area-downsampled hr label (image = a + b * label)."""
    target = downsample(hr[:, None].float(), lr.shape[-1], "area").flatten(1)
    for x, y in zip(target.numpy(), lr.flatten(1).numpy()):
        if np.ptp(x) == 0:
            if np.ptp(y) > 1e-2:
                return False
            continue
        coef = np.polyfit(x, y, 1)
        if np.abs(np.polyval(coef, x) - y).max() > 1e-2:
            return False
    return True


def test_flips_keep_image_and_label_aligned(cache):
    plain = SliceDataset(cache, "all", in_size=8, augment=False)
    flipped = SliceDataset(cache, "all", in_size=8, augment=True, seed=1)
    positions = list(range(len(plain)))
    lr0, hr0, _ = plain.__getitems__(positions)
    lr1, hr1, _ = flipped.__getitems__(positions)
    assert _aligned(lr0, hr0) and _aligned(lr1, hr1)
    assert not torch.equal(hr0, hr1)  # something was flipped
    # each augmented label is one of the four flips of the original
    for a, b in zip(hr0, hr1):
        assert any(torch.equal(b, f) for f in (a, a.flip(-1), a.flip(-2), a.flip(-1).flip(-2)))


def test_full_augmentation_moves_image_and_label_together():
    g = torch.Generator().manual_seed(0)
    label = torch.zeros(8, 32, 32, dtype=torch.uint8)
    label[:, 8:20, 10:24] = 1
    image = label[:, None].float() * 5
    img, lab = augment_batch(image, label, "full", g)
    assert img.shape == image.shape and lab.dtype == torch.uint8 and set(lab.unique().tolist()) <= {0, 1}
    agree = ((img[:, 0] > 2.5) == lab.bool()).float().mean()
    assert agree > 0.97 and not torch.equal(lab, label)
    with pytest.raises(ConfigError, match="data.augment"):
        augment_batch(image, label, "rotate")


def test_loader_is_deterministic_for_a_seed_and_worker_count(cache):
    def epoch(seed, workers=0):
        loader = make_loader(SliceDataset(cache, "train", in_size=4, augment=True, seed=seed), 4,
                             shuffle=True, seed=seed, num_workers=workers)
        loader.batch_sampler.sampler.set_epoch(3)
        return list(loader)

    a, b, c = epoch(0), epoch(0, workers=2), epoch(1)
    assert len(a) == len(b)
    for (lr_a, hr_a, m_a), (lr_b, hr_b, m_b) in zip(a, b):
        assert torch.equal(lr_a, lr_b) and torch.equal(hr_a, hr_b) and torch.equal(m_a["index"], m_b["index"])
    assert any(not torch.equal(x[2]["index"], y[2]["index"]) for x, y in zip(a, c))


def test_epoch_sampler_reshuffles_per_epoch():
    s = EpochSampler(10, shuffle=True, seed=0)
    first, second = list(s), list(s)  # no set_epoch: each iteration is the next epoch
    assert sorted(first) == list(range(10)) and first != second
    s.set_epoch(0)
    assert list(s) == first and list(s) == first  # explicit epochs are reproducible
    assert list(EpochSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_dataset_pickles_without_the_arrays(cache):
    ds = SliceDataset(cache, "all", in_size=4)
    _ = ds[0]  # maps the arrays in this process
    blob = pickle.dumps(ds)
    assert len(blob) < ds.prepared.images.nbytes  # paths travel, not the data
    clone = pickle.loads(blob)
    assert clone.prepared._arrays is None
    assert torch.equal(clone[3][1], ds[3][1])


def test_leaking_splits_are_refused(cache, tmp_path):
    broken = _copy(cache, tmp_path)
    splits = json.loads((broken / "splits.json").read_text())
    patient = splits["test"][0]
    splits["folds"][0]["train"].append(patient)
    (broken / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(DataError, match=f"leakage.*{patient}"):
        SliceDataset(broken, "train")


@pytest.mark.parametrize("mode", ["area", "gaussian", "nearest"])
def test_batched_flips_equal_flipping_at_high_resolution(cache, mode):
    """The reader may flip after downsampling (area, gaussian); the result must equal flipping the
    high-resolution batch first, with the same random draws."""
    ds = SliceDataset(cache, "all", in_size=4, downsample=mode, augment="flip", seed=5)
    positions = [7, 2, 11, 20, 3, 15]
    lr, hr, meta = ds.__getitems__(positions)
    rows = meta["index"].numpy()
    images = torch.from_numpy(np.array(ds.prepared.images[rows])).float()
    labels = torch.from_numpy(np.array(ds.prepared.labels[rows]))
    ref_img, ref_lab = augment_batch(images, labels, "flip", batch_generator(5, 0, rows))
    assert torch.equal(hr, ref_lab)
    torch.testing.assert_close(lr, downsample(ref_img, 4, mode), rtol=1e-5, atol=1e-5)


def test_lowres_cache_gives_the_same_batches(cache):
    plain = SliceDataset(cache, "train", in_size=4, augment="flip", seed=2)
    cached = SliceDataset(cache, "train", in_size=4, augment="flip", seed=2, lowres_cache=True)
    positions = [3, 0, 9, 4]
    for a, b in zip(plain.__getitems__(positions), cached.__getitems__(positions)):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert cached._lowres is not None and pickle.loads(pickle.dumps(cached))._lowres is None
    with pytest.raises(ConfigError, match="data.lowres_cache"):
        SliceDataset(cache, "train", downsample="nearest", augment="flip", lowres_cache=True)


def test_training_inputs_may_be_made_by_several_modes(cache):
    """data.train_downsample: each augmented sample is downsampled by one of the modes (the same
    flips as with one mode), every mode is drawn, and an unaugmented split keeps downsample."""
    modes = ("area", "gaussian", "nearest")
    positions = list(range(24))
    mixed, _, _ = SliceDataset(cache, "all", in_size=4, augment="flip", seed=3,
                               train_downsample=modes).__getitems__(positions)
    single = {m: SliceDataset(cache, "all", in_size=4, downsample=m, augment="flip",
                              seed=3).__getitems__(positions)[0] for m in modes}
    # with flips only, one mode flips after downsampling and consumes the draws first: compare
    # with the high-resolution path, which the mixed reader takes
    which = [[m for m in modes if torch.allclose(mixed[i], single[m][i], atol=1e-5)] for i in range(24)]
    assert all(len(w) >= 1 for w in which), which
    assert {w[0] for w in which if len(w) == 1} == set(modes)
    plain = SliceDataset(cache, "all", in_size=4, train_downsample=modes)  # no augmentation: no mix
    torch.testing.assert_close(plain.__getitems__(positions)[0],
                               SliceDataset(cache, "all", in_size=4).__getitems__(positions)[0])
    with pytest.raises(ConfigError, match="bicubic"):
        SliceDataset(cache, "all", in_size=4, augment="flip", train_downsample=("area", "bicubic"))
