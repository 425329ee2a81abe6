"""pipeline.shard end to end on a tiny synthetic dataset: format, DALI, determinism, resume, parts."""

import hashlib
import json
import os
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.shard import RejectedInputsError, ShardingError, merge_parts, shard_dataset
from pipeline.synth import make_dataset
from pipeline.shard.verify import verify_dataset
from pipeline.io.files import is_temp_name
from pipeline.format.tar import index_of_tar, iter_samples
from tests.shard_helpers import (
    SMALL,
    kill_after_first_shard,
    shard_command,
    level_frames,
    manifest_without_run,
    noise_frames,
    rejected,
    write_video,
)

REPO = Path(__file__).resolve().parents[2]
OPTS = {**SMALL, "shard_samples": 2}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_dataset(
        tmp_path_factory.mktemp("synth"),
        classes=3,
        train_per_class=2,
        val_per_class=1,
        frames=24,
        size=(64, 48),
        seed=3,
    )


@pytest.fixture(scope="module")
def sharded(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    report = shard_dataset(synth, out, **OPTS)
    return out, report


def _all_samples(out: Path):
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["shards"]:
        for sample in iter_samples(out / entry["file"]):
            yield entry, sample


def test_layout_of_outputs(sharded):
    out, report = sharded
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == [
        "classes.json",
        "inputs.jsonl",
        "manifest.json",
        "rejected.jsonl",
        "train-000000.idx",
        "train-000000.tar",
        "train-000001.idx",
        "train-000001.tar",
        "train-000002.idx",
        "train-000002.tar",
        "val-000000.idx",
        "val-000000.tar",
        "val-000001.idx",
        "val-000001.tar",
        "warnings.jsonl",
    ]
    assert report.samples == 9 and report.per_split == {"train": 6, "val": 3} and not report.rejected
    m = json.loads((out / "manifest.json").read_text())
    assert m["settings"]["codec"] == "vp9" and m["settings"]["gop"] == 16
    assert m["splits"]["train"]["per_class"] == {"left_slow": 2, "right_slow": 2, "down_slow": 2}
    assert m["totals"] == {
        "inputs": 9,
        "samples": 9,
        "rejected": 0,
        "shards": 5,
        "bytes": sum((out / s["file"]).stat().st_size for s in m["shards"]),
    }
    for s in m["shards"]:
        data = (out / s["file"]).read_bytes()
        assert s["bytes"] == len(data) and s["sha256"] == hashlib.sha256(data).hexdigest()
    inputs = [json.loads(line) for line in (out / "inputs.jsonl").read_text().splitlines()]
    assert len(inputs) == 9 and set(inputs[0]) == {"source", "split", "class"}
    sharded_sources = {json.loads(s["json"])["source"] for _, s in _all_samples(out)}
    assert {i["source"] for i in inputs} == sharded_sources


def test_classes_and_labels_round_trip(sharded, synth):
    out, _ = sharded
    classes = json.loads((out / "classes.json").read_text())
    assert classes == sorted(p.name for p in (synth / "train").iterdir())
    keys = set()
    for entry, sample in _all_samples(out):
        assert set(sample) == {"__key__", "webm", "lbl", "frames", "json"}
        meta = json.loads(sample["json"])
        assert set(meta) == {
            "key",
            "class",
            "label",
            "frames",
            "fps",
            "width",
            "height",
            "duration",
            "source",
            "sha256",
            "codec",
        }
        (label,) = struct.unpack("<i", sample["lbl"])
        (frames,) = struct.unpack("<i", sample["frames"])
        split, folder_class, _ = meta["source"].split("/")
        assert entry["split"] == split and meta["class"] == folder_class == classes[label] and meta["label"] == label
        assert meta["key"] == sample["__key__"] and "." not in meta["key"]
        assert meta["sha256"] == hashlib.sha256(sample["webm"]).hexdigest()
        assert (meta["width"], meta["height"], meta["fps"], meta["codec"]) == (64, 48, 25.0, "vp9")
        assert frames == meta["frames"] == 24 and meta["duration"] == pytest.approx(24 / 25)
        keys.add(meta["key"])
    assert len(keys) == 9


def test_frame_count_and_keyframes_match_a_decoder(sharded, tmp_path):
    out, _ = sharded
    _, sample = next(_all_samples(out))
    path = tmp_path / "v.webm"
    path.write_bytes(sample["webm"])
    with av.open(str(path)) as c:
        keyframes = [i for i, p in enumerate(p for p in c.demux(c.streams.video[0]) if p.size) if p.is_keyframe]
    with av.open(str(path)) as c:
        decoded = sum(1 for _ in c.decode(video=0))
    assert decoded == struct.unpack("<i", sample["frames"])[0]
    assert keyframes == [0, 16]


def test_index_equals_wds2idx(sharded, tmp_path):
    out, _ = sharded
    tool = shutil.which("wds2idx")
    if tool is None:
        pytest.skip("wds2idx (installed with nvidia-dali) is not on PATH")
    for tar in sorted(out.glob("*.tar")):
        ref = tmp_path / f"{tar.stem}.idx"
        subprocess.run([tool, str(tar), str(ref)], check=True, capture_output=True)
        assert (out / f"{tar.stem}.idx").read_text() == ref.read_text() == index_of_tar(tar)


def test_dali_reads_shards_and_decodes_exact_frames(tmp_path):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, types

    src = tmp_path / "src"
    write_video(src / "levels" / "ramp.mp4", level_frames(30, 64, 48))
    write_video(src / "noise" / "n.mp4", noise_frames(30, 64, 48))
    out = tmp_path / "out"
    shard_dataset(src, out, **SMALL)
    wanted = [0, 7, 16, 29]

    @dali.pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():
        video, label, frames = fn.readers.webdataset(
            paths=[str(out / "train-000000.tar")],
            index_paths=[str(out / "train-000000.idx")],
            ext=["webm", "lbl", "frames"],
            dtypes=[types.UINT8, types.INT32, types.INT32],
        )
        return fn.decoders.video(video, device="cpu", frames=wanted), label, frames

    p = pipe()
    p.build()
    clips, labels, counts = (np.array(x.as_tensor()) for x in p.run())
    classes = json.loads((out / "classes.json").read_text())
    assert sorted(labels.ravel().tolist()) == [0, 1] and counts.ravel().tolist() == [30, 30]
    ramp = clips[list(labels.ravel()).index(classes.index("levels"))]  # (F, H, W, C)
    assert ramp.shape == (4, 48, 64, 3)
    means = ramp.reshape(4, -1).mean(axis=1)
    np.testing.assert_allclose(means, [20 + 8 * i for i in wanted], atol=3)


def test_same_shards_whatever_the_worker_count(sharded, synth, tmp_path):
    out, _ = sharded
    other = tmp_path / "w1"
    shard_dataset(synth, other, **{**OPTS, "workers": 1})
    assert manifest_without_run(other) == {**manifest_without_run(out), "source": manifest_without_run(other)["source"]}
    assert manifest_without_run(other)["shards"] == manifest_without_run(out)["shards"]  # same sha256, same order


def test_rerun_of_a_finished_command_does_nothing(sharded, synth):
    out, _ = sharded
    before = manifest_without_run(out)
    report = shard_dataset(synth, out, **OPTS)
    assert report.encoded == 0 and report.resumed_shards == 5
    assert manifest_without_run(out) == before


def test_other_settings_into_the_same_out_are_refused(synth, tmp_path):
    out = tmp_path / "o"
    shard_dataset(synth, out, **SMALL, part="0/3")
    with pytest.raises(ShardingError, match="--overwrite"):
        shard_dataset(synth, out, **{**SMALL, "short_side": 32}, part="0/3")
    report = shard_dataset(synth, out, **{**SMALL, "short_side": 32}, part="0/3", overwrite=True)
    assert {json.loads(s["json"])["height"] for _, s in _all_samples(out)} == {32}
    assert report.samples == 3


def _another_tools_folder(folder: Path) -> dict[str, bytes]:
    """A folder another tool wrote under the names pipeline.shard writes, and a file under a name it does not."""
    files = {
        "train-000000.tar": b"someone else's tar",
        "manifest.json": b'{"made_by": "another tool", "videos": 10}',
        "classes.json": b'["cat", "dog"]',
        "notes.txt": b"keep me",
    }
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def test_a_folder_another_tool_wrote_is_refused_naming_its_files(synth, tmp_path, capsys):
    from pipeline.shard.__main__ import main

    out = tmp_path / "theirs"
    files = _another_tools_folder(out)
    with pytest.raises(ShardingError, match=r"3 file.*classes.json, manifest.json, train-000000.tar.*--overwrite"):
        shard_dataset(synth, out, **OPTS)
    assert main([str(synth), "--out", str(out), "--short-side", "48", "--no-progress"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files  # nothing touched, nothing added
    report = shard_dataset(synth, out, **OPTS, overwrite=True)  # only when asked explicitly
    assert report.samples == 9 and verify_dataset(out).ok
    assert (out / "notes.txt").read_bytes() == b"keep me"
    assert json.loads((out / "manifest.json").read_text())["tool"]["name"] == "pipeline.shard"


def test_a_merge_into_another_tools_folder_is_refused(sharded, synth, tmp_path):
    parts = [tmp_path / f"p{i}" for i in range(2)]
    for i, p in enumerate(parts):
        shard_dataset(synth, p, **OPTS, part=f"{i}/2")
    files = _another_tools_folder(tmp_path / "theirs")
    with pytest.raises(ShardingError, match="did not write.*manifest.json"):
        merge_parts(parts, tmp_path / "theirs")
    assert {p.name: p.read_bytes() for p in (tmp_path / "theirs").iterdir()} == files


def test_a_shard_left_by_a_killed_run_of_ours_is_its_own_not_anothers(synth, tmp_path):
    """A run may die between a shard's rename and its commit: the resume state, saved before any output,
    claims that shard as the run's own, so the rerun resumes. Without any record of ours, it is refused."""
    from pipeline.shard import manifest as mf

    out = tmp_path / "o"
    shard_dataset(synth, out, **OPTS, part="0/3")
    reference = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    fingerprint = json.loads((out / "manifest.json").read_text())["fingerprint"]
    (out / "manifest.json").unlink()
    mf.save_state(out, fingerprint, {})  # killed after renaming its shards, before committing any
    assert shard_dataset(synth, out, **OPTS, part="0/3").samples == 3
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == reference
    (out / "manifest.json").unlink()
    with pytest.raises(ShardingError, match="did not write"):
        shard_dataset(synth, out, **OPTS, part="0/3")


def test_kill_9_then_rerun_gives_the_uninterrupted_manifest(sharded, synth, tmp_path):
    out, _ = sharded
    killed = tmp_path / "killed"
    kill_after_first_shard(shard_command(synth, killed, "--workers", "1"), killed, REPO)
    for tar in killed.glob("*.tar"):  # whatever is under a final name is complete
        assert (killed / f"{tar.stem}.idx").read_text() == index_of_tar(tar)
        with tarfile.open(tar) as t:
            assert len(t.getmembers()) % 4 == 0
    report = shard_dataset(synth, killed, **OPTS)
    assert report.resumed_shards >= 1
    mine, ref = manifest_without_run(killed), manifest_without_run(out)
    assert mine == {**ref, "source": mine["source"]}
    assert not any(p.name.startswith(".") and ".tmp-" in p.name for p in killed.rglob("*"))


def test_parts_merge_into_the_full_set(sharded, synth, tmp_path):
    out, _ = sharded
    parts = [tmp_path / f"p{i}" for i in range(2)]
    for i, p in enumerate(parts):
        shard_dataset(synth, p, **OPTS, part=f"{i}/2")
    keys = [{s["__key__"] for _, s in _all_samples(p)} for p in parts]
    assert not keys[0] & keys[1]
    with pytest.raises(ValueError, match="missing"):
        merge_parts(parts[:1], tmp_path / "merged")
    report = merge_parts(list(reversed(parts)), tmp_path / "merged")
    merged = tmp_path / "merged"
    assert (
        keys[0] | keys[1]
        == {s["__key__"] for _, s in _all_samples(out)}
        == {s["__key__"] for _, s in _all_samples(merged)}
    )
    by_key = lambda folder: {s["__key__"]: s for _, s in _all_samples(folder)}  # noqa: E731
    assert by_key(merged) == by_key(out)  # the same samples, byte for byte, in other shards
    full = json.loads((out / "manifest.json").read_text())
    assert report.manifest["splits"] == {
        k: {**v, "shards": report.manifest["splits"][k]["shards"]} for k, v in full["splits"].items()
    }
    assert json.loads((merged / "classes.json").read_text()) == json.loads((out / "classes.json").read_text())
    assert verify_dataset(merged).ok
    linked = sorted(merged.glob("*.tar"))
    assert linked and all(t.stat().st_nlink == 2 for t in linked)  # same filesystem: hard links, no copies
    copied = tmp_path / "copied"
    merge_parts(parts, copied, copy=True)
    for t in linked:
        c = copied / t.name
        assert c.stat().st_nlink == 1 and c.read_bytes() == t.read_bytes()
    assert verify_dataset(copied).ok and not any(is_temp_name(f.name) for f in copied.iterdir())


def test_merging_parts_of_other_settings_names_the_setting(synth, tmp_path):
    shard_dataset(synth, tmp_path / "p0", **OPTS, part="0/2")
    shard_dataset(synth, tmp_path / "p1", **{**OPTS, "codec": "jpeg"}, part="1/2")
    with pytest.raises(ValueError, match=r"other settings .*codec: 'jpeg' vs 'vp9'"):
        merge_parts([tmp_path / "p0", tmp_path / "p1"], tmp_path / "merged")


def test_shard_size_bounds_every_shard(sharded, synth, tmp_path):
    out, _ = sharded
    sizes = [len(s["webm"]) for _, s in _all_samples(out)]
    limit = 10240 + 3 * max(sizes)  # room for two to three samples per shard
    report = shard_dataset(synth, tmp_path / "sized", **SMALL, shard_size=limit)
    assert len(report.shards) >= 3
    for r in report.shards:
        assert r.bytes == (tmp_path / "sized" / r.file).stat().st_size <= limit
    assert sum(r.samples for r in report.shards) == 9


def test_interrupted_size_bounded_run_resumes_identically(sharded, synth, tmp_path, monkeypatch):
    from pipeline.shard import core

    out, _ = sharded
    limit = 10240 + 2 * max(len(s["webm"]) for _, s in _all_samples(out))
    opts = {**SMALL, "shard_size": limit}
    shard_dataset(synth, tmp_path / "ref", **opts)
    real, calls = core._Run.take, []

    def interrupted_at_the_sixth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(core._Run, "take", interrupted_at_the_sixth)
    with pytest.raises(KeyboardInterrupt):
        shard_dataset(synth, tmp_path / "cut", **opts)
    monkeypatch.undo()
    assert not (tmp_path / "cut" / "manifest.json").exists()
    report = shard_dataset(synth, tmp_path / "cut", **opts)
    assert report.resumed_shards >= 1
    assert manifest_without_run(tmp_path / "cut") == manifest_without_run(tmp_path / "ref")


def test_h264_option(synth, tmp_path):
    out = tmp_path / "h264"
    shard_dataset(synth, out, **SMALL, part="1/3", codec="h264")
    assert json.loads((out / "manifest.json").read_text())["settings"]["codec"] == "h264"
    _, sample = next(_all_samples(out))
    assert set(sample) == {"__key__", "mp4", "lbl", "frames", "json"}
    path = tmp_path / "v.mp4"
    path.write_bytes(sample["mp4"])
    with av.open(str(path)) as c:
        packets = [p for p in c.demux(c.streams.video[0]) if p.size]
    assert [i for i, p in enumerate(packets) if p.is_keyframe] == [0, 16]
    assert all(p.pts == p.dts for p in packets)  # no B-frames: decode order is display order
    assert len(packets) == struct.unpack("<i", sample["frames"])[0] == 24


def test_fixed_size_and_class_list_reuse(synth, tmp_path):
    out = tmp_path / "fixed"
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(["right_slow", "left_slow"]))  # no down_slow, other order
    report = shard_dataset(synth, out, **SMALL, size=(32, 32), classes=classes)
    assert json.loads((out / "classes.json").read_text()) == ["right_slow", "left_slow"]
    assert {r["reason"] for r in rejected(out)} == {"unknown_class"} and len(report.rejected) == 3
    for _, s in _all_samples(out):
        meta = json.loads(s["json"])
        assert (meta["width"], meta["height"]) == (32, 32)
        assert meta["label"] == ["right_slow", "left_slow"].index(meta["class"])
    with pytest.raises(RejectedInputsError):
        shard_dataset(synth, out, **SMALL, size=(32, 32), classes=classes, strict=True)


def test_cli_help_and_bad_source(tmp_path, capsys):
    from pipeline.shard.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "--shard-size" in capsys.readouterr().out
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) != 0
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) != 0
    assert "no videos found" in capsys.readouterr().err


def test_merge_cli(sharded, synth, tmp_path, capsys):
    from pipeline.shard.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["merge", "--help"])
    assert e.value.code == 0
    out, _ = sharded
    assert main(["merge", str(out), "--out", str(tmp_path / "m")]) != 0
    assert "--part" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_encodes_reused_from_staging_are_not_counted_as_encoded(synth, sharded, tmp_path):
    """A rerun after a kill reuses staged videos: the summary's videos/s counts only what ffmpeg encoded."""
    from pipeline.shard.ffmpeg import EncodeSettings
    from pipeline.shard import core
    from pipeline.shard.encode import prepare_sample

    assert sharded[1].encoded == sharded[1].inputs == 9  # a fresh run encodes every input
    item, s = core.scan(synth, "auto").items[0], EncodeSettings(short_side=None)
    first = prepare_sample(item, s, str(tmp_path), 60, 1, 0)
    assert first.fresh and first.cpu_s > 0
    again = prepare_sample(item, s, str(tmp_path), 60, 1, 0)
    assert again.ok and not again.fresh  # reused from staging: not an encode of this run
    record = json.loads((tmp_path / f"{item.key}.json").read_text())
    assert "fresh" not in record and "cpu_s" not in record  # nor part of the record
    (tmp_path / f"{item.key}.frag").write_bytes(b"damaged")
    assert prepare_sample(item, s, str(tmp_path), 60, 1, 0).fresh  # a damaged fragment is encoded again


def test_a_finished_folder_holds_only_the_dataset(sharded, synth):
    """No resume state is left once the manifest is written; a rerun still finds nothing to do."""
    out, _ = sharded
    hidden = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert hidden == [] or hidden == [".index"], hidden  # .index: the loader's cache, made when shards are read
    report = shard_dataset(synth, out, **OPTS)
    assert report.encoded == 0 and report.samples == sum(1 for t in out.glob("*.tar") for _ in iter_samples(t))


def test_committed_shards_staged_files_are_removed_by_the_engine(synth, tmp_path, monkeypatch):
    """Each committed shard's staged records and fragments are deleted by one engine job, as the run goes; an
    engine stopped by a failure deletes them in place."""
    from pipeline.shard import core
    from pipeline.shard.engines import LocalEngine
    from pipeline.shard.options import ShardOptions

    calls: list[tuple[list[str], bool]] = []

    class Recording:
        def __init__(self, engine):
            self.engine = engine

        def __getattr__(self, name):
            return getattr(self.engine, name)

        def remove(self, locations):
            fut = self.engine.remove(locations)
            fut.result()
            calls.append((locations, not any(Path(loc).exists() for loc in locations)))
            return fut

    real = core.make_engine
    monkeypatch.setattr(core, "make_engine", lambda *a, **k: Recording(real(*a, **k)))
    report = shard_dataset(synth, tmp_path / "out", **{**OPTS, "workers": 2})
    assert len(calls) == len(report.shards)  # one job per committed shard (no input is rejected here)
    assert all(gone for _, gone in calls)
    names = sorted(Path(loc).name for locations, _ in calls for loc in locations)
    keys = sorted(Path(loc).stem for locations, _ in calls for loc in locations if loc.endswith(".json"))
    assert len(keys) == report.inputs == 9 and names == sorted(
        [f"{k}.json" for k in keys] + [f"{k}.frag" for k in keys]
    )

    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "a.frag").write_bytes(b"x")
    engine = LocalEngine(ShardOptions.of(**OPTS), str(staged), 2, 2)
    engine.close(failed=True)
    engine.remove([str(staged / "a.frag")]).result()
    assert not (staged / "a.frag").exists()
