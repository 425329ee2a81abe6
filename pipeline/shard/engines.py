"""Where the encode jobs run: this machine's threads (`local`) or the tasks of a Ray cluster (`ray`).

An engine takes work items and returns, per item, a future whose result is
the item's `Outcome` with its encoded file staged in `OUT/.staging` on the
driver. The driver consumes the futures in input order (`core.ordered`)
and packs the shards itself, so shard membership never depends on the
engine, the number of machines or timing: an engine only decides where
ffmpeg runs.

- `local`: `workers` threads on this machine, each driving one ffmpeg
  process that writes straight into the staging folder.
- `ray`: one Ray task per input (`encode_to_bytes`), scheduled on any node
  with a free CPU. The task reads its input itself (a path every node sees,
  e.g. a shared filesystem), encodes into a temp folder of its node and
  returns the encoded bytes through Ray's object store; the driver writes
  them to staging. At most `RAY_WINDOW_PER_CPU` x the cluster's CPUs tasks
  are in flight, so the object store and the driver hold at most that many
  encoded videos at once. A task whose worker or node dies is retried
  elsewhere (Ray's `max_retries`), as is one whose ffmpeg was killed by a
  signal; a task that fails because of its input returns a rejection and is
  never retried.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from pipeline.errors import ShardingError
from pipeline.shard.ffmpeg import EncodeSettings, EncoderInterrupted
from pipeline.shard.layouts import WorkItem
from pipeline.shard.source import InputUnavailable
from pipeline.shard.encode import Outcome, encode_item, encode_to_bytes, load_staged, stage
from pipeline.shard.options import ShardOptions
from pipeline.io.files import temp_path

ENGINES = ("local", "ray")
RAY_WINDOW_PER_CPU = 4
RAY_TASK_RETRIES = 3
CONNECT_TIMEOUT_S = 5.0
CLUSTER_EXTRA_HINT = "pip install -e '.[cluster]' (or pip install 'ray>=2.40')"


def done(outcome: Outcome) -> Future:
    fut: Future = Future()
    fut.set_result(outcome)
    return fut


class LocalEngine:
    """`workers` ffmpeg processes at a time on this machine, driven by threads.

    Threads, not processes: the work happens in ffmpeg subprocesses, and the
    Python side (probe, hash) is small. No pickling, no spawn rules for
    callers' scripts.
    """

    name = "local"

    def __init__(self, staging: Path, s: EncodeSettings, timeout: float, min_frames: int, workers: int, items: int):
        self.staging, self.s, self.timeout, self.min_frames = staging, s, timeout, min_frames
        self.workers = workers
        self.window = max(4, workers * 8)
        self.pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 and items > 1 else None

    def submit(self, item: WorkItem) -> Future:
        args = (item, self.s, str(self.staging), self.timeout, self.min_frames)
        if self.pool is None:
            return done(encode_item(*args))
        return self.pool.submit(encode_item, *args)

    def close(self, failed: bool = False) -> None:
        # After a failure, let running encodes finish (Ctrl-C has already stopped their ffmpeg): a caller that
        # retries in this process must not race with them over the same staged files.
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=failed)
            self.pool = None


class RayEngine:
    """One Ray task per input on the cluster at `address` (see the module docstring)."""

    name = "ray"

    def __init__(
        self,
        staging: Path,
        s: EncodeSettings,
        timeout: float,
        min_frames: int,
        address: str | None,
        workers: int | None = None,
    ):
        self.staging, self.s, self.timeout, self.min_frames = staging, s, timeout, min_frames
        self.ray = import_ray()
        self.address = address if address is not None else os.environ.get("RAY_ADDRESS") or None
        self.owns = connect(self.ray, self.address, workers)
        self.workers = max(1, int(self.ray.cluster_resources().get("CPU", 1)))
        self.window = RAY_WINDOW_PER_CPU * self.workers
        self.task = self.ray.remote(encode_to_bytes).options(
            num_cpus=1, max_retries=RAY_TASK_RETRIES, retry_exceptions=[EncoderInterrupted, InputUnavailable]
        )

    def submit(self, item: WorkItem) -> Future:
        cached = load_staged(self.staging, item.key, self.s)  # staged by an earlier, interrupted run
        if cached is not None:
            return done(cached)
        ref = self.task.remote(item, self.s, self.timeout, self.min_frames)
        return _Staged(ref.future(), lambda result: self._stage(item, result))

    def _stage(self, item: WorkItem, result: tuple[Outcome, bytes | None]) -> Outcome:
        outcome, data = result
        tmp = None
        if outcome.ok:
            tmp = temp_path(self.staging / item.key, f".{self.s.ext}")
            tmp.write_bytes(data)
        try:
            return stage(self.staging, self.s, outcome, tmp)
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def close(self, failed: bool = False) -> None:
        if self.owns:
            self.owns = False
            self.ray.shutdown()


class _Staged:
    """A Ray task's future whose result is staged on the driver when it is taken (in input order)."""

    def __init__(self, future: Future, then: Callable):
        self.future, self.then = future, then

    def result(self) -> Outcome:
        ray = import_ray()
        try:
            result = self.future.result()
        except ray.exceptions.RayTaskError as err:
            cause = err.as_instanceof_cause()
            raise cause from None
        except ray.exceptions.RayError as err:  # worker or node lost more times than the task may be retried
            raise ShardingError(
                f"a Ray task failed beyond its {RAY_TASK_RETRIES} retries ({type(err).__name__}: "
                f"{str(err)[:300]}); finished shards are kept, rerun the same command to resume"
            ) from None
        return self.then(result)


def import_ray():
    try:
        import ray
    except ImportError:
        raise ShardingError(f"--engine ray needs Ray, which is not installed: {CLUSTER_EXTRA_HINT}") from None
    return ray


def connect(ray, address: str | None, workers: int | None) -> bool:
    """Join the cluster at `address` (None: start a local one with `workers` CPUs); True when this call
    started or joined Ray (and so must shut it down), False when the caller had already."""
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address in (None, "local"):
        ray.init(num_cpus=workers, include_dashboard=False, **quiet)
        return True
    if address != "auto":
        check_reachable(address)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ShardingError(
            f"could not join the Ray cluster at {address}: {err}. Check --ray-address / "
            "RAY_ADDRESS (the head's host:port, as `ray start --head` printed it)"
        ) from None
    return True


def check_reachable(address: str) -> None:
    """Fail fast, naming `address`, when nothing listens there (Ray itself waits and retries for minutes)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ShardingError(
            f"--ray-address {address!r} must look like HOST:PORT (e.g. 10.0.0.1:6379), ray://HOST:PORT or auto"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        raise ShardingError(
            f"no Ray cluster answers at --ray-address {address} ({err}); start one with "
            "`ray start --head` on that machine, or check the address and the network. Nothing was "
            "written"
        ) from None


def make_engine(opts: ShardOptions, staging: Path, *, items: int):
    """The engine `opts.engine` names, encoding into `staging` with `opts`' settings."""
    s, timeout, min_frames, workers = opts.encode, opts.timeout, opts.min_frames, opts.workers
    if opts.engine == "local":
        return LocalEngine(staging, s, timeout, min_frames, max(1, workers or len(os.sched_getaffinity(0))), items)
    if opts.engine == "ray":
        return RayEngine(staging, s, timeout, min_frames, opts.ray_address, workers)
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {opts.engine!r}")
