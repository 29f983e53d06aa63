"""prepare_dataset (the slice cache) and splits: round trips, atomicity, refusal, determinism."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from jnet.cache import build as prepare_module
from jnet.cache.build import prepare_dataset
from jnet.cache.splits import load_splits, make_splits, split_indices, write_splits
from jnet.errors import OutputError, ConfigError, DataError
from jnet.transforms.slicing import image_to_slices, label_to_slices, normalise


def write_msd(root: Path, volumes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
              channels=("T2",), labels=None) -> Path:
    """A tiny Medical Segmentation Decathlon task folder: ``volumes[case] = (image, label,
    affine)``, image ``(X, Y, Z)`` or ``(X, Y, Z, C)``."""
    labels = labels or {"0": "background", "1": "PZ", "2": "TZ"}
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for case, (image, label, affine) in volumes.items():
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), root / "imagesTr" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), root / "labelsTr" / f"{case}.nii.gz")
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    meta = {"name": "PROSTATE", "modality": {str(i): c for i, c in enumerate(channels)},
            "labels": labels, "numTraining": len(training), "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _volume(rng, shape, fg_slices=None):
    """Random positive image and a label with foreground (1 and 2) in ``fg_slices`` (last axis)."""
    image = rng.uniform(1, 100, size=shape).astype(np.float32)
    label = np.zeros(shape[:3], np.uint8)
    for z in (range(shape[2]) if fg_slices is None else fg_slices):
        label[1:4, 1:3, z] = 1
        label[4:6, 2:5, z] = 2
    return image, label


@pytest.fixture
def small_msd(tmp_path):
    rng = np.random.default_rng(0)
    volumes = {}
    for i in range(5):
        image, label = _volume(rng, (8, 6, 3 + i % 2), fg_slices=[1])
        volumes[f"case_{i:02d}"] = (image, label, np.diag([0.5, 0.5, 3.0, 1.0]))
    return write_msd(tmp_path / "Task05_Prostate", volumes)


def test_round_trip_values_shapes_labels_and_metadata(tmp_path):
    rng = np.random.default_rng(1)
    # Oblique: rotated 60 degrees about x, so voxel axis 1 is closest to superior-inferior.
    a = np.deg2rad(60)
    oblique = np.eye(4)
    oblique[1:3, 1:3] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    oblique = oblique @ np.diag([0.8, 1.5, 2.0, 1.0])
    oblique[:3, 3] = [10, -20, 5]
    img_a, lab_a = _volume(rng, (8, 6, 5, 2))  # 4D: two channels, last axis
    img_b, lab_b = _volume(rng, (8, 5, 4, 2))
    src = write_msd(tmp_path / "Task05_Prostate",
                    {"p_a": (img_a, lab_a, np.diag([0.5, 0.75, 3.0, 1.0])), "p_b": (img_b, lab_b, oblique)},
                    channels=("T2", "ADC"))
    out = prepare_dataset(src, tmp_path / "cache", task="multiclass", size=8, progress=False)

    meta = json.loads((out / "prepared.json").read_text())
    images = np.load(out / "images.npy", mmap_mode="r")
    labels = np.load(out / "labels.npy", mmap_mode="r")
    assert meta["format_version"] == 1 and meta["layout"] == "msd" and meta["source"] == str(src.resolve())
    assert meta["channels"] == ["T2", "ADC"] and meta["size"] == 8 and meta["dtype"] == "float16"
    assert meta["task"]["kind"] == "multiclass" and meta["task"]["names"] == ["background", "PZ", "TZ"]
    assert meta["normalisation"]["method"] == "zscore-nonzero" and meta["keep_empty"] is True
    case_a, case_b = meta["cases"]
    assert [case_a["case_id"], case_b["case_id"]] == ["p_a", "p_b"]
    assert (case_a["axis"], case_a["start"], case_a["count"]) == (2, 0, 5)
    assert (case_b["axis"], case_b["start"], case_b["count"]) == (1, 5, 5)
    assert meta["n_slices"] == 10 and images.shape == (10, 2, 8, 8) and images.dtype == np.float16
    assert labels.shape == (10, 8, 8) and labels.dtype == np.uint8
    assert case_a["original_shape"] == [8, 6, 5] and case_a["slice_indices"] == [0, 1, 2, 3, 4]
    assert case_a["native_spacing"] == [0.5, 0.75, 3.0]
    assert case_a["spacing"] == [0.5 * 8 / 8, 0.75 * 6 / 8, 3.0]
    np.testing.assert_allclose(case_b["affine"], oblique, atol=1e-6)
    np.testing.assert_allclose(case_b["native_spacing"], [0.8, 1.5, 2.0], atol=1e-6)
    np.testing.assert_allclose(case_b["spacing"], [0.8 * 8 / 8, 2.0 * 4 / 8, 1.5], atol=1e-6)

    for case, image, label in ((case_a, img_a, lab_a), (case_b, img_b, lab_b)):
        rows = slice(case["start"], case["start"] + case["count"])
        expected = image_to_slices(normalise(np.moveaxis(image, -1, 0)), case["axis"], 8)
        np.testing.assert_allclose(images[rows].astype(np.float32), expected, atol=2e-2, rtol=1e-3)
        # multiclass: PZ -> 1, TZ -> 2 (source values 1, 2), nearest resampled
        np.testing.assert_array_equal(labels[rows], label_to_slices(label, case["axis"], 8))
    assert set(np.unique(labels)) == {0, 1, 2}


def test_binary_task_and_channel_selection(small_msd, tmp_path):
    out = prepare_dataset(small_msd, tmp_path / "cache", size=4, progress=False, dtype="float32")
    meta = json.loads((out / "prepared.json").read_text())
    assert meta["task"]["kind"] == "binary" and meta["task"]["classes"] == 1
    assert set(np.unique(np.load(out / "labels.npy"))) == {0, 1}  # PZ and TZ both foreground
    assert np.load(out / "images.npy").dtype == np.float32
    with pytest.raises(ConfigError, match="ADC"):
        prepare_dataset(small_msd, tmp_path / "other", channels=["ADC"], progress=False)
    assert not (tmp_path / "other").exists()


def test_keep_and_drop_empty_slices(small_msd, tmp_path):
    kept = prepare_dataset(small_msd, tmp_path / "kept", size=4, progress=False)
    dropped = prepare_dataset(small_msd, tmp_path / "dropped", size=4, keep_empty=False, progress=False)
    meta_k = json.loads((kept / "prepared.json").read_text())
    meta_d = json.loads((dropped / "prepared.json").read_text())
    assert meta_k["n_slices"] == 3 + 4 + 3 + 4 + 3 and meta_d["n_slices"] == 5
    assert meta_d["keep_empty"] is False
    assert all(c["slice_indices"] == [1] and c["count"] == 1 for c in meta_d["cases"])
    assert np.load(dropped / "labels.npy").reshape(5, -1).any(axis=1).all()
    assert not np.load(kept / "labels.npy").reshape(17, -1).any(axis=1).all()


def test_undeclared_label_values_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    image, label = _volume(rng, (6, 6, 2))
    label[0, 0, 0] = 5
    src = write_msd(tmp_path / "ds", {"bad": (image, label, np.eye(4))})
    with pytest.raises(DataError, match=r"bad\.nii\.gz.*\[5\]"):
        prepare_dataset(src, tmp_path / "cache", size=4, progress=False)
    assert not (tmp_path / "cache").exists()


def test_own_label_check_lists_values_and_file():
    case = type("C", (), {"label": Path("/data/x.nii.gz"), "labels": (), "case_id": "x"})()
    with pytest.raises(DataError, match=r"x\.nii\.gz.*\[3, 300\]"):
        prepare_module._check_label_values(np.array([0, 1, 3, 300]), {0, 1}, case)
    prepare_module._check_label_values(np.array([0, 1, 1]), {0, 1}, case)


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_crash_mid_prepare_leaves_no_cache(small_msd, tmp_path, monkeypatch):
    real = prepare_module._prepare_case

    def crash_on_third(job):
        if job.index == 2:
            raise RuntimeError("simulated crash")
        return real(job)

    monkeypatch.setattr(prepare_module, "_prepare_case", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_dataset(small_msd, tmp_path / "cache", size=4, progress=False)
    assert not (tmp_path / "cache").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cache")]  # no partial dirs

    # A crash while replacing a cache keeps the previous cache intact.
    monkeypatch.setattr(prepare_module, "_prepare_case", real)
    good = prepare_dataset(small_msd, tmp_path / "cache", size=4, progress=False)
    before = _snapshot(good)
    monkeypatch.setattr(prepare_module, "_prepare_case", crash_on_third)
    with pytest.raises(RuntimeError):
        prepare_dataset(small_msd, good, size=8, overwrite=True, progress=False)
    assert _snapshot(good) == before


def test_crash_after_arrays_before_metadata(small_msd, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepare_module, "write_json", fail)
    with pytest.raises(OutputError, match=r"cache: cannot write the output folder \(No space left"):
        prepare_dataset(small_msd, tmp_path / "cache", size=4, progress=False)
    assert not (tmp_path / "cache").exists()
    assert list(tmp_path.iterdir()) == [small_msd]


def test_refuses_to_overwrite(small_msd, tmp_path):
    out = prepare_dataset(small_msd, tmp_path / "cache", size=4, progress=False)
    with pytest.raises(DataError, match="already exists.*--overwrite"):
        prepare_dataset(small_msd, out, size=4, progress=False)
    # overwrite replaces a cache...
    prepare_dataset(small_msd, out, size=8, overwrite=True, progress=False)
    assert json.loads((out / "prepared.json").read_text())["size"] == 8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # ...but never a directory that is not a jnet cache
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a jnet slice cache"):
        prepare_dataset(small_msd, other, size=4, overwrite=True, progress=False)
    assert (other / "notes.txt").read_text() == "keep me" and len(list(other.iterdir())) == 1
    # an empty directory holds nothing to lose
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (prepare_dataset(small_msd, empty, size=4, progress=False) / "prepared.json").is_file()


def test_same_inputs_give_identical_cache_bytes(small_msd, tmp_path):
    a = prepare_dataset(small_msd, tmp_path / "a", size=4, seed=3, progress=False)
    b = prepare_dataset(small_msd, tmp_path / "b", size=4, seed=3, progress=False)
    assert _snapshot(a) == _snapshot(b)
    c = prepare_dataset(small_msd, tmp_path / "c", size=4, seed=4, progress=False)
    assert (a / "splits.json").read_bytes() != (c / "splits.json").read_bytes()


@pytest.mark.slow
def test_parallel_workers_give_the_same_cache(small_msd, tmp_path):
    serial = prepare_dataset(small_msd, tmp_path / "serial", size=4, progress=False)
    parallel = prepare_dataset(small_msd, tmp_path / "parallel", size=4, workers=2, progress=False)
    assert _snapshot(serial) == _snapshot(parallel)


def test_bad_options(small_msd, tmp_path):
    for kwargs, field in (({"size": 0}, "data.size"), ({"dtype": "int8"}, "data.dtype"),
                          ({"workers": 0}, "workers")):
        with pytest.raises(ConfigError, match=field):
            prepare_dataset(small_msd, tmp_path / "x", progress=False, **kwargs)


# ------------------------------------------------------------------ splits

IDS = [f"p{i:02d}" for i in range(20)]


def test_splits_are_patient_level_and_complete():
    s = make_splits(IDS, seed=0, val_fraction=0.2, test_fraction=0.25)
    fold = s["folds"][0]
    assert len(s["test"]) == 5 and len(fold["val"]) == 4 and len(fold["train"]) == 11
    assert sorted(s["test"] + fold["val"] + fold["train"]) == IDS
    assert all(lst == sorted(lst) for lst in (s["test"], fold["val"], fold["train"]))


def test_splits_same_seed_identical_bytes(tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        (tmp_path / name).mkdir()
        write_splits(tmp_path / name, make_splits(list(reversed(IDS)) if name == "b" else IDS, seed=seed))
    read = {n: (tmp_path / n / "splits.json").read_bytes() for n in "abc"}
    assert read["a"] == read["b"] != read["c"]
    assert load_splits(tmp_path / "a") == json.loads(read["a"])


def test_cross_validation_folds():
    s = make_splits(IDS, seed=1, test_fraction=0.2, folds=4)
    vals = [set(f["val"]) for f in s["folds"]]
    pool = set(IDS) - set(s["test"])
    assert len(s["folds"]) == 4 and set().union(*vals) == pool and sum(map(len, vals)) == len(pool)
    for f in s["folds"]:
        assert set(f["train"]) == pool - set(f["val"])


def test_split_folders_are_honoured():
    fixed = {c: ("test" if c < "p05" else "train") for c in IDS}
    s = make_splits(IDS, seed=0, fixed=fixed)
    assert s["test"] == IDS[:5]
    assert set(s["folds"][0]["val"]) <= set(IDS[5:]) and s["folds"][0]["val"]
    fixed.update({"p05": "val", "p06": "validation"})
    s = make_splits(IDS, seed=0, fixed=fixed)
    assert s["folds"][0]["val"] == ["p05", "p06"] and s["test"] == IDS[:5]
    only_train = make_splits(IDS, seed=0, fixed={c: "train" for c in IDS})
    assert len(only_train["test"]) == 4 and len(only_train["folds"][0]["val"]) == 4
    with pytest.raises(DataError, match="holdout"):
        make_splits(IDS, fixed={"p00": "holdout"})


def test_small_and_bad_split_requests():
    assert make_splits(["only"], seed=0)["folds"][0]["train"] == ["only"]
    s = make_splits(["a", "b", "c"], seed=0)
    assert len(s["test"]) == 1 and len(s["folds"][0]["val"]) == 1
    with pytest.raises(ConfigError, match="data.val_fraction"):
        make_splits(IDS, val_fraction=1.5)
    with pytest.raises(ConfigError, match="sum below 1"):
        make_splits(IDS, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(DataError, match="duplicates.*p00"):
        make_splits(IDS + ["p00"])


def test_leaking_splits_file_is_refused_naming_patients(tmp_path):
    s = make_splits(IDS, seed=0)
    leaked = s["test"][0]
    s["folds"][0]["train"].append(leaked)
    s["folds"][0]["val"].append(s["folds"][0]["train"][0])
    (tmp_path / "splits.json").write_text(json.dumps(s))
    with pytest.raises(DataError, match="leakage") as err:
        load_splits(tmp_path)
    assert leaked in str(err.value) and s["folds"][0]["train"][0] in str(err.value)
    assert "splits.json" in str(err.value)
    (tmp_path / "splits.json").write_text('{"seed": 0}')
    with pytest.raises(DataError, match="missing key 'test'"):
        load_splits(tmp_path)


def test_split_indices_selects_case_rows():
    prepared = {"cases": [{"case_id": "a", "start": 0, "count": 2}, {"case_id": "b", "start": 2, "count": 3},
                          {"case_id": "c", "start": 5, "count": 1}]}
    splits = {"seed": 0, "val_fraction": 0.2, "test_fraction": 0.2, "test": ["c"],
              "folds": [{"train": ["b"], "val": ["a"]}]}
    np.testing.assert_array_equal(split_indices(prepared, splits, "train"), [2, 3, 4])
    np.testing.assert_array_equal(split_indices(prepared, splits, "val"), [0, 1])
    np.testing.assert_array_equal(split_indices(prepared, splits, "test"), [5])
    np.testing.assert_array_equal(split_indices(prepared, splits, "all"), np.arange(6))
    with pytest.raises(ConfigError, match="data.fold"):
        split_indices(prepared, splits, "train", fold=1)
    with pytest.raises(DataError, match="'zz'"):
        split_indices(prepared, {**splits, "test": ["zz"]}, "test")


def test_png_split_folders_are_honoured(png_dir, tmp_path):
    out = prepare_dataset(png_dir, tmp_path / "cache", label_map={0: 0, 255: 1}, size=32, progress=False)
    meta = json.loads((out / "prepared.json").read_text())
    splits = load_splits(out)
    assert meta["layout"] == "png" and [c["case_id"] for c in meta["cases"]] == ["prostate_00", "prostate_01",
                                                                                  "prostate_02"]
    assert splits["test"] == ["prostate_02"]  # the patient in test/
    fold = splits["folds"][0]
    assert sorted(fold["train"] + fold["val"]) == ["prostate_00", "prostate_01"]
    assert set(np.unique(np.load(out / "labels.npy"))) <= {0, 1}


def test_brats_regions_are_bitmasks(brats_dir, tmp_path):
    out = prepare_dataset(brats_dir, tmp_path / "cache", task="regions", size=32, progress=False)
    meta = json.loads((out / "prepared.json").read_text())
    assert meta["task"]["names"] == ["WT", "TC", "ET"] and len(meta["channels"]) == 4
    labels = np.load(out / "labels.npy")
    assert np.load(out / "images.npy").shape[1] == 4
    # bit 0 = WT, bit 1 = TC, bit 2 = ET; TC lies inside WT and ET inside TC
    assert set(np.unique(labels)) <= {0, 1, 3, 7} and (labels > 0).any()
