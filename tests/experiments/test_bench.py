"""`jnet bench`: model specs, backends side by side, JSON + Markdown output (no timed assertions)."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from jnet.cli import main
from jnet.deploy.export import export_onnx
from jnet.deploy.predict import STAGES
from jnet.errors import ConfigError
from jnet.experiments.bench import PeakRSS, expand_sizes, load_subject, markdown, parse_spec, run_bench

# A tiny J-Net, 16 -> 64; threads=1 keeps the shared CI cores free.
TINY = "jnet16:width=4,depth=2,out_size=64"


def test_parse_spec():
    assert parse_spec("jnet16") == {"arch": "jnet", "in_size": 16, "out_size": 256}
    assert parse_spec("base256") == {"arch": "base", "in_size": 256}
    assert parse_spec("baseline32:width=8,head_skips=false") == {
        "arch": "baseline", "in_size": 32, "out_size": 256, "width": 8, "head_skips": False}
    assert parse_spec("model.onnx") is None
    with pytest.raises(ConfigError, match="field=value"):
        parse_spec("jnet16:width")
    with pytest.raises(ConfigError, match="not a file or run dir"):
        load_subject("resnet50")
    assert expand_sizes(["jnet16:width=4", "base256"], [16, 32]) == [
        "jnet16:width=4", "jnet32:width=4", "base16", "base32"]


def test_spec_builds_the_model_it_names():
    subject = load_subject("base32:width=4,depth=2", in_channels=2)
    model = subject.model
    assert (model.config["arch"], model.in_size, model.out_size, model.in_channels) == ("base", 32, 32, 2)
    assert subject.random_weights and subject.info["channels"] == ["channel0", "channel1"]


def test_bench_side_by_side_with_end_to_end(tmp_path):
    volume = tmp_path / "vol.nii.gz"
    data = np.random.default_rng(0).normal(100, 10, (20, 24, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([0.9, 0.9, 3.0, 1.0])), str(volume))
    threads = torch.get_num_threads()
    result = run_bench([TINY, "base16:width=4,depth=2"], backends=["torch", "torch-folded", "onnxruntime"],
                       batches=[1, 2], volume=volume, reps=2, warmup=1, threads=1, progress=False)
    assert torch.get_num_threads() == threads  # the process-wide setting is given back

    rows = {(r["model"], r["backend"]): r for r in result["rows"]}
    assert set(rows) == {(TINY, "torch"), (TINY, "torch-folded"), (TINY, "onnxruntime"),
                         ("base16:width=4,depth=2", "torch"), ("base16:width=4,depth=2", "onnxruntime")}
    # a base has no head to fold: reported as skipped, not as an error
    assert [(s["model"], s["backend"]) for s in result["skipped"]] == [("base16:width=4,depth=2", "torch-folded")]
    jnet = rows[(TINY, "onnxruntime")]
    assert (jnet["in_size"], jnet["out_size"], jnet["head"], jnet["threads"]) == (16, 64, "folded", 1)
    assert rows[(TINY, "torch")]["params"] == jnet["params"] > 0
    assert rows[(TINY, "torch")]["macs"] > rows[("base16:width=4,depth=2", "torch")]["macs"] > 0
    for row in result["rows"]:
        assert [b["batch"] for b in row["batches"]] == [1, 2]
        for b in row["batches"]:
            assert b["images_per_s"] > 0 and b["latency_ms_p95"] >= b["latency_ms_p50"] > 0
            assert b["peak_rss_mb"] >= 0
        e2e = row["end_to_end"]
        assert e2e["shape"] == [20, 24, 2] and set(e2e["stages_ms"]) == set(STAGES)
        assert e2e["total_ms"] == pytest.approx(sum(e2e["stages_ms"].values()), rel=0.35)

    table = markdown(result)
    assert table.count(f"| {TINY} |") == 6  # 3 model-only rows + 3 end-to-end rows
    assert "End to end" in table and "- base16:width=4,depth=2 / torch-folded: " in table


def test_bf16_backend_runs_the_model_under_autocast():
    """torch-bf16: the same model under CPU autocast; logits come back float32, close to the FP32
    ones within bfloat16's precision, and the row says which precision ran."""
    from jnet.experiments.bench import make_predictor

    subject = load_subject("jnet16:width=4,depth=2,out_size=64,head=subpixel")
    fp32 = make_predictor(subject, "torch", threads=1)
    bf16 = make_predictor(subject, "torch-bf16", threads=1)
    x = np.random.default_rng(0).normal(size=(2, 1, 16, 16)).astype(np.float32)
    ref, low = fp32(x), bf16(x)
    assert low.dtype == np.float32 and low.shape == ref.shape == (2, 1, 64, 64)
    assert (bf16.meta.precision, fp32.meta.precision) == ("bf16", "fp32")
    assert np.abs(low - ref).max() <= 0.05 * np.abs(ref).max() + 1e-3
    assert not np.array_equal(low, ref)  # bfloat16 really ran


def test_cli_bench_writes_json_and_markdown(tmp_path, capsys):
    onnx_path = tmp_path / "m.onnx"
    model = load_subject(TINY)
    export_onnx((model.model, model.info), onnx_path)
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    code = main(["bench", TINY, str(onnx_path), "--backend", "torch,onnxruntime,int8", "--batch", "1",
                 "--reps", "2", "--warmup", "0", "--threads", "1", "--json", str(out_json), "--md", str(out_md)])
    assert code == 0
    result = json.loads(out_json.read_text())
    pairs = [(r["model"], r["backend"]) for r in result["rows"]]
    assert pairs == [(TINY, "torch"), (TINY, "onnxruntime"), (TINY, "int8"),
                     (str(onnx_path), "onnxruntime"), (str(onnx_path), "int8")]
    assert result["skipped"][0]["backend"] == "torch"  # an .onnx file has no PyTorch weights
    assert out_md.read_text() in capsys.readouterr().out
    assert main(["bench", TINY, "--backend", "tensorrt"]) == 2
    with pytest.raises(SystemExit):
        main(["bench", TINY, "--batch", "0"])


def test_peak_rss_sees_an_allocation():
    with PeakRSS() as peak:
        block = np.ones(64 * 2**20 // 8)  # 64 MB, touched
        del block
    assert peak.mb >= 0
    if peak.exact:  # Linux: the reset high-water mark saw the block even though it is freed
        assert peak.mb > 50


def test_measure_torch_and_onnx_for_the_sweep(tmp_path):
    from jnet.experiments.bench import measure_onnx, measure_torch

    subject = load_subject(TINY)
    path = tmp_path / "m.onnx"
    export_onnx((subject.model, subject.info), path)
    shape = (1, 1, 16, 16)
    for result in (measure_torch(subject.model, shape, batch=2, reps=2, warmup=0, threads=1),
                   measure_onnx(path, shape, batch=2, reps=2, warmup=0, threads=1)):
        assert set(result) == {"images_per_s", "batch", "latency_p50_ms", "latency_p95_ms", "peak_mem_mb"}
        assert result["batch"] == 2 and result["images_per_s"] > 0
        assert result["latency_p95_ms"] >= result["latency_p50_ms"] > 0


def benchmark_script(name: str):
    """A script of benchmarks/ as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_ort_shows_the_int8_kernels_that_run(capsys):
    """benchmarks/profile_ort.py: per-op shares of ONNX Runtime's own profile; the INT8 graph
    really runs integer convolutions (QLinearConv), and the FP32 one none."""
    module = benchmark_script("profile_ort")
    assert module.main([TINY, "--batch", "2", "--threads", "1"]) == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| FP32") or line.startswith("| INT8")}
    assert "QLinearConv" in rows["INT8"] and "QLinearConv" not in rows["FP32"]
    assert " Conv " in rows["FP32"]


def test_headroom_scores_upsamplers_of_the_true_fractions(tmp_path, capsys):
    """benchmarks/headroom.py: bilinear upsampling of the true fractions is exact at full size and
    loses Jaccard at 16x16; a fitted head starts as bilinear and returns full-size logits."""
    from conftest import write_cache

    module = benchmark_script("headroom")
    cache = write_cache(tmp_path / "cache", size=64)
    _, labels = module.split_arrays(str(cache), "val")
    assert labels.shape[1:] == (1, 64, 64) and labels.sum() > 0
    exact = module.bilinear_mask(module.downsample(labels, 64, "area"), 64)
    assert module.jaccard(exact, labels) == 100.0
    coarse = module.jaccard(module.bilinear_mask(module.downsample(labels, 16, "area"), 64), labels)
    assert 50.0 < coarse < 100.0
    head = module.fit_head(labels, 16, seed=0, steps=0, batch=4)  # unfitted: bilinear exactly
    with torch.no_grad():
        logits = module.upsample_with(head, module.downsample(labels, 16, "area"))
    assert logits.shape == labels.shape
    assert module.jaccard(logits > 0, labels) == pytest.approx(coarse, abs=0.5)
    assert module.main(["--data", str(cache), "--split", "val", "--seeds", "0", "--steps", "3",
                        "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "| bilinear, 16x16 | " in out and "| bilinear, 32x32 | " in out
    assert "| subpixel head, 16x16 | " in out


def test_count_decode_places_each_blocks_count_by_score():
    """headroom.count_decode: each block gets exactly its count, on its highest scores; the
    labels' own counts placed by the labels rebuild them."""
    module = benchmark_script("headroom")
    scores = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    counts = torch.tensor([[0.0, 4.0], [1.0, 16.0]]).expand(2, 1, 2, 2)
    mask = module.count_decode(scores, counts)
    blocks = mask.view(2, 2, 4, 2, 4).sum((2, 4))
    assert blocks.tolist() == [[[0, 4], [1, 16]]] * 2
    assert mask[0, 0, 7, 3] and not mask[0, 0, 7, 2]  # block (1, 0), count 1: its top score
    assert mask[0, 0, 3, 4:].all() and not mask[0, 0, 2, 4:].any()  # 4 of 16: its last row
    labels = (torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0)) > 0.6).float()
    counts = module.downsample(labels, 4, "area") * 64
    assert torch.equal(module.count_decode(labels + 0.1 * torch.rand(labels.shape), counts),
                       labels.bool())


def test_headroom_scores_a_trained_runs_own_low_resolution_output(tmp_path, capsys):
    from conftest import tiny, write_cache
    from jnet.training.config import config_from_dict
    from jnet.training.run import train

    module = benchmark_script("headroom")
    cache = write_cache(tmp_path / "cache", size=64)
    run = train(config_from_dict(tiny(cache, {"head": "subpixel"}, epochs=1)), tmp_path / "run",
                quiet=True)
    assert module.main(["--data", str(cache), "--split", "val", "--seeds", "0", "--steps", "2",
                        "--batch", "4", "--runs", str(run)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {run}")]
    labels = [r.split(": ", 1)[1].rsplit(" | ", 1)[0] for r in rows]
    assert labels[0] == "as trained" and labels[1].endswith("), bilinear")
    assert labels[2] == "its 16x16 probabilities, the head fitted on true fractions"
    assert labels[3:] == ["its placement, the true count per input pixel",
                          "its count per input pixel, the true placement"]
    assert all(0.0 <= float(r.rsplit(" | ", 1)[1].strip(" |")) <= 100.0 for r in rows)
    rmse = float(rows[1].split("RMSE ")[1].split()[0])
    assert 0.0 <= rmse <= 1.0


def test_bench_train_times_each_head_against_the_reference_style_loop(capsys):
    """benchmarks/bench_train.py: one row per input size, the reference-style loop and jnet's loop
    with each head asked for, every rate positive and each ratio the quotient of the two."""
    module = benchmark_script("bench_train")
    module.main(["--sizes", "16", "--out-size", "64", "--steps", "2", "--warmup", "1", "--width", "4",
                 "--batch", "4", "--heads", "paper", "subpixel"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 16 |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    naive, paper, paper_ratio, subpixel, subpixel_ratio = (float(c.rstrip("x")) for c in cells[1:])
    assert naive > 0 and paper > 0 and subpixel > 0
    assert paper_ratio == pytest.approx(paper / naive, abs=0.01)
    assert subpixel_ratio == pytest.approx(subpixel / naive, abs=0.01)


def test_bench_models_reports_paired_ratios_with_their_range(capsys):
    """benchmarks/bench_models.py: each ratio is the median of the per-repetition ratios, printed
    with their range, which holds it."""
    import re

    module = benchmark_script("bench_models")
    assert module.main(["--sizes", "16", "--batches", "1", "--reps", "3", "--warmup", "1",
                        "--min-time", "0.01", "--width", "4"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| 16 |"))
    ratios = re.findall(r"(\d+\.\d+)x \((\d+\.\d+)-(\d+\.\d+)\)", row)
    assert len(ratios) == 4  # default eval path, unfolded, bilinear baseline, channels last / NCHW
    for median, low, high in ratios:
        assert 0 < float(low) <= float(median) <= float(high)
    (median, low, high), = re.findall(r"(\d+\.\d+)% \((\d+\.\d+)-(\d+\.\d+)\)", row)  # the head alone
    assert 0 < float(low) <= float(median) <= float(high)


def test_bench_models_takes_image_and_logit_channels_and_the_head_width(capsys):
    """--in-channels / --classes: the models are built for them (a 3-class head writes three maps);
    --head-hidden: the subpixel head's hidden width."""
    module = benchmark_script("bench_models")
    args = ["--sizes", "16", "--batches", "1", "--reps", "1", "--warmup", "0", "--min-time", "0.01",
            "--width", "4", "--head", "subpixel"]
    assert module.main(args) == 0
    one = capsys.readouterr().out
    assert module.main(args + ["--in-channels", "2", "--classes", "3"]) == 0
    three = capsys.readouterr().out
    assert "2 image channel(s), 3 logit channel(s)" in three

    def macs(out):  # (base, J-Net) MMACs of the s = 16 row
        cells = next(line for line in out.splitlines() if line.startswith("| 16 |")).split("|")
        return float(cells[6].split()[0]), float(cells[7].split()[0])

    (base1, jnet1), (base3, jnet3) = macs(one), macs(three)
    assert base3 >= base1 and jnet3 - base3 > 2 * (jnet1 - base1)
    assert module.main(args + ["--head-hidden", "8"]) == 0
    narrow = capsys.readouterr().out
    assert "head subpixel (hidden 8)" in narrow and macs(narrow)[1] < jnet1
    assert module.main(args + ["--variant", "clean"]) == 0
    assert "clean width 4" in capsys.readouterr().out


def test_bench_nifti_reads_every_stored_form_as_nibabel_does(capsys):
    """benchmarks/bench_nifti.py: one row per stored form and compression; the readers agree
    (the script checks the values before timing them)."""
    module = benchmark_script("bench_nifti")
    assert module.main(["--shape", "12", "10", "4", "--reps", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| int16")
            or line.startswith("| float32")]
    assert len(rows) == 2 * len(module.FORMS)
    assert all(float(row.split("|")[5].strip().rstrip("x")) > 0 for row in rows)
