"""Sweep results as tables and plots: one row per cell in, Markdown/CSV tables and PNG figures out.

A *cell* is one (model, input size, seed) of a sweep; its row is a flat dict of measured numbers
(see :data:`ROW_FIELDS`). Rows are grouped over seeds into mean +- std. A degenerate cell (a model
that predicts nothing, or everything: :mod:`jnet.evaluation.degenerate`) is counted and named, and
its quality numbers are left out of the means: it is never shown as a score.
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from jnet.evaluation.compare import interval_text
from jnet.utils.atomic import write_text
from jnet.utils.plots import pyplot, save_png

# Identity of a cell, then what is measured for it (quality, size, speed).
KEY_FIELDS = ("model", "in_size", "out_size", "seed")
METRIC_FIELDS = (
    "volume_dice", "volume_jaccard", "jaccard", "dice", "hd95",
    "params", "macs", "images_per_s", "latency_p50_ms", "latency_p95_ms", "peak_mem_mb",
    "onnx_images_per_s", "train_time_s", "hd95_undefined",
)
QUALITY_FIELDS = ("volume_dice", "volume_jaccard", "jaccard", "dice", "hd95")
# How the speed columns were timed: torch threads, other cells running meanwhile (speed_note)
TIMING_FIELDS = ("bench_threads", "bench_alongside")
ROW_FIELDS = KEY_FIELDS + ("arch", "base", "downsample", "degenerate") + METRIC_FIELDS + TIMING_FIELDS

# How each metric is printed in the Markdown table: (header, format, scale). Per-case (volume)
# figures lead; the slice means (empty slices predicted empty count 1) follow.
_COLUMNS = {
    "volume_dice": ("case Dice %", "{:.1f}", 100.0),
    "volume_jaccard": ("vol. Jaccard %", "{:.1f}", 100.0),
    "jaccard": ("Jaccard %", "{:.1f}", 100.0),
    "dice": ("Dice %", "{:.1f}", 100.0),
    "hd95": ("HD95 mm", "{:.2f}", 1.0),
    "params": ("params", "{:,.0f}", 1.0),
    "macs": ("MMACs", "{:.1f}", 1e-6),
    "images_per_s": ("img/s torch b16", "{:.0f}", 1.0),
    "latency_p50_ms": ("latency b1 ms", "{:.2f}", 1.0),
    "peak_mem_mb": ("peak MB", "{:.0f}", 1.0),
    "onnx_images_per_s": ("img/s ORT b16", "{:.0f}", 1.0),
    "hd95_undefined": ("HD95 undef.", "{:.0f}", 1.0),
}
# Columns whose spread over seeds is worth printing (the rest are deterministic or noisy timing).
_WITH_STD = {"volume_dice", "jaccard", "dice", "hd95", "volume_jaccard"}


def _finite(values: Iterable) -> list[float]:
    out = []
    for v in values:
        if v is None or v == "":
            continue
        v = float(v)
        if math.isfinite(v):
            out.append(v)
    return out


def aggregate(rows: Sequence[dict]) -> list[dict]:
    """Group rows by (model, in_size, out_size) and average over seeds.

    Returns one dict per group with ``<metric>`` (mean), ``<metric>_std``, ``n_seeds`` and
    ``n_degenerate``, sorted by model order of first appearance, then input size. Quality metrics
    are averaged over the non-degenerate seeds only (NaN when every seed is degenerate);
    ``hd95_undefined`` is summed over seeds.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    order: dict[str, int] = {}
    for row in rows:
        order.setdefault(row["model"], len(order))
        groups[(row["model"], int(row["in_size"]), int(row["out_size"]))].append(row)
    out = []
    for (model, in_size, out_size), members in groups.items():
        healthy = [m for m in members if not m.get("degenerate")]
        agg = {"model": model, "in_size": in_size, "out_size": out_size, "n_seeds": len(members),
               "n_degenerate": len(members) - len(healthy)}
        for key in ("arch", "base", "downsample"):
            agg[key] = members[0].get(key, "")
        for field in METRIC_FIELDS:
            values = _finite(m.get(field) for m in (healthy if field in QUALITY_FIELDS else members))
            if field == "hd95_undefined":
                agg[field] = float(sum(values)) if values else float("nan")
            else:
                agg[field] = float(np.mean(values)) if values else float("nan")
            agg[f"{field}_std"] = float(np.std(values)) if len(values) > 1 else 0.0
        out.append(agg)
    out.sort(key=lambda a: (order[a["model"]], a["in_size"]))
    return out


def _cell(agg: dict, field: str) -> str:
    _, fmt, scale = _COLUMNS[field]
    value = agg.get(field, float("nan"))
    if field in QUALITY_FIELDS and agg.get("n_degenerate") and agg["n_degenerate"] == agg.get("n_seeds"):
        return "degenerate"
    if value is None or not math.isfinite(value):
        return "–"
    text = fmt.format(value * scale)
    if field in _WITH_STD and agg.get("n_seeds", 1) - agg.get("n_degenerate", 0) > 1:
        text += " ± " + fmt.format(agg.get(f"{field}_std", 0.0) * scale)
    return text


def markdown_table(aggregated: Sequence[dict], fields: Sequence[str] | None = None) -> str:
    """A Markdown table (mean ± std over seeds) that pastes into a paper or an issue."""
    fields = [f for f in (fields or _COLUMNS) if any(math.isfinite(a.get(f, float("nan"))) for a in aggregated)]
    header = ["model", "input", "output", "seeds"] + [_COLUMNS[f][0] for f in fields]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for a in aggregated:
        seeds = str(a["n_seeds"])
        if a.get("n_degenerate"):  # named, and left out of the quality means
            seeds += f" ({a['n_degenerate']} degenerate)"
        cells = [a["model"], f"{a['in_size']}²", f"{a['out_size']}²", seeds]
        cells += [_cell(a, f) for f in fields]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


COMPARISON_FIELDS = ("model", "reference", "in_size", "gain", "ci_low", "ci_high", "level", "ahead",
                     "n_pairs", "excluded", "n_cases", "n_slices", "per_seed")


def comparison_table(comparisons: Sequence[dict]) -> str:
    """Markdown: each model's paired gain over the reference at one input size (Jaccard points),
    with its interval over the test cases and the seeds it is ahead on."""
    lines = ["| model | reference | input | gain, points | interval | per seed | seeds ahead |",
             "|---|---|---|---|---|---|---|"]
    for c in comparisons:
        if c["gain"] is None:
            gain = interval = per_seed = "degenerate"
        else:
            gain = f"{100 * c['gain']:+.1f}"
            interval = interval_text(c)
            per_seed = ", ".join(f"{100 * g:+.1f}" for g in c["per_seed"])
        ahead = f"{c['ahead']} of {c['n_pairs']}" + (f" ({c['excluded']} degenerate left out)" if c["excluded"] else "")
        lines.append(f"| {c['model']} | {c['reference']} | {c['in_size']}² | {gain} | {interval} | {per_seed} | {ahead} |")
    return "\n".join(lines) + "\n"


def write_comparison_csv(comparisons: Sequence[dict], path: str | Path) -> None:
    """``comparison.csv``: one row per comparison, Jaccard as fractions, per-seed gains joined by ``;``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COMPARISON_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for c in comparisons:
        writer.writerow({**c, "per_seed": ";".join(f"{g:.6f}" for g in c["per_seed"])})
    write_text(path, buffer.getvalue())


def degenerate_note(rows: Sequence[dict]) -> str:
    """Lines under a table: which cells are degenerate, and how many HD95 values were undefined."""
    lines = [f"- degenerate, left out of the means: {r['model']}-{r['in_size']}-seed{r['seed']} "
             f"({r['degenerate']})" for r in rows if r.get("degenerate")]
    undefined = sum(int(float(r["hd95_undefined"])) for r in rows if r.get("hd95_undefined") not in (None, ""))
    lines.append(f"- HD95 undefined (exactly one mask empty), excluded from the HD95 means: {undefined} "
                 f"slice-structure values over {len(rows)} cells (column HD95 undef.: per model, all seeds)")
    return "\n" + "\n".join(lines) + "\n"


def side_by_side_note(bench: dict, skipped: Sequence[str] = ()) -> str:
    """The lines under a table whose speed columns were timed side by side
    (:func:`jnet.experiments.sweep.time_side_by_side`), naming the cells that could not be."""
    note = (f"- speed columns: every cell's model timed side by side in one process after the cells "
            f"finished (interleaved passes, {int(bench.get('reps', 10))} calls per model and batch "
            f"size), mean over seeds; each cell's `cell.json` keeps its own timing, taken after its "
            f"training\n")
    if skipped:
        note += (f"- not timed again, so shown with their own timing: {len(skipped)} cell(s) "
                 f"({'; '.join(skipped)})\n")
    return note


def speed_note(rows: Sequence[dict]) -> str:
    """A line under a table whose speed columns were timed while other cells ran on the same
    machine (``--launcher local --max-parallel N``); nothing otherwise."""
    shared = [r for r in rows if int(float(r.get("bench_alongside") or 0)) > 0]
    if not shared:
        return ""
    others = max(int(float(r["bench_alongside"])) for r in shared)
    threads = sorted({int(float(r["bench_threads"])) for r in shared if r.get("bench_threads") not in (None, "")})
    return (f"- speed columns of {len(shared)} of {len(rows)} cells were timed while up to {others} "
            f"other cell(s) ran on the same machine, with {'/'.join(map(str, threads)) or '?'} torch "
            f"thread(s) each: compare them within this sweep only, or time the models alone with "
            f"`jnet bench`\n")


def write_csv(rows: Sequence[dict], path: str | Path) -> None:
    """One line per cell, all :data:`ROW_FIELDS`, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(ROW_FIELDS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in ROW_FIELDS})
    write_text(path, buffer.getvalue())


def read_csv(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_quality_vs_size(aggregated: Sequence[dict], path: str | Path, metric: str = "jaccard") -> None:
    """Line plot: mean metric (± std band) against input size, one line per model."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(a["model"] for a in aggregated):
        pts = sorted((a["in_size"], a[metric] * 100, a[f"{metric}_std"] * 100) for a in aggregated if a["model"] == model)
        x, y, s = (np.array(v) for v in zip(*pts))
        ax.errorbar(x, y, yerr=s, marker="o", capsize=3, label=model)
    ax.set_xscale("log", base=2)
    sizes = sorted({a["in_size"] for a in aggregated})
    ax.set_xticks(sizes, [f"{s}²" for s in sizes])
    ax.set_xlabel("input resolution")
    ax.set_ylabel(f"{_COLUMNS[metric][0]} at the output resolution")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Quality against input resolution")
    save_png(fig, path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated in (speed up, quality up), sorted by speed."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(aggregated: Sequence[dict], path: str | Path, speed: str = "images_per_s") -> None:
    """Scatter of Jaccard against images/s (log x), the Pareto front drawn as a line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    usable = [a for a in aggregated if math.isfinite(a.get(speed, float("nan"))) and math.isfinite(a["jaccard"])]
    for model in dict.fromkeys(a["model"] for a in usable):
        sel = [a for a in usable if a["model"] == model]
        ax.scatter([a[speed] for a in sel], [a["jaccard"] * 100 for a in sel], label=model, s=30)
        for a in sel:
            ax.annotate(f"{a['in_size']}", (a[speed], a["jaccard"] * 100), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    if usable:
        pts = [(a[speed], a["jaccard"] * 100) for a in usable]
        front = pareto_front(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", lw=1, label="Pareto front")
        ax.legend(fontsize=8)
        ax.set_xscale("log")
    else:  # say why the plot is empty rather than leave a blank frame
        ax.text(0.5, 0.5, "no model to show:\nevery cell degenerate or not timed", ha="center",
                va="center", transform=ax.transAxes)
    ax.set_xlabel(f"{_COLUMNS.get(speed, (speed,))[0]} (log scale)")
    ax.set_ylabel("Jaccard % at the output resolution")
    ax.grid(alpha=0.3, which="both")
    ax.set_title("Quality against speed (labels: input size)")
    save_png(fig, path)


def gain_summary(aggregated: Sequence[dict], model: str = "jnet", reference: str = "baseline",
                 paired: dict | None = None) -> list[str]:
    """One sentence per input size: the measured Jaccard gain of ``model`` over ``reference``, with
    the paired interval over the test cases where ``paired[(model, in_size)]`` holds one
    (:func:`jnet.evaluation.compare.paired_gain`)."""
    by_key = {(a["model"], a["in_size"]): a for a in aggregated}
    lines = []
    for (name, size), a in sorted(by_key.items(), key=lambda kv: kv[0][1]):
        if name != model or (reference, size) not in by_key:
            continue
        b = by_key[(reference, size)]
        if not (math.isfinite(a["jaccard"]) and math.isfinite(b["jaccard"])):
            lines.append(f"- {size}² input: no gain measured: every seed of "
                         f"{model if not math.isfinite(a['jaccard']) else reference} is degenerate.")
            continue
        gain = (a["jaccard"] - b["jaccard"]) * 100
        spread = math.hypot(a["jaccard_std"], b["jaccard_std"]) * 100
        if a["n_seeds"] > 1 and b["n_seeds"] > 1:
            verdict_spread = f"seed spread ±{spread:.1f}: "
        else:
            verdict_spread = ""
        if min(a["n_seeds"], b["n_seeds"]) < 2:
            verdict = "one seed: no spread measured, treat as indicative"
        else:
            verdict = verdict_spread + ("within the seed spread" if abs(gain) <= spread else ("better" if gain > 0 else "worse"))
        result = (paired or {}).get((name, size))
        if result and result["ci_low"] is not None:
            verdict += f"; {interval_text(result)}"
        speed = ""
        if math.isfinite(a["images_per_s"]) and math.isfinite(b["images_per_s"]) and b["images_per_s"] > 0:
            speed = f"; speed {a['images_per_s'] / b['images_per_s']:.2f}x of {reference}"
        lines.append(
            f"- {size}² input: {model} {a['jaccard'] * 100:.1f}% vs {reference} {b['jaccard'] * 100:.1f}% "
            f"Jaccard ({gain:+.1f} points; {verdict}){speed}."
        )
    return lines


_HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.55rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead { background: #f2f2f2; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5rem 0; }
pre { background: #f6f6f6; padding: 0.75rem; overflow-x: auto; font-size: 0.8rem; }
code { font-size: 0.9em; }
"""


def write_html(markdown_path: str | Path) -> Path:
    """``report.html`` beside ``report.md``: the same content as one self-contained file (figures
    inlined as data URIs, no external references), to open in any browser or send as is."""
    import base64
    import html
    import re

    import markdown

    markdown_path = Path(markdown_path)
    body = markdown.markdown(markdown_path.read_text(), extensions=["tables", "fenced_code"])

    def inline(match: re.Match) -> str:
        src = html.unescape(match.group(2))
        image = markdown_path.parent / src
        if re.match(r"^[a-z]+:", src) or not image.is_file():
            return match.group(0)
        data = base64.b64encode(image.read_bytes()).decode("ascii")
        return f'{match.group(1)}"data:image/png;base64,{data}"'

    body = re.sub(r'(<img[^>]*?src=)"([^"]+)"', inline, body)
    title = next((line[2:].strip() for line in markdown_path.read_text().splitlines()
                  if line.startswith("# ")), "jnet report")
    page = (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_HTML_STYLE}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")
    path = markdown_path.with_suffix(".html")
    write_text(path, page)
    return path
