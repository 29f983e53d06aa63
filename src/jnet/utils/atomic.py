"""Atomic file output: write to a temporary file (or folder) beside the target, then rename.

A crash leaves either the previous file or nothing at the target, never a partial file. One rule
for output folders: :func:`claim_dir` decides whether an existing folder may be replaced,
:func:`atomic_dir` builds the new one beside it and :func:`swap_dir` puts it in place, removing
the old one only once the new one is there."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from jnet.errors import DataError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str | Path, mode: int) -> None:
    # mkstemp/mkdtemp create private files; give the result the permissions a plain open() would.
    os.chmod(tmp, mode & ~_umask())


@contextlib.contextmanager
def _renamed_onto(tmp: str, path: Path) -> Iterator[None]:
    """Rename the temporary file ``tmp`` onto ``path`` if the block succeeds, else delete it."""
    try:
        yield
        _publish(tmp, 0o666)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync and rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with _renamed_onto(tmp, path):
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a library that writes files itself
    (torch.save, onnx.save, savefig); rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    with _renamed_onto(tmp, path):
        yield Path(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success put it at ``path`` with
    :func:`swap_dir` (replacing what is there: callers decide with :func:`claim_dir` before)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        _publish(tmp, 0o777)
        swap_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
