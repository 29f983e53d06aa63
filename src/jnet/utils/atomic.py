"""Atomic file output: write to a temporary file (or folder) beside the target, then rename.

A crash leaves either the previous file or nothing at the target, never a partial file. One rule
for output folders: :func:`claim_dir` decides whether an existing folder may be replaced,
:func:`atomic_dir` builds the new one beside it and :func:`swap_dir` puts it in place, removing
the old one only once the new one is there.

A failed write (full or read-only disk, I/O error) raises :class:`~jnet.errors.OutputError`
naming the final file, never the temporary one, and leaves what was at the target untouched.
Temporary folders carry their owner's host and pid, so that those of a killed process can be
recognised and removed by the next run (:func:`clean_stale`)."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Optional

from jnet.errors import DataError, OutputError

OWNER_FILE = ".jnet-owner"  # "host pid" of the process building a temporary folder
# Errors that can only come from writing (a folder's builder also reads inputs: their errors are theirs).
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str | Path, mode: int) -> None:
    # mkstemp/mkdtemp create private files; give the result the permissions a plain open() would.
    os.chmod(tmp, mode & ~_umask())


def describe_os_error(e: OSError) -> str:
    """``strerror`` with a hint for the causes a user can act on."""
    reason = e.strerror or str(e)
    if e.errno is None:  # numpy's tofile: "N requested and M written"
        return f"{reason}: a short write; the disk is probably full"
    if e.errno == errno.ENOSPC:
        return f"{reason}: the disk is full; free space or choose another output location"
    if e.errno == errno.EDQUOT:
        return f"{reason}: the disk quota is exceeded"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{reason}: choose a writable output location"
    return reason


def output_error(path: str | os.PathLike, e: OSError | OutputError,
                 what: str = "output") -> OutputError:
    """The one-line error for a failed write of ``path`` (the artefact, not a temporary file)."""
    reason = e.reason if isinstance(e, OutputError) else describe_os_error(e)
    error = OutputError(f"{path}: cannot write the {what} ({reason}); nothing was written there "
                        f"and any previous one is unchanged")
    error.reason = reason
    return error


def _is_write_error(e: BaseException) -> bool:
    # numpy's tofile reports a short write as an OSError without errno
    return isinstance(e, OutputError) or (isinstance(e, OSError) and (
        e.errno in WRITE_ERRNOS or e.errno is None))


def _make_parent(path: Path, what: str = "output") -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(path, e, what) from e


def _mkstemp(path: Path, prefix: str, suffix: str, what: str) -> tuple[int, str]:
    _make_parent(path, what)
    try:
        return tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    except OSError as e:
        raise output_error(path, e, what) from e


@contextlib.contextmanager
def _renamed_onto(tmp: str, path: Path, what: str = "output") -> Iterator[None]:
    """Rename the temporary file ``tmp`` onto ``path`` if the block succeeds, else delete it.
    An OSError becomes an :class:`OutputError` naming ``path``."""
    try:
        yield
        _publish(tmp, 0o666)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            raise output_error(path, e, what) from e
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", what: str = "output") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync and rename it onto ``path``."""
    path = Path(path)
    fd, tmp = _mkstemp(path, f".{path.name}.", ".tmp", what)
    with _renamed_onto(tmp, path, what):
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a library that writes files itself
    (torch.save, onnx.save, savefig); rename it onto ``path`` on success."""
    path = Path(path)
    fd, tmp = _mkstemp(path, f".{path.stem}.", path.suffix or ".tmp", what)
    os.close(fd)
    with _renamed_onto(tmp, path, what):
        yield Path(tmp)
        fsync_file(tmp)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file written by a library to the disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success put it at ``path`` with
    :func:`swap_dir` (replacing what is there: callers decide with :func:`claim_dir` before)."""
    path = Path(path)
    _make_parent(path, "output folder")
    clean_stale(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
        (tmp / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    except OSError as e:
        raise output_error(path, e, "output folder") from e
    try:
        yield tmp
        (tmp / OWNER_FILE).unlink()
        _publish(tmp, 0o777)
        swap_dir(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_write_error(e):  # named by the folder the user asked for, not its temporary twin
            raise output_error(path, e, "output folder") from e
        raise


def stale_partials(path: str | os.PathLike) -> list[Path]:
    """Temporary folders of ``path`` left by a killed process on this host (its pid is gone)."""
    path = Path(path)
    found = []
    for folder in path.parent.glob(f".{path.name}.*.partial"):
        try:
            host, pid = (folder / OWNER_FILE).read_text().split()
            alive = host != socket.gethostname() or _pid_alive(int(pid))
        except (OSError, ValueError):
            continue  # no owner file: not ours to judge
        if not alive:
            found.append(folder)
    return sorted(found)


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Remove :func:`stale_partials` of ``path``, saying so on stderr; returns what was removed."""
    removed = []
    for folder in stale_partials(path):
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
            print(f"jnet: removed {folder}, left by an interrupted run", file=sys.stderr)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def check_writable(folder: str | os.PathLike, *, need_bytes: Optional[int] = None,
                   what: str = "output") -> None:
    """Fail before long work starts if ``folder`` (created if absent) cannot take the output.

    Writes and removes a probe file (``os.access`` says yes on read-only mounts) and, with
    ``need_bytes``, compares it with the free space.

    Raises:
        OutputError: naming ``folder`` and the cause.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".jnet-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{folder}: cannot write the {what} there ({describe_os_error(e)})") from e
    if need_bytes:
        free = shutil.disk_usage(folder).free
        if free < need_bytes:
            raise OutputError(f"{folder}: not enough free space for the {what}: about "
                              f"{need_bytes / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free")


def swap_dir(new: str | os.PathLike | None, target: str | os.PathLike) -> None:
    """Put ``new`` (or nothing, for None) at ``target``, removing what was there.

    The old ``target`` is moved into a hidden folder beside it first and deleted only once ``new``
    is in place (it is put back if that fails), so ``target`` is never half-replaced."""
    target = Path(target)
    aside = None
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, aside / target.name)
    try:
        if new is not None:
            os.replace(new, target)
    except BaseException:
        if aside is not None and not target.exists():
            os.replace(aside / target.name, target)
            aside.rmdir()
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def claim_dir(path: str | os.PathLike, overwrite: bool, *, marker: str | None = None,
              what: str = "output folder") -> bool:
    """The one output-claim rule: may ``path`` be (re)written as a folder?

    Returns:
        True if a folder exists there and is to be replaced (an empty one always may be), False
        if there is nothing there.
    Raises:
        DataError: ``path`` is not a folder; it is not empty and ``overwrite`` is False; or it
            lacks ``marker``, the file that shows it is a ``what`` jnet wrote (then it is never
            replaced).
    """
    path = Path(path)
    if not path.exists():
        return False
    if not path.is_dir():
        raise DataError(f"{path}: exists and is not a folder; choose another output path")
    if not any(path.iterdir()):
        return True  # an empty folder holds nothing to lose
    if not overwrite:
        raise DataError(f"{path}: the {what} already exists and is not empty; pass --overwrite to "
                        "replace it or choose another output path")
    if marker is not None and not (path / marker).exists():
        raise DataError(f"{path}: exists and is not a {what} (no {marker}); refusing to replace it; "
                        "choose another output path")
    return True


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically (byte-identical for equal objects)."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)
