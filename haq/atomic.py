"""Atomic file writes: a reader (or a crash) never sees half a file.

Every artefact haq writes (policy.json, config.json, checkpoints, plots, profiles) goes
through here: write a temporary file in the same folder, flush it to disk, rename it over
the target. Logs that grow (``history.csv``) are appended one whole, flushed line at a
time with :func:`append_line`, which cuts the file back to where it was if the line cannot
be written whole.

A full disk (or a quota, or a file too large) is a :class:`~haq.errors.StorageError`: one
line naming the path, the file left as it was before the write. Every byte haq writes into
a run directory passes :func:`_write`, the one place a test injects a disk fault.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from haq.errors import StorageError

#: errno values that mean "no room for this write" (not a bug, not a permission problem).
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _write(f: IO[bytes], data: bytes) -> None:
    """Write ``data`` to ``f`` and flush it to disk (the one low-level write)."""
    view = memoryview(data)
    while view:
        n = f.write(view)
        view = view[len(view) if n is None else n:]
    f.flush()
    os.fsync(f.fileno())


def storage_error(path: str | os.PathLike, exc: OSError) -> StorageError | OSError:
    """The one-line :class:`StorageError` for a failed write of ``path`` (``exc`` itself when
    it is not a full disk: a bug or a permission problem keeps its own message)."""
    if exc.errno in DISK_FULL:
        return StorageError(
            f"disk full writing {path} ({os.strerror(exc.errno or errno.ENOSPC)}); free some space, "
            "then continue a search with --resume (the run directory is intact)"
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StorageError(f"cannot write {path} ({os.strerror(exc.errno or errno.EACCES)}); "
                            "choose a writable --out")
    return exc


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise storage_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            _write(f, data)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise storage_error(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` (newline added if missing) to ``path`` whole and flushed: if the write
    fails part-way, the file is cut back to its previous length, so it never ends torn."""
    path = Path(path)
    data = (line if line.endswith("\n") else line + "\n").encode("utf-8")
    try:
        f = path.open("ab", buffering=0)  # unbuffered: nothing is left to flush after a failure
    except OSError as exc:
        raise storage_error(path, exc) from None
    with f:
        size = f.seek(0, os.SEEK_END)
        try:
            _write(f, data)
        except OSError as exc:
            try:
                f.truncate(size)
                os.fsync(f.fileno())
            except OSError:
                pass
            raise storage_error(path, exc) from None
