"""Sweep grid, resume, report tables and plots, and the demo end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from jnet.errors import ConfigError
from jnet.experiments import report
from jnet.training import presets

ROWS = [
    {"model": "baseline", "in_size": 16, "out_size": 64, "seed": s, "jaccard": j, "dice": j + 0.1,
     "hd95": 3.0, "volume_jaccard": j, "params": 100, "macs": 1e6, "images_per_s": 400.0}
    for s, j in ((0, 0.50), (1, 0.60))
] + [
    {"model": "jnet", "in_size": 16, "out_size": 64, "seed": s, "jaccard": j, "dice": j + 0.1,
     "hd95": 2.0, "volume_jaccard": j, "params": 112, "macs": 1.1e6, "images_per_s": 380.0}
    for s, j in ((0, 0.70), (1, 0.80))
] + [
    {"model": "jnet", "in_size": 32, "out_size": 64, "seed": 0, "jaccard": 0.9, "dice": 0.95,
     "hd95": float("nan"), "volume_jaccard": 0.9, "params": 112, "macs": 4e6, "images_per_s": 100.0},
]


def _is_png(path) -> bool:
    with Image.open(path) as im:
        im.load()
        return im.format == "PNG" and im.size[0] > 50


def test_aggregate_means_and_stds_over_seeds():
    agg = {(a["model"], a["in_size"]): a for a in report.aggregate(ROWS)}
    assert agg[("baseline", 16)]["jaccard"] == pytest.approx(0.55)
    assert agg[("baseline", 16)]["jaccard_std"] == pytest.approx(0.05)
    assert agg[("jnet", 16)]["n_seeds"] == 2
    assert math.isnan(agg[("jnet", 32)]["hd95"])  # NaN is not averaged into a number


def test_markdown_table_and_gain_summary():
    agg = report.aggregate(ROWS)
    table = report.markdown_table(agg)
    lines = table.strip().splitlines()
    # per-case (volume) figures lead the table, the slice means follow
    assert lines[0].startswith("| model | input | output | seeds | vol. Jaccard % | Jaccard %")
    assert len(lines) == 2 + 3
    row = next(line for line in lines if line.startswith("| baseline | 16² | 64² | 2 |"))
    assert "| 55.0 ± 5.0 |" in row
    gain = report.gain_summary(agg)
    assert len(gain) == 1 and "+20.0 points" in gain[0] and "better" in gain[0]


def test_degenerate_cells_are_named_not_scored():
    """An all-empty model's Jaccard (its empty slices) and HD95 never enter a mean or a gain."""
    rows = [dict(r) for r in ROWS] + [
        {"model": "jnet", "in_size": 16, "out_size": 64, "seed": 2, "jaccard": 0.25, "hd95": None,
         "volume_jaccard": 0.0, "hd95_undefined": 30, "degenerate": "degenerate: predicts no foreground on any slice (wm)"},
        {"model": "collapsed", "in_size": 16, "out_size": 64, "seed": 0, "jaccard": 0.25, "hd95": None,
         "hd95_undefined": 30, "degenerate": "degenerate: predicts no foreground on any slice (wm)"}]
    agg = {(a["model"], a["in_size"]): a for a in report.aggregate(rows)}
    healthy = {(a["model"], a["in_size"]): a for a in report.aggregate(ROWS)}
    assert agg[("jnet", 16)]["jaccard"] == healthy[("jnet", 16)]["jaccard"]
    assert (agg[("jnet", 16)]["n_seeds"], agg[("jnet", 16)]["n_degenerate"]) == (3, 1)
    assert math.isnan(agg[("collapsed", 16)]["jaccard"])
    table = report.markdown_table(list(agg.values()))
    assert "| jnet | 16² | 64² | 3 (1 degenerate) |" in table
    assert "| collapsed | 16² | 64² | 1 (1 degenerate) | degenerate | degenerate | degenerate |" in table
    assert "0.00" not in table.split("collapsed")[1].splitlines()[0]
    note = report.degenerate_note(rows)
    assert "collapsed-16-seed0 (degenerate: predicts no foreground" in note and ": 60 slice-structure" in note
    assert "every seed of collapsed is degenerate" in report.gain_summary(list(agg.values()), "collapsed")[0]


def test_pareto_front_keeps_only_undominated_points():
    pts = [(100, 0.9), (400, 0.6), (380, 0.75), (50, 0.5), (350, 0.7)]  # 3 and 4 are dominated
    assert report.pareto_front(pts) == [0, 2, 1]


def test_csv_round_trip_and_plots(tmp_path):
    report.write_csv(ROWS, tmp_path / "results.csv")
    back = report.read_csv(tmp_path / "results.csv")
    assert [r["model"] for r in back] == [r["model"] for r in ROWS]
    assert float(back[2]["jaccard"]) == pytest.approx(0.7)
    agg = report.aggregate(back)
    report.plot_quality_vs_size(agg, tmp_path / "q.png")
    report.plot_pareto(agg, tmp_path / "p.png")
    assert all(_is_png(tmp_path / f) for f in ("q.png", "p.png"))
    # every cell degenerate: the plot says so (no empty legend, no warning)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report.plot_pareto([{**a, "jaccard": math.nan} for a in agg], tmp_path / "empty.png")
    assert _is_png(tmp_path / "empty.png")


def test_sample_figure_draws_each_model_on_the_high_res_image(tmp_path):
    from PIL import Image

    from jnet.evaluation.overlays import save_comparison

    yy, xx = np.mgrid[:64, :64]
    gt = ((yy - 32) ** 2 + (xx - 32) ** 2 < 15 ** 2)[None]
    row = {"label": "case_0 slice 3", "image": np.random.rand(1, 16, 16), "high_res": np.random.rand(1, 64, 64),
           "gt": gt, "preds": {"bilinear": np.roll(gt, 4, axis=-1), "jnet": np.zeros_like(gt)},
           "jaccard": {"bilinear": 0.8, "jnet": 0.0}}
    sizes = {}
    for models in (["bilinear"], ["bilinear", "jnet"]):
        path = save_comparison(tmp_path / f"{len(models)}.png", [row, row], models, ["gland"])
        with Image.open(path) as im:
            sizes[len(models)] = im.size
            rgb = np.asarray(im.convert("RGB")).astype(int)
        # the structure's colour (tab10 orange) is drawn: the contours are there
        assert (np.abs(rgb - [255, 127, 14]).sum(-1) < 60).sum() > 50
    assert sizes[2][0] > sizes[1][0] and sizes[2][1] == sizes[1][1]  # one column more per model
    assert not list(tmp_path.glob(".*"))  # written atomically: no temporary file left
    with pytest.raises(ValueError, match="no rows"):
        save_comparison(tmp_path / "none.png", [], ["jnet"], ["gland"])


# --- the grid -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(prostate_dir, tmp_path_factory):
    from jnet.cache.build import prepare_dataset

    return prepare_dataset(prostate_dir, tmp_path_factory.mktemp("sweep") / "prepared", channels=["T2"],
                           size=64, val_fraction=0.34, test_fraction=0.34, progress=False)


def _sweep_file(tmp_path, **changes):
    sweep = {
        "recipe": {"model": {"width": 4, "variant": "clean"},
                   "train": {"epochs": 1, "batch_size": 4, "num_workers": 0}},
        "data": {"downsample": "area"},
        "out_size": 64, "sizes": [16], "seeds": [0],
        "models": {"jnet": {"arch": "jnet", "head": "paper"},
                   "baseline": {"arch": "baseline", "train_at": "input"}},
        "bench": {"batch": 2, "reps": 1, "onnx": True},
        **changes,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def test_make_cells_expands_the_grid_and_dedupes_fixed_sizes(tmp_path):
    from jnet.experiments.sweep import load_sweep, make_cells

    path = _sweep_file(tmp_path, sizes=[16, 32], seeds=[0, 1],
                       models={"jnet": {"arch": "jnet"}, "full": {"arch": "base", "in_size": 64}})
    cells = make_cells(load_sweep(path), data_path="/nowhere")
    names = [c.name for c in cells]
    assert names == ["jnet-16-seed0", "jnet-16-seed1", "jnet-32-seed0", "jnet-32-seed1",
                     "full-64-seed0", "full-64-seed1"]
    full = cells[-1].config
    assert full["model"]["in_size"] == full["model"]["out_size"] == 64
    assert cells[1].config["train"]["seed"] == 1


def test_a_model_entry_may_run_seeds_of_its_own(tmp_path):
    from jnet.experiments.sweep import load_sweep, make_cells

    path = _sweep_file(tmp_path, sizes=[16], seeds=[0, 1, 2],
                       models={"jnet": {"arch": "jnet"}, "big": {"arch": "baseline", "in_size": 32, "seeds": [0, 1]}})
    cells = make_cells(load_sweep(path), data_path="/nowhere")
    assert [c.name for c in cells] == ["jnet-16-seed0", "jnet-16-seed1", "jnet-16-seed2",
                                       "big-32-seed0", "big-32-seed1"]
    assert "seeds" not in cells[-1].config["model"]  # a sweep field, not a model field
    for bad in ([], [0.5], "0"):
        path = _sweep_file(tmp_path, models={"big": {"arch": "baseline", "seeds": bad}})
        with pytest.raises(ConfigError, match=r"models\.big\.seeds: expected a non-empty list"):
            make_cells(load_sweep(path), data_path="/nowhere")
    with pytest.raises(ConfigError, match="sweep seeds: expected"):
        load_sweep(_sweep_file(tmp_path, seeds=[]))


def test_a_model_entry_may_change_the_loss_and_train_sections(tmp_path):
    from jnet.experiments.sweep import load_sweep, make_cells

    path = _sweep_file(tmp_path, models={
        "jnet": {"arch": "jnet"},
        "jnet-final": {"arch": "jnet", "loss": {"weights": [0, 0, 1]}, "train": {"lr": 0.01}}})
    plain, final = make_cells(load_sweep(path), data_path="/nowhere")
    assert plain.config["loss"]["weights"] is None and final.config["loss"]["weights"] == [0, 0, 1]
    assert final.config["train"]["lr"] == 0.01 and final.config["train"]["epochs"] == 1
    assert final.config["model"] == plain.config["model"]  # loss/train are not model fields


def test_bad_sweep_keys_are_refused(tmp_path):
    from jnet.experiments.sweep import load_sweep

    with pytest.raises(ConfigError, match="unknown sweep key.*modles"):
        load_sweep(_sweep_file(tmp_path, modles={}))


def test_a_cell_that_cannot_run_refuses_the_sweep_before_any_trains(prepared, tmp_path, monkeypatch):
    from jnet.experiments import sweep as sweep_mod
    from jnet.experiments.sweep import run_sweep

    def no_training(*args, **kwargs):
        raise AssertionError("a cell trained although another cannot run")

    monkeypatch.setattr(sweep_mod, "run_cell", no_training)
    out = tmp_path / "out"
    # 24 does not reach 64 by x2 steps: found before the 16x16 cells train, however many they are
    with pytest.raises(ConfigError, match=r"(?s)sweep refused before any cell ran:\n"
                       r"  jnet-24-seed0: invalid model config:\n      model.in_size: 24 .*"
                       r"  baseline-24-seed0: invalid model config") as refused:
        run_sweep(_sweep_file(tmp_path, sizes=[16, 24]), out, data=str(prepared), quiet=True)
    assert "-16-seed0" not in str(refused.value)
    # data the cells cannot read: one line naming every cell it refuses
    with pytest.raises(ConfigError, match=r"  jnet-16-seed0, baseline-16-seed0: data.path: .*nowhere does not exist"):
        run_sweep(_sweep_file(tmp_path), out, data=str(tmp_path / "nowhere"), quiet=True)
    # a model field the data contradicts
    with pytest.raises(ConfigError, match=r"jnet-16-seed0, baseline-16-seed0: model.classes: the config says 3"):
        run_sweep(_sweep_file(tmp_path, recipe={"model": {"width": 4, "classes": 3}}), out,
                  data=str(prepared), quiet=True)
    assert not out.exists()  # nothing written


@pytest.mark.slow
def test_sweep_runs_reports_and_resumes_without_retraining(prepared, tmp_path, monkeypatch):
    from jnet.experiments import bench as bench_mod
    from jnet.experiments import sweep as sweep_mod
    from jnet.experiments.sweep import run_sweep

    path = _sweep_file(tmp_path)
    out = tmp_path / "out"
    report_path = run_sweep(path, out, data=str(prepared), quiet=True)
    for name in ("results.csv", "results.md", "report.md", "jaccard_vs_size.png", "pareto.png", "samples.png"):
        assert (out / name).exists(), name
    assert _is_png(out / "pareto.png") and _is_png(out / "samples.png")
    rows = report.read_csv(out / "results.csv")
    assert {r["model"] for r in rows} == {"jnet", "baseline"}
    assert all(0.0 <= float(r["jaccard"]) <= 1.0 and float(r["images_per_s"]) > 0 for r in rows)
    assert all(float(r["peak_mem_mb"]) > 0 for r in rows)  # measured in a fresh process, not ~0
    check_self_contained_html(out / "report.html")
    text = report_path.read_text()
    assert "- 16² input: " in text and "![pareto.png](pareto.png)" in text  # a gain, or why none
    # the paired comparison reads each cell's per-slice scores: its gain is the table's difference,
    # and a pair with a degenerate model (likely after one epoch) is left out, never scored
    (compared,) = report.read_csv(out / "comparison.csv")
    assert int(compared["n_slices"]) == len(np.loadtxt(out / "cells" / "jnet-16-seed0" / "eval" / "per_slice.csv",
                                                       delimiter=",", skiprows=1, usecols=0, ndmin=1))
    if any(r["degenerate"] for r in rows):
        assert (compared["gain"], compared["excluded"]) == ("", "1")
    else:
        means = {r["model"]: float(r["jaccard"]) for r in rows}
        assert float(compared["gain"]) == pytest.approx(means["jnet"] - means["baseline"], abs=1e-6)
    assert "## Paired comparison" in text
    cell = out / "cells" / "jnet-16-seed0" / "cell.json"
    before = json.loads(cell.read_text())

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(sweep_mod, "run_cell", no_training)
    # the table's speed: one model per row, timed side by side once the cells are done
    timed_keys = []

    def fake_bench(runs, reps, warmup, rounds=4):
        timed_keys.extend(runs)
        return {key: [{"batch": b, "images_per_s": 1234.0 + b, "latency_ms_p50": 0.5, "latency_ms_p95": 0.75,
                       "peak_rss_mb": 1.0} for b in batches] for key, (_, _, batches) in runs.items()}

    monkeypatch.setattr(bench_mod, "bench_interleaved", fake_bench)
    run_sweep(path, out, data=str(prepared), quiet=True)
    assert json.loads(cell.read_text()) == before
    assert sorted(timed_keys) == [("baseline", 16, 0, "onnx"), ("baseline", 16, 0, "torch"),
                                  ("jnet", 16, 0, "onnx"), ("jnet", 16, 0, "torch")]
    table = (out / "results.md").read_text()
    for model in ("jnet", "baseline"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {model} |"))
        assert row.count("| 1236 |") == 2 and "| 0.50 |" in row  # torch and ONNX at batch 2; latency at 1
    assert "every cell's model timed side by side" in table
    # a cell whose checkpoint no longer loads keeps its own timing, and the table says so
    from jnet.training.checkpoint import resolve

    with open(resolve(out / "cells" / "baseline-16-seed0" / "run"), "ab") as f:
        f.write(b"changed after it was written")
    timed_keys.clear()
    run_sweep(path, out, data=str(prepared), quiet=True)
    assert sorted(timed_keys) == [("jnet", 16, 0, "onnx"), ("jnet", 16, 0, "torch")]
    table = (out / "results.md").read_text()
    assert "- not timed again, so shown with their own timing: 1 cell(s) (baseline-16-seed0: " in table
    row = next(line for line in table.splitlines() if line.startswith("| baseline |"))
    assert "| 1236 |" not in row


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    from jnet.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "| baseline | 16² |" in text and "| jnet | 32² |" in text
    # the quick recipe learns: no cell predicts nothing (or everything)
    rows = report.read_csv(out / "sweep" / "results.csv")
    assert len(rows) == 7 and not [r["model"] for r in rows if r["degenerate"]]
    assert "degenerate" not in (out / "sweep" / "results.md").read_text()
    assert _is_png(out / "sweep" / "jaccard_vs_size.png") and _is_png(out / "sweep" / "samples.png")
    assert (out / "jnet.onnx").stat().st_size > 0
    check_self_contained_html(out / "report.html")
    masks = list((out / "predictions").glob("*.nii.gz"))
    assert len(masks) == 1
    import nibabel as nib

    volume = nib.load(sorted((out / "data" / "brain-wm" / "imagesTr").glob("brain_*.nii.gz"))[0])
    mask = nib.load(masks[0])
    assert mask.shape == volume.shape[:3]
    np.testing.assert_allclose(mask.affine, volume.affine, atol=1e-5)
    # A second demo into the same folder is refused rather than overwriting it.
    assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 2


@pytest.mark.slow
def test_local_launcher_runs_cells_in_parallel_processes(prepared, tmp_path):
    """--launcher local --max-parallel 2: every cell runs as a submitit job, the same rows come out
    as in-process, and a re-run submits nothing."""
    from jnet.experiments.launch import LaunchOptions
    from jnet.experiments.sweep import run_sweep

    path = _sweep_file(tmp_path, seeds=[0, 1], bench={"batch": 2, "reps": 1, "onnx": False})
    launch = LaunchOptions("local", max_parallel=2, cpus_per_task=1)
    run_sweep(path, tmp_path / "jobs-out", data=str(prepared), quiet=True, launch=launch)
    rows = {r["model"] + str(r["seed"]): r for r in report.read_csv(tmp_path / "jobs-out" / "results.csv")}
    assert len(rows) == 4 and len(list((tmp_path / "jobs-out" / "jobs").glob("*_result.pkl"))) == 4
    run_sweep(path, tmp_path / "here", data=str(prepared), quiet=True)
    for r in report.read_csv(tmp_path / "here" / "results.csv"):
        assert float(rows[r["model"] + r["seed"]]["jaccard"]) == pytest.approx(float(r["jaccard"]), abs=0.02)
    before = len(list((tmp_path / "jobs-out" / "jobs").iterdir()))
    run_sweep(path, tmp_path / "jobs-out", data=str(prepared), quiet=True, launch=launch)
    assert len(list((tmp_path / "jobs-out" / "jobs").iterdir())) == before  # nothing resubmitted
    # the table's speeds are timed side by side after the jobs; each cell's own timing (in
    # cell.json) says it ran beside another cell, and the table says so where it shows those
    own = [json.loads(f.read_text()) for f in (tmp_path / "jobs-out" / "cells").glob("*/cell.json")]
    assert len(own) == 4 and {(r["bench_threads"], r["bench_alongside"]) for r in own} == {(1, 1)}
    assert "every cell's model timed side by side" in (tmp_path / "jobs-out" / "results.md").read_text()
    assert {r["bench_alongside"] for r in report.read_csv(tmp_path / "jobs-out" / "results.csv")} == {"0"}
    run_sweep(path, tmp_path / "jobs-out", data=str(prepared), quiet=True, launch=launch,
              overrides=["bench.side_by_side=false"])
    note = ("- speed columns of 4 of 4 cells were timed while up to 1 other cell(s) ran on the same "
            "machine, with 1 torch thread(s) each")
    assert note in (tmp_path / "jobs-out" / "results.md").read_text()
    assert "speed columns of" not in (tmp_path / "here" / "results.md").read_text()


def test_a_failed_job_is_named_and_the_others_finish(tmp_path, monkeypatch):
    from jnet.errors import JnetError
    from jnet.experiments import launch as launch_mod
    from jnet.experiments.sweep import Cell

    cells = [Cell(f"c{i}", "m", 16, i, {}) for i in range(3)]
    sweep = {"boom": "c1"}

    import sys

    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the job process cannot import tests
    monkeypatch.setattr(launch_mod, "run_cell_job", _fake_job)
    with pytest.raises(JnetError, match=r"1 of 3 cell\(s\) failed \(c1: .*DataError: broken cell"):
        launch_mod.launch_cells(cells, tmp_path, sweep, launch_mod.LaunchOptions("local", 2, cpus_per_task=1),
                                quiet=True)
    assert sorted(p.parent.name for p in tmp_path.glob("cells/*/cell.json")) == ["c0", "c2"]


def _fake_job(cell, cell_dir, sweep, threads, alongside):
    from jnet.errors import DataError
    from jnet.utils.atomic import write_json

    if cell.name == sweep["boom"]:
        raise DataError("broken cell")
    write_json(Path(cell_dir) / "cell.json", {"model": cell.model, "seed": cell.seed})
    return {}


def test_slurm_executor_gets_the_options(tmp_path, monkeypatch):
    from jnet.errors import ConfigError
    from jnet.experiments.launch import LaunchOptions, make_executor

    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match="--launcher slurm: no SLURM on this machine"):
        make_executor(tmp_path, LaunchOptions("slurm"))
    fake = tmp_path / "bin"  # an srun that answers: enough to build (not to submit)
    fake.mkdir()
    for tool in ("srun", "sbatch"):
        (fake / tool).write_text("#!/bin/sh\nexit 0\n")
        (fake / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))

    executor = make_executor(tmp_path, LaunchOptions("slurm", max_parallel=8, partition="gpu",
                                                     gpus_per_node=1, time_min=90, cpus_per_task=6))
    params = executor.parameters
    assert (params["partition"], params["gpus_per_node"], params["time"], params["cpus_per_task"],
            params["array_parallelism"]) == ("gpu", 1, 90, 6, 8)


def check_self_contained_html(path):
    """report.html: tables and figures inside the one file, nothing fetched from elsewhere; and,
    where a headless browser is installed, it renders the page."""
    import re
    import shutil
    import subprocess

    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page
    sources = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # no external or relative references
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser:  # CI machines with a browser load it for real
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                              path.resolve().as_uri()], capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0 and "<table>" in dom.stdout


@pytest.mark.parametrize("name", [n for n in presets.names() if n.startswith("sweeps/")])
def test_every_shipped_sweep_makes_valid_training_configs(name):
    """Each built-in sweep (the grids docs/method.md and the README quote) loads, and each of its
    cells is a training config that validates."""
    from jnet.experiments.sweep import load_sweep, make_cells
    from jnet.training.config import config_from_dict

    cells = make_cells(load_sweep(presets.locate(name)), data_path="/nowhere")
    assert cells and len({c.name for c in cells}) == len(cells)
    for cell in cells:
        config_from_dict(cell.config)
