"""Training: the LightningModule, `train()` run directories, determinism, resume and refusals.

Data: a tiny slice cache written by hand per docs/design.md (4 cases x 4 slices of 64x64, a bright
disk to segment), trained at 16 -> 64 with width-4 models, so every run takes seconds.
"""
from __future__ import annotations

import csv
import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import TASKS, tiny, write_cache

from jnet.errors import ConfigError, DataError, JnetError
from jnet.training.config import config_from_dict, load_config


def last_state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def read_epoch(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["epoch"]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_cache(tmp_path_factory.mktemp("data") / "cache")


@pytest.fixture(scope="module")
def reference_run(cache, tmp_path_factory) -> Path:
    """Two epochs, seed 0: the run the determinism and resume tests compare against."""
    from jnet.training.run import train

    return train(config_from_dict(tiny(cache)), tmp_path_factory.mktemp("runs") / "ref", quiet=True)


# --- the module --------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("kind, channels, model", [
    ("binary", ("T2",), {"arch": "jnet"}),
    ("binary", ("T2",), {"arch": "jnet", "head": "subpixel"}),
    ("binary", ("T2",), {"arch": "baseline", "train_at": "input"}),
    ("multiclass", ("T2", "ADC"), {"arch": "jnet"}),
    ("regions", ("FLAIR", "T1", "T1ce", "T2"), {"arch": "jnet", "head": "chain"}),
], ids=["jnet", "subpixel", "baseline", "multiclass", "regions"])
def test_training_steps_lower_the_loss(tmp_path, kind, channels, model):
    from jnet.training.datamodule import PreparedDataModule
    from jnet.training.module import JNetModule, make_optimizer
    from jnet.training.run import read_prepared, fill_from_cache

    cache = write_cache(tmp_path / "cache", kind=kind, channels=channels)
    config = config_from_dict(tiny(cache, model, lr=3e-2, optimizer="adam"))
    root, prepared = read_prepared(config)
    config = fill_from_cache(config, prepared, root)
    assert config.model["in_channels"] == len(channels)
    assert config.model["classes"] == TASKS[kind]["classes"]
    torch.manual_seed(0)
    module = JNetModule(config, prepared).train()
    data = PreparedDataModule(root, 16, batch_size=8, augment=False)
    batch = next(iter(data.train_dataloader()))
    optimizer = make_optimizer(module.parameters(), config.train)
    losses = []
    for step in range(10):
        optimizer.zero_grad()
        loss = module.training_step(batch, step)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


def test_slice_jaccard_by_hand():
    from jnet.training.module import slice_jaccard

    label = torch.zeros(3, 4, 4, dtype=torch.uint8)
    label[0, :2, :2] = 1  # 4 pixels
    logits = torch.full((3, 1, 4, 4), -5.0)
    logits[0, 0, :2, :3] = 5.0  # 6 predicted, 4 overlap -> 4/6
    logits[1, 0, 0, 0] = 5.0  # predicted on an empty slice -> 0
    # slice 2: both empty -> 1
    iou = slice_jaccard(logits, label, "binary", 1)
    assert iou.shape == (3, 1)
    assert iou[:, 0].tolist() == pytest.approx([4 / 6, 0.0, 1.0])
    # logits at half resolution are upsampled to the label's size before thresholding
    small = torch.full((1, 1, 2, 2), -5.0)
    small[0, 0, 0, 0] = 5.0
    assert slice_jaccard(small, label[:1], "binary", 1).item() == pytest.approx(1.0)


def test_multiclass_jaccard_per_structure():
    from jnet.training.module import slice_jaccard

    label = torch.tensor([[[0, 1], [2, 2]]], dtype=torch.uint8)
    logits = torch.nn.functional.one_hot(torch.tensor([[[0, 1], [2, 1]]]), 3).permute(0, 3, 1, 2).float()
    iou = slice_jaccard(logits, label, "multiclass", 3)  # PZ: 1/2, TZ: 1/2
    assert iou.shape == (1, 2) and iou[0].tolist() == pytest.approx([0.5, 0.5])


def test_lr_schedule_warmup_cosine_and_step():
    from jnet.training.config import TrainConfig
    from jnet.training.module import lr_factor

    cosine = lr_factor(TrainConfig(lr=1.0, scheduler="cosine", warmup=1, min_lr=0.1), 10, 100)
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(99) == pytest.approx(0.1, abs=1e-3)
    step = lr_factor(TrainConfig(lr=1.0, scheduler="step", step_size=2, gamma=0.5), 10, 100)
    assert [step(0), step(19), step(20), step(45)] == [1.0, 1.0, 0.5, 0.25]
    assert lr_factor(TrainConfig(scheduler="none"), 10, 100) is None


# --- runs ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_directory(reference_run, cache):
    from jnet.training.rundir import data_fingerprint

    run = reference_run
    config = load_config(run / "config.yaml")
    assert config.data.path == str(cache.resolve())
    assert (config.model["in_channels"], config.model["classes"], config.model["out_size"]) == (1, 1, 64)
    manifest = json.loads((run / "manifest.json").read_text())
    assert {"jnet", "torch", "monai", "lightning"} <= set(manifest["versions"])
    assert manifest["data"]["fingerprint"] == data_fingerprint(cache)
    assert manifest["seed"] == 0 and manifest["epochs_done"] == 2
    assert [s["status"] for s in manifest["sessions"]] == ["finished"]
    assert manifest["best"]["checkpoint"] == "checkpoints/best.ckpt"
    assert 0.0 <= manifest["best"]["val_jaccard"] <= 1.0
    info = json.loads((run / "info.json").read_text())
    assert {"model", "task", "channels", "size", "downsample", "normalisation", "jnet_version"} <= set(info)
    assert info["model"]["in_size"] == 16 and info["size"] == 64 and info["channels"] == ["T2"]
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    with open(run / "logs" / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    scores = [float(r["val/jaccard"]) for r in rows if r.get("val/jaccard")]
    assert len(scores) == 2 and max(scores) == pytest.approx(manifest["best"]["val_jaccard"])
    assert any(r.get("train/loss_step") for r in rows)
    assert list((run / "logs" / "tb" / "version_0").glob("events.out.tfevents.*"))
    # the lock was released
    with open(run / ".lock") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.mark.slow
def test_same_seed_same_weights_other_seed_differs(reference_run, cache, tmp_path, capsys):
    from jnet.cli import main
    from jnet.training.run import train

    again = train(config_from_dict(tiny(cache)), tmp_path / "again", quiet=True)
    assert_same_state(last_state(reference_run), last_state(again))

    # the CLI, with another seed as an override
    config = reference_run / "config.yaml"
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "seed1"), "--quiet",
                 "train.seed=1"]) == 0
    out = capsys.readouterr().out
    assert f"run directory: {tmp_path / 'seed1'}" in out
    assert "best checkpoint: " in out and "best val Jaccard: " in out
    a, b = last_state(reference_run), last_state(tmp_path / "seed1")
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


PAUSE_AFTER_FIRST_EPOCH = """
import pathlib, sys, time
import jnet.training.module as M
import jnet.training.run as T
from jnet.training.config import config_from_dict

run = {run!r}
original = M.EpochSeed.on_train_epoch_start
def pause(self, trainer, module):
    if trainer.current_epoch == 1:  # last.ckpt of epoch 0 is on disk: wait to be killed
        pathlib.Path(run + ".paused").touch()
        time.sleep(300)
    original(self, trainer, module)
M.EpochSeed.on_train_epoch_start = pause
T.train(config_from_dict({raw!r}), run, quiet=True)
"""


@pytest.mark.slow
def test_killed_then_resumed_reaches_the_same_weights(reference_run, cache, tmp_path):
    from jnet.training.run import train

    raw, run = tiny(cache), str(tmp_path / "cut")
    script = textwrap.dedent(PAUSE_AFTER_FIRST_EPOCH.format(run=run, raw=raw))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not Path(run + ".paused").exists():
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the child never finished its first epoch"
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert read_epoch(Path(run)) == 0

    with pytest.raises(ConfigError, match="not empty.*--resume"):
        train(config_from_dict(raw), run, quiet=True)
    train(config_from_dict(raw), run, resume=True, quiet=True)
    assert_same_state(last_state(reference_run), last_state(Path(run)))
    sessions = json.loads((Path(run) / "manifest.json").read_text())["sessions"]
    assert [(s["status"], s["resumed"]) for s in sessions] == [("killed", False), ("finished", True)]
    assert sorted(p.name for p in (Path(run) / "logs" / "csv").iterdir()) == ["version_0", "version_1"]


class CtrlC(L.Callback):
    """Presses Ctrl+C when the second epoch starts."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_ctrl_c_is_recorded_and_resumable(reference_run, cache, tmp_path):
    from jnet.training.run import train

    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(config_from_dict(tiny(cache)), tmp_path / "run", quiet=True, callbacks=[CtrlC()])
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning's SIG_IGN is undone
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [s["status"] for s in manifest["sessions"]] == ["interrupted"]
    train(config_from_dict(tiny(cache)), tmp_path / "run", resume=True, quiet=True)
    assert_same_state(last_state(reference_run), last_state(tmp_path / "run"))


@pytest.mark.slow
def test_disk_full_names_the_checkpoint_and_keeps_the_last_good_one(cache, tmp_path, monkeypatch):
    """RELIABILITY 33 (without a mount): the third save writes half a file, then the disk is full."""
    import errno

    import jnet.training.checkpoint_io as checkpoint_io
    from jnet.training.checkpoint import load_model
    from jnet.training.run import train

    real, saved = checkpoint_io._write, []

    def full_after_two(f, data):  # epoch 0 writes best + last, then the disk is full
        if len(saved) >= 2:
            f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(f)
        real(f, data)

    monkeypatch.setattr(checkpoint_io, "_write", full_after_two)
    with pytest.raises(JnetError, match=r"checkpoints/(best|last)\.ckpt: cannot write the checkpoint "
                                        r"\(No space left on device"):
        train(config_from_dict(tiny(cache)), tmp_path / "run", quiet=True)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["sessions"][-1]["status"] == "failed"
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    _, info = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt")  # checksum verified too
    assert read_epoch(tmp_path / "run") == 0 and info["size"] == 64


@pytest.mark.slow
def test_resume_refuses_a_changed_config(reference_run, cache):
    from jnet.training.run import train

    before = (reference_run / "manifest.json").read_bytes()
    with pytest.raises(ConfigError, match=r"--resume: the config differs .* in model\.width"):
        train(config_from_dict(tiny(cache, {"width": 8})), reference_run, resume=True, quiet=True)
    assert (reference_run / "manifest.json").read_bytes() == before


# --- refusals -----------------------------------------------------------------------------------------


def test_non_empty_dir_is_refused_and_left_alone(cache, tmp_path, monkeypatch):
    import jnet.training.run as run

    def no_trainer(*args, **kwargs):
        raise AssertionError("the refusal must come before Lightning starts")

    monkeypatch.setattr(run, "_trainer", no_trainer)
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"not empty \(found notes\.txt\).*--resume.*--overwrite"):
        run.train(config_from_dict(tiny(cache)), out, quiet=True)
    with pytest.raises(ConfigError, match="not a jnet run directory"):
        run.train(config_from_dict(tiny(cache)), out, overwrite=True, quiet=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_only_a_run_dir(tmp_path):
    from jnet.training.rundir import claim

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.yaml").write_text("{}\n")
    (out / "checkpoints" / "last.ckpt").write_text("x")
    claim(out, overwrite=True).release()
    assert [p.name for p in out.iterdir()] == [".lock"]


def test_nothing_to_resume(cache, tmp_path):
    from jnet.training.run import train

    with pytest.raises(ConfigError, match="nothing to resume.*last.ckpt"):
        train(config_from_dict(tiny(cache)), tmp_path / "run", resume=True, quiet=True)
    assert not (tmp_path / "run").exists()


def test_lock_held_by_another_process(cache, tmp_path):
    from jnet.training.run import train

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(out / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        start = time.monotonic()
        with pytest.raises(JnetError, match=r"in use by another jnet run \(lock file .*\.lock is held"):
            train(config_from_dict(tiny(cache)), out, quiet=True)
        assert time.monotonic() - start < 30  # fails at once rather than waiting for the lock
    finally:
        holder.kill()
        holder.wait()
    assert [p.name for p in out.iterdir()] == [".lock"]


def test_unwritable_out_dir(cache, tmp_path):
    from jnet.training.rundir import claim
    from jnet.training.run import train

    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    with pytest.raises(ConfigError, match=r"out dir .*file/run: cannot create it"):
        train(config_from_dict(tiny(cache)), blocker / "run", quiet=True)
    if os.geteuid() != 0:  # root writes anywhere: the permission case needs a normal user
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        with pytest.raises(ConfigError, match="not writable"):
            claim(locked / "run")


@pytest.mark.parametrize("data, model, pattern", [
    ({"path": None}, {}, r"data\.path: not set"),
    ({"path": "/nonexistent/cache"}, {}, r"data\.path: /nonexistent/cache does not exist"),
    ({"task": "regions"}, {}, r"data\.task: the config expects a 'regions' task, but the cache .* 'binary'"),
    ({"channels": ["T2", "ADC"]}, {}, r"data\.channels: the config expects \['T2', 'ADC'\], but the cache .* \['T2'\]"),
    ({}, {"in_channels": 2}, r"model\.in_channels: the config says 2, but the cache .* has 1 channels \['T2'\]"),
    ({}, {"classes": 3}, r"model\.classes: the config says 3, but the cache .* has 1 output channels"),
    ({}, {"out_size": 128}, r"model\.out_size: the config says 128, but the cache .* slices of 64x64"),
    ({}, {"widht": 4}, r"model\.widht: unknown key; did you mean 'width'"),
], ids=["unset", "missing", "task", "channels", "in_channels", "classes", "out_size", "model-key"])
def test_config_does_not_fit_the_data(cache, tmp_path, data, model, pattern):
    from jnet.training.run import train

    raw = tiny(cache, model)
    raw["data"].update(data)
    with pytest.raises(ConfigError, match=pattern):
        train(config_from_dict(raw), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def test_bad_hardware_settings_fail_before_the_run_dir(cache, tmp_path):
    from jnet.training.run import train

    raw = tiny(cache, accelerator="nonexistent-accelerator")
    with pytest.raises(ConfigError, match=r"train: Lightning refused .*accelerator='nonexistent-accelerator'"):
        train(config_from_dict(raw), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_not_a_cache_and_bad_loss_weights(cache, tmp_path):
    from jnet.training.run import train

    with pytest.raises(ConfigError, match="not a prepared slice cache"):
        train(config_from_dict(tiny(tmp_path)), tmp_path / "run", quiet=True)
    raw = tiny(cache)
    raw["loss"] = {"weights": [1, 1]}
    with pytest.raises(ConfigError, match=r"loss\.weights: expected 3 values, one per output scale"):
        train(config_from_dict(raw), tmp_path / "run", quiet=True)
    broken = write_cache(tmp_path / "broken")
    (broken / "labels.npy").write_bytes(b"")
    with pytest.raises(DataError, match="labels.npy"):
        train(config_from_dict(tiny(broken)), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_per_scale_weights_work_in_training_and_validation(cache, tmp_path):
    """Validation sees the final output only (eval mode): its loss is that output's term, whatever
    the weights of the scales in training."""
    from jnet.training.run import train

    raw = tiny(cache, epochs=1)
    raw["loss"] = {"weights": [0, 0, 1]}
    run = train(config_from_dict(raw), tmp_path / "run", quiet=True)
    rows = list(csv.DictReader(open(next(run.glob("logs/csv/*/metrics.csv")))))
    assert any(r.get("val/loss") for r in rows) and any(r.get("train/loss_epoch") for r in rows)


def test_a_degenerate_predictor_is_named_in_the_log_info_and_manifest(cache, tmp_path, caplog):
    """A model that predicts nothing on any validation slice still scores (empty slices count 1):
    training names it instead."""
    import lightning as L

    from jnet.training.checkpoint import load_model
    from jnet.training.run import train

    class Silence(L.Callback):  # the model's logits pushed far below 0: an all-empty predictor
        def on_validation_start(self, trainer, module):
            with torch.no_grad():
                module.model.base.out.bias.fill_(-1e4)

    raw = tiny(cache, {"arch": "baseline", "train_at": "output"}, epochs=2)
    with caplog.at_level("WARNING", logger="jnet.training"):
        run = train(config_from_dict(raw), tmp_path / "run", quiet=True, callbacks=[Silence()])
    assert "validation after epoch 0: degenerate: predicts no foreground on any slice" in caplog.text
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["best"]["degenerate"].startswith("degenerate: predicts no foreground")
    validation = json.loads((run / "info.json").read_text())["validation"]
    assert validation["degenerate_epochs"] == [0, 1] and validation["degenerate"]
    assert load_model(run)[1]["degenerate"] == manifest["best"]["degenerate"]  # export and predict say so
    healthy = train(config_from_dict(tiny(cache, {"head": "subpixel"}, epochs=6, lr=1e-2)), tmp_path / "ok",
                    quiet=True)
    assert json.loads((healthy / "info.json").read_text())["validation"]["degenerate"] is None
    assert "degenerate" not in load_model(healthy)[1]


def test_cli_refusals(tmp_path, capsys):
    from jnet.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", "x.yaml", "--out", str(tmp_path / "r"), "--resume", "--overwrite"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "r")]) == 2  # the built-in default, but no data
    assert "data.path: not set" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_head_learning_rate_scale():
    from jnet.models import build_model
    from jnet.training.config import TrainConfig
    from jnet.training.module import make_optimizer, param_groups

    train = TrainConfig(lr=2e-3, head_lr_scale=5.0, optimizer="adamw")
    jnet = build_model(head="subpixel", width=4, in_size=16, out_size=64)
    groups = make_optimizer(param_groups(jnet, train), train).param_groups
    assert [g["lr"] for g in groups] == [2e-3, 1e-2]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in jnet.head.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(jnet.parameters()))
    baseline = build_model(arch="baseline", width=4, in_size=16, out_size=64)
    assert len(param_groups(baseline, train)) == 1  # no head: one group at lr
    with pytest.raises(ConfigError, match="train.head_lr_scale: expected a number > 0"):
        param_groups(jnet, TrainConfig(head_lr_scale=0.0))


@pytest.mark.slow
def test_run_directory_gets_curves_png(reference_run):
    from PIL import Image

    from jnet.training.curves import read_epochs

    epochs = read_epochs(reference_run)
    assert sorted(epochs) == [0, 1]
    assert all({"train/loss_epoch", "val/loss", "val/jaccard"} <= set(v) for v in epochs.values())
    with Image.open(reference_run / "curves.png") as image:
        assert image.format == "PNG" and image.size[0] > 600


@pytest.mark.slow
def test_ema_weights_are_what_checkpoints_hold_and_a_resume_continues_them(cache, tmp_path):
    """train.ema: checkpoints hold the averaged weights (the model evaluate and predict load), the
    optimiser's own ones beside them; interrupted and resumed, the run ends with the same average."""
    from jnet.training.checkpoint import load_model
    from jnet.training.run import train

    raw = tiny(cache, ema=0.5)
    straight = train(config_from_dict(raw), tmp_path / "straight", quiet=True)
    ckpt = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    averaged, current = ckpt["state_dict"], ckpt["current_model_state"]
    assert averaged.keys() == current.keys()
    assert any(not torch.equal(averaged[k], current[k]) for k in averaged)
    model, _ = load_model(straight / "checkpoints" / "last.ckpt")
    assert_same_state({f"model.{k}": v for k, v in model.state_dict().items()}, averaged)

    with pytest.raises(KeyboardInterrupt):
        train(config_from_dict(raw), tmp_path / "cut", quiet=True, callbacks=[CtrlC()])
    train(config_from_dict(raw), tmp_path / "cut", resume=True, quiet=True)
    assert_same_state(last_state(straight), last_state(tmp_path / "cut"))


@pytest.mark.parametrize("ema", [0, 1, 1.5, True])
def test_ema_decay_out_of_range_is_refused(cache, tmp_path, ema):
    from jnet.training.run import train

    with pytest.raises(ConfigError, match="train.ema: expected a (value between 0 and 1|number)"):
        train(config_from_dict(tiny(cache, ema=ema)), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_training_drops_lightnings_advert_and_keeps_its_other_messages():
    import logging

    from jnet.training.run import _process_state

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    handler = Keep(logging.INFO)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    advert = "💡 Tip: try installing [litlogger](https://pypi.org/project/litlogger/)"
    try:
        with _process_state(quiet=False):
            logger.info(advert)
            logger.info("GPU available: False, used: False")
        logger.info(advert)  # outside training the filter is gone again
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert records == ["GPU available: False, used: False", advert]
