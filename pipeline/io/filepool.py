"""Byte-range reads from many shards with bounded open files (local), or concurrent requests (remote)."""

from __future__ import annotations

import os
import resource
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from pipeline.io import storage


def default_max_open() -> int:
    """Shards kept open at once: an eighth of the soft descriptor limit, 4..256 (DALI and sockets need the rest)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 256
    return max(4, min(256, soft // 8))


class FilePool:
    """Positional reads from many files with at most `max_open` descriptors open at once.

    Least recently used files are closed first; a file another thread is
    reading from is never closed under it (the pool may then go over the
    limit by the number of concurrent readers). `os.pread` moves no file
    position, so threads share descriptors safely.
    """

    def __init__(self, paths: Sequence[Path], max_open: int | None = None):
        self.paths = list(paths)
        self.max_open = max(1, max_open or default_max_open())
        self._open: OrderedDict[int, int] = OrderedDict()  # file number -> fd
        self._users: dict[int, int] = {}
        self._lock = threading.Lock()

    def read(self, number: int, offset: int, size: int) -> bytes:
        fd = self._acquire(number)
        try:
            data = os.pread(fd, size, offset)
        finally:
            self._release(number)
        return data

    def read_many(self, requests: Sequence[tuple[int, int, int]]) -> list[bytes]:
        """[(file number, offset, size)] -> bytes (local reads are fast enough one by one)."""
        return [self.read(n, o, s) for n, o, s in requests]

    def _acquire(self, number: int) -> int:
        with self._lock:
            self._users[number] = self._users.get(number, 0) + 1
            fd = self._open.get(number)
            if fd is not None:
                self._open.move_to_end(number)
                return fd
        try:
            fd = os.open(self.paths[number], os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except BaseException:
            self._release(number)
            raise
        with self._lock:
            if number in self._open:  # another thread opened it meanwhile
                os.close(fd)
                return self._open[number]
            self._open[number] = fd
            self._evict()
            return fd

    def _release(self, number: int) -> None:
        with self._lock:
            self._users[number] -= 1
            if not self._users[number]:
                del self._users[number]
            self._evict()

    def _evict(self) -> None:
        """Close idle files, oldest first, until at most max_open are open (call with the lock held)."""
        for number in list(self._open):
            if len(self._open) <= self.max_open:
                return
            if number not in self._users:
                os.close(self._open.pop(number))

    @property
    def open_count(self) -> int:
        return len(self._open)

    def close(self) -> None:
        with self._lock:
            for fd in self._open.values():
                os.close(fd)
            self._open.clear()


def open_reader(tars: list, max_open: int | None = None):
    """A byte-range reader for the shards: bounded local descriptors, or concurrent remote requests."""
    if tars and not isinstance(tars[0], Path):
        return storage.RemoteReader(tars)
    return FilePool(tars, max_open)
