"""The run directory of ``jnet train``: who may use it, and what it records.

Layout::

    RUN/
      .lock            held (fcntl.flock) while a run uses the directory
      config.yaml      the resolved config (data path absolute, model fields filled from the data)
      manifest.json    versions, data fingerprint, git commit, seed, one entry per session, best score
      info.json        what a checkpoint needs to be used (model config, task, channels, sizes, ...)
      checkpoints/     best.ckpt (by val/jaccard) and last.ckpt (Lightning, written atomically)
      logs/csv/version_N/metrics.csv, logs/tb/version_N/   one version per session

Rules: a non-empty directory is refused unless resuming or overwriting; overwriting replaces only a
directory that is a jnet run (has manifest.json or config.yaml); a directory locked by another
process is refused at once; an unwritable directory fails before any work starts.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any, Optional, Sequence

from jnet import __version__
from jnet.errors import ConfigError, JnetError
from jnet.training.config import diff, dump_yaml, load_config
from jnet.utils.atomic import write_json, write_text

LOCK_NAME = ".lock"
RUN_MARKERS = ("manifest.json", "config.yaml")
# Fields that may change when a run is resumed: they do not change what one epoch computes.
RESUMABLE = ("train.epochs", "train.num_workers", "train.devices", "train.accelerator",
             "train.strategy", "train.num_nodes", "train.early_stopping", "train.log_every")


class RunLock:
    """An exclusive lock on a run directory, held from :meth:`acquire` until :meth:`release`.

    The lock file is not written atomically: flock locks an inode, and a rename would swap it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"out dir {self.path.parent}: cannot create the lock file "
                              f"{self.path.name} ({e.strerror}); expected a writable directory") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise JnetError(f"out dir {self.path.parent} is in use by another jnet run (lock file "
                            f"{self.path} is held by pid {holder}); wait for it or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def claim(run_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> RunLock:
    """Create/check the run directory and return its acquired lock (release it when the run ends).

    Args:
        run_dir: the directory (created with its parents if absent).
        resume: continue a run: the directory must hold ``checkpoints/last.ckpt``.
        overwrite: delete the previous run's files first (only in a jnet run directory).

    Raises:
        ConfigError: unwritable directory, non-empty without resume/overwrite, nothing to resume,
            overwriting a directory that is not a jnet run.
        JnetError: another process holds the lock.
    """
    check_contents(run_dir, resume=resume, overwrite=overwrite)  # before creating anything
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"out dir {run_dir}: cannot create it ({e.strerror or e}); expected a "
                          f"writable location") from e
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"out dir {run_dir}: not writable; expected a directory this user can write")
    lock = RunLock(run_dir).acquire()
    try:
        _check_and_clear(run_dir, resume=resume, overwrite=overwrite)  # checked again, under the lock
        _probe_writable(run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def check_contents(run_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse what :func:`claim` refuses about the directory's contents, changing nothing (so that
    a refused run says so before anything else starts).

    Raises:
        ConfigError: resume and overwrite together, nothing to resume, a non-empty directory without
            resume/overwrite, overwriting a directory that is not a jnet run.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: resume continues the run in "
                          "the directory, overwrite deletes it")
    run_dir = Path(run_dir)
    if resume:
        if not last_checkpoint(run_dir).is_file():
            raise ConfigError(f"--resume: nothing to resume in {run_dir}: expected "
                              f"{last_checkpoint(run_dir)} from an earlier run, found none")
        return
    entries = _entries(run_dir)
    if entries and not overwrite:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ConfigError(f"out dir {run_dir} is not empty (found {shown}); pass --resume to continue "
                          f"that run, --overwrite to replace it, or choose another --out")
    if entries and not any((run_dir / m).exists() for m in RUN_MARKERS):
        raise ConfigError(f"--overwrite: refusing to delete {run_dir}: it is not a jnet run directory "
                          f"(no {' or '.join(RUN_MARKERS)}); remove it yourself or choose another --out")


def _entries(run_dir: Path) -> list[str]:
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)


def _check_and_clear(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """:func:`check_contents`, then empty the directory of a run being overwritten."""
    check_contents(run_dir, resume=resume, overwrite=overwrite)
    if resume:
        return
    for name in _entries(run_dir):
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _probe_writable(run_dir: Path) -> None:
    # os.access can say yes where writing still fails (read-only mounts, quotas): try it.
    probe = run_dir / ".write-test"
    try:
        write_text(probe, "ok\n")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"out dir {run_dir}: cannot write files there ({e.strerror or e})") from e


def data_fingerprint(prepared_dir: str | os.PathLike) -> str:
    """SHA-256 of the cache's ``prepared.json`` and ``splits.json`` (what the run trained on)."""
    digest = hashlib.sha256()
    for name in ("prepared.json", "splits.json"):
        path = Path(prepared_dir) / name
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
    return digest.hexdigest()


def git_commit() -> Optional[dict]:
    """The commit of the jnet source tree (and whether it had local changes), if it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def versions() -> dict:
    from importlib import metadata

    out = {"jnet": __version__, "python": platform.python_version()}
    for name in ("torch", "monai", "lightning", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def start_session(manifest: Optional[dict], *, seed: int, data_dir: Path, resumed: bool) -> dict:
    """The manifest with a new session appended (a new manifest if ``manifest`` is None)."""
    manifest = dict(manifest or {})
    manifest.setdefault("created", now())
    manifest.update({"versions": versions(), "git": git_commit(), "seed": seed,
                     "data": {"path": str(data_dir), "fingerprint": data_fingerprint(data_dir)}})
    # A session still "running" in the manifest of a directory we could lock was killed.
    sessions = [{**s, "status": "killed"} if s.get("status") == "running" else s
                for s in manifest.get("sessions", [])]
    session = {"started": now(), "ended": None, "status": "running", "resumed": resumed,
               "host": socket.gethostname(), "pid": os.getpid()}
    manifest["sessions"] = [*sessions, session]
    return manifest


def end_session(manifest: dict, status: str, **fields: Any) -> dict:
    """The manifest with the last session closed (``status``: finished, interrupted, failed)."""
    manifest = dict(manifest)
    sessions = list(manifest["sessions"])
    sessions[-1] = {**sessions[-1], "ended": now(), "status": status}
    manifest["sessions"] = sessions
    manifest.update(fields)
    return manifest


def check_resume(run_dir: Path, config: Any, root: Path) -> dict:
    """The manifest of the run to resume, once its config and data are known to match.

    Raises:
        ConfigError: other config fields than :data:`RESUMABLE` differ, or the data changed.
    """
    previous = load_config(run_dir / "config.yaml")
    changed = [name for name in diff(previous, config) if name not in RESUMABLE]
    if changed:
        raise ConfigError(f"--resume: the config differs from the run's {run_dir / 'config.yaml'} "
                          f"in {', '.join(changed)}; only {', '.join(RESUMABLE)} may change")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    before = manifest.get("data", {}).get("fingerprint")
    current = data_fingerprint(root)
    if before and before != current:
        raise ConfigError(f"--resume: the prepared data {root} changed since the run started "
                          f"(prepared.json/splits.json fingerprint {before[:12]} -> {current[:12]})")
    return manifest


def begin(run_dir: Path, config: Any, info: dict, root: Path, previous: Optional[dict]) -> dict:
    """Write config.yaml, info.json and the manifest with a new session (rank 0 only).

    Args:
        previous: the manifest of the run being resumed (:func:`check_resume`), or None.
    """
    dump_yaml(config, run_dir / "config.yaml")
    write_json(run_dir / "info.json", info)
    manifest = start_session(previous, seed=config.train.seed, data_dir=root,
                             resumed=previous is not None)
    write_json(run_dir / "manifest.json", manifest)
    return manifest


def resume_config(run_dir: str | os.PathLike, overrides: Sequence[str] = ()) -> Any:
    """The config of an existing run (its ``config.yaml``) with overrides applied."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume: {path} not found; pass --config or check --out")
    return load_config(path, overrides)


def best_of(run_dir: str | os.PathLike) -> Optional[dict]:
    """``{"checkpoint": path relative to the run, "val_jaccard": float}`` of a run (its manifest)."""
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("best")
