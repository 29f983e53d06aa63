"""Faults on the disk, on resume and in batches of inputs: ../shared/RELIABILITY.md cases 33-40.

Each section names its case. Tests that need a real full or read-only filesystem mount a small
tmpfs (root only, skipped elsewhere with the reason); the same logic is also tested without a
mount by failing the write itself.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jnet.cli import main
from jnet.errors import CheckpointError, DataError, OutputError
from jnet.training.config import config_from_dict
from jnet.utils import atomic

from conftest import TASKS, tiny, write_cache


# --- shared fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_cache(tmp_path_factory.mktemp("data") / "cache")


@pytest.fixture(scope="module")
def run(cache, tmp_path_factory) -> Path:
    """A finished two-epoch run (best.ckpt, last.ckpt, checksums in its manifest)."""
    from jnet.training.run import train

    return train(config_from_dict(tiny(cache)), tmp_path_factory.mktemp("runs") / "run", quiet=True)


@pytest.fixture(scope="module")
def onnx_model(run, tmp_path_factory) -> Path:
    from jnet.deploy.export import export_onnx

    return export_onnx(run, tmp_path_factory.mktemp("onnx") / "model.onnx").path


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("vol") / "scan.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(100, 10, (64, 64, 3)).astype(np.float32), np.eye(4)), path)
    return path


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".lock"))
    return dest


def one_error_line(err: str, *expected: str) -> str:
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m", read_only: bool = False):
    """A small tmpfs at ``path`` (another filesystem than the temp dir); skip where one cannot be
    mounted (not root, no CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the same logic is tested without a mount")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path) -> None:
    """Fill the filesystem of ``folder`` up to the last byte (unbuffered: each write reaches it)."""
    with open(folder / "filler", "wb", buffering=0) as f:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * chunk)


# --- 33: checkpoint saves are atomic in the target's own directory --------------------------------------


def test_33_a_failed_checkpoint_save_keeps_the_previous_file(tmp_path, monkeypatch):
    import jnet.training.checkpoint_io as checkpoint_io

    io = checkpoint_io.AtomicCheckpointIO(tmp_path)
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(4)}, target)
    before = target.read_bytes()

    def full_mid_write(f, data):
        f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io, "_write", full_mid_write)
    with pytest.raises(OutputError, match=r"checkpoints/last\.ckpt: cannot write the checkpoint "
                                          r"\(No space left on device"):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(4)}, target)
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # no temp file left


def test_33_checkpoint_on_a_full_filesystem_of_its_own(tmp_path):
    from jnet.training.checkpoint_io import AtomicCheckpointIO

    with tmpfs(tmp_path / "disk", size="512k") as disk:
        io = AtomicCheckpointIO(disk)
        target = disk / "checkpoints" / "best.ckpt"
        io.save_checkpoint({"w": torch.ones(1000)}, target)
        before = target.read_bytes()
        with pytest.raises(OutputError, match=r"best\.ckpt: cannot write the checkpoint .*disk is full"):
            io.save_checkpoint({"w": torch.ones(1_000_000)}, target)  # 4 MB on a 512 kB disk
        assert target.read_bytes() == before
        assert [p.name for p in target.parent.iterdir()] == ["best.ckpt"]


def test_33_training_records_checksums_of_its_checkpoints(run):
    from jnet.training.checkpoint import sha256_of

    sums = json.loads((run / "manifest.json").read_text())["checksums"]
    assert set(sums) == {"checkpoints/best.ckpt", "checkpoints/last.ckpt"}
    for rel, digest in sums.items():
        assert sha256_of(run / rel) == digest


# --- 34: --resume refuses what evaluate refuses, and changes nothing --------------------------------------


def resume(run_dir: Path, capsys) -> tuple[int, str]:
    code = main(["train", "--out", str(run_dir), "--resume", "--quiet"])
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_34_resume_refuses_another_architecture_a_pickle_and_a_truncated_file(run, cache, tmp_path, capsys):
    from jnet.training.run import train

    other = train(config_from_dict(tiny(cache, {"width": 8})), tmp_path / "wide", quiet=True)
    target = copy_run(run, tmp_path / "target")
    manifest = json.loads((target / "manifest.json").read_text())
    manifest.pop("checksums")  # so that each file reaches the check that names its own fault
    (target / "manifest.json").write_text(json.dumps(manifest))
    last = target / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    cases = {
        "another width": ((other / "checkpoints" / "last.ckpt").read_bytes(), "model config differs"),
        "a pickle": (None, "refused: the file holds Python objects"),
        "a truncated file": (good[: len(good) // 2], "truncated or not a jnet checkpoint"),
    }
    for name, (payload, message) in cases.items():
        if payload is None:
            ckpt = torch.load(io_bytes(good), weights_only=True)
            ckpt["extra"] = Path("somewhere")  # a class: weights_only loading refuses it
            torch.save(ckpt, last)
        else:
            last.write_bytes(payload)
        before = (target / "manifest.json").read_bytes()
        code, err = resume(target, capsys)
        assert code == 2, name
        one_error_line(err, str(last), message)
        assert (target / "manifest.json").read_bytes() == before, name
        assert (target / "config.yaml").is_file() and not (target / ".write-test").exists()


def io_bytes(data: bytes):
    import io

    return io.BytesIO(data)


@pytest.mark.slow
def test_34_resume_refuses_a_checkpoint_changed_after_it_was_written(run, tmp_path, capsys):
    target = copy_run(run, tmp_path / "target")
    last = target / "checkpoints" / "last.ckpt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2: len(data) // 2 + 8] = b"\xff" * 8
    last.write_bytes(bytes(data))
    before = (target / "manifest.json").read_bytes()
    code, err = resume(target, capsys)
    assert code == 2
    one_error_line(err, str(last), "changed after it was written")
    assert (target / "manifest.json").read_bytes() == before


# --- 35: read-only or full output disks --------------------------------------------------------------------


def test_35_atomic_write_failure_names_the_target_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(OutputError, match=r"out\.json: cannot write the output \(No space left"):
        with atomic.atomic_write(target, "w") as f:
            f.write("new, half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_35_check_writable_reports_missing_space(tmp_path):
    with pytest.raises(OutputError, match="not enough free space"):
        atomic.check_writable(tmp_path, need_bytes=1 << 60, what="cache")
    atomic.check_writable(tmp_path, need_bytes=1, what="cache")


@pytest.mark.slow
def test_35_every_command_on_a_read_only_disk(run, cache, onnx_model, volume, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", read_only=True) as ro:
        commands = {
            "synth": ["data", "synth", str(ro / "ds"), "--cases", "2", "--quiet"],
            "prepare": ["data", "prepare", str(Path(__file__).parent), "--out", str(ro / "c"), "--quiet"],
            "train": ["train", "--config", str(run / "config.yaml"), "--out", str(ro / "run"), "--quiet"],
            "evaluate": ["evaluate", str(run), "--data", str(cache), "--split", "val", "--out", str(ro / "ev")],
            "export": ["export", str(run), "--out", str(ro / "m.onnx")],
            "predict": ["predict", str(onnx_model), str(volume), "--out", str(ro / "pred")],
        }
        for name, argv in commands.items():
            if name == "prepare":
                argv[2] = str(prostate_like(tmp_path))
            code = main(argv)
            err = capsys.readouterr().err
            assert code == 2, (name, err)
            one_error_line(err, str(ro), "Read-only file system")
        assert list(ro.iterdir()) == []


def prostate_like(tmp_path: Path) -> Path:
    src = tmp_path / "ds"
    if not src.exists():
        assert main(["data", "synth", str(src), "--cases", "2", "--size", "32", "--slices", "3",
                     "--quiet"]) == 0
    return src


@pytest.mark.slow
def test_35_every_command_on_a_full_disk_keeps_the_previous_output(run, cache, onnx_model, volume,
                                                                   tmp_path, capsys):
    src = prostate_like(tmp_path)
    capsys.readouterr()
    with tmpfs(tmp_path / "full", size="24m") as disk:
        outputs = {  # name: (argv writing into disk, the artefact to compare)
            "synth": (["data", "synth", str(disk / "ds"), "--cases", "2", "--size", "32", "--slices",
                       "3", "--quiet"], disk / "ds" / "dataset.json"),
            "prepare": (["data", "prepare", str(src), "--out", str(disk / "c"), "--size", "32",
                         "--quiet"], disk / "c" / "prepared.json"),
            "evaluate": (["evaluate", str(run), "--data", str(cache), "--split", "val", "--out",
                          str(disk / "ev")], disk / "ev" / "metrics.json"),
            "export": (["export", str(run), "--out", str(disk / "m.onnx")], disk / "m.onnx"),
            "predict": (["predict", str(onnx_model), str(volume), "--out", str(disk / "pred")],
                        disk / "pred" / "scan.nii.gz"),
        }
        for name, (argv, _) in outputs.items():
            assert main(argv) == 0, (name, capsys.readouterr().err)
        before = {name: artefact.read_bytes() for name, (_, artefact) in outputs.items()}
        fill(disk)
        capsys.readouterr()
        for name, (argv, artefact) in outputs.items():
            code = main(argv + ["--overwrite"])
            err = capsys.readouterr().err
            assert code == 2, (name, err)
            one_error_line(err, str(disk))
            # the artefact is named, never a temporary file beside it
            assert "disk is full" in err and not re.search(r"/\.[^/ ]+\.(tmp|partial)", err), err
            assert artefact.read_bytes() == before[name], name
        (disk / "filler").unlink()
        code = main(["train", "--config", str(run / "config.yaml"), "--out", str(disk / "run"), "--quiet"])
        assert code == 0  # room again: the same commands work


# --- 36: one bad input of many ----------------------------------------------------------------------------


def test_36_predict_goes_on_past_a_bad_input(onnx_model, volume, tmp_path, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(volume.read_bytes()[:200])
    second = tmp_path / "second.nii.gz"
    shutil.copy(volume, second)
    code = main(["predict", str(onnx_model), str(volume), str(bad), str(second), "--out",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"ok      {volume} ->" in err and f"ok      {second} ->" in err
    assert f"failed  {bad}: truncated" in err and f"{bad}: {bad}" not in err  # the name once
    assert "2 of 3 input(s) predicted, 1 failed" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "predictions.jsonl", "scan.nii.gz", "second.nii.gz"]
    statuses = [json.loads(line)["status"] for line in
                (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert statuses == ["ok", "failed", "ok"]


def test_36_a_failed_write_removes_that_inputs_other_outputs(onnx_model, volume, tmp_path, monkeypatch):
    import jnet.deploy.predict as predict

    def no_room(*args, **kwargs):
        raise OutputError("overlay: cannot write the output (No space left on device)")

    monkeypatch.setattr(predict, "write_overlay", no_room)
    second = tmp_path / "second.nii.gz"
    shutil.copy(volume, second)
    records = predict.predict_paths(onnx_model, [volume, second], tmp_path / "out", overlay=True)
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predictions.jsonl"]


# --- 37: hierarchical region decoding ---------------------------------------------------------------------


def test_37_every_region_combination_gets_a_label():
    from jnet.transforms.tasks import decode_label, encode_label

    task = TASKS["regions"]  # WT {1,2,4}, TC {1,4}, ET {4}: bits 1, 2, 4
    codes = np.arange(8)
    decoded = decode_label(codes, task)
    # as nnU-Net's regions_class_order (2, 1, 4): WT -> 2, then TC -> 1, then ET -> 4 on top
    assert decoded.tolist() == [0, 2, 1, 1, 4, 4, 4, 4]
    assert (decoded[1:] > 0).all()
    labels = np.array([0, 1, 2, 4])
    assert decode_label(encode_label(labels, task), task).tolist() == labels.tolist()


# --- 38: a refused training leaves no run directory ------------------------------------------------------


@pytest.mark.parametrize("fault", ["leaking splits", "bad config", "not a cache"])
def test_38_refused_training_leaves_no_run_directory(cache, tmp_path, fault, capsys):
    data = tmp_path / "cache"
    shutil.copytree(cache, data)
    raw = tiny(data)
    if fault == "leaking splits":
        splits = json.loads((data / "splits.json").read_text())
        splits["folds"][0]["val"].append(splits["folds"][0]["train"][0])
        (data / "splits.json").write_text(json.dumps(splits))
    elif fault == "bad config":
        raw["loss"]["weights"] = [1.0]
    else:
        (data / "prepared.json").unlink()
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(raw))
    out = tmp_path / "runs" / "new"
    assert main(["train", "--config", str(config), "--out", str(out), "--quiet"]) == 2
    one_error_line(capsys.readouterr().err)
    assert not out.exists()


# --- 39: stale temporary folders of a killed prepare -------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_39_stale_partials_are_removed_and_reported(tmp_path, capsys):
    import socket

    out = tmp_path / "cache"
    stale, alive, unknown = (tmp_path / f".cache.{tag}.partial" for tag in ("a1", "b2", "c3"))
    for folder, pid in ((stale, dead_pid()), (alive, os.getpid()), (unknown, None)):
        folder.mkdir()
        (folder / "images.npy").write_bytes(b"x" * 100)
        if pid is not None:
            (folder / atomic.OWNER_FILE).write_text(f"{socket.gethostname()} {pid}\n")
    with atomic.atomic_dir(out) as tmp:
        (tmp / "prepared.json").write_text("{}")
    assert not stale.exists() and alive.exists() and unknown.exists()
    assert f"removed {stale}, left by an interrupted run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["prepared.json"]  # the owner file is gone


def test_39_killed_prepare_is_cleaned_by_the_next_one(tmp_path, capsys):
    src = prostate_like(tmp_path)
    script = (f"import os, jnet.cache.build as b\n"
              f"real = b._assemble\n"
              f"def die(*a, **k):\n    os._exit(9)\n"
              f"b._assemble = die\n"
              f"b.prepare_dataset({str(src)!r}, {str(tmp_path / 'c')!r}, size=32, progress=False)\n")
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    assert len(list(tmp_path.glob(".c.*.partial"))) == 1
    assert main(["data", "prepare", str(src), "--out", str(tmp_path / "c"), "--size", "32", "--quiet"]) == 0
    assert not list(tmp_path.glob(".c.*.partial"))
    assert "left by an interrupted run" in capsys.readouterr().err


# --- 40: changed bytes are detected by the recorded checksum ------------------------------------------------


def overwrite_middle(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at:at + 8] = bytes(255 - b for b in data[at:at + 8])
    path.write_bytes(bytes(data))


def test_40_a_changed_checkpoint_is_refused(run, tmp_path):
    from jnet.training.checkpoint import load_model

    target = copy_run(run, tmp_path / "run")
    best = target / "checkpoints" / "best.ckpt"
    tensors = torch.load(best, weights_only=True)["state_dict"]
    raw = max(tensors.values(), key=torch.Tensor.numel).numpy().tobytes()
    overwrite_middle(best, best.read_bytes().find(raw) + 16)  # inside the largest weight
    with pytest.raises(CheckpointError, match=r"best\.ckpt: the file changed after it was written"):
        load_model(target)
    model, _ = load_model(target, verify=False)  # the explicit way past the check
    assert model is not None


def test_40_a_changed_onnx_file_is_refused(onnx_model, volume, tmp_path, capsys):
    import onnx

    from jnet.deploy.runtime import Predictor

    path = tmp_path / "m.onnx"
    shutil.copy(onnx_model, path)
    Predictor.from_path(path)  # sealed at export: loads
    proto = onnx.load(str(path))
    raw = max(proto.graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    overwrite_middle(path, path.read_bytes().find(raw) + 8)
    with pytest.raises(DataError, match=r"m\.onnx: the file changed after it was exported"):
        Predictor.from_path(path)
    code = main(["predict", str(path), str(volume), "--out", str(tmp_path / "out")])
    assert code == 2 and "changed after it was exported" in capsys.readouterr().err
    assert main(["predict", str(path), str(volume), "--out", str(tmp_path / "out"), "--no-verify"]) == 0


# --- the smaller faults of the same issue -------------------------------------------------------------------


def test_fixed_batch_foreign_onnx_runs_with_allow_no_metadata(volume, tmp_path, capsys):
    import onnx

    from jnet.deploy.export import onnx_bytes
    from jnet.models import build_model

    model = build_model(arch="jnet", width=4, depth=2, in_channels=1, classes=1, in_size=16, out_size=64)
    proto = onnx.load_from_string(onnx_bytes(model.eval(), 1, 16))
    for value in (proto.graph.input[0], proto.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = 1
    path = tmp_path / "fixed.onnx"
    path.write_bytes(proto.SerializeToString())
    code = main(["predict", str(path), str(volume), "--out", str(tmp_path / "out"), "--allow-no-metadata"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "jnet predict: warning:" in err and "no jnet metadata" in err and ".py:" not in err


def test_debug_keeps_exit_code_2(tmp_path, capsys):
    assert main(["--debug", "predict", str(tmp_path / "none.onnx"), str(tmp_path), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "model not found" in err


def test_constant_image_warns_in_one_plain_line(onnx_model, tmp_path, capsys):
    import nibabel as nib

    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.full((32, 32, 2), 7, np.float32), np.eye(4)), path)
    assert main(["predict", str(onnx_model), str(path), "--out", str(tmp_path / "out")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings and all(line.startswith("jnet predict: warning: ") for line in warnings)
    assert not any("UserWarning" in line or ".py:" in line for line in warnings)


def test_override_errors_name_the_override(run):
    from jnet.errors import ConfigError
    from jnet.training.config import load_config

    with pytest.raises(ConfigError, match=r"^override 'train\.epochs=x': train\.epochs: expected an integer"):
        load_config(run / "config.yaml", ["train.epochs=x"])


def test_evaluate_fold_error_names_the_option(run, cache, tmp_path, capsys):
    assert main(["evaluate", str(run), "--data", str(cache), "--split", "val", "--fold", "3",
                 "--out", str(tmp_path / "ev")]) == 2
    one_error_line(capsys.readouterr().err, "--fold: expected an integer in 0..0, found 3")


def test_truncated_nii_is_one_line(volume, tmp_path):
    import gzip

    from jnet.sources.readers import read_nifti

    path = tmp_path / "half.nii"
    raw = gzip.decompress(volume.read_bytes())
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as caught:
        read_nifti(path)
    assert "\n" not in str(caught.value) and "truncated" in str(caught.value)


def test_deleted_label_is_not_called_unlisted(msd_writer, tmp_path):
    from jnet.sources.check import check_dataset

    rng = np.random.default_rng(0)
    cases = {f"c{i}": (rng.uniform(1, 9, (8, 8, 3)).astype(np.float32), np.ones((8, 8, 3), np.uint8))
             for i in range(2)}
    root = msd_writer(tmp_path / "Task", cases)
    label = next((root / "labelsTr").iterdir())
    label.unlink()
    messages = [str(p) for p in check_dataset(root, None, None, progress=False)]
    assert any("do not exist" in m and label.name in m for m in messages), messages
    assert not any("not listed" in m for m in messages), messages
