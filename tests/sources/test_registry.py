"""Dataset layouts: MSD (3D and 4D tasks), BraTS editions, PNG slice folders, tasks, prediction inputs."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import save_nifti, tiny_case, write_msd_task
from PIL import Image

from jnet.errors import ConfigError, DataError
from jnet.sources.labels import REGIONS, make_task, parse_label_map
from jnet.sources.registry import discover, load_case
from jnet.sources.volume import load_volume

BRATS_2023 = ("t2f", "t1n", "t1c", "t2w")


def write_brats(root, case_ids, suffixes=("flair", "t1", "t1ce", "t2"), sep="_", seg_values=(0, 1, 2, 4),
                seg=True, shape=(6, 6, 3)):
    """BraTS case folders; modality i holds values 10 * (i + 1) + noise, so the order is checkable."""
    rng = np.random.default_rng(0)
    for case_id in case_ids:
        for i, suffix in enumerate(suffixes):
            data = (10 * (i + 1) + rng.uniform(0, 1, shape)).astype(np.float32)
            save_nifti(root / case_id / f"{case_id}{sep}{suffix}.nii.gz", data)
        if seg:
            label = np.zeros(shape, np.uint8)
            label.flat[: len(seg_values)] = seg_values
            save_nifti(root / case_id / f"{case_id}{sep}seg.nii.gz", label)
    return root


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# --------------------------------------------------------------------------- MSD


def test_msd_3d_single_modality_task(tmp_path):
    image, label = tiny_case(0)
    root = write_msd_task(tmp_path / "Task09_Spleen", {"spleen_1": (image, label)}, modality=("CT",),
                          labels={"0": "background", "1": "spleen"}, name="Spleen")
    label[label == 2] = 1
    save_nifti(root / "labelsTr" / "spleen_1.nii.gz", label)
    source = discover(root)
    assert (source.layout, source.edition, source.channels) == ("msd", "Task09_Spleen", ("CT",))
    loaded = load_case(source, source.cases[0])
    assert loaded.image.shape == (1, 8, 8, 3)
    np.testing.assert_array_equal(loaded.image[0], image)
    assert make_task(source, "binary") == {"kind": "binary", "names": ["spleen"], "classes": 1, "labels": {"spleen": [1]}}


def test_msd_task01_regions_from_the_table(tmp_path):
    image, label = tiny_case(1, channels=4)
    label.flat[:4] = [0, 1, 2, 3]
    labels = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
    root = write_msd_task(tmp_path / "brain", {"BRATS_001": (image, label)}, modality=("FLAIR", "T1w", "t1gd", "T2w"),
                          labels=labels, name="BRATS")
    source = discover(root)
    assert source.edition == "Task01_BrainTumour"  # from dataset.json "name" when the folder is renamed
    loaded = load_case(source, source.cases[0], channels=["T1GD", "flair"])
    assert loaded.channels == ("t1gd", "FLAIR")
    np.testing.assert_array_equal(loaded.image, np.stack([image[..., 2], image[..., 0]]))
    task = make_task(source, "regions")
    assert task["labels"] == {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]} == {k: list(v) for k, v in REGIONS[("msd", "Task01_BrainTumour")].items()}
    assert make_task(source, "binary")["names"] == ["WT"]
    assert make_task(source, "binary", ["et"])["labels"] == {"ET": [3]}


def test_tasks_from_metadata(prostate_dir):
    source = discover(prostate_dir)
    assert make_task(source, "multiclass") == {
        "kind": "multiclass", "names": ["background", "PZ", "TZ"], "classes": 3,
        "labels": {"background": [0], "PZ": [1], "TZ": [2]}}
    assert make_task(source, "multiclass", ["tz"])["labels"] == {"background": [0, 1], "TZ": [2]}
    assert make_task(source, "binary", ["PZ"])["labels"] == {"PZ": [1]}
    with pytest.raises(ConfigError, match="available: PZ, TZ"):
        make_task(source, "binary", ["CZ"])
    with pytest.raises(ConfigError, match="regions"):
        make_task(source, "regions")
    with pytest.raises(ConfigError, match="binary, multiclass, regions"):
        make_task(source, "ordinal")
    with pytest.raises(ConfigError, match="available: T2, ADC"):
        load_case(source, source.cases[0], channels=["DWI"])


def test_label_map_on_msd(prostate_dir):
    source = discover(prostate_dir, label_map={0: 0, 1: 1, 2: 1})
    assert source.labels == {0: "background", 1: "PZ+TZ"}
    loaded = load_case(source, source.cases[0])
    assert set(np.unique(loaded.label)) == {0, 1}


def test_int16_nifti_with_scaling_is_loaded_as_float(tmp_path):
    path = tmp_path / "scaled.nii.gz"
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    img.header.set_slope_inter(2.0, 10.0)
    nib.save(img, path)
    loaded = load_volume(path)
    assert loaded.image.dtype == np.float32 and loaded.label is None
    np.testing.assert_array_equal(loaded.image[0], np.arange(24).reshape(2, 3, 4) * 2.0 + 10.0)


@pytest.mark.parametrize("dtype, slope, inter", [
    (np.int16, 0.37, -12.5), (np.uint8, 1.0, 0.0), (np.float64, 1.0, 3.0), (np.float32, 2.0, 0.0),
    (np.int16, np.nan, np.nan),  # no scaling stored
])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_images_read_as_nibabel_scales_them_in_file_order(tmp_path, dtype, slope, inter, suffix):
    from jnet.sources.readers import read_nifti

    values = np.random.default_rng(0).integers(0, 200, (7, 5, 3)).astype(dtype)
    img = nib.Nifti1Image(values, np.eye(4))
    img.header.set_slope_inter(slope, inter)
    path = tmp_path / f"v{suffix}"
    nib.save(img, path)
    data, _ = read_nifti(path)
    want = nib.load(path).get_fdata(dtype=np.float64)
    assert data.dtype == np.float32 and data.flags.f_contiguous and data.flags.writeable
    np.testing.assert_allclose(data, want, rtol=1e-6)
    assert (slope != slope) or np.allclose(want, values * slope + inter)  # the scaling was applied


# --------------------------------------------------------------------------- BraTS


@pytest.mark.parametrize(
    "case_id, suffixes, sep, seg_values, edition",
    [
        ("BraTS20_Training_001", ("flair", "t1", "t1ce", "t2"), "_", (0, 1, 2, 4), "2018-2020"),
        ("BraTS2021_00000", ("flair", "t1", "t1ce", "t2"), "_", (0, 1, 2, 4), "2021"),
        ("BraTS-GLI-00000-000", BRATS_2023, "-", (0, 1, 2, 3), "2023"),
    ],
)
def test_brats_editions(tmp_path, case_id, suffixes, sep, seg_values, edition):
    root = write_brats(tmp_path / "brats", [case_id], suffixes, sep, seg_values)
    (root / "name_mapping.csv").write_text("BraTS_2020_subject_ID\n")  # ignored, as in the releases
    source = discover(root)
    assert (source.layout, source.edition, source.channels) == ("brats", edition, ("FLAIR", "T1", "T1ce", "T2"))
    et = 3 if edition == "2023" else 4
    assert source.labels == {0: "background", 1: "NCR", 2: "ED", et: "ET"}
    assert make_task(source, "regions")["labels"] == {"WT": [1, 2, et], "TC": [1, et], "ET": [et]}
    loaded = load_case(source, source.cases[0])
    # channel i comes from the file of the i-th common name (FLAIR = t2f in 2023 ...)
    assert [int(loaded.image[i].mean() // 10) for i in range(4)] == [1, 2, 3, 4]
    assert set(np.unique(loaded.label)) == set(seg_values)
    t1ce = load_case(source, source.cases[0], channels=["T1CE"])
    assert t1ce.image.shape == (1, 6, 6, 3) and int(t1ce.image.mean() // 10) == 3
    folder = load_volume(root / case_id)
    np.testing.assert_array_equal(folder.image, loaded.image)
    assert folder.label is None and folder.channels == ("FLAIR", "T1", "T1ce", "T2")


def test_brats_2023_labels_refuse_4(tmp_path):
    root = write_brats(tmp_path / "b", ["BraTS-GLI-00001-000"], BRATS_2023, "-", (0, 1, 2, 4))
    source = discover(root)
    with pytest.raises(DataError, match=r"label values \[4\].*BraTS 2023"):
        load_case(source, source.cases[0])


def test_brats_2018_hgg_lgg_nesting_and_unlabelled_release(tmp_path):
    root = tmp_path / "MICCAI_BraTS_2018_Data_Training"
    write_brats(root / "HGG", ["Brats18_2013_2_1"])
    write_brats(root / "LGG", ["Brats18_2013_0_1"])
    source = discover(root)
    assert [c.case_id for c in source.cases] == ["Brats18_2013_0_1", "Brats18_2013_2_1"]
    assert source.edition == "2018-2020"
    validation = write_brats(tmp_path / "val", ["BraTS2021_00001", "BraTS2021_00013"], seg=False)
    source = discover(validation)
    assert [c.label for c in source.cases] == [None, None]
    assert load_case(source, source.cases[0]).label is None


# --------------------------------------------------------------------------- PNG


def test_png_layout_with_label_map(png_dir):
    with pytest.raises(DataError, match=r"255.*--label-map 0:0,255:1"):
        load_case(discover(png_dir), discover(png_dir).cases[0])
    source = discover(png_dir, label_map={0: 0, 255: 1})
    assert (source.layout, source.channels, source.labels) == ("png", ("gray",), {0: "background", 1: "foreground"})
    assert [(c.case_id, c.split, len(c.images)) for c in source.cases] == [
        ("prostate_00", "train", 6), ("prostate_01", "train", 6), ("prostate_02", "test", 6)]
    case = source.cases[0]
    assert [p.stem for p in case.images] == [p.stem for p in case.labels] == [f"prostate_00_{z:03d}" for z in range(6)]
    assert case.label == png_dir / "train" / "masks"
    loaded = load_case(source, case)
    assert loaded.image.shape == (1, 64, 64, 6) and loaded.image.dtype == np.float32
    assert loaded.image.max() > 200  # stored values, no /255
    assert loaded.label.shape == (64, 64, 6) and set(np.unique(loaded.label)) == {0, 1}
    np.testing.assert_array_equal(loaded.affine, np.eye(4))
    assert make_task(source, "binary")["labels"] == {"foreground": [1]}


def test_png_pairs_by_name_orders_slices_and_keeps_16_bit(tmp_path):
    root = tmp_path / "png"
    rng = np.random.default_rng(0)
    for z in (10, 2, 1):  # numeric slice order, not string order
        write_png(root / "img" / f"pat7_{z}.png", np.full((5, 4), 1000 * z, np.uint16))
        write_png(root / "label" / f"pat7_{z}_mask.png", (rng.uniform(size=(5, 4)) > 0.5).astype(np.uint8))
    write_png(root / "img" / "._pat7_3.png", np.zeros((5, 4), np.uint8))  # macOS junk: ignored
    source = discover(root)
    case = source.cases[0]
    assert (case.case_id, case.split, [p.name for p in case.images]) == ("pat7", None, ["pat7_1.png", "pat7_2.png", "pat7_10.png"])
    assert [p.name for p in case.labels] == ["pat7_1_mask.png", "pat7_2_mask.png", "pat7_10_mask.png"]
    loaded = load_case(source, case)
    assert loaded.image[0, 0, 0].tolist() == [1000.0, 2000.0, 10000.0]  # uint16 kept as is


def test_png_rgb_channels_gray_and_case_pattern(tmp_path):
    root = tmp_path / "png"
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 50, 200
    for name in ("P1-s1", "P1-s2", "P2-s1"):
        write_png(root / "train" / "images" / f"{name}.png", rgb)
        write_png(root / "train" / "masks" / f"{name}.png", np.zeros((4, 4), np.uint8))
    source = discover(root, case_pattern=r"(?P<case>P\d+)-s(?P<slice>\d+)")
    assert [(c.case_id, len(c.images)) for c in source.cases] == [("P1", 2), ("P2", 1)]
    assert source.channels == ("R", "G", "B")
    loaded = load_case(source, source.cases[0])
    assert loaded.image.shape == (3, 4, 4, 2) and loaded.image[:, 0, 0, 0].tolist() == [100, 50, 200]
    gray = load_case(source, source.cases[0], channels=["gray"])
    assert gray.channels == ("gray",)
    np.testing.assert_allclose(gray.image[0, 0, 0, 0], 0.299 * 100 + 0.587 * 50 + 0.114 * 200, rtol=1e-6)
    # the default pattern would make every file its own case: 3 cases
    assert len(discover(root).cases) == 3
    with pytest.raises(DataError, match="do not match the case pattern"):
        discover(root, case_pattern=r"(?P<case>Q\d+)-s\d+")
    with pytest.raises(ConfigError, match="case_pattern"):
        discover(root, case_pattern=r"P\d+")


def test_png_missing_and_orphan_masks_in_one_error(tmp_path):
    root = tmp_path / "png"
    for name in ("a_1", "a_2", "b_1"):
        write_png(root / "images" / f"{name}.png", np.zeros((4, 4), np.uint8))
    write_png(root / "masks" / "a_1.png", np.zeros((4, 4), np.uint8))
    write_png(root / "masks" / "c_1.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError) as info:
        discover(root)
    text = str(info.value)
    assert "masks/a_2.png" in text and "masks/b_1.png" in text and "c_1.png" in text and "2 problem(s)" in text


# --------------------------------------------------------------------------- misc


def test_parse_label_map():
    assert parse_label_map("0:0,255:1") == {0: 0, 255: 1}
    assert parse_label_map(None) is None and parse_label_map(" ") is None
    for bad in ("0-0", "a:1", "0:0,0:1"):
        with pytest.raises(ConfigError, match="--label-map"):
            parse_label_map(bad)
    with pytest.raises(ConfigError, match="label_map"):
        discover("/", label_map={0: 300})


def test_load_volume_inputs(tmp_path, prostate_dir):
    four_d = load_volume(prostate_dir / "imagesTs" / "prostate_03.nii.gz")
    assert four_d.image.shape == (2, 64, 64, 6) and four_d.label is None
    np.testing.assert_allclose(four_d.affine, nib.load(prostate_dir / "imagesTs" / "prostate_03.nii.gz").affine)
    write_png(tmp_path / "slice.png", np.full((5, 7), 9, np.uint8))
    png = load_volume(tmp_path / "slice.png")
    assert png.image.shape == (1, 5, 7, 1) and png.spacing == (1.0, 1.0, 1.0)
    write_png(tmp_path / "rgb.png", np.full((5, 7, 3), (100, 50, 200), np.uint8))
    assert load_volume(tmp_path / "rgb.png").channels == ("R", "G", "B")
    gray = load_volume(tmp_path / "rgb.png", channels=["gray"])
    assert gray.image.shape == (1, 5, 7, 1)
    np.testing.assert_allclose(gray.image[0, 0, 0, 0], 0.299 * 100 + 0.587 * 50 + 0.114 * 200, rtol=1e-6)
    save_nifti(tmp_path / "five.nii.gz", np.zeros((2, 2, 2, 1, 2), np.float32))
    with pytest.raises(DataError, match=r"five.nii.gz: a 5D image of shape \(2, 2, 2, 1, 2\)"):
        load_volume(tmp_path / "five.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="notes.txt"):
        load_volume(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="not a BraTS case folder"):
        load_volume(tmp_path)


def test_layout_detection_and_forced_format(tmp_path, prostate_dir, brats_dir):
    assert discover(prostate_dir, format="msd").layout == "msd"
    with pytest.raises(DataError, match="cannot tell the dataset layout"):
        discover(tmp_path)
    with pytest.raises(DataError, match=f"did you mean {prostate_dir}"):
        discover(prostate_dir.parent)
    with pytest.raises(DataError, match="no BraTS case folders"):
        discover(prostate_dir, format="brats")
    with pytest.raises(ConfigError, match="msd, nnunet, brats, png"):
        discover(brats_dir, format="nnUNet")
    with pytest.raises(DataError, match=r"dataset\.json: not a readable JSON file"):
        discover(brats_dir, format="nnunet")
    with pytest.raises(DataError, match="not found"):
        discover(tmp_path / "nowhere")
    meta = json.loads((prostate_dir / "dataset.json").read_text())
    assert len(meta["test"]) == 2
