"""Where the work runs: this machine's worker processes (`local`) or the tasks of a Ray cluster (`ray`).

An engine does the per-video and per-shard work, so that the process that
runs `pipeline.shard` (the coordinator) only decides which sample goes into
which shard, from small records. Two kinds of job:

- `submit(work)`: encode a few inputs, [(item, label)], one after the other,
  and stage each sample as a tar fragment (`encode.prepare_samples`); the
  future's result is their `Outcome`s (a few hundred bytes each: counts, the
  fragment's size; the member table stays in the staged record). A job of
  several inputs shares what handing out a job costs (a Ray task about a
  millisecond of the driver's CPU) between them.
- `pack(dest, fragments)`: write one shard and its `.idx` from fragments
  (`pack.pack_shard`); the result is its `ShardInfo` (size, sha256).
- `remove(locations)`: delete the staged files of a committed shard's
  inputs (`encode.remove_staged`). Once the engine is closed (after a
  failure), it runs in the calling process.

The coordinator takes outcomes in input order (`core.ordered`) and packs
shards in that order too, so the bytes never depend on the engine, the
number of machines or timing.

- `local`: `workers` processes on this machine (started once per run, by a
  fork server, never forked from the caller), each running one job at a
  time; ffmpeg runs as their child. With one worker, or one input, the jobs
  run in the calling process instead.
- `ray`: one Ray task per job on any node with a free CPU. A task reads its
  input itself (a path every node sees, or a URL) and writes its fragment
  and its shards where the shards go: the output folder, which must then be
  on a filesystem every node sees, or the output URL. No encoded byte
  passes through the driver. At most `RAY_WINDOW_PER_CPU` x the cluster's
  CPUs encode tasks are in flight. A task whose worker or node dies is run
  again elsewhere (Ray's `max_retries`), as is one whose ffmpeg was killed by
  a signal; a task that fails because of its input returns a rejection and
  is never retried; a pack that dies leaves no shard under its final name
  and is run again.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
from concurrent.futures import Future, ProcessPoolExecutor

from pipeline.errors import ShardingError
from pipeline.shard.encode import Outcome, prepare_samples, remove_staged
from pipeline.shard.ffmpeg import EncoderInterrupted
from pipeline.shard.layouts import WorkItem
from pipeline.shard.options import ShardOptions
from pipeline.shard.pack import Fragment, pack_shard
from pipeline.shard.source import InputUnavailable

ENGINES = ("local", "ray")
RAY_WINDOW_PER_CPU = 4
RAY_TASK_RETRIES = 3
CONNECT_TIMEOUT_S = 5.0
CLUSTER_EXTRA_HINT = "pip install -e '.[cluster]' (or pip install 'ray>=2.40')"


def done(value) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


def _call(fn, *args) -> Future:
    """`fn(*args)` run now, as a future (its exception kept for `result()`)."""
    fut: Future = Future()
    try:
        fut.set_result(fn(*args))
    except Exception as err:  # noqa: BLE001 - handed to whoever takes the result, as a pool would
        fut.set_exception(err)
    return fut


def _adopt(environ: dict[str, str], cwd: str) -> None:
    """Run in a new local worker: the caller's environment and working folder, not the fork server's."""
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)


class LocalEngine:
    """`workers` processes on this machine; inline in this process for one worker or one input."""

    name = "local"
    max_job = 1  # a job costs this process about 0.3 ms: next to an encode's CPU, nothing to share

    def __init__(self, opts: ShardOptions, staging: str, workers: int, items: int):
        self.opts, self.staging, self.workers = opts, staging, workers
        self.window = max(4, workers * 8)
        self.pool = None
        if workers > 1 and items > 1:
            # Workers come from a fork server: a clean process that has loaded only the sharding code. A plain
            # fork of the caller copies whatever it has running, and a process that has run ONNX Runtime,
            # OpenVINO, DALI or torch's thread pools before sharding (a notebook, the demo, a test session)
            # hands its children locks held by threads that do not exist there; they then crash or hang. (Python
            # 3.14 makes it the default start method on Linux.) As with any start method but
            # fork, a script that shards through the Python API keeps its work under `if __name__ == "__main__"`.
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("forkserver" if "forkserver" in methods else None)
            if context.get_start_method() == "forkserver":
                context.set_forkserver_preload(["pipeline.shard.encode", "pipeline.shard.pack"])
            # The fork server was started with the environment of its time: the workers take the caller's as it
            # is now (credentials and endpoints set since, as a fork would have seen them) and its folder.
            here = (dict(os.environ), os.getcwd())
            self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_adopt, initargs=here)
            self.pool.submit(int).result()  # start the workers

    def submit(self, work: list[tuple[WorkItem, int]]) -> Future:
        o = self.opts
        args = (work, o.encode, self.staging, o.timeout, o.min_frames)
        return _call(prepare_samples, *args) if self.pool is None else self.pool.submit(prepare_samples, *args)

    def pack(self, dest: str, fragments: list[Fragment]) -> Future:
        return (
            _call(pack_shard, dest, fragments) if self.pool is None else self.pool.submit(pack_shard, dest, fragments)
        )

    def remove(self, locations: list[str]) -> Future:
        return _call(remove_staged, locations) if self.pool is None else self.pool.submit(remove_staged, locations)

    def close(self, failed: bool = False) -> None:
        # After a failure, let running jobs finish (Ctrl-C has already stopped their ffmpeg): a caller that
        # retries in this process must not race with them over the same staged files.
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=failed)
            self.pool = None


class RayEngine:
    """One Ray task per job on the cluster at `address` (see the module docstring)."""

    name = "ray"
    max_job = 8  # a task costs the driver about a millisecond: shared by up to 8 inputs

    def __init__(self, opts: ShardOptions, staging: str):
        self.opts, self.staging = opts, staging
        self.ray = import_ray()
        self.address = opts.ray_address if opts.ray_address is not None else os.environ.get("RAY_ADDRESS") or None
        self.owns = connect(self.ray, self.address, opts.workers)
        self.workers = max(1, int(self.ray.cluster_resources().get("CPU", 1)))
        self.window = RAY_WINDOW_PER_CPU * self.workers
        retried = {"num_cpus": 1, "max_retries": RAY_TASK_RETRIES}
        self.prepare = self.ray.remote(prepare_samples).options(
            **retried, retry_exceptions=[EncoderInterrupted, InputUnavailable]
        )
        self.packer = self.ray.remote(pack_shard).options(**retried)
        self.remover = self.ray.remote(remove_staged).options(**retried)
        self.closed = False

    def submit(self, work: list[tuple[WorkItem, int]]) -> Future:
        o = self.opts
        return _RayResult(self.prepare.remote(work, o.encode, self.staging, o.timeout, o.min_frames).future())

    def pack(self, dest: str, fragments: list[Fragment]) -> Future:
        return _RayResult(self.packer.remote(dest, fragments).future())

    def remove(self, locations: list[str]) -> Future:
        if self.closed:
            return _call(remove_staged, locations)
        return _RayResult(self.remover.remote(locations).future())

    def close(self, failed: bool = False) -> None:
        self.closed = True
        if self.owns:
            self.owns = False
            self.ray.shutdown()


class _RayResult:
    """A Ray task's future whose errors read as the task's own (or name the retries spent)."""

    def __init__(self, future: Future):
        self.future = future

    def done(self) -> bool:
        return self.future.done()

    def cancelled(self) -> bool:
        return self.future.cancelled()

    def exception(self) -> BaseException | None:
        try:
            self.result()
        except Exception as err:  # noqa: BLE001 - what a concurrent.futures.Future.exception() gives
            return err
        return None

    def result(self) -> list[Outcome]:
        ray = import_ray()
        try:
            return self.future.result()
        except ray.exceptions.RayTaskError as err:
            cause = err.as_instanceof_cause()
            raise cause from None
        except ray.exceptions.RayError as err:  # worker or node lost more times than the task may be retried
            raise ShardingError(
                f"a Ray task failed beyond its {RAY_TASK_RETRIES} retries ({type(err).__name__}: "
                f"{str(err)[:300]}); finished shards are kept, rerun the same command to resume"
            ) from None


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


def make_engine(opts: ShardOptions, staging: str, *, items: int):
    """The engine `opts.engine` names, staging fragments in `staging` (a folder, or a URL)."""
    if opts.engine == "local":
        return LocalEngine(opts, staging, max(1, opts.workers or len(os.sched_getaffinity(0))), items)
    if opts.engine == "ray":
        return RayEngine(opts, staging)
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {opts.engine!r}")
