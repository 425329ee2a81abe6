"""Frame shards (`pipeline.shard --codec jpeg`): format, readers, verify, determinism, copies, bad sources."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from pipeline.shard.ffmpeg import DEFAULT_JPEG_Q, count_decoded_frames
from pipeline.format.jpeg import decode_check
from pipeline.shard import merge_parts, shard_dataset
from pipeline.format.shardset import ShardSet
from pipeline.synth import make_dataset
from pipeline.shard.verify import verify_dataset
from pipeline.format.tar import index_of_tar, iter_samples
from tests.shard_helpers import SMALL, rejected, write_video, noise_frames

OPTS = {**SMALL, "shard_samples": 2, "codec": "jpeg"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_dataset(
        tmp_path_factory.mktemp("synth"),
        classes=2,
        train_per_class=2,
        val_per_class=1,
        frames=12,
        size=(64, 48),
        seed=4,
    )


@pytest.fixture(scope="module")
def frames(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("frames")
    shard_dataset(synth, out, **OPTS)
    return out


def samples(out: Path) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    return [s for e in manifest["shards"] for s in iter_samples(out / e["file"])]


def test_every_frame_is_its_own_jpeg_member_with_offsets_in_the_index(frames, synth):
    manifest = json.loads((frames / "manifest.json").read_text())
    assert manifest["settings"]["codec"] == "jpeg" and manifest["totals"]["samples"] == 6
    for sample in samples(frames):
        meta = json.loads(sample["json"])
        jpgs = sorted(k for k in sample if k.endswith(".jpg"))
        assert jpgs == [f"{i:06d}.jpg" for i in range(meta["frames"])] and meta["frames"] == 12
        source = count_decoded_frames(synth / meta["source"])
        assert meta["frames"] == source  # one stored frame per source frame at the source's rate
        info = decode_check(sample[jpgs[0]])
        assert (info.width, info.height) == (meta["width"], meta["height"]) == (64, 48) and not info.progressive
        assert meta["sha256"] == hashlib.sha256(b"".join(sample[j] for j in jpgs)).hexdigest()
        assert meta["jpeg_q"] == DEFAULT_JPEG_Q and meta["copied"] is False
    for tar in frames.glob("*.tar"):  # the .idx lists every frame member with its offset (wds2idx format)
        assert tar.with_suffix(".idx").read_text() == index_of_tar(tar)


def test_webdataset_library_reads_the_frames(frames):
    tars = sorted(str(t) for t in frames.glob("train-*.tar"))
    got = list(wds.WebDataset(tars, shardshuffle=False).decode("rgb8"))
    assert len(got) == 4
    for sample in got:
        assert sample["000000.jpg"].shape == (48, 64, 3) and sample["json"]["key"] == sample["__key__"]


def test_reader_fetches_exactly_the_sampled_frames(frames):
    with ShardSet.open(frames, "train") as data:
        assert data.is_frames and data.codec == "jpeg" and len(data) == 4
        stored = {s["__key__"]: s for s in samples(frames)}
        for i in range(len(data)):
            want = [stored[data.key(i)][f"{f:06d}.jpg"] for f in (7, 0, 7)]
            assert data.frame_bytes(i, [7, 0, 7]) == want
            assert data.frame_size(i) == (48, 64) and data.frame_count(i) == 12


def test_same_frame_shards_whatever_the_worker_count(frames, synth, tmp_path):
    shard_dataset(synth, tmp_path / "one", **{**OPTS, "workers": 1})
    for tar in frames.glob("*.tar"):
        assert (tmp_path / "one" / tar.name).read_bytes() == tar.read_bytes()


def test_verify_passes_clean_frames_and_names_a_bad_frame(frames, tmp_path):
    report = verify_dataset(frames)
    assert report.ok and report.decoded == 6, report.problems
    copy = tmp_path / "copy"
    shutil.copytree(frames, copy)
    tar = copy / "train-000000.tar"
    line = tar.with_suffix(".idx").read_text().splitlines()[1].split()
    at = line.index("000005.jpg")
    offset, size, name = int(line[at + 1]), int(line[at + 2]), line[at + 3]
    blob = bytearray(tar.read_bytes())
    blob[offset : offset + size // 2] = bytes(size // 2)
    tar.write_bytes(bytes(blob))
    problems = verify_dataset(copy).problems
    key = name.split(".")[0]
    assert any(p.startswith(f"train-000000.tar: {key}: frame 5 does not decode") for p in problems), problems


def test_parts_of_frame_shards_merge_and_verify(frames, synth, tmp_path):
    parts = [tmp_path / f"p{i}" for i in range(2)]
    for i, p in enumerate(parts):
        shard_dataset(synth, p, **OPTS, part=f"{i}/2")
    merge_parts(parts, tmp_path / "merged")
    merged = {s["__key__"]: s["json"] for s in samples(tmp_path / "merged")}
    assert merged == {s["__key__"]: s["json"] for s in samples(frames)}
    assert verify_dataset(tmp_path / "merged").ok


def _jpeg_folder(folder: Path, n: int, size=(64, 48)) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for i, frame in enumerate(noise_frames(n, *size, seed=n)):
        Image.fromarray(frame).save(folder / f"{i + 1:05d}.jpg", quality=90)


def _sthv1(src: Path) -> Path:
    src.mkdir()
    (src / "something-something-v1-labels.csv").write_text("Holding something\nPutting something\n")
    (src / "something-something-v1-train.csv").write_text("21;Holding something\n22;Putting something\n")
    _jpeg_folder(src / "20bn-something-something-v1" / "21", 10)
    _jpeg_folder(src / "20bn-something-something-v1" / "22", 9)
    return src


def test_sthv1_frames_at_the_target_size_are_copied_not_reencoded(tmp_path):
    src = _sthv1(tmp_path / "sthv1")
    shard_dataset(src, tmp_path / "keep", codec="jpeg", short_side=None, workers=1, min_frames=8)
    for sample in samples(tmp_path / "keep"):
        meta = json.loads(sample["json"])
        folder = src / meta["source"]
        originals = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
        assert meta["copied"] and meta["fps"] == 12.0 and meta["jpeg_q"] is None
        assert [sample[f"{i:06d}.jpg"] for i in range(meta["frames"])] == originals
    shard_dataset(src, tmp_path / "resized", codec="jpeg", short_side=32, workers=1, min_frames=8)
    for sample in samples(tmp_path / "resized"):
        meta = json.loads(sample["json"])
        assert not meta["copied"] and (meta["width"], meta["height"]) == (42, 32)
    assert verify_dataset(tmp_path / "keep").ok and verify_dataset(tmp_path / "resized").ok


def test_corrupt_source_frame_rejects_the_folder(tmp_path):
    src = _sthv1(tmp_path / "sthv1")
    bad = src / "20bn-something-something-v1" / "22" / "00004.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    report = shard_dataset(src, tmp_path / "out", codec="jpeg", short_side=None, workers=1, min_frames=8)
    assert report.samples == 1
    (rec,) = rejected(tmp_path / "out")
    assert rec["reason"] == "unreadable" and "00004.jpg" in rec["message"]


def test_dangling_symlink_unreadable_file_and_directory_loop_are_listed(tmp_path):
    src = tmp_path / "src"
    write_video(src / "a" / "good.mp4", noise_frames(10, 64, 48))
    write_video(src / "b" / "good.mp4", noise_frames(10, 64, 48, seed=1))
    os.symlink("gone.mp4", src / "a" / "dead.mp4")
    os.symlink("..", src / "b" / "up")  # b/up -> src: a loop back to an ancestor
    report = shard_dataset(src, tmp_path / "out", **{**SMALL, "codec": "jpeg"})
    reasons = {(r["source"], r["reason"]) for r in rejected(tmp_path / "out")}
    assert reasons == {("a/dead.mp4", "dangling_symlink"), ("b/up", "directory_loop")}
    assert report.samples == 2  # each good video once, under its own class
    assert {json.loads(s["json"])["class"] for s in samples(tmp_path / "out")} == {"a", "b"}


def test_frame_shards_are_larger_than_vp9_but_hold_the_same_frames(frames, synth, tmp_path):
    shard_dataset(synth, tmp_path / "vp9", **{**OPTS, "codec": "vp9"})
    size = {
        name: json.loads((out / "manifest.json").read_text())["totals"]["bytes"]
        for name, out in (("vp9", tmp_path / "vp9"), ("jpeg", frames))
    }
    assert size["jpeg"] > size["vp9"]
    vp9 = {json.loads(s["json"])["key"]: json.loads(s["json"])["frames"] for s in samples(tmp_path / "vp9")}
    jpeg = {json.loads(s["json"])["key"]: json.loads(s["json"])["frames"] for s in samples(frames)}
    assert vp9 == jpeg
    assert np.all(np.array(list(jpeg.values())) == 12)


def test_frame_folder_names_and_gaps(tmp_path):
    from pipeline.frames import missing_numbers, number_ranges, numbered_frames

    for name in ("00003.jpg", "00001.JPEG", "00012.jpg", "notes.txt", "2.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "00002.jpg").mkdir()  # a folder is never a frame
    numbered = numbered_frames(tmp_path)
    assert [(n, p.name) for n, p in numbered] == [(1, "00001.JPEG"), (3, "00003.jpg"), (12, "00012.jpg")]
    assert missing_numbers([n for n, _ in numbered]) == [2, 4, 5, 6, 7, 8, 9, 10, 11]
    assert number_ranges([2, 4, 5, 6, 11]) == "2, 4-6, 11" and missing_numbers([]) == []
