"""``curves.png`` of a run directory: losses and validation Jaccard per epoch, every session.

Read from the run's CSV logs (``logs/csv/version_N/metrics.csv``, one version per session), so a
resumed run draws its whole history. Epochs whose validation was degenerate (no foreground, or
foreground everywhere) are marked.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from jnet.utils.plots import pyplot, save_png

CURVES = "curves.png"


def read_epochs(run_dir: str | Path) -> dict[int, dict[str, float]]:
    """``{epoch: {"train/loss_epoch": .., "val/loss": .., "val/jaccard": .., "val/degenerate": ..}}``
    over every session (a later session's value for an epoch wins)."""
    epochs: dict[int, dict[str, float]] = {}
    versions = sorted(Path(run_dir, "logs", "csv").glob("version_*/metrics.csv"),
                      key=lambda p: int(p.parent.name.split("_")[-1]))
    for path in versions:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if not row.get("epoch"):
                    continue
                entry = epochs.setdefault(int(row["epoch"]), {})
                for key in ("train/loss_epoch", "val/loss", "val/jaccard", "val/degenerate"):
                    if row.get(key) not in (None, ""):
                        entry[key] = float(row[key])
    return dict(sorted(epochs.items()))


def plot_curves(run_dir: str | Path) -> Path | None:
    """Write ``RUN/curves.png``; None (nothing written) when no epoch has been logged."""
    epochs = read_epochs(run_dir)
    if not epochs:
        return None
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("train/loss_epoch", "train loss"), ("val/loss", "val loss")):
        points = [(e, v[key]) for e, v in epochs.items() if key in v and math.isfinite(v[key])]
        if points:
            left.plot(*zip(*points), marker="o", ms=3, label=label)
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    left.legend(frameon=False)
    scored = [(e, v["val/jaccard"]) for e, v in epochs.items() if "val/jaccard" in v]
    if scored:
        right.plot(*zip(*scored), marker="o", ms=3, color="tab:green", label="val Jaccard")
        bad = [(e, j) for e, j in scored if epochs[e].get("val/degenerate")]
        if bad:
            right.plot(*zip(*bad), "x", color="tab:red", ms=8, mew=2, label="degenerate")
        best = max(scored, key=lambda p: p[1])
        right.plot(*best, marker="*", ms=11, color="tab:green", mec="black", mew=0.6, ls="none")
        late = best[0] > (scored[0][0] + scored[-1][0]) / 2
        right.annotate(f"best {best[1]:.3f} (epoch {best[0]})", best, textcoords="offset points",
                       xytext=(0, -14), ha="right" if late else "left", fontsize=8)
        right.legend(frameon=False)
    right.set(xlabel="epoch", ylabel="Jaccard", title="validation Jaccard (mean over slices)",
              ylim=(0, 1))
    fig.suptitle("/".join(Path(run_dir).resolve().parts[-2:]))  # a sweep's runs are all "run"
    path = Path(run_dir) / CURVES
    save_png(fig, path)
    return path
