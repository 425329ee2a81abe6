"""One writer per output: a lock that names the run holding it.

A sharding run holds `OUT/.shard-lock.json` (a local folder, or an object
under a URL output) from before it touches anything in OUT until it ends.
The lock says who holds it (host, pid, start time) and carries a heartbeat
the holder refreshes every `HEARTBEAT_S` seconds, so that:

- a second run on the same output is refused at once, naming the first;
- a lock whose run is gone is taken over with a note: on the same host when
  its process no longer exists, from any host when its heartbeat is older
  than `STALE_AFTER_S` (a machine that died cannot say so).

Locally the lock file is created with O_EXCL (one winner). Object stores
have no such primitive through fsspec: the run writes its lock, waits
`SETTLE_S` and reads it back, and the run whose lock is not there backs off
(two runs started within the same second can both see an empty place and
race; the read-back makes the later writer win and the other refuse).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pipeline.io import storage
from pipeline.errors import ShardingError
from pipeline.io.files import atomic_write_text

LOCK = ".shard-lock.json"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0
SETTLE_S = 1.0

log = logging.getLogger("pipeline.shard")


class OutputBusy(ShardingError):
    """Another run holds the output's lock."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock."""

    host: str
    pid: int
    started: str  # ISO time, UTC
    heartbeat: float  # time.time() of the last refresh
    token: str
    command: str = "pipeline.shard"

    def describe(self) -> str:
        return f"{self.command} on host {self.host}, pid {self.pid}, started {self.started}"


def _me(command: str) -> Holder:
    return Holder(
        socket.gethostname(),
        os.getpid(),
        dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        time.time(),
        secrets.token_hex(8),
        command,
    )


def _parse(data: bytes) -> Holder | None:
    try:
        return Holder(**json.loads(data))
    except (ValueError, TypeError):
        return None  # half-written by a run killed in the middle of creating it: nobody holds it


def gone_reason(holder: Holder, now: float | None = None) -> str | None:
    """Why `holder`'s run is over (None: it may still be running)."""
    now = time.time() if now is None else now
    if holder.host == socket.gethostname() and holder.pid != os.getpid() and not _alive(holder.pid):
        return f"its process {holder.pid} no longer exists"
    if now - holder.heartbeat > STALE_AFTER_S:
        return f"its last heartbeat is {now - holder.heartbeat:.0f} s old (more than {STALE_AFTER_S:.0f} s)"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_lock(path: str | Path) -> bytes | None:
    try:
        return storage.read_bytes(path)
    except FileNotFoundError:
        return None


def live_holder(where: str | Path) -> Holder | None:
    """The run holding `where`'s lock when it is still going (None: no lock, or its run is gone)."""
    data = _read_lock(storage.join(where, LOCK))
    holder = None if data is None else _parse(data)
    return holder if holder is not None and gone_reason(holder) is None else None


class OutputLock:
    """The lock of one output (a local folder or a URL); use as a context manager."""

    def __init__(self, where: str | Path, command: str = "pipeline.shard"):
        self.where = where
        self.remote = storage.is_remote(where)
        self.path = storage.join(where, LOCK)
        self.me = _me(command)
        self.took_over: Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquire / release

    def acquire(self) -> OutputLock:
        (self._acquire_remote if self.remote else self._acquire_local)()
        self._thread = threading.Thread(target=self._beat, name="shard-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = self._read()
        if current is not None and current.token != self.me.token:
            return  # taken over while we ran (we were thought gone): the lock is not ours to remove
        if self.remote:
            storage.remove(str(self.path))
        else:
            Path(self.path).unlink(missing_ok=True)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- local: O_EXCL

    def _acquire_local(self) -> None:
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                data = _read_lock(path)
                if data is not None:  # else its holder released it just now: try again
                    self._check_holder(data)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(asdict(self.me)))
            return
        raise OutputBusy(
            f"could not take the lock {path}: other runs keep taking it; is {self.where} shared by "
            "several runs started at once?"
        )

    def _check_holder(self, data: bytes) -> None:
        """Refuse when a live run holds the lock; remove it (with a note) when that run is gone."""
        holder = _parse(data)
        why = "it is unreadable (its writer was killed while creating it)" if holder is None else gone_reason(holder)
        if why is None:
            age = time.time() - holder.heartbeat
            raise OutputBusy(
                f"{self.where} is being written by another run: {holder.describe()} (its heartbeat is {age:.0f} s "
                f"old). Wait for it to finish or stop it; one output has one writer at a time. A run whose machine "
                f"died releases its lock {STALE_AFTER_S:.0f} s after its last heartbeat, and this command then "
                "takes over. To shard in parallel, give each run its own --out (e.g. --part I/N, then merge)"
            )
        self.took_over = holder
        log.warning(
            "%s: taking over the lock of a run that is gone (%s): %s",
            self.where,
            why,
            holder.describe() if holder else "unknown run",
        )
        if self.remote:
            return
        # Rename first: of two runs taking over together, one rename wins and the other finds no file.
        grave = Path(self.path).with_name(f"{LOCK}.gone-{self.me.token}")
        try:
            os.replace(self.path, grave)
        except FileNotFoundError:
            return
        grave.unlink(missing_ok=True)

    # -- remote: write, settle, read back

    def _acquire_remote(self) -> None:
        data = _read_lock(self.path)
        if data is not None:
            self._check_holder(data)
        self._write()
        time.sleep(SETTLE_S)
        current = self._read()
        if current is None or current.token != self.me.token:
            raise OutputBusy(
                f"{self.where} is being written by another run that started at the same moment: "
                f"{current.describe() if current else 'unknown run'}; wait for it to finish"
            )

    # -- heartbeat

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            current = self._read()
            if current is not None and current.token != self.me.token:
                log.warning(
                    "%s: the output lock was taken over by %s while this run was still going (its heartbeat "
                    "could not be written for %.0f s)",
                    self.where,
                    current.describe(),
                    STALE_AFTER_S,
                )
                return
            self.me = replace(self.me, heartbeat=time.time())
            try:
                self._write()
            except OSError as err:  # a missed heartbeat is not worth stopping the run for
                log.warning("%s: could not refresh the output lock: %s", self.where, err)

    def _write(self) -> None:
        text = json.dumps(asdict(self.me))
        if self.remote:
            storage.write_bytes(str(self.path), text.encode())
        else:
            atomic_write_text(self.path, text, durable=False)

    def _read(self) -> Holder | None:
        data = _read_lock(self.path)
        return None if data is None else _parse(data)
