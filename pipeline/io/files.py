"""Crash-safe files, used by every package: nothing appears under a final name half-written.

A file is written to a hidden temp name next to its final name
(`.NAME.tmp-PID-RANDOM`), flushed, fsynced, renamed into place, and the
directory is fsynced so the rename survives a power loss. A kill at any
moment leaves either the old file or the new one, plus at worst a temp file
that `is_temp_name` recognises (resume and cleanup code skip or delete those).

Every function takes the path first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

TEMP_MARK = ".tmp-"


def temp_path(final: str | os.PathLike, suffix: str = "") -> Path:
    """A hidden, unique temp name beside `final` (same filesystem, so the rename is atomic).

    `suffix` keeps an extension that a writer needs (e.g. ".png" for matplotlib).
    """
    final = Path(final)
    return final.with_name(f".{final.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def is_temp_name(name: str) -> bool:
    """True for names made by `temp_path` (left behind only by a killed writer)."""
    return name.startswith(".") and TEMP_MARK in name


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames into `path` durable: fsync the directory itself."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[bytes]], None], *, durable: bool = True, suffix: str = ""
) -> Path:
    """Call `write(f)` on a temp file, then rename it to `path`; returns `path`.

    `durable=False` skips the fsyncs: still safe against a kill (the rename is
    atomic), not against a power loss; for caches that are checked on reuse.
    The file gets a normal file's mode (0666 minus the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        with open(tmp, "xb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> Path:
    return atomic_write(path, lambda f: f.write(data), durable=durable)


def atomic_write_text(path: str | os.PathLike, text: str, *, durable: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, durable: bool = True) -> Path:
    """`obj` as JSON (UTF-8, non-ASCII kept, trailing newline)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", durable=durable)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def staging_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder inside `out_dir` (same filesystem: moves out of it are atomic renames).

    Removed on exit with whatever is still in it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)
