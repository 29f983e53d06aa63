"""Checkpoints: what they carry, safe loading, and a plain weights file.

A jnet checkpoint is a Lightning checkpoint (``checkpoints/best.ckpt``, ``last.ckpt`` in a run
directory) with one extra key, ``"jnet"``: the *info* a model needs to be used without its run::

    {"format_version": 1, "jnet_version": "0.1.0",
     "model": {...build_model config...}, "task": {...task dict...}, "channels": ["T2"],
     "size": 256, "in_size": 16, "downsample": "area", "normalisation": {...},
     "config": {...the resolved training config...}}

:func:`save_weights` writes the same info with a bare ``state_dict`` (for export and sweeps).
Lightning checkpoints also carry ``"jnet_validation"``, one entry per validation (epoch, Jaccard,
degenerate note); :func:`load_model` adds ``"degenerate"`` to the info where the validation of the
checkpoint's own epoch found a degenerate predictor, so export and predict can say so.

Loading never runs code from the file: ``torch.load(weights_only=True)`` accepts tensors and plain
containers only. A file that needs more is refused unless ``trust_pickle=True``; a truncated, empty
or foreign file is a :class:`~jnet.errors.CheckpointError` naming it.

Saving (:class:`jnet.training.checkpoint_io.AtomicCheckpointIO`, the run's Lightning plugin) writes a temporary file
in the checkpoint's own folder, fsyncs it and renames it into place, so a kill or a full disk
leaves the previous checkpoint intact. The SHA-256 of every checkpoint is recorded in the run's
``manifest.json`` (``checksums``) and checked on load: a file changed afterwards is refused
(``verify=False``, ``--no-verify``, skips the check).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from jnet import __version__
from jnet.errors import CheckpointError, ConfigError
from jnet.utils.atomic import atomic_path

FORMAT_VERSION = 1
BEST, LAST = "best.ckpt", "last.ckpt"
_NOT_OURS = "truncated or not a jnet checkpoint"
MANIFEST = "manifest.json"


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_dir_of(path: Path) -> Optional[Path]:
    """The run directory a checkpoint file belongs to (``RUN/checkpoints/X.ckpt``), if any."""
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return run if (run / MANIFEST).is_file() else None


def recorded_checksums(run_dir: Path) -> dict[str, str]:
    """``{checkpoint path relative to the run: sha256}`` from the run's manifest."""
    try:
        manifest = json.loads((run_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    sums = manifest.get("checksums") if isinstance(manifest, dict) else None
    return dict(sums) if isinstance(sums, dict) else {}


def verify_checksum(path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose bytes differ from the SHA-256 its run recorded when writing it.

    A file outside a run, or one the manifest does not list (an older run), passes unchecked.
    """
    path = Path(path).resolve()
    run = run_dir_of(path)
    if run is None:
        return
    expected = recorded_checksums(run).get(path.relative_to(run).as_posix())
    if expected is None:
        return
    found = sha256_of(path)
    if found != expected:
        raise CheckpointError(
            f"{path}: the file changed after it was written (SHA-256 {found[:12]}..., the run's "
            f"{MANIFEST} recorded {expected[:12]}...): it is corrupt or was replaced; use another "
            f"checkpoint, or pass --no-verify to load it anyway")


def make_info(model: torch.nn.Module, prepared: Mapping[str, Any], *, downsample: str,
              config: Optional[Mapping[str, Any]] = None) -> dict:
    """The ``"jnet"`` info of a model trained on a prepared slice cache.

    Args:
        model: a model from ``jnet.build_model`` (its ``.config`` is stored).
        prepared: the cache's ``prepared.json`` contents.
        downsample: the low-resolution simulation used in training (``data.downsample``).
        config: the resolved training config as plain data (stored for the record).
    """
    return {
        "format_version": FORMAT_VERSION,
        "jnet_version": __version__,
        "model": dict(model.config),
        "task": dict(prepared["task"]),
        "channels": list(prepared["channels"]),
        "size": int(prepared["size"]),
        "in_size": int(model.in_size),
        "downsample": downsample,
        "normalisation": dict(prepared.get("normalisation") or {}),
        "config": dict(config) if config is not None else None,
    }


def save_weights(model: torch.nn.Module, info: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``{"jnet": info, "state_dict": ...}`` atomically; :func:`load_model` reads it back.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"jnet": dict(info), "state_dict": state}, tmp)
    return path


def resolve(path: str | os.PathLike) -> Path:
    """The checkpoint file for ``path``: a file as is; a run directory's best, else last checkpoint."""
    path = Path(path)
    if path.is_dir():
        for folder in (path / "checkpoints", path):
            for name in (BEST, LAST):
                if (folder / name).is_file():
                    return folder / name
        raise CheckpointError(f"{path}: no checkpoint found; expected {path / 'checkpoints' / BEST} "
                              f"or {LAST} (is this a finished jnet run directory?)")
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    return path


def read_checkpoint(path: str | os.PathLike, trust_pickle: bool = False, verify: bool = True) -> dict:
    """Load a checkpoint file's contents safely (see the module docstring).

    Raises:
        CheckpointError: empty, truncated, foreign, untrusted (without ``trust_pickle``), changed
            since its run recorded its checksum (with ``verify``), or without jnet info.
    """
    path = Path(path)
    if verify:
        try:
            verify_checksum(path)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read the checkpoint ({e.strerror or e})") from e
    try:
        size = path.stat().st_size
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e.strerror or e})") from e
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes): {_NOT_OURS}")
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and _first_byte(path) != b"\x80":
        # torch.save writes a zip archive (a pickle in old versions); anything else is foreign.
        raise CheckpointError(f"{path}: {_NOT_OURS} (expected a torch zip archive, found "
                              f"{size} bytes of something else)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path) if is_zip else None
        if is_zip and not unsafe:
            raise CheckpointError(f"{path}: {_NOT_OURS} ({_first_line(e)})") from e
        if not trust_pickle:
            what = f"Python objects ({', '.join(unsafe)})" if unsafe else "a pickle"
            raise CheckpointError(
                f"{path}: refused: the file holds {what} beyond tensors and plain containers, and "
                f"loading it would run code from the file. Load it with trust_pickle=True "
                f"(--trust-pickle) only if you trust its source") from e
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:  # noqa: BLE001 - any failure here means a broken file
            raise CheckpointError(f"{path}: {_NOT_OURS} ({type(e2).__name__}: {_first_line(e2)})") from e2
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/EOFError/... for broken files
        raise CheckpointError(f"{path}: {_NOT_OURS} ({type(e).__name__}: {_first_line(e)})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("jnet"), dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: {_NOT_OURS} (no 'jnet' info and 'state_dict' in the file)")
    return ckpt


def model_state(ckpt: Mapping[str, Any]) -> dict:
    """The model's state dict from a Lightning checkpoint (keys ``model.*``) or a weights file."""
    state = ckpt["state_dict"]
    if "pytorch-lightning_version" in ckpt:
        return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    return dict(state)


def config_differences(found: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """``field: checkpoint X, expected Y`` for each field of ``expected`` (None = any) that differs."""
    lines = []
    for key in sorted(expected):
        want = expected[key]
        if want is None:
            continue
        have = found.get(key, "<absent>")
        if _normal(have) != _normal(want):
            lines.append(f"{key}: checkpoint {have!r}, expected {want!r}")
    return lines


def load_model(path: str | os.PathLike, trust_pickle: bool = False,
               expect_config: Optional[Mapping[str, Any]] = None,
               verify: bool = True) -> tuple[torch.nn.Module, dict]:
    """Build the model a checkpoint describes and load its weights.

    Args:
        path: a run directory (its best checkpoint, else the last) or a checkpoint file.
        trust_pickle: allow a checkpoint that needs full unpickling (runs code from the file).
        expect_config: build_model fields the checkpoint must match (None values match anything);
            a mismatch is refused before any weights are loaded.
        verify: check the SHA-256 its run recorded (see :func:`verify_checksum`).

    Returns:
        ``(model in eval mode on the CPU, info)``; ``info`` holds model, task, channels, size,
        in_size, downsample, normalisation, jnet_version (see the module docstring), and
        ``degenerate`` where the checkpoint's own validation found a degenerate predictor.

    Raises:
        CheckpointError: see :func:`read_checkpoint`; differing config fields (all listed); weights
            that do not fit the model.
    """
    file = resolve(path)
    ckpt = read_checkpoint(file, trust_pickle=trust_pickle, verify=verify)
    model, info = model_from_checkpoint(ckpt, file, expect_config)
    return model.eval(), info


def model_from_checkpoint(ckpt: Mapping[str, Any], file: Path,
                          expect_config: Optional[Mapping[str, Any]] = None
                          ) -> tuple[torch.nn.Module, dict]:
    """Build the model of a read checkpoint and load its weights (CheckpointError if they differ)."""
    from jnet.models import build_model

    info = dict(ckpt["jnet"])
    note = degenerate_at_epoch(ckpt)
    if note:
        info["degenerate"] = note
    config = info.get("model")
    if not isinstance(config, dict):
        raise CheckpointError(f"{file}: {_NOT_OURS} (the jnet info has no model config)")
    if expect_config is not None:
        differences = config_differences(config, expect_config)
        if differences:
            raise CheckpointError(f"{file}: the checkpoint's model config differs from the expected "
                                  f"one: {'; '.join(differences)}")
    try:
        model = build_model(**config)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{file}: cannot rebuild its model from the stored config ({e})") from e
    try:
        model.load_state_dict(model_state(ckpt), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{file}: the weights do not fit the model of its config "
                              f"({_first_line(e)})") from e
    return model, info


def degenerate_at_epoch(ckpt: Mapping[str, Any]) -> Optional[str]:
    """The degenerate note of the validation of the checkpoint's own epoch (None: healthy, or no
    record of it, as in a :func:`save_weights` file)."""
    epoch = ckpt.get("epoch")
    for entry in ckpt.get("jnet_validation") or []:
        if isinstance(entry, Mapping) and entry.get("epoch") == epoch:
            return entry.get("degenerate") or None
    return None


def _first_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(1)


def _unsafe_globals(path: Path) -> list[str]:
    """The classes/functions a zip checkpoint's pickle would import (read without unpickling)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - a broken archive: no globals to report
        return []


def _normal(value: Any) -> Any:
    # YAML lists and JSON tuples compare equal.
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _normal(v) for k, v in value.items()}
    return value


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
