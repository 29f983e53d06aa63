"""Checkpoints: round trips, safe loading and every refusal of RELIABILITY.md (cases 21-23)."""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from jnet.errors import CheckpointError
from jnet.training.checkpoint import (config_differences, degenerate_at_epoch, load_model, make_info, read_checkpoint,
                                     save_weights)
from jnet.training.config import config_from_dict
from conftest import tiny, write_cache

PREPARED = {"task": {"kind": "binary", "names": ["prostate"], "classes": 1, "labels": {"prostate": [1]}},
            "channels": ["T2"], "size": 64, "normalisation": {"method": "zscore-nonzero"}}


def small_model(**fields):
    from jnet.models import build_model

    torch.manual_seed(0)
    return build_model(**{"width": 4, "in_size": 16, "out_size": 64, **fields}).eval()


class Capture(L.Callback):
    """Keeps the trained model as it is when fit ends (what last.ckpt should hold)."""

    def on_fit_end(self, trainer, module):
        self.state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch run and the model's final weights as they were in memory."""
    from jnet.training.run import train

    tmp = tmp_path_factory.mktemp("ckpt")
    cache = write_cache(tmp / "cache")
    capture = Capture()
    run = train(config_from_dict(tiny(cache, epochs=1)), tmp / "run", quiet=True, callbacks=[capture])
    return run, capture.state


@pytest.mark.slow
def test_lightning_checkpoint_round_trip(trained):
    from jnet.models import build_model

    run, state = trained
    model, info = load_model(run / "checkpoints" / "last.ckpt")
    assert not model.training
    reference = build_model(**info["model"])
    reference.load_state_dict(state)
    reference.eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        out, expected = model(x), reference(x)
    assert out.shape == (3, 1, 64, 64)
    assert torch.equal(out, expected)
    assert info["task"]["kind"] == "binary" and info["channels"] == ["T2"] and info["size"] == 64
    assert info["downsample"] == "area" and info["in_size"] == 16
    assert info["config"]["train"]["epochs"] == 1


@pytest.mark.slow
def test_run_dir_loads_the_best_checkpoint(trained, tmp_path):
    run, _ = trained
    _, info = load_model(run)  # run directory -> checkpoints/best.ckpt
    assert info["model"]["width"] == 4
    ckpt = read_checkpoint(run / "checkpoints" / "best.ckpt")
    # the checkpoint's info, plus the note of its own validation where that was degenerate
    assert {**ckpt["jnet"], **({"degenerate": degenerate_at_epoch(ckpt)} if degenerate_at_epoch(ckpt) else {})} == info
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "checkpoints" / "best.ckpt").unlink()
    assert load_model(copy)[1]["model"] == info["model"]  # falls back to last.ckpt
    shutil.rmtree(copy / "checkpoints")
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        load_model(copy)


def test_save_weights_round_trip(tmp_path):
    model = small_model(head="chain")
    info = make_info(model, PREPARED, downsample="nearest")
    path = save_weights(model, info, tmp_path / "w" / "model.pt")
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary left behind
    loaded, loaded_info = load_model(path)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded_info["model"] == model.config and loaded_info["downsample"] == "nearest"


@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "text", "foreign"])
def test_broken_or_foreign_files_are_named(tmp_path, damage):
    path = tmp_path / "model.ckpt"
    save_weights(small_model(), make_info(small_model(), PREPARED, downsample="area"), path)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "random":
        path.write_bytes(os.urandom(4096))
    elif damage == "text":
        path.write_text("model: jnet\n" * 50)
    else:  # a valid torch file that is not ours
        torch.save({"weights": torch.ones(3)}, path)
    with pytest.raises(CheckpointError, match=rf"{path}: .*truncated or not a jnet checkpoint"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model(tmp_path / "nope.ckpt")


class Payload:
    """Unpickling this creates a marker file: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_untrusted_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker"
    model = small_model()
    path = tmp_path / "evil.ckpt"
    torch.save({"jnet": make_info(model, PREPARED, downsample="area"), "state_dict": model.state_dict(),
                "extra": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refused: .*\(io\.open\).*trust_pickle=True"):
        load_model(path)
    assert not marker.exists()
    # a raw pickle (the pre-zip torch format) is refused the same way
    raw = tmp_path / "evil.pkl"
    with open(raw, "wb") as f:
        pickle.dump({"extra": Payload(marker)}, f)
    with pytest.raises(CheckpointError, match="refused"):
        load_model(raw)
    assert not marker.exists()
    # only the explicit flag runs it
    loaded, _ = load_model(path, trust_pickle=True)
    assert marker.exists()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_mismatched_config_is_refused_before_loading(tmp_path, monkeypatch):
    model = small_model()
    path = save_weights(model, make_info(model, PREPARED, downsample="area"), tmp_path / "m.pt")
    built = []
    import jnet.models

    monkeypatch.setattr(jnet.models, "build_model", lambda **c: built.append(c))
    with pytest.raises(CheckpointError, match=r"differs .*head: checkpoint 'paper', expected 'chain'; "
                                              r"in_size: checkpoint 16, expected 32; width: checkpoint 4, expected 8"):
        load_model(path, expect_config={"width": 8, "in_size": 32, "head": "chain", "arch": "jnet",
                                        "classes": None})
    assert built == []  # refused before any model was built or weights loaded


def test_config_differences_only_compares_expected_fields():
    found = {"width": 4, "head": "paper", "out_size": 64}
    assert config_differences(found, {"width": 4, "out_size": None}) == []
    assert config_differences(found, {"norm": "batch"}) == ["norm: checkpoint '<absent>', expected 'batch'"]


def test_weights_that_do_not_fit_are_refused(tmp_path):
    model = small_model()
    info = make_info(small_model(width=8), PREPARED, downsample="area")  # says width 8, holds width 4
    path = save_weights(model, info, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_model(path)
