"""pipeline.shard on a Ray cluster, sources on object storage, and one writer per output.

The cluster is a real multi-node Ray cluster started inside the tests (`ray.cluster_utils.Cluster`:
a head and a worker node of one CPU each, separate raylets on this machine). Its nodes run ffmpeg
through a wrapper that waits a little first, so that a run lasts long enough to lose a node in it.
"""

import json
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.shard.ffmpeg import find_ffmpeg
from pipeline.shard import ShardingError, shard_dataset
from pipeline.shard import encode as encode_mod
from pipeline.shard.encode import StagedOutputLost, outcome_of
from pipeline.shard.lock import LOCK, STALE_AFTER_S, OutputBusy, OutputLock
from pipeline.synth import make_dataset
from tests.shard_helpers import SMALL, kill_after_first_shard, shard_command

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OPTS = {**SMALL, "shard_samples": 2}
SLOW_S = 0.4  # seconds the cluster's ffmpeg waits before it starts


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Camera-like content (grain), three classes, train and val, and a corrupt video."""
    root = make_dataset(
        tmp_path_factory.mktemp("synth"),
        classes=3,
        train_per_class=3,
        val_per_class=1,
        frames=24,
        size=(64, 48),
        seed=5,
        grain=6.0,
    )
    broken = next((root / "train").iterdir()) / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return root


@pytest.fixture(scope="module")
def local_run(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    shard_dataset(synth, out, **OPTS)
    return out


def slow_ffmpeg(folder: Path, kill_once: bool = False) -> Path:
    """An ffmpeg that waits SLOW_S first; with `kill_once`, the first encode on any node dies of SIGKILL
    (as the kernel's OOM killer would end it) and leaves `folder/killed` behind."""
    wrapper = folder / "ffmpeg-slow"
    kill = (
        f"case \"$*\" in *-c:v*) if mkdir '{folder}/killed' 2>/dev/null; then kill -9 $$; fi;; esac\n"
        if kill_once
        else ""
    )
    wrapper.write_text(f"#!/bin/sh\nsleep {SLOW_S}\n{kill}exec '{find_ffmpeg()}' \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return wrapper


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3):
    """Two nodes of one CPU each; their workers run the slow ffmpeg and reach the S3 server (they inherit this
    environment, as a real cluster's nodes need the object store's credentials in theirs)."""
    wrapper = slow_ffmpeg(tmp_path_factory.mktemp("bin"), kill_once=True)
    saved = os.environ.get("TPN_FFMPEG")
    os.environ["TPN_FFMPEG"] = str(wrapper)
    try:
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        c.add_node(num_cpus=1)
        c.wait_for_nodes()
        c.killed = wrapper.parent / "killed"
    finally:
        if saved is None:
            os.environ.pop("TPN_FFMPEG")
        else:
            os.environ["TPN_FFMPEG"] = saved
    yield c
    c.shutdown()


def outputs(out: Path) -> dict[str, bytes]:
    """Every file a run leaves, but the manifest's run record."""
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "manifest.json"}
    manifest = json.loads((out / "manifest.json").read_text())
    run = manifest.pop("run")
    manifest["source"].pop("root")
    files["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    files["run"] = json.dumps({k: run[k] for k in ("engine", "workers")}).encode()
    return files


def same_shards(a: Path, b: Path) -> None:
    fa, fb = outputs(a), outputs(b)
    fa.pop("run"), fb.pop("run")
    assert sorted(fa) == sorted(fb)
    assert [k for k in fa if fa[k] != fb[k]] == []
    assert any(k.endswith(".tar") for k in fa) and "rejected.jsonl" in fa and "warnings.jsonl" in fa


@pytest.mark.slow
def test_ray_on_two_nodes_writes_the_local_engines_bytes(synth, local_run, cluster, tmp_path):
    out = tmp_path / "ray"
    report = shard_dataset(synth, out, engine="ray", ray_address=cluster.address, **OPTS)
    same_shards(out, local_run)
    assert report.manifest["run"]["engine"] == "ray" and report.manifest["run"]["workers"] == 2
    assert report.encoded == report.inputs == 13
    assert [r["source"] for r in report.rejected] == [broken_rel(synth)]  # the corrupt input: listed, once
    assert "broken.mp4" in report.rejected[0]["message"]
    assert not ray.is_initialized()  # the run left the cluster it joined


@pytest.mark.slow
def test_an_encode_killed_by_a_signal_was_retried(synth, local_run, cluster, tmp_path):
    """The cluster's first encode died of SIGKILL (see `slow_ffmpeg`): Ray ran it again, nothing was lost."""
    if not cluster.killed.is_dir():  # this test runs alone: the kill happens in this run
        shard_dataset(synth, tmp_path / "first", engine="ray", ray_address=cluster.address, **OPTS)
    assert cluster.killed.is_dir()
    out = tmp_path / "again"
    report = shard_dataset(synth, out, engine="ray", ray_address=cluster.address, **OPTS)
    same_shards(out, local_run)
    assert len(report.rejected) == 1


def broken_rel(root: Path) -> str:
    return next(p for p in root.rglob("broken.mp4")).relative_to(root).as_posix()


@pytest.mark.slow
def test_a_node_lost_mid_run_costs_only_its_videos(synth, local_run, cluster, tmp_path):
    extra = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    out = tmp_path / "lost"
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(
            report=shard_dataset(synth, out, engine="ray", ray_address=cluster.address, **OPTS)
        )
    )
    thread.start()
    deadline = time.monotonic() + 60
    while not list((out / ".staging").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.02)  # the first results are in: the other tasks are running on the three nodes
    lost_mid_run = not (out / "manifest.json").exists()
    cluster.remove_node(extra, allow_graceful=False)
    thread.join(timeout=300)
    assert not thread.is_alive()
    same_shards(out, local_run)
    assert result["report"].samples == 12 and len(result["report"].rejected) == 1
    assert lost_mid_run


@pytest.mark.slow
def test_a_killed_driver_resumes_from_its_last_shard(synth, local_run, cluster, tmp_path):
    out = tmp_path / "killed"
    kill_after_first_shard(shard_command(synth, out, "--engine", "ray", "--ray-address", cluster.address), out, REPO)
    report = shard_dataset(synth, out, engine="ray", ray_address=cluster.address, **OPTS)
    assert report.resumed_shards >= 1  # the killed driver's lock was taken over: its pid is gone
    same_shards(out, local_run)


@pytest.mark.slow
def test_an_object_storage_source_gives_the_same_shards(synth, local_run, cluster, s3, tmp_path):
    from tests.s3_helpers import BUCKET

    s3.put(str(synth), f"{BUCKET}/sources/synth", recursive=True)
    url = f"s3://{BUCKET}/sources/synth"
    for engine, out in (("local", tmp_path / "url-local"), ("ray", tmp_path / "url-ray")):
        report = shard_dataset(url, out, engine=engine, ray_address=cluster.address, **OPTS)
        assert report.manifest["source"]["root"] == url
        same_shards(out, local_run)
    # source and output both in the bucket, encodes on the cluster: the bucket gets the local engine's bytes
    out_url = f"s3://{BUCKET}/shards/synth-ray"
    shard_dataset(url, out_url, engine="ray", ray_address=cluster.address, work=tmp_path / "work", **OPTS)
    for path in sorted(local_run.iterdir()):
        if path.suffix in (".tar", ".idx") or path.name in ("classes.json", "rejected.jsonl"):
            assert s3.cat_file(f"{BUCKET}/shards/synth-ray/{path.name}") == path.read_bytes(), path.name
    assert not s3.exists(f"{BUCKET}/shards/synth-ray/{LOCK}")


def test_an_unreachable_address_is_named_and_nothing_is_written(synth, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "never"
    with pytest.raises(ShardingError, match=f"127.0.0.1:{port}"):
        shard_dataset(synth, out, engine="ray", ray_address=f"127.0.0.1:{port}", **OPTS)
    assert not out.exists()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.shard",
            str(synth),
            "--out",
            str(out),
            "--engine",
            "ray",
            "--ray-address",
            "not-an-address",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "HOST:PORT" in r.stderr and not out.exists()


def test_ray_missing_is_a_clear_error(synth, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    with pytest.raises(ShardingError, match=r"\.\[cluster\]"):
        shard_dataset(synth, tmp_path / "o", engine="ray", **OPTS)
    with pytest.raises(ValueError, match="engine must be one of local, ray"):
        shard_dataset(synth, tmp_path / "o", engine="spark", **OPTS)


# ----------------------------------------------------------------------------- one writer per output


def test_a_second_run_on_the_same_output_is_refused_naming_the_first(synth, local_run, tmp_path):
    out = tmp_path / "busy"
    env = {**os.environ, "TPN_FFMPEG": str(slow_ffmpeg(tmp_path))}
    cmd = shard_command(synth, out, "--workers", "2")
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / LOCK).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(
        OutputBusy, match=rf"pid {first.pid}.*{socket.gethostname()}|{socket.gethostname()}.*pid {first.pid}"
    ):
        shard_dataset(synth, out, **OPTS)
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert second.returncode == 2 and f"pid {first.pid}" in second.stderr
    assert first.wait(timeout=120) == 0, first.stderr.read()
    same_shards(out, local_run)  # the first run lost nothing to the second
    assert not (out / LOCK).exists()


def test_a_lock_of_a_run_that_is_gone_is_taken_over_with_a_note(synth, local_run, tmp_path, caplog):
    out = tmp_path / "stale"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = {
        "host": socket.gethostname(),
        "pid": dead.pid,
        "started": "2026-01-01T00:00:00+00:00",
        "heartbeat": time.time(),
        "token": "x",
    }
    (out / LOCK).write_text(json.dumps(lock))
    with caplog.at_level(logging.WARNING, logger="pipeline.shard"):
        shard_dataset(synth, out, **OPTS)
    assert f"process {dead.pid} no longer exists" in caplog.text
    same_shards(out, local_run)
    # another machine's lock: refused while its heartbeat is fresh, taken over once it is stale
    other = {**lock, "host": "node-that-died", "pid": 1}
    (out / LOCK).write_text(json.dumps(other))
    with pytest.raises(OutputBusy, match="node-that-died"):
        OutputLock(out).acquire()
    (out / LOCK).write_text(json.dumps({**other, "heartbeat": time.time() - STALE_AFTER_S - 5}))
    with OutputLock(out) as taken:
        assert taken.took_over.host == "node-that-died"
    assert not (out / LOCK).exists()


def test_a_url_output_has_one_writer_too(s3):
    from tests.s3_helpers import BUCKET

    url = f"s3://{BUCKET}/locked"
    with OutputLock(url):
        with pytest.raises(OutputBusy, match=socket.gethostname()):
            OutputLock(url).acquire()
    with OutputLock(url):  # released: free again
        pass


def test_our_own_output_vanishing_is_retried_not_blamed_on_the_input(synth, tmp_path, monkeypatch):
    from pipeline.shard.ffmpeg import EncodeSettings
    from pipeline.shard.layouts import scan

    item = scan(synth).items[0]
    real, calls = encode_mod._encode_local, []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 1:
            raise StagedOutputLost("gone")
        return real(*args)

    monkeypatch.setattr(encode_mod, "_encode_local", flaky)
    outcome = outcome_of(item, EncodeSettings(short_side=48), tmp_path / "x.webm", 60, 8)
    assert outcome.ok and len(calls) == 2
    monkeypatch.setattr(encode_mod, "_encode_local", lambda *a: (_ for _ in ()).throw(StagedOutputLost("gone")))
    with pytest.raises(StagedOutputLost):
        outcome_of(item, EncodeSettings(short_side=48), tmp_path / "y.webm", 60, 8)


def test_merge_refuses_a_part_still_being_written_and_locks_its_output(synth, tmp_path):
    from pipeline.shard import MergeError, merge_parts

    parts = [tmp_path / f"p{i}" for i in range(2)]
    for i, p in enumerate(parts):
        shard_dataset(synth, p, **OPTS, part=f"{i}/2")
    running = {
        "host": socket.gethostname(),
        "pid": os.getpid() + 0,
        "started": "2026-01-01T00:00:00+00:00",
        "heartbeat": time.time(),
        "token": "x",
    }
    parent = subprocess.Popen(["sleep", "30"])  # a live process standing for the part's run
    try:
        (parts[1] / LOCK).write_text(json.dumps({**running, "pid": parent.pid}))
        with pytest.raises(MergeError, match=f"still being written by pipeline.shard on host .*pid {parent.pid}"):
            merge_parts(parts, tmp_path / "merged")
        (parts[1] / LOCK).unlink()
        with OutputLock(tmp_path / "merged"):
            with pytest.raises(OutputBusy):
                merge_parts(parts, tmp_path / "merged")
    finally:
        parent.kill()
        parent.wait()
    report = merge_parts(parts, tmp_path / "merged")
    assert report.manifest["totals"]["samples"] == 12 and not (tmp_path / "merged" / LOCK).exists()
