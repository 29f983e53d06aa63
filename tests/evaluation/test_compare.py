"""Paired comparison of two models: the gain per seed, the interval over test cases, the CLI."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from jnet.errors import DataError
from jnet.evaluation.compare import MIN_CASES, paired_gain, read_scores


def write_eval(folder, jaccard, cases, degenerate=None, structures=("gland",), downsample="area"):
    """An evaluation folder as `jnet evaluate` writes it: per_slice.csv and metrics.json."""
    folder.mkdir(parents=True)
    with open(folder / "per_slice.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "case_id", "slice_index"]
                        + [f"{m}_{s}" for s in structures for m in ("jaccard", "dice", "hd95")])
        for i, (j, case) in enumerate(zip(jaccard, cases)):
            # written in reverse order: the reader pairs slices by index, not by row
            writer.writerow([len(cases) - 1 - i, case, i] + [j, j, ""] * len(structures))
    (folder / "metrics.json").write_text(json.dumps({"degenerate": degenerate, "downsample": downsample}))
    return read_scores(folder)


def _cases(n_cases, per_case=4):
    return [f"case_{c}" for c in range(n_cases) for _ in range(per_case)]


def test_gain_is_the_slice_mean_difference_and_the_interval_spans_the_cases(tmp_path):
    cases = _cases(10)
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.3, 0.7, len(cases))
    # the model gains 0.01 on cases 0-4 and 0.05 on cases 5-9, plus seed-specific offsets
    step = np.array([0.01 if int(c[-1]) < 5 else 0.05 for c in cases])
    model = [write_eval(tmp_path / f"m{s}", ref + step + 0.01 * s, cases) for s in range(3)]
    reference = [write_eval(tmp_path / f"r{s}", ref, cases) for s in range(3)]
    result = paired_gain(model, reference)
    assert result["per_seed"] == pytest.approx([0.03, 0.04, 0.05])
    assert result["gain"] == pytest.approx(0.04) and result["ahead"] == 3
    assert (result["n_cases"], result["n_slices"], result["n_pairs"]) == (10, 40, 3)
    # the interval lies between the all-small-gain and the all-large-gain resamples, around the gain
    assert 0.02 < result["ci_low"] < result["gain"] < result["ci_high"] < 0.06
    # the same seed gives the same interval; a model equal to its reference gains exactly nothing
    assert paired_gain(model, reference) == result
    same = paired_gain(reference, reference)
    assert (same["gain"], same["ci_low"], same["ci_high"], same["ahead"]) == (0.0, 0.0, 0.0, 0)


def test_inputs_made_in_different_ways_are_named(tmp_path):
    cases = _cases(2)
    flat = np.full(len(cases), 0.5)
    same = paired_gain([write_eval(tmp_path / "m", flat, cases)], [write_eval(tmp_path / "r", flat, cases)])
    assert same["inputs"] is None
    mixed = paired_gain([write_eval(tmp_path / "g", flat, cases, downsample="gaussian")],
                        [read_scores(tmp_path / "r")])
    assert mixed["inputs"] == {str(tmp_path / "g"): "gaussian", str(tmp_path / "r"): "area"}


def test_structures_are_averaged_per_slice(tmp_path):
    scores = write_eval(tmp_path / "e", [0.2, 0.6], ["a", "b"], structures=("pz", "tz"))
    assert scores.jaccard.tolist() == [0.6, 0.2]  # sorted by slice index
    assert scores.case.tolist() == ["b", "a"]


def test_few_cases_get_no_interval_and_degenerate_pairs_are_left_out(tmp_path):
    cases = _cases(MIN_CASES - 1)
    flat = np.full(len(cases), 0.5)
    model = [write_eval(tmp_path / "m0", flat + 0.1, cases),
             write_eval(tmp_path / "m1", flat * 0, cases, degenerate="predicts no foreground")]
    reference = [write_eval(tmp_path / f"r{s}", flat, cases) for s in range(2)]
    result = paired_gain(model, reference)
    assert result["gain"] == pytest.approx(0.1) and result["ci_low"] is None and result["ci_high"] is None
    assert (result["n_pairs"], result["excluded"]) == (1, 1)
    none_left = paired_gain(model[1:], reference[1:])
    assert none_left["gain"] is None and none_left["per_seed"] == []


def test_mismatched_evaluations_are_refused(tmp_path):
    a = write_eval(tmp_path / "a", [0.5] * 8, _cases(2))
    b = write_eval(tmp_path / "b", [0.5] * 8, _cases(4, per_case=2))  # other cases
    with pytest.raises(DataError, match="scored other slices"):
        paired_gain([a], [b])
    with pytest.raises(DataError, match="as many reference evaluations"):
        paired_gain([a, a], [a])
    with pytest.raises(DataError, match="no per_slice.csv"):
        read_scores(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "a").rename(tmp_path / "run" / "eval")  # a run folder holding its evaluation
    with pytest.raises(DataError, match=r"did you mean .*run/eval\?"):
        read_scores(tmp_path / "run")
    (tmp_path / "run" / "eval").rename(tmp_path / "a")
    (tmp_path / "a" / "per_slice.csv").write_text("index,case_id,jaccard_gland\n0,case_0,oops\n")
    with pytest.raises(DataError, match="unreadable per_slice.csv.*oops"):
        read_scores(tmp_path / "a")


def test_cli_prints_the_gain_and_writes_json(tmp_path, capsys):
    from jnet.cli import main

    cases = _cases(MIN_CASES)
    ref = np.linspace(0.2, 0.8, len(cases))
    for s in range(2):
        write_eval(tmp_path / f"m{s}", ref + 0.02, cases)
        write_eval(tmp_path / f"r{s}", ref, cases)
    out = tmp_path / "gain.json"
    code = main(["compare", str(tmp_path / "m0"), str(tmp_path / "m1"),
                 "--against", str(tmp_path / "r0"), str(tmp_path / "r1"), "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "per seed: +2.0, +2.0 points" in text and f"over the {MIN_CASES} cases +2.0 to +2.0" in text
    assert json.loads(out.read_text())["gain"] == pytest.approx(0.02)
    assert main(["compare", str(tmp_path / "m0"), "--against", str(tmp_path)]) == 2
    assert "no per_slice.csv" in capsys.readouterr().err


def test_cli_prints_each_side_as_mean_and_std_over_the_seeds(tmp_path, capsys):
    from jnet.cli import main

    cases = _cases(MIN_CASES)
    ref = np.linspace(0.2, 0.8, len(cases))  # mean 0.5
    for s, (up, down) in enumerate(((0.02, 0.0), (0.06, 0.02))):
        write_eval(tmp_path / f"m{s}", ref + up, cases)
        write_eval(tmp_path / f"r{s}", ref - down, cases)
    assert main(["compare", str(tmp_path / "m0"), str(tmp_path / "m1"),
                 "--against", str(tmp_path / "r0"), str(tmp_path / "r1")]) == 0
    text = capsys.readouterr().out
    assert "model: mean slice Jaccard 54.0 ± 2.0 % over 2 seed(s) (52.0, 56.0)" in text
    assert "reference: mean slice Jaccard 49.0 ± 1.0 % over 2 seed(s) (50.0, 48.0)" in text
    assert "per seed: +2.0, +8.0 points" in text


def test_score_intervals_bracket_the_means_over_cases():
    from jnet.evaluation.compare import score_intervals

    rng = np.random.default_rng(1)
    rows = [{"case_id": f"c{i}", "n_slices": int(n), "slice_jaccard": float(j),
             "volume_jaccard_pz": float(v), "volume_jaccard_tz": float(v) / 2,
             "volume_dice_pz": float(d), "volume_dice_tz": float(d)}
            for i, (n, j, v, d) in enumerate(zip(rng.integers(3, 9, MIN_CASES + 2), rng.uniform(0.4, 0.8, 10),
                                                 rng.uniform(0.5, 0.9, 10), rng.uniform(0.6, 0.95, 10)))]
    out = score_intervals(rows, ["pz", "tz"])
    assert (out["n_cases"], out["level"]) == (len(rows), 0.95)
    slices = sum(r["n_slices"] for r in rows)
    means = {"jaccard": sum(r["slice_jaccard"] * r["n_slices"] for r in rows) / slices,
             "volume_jaccard": np.mean([0.75 * r["volume_jaccard_pz"] for r in rows]),
             "volume_dice": np.mean([r["volume_dice_pz"] for r in rows])}
    for metric, mean in means.items():
        low, high = out[metric]
        assert low < mean < high and high - low < 0.3, metric
    assert score_intervals(rows[:MIN_CASES - 1], ["pz", "tz"]) is None
