"""A dataset that grows: the refusal says what changed, and --append adds the new inputs in new shards,
leaving every existing shard and index byte for byte as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.shard import ShardingError, shard_dataset
from pipeline.shard.__main__ import main
from pipeline.shard.verify import verify_dataset
from tests.shard_helpers import SMALL, noise_frames, shard_command, write_video

REPO = Path(__file__).resolve().parents[2]
OPTS = {**SMALL, "shard_samples": 2}


def _clip(path: Path, seed: int) -> Path:
    return write_video(path, noise_frames(10, 64, 48, seed))


def _dataset(root: Path) -> Path:
    for k, (cls, split) in enumerate([("b_walk", "train"), ("c_run", "train")] * 3 + [("b_walk", "val")]):
        _clip(root / split / cls / f"{cls}{k}.mp4", k)
    return root


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*-*.*"))}


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture
def grown(tmp_path):
    """A finished folder, then two inputs more in its source."""
    src = _dataset(tmp_path / "src")
    out = tmp_path / "out"
    shard_dataset(src, out, **OPTS)
    before = _files(out)
    _clip(src / "train" / "b_walk" / "new1.mp4", 11)
    _clip(src / "val" / "c_run" / "new2.mp4", 12)
    return src, out, before


def test_the_refusal_says_what_was_added_and_how_to_add_it(grown, capsys):
    src, out, before = grown
    with pytest.raises(
        ShardingError, match=r"2 input\(s\) added \(train/b_walk/new1.mp4, val/c_run/new2.mp4\).*--append"
    ):
        shard_dataset(src, out, **OPTS)
    assert main([str(src), "--out", str(out), "--short-side", "48", "--shard-samples", "2", "--no-progress"]) == 2
    assert "--append" in capsys.readouterr().err and _files(out) == before


def test_append_adds_new_shards_and_leaves_every_existing_one_as_it_was(grown):
    src, out, before = grown
    old = _manifest(out)
    report = shard_dataset(src, out, **OPTS, append=True)
    after = _files(out)
    assert {k: after[k] for k in before} == before  # every shard and .idx byte for byte
    new = sorted(set(after) - set(before))
    assert new == ["train-000003.idx", "train-000003.tar", "val-000001.idx", "val-000001.tar"]
    m = _manifest(out)
    assert m["totals"]["inputs"] == old["totals"]["inputs"] + 2 and report.samples == old["totals"]["samples"] + 2
    assert m["source"]["appends"] == [2] and all(s in m["shards"] for s in old["shards"])
    assert m["splits"]["train"]["per_class"] == {"b_walk": 4, "c_run": 3}
    inputs = [json.loads(line)["source"] for line in (out / "inputs.jsonl").read_text().splitlines()]
    assert inputs[-2:] == ["train/b_walk/new1.mp4", "val/c_run/new2.mp4"] and len(inputs) == 9
    assert verify_dataset(out).ok
    again = shard_dataset(src, out, **OPTS, append=True)  # nothing new: nothing written
    assert _files(out) == after and again.samples == report.samples and again.encoded == 0


def test_append_refuses_what_it_cannot_keep_true(grown, tmp_path):
    src, out, before = grown
    (src / "train" / "b_walk" / "b_walk0.mp4").unlink()
    with pytest.raises(
        ShardingError, match=r"gone or changed since: 1 input\(s\) removed \(train/b_walk/b_walk0.mp4\)"
    ):
        shard_dataset(src, out, **OPTS, append=True)
    _clip(src / "train" / "b_walk" / "b_walk0.mp4", 0)
    with pytest.raises(ShardingError, match=r"other settings \(.*short_side: 48 -> 32"):
        shard_dataset(src, out, **{**OPTS, "short_side": 32}, append=True)
    _clip(src / "train" / "a_jump" / "jump.mp4", 20)  # sorts first: every existing label would move
    with pytest.raises(ShardingError, match=r"new class\(es\) a_jump .*pass --classes"):
        shard_dataset(src, out, **OPTS, append=True)
    assert _files(out) == before
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(["b_walk", "c_run", "a_jump"]))  # the new class after the old ones
    shard_dataset(src, out, **OPTS, append=True, classes=classes)
    assert {k: _files(out)[k] for k in before} == before
    assert json.loads((out / "classes.json").read_text()) == ["b_walk", "c_run", "a_jump"] and verify_dataset(out).ok


def test_an_interrupted_append_resumes_to_the_same_folder(grown, tmp_path):
    """Killed (SIGKILL) while appending, with ffmpeg slowed so that the kill lands mid-run: the rerun gives the
    folder an uninterrupted append gives."""
    import os
    import signal
    import subprocess
    import time

    from pipeline.shard.ffmpeg import find_ffmpeg

    src, out, before = grown
    reference = tmp_path / "reference"
    shard_dataset(_dataset(tmp_path / "src2"), reference, **OPTS)
    for rel, seed in (("train/b_walk/new1.mp4", 11), ("val/c_run/new2.mp4", 12)):
        _clip(tmp_path / "src2" / rel, seed)
    shard_dataset(tmp_path / "src2", reference, **OPTS, append=True)
    slow = tmp_path / "ffmpeg"
    slow.write_text(f'#!/bin/sh\nsleep 0.5\nexec "{find_ffmpeg()}" "$@"\n')
    slow.chmod(0o755)
    fingerprint = _manifest(out)["fingerprint"]
    cmd = shard_command(src, out, "--append", "--workers", "1")
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "TPN_FFMPEG": str(slow)}, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (out / ".shard-state.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _manifest(out)["fingerprint"] == fingerprint and (out / ".shard-state.json").exists()  # mid-append
    assert {k: _files(out)[k] for k in before} == before
    shard_dataset(src, out, **OPTS, append=True)
    assert _files(out) == _files(reference)
    strip = lambda m: {**m, "run": None, "source": {**m["source"], "root": None}}  # noqa: E731
    assert strip(_manifest(out)) == strip(_manifest(reference))
