"""`jnet evaluate` end to end on a hand-written slice cache (the schema of docs/design.md)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from jnet.errors import OutputError, DataError
from jnet.evaluation.evaluate import evaluate, summary_table

S, SMALL = 32, 8
TASKS = {
    "binary": {"kind": "binary", "names": ["prostate"], "classes": 1, "labels": {"prostate": [1]}},
    "multiclass": {"kind": "multiclass", "names": ["background", "pz", "tz"], "classes": 3,
                   "labels": {"background": [0], "pz": [1], "tz": [2]}},
}


def make_cache(root, task=TASKS["binary"], channels=("T2",), n_cases=5, count=3, seed=0):
    """A tiny slice cache written by hand, exactly per the prepared.json / splits.json schema."""
    rng = np.random.default_rng(seed)
    n = n_cases * count
    images = rng.standard_normal((n, len(channels), S, S)).astype(np.float16)
    labels = np.zeros((n, S, S), np.uint8)
    yy, xx = np.mgrid[:S, :S]
    for i in range(n):
        if i % count == 0:
            continue  # the first slice of every case has no foreground
        for value in range(1, task["classes"] if task["kind"] == "multiclass" else 2):
            cy, cx, r = rng.integers(8, 24), rng.integers(8, 24), rng.integers(3, 8)
            labels[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = value
    cases = [{
        "case_id": f"case_{c:02d}", "start": c * count, "count": count,
        "slice_indices": list(range(2, 2 + count)), "axis": 2,
        "spacing": [0.625, 0.625, 3.0], "native_spacing": [0.625, 0.625, 3.0],
        "original_shape": [S, S, count + 4], "affine": np.eye(4).tolist(),
    } for c in range(n_cases)]
    prepared = {
        "format_version": 1, "jnet_version": "0.1.0", "layout": "msd", "source": "/nonexistent/data",
        "edition": None, "task": task, "channels": list(channels), "size": S, "dtype": "float16",
        "normalisation": {"method": "zscore-nonzero"}, "keep_empty": True, "n_slices": n, "cases": cases,
    }
    ids = [c["case_id"] for c in cases]
    splits = {"seed": 0, "val_fraction": 0.2, "test_fraction": 0.2, "test": sorted(ids[:3]),
              "folds": [{"train": sorted(ids[4:]), "val": [ids[3]]}]}
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "images.npy", images)
    np.save(root / "labels.npy", labels)
    (root / "splits.json").write_text(json.dumps(splits))
    (root / "prepared.json").write_text(json.dumps(prepared))  # last, as `jnet data prepare` does
    return root


def info_for(task=TASKS["binary"], channels=("T2",), in_size=SMALL, out_size=S, arch="jnet"):
    return {"model": {"arch": arch, "in_size": in_size, "out_size": out_size}, "task": task,
            "channels": list(channels), "size": S, "in_size": in_size, "downsample": "area",
            "normalisation": {"method": "zscore-nonzero"}, "jnet_version": "0.1.0"}


class Oracle(nn.Module):
    """Stand-in model that returns ground-truth logits: it finds each input among the split's
    low-resolution inputs (all distinct random images) and looks up that row's label."""

    def __init__(self, root, task, split="test"):
        super().__init__()
        from jnet.cache.reader import SliceDataset

        ds = SliceDataset(root, split, fold=0, in_size=SMALL, downsample="area")
        items = [ds[i] for i in range(len(ds))]
        self.inputs = torch.stack([torch.as_tensor(x[0]).float().flatten() for x in items])
        labels = torch.stack([torch.as_tensor(x[1]) for x in items])
        self.kind, self.in_size, self.out_size = task["kind"], SMALL, S
        if task["kind"] == "binary":
            self.logits = (labels[:, None].float() * 2 - 1) * 10
        else:
            self.logits = nn.functional.one_hot(labels.long(), task["classes"]).permute(0, 3, 1, 2).float() * 10

    def forward(self, x):
        rows = torch.cdist(x.flatten(1).float(), self.inputs).argmin(1)
        return self.logits[rows]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- a perfect predictor
@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_perfect_predictor_scores_one_and_writes_every_file(tmp_path, kind):
    task = TASKS[kind]
    root = make_cache(tmp_path / "cache", task)
    out = tmp_path / "eval"
    m = evaluate(Oracle(root, task), info_for(task), root, out_dir=out, batch_size=4, quiet=True)

    names = task["names"][1:] if kind == "multiclass" else task["names"]
    for key in ("jaccard", "dice", "volume_jaccard", "volume_dice"):
        assert m[key]["mean"] == 1.0 and list(m[key]["per_class"]) == names
    assert m["hd95"]["mean"] == 0.0 and m["volume_hd95"]["mean"] == 0.0 and m["hd95_undefined"] == 0
    assert m["degenerate"] is None and m["degenerate_structures"] == {}
    assert (m["n_slices"], m["n_cases"]) == (9, 3)  # 3 test cases of 3 slices
    assert m["interval"] is None  # too few cases for an interval over them
    assert (m["in_size"], m["out_size"], m["downsample"], m["split"]) == (SMALL, S, "area", "test")
    assert m["logits_upsampled_from"] is None and m["empty_policy"]["both_empty"]["jaccard"] == 1.0

    written = json.loads((out / "metrics.json").read_text())
    assert written == m
    required = {"jaccard", "dice", "hd95", "volume_jaccard", "volume_dice", "n_slices", "n_cases", "model",
                "in_size", "out_size", "downsample", "split", "empty_policy"}
    assert required <= set(written)

    cases = read_csv(out / "per_case.csv")
    assert [r["case_id"] for r in cases] == ["case_00", "case_01", "case_02"]
    assert all(r["n_slices"] == "3" for r in cases)
    assert {f"volume_jaccard_{n}" for n in names} | {f"volume_hd95_{n}" for n in names} <= set(cases[0])
    assert all(float(r["volume_jaccard"]) == 1.0 and float(r["slice_jaccard"]) == 1.0 for r in cases)
    assert len(read_csv(out / "per_slice.csv")) == 9

    pngs = sorted(p.name for p in (out / "overlays").iterdir())
    assert len(pngs) == 3 and [p.split("_")[1] for p in pngs] == ["best", "median", "worst"]
    from PIL import Image

    for name in pngs:
        with Image.open(out / "overlays" / name) as im:
            im.verify()
            assert im.format == "PNG"
    assert "| **mean** |" in summary_table(m)


def test_scores_follow_the_prediction(tmp_path):
    # A model that predicts nothing: Jaccard 1 only on the empty slices (1 of 3 per case),
    # HD95 undefined on every slice with foreground, volume Jaccard 0 for every case. It is
    # degenerate, and its HD95 mean is undefined, not the 0.00 of its empty slices.
    root = make_cache(tmp_path / "cache")

    class Nothing(nn.Module):
        in_size = SMALL

        def forward(self, x):
            return torch.full((x.shape[0], 1, S, S), -5.0)

    m = evaluate(Nothing(), info_for(), root, out_dir=tmp_path / "eval", overlays=0, quiet=True)
    assert m["jaccard"]["mean"] == pytest.approx(1 / 3)
    assert m["hd95_undefined"] == 6 and m["hd95"]["mean"] is None
    assert m["degenerate"] == "degenerate: predicts no foreground on any slice (prostate)"
    assert m["degenerate_structures"] == {"prostate": "empty"}
    # case figures first (0: a case with foreground predicted empty), then foreground slices
    assert "| **mean** | 0.0000 | 0.0000 | n/a | 0.0000 | 0.0000 | 0.3333 | 0.3333 | n/a |" in summary_table(m)
    assert m["foreground_dice"]["mean"] == 0.0 and m["hd95_definition"].startswith("MONAI")

    assert m["volume_jaccard"]["mean"] == 0.0 and m["volume_hd95"]["per_class"]["prostate"] is None
    assert not (tmp_path / "eval" / "overlays").exists()

    class Everything(Nothing):
        def forward(self, x):
            return torch.full((x.shape[0], 1, S, S), 5.0)

    m = evaluate(Everything(), info_for(), root, out_dir=tmp_path / "eval2", overlays=0, quiet=True)
    assert m["degenerate_structures"] == {"prostate": "full"} and m["hd95"]["mean"] > 0


def test_inputs_can_be_made_another_way_than_in_training(tmp_path):
    """--downsample: the model sees the cache's slices downsampled that way; metrics.json says so."""
    from jnet.cache.reader import SliceDataset
    from jnet.errors import ConfigError

    root = make_cache(tmp_path / "cache")
    seen = []

    class Recorder(nn.Module):
        in_size = SMALL

        def forward(self, x):
            seen.append(x.clone())
            return torch.full((x.shape[0], 1, S, S), 5.0)

    m = evaluate(Recorder(), info_for(), root, out_dir=tmp_path / "e", overlays=0, quiet=True,
                 downsample="gaussian")
    assert (m["downsample"], m["trained_downsample"]) == ("gaussian", "area")
    first = {mode: torch.as_tensor(SliceDataset(root, "test", fold=0, in_size=SMALL, downsample=mode)[0][0]).float()
             for mode in ("gaussian", "area")}
    assert torch.allclose(seen[0][0], first["gaussian"]) and not torch.allclose(seen[0][0], first["area"])
    seen.clear()
    assert evaluate(Recorder(), info_for(), root, out_dir=tmp_path / "e2", overlays=0,
                    quiet=True)["downsample"] == "area"
    assert torch.allclose(seen[0][0], first["area"])
    with pytest.raises(ConfigError, match="bicubic"):
        evaluate(Recorder(), info_for(), root, out_dir=tmp_path / "e3", overlays=0, quiet=True,
                 downsample="bicubic")


# ---------------------------------------------------------------- real models, same resolution
def test_baseline_and_jnet_are_scored_at_the_same_size(tmp_path):
    from jnet.models.jnet import build_model

    torch.manual_seed(0)
    root = make_cache(tmp_path / "cache")
    models = {arch: build_model(arch=arch, base="unet", width=4, depth=2, in_size=SMALL,
                                out_size=SMALL if arch == "base" else S) for arch in ("base", "baseline", "jnet")}
    models["baseline"].load_state_dict(models["base"].state_dict())  # the same base weights
    results = {}
    for arch, model in models.items():
        info = info_for(in_size=SMALL, arch=arch)
        info["model"] = dict(model.config)
        results[arch] = evaluate(model, info, root, out_dir=tmp_path / arch, overlays=1, quiet=True)
    for arch, m in results.items():
        assert m["out_size"] == S and m["n_slices"] == 9
        assert m["model_out_size"] == (SMALL if arch == "base" else S)
        assert 0.0 <= m["jaccard"]["mean"] <= 1.0
    assert results["base"]["logits_upsampled_from"] == SMALL
    assert results["jnet"]["logits_upsampled_from"] is None
    # A plain base, upsampled by evaluate, scores exactly as the baseline that upsamples inside.
    assert read_csv(tmp_path / "base" / "per_slice.csv") == read_csv(tmp_path / "baseline" / "per_slice.csv")
    for key in ("jaccard", "dice", "hd95", "volume_jaccard"):
        assert results["base"][key] == results["baseline"][key]


# ---------------------------------------------------------------- refusals
def test_existing_results_are_not_overwritten(tmp_path):
    root = make_cache(tmp_path / "cache")
    oracle, out = Oracle(root, TASKS["binary"]), tmp_path / "eval"
    evaluate(oracle, info_for(), root, out_dir=out, overlays=0, quiet=True)
    before = (out / "metrics.json").read_bytes()
    with pytest.raises(DataError, match="already holds evaluation results"):
        evaluate(oracle, info_for(), root, out_dir=out, overlays=0, quiet=True)
    assert (out / "metrics.json").read_bytes() == before
    again = evaluate(oracle, info_for(), root, out_dir=out, overlays=2, overwrite=True, quiet=True)
    assert again["n_slices"] == 9 and len(list((out / "overlays").iterdir())) == 2
    evaluate(oracle, info_for(), root, out_dir=out, overlays=0, overwrite=True, quiet=True)
    # stale figures are gone and no staging folder or temporary file is left behind
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "per_case.csv", "per_slice.csv"]


@pytest.mark.parametrize("field, value, match", [
    ("channels", ["T1", "T2"], r"channels \['T2'\] do not match the model's input channels \['T1', 'T2'\]"),
    ("task", TASKS["multiclass"], "task binary .* does not match the model's task multiclass"),
])
def test_mismatched_model_is_refused(tmp_path, field, value, match):
    root = make_cache(tmp_path / "cache")
    info = info_for()
    info[field] = value
    with pytest.raises(DataError, match=match):
        evaluate(nn.Identity(), info, root, out_dir=tmp_path / "eval", quiet=True)
    assert not (tmp_path / "eval").exists()


def test_missing_cache_is_named(tmp_path):
    with pytest.raises(DataError, match="not a jnet slice cache"):
        evaluate(nn.Identity(), info_for(), tmp_path / "nothing", out_dir=tmp_path / "eval", quiet=True)


# ---------------------------------------------------------------- splits and native resolution
def test_split_all_and_native(tmp_path):
    root = make_cache(tmp_path / "cache")
    oracle = Oracle(root, TASKS["binary"], split="all")
    m = evaluate(oracle, info_for(), root, split="all", out_dir=tmp_path / "eval", native=True, overlays=0,
                 quiet=True)
    assert (m["n_slices"], m["n_cases"], m["fold"]) == (15, 5, None)
    # The cache grid equals the native grid here, so the native scores equal the cache scores.
    assert m["native"]["volume_jaccard"]["mean"] == 1.0 and m["native"]["jaccard"]["n"] == 15
    assert m["native"]["n_cases_gt_exact"] == 5


def test_an_interval_over_the_cases_brackets_each_mean(tmp_path):
    from jnet.evaluation.compare import MIN_CASES

    root = make_cache(tmp_path / "cache", n_cases=MIN_CASES)

    class Shrunk(Oracle):  # the truth eroded: imperfect scores that differ from case to case
        def forward(self, x):
            logits = super().forward(x)
            return -nn.functional.max_pool2d(-logits, 3, stride=1, padding=1)

    m = evaluate(Shrunk(root, TASKS["binary"], split="all"), info_for(), root, split="all",
                 out_dir=tmp_path / "eval", overlays=0, quiet=True)
    interval = m["interval"]
    assert (interval["n_cases"], interval["level"]) == (MIN_CASES, 0.95)
    for key in ("jaccard", "volume_jaccard", "volume_dice"):
        low, high = interval[key]
        assert low < m[key]["mean"] < high < 1.0, key


def test_native_scores_against_the_label_files(tmp_path, msd_writer):
    """Native 64x64 slices cached at 32x32: the cached label is an approximation, the file is not.
    A model that predicts the cached label exactly scores 1 on the cache grid and less against
    the files; with the files gone, the cached label is used and says so."""
    from jnet.cache.build import prepare_dataset

    yy, xx = np.mgrid[:64, :64]
    cases = {}
    for i in range(5):
        disc = (np.hypot(yy - 30 - i, xx - 33) < 9 + i).astype(np.uint8)
        label = np.repeat(disc[..., None], 3, axis=2)
        label[::2, ::3, 1] = 0  # fine detail a 32x32 grid cannot hold
        cases[f"c{i}"] = ((label * 50 + 10 + np.random.default_rng(i).random((64, 64, 3))).astype(np.float32), label)
    task_dir = msd_writer(tmp_path / "Task05_Prostate", cases, labels={"0": "background", "1": "prostate"})
    root = prepare_dataset(task_dir, tmp_path / "cache", size=S, progress=False, val_fraction=0.2,
                           test_fraction=0.2)
    task = json.loads((root / "prepared.json").read_text())["task"]
    oracle = Oracle(root, task, split="all")
    m = evaluate(oracle, info_for(task), root, split="all", out_dir=tmp_path / "eval", native=True,
                 overlays=0, quiet=True)
    assert m["volume_dice"]["mean"] == 1.0  # the cache grid
    assert m["native"]["n_cases_gt_from_file"] == 5
    assert m["native"]["volume_dice"]["mean"] < 0.99  # against the real labels
    rows = read_csv(tmp_path / "eval" / "per_case.csv")
    assert {r["native_ground_truth"] for r in rows} == {"label file"}
    assert all(float(r["native_volume_dice_prostate"]) < 1 for r in rows)
    for label in (task_dir / "labelsTr").iterdir():
        label.unlink()
    m = evaluate(oracle, info_for(task), root, split="all", out_dir=tmp_path / "eval", native=True,
                 overlays=0, quiet=True, overwrite=True)
    assert m["native"]["n_cases_gt_from_file"] == 0
    assert {r["native_ground_truth"] for r in read_csv(tmp_path / "eval" / "per_case.csv")} == {"cache"}


# ---------------------------------------------------------------- the command line
def test_cli_prints_a_table_and_refuses_a_second_run(tmp_path, capsys):
    from jnet.training.checkpoint import save_weights
    from jnet.cli import main
    from jnet.models.jnet import build_model

    root = make_cache(tmp_path / "cache")
    model = build_model(arch="jnet", base="unet", width=4, depth=2, in_size=SMALL, out_size=S)
    info = info_for()
    info["model"] = dict(model.config)
    ckpt = save_weights(model, info, tmp_path / "model.ckpt")
    args = ["evaluate", str(ckpt), "--data", str(root), "--out", str(tmp_path / "eval"), "--overlays", "0"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| prostate |" in printed and "metrics.json" in printed
    assert main(args) == 2
    assert "already holds evaluation results" in capsys.readouterr().err
    assert main(args[:-4] + ["--out", str(tmp_path / "eval-nearest"), "--overlays", "0", "--downsample", "nearest"]) == 0
    assert "input 8x8 (nearest; trained on area)" in capsys.readouterr().out


def test_crash_while_overwriting_keeps_the_previous_results(tmp_path, monkeypatch):
    root = make_cache(tmp_path / "cache")
    oracle, out = Oracle(root, TASKS["binary"]), tmp_path / "eval"
    evaluate(oracle, info_for(), root, out_dir=out, overlays=1, quiet=True)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("jnet.evaluation.overlays.save_overlay", broken)
    with pytest.raises(OutputError, match=r"overlays/0001_best_case_\d\d\.png: cannot write the output "
                                          r"\(No space.*metrics\.json was not updated"):
        evaluate(oracle, info_for(), root, out_dir=out, overlays=1, overwrite=True, quiet=True)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "overlays", "per_case.csv", "per_slice.csv"]


def test_overlays_use_the_radiological_view():
    """The same anatomy stored RAS or LPS looks the same: patient right on the viewer's left,
    anterior at the top (axial)."""
    from jnet.evaluation.overlays import radiological

    ras = np.zeros((4, 5))  # rows = x (to the patient's right), cols = y (anterior)
    ras[3, 4] = 1  # the most right and most anterior voxel
    lps = ras[::-1, ::-1]  # the same slice with x -> left, y -> posterior
    view_ras = radiological(np.diag([1.0, 1.0, 3.0, 1.0]), axis=2)
    view_lps = radiological(np.diag([-1.0, -1.0, 3.0, 1.0]), axis=2)
    shown = view_ras(ras)
    np.testing.assert_array_equal(shown, view_lps(lps))
    assert shown.shape == (5, 4) and shown[0, 0] == 1  # top (anterior), left (patient's right)
    assert view_ras.edges == ("R", "L")
    sagittal = radiological(np.diag([1.0, 1.0, 1.0, 1.0]), axis=0)  # rows = y, cols = z
    assert sagittal.edges == ("A", "P")
    assert radiological(None, 2)(ras) is not None and radiological(None, 2).edges is None


def test_overlays_zoom_to_the_anatomy():
    """A small head in a large uniform field is framed (with the masks and a margin); a noisy
    background leaves the whole field."""
    from jnet.evaluation.overlays import _zoom

    image = np.full((64, 64), -1.0)
    image[20:30, 34:44] = np.random.default_rng(0).uniform(0, 2, (10, 10))  # the anatomy
    mask = np.zeros((1, 128, 128), bool)
    mask[0, 36:40, 60:66] = True  # on the output grid, inside the anatomy
    far = np.zeros((1, 128, 128), bool)
    far[0, 100:104, 60:62] = True  # a prediction outside it
    x0, x1, y0, y1 = _zoom(image, 128, mask)
    assert x1 - x0 == y1 - y0 and 32 <= x1 - x0 < 64  # square, at least S/4, closer than the field
    assert x0 <= 68 and x1 >= 88 and y0 <= 40 and y1 >= 60  # the anatomy (x 68-88, y 40-60 on S)
    x0, x1, y0, y1 = _zoom(image, 128, mask, far)
    assert y1 >= 104  # every mask stays in the frame
    noisy = np.random.default_rng(1).normal(0, 1, (64, 64))
    assert _zoom(noisy, 128) == (0.0, 128.0, 0.0, 128.0)
