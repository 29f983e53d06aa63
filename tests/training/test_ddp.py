"""Multi-node training for real: two torchrun "nodes" on localhost (gloo on the CPU) train one run."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny, write_cache

TORCHRUN = Path(sys.executable).with_name("torchrun")
JNET = Path(sys.executable).with_name("jnet")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def steps_and_jaccard(run: Path) -> tuple[int, float]:
    rows = list(csv.DictReader(open(run / "logs" / "csv" / "version_0" / "metrics.csv")))
    steps = max(int(r["step"]) for r in rows) + 1
    return steps, json.loads((run / "manifest.json").read_text())["best"]["val_jaccard"]


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists() or not JNET.exists(), reason="needs the torchrun and jnet console scripts beside this Python (a pip install of jnet)")
def test_two_nodes_train_one_run_like_one_process_with_the_same_global_batch(tmp_path):
    cache = write_cache(tmp_path / "cache", cases=6, slices=4)  # 5 train cases x 4 slices, 1 val
    raw = tiny(cache, epochs=3, batch_size=4)
    raw["train"]["augment"] = "none"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = free_port()
    ddp = ["train.accelerator=cpu", "train.devices=1", "train.num_nodes=2", "train.strategy=ddp"]
    nodes = [subprocess.Popen(
        [str(TORCHRUN), "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1",
         "--master-addr", "127.0.0.1", "--master-port", str(port), str(JNET), "train",
         "--config", str(config), "--out", str(tmp_path / "ddp"), "--quiet", *ddp],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = [n.communicate(timeout=600)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], logs
    assert "run directory:" in logs[0] and "run directory:" not in logs[1]  # one rank reports
    single = subprocess.run([str(JNET), "train", "--config", str(config), "--out", str(tmp_path / "one"),
                             "--quiet", "train.batch_size=8"], env=env, capture_output=True, text=True,
                            timeout=600)
    assert single.returncode == 0, single.stderr

    run = tmp_path / "ddp"
    manifest = json.loads((run / "manifest.json").read_text())
    assert len(manifest["sessions"]) == 1 and manifest["sessions"][0]["status"] == "finished"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert set(manifest["checksums"]) == {"checkpoints/best.ckpt", "checkpoints/last.ckpt"}
    assert sorted(p.name for p in (run / "logs" / "csv").iterdir()) == ["version_0"]  # one writer
    # 20 training slices: each node sees its half (10 -> 2 batches of 4, the last dropped), so
    # the two-node run takes as many steps as one process with batches of 8 (20 -> 2 batches)
    (ddp_steps, ddp_jaccard), (one_steps, one_jaccard) = steps_and_jaccard(run), steps_and_jaccard(tmp_path / "one")
    assert ddp_steps == one_steps == 3 * 2
    assert abs(ddp_jaccard - one_jaccard) < 0.15, (ddp_jaccard, one_jaccard)
