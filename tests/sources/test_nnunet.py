"""nnU-Net v2 raw datasets: channel files grouped into cases, labels and regions, every problem."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import save_nifti
from jnet.cache.build import prepare_dataset
from jnet.errors import DataError
from jnet.sources.check import check_dataset
from jnet.sources.labels import make_task
from jnet.sources.registry import discover, load_case

CHANNELS = {"0": "T2", "1": "ADC"}


def write_nnunet(root: Path, n_cases: int = 4, labels=None, test: int = 1, shape=(16, 16, 4)) -> Path:
    """Dataset001_Prostate: CASE_0000 (T2) + CASE_0001 (ADC), labels 0/1/2, ``test`` cases in imagesTs."""
    rng = np.random.default_rng(0)
    for i in range(n_cases + test):
        case = f"prostate_{i:03d}"
        folder = "imagesTr" if i < n_cases else "imagesTs"
        t2 = rng.uniform(10, 100, shape).astype(np.float32)
        save_nifti(root / folder / f"{case}_0000.nii.gz", t2)
        save_nifti(root / folder / f"{case}_0001.nii.gz", t2 * 0.5 + 3)
        if i < n_cases:
            label = np.zeros(shape, np.uint8)
            label[4:12, 4:12] = 1
            label[6:10, 6:10] = 2
            save_nifti(root / "labelsTr" / f"{case}.nii.gz", label)
    meta = {"channel_names": CHANNELS, "labels": labels or {"background": 0, "PZ": 1, "TZ": 2},
            "numTraining": n_cases, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_channel_files_form_one_case(tmp_path):
    root = write_nnunet(tmp_path / "Dataset001_Prostate")
    source = discover(root)
    assert source.layout == "nnunet" and source.channels == ("T2", "ADC")
    assert source.labels == {0: "background", 1: "PZ", 2: "TZ"}
    train = [c for c in source.cases if c.label is not None]
    assert len(train) == 4 and len(source.cases) == 5
    assert [p.name for p in train[0].images] == ["prostate_000_0000.nii.gz", "prostate_000_0001.nii.gz"]
    case = load_case(source, train[0])
    assert case.image.shape == (2, 16, 16, 4) and case.channels == ("T2", "ADC")
    np.testing.assert_allclose(case.image[1], case.image[0] * 0.5 + 3, rtol=1e-6)
    adc = load_case(source, train[0], ["ADC"])
    assert adc.channels == ("ADC",) and adc.image.shape[0] == 1
    assert [str(p) for p in check_dataset(root, progress=False)] == []


def test_prepare_reads_it_like_any_layout(tmp_path):
    root = write_nnunet(tmp_path / "Dataset001_Prostate")
    out = prepare_dataset(root, tmp_path / "cache", task="multiclass", size=16, progress=False,
                          val_fraction=0.25, test_fraction=0.25)
    meta = json.loads((out / "prepared.json").read_text())
    assert meta["layout"] == "nnunet" and meta["channels"] == ["T2", "ADC"]
    assert meta["task"]["names"] == ["background", "PZ", "TZ"]
    assert len(meta["cases"]) == 4  # the labelled ones


def test_region_labels_become_a_regions_task(tmp_path):
    labels = {"background": 0, "whole": [1, 2], "core": [2]}
    source = discover(write_nnunet(tmp_path / "Dataset002_Regions", labels=labels))
    task = make_task(source, "regions")
    assert task["names"] == ["whole", "core"] and task["labels"] == {"whole": [1, 2], "core": [2]}
    assert make_task(source, "binary", ["core"])["labels"] == {"core": [2]}


def test_problems_are_listed_with_their_files(tmp_path):
    root = write_nnunet(tmp_path / "Dataset001_Prostate", n_cases=4)
    (root / "imagesTr" / "prostate_001_0001.nii.gz").unlink()       # a channel missing
    (root / "labelsTr" / "prostate_002.nii.gz").unlink()            # a label missing
    save_nifti(root / "imagesTr" / "notes.nii.gz", np.zeros((2, 2, 2), np.float32))  # misnamed
    problems = [str(p) for p in check_dataset(root, progress=False)]
    assert any("case prostate_001: missing prostate_001_0001.nii.gz (ADC)" in p for p in problems)
    assert any("prostate_002.nii.gz: case prostate_002: label file missing" in p for p in problems)
    assert any("warning" in p and "notes.nii.gz" in p for p in problems)
    assert any("'numTraining' is 4 but imagesTr holds 2" in p for p in problems)


def test_an_undeclared_label_value_names_dataset_json(tmp_path):
    root = write_nnunet(tmp_path / "Dataset001_Prostate")
    label = np.zeros((16, 16, 4), np.uint8)
    label[2:5, 2:5] = 7
    save_nifti(root / "labelsTr" / "prostate_000.nii.gz", label)
    (problem,) = [str(p) for p in check_dataset(root, progress=False)]
    assert "prostate_000.nii.gz: label values [7] are not declared labels [0, 1, 2] (from dataset.json 'labels')" in problem


def test_bad_manifest_is_named(tmp_path):
    root = write_nnunet(tmp_path / "Dataset001_Prostate")
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"PZ": 1}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"dataset\.json: 'labels' has no background"):
        discover(root)


def test_prepare_takes_nnunet_splits_final(tmp_path):
    root = write_nnunet(tmp_path / "Dataset001_Prostate", n_cases=5)
    folds = [{"train": ["prostate_000", "prostate_001", "prostate_002"], "val": ["prostate_003"]},
             {"train": ["prostate_000", "prostate_001", "prostate_003"], "val": ["prostate_002"]}]
    (tmp_path / "splits_final.json").write_text(json.dumps(folds))
    out = prepare_dataset(root, tmp_path / "cache", size=16, progress=False,
                          splits_file=tmp_path / "splits_final.json")
    splits = json.loads((out / "splits.json").read_text())
    assert splits["folds"] == [{k: sorted(v) for k, v in f.items()} for f in folds]
    assert splits["test"] == ["prostate_004"]  # labelled, in no fold
    folds[0]["val"].append("prostate_999")
    (tmp_path / "bad.json").write_text(json.dumps(folds))
    with pytest.raises(DataError, match=r"bad\.json: 1 case id\(s\) are not cases of the dataset: prostate_999"):
        prepare_dataset(root, tmp_path / "cache2", size=16, progress=False, splits_file=tmp_path / "bad.json")
    folds[0]["val"] = ["prostate_000"]
    (tmp_path / "leak.json").write_text(json.dumps(folds))
    with pytest.raises(DataError, match="patient leakage"):
        prepare_dataset(root, tmp_path / "cache3", size=16, progress=False, splits_file=tmp_path / "leak.json")
    assert not (tmp_path / "cache2").exists() and not (tmp_path / "cache3").exists()


# ------------------------------------------------------------------------------- 2D datasets
def write_nnunet_png(root: Path, n_cases: int = 4, colour: bool = False, shape=(20, 24)) -> Path:
    """nnU-Net v2's 2D format: ``CASE_0000.png`` (+ ``_0001``) or one colour file, ``CASE.png`` labels."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        case = f"slide_{i:03d}"
        pixels = rng.integers(10, 250, shape + (3,), dtype=np.uint8)
        if colour:
            Image.fromarray(pixels).save(root / "imagesTr" / f"{case}_0000.png")
        else:
            for c in range(2):
                Image.fromarray(pixels[..., c]).save(root / "imagesTr" / f"{case}_{c:04d}.png")
        label = np.zeros(shape, np.uint8)
        label[4:12, 5 + i:15] = 1
        label[6:9, 7:10] = 2
        Image.fromarray(label).save(root / "labelsTr" / f"{case}.png")
    channels = {"0": "R", "1": "G", "2": "B"} if colour else CHANNELS
    meta = {"channel_names": channels, "labels": {"background": 0, "gland": 1, "lumen": 2},
            "numTraining": n_cases, "file_ending": ".png"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("colour", [False, True])
def test_a_2d_png_dataset_is_one_slice_per_case(tmp_path, colour):
    from PIL import Image

    root = write_nnunet_png(tmp_path / "Dataset120_Glands", colour=colour)
    source = discover(root)
    assert source.layout == "nnunet" and len(source.cases) == 4
    case = load_case(source, source.cases[1])
    pixels = np.asarray(Image.open(source.cases[1].images[0]), dtype=np.float32)
    assert case.image.shape == ((3 if colour else 2), 20, 24, 1) and case.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(case.image[0, ..., 0], pixels[..., 0] if colour else pixels)
    label = np.asarray(Image.open(root / "labelsTr" / "slide_001.png"))
    np.testing.assert_array_equal(case.label[..., 0], label)
    if colour:
        assert [p.name for p in source.cases[1].images] == ["slide_001_0000.png"]
        green = load_case(source, source.cases[1], ["G"])
        np.testing.assert_array_equal(green.image[0, ..., 0], pixels[..., 1])
    assert [str(p) for p in check_dataset(root, progress=False)] == []
    out = prepare_dataset(root, tmp_path / "cache", task="multiclass", size=16, progress=False,
                          val_fraction=0.25, test_fraction=0.25)
    assert len(json.loads((out / "prepared.json").read_text())["cases"]) == 4


def test_2d_png_problems_are_named(tmp_path):
    from PIL import Image

    root = write_nnunet_png(tmp_path / "Dataset120_Glands")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "labelsTr" / "slide_000.png")
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(root / "imagesTr" / "slide_001_0001.png")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "imagesTr" / "slide_002_0001.png")
    problems = [str(p) for p in check_dataset(root, progress=False)]
    assert any("slide_000.png: a label of 20x20 pixels; its image slide_000_0000.png has 24x20" in p for p in problems)
    assert any("slide_001_0000.png: case slide_001: 4 channel(s) in slide_001_0000.png, slide_001_0001.png; "
               "dataset.json 'channel_names' has 2 (T2, ADC)" in p for p in problems)
    assert any("case slide_002: its channel images differ in size (slide_002_0000.png 24x20, "
               "slide_002_0001.png 12x10)" in p for p in problems)
    assert len(problems) == 3, problems


def test_a_2d_nifti_case_is_one_slice(tmp_path):
    root = write_nnunet(tmp_path / "Dataset001_Prostate", shape=(16, 16))
    source = discover(root)
    case = load_case(source, source.cases[0])
    assert case.image.shape == (2, 16, 16, 1) and case.label.shape == (16, 16, 1)
    assert [str(p) for p in check_dataset(root, progress=False)] == []
