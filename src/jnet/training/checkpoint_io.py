"""The run's Lightning checkpoint plugin: atomic saves, checksums in the manifest.

Kept apart from :mod:`jnet.training.checkpoint` so that loading a model needs no Lightning.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from jnet.training.checkpoint import MANIFEST, recorded_checksums
from jnet.utils.atomic import atomic_write, write_json


def _write(f: Any, data: bytes) -> None:  # one name for tests that simulate a full disk
    f.write(data)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint plugin: atomic saves in the target's own folder, checksums recorded.

    Lightning's own save goes through a temporary file in the system temp dir and then copies it,
    which is not atomic when the run directory is on another filesystem. The checkpoint is
    serialised in memory first: torch.save onto a full disk raises a RuntimeError that does not
    say why, a plain write an OSError that does.

    Args:
        run_dir: the run directory whose ``manifest.json`` gets the checksums.
    """

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.checksums = recorded_checksums(self.run_dir)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("storage_options are not supported by jnet's checkpoint writer")
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()
        with atomic_write(path, "wb", "checkpoint") as f:  # OutputError naming path, not the temp file
            _write(f, data)
        self._record(path, hashlib.sha256(data).hexdigest())

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        self._record(Path(path), None)

    def _record(self, path: Path, digest: Optional[str]) -> None:
        try:
            key = path.resolve().relative_to(self.run_dir.resolve()).as_posix()
        except ValueError:
            return  # saved outside the run (Trainer.save_checkpoint elsewhere): nothing to record
        if digest is None:
            self.checksums.pop(key, None)
        else:
            self.checksums[key] = digest
        manifest_path = self.run_dir / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            return  # no manifest yet (a save outside jnet.train): the checksum lives in memory
        manifest["checksums"] = dict(sorted(self.checksums.items()))
        write_json(manifest_path, manifest)
