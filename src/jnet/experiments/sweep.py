"""`jnet sweep`: the paper's grid (models x input sizes x seeds) on one prepared dataset.

Every cell not yet finished is checked first (:func:`check_cells`): one that cannot run refuses
the sweep before any cell trains. Each cell trains, evaluates at the output resolution and benches
(PyTorch eager and ONNX Runtime), then writes ``cells/<name>/cell.json``. A cell with
``cell.json`` is finished and skipped on a re-run; a cell interrupted mid-training resumes from
its last checkpoint. At the end every cell's model is timed again, side by side
(:func:`time_side_by_side`), and the rows are gathered into ``results.csv``, ``results.md``,
plots and ``report.md`` (see :mod:`jnet.experiments.report`).

Sweep config (YAML)::

    recipe: ../paper/jnet16.yaml      # training config shared by every cell (a path relative to
                                      # this file, or the config itself inline)
    overrides: [train.epochs=200]     # dotted overrides applied to the recipe
    data: {path: /data/prostate-prepared, downsample: nearest}   # merged into the recipe's data
    out_size: 256
    sizes: [16, 32]
    seeds: [0, 1, 2]
    models:                           # name -> build_model fields (merged into the recipe's model)
      jnet: {arch: jnet, head: paper}
      baseline: {arch: baseline, train_at: input}
      base-full: {arch: base, in_size: 256}   # a fixed in_size: one cell per seed, not per size
      costly: {arch: baseline, in_size: 32, seeds: [0, 1, 2]}   # its own seeds (fewer, for a costly model)
      jnet-final: {arch: jnet, loss: {weights: [0, 0, 0, 0, 1]}}   # loss/train: recipe ablations
    reference: baseline               # the model J-Net's gain is measured against
    bench: {batch: 16, reps: 10, onnx: true, side_by_side: true}   # side_by_side: see time_side_by_side
"""
from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from jnet import __version__
from jnet.errors import ConfigError, JnetError
from jnet.experiments import report
from jnet.training.config import apply_overrides, config_from_dict, to_dict
from jnet.utils.atomic import write_json, write_text

SWEEP_KEYS = ("recipe", "overrides", "data", "out_size", "sizes", "seeds", "models", "reference",
              "bench", "evaluate", "samples")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (model, input size, seed) of the grid with its full training config (plain dict)."""

    name: str
    model: str
    in_size: int
    seed: int
    config: dict


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Read a sweep YAML, resolve its recipe path and check its keys.

    Raises:
        ConfigError: unknown keys, missing models/sizes, unreadable recipe.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: sweep config not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(SWEEP_KEYS)}")
    raw = apply_overrides(raw, overrides, source=str(path))
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key(s) {', '.join(unknown)}; valid keys: {', '.join(SWEEP_KEYS)}")
    for key in ("models", "sizes"):
        if not raw.get(key):
            raise ConfigError(f"{path}: '{key}' must be a non-empty list or mapping")
    if not isinstance(raw["models"], dict):
        raise ConfigError(f"{path}: 'models' must map a model name to build_model fields")
    recipe = raw.get("recipe")
    if isinstance(recipe, dict):  # inlined, as in the sweep.yaml that `jnet demo` writes
        pass
    elif recipe is not None:
        recipe_path = (path.parent / recipe).resolve()
        try:
            raw["recipe"] = yaml.safe_load(recipe_path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: recipe {recipe_path} not found") from None
        raw["recipe_path"] = str(recipe_path)
    else:
        raw["recipe"] = {}
    raw["seeds"] = _seeds(raw.get("seeds", [0]), "seeds")
    raw.setdefault("overrides", [])
    raw.setdefault("reference", "baseline")
    raw.setdefault("bench", {})
    raw.setdefault("evaluate", {})
    raw["source"] = str(path.resolve())
    return raw


def make_cells(sweep: Mapping[str, Any], data_path: str | None = None) -> list[Cell]:
    """Expand the grid into cells with validated training configs, in a stable order.

    A model entry with its own ``in_size`` gives one cell per seed, one with its own ``seeds`` runs
    those instead of the sweep's; cells whose (model, in_size, seed) repeat are kept once.
    """
    recipe = apply_overrides(sweep["recipe"], sweep.get("overrides", []), source=sweep.get("source", "sweep"))
    data = {**(recipe.get("data") or {}), **(sweep.get("data") or {})}
    if data_path is not None:
        data["path"] = str(data_path)
    cells, seen = [], set()
    for model_name, fields in sweep["models"].items():
        fields = dict(fields or {})
        # an entry may also change the recipe's loss or train section: an ablation of the recipe
        loss_fields = dict(fields.pop("loss", None) or {})
        train_fields = dict(fields.pop("train", None) or {})
        seeds = _seeds(fields.pop("seeds", sweep["seeds"]), f"models.{model_name}.seeds")
        for size in sweep["sizes"]:
            in_size = int(fields.get("in_size", size))
            for seed in seeds:
                key = (model_name, in_size, int(seed))
                if key in seen:
                    continue
                seen.add(key)
                model = {**(recipe.get("model") or {}), **fields, "in_size": in_size}
                if sweep.get("out_size"):
                    model["out_size"] = int(sweep["out_size"])
                if model.get("arch") == "base":
                    model["out_size"] = in_size
                raw = {**recipe, "data": data, "model": model,
                       "loss": {**(recipe.get("loss") or {}), **loss_fields},
                       "train": {**(recipe.get("train") or {}), **train_fields, "seed": int(seed)}}
                config = config_from_dict(raw, source=f"{sweep.get('source', 'sweep')} [{model_name}]")
                name = f"{model_name}-{in_size}-seed{seed}"
                cells.append(Cell(name, model_name, in_size, int(seed), to_dict(config)))
    return cells


def _seeds(value: Any, field: str) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value):
        raise ConfigError(f"sweep {field}: expected a non-empty list of integer seeds, found {value!r}")
    return value


def run_cell(cell: Cell, cell_dir: Path, sweep: Mapping[str, Any], *, quiet: bool = False,
             alongside: int = 0) -> dict:
    """Train, evaluate and bench one cell; write and return its row (``cell.json``).

    ``alongside``: how many other cells may run on this machine meanwhile (``--launcher local``);
    the row records it with the torch threads, as the context of its speed columns.
    """
    import torch

    from jnet.evaluation.evaluate import evaluate
    from jnet.experiments.bench import fresh_process_peak_mb
    from jnet.training.checkpoint import load_model, resolve
    from jnet.training.config import config_from_dict
    from jnet.training.run import train

    config = config_from_dict(cell.config, source=cell.name)
    run_dir = cell_dir / "run"
    start = time.perf_counter()
    resume = (run_dir / "checkpoints" / "last.ckpt").exists()
    train(config, run_dir, resume=resume, overwrite=not resume and run_dir.exists(), quiet=quiet)
    train_time = time.perf_counter() - start

    model, info = load_model(run_dir)
    ev = sweep.get("evaluate", {})
    metrics = evaluate(model, info, config.data.path, split=ev.get("split", "test"), fold=config.data.fold,
                       out_dir=cell_dir / "eval", overwrite=True, overlays=0, quiet=quiet)
    speed = bench_cell(model, info, cell_dir, sweep.get("bench", {}))
    # the in-process growth reads ~0 after training (freed memory is reused): a fresh process
    speed["peak_mem_mb"] = fresh_process_peak_mb(resolve(run_dir), int(sweep.get("bench", {}).get("batch", 16)))
    row = {
        "model": cell.model, "in_size": cell.in_size, "out_size": int(model.out_size), "seed": cell.seed,
        "arch": info["model"].get("arch"), "base": info["model"].get("base"),
        "downsample": info.get("downsample"),
        "jaccard": metrics["jaccard"]["mean"], "dice": metrics["dice"]["mean"],
        "hd95": metrics["hd95"]["mean"], "volume_jaccard": metrics["volume_jaccard"]["mean"],
        "volume_dice": metrics["volume_dice"]["mean"],
        "hd95_undefined": metrics["hd95_undefined"], "degenerate": metrics["degenerate"] or "",
        "train_time_s": train_time, **speed,
        "bench_threads": torch.get_num_threads(), "bench_alongside": alongside,
    }
    write_json(cell_dir / "cell.json", row)
    return row


def bench_cell(model, info: Mapping, cell_dir: Path, options: Mapping[str, Any]) -> dict:
    """Speed and size of a trained model: eager PyTorch and (optionally) ONNX Runtime."""
    from jnet.experiments.bench import measure_onnx, measure_torch
    from jnet.deploy.export import inference_module
    from jnet.experiments.profiling import count_macs, count_parameters

    batch = int(options.get("batch", 16))
    reps = int(options.get("reps", 10))
    shape = (1, model.in_channels, model.in_size, model.in_size)
    # Speed and MACs of what is deployed (the folded head where there is one); params as trained.
    deployed, _ = inference_module(model)
    out = {"params": count_parameters(model), "macs": count_macs(deployed, shape)}
    out.update(measure_torch(deployed, shape, batch=batch, reps=reps))
    if options.get("onnx", True):
        from jnet.deploy.export import export_onnx

        onnx_path = cell_dir / "model.onnx"
        if not onnx_path.exists():
            export_onnx((model, dict(info)), onnx_path)
        out["onnx_images_per_s"] = measure_onnx(onnx_path, shape, batch=batch, reps=reps)["images_per_s"]
    return out


def time_side_by_side(out: Path, sweep: Mapping[str, Any], cells: Sequence[Cell],
                      rows: Sequence[dict]) -> tuple[dict[tuple[str, int, int], dict], list[str]]:
    """The speed of every finished cell's model, all timed side by side in this process once the
    cells are done (:func:`jnet.experiments.bench.bench_interleaved`). A cell's own timing came
    right after its training, at another moment than the others' (with ``--launcher`` beside other
    cells, or on another machine), too far apart for a ratio.

    A cell whose files no longer load keeps its own timing and is named in ``skipped``.

    Returns:
        ``(model, in_size, seed)`` -> the speed fields of a row: ``images_per_s`` (eager PyTorch at
        the sweep's bench batch), ``latency_p50_ms``/``latency_p95_ms`` (batch 1),
        ``onnx_images_per_s`` (where the cell has its ONNX file), ``bench_threads`` and
        ``bench_alongside`` (0); and ``skipped``: ``"cell name: error"`` per cell not timed.
    """
    import torch

    from jnet.deploy.export import inference_module
    from jnet.experiments.bench import bench_interleaved, onnx_runner, torch_runner
    from jnet.training.checkpoint import load_model

    options = sweep.get("bench", {})
    batch, reps = int(options.get("batch", 16)), int(options.get("reps", 10))
    batches = sorted({1, batch})
    finished = {(r["model"], int(r["in_size"]), int(r["seed"])) for r in rows}
    runs, skipped = {}, []
    for cell in cells:
        key = (cell.model, cell.in_size, cell.seed)
        if key not in finished:
            continue
        cell_dir = out / "cells" / cell.name
        onnx_path = cell_dir / "model.onnx"
        try:
            model, _ = load_model(cell_dir / "run")
            sample = (model.in_channels, model.in_size, model.in_size)
            runs[(*key, "torch")] = (torch_runner(inference_module(model)[0]), sample, batches)
            if options.get("onnx", True) and onnx_path.exists():
                runs[(*key, "onnx")] = (onnx_runner(onnx_path), sample, batches)
        except JnetError as e:  # the table still shows the cell, with its own timing
            runs.pop((*key, "torch"), None)
            skipped.append(f"{cell.name}: {str(e).splitlines()[0]}")
    timed = bench_interleaved(runs, reps, warmup=3) if runs else {}
    speed = {}
    for key in {k[:3] for k in timed}:
        one, many = timed[(*key, "torch")][0], timed[(*key, "torch")][-1]
        speed[key] = {"images_per_s": many["images_per_s"], "latency_p50_ms": one["latency_ms_p50"],
                      "latency_p95_ms": one["latency_ms_p95"],
                      "bench_threads": torch.get_num_threads(), "bench_alongside": 0}
        if (*key, "onnx") in timed:
            speed[key]["onnx_images_per_s"] = timed[(*key, "onnx")][-1]["images_per_s"]
    return speed, skipped


def run_sweep(sweep_path: str | Path, out: str | Path, *, data: str | None = None,
              overrides: Sequence[str] = (), quiet: bool = False, launch: Any = None) -> Path:
    """Run (or resume) every cell of a sweep, then write the tables, plots and report.

    Args:
        launch: a :class:`jnet.experiments.launch.LaunchOptions` to run the cells as submitit
            jobs (SLURM or local processes); None runs them here, one after another.

    Returns:
        The path of ``report.md``.
    """
    sweep = load_sweep(sweep_path, overrides)
    cells = make_cells(sweep, data)
    if not cells[0].config["data"].get("path"):
        raise ConfigError(f"{sweep_path}: data.path is not set; pass --data PREPARED_DIR")
    out = Path(out)
    check_cells([c for c in cells if not (out / "cells" / c.name / "cell.json").exists()])
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "sweep.yaml", yaml.safe_dump(_plain_sweep(sweep), sort_keys=False))
    if launch is not None and launch.launcher != "none":
        from jnet.experiments.launch import launch_cells

        rows = launch_cells(cells, out, sweep, launch.check(), quiet=quiet)
    else:
        rows = run_cells(cells, out, sweep, quiet=quiet)
    return write_results(out, rows, sweep, cells)


def check_cells(cells: Sequence[Cell]) -> None:
    """What training checks before it writes (:func:`jnet.training.run.check_run`), for every cell
    before the first trains or is submitted: a cell that cannot run is found at once, not hours
    into the sweep, and nothing is written.

    Raises:
        ConfigError: one line per problem, with the cells it refuses.
    """
    from jnet.training.run import check_run

    problems: dict[str, list[str]] = {}
    for cell in cells:
        try:
            check_run(config_from_dict(cell.config, source=cell.name))
        except JnetError as e:
            problems.setdefault(str(e), []).append(cell.name)
    if problems:
        raise ConfigError("sweep refused before any cell ran:\n" + "\n".join(
            f"  {', '.join(names)}: " + message.replace("\n", "\n    ") for message, names in problems.items()))


def run_cells(cells: Sequence[Cell], out: Path, sweep: Mapping[str, Any], *, quiet: bool = False) -> list[dict]:
    """Run every cell not yet finished under ``out/cells``; return all rows in cell order."""
    from tqdm.auto import tqdm

    rows = []
    bar = tqdm(cells, desc="sweep", unit="cell", disable=quiet)
    for cell in bar:
        cell_dir = Path(out) / "cells" / cell.name
        done = cell_dir / "cell.json"
        bar.set_postfix_str(cell.name)
        if done.exists():
            rows.append(json.loads(done.read_text()))
            continue
        rows.append(run_cell(cell, cell_dir, sweep, quiet=quiet))
    return rows


def _plain_sweep(sweep: Mapping) -> dict:
    return {k: v for k, v in sweep.items() if k not in ("recipe",)} | {"recipe_config": sweep.get("recipe")}


def write_results(out: Path, rows: list[dict], sweep: Mapping, cells: Sequence[Cell]) -> Path:
    """Tables, plots, the sample figure and ``report.md`` from finished cells."""
    bench = sweep.get("bench", {})
    speed, skipped = time_side_by_side(out, sweep, cells, rows) if bench.get("side_by_side", True) else ({}, [])
    # every speed column from one side-by-side timing; each cell.json keeps the cell's own
    rows = [{**row, **speed.get((row["model"], int(row["in_size"]), int(row["seed"])), {})} for row in rows]
    report.write_csv(rows, out / "results.csv")
    aggregated = report.aggregate(rows)
    table = report.markdown_table(aggregated) + report.degenerate_note(rows) + (
        report.side_by_side_note(bench, skipped) if speed or skipped else report.speed_note(rows))
    write_text(out / "results.md", table)
    report.plot_quality_vs_size(aggregated, out / "jaccard_vs_size.png")
    report.plot_pareto(aggregated, out / "pareto.png")
    figures = ["jaccard_vs_size.png", "pareto.png"]
    if write_samples(out, sweep, cells):
        figures.append("samples.png")
    comparisons = paired_comparisons(out, sweep, cells, rows)
    if comparisons:
        report.write_comparison_csv(comparisons, out / "comparison.csv")
    return write_report(out, sweep, cells, aggregated, table, figures, comparisons)


def paired_comparisons(out: Path, sweep: Mapping, cells: Sequence[Cell], rows: Sequence[dict]) -> list[dict]:
    """Each J-Net model's paired gain over the sweep's reference at every input size they share,
    seed by seed on the same test slices (:func:`jnet.evaluation.compare.paired_gain`), over the
    finished cells (those with a row)."""
    from jnet.evaluation.compare import paired_gain, read_scores

    reference = sweep.get("reference", "baseline")
    finished = {(r["model"], int(r["in_size"]), int(r["seed"])) for r in rows}
    by_key = {(c.model, c.in_size, c.seed): c for c in cells if (c.model, c.in_size, c.seed) in finished}
    results = []
    for model in sorted({c.model for c in cells if c.config["model"].get("arch") == "jnet"}):
        for size in sorted({c.in_size for c in cells if c.model == model}):
            seeds = sorted(s for (m, z, s) in by_key if m == model and z == size
                           and (reference, size, s) in by_key)
            if not seeds:
                continue
            scores = [[read_scores(out / "cells" / by_key[(m, size, s)].name / "eval") for s in seeds]
                      for m in (model, reference)]
            results.append({"model": model, "reference": reference, "in_size": size,
                            **paired_gain(*scores)})
    return results


def write_samples(out: Path, sweep: Mapping, cells: Sequence[Cell], n: int = 3) -> bool:
    """Figure of test slices at the smallest size: the input, then the reference's and J-Net's
    predictions against the ground truth on the high-resolution image, each with its Jaccard."""
    import numpy as np
    import torch

    from jnet.cache.reader import SliceDataset
    from jnet.evaluation.metrics import slice_metrics
    from jnet.evaluation.overlays import save_comparison
    from jnet.training.checkpoint import load_model
    from jnet.transforms import tasks

    reference = sweep.get("reference", "baseline")
    size = min(int(s) for s in sweep["sizes"])
    pick = {c.model: c for c in cells if c.in_size == size and c.seed == min(sweep["seeds"])}
    jnet_name = next((m for m, c in pick.items() if c.config["model"].get("arch") == "jnet"), None)
    if jnet_name is None or reference not in pick:
        return False
    try:
        models = {name: load_model(out / "cells" / pick[name].name / "run") for name in (reference, jnet_name)}
    except JnetError:  # a checkpoint changed since its cell finished: the tables still come out
        return False
    config = pick[jnet_name].config
    split = sweep.get("evaluate", {}).get("split", "test")
    dataset = SliceDataset(config["data"]["path"], split, fold=config["data"].get("fold", 0), in_size=size,
                           downsample=config["data"].get("downsample", "area"))
    prepared = dataset.prepared
    kind, classes = prepared.task["kind"], int(prepared.task["classes"])
    # The slice with the most foreground of each of the first n cases shows the boundary detail best.
    best: dict[str, tuple[int, int]] = {}
    for i in range(len(dataset)):
        _, label, meta = dataset[i]
        area = int((np.asarray(label) > 0).sum())
        case = meta.get("case_id", str(i))
        if area > best.get(case, (-1, 0))[0]:
            best[case] = (area, i)
    cases = {c["case_id"]: c for c in prepared.meta["cases"]}
    rows = []
    for _, i in sorted(best.values(), reverse=True)[:n]:
        lr, label, meta = dataset[int(i)]
        gt = tasks.masks_from_label(torch.as_tensor(label)[None], kind, classes)
        preds, scores = {}, {}
        for name, (model, _) in models.items():
            with torch.inference_mode():
                pred = tasks.masks_from_logits(model(lr[None].float()), kind)
            preds[name] = pred[0].numpy()
            scores[name] = float(slice_metrics(pred, gt, (1.0, 1.0))["jaccard"].mean())
        case = cases.get(meta["case_id"], {})
        rows.append({"label": f"{meta['case_id']} slice {int(meta['slice_index'])}", "image": lr.numpy(),
                     "high_res": np.asarray(prepared.images[int(meta["index"])], dtype=np.float32),
                     "gt": gt[0].numpy(), "preds": preds, "jaccard": scores,
                     "affine": case.get("affine"), "axis": int(case.get("axis", 2))})
    save_comparison(out / "samples.png", rows, [reference, jnet_name], tasks.structure_names(prepared.task),
                    title=f"test slices, {size}x{size} input (seed {min(sweep['seeds'])})")
    return True


def environment() -> dict:
    import torch

    return {"jnet": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads()}


def write_report(out: Path, sweep: Mapping, cells: Sequence[Cell], aggregated: list[dict],
                 table: str, figures: Sequence[str], comparisons: Sequence[dict] = ()) -> Path:
    """``report.md``: the honest summary, the table, the paired comparisons, the figures, the
    configs and the environment."""
    reference = sweep.get("reference", "baseline")
    jnet_models = sorted({c.model for c in cells if c.config["model"].get("arch") == "jnet"})
    paired = {(c["model"], c["in_size"]): c for c in comparisons}
    summary = []
    for name in jnet_models:
        summary += report.gain_summary(aggregated, name, reference, paired)
    compared = [
        "## Paired comparison", "",
        f"Gain in mean slice Jaccard over `{reference}`, seed by seed on the same test slices; the "
        "interval resamples the test cases (bootstrap, conditional on these seeds) and says how "
        "much the gain could move on other test subjects (also in `comparison.csv`).", "",
        report.comparison_table(comparisons), ""] if comparisons else []
    env = environment()
    downsample = {c.config["data"].get("downsample") for c in cells}
    own_seeds = (" (a model with seeds of its own: over those, as its `seeds` column counts)"
                 if any({c.seed for c in cells if c.model == m} != set(sweep["seeds"])
                        for m in {c.model for c in cells}) else "")
    lines = [
        "# jnet sweep report", "",
        f"Dataset: `{cells[0].config['data'].get('path')}`; low-resolution input simulated with "
        f"`{', '.join(sorted(d for d in downsample if d))}` downsampling; metrics on the "
        f"`{sweep.get('evaluate', {}).get('split', 'test')}` split at the output resolution, "
        f"mean ± std over seeds {list(sweep['seeds'])}{own_seeds}.", "",
        "## Summary (measured)", "",
        *(summary or ["- no J-Net/reference pair at a common input size in this grid."]), "",
        "## Results", "", table, "", *compared,
        "Speed: eager PyTorch and ONNX Runtime images/s at the batch size in the sweep's `bench` "
        f"section, on this machine ({env['processor']}, {env['torch_threads']} torch threads; how "
        "they were timed: the line under the table); compare ratios within this table, not with "
        "other machines.", "",
        "## Figures", "",
        *[f"![{f}]({f})" for f in figures], "",
        "## Environment", "", "```json", json.dumps(env, indent=2), "```", "",
        "## Configs", "", "Every cell's resolved config is in `cells/<cell>/run/config.yaml`; the grid:", "",
        "```yaml", yaml.safe_dump(_plain_sweep(sweep), sort_keys=False).rstrip(), "```", "",
    ]
    path = out / "report.md"
    write_text(path, "\n".join(lines))
    report.write_html(path)
    return path
