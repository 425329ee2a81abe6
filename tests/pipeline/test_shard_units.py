"""Pure pieces of pipeline.shard: geometry, argv, error classes, keys, parts, index text."""

import argparse
import os
import hashlib
import io
import tarfile

import pytest

from pipeline.shard.ffmpeg import (
    EncodeSettings,
    SourceSpec,
    classify_ffmpeg_error,
    output_geometry,
    parse_size,
    scale_filter,
    transcode_argv,
)
from pipeline.shard.layouts import WorkItem, canonical_order, kinetics_name, make_key, sth_template_key
from pipeline.shard.__main__ import parse_bytes
from pipeline.shard.pack import Fragment, fragment_bytes, pack_shard, write_fragment
from pipeline.shard.plan import select_part
from pipeline.shard.options import parse_part
from pipeline.format.index import format_index
from pipeline.format.members import split_name
from pipeline.format.tar import ShardWriter, index_of_tar, tar_file_size


@pytest.mark.parametrize(
    "src, settings, expected",
    [
        ((320, 240), {}, (342, 256)),  # 256 * 4/3 = 341.3 -> nearest even
        ((240, 320), {}, (256, 342)),  # portrait: the width is the short side
        ((63, 47), {"short_side": 48}, (64, 48)),  # odd source -> even output
        ((47, 63), {"short_side": 48}, (48, 64)),
        ((100, 100), {"short_side": 64}, (64, 64)),
        ((63, 47), {"short_side": None}, (62, 46)),  # keep: rounded down to even
        ((1920, 1080), {"size": (320, 240)}, (320, 240)),
    ],
)
def test_output_geometry(src, settings, expected):
    assert output_geometry(*src, EncodeSettings(**settings)) == expected


def test_settings_reject_odd_sizes():
    with pytest.raises(ValueError, match="even"):
        EncodeSettings(short_side=255)
    with pytest.raises(ValueError, match="even"):
        EncodeSettings(size=(321, 240))
    with pytest.raises(ValueError, match="codec"):
        EncodeSettings(codec="av1")


def test_parse_size():
    assert parse_size("320x240") == (320, 240)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size("320*240")


def _opt(argv, name):
    return argv[argv.index(name) + 1]


def test_vp9_argv_has_closed_fixed_gop_and_no_audio():
    argv = transcode_argv(SourceSpec("in.mp4"), "out.webm", EncodeSettings(), exe="ffmpeg")
    assert argv[0] == "ffmpeg" and argv[-1] == "out.webm"
    assert _opt(argv, "-c:v") == "libvpx-vp9"
    assert _opt(argv, "-g") == "16" and _opt(argv, "-keyint_min") == "16"
    assert _opt(argv, "-map") == "0:v:0" and "-an" in argv
    assert _opt(argv, "-f") == "webm" and _opt(argv, "-threads") == "1"
    assert "format=yuv420p" in _opt(argv, "-vf") and _opt(argv, "-fps_mode") == "cfr"


def test_h264_argv_disables_scenecut_and_bframes():
    s = EncodeSettings(codec="h264", gop=8, fps=12, size=(320, 240))
    argv = transcode_argv(SourceSpec("in.mkv"), "out.mp4", s, exe="ffmpeg")
    assert _opt(argv, "-c:v") == "libx264" and _opt(argv, "-f") == "mp4"
    assert _opt(argv, "-sc_threshold") == "0" and _opt(argv, "-bf") == "0"
    assert _opt(argv, "-g") == "8" and _opt(argv, "-keyint_min") == "8"
    assert _opt(argv, "-vf").startswith("fps=12,scale=320:240")
    assert "-fps_mode" not in argv


def test_frames_argv_reads_numbered_jpegs_at_their_rate():
    src = SourceSpec("/d/123", kind="frames", fps=12, pattern="%05d.jpg", start_number=1)
    argv = transcode_argv(src, "o.webm", EncodeSettings(), exe="ffmpeg")
    i = argv.index("-i")
    assert argv[i + 1] == "/d/123/%05d.jpg"
    assert _opt(argv, "-framerate") == "12" and _opt(argv, "-start_number") == "1"


def test_scale_filter_keeps_aspect_with_even_sizes():
    assert "-2" in scale_filter(EncodeSettings(short_side=256))
    assert scale_filter(EncodeSettings(size=(320, 240))) == "scale=320:240"


@pytest.mark.parametrize(
    "stderr, reason",
    [
        ("Stream map '0:v:0' matches no streams.", "no_video_stream"),
        ("[in#0] moov atom not found\nError opening input: Invalid data found when processing input", "unreadable"),
        ("Error opening input: No such file or directory", "missing_file"),
        ("Conversion failed!", "ffmpeg_error"),
    ],
)
def test_classify_ffmpeg_error(stderr, reason):
    assert classify_ffmpeg_error(stderr) == reason


def test_parse_bytes():
    assert parse_bytes("1GB") == 10**9
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1e6") == 10**6
    assert parse_bytes("1234") == 1234
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bytes("lots")


def test_parts_are_disjoint_and_cover_everything():
    items = list(range(23))
    chunks = [select_part(items, parse_part(f"{i}/4")) for i in range(4)]
    assert sorted(x for c in chunks for x in c) == items
    assert max(map(len, chunks)) - min(map(len, chunks)) <= 1
    for bad in ("4/4", "1", "a/b", "-1/3"):
        with pytest.raises(ValueError):
            parse_part(bad)


def test_make_key_is_dot_free_ascii_and_unique():
    rels = ["a/clip.mp4", "b/clip.mp4", "a/my.clip.v2.mp4", "x/vidéo été 1.mp4", "y/日本 clip.webm", "z/--abc_000001"]
    keys = [make_key(r) for r in rels]
    assert len(set(keys)) == len(keys)
    for k in keys:
        assert "." not in k and k.isascii() and " " not in k and len(k) <= 80
    assert make_key("a/clip.mp4") == keys[0]  # deterministic
    assert keys[2].startswith("my_clip_v2-")


def test_canonical_order_is_deterministic_and_split_major():
    items = [
        WorkItem(make_key(f"{s}/{c}/{i}.mp4"), s, c, f"{s}/{c}/{i}.mp4", "")
        for s in ("val", "train")
        for c in "ab"
        for i in range(5)
    ]
    a = canonical_order(items, seed=0)
    b = canonical_order(list(reversed(items)), seed=0)
    assert a == b
    assert [i.split for i in a] == ["train"] * 10 + ["val"] * 10
    assert [i.class_name for i in a[:10]] != sorted(i.class_name for i in a[:10])  # shuffled, not class-sorted
    assert canonical_order(items, seed=1) != a


def test_dataset_naming_rules():
    assert kinetics_name("--GkrdYZ9Tc", "0", "10") == "--GkrdYZ9Tc_000000_000010"
    assert kinetics_name("abc", "13.0", "23.0") == "abc_000013_000023"
    assert sth_template_key("Putting [something] on [something]") == "Putting something on something"


def test_split_name_uses_first_dot():
    assert split_name("dir/key.webm") == ("dir/key", "webm")
    assert split_name("key.seg.json") == ("key", "seg.json")


def test_writer_index_matches_independent_reader(tmp_path):
    w = ShardWriter(tmp_path / "train-000000.tar")
    w.add("a-1", {"webm": b"x" * 700, "lbl": b"\0\0\0\0", "json": b"{}"})
    w.add("b-2", {"webm": b"y" * 512, "lbl": b"\1\0\0\0", "json": b"{}"})
    assert not (tmp_path / "train-000000.tar").exists()  # nothing final before close
    info = w.close()
    tar = tmp_path / "train-000000.tar"
    assert (tmp_path / "train-000000.idx").read_text() == index_of_tar(tar)
    lines = (tmp_path / "train-000000.idx").read_text().splitlines()
    assert lines[0] == "v1.2 2"
    assert lines[1].split()[:4] == ["webm", "512", "700", "a-1.webm"]
    assert info.samples == 2 and info.bytes == tar.stat().st_size
    with tarfile.open(tar) as t:
        assert [m.name for m in t] == ["a-1.webm", "a-1.lbl", "a-1.json", "b-2.webm", "b-2.lbl", "b-2.json"]
        assert all(m.mtime == 0 and m.uid == 0 for m in t)


def test_tar_file_size_predicts_the_writer(tmp_path):
    w = ShardWriter(tmp_path / "t.tar")
    content = 0
    for i, n in enumerate([10, 700, 9000, 0]):
        comps = {"bin": b"z" * n}
        content += fragment_bytes(comps)
        w.add(f"k{i}", comps)
    assert w.size == content
    assert w.close().bytes == tar_file_size(content)


def test_fragment_bytes_counts_headers_and_padding():
    assert fragment_bytes({"a": b"x" * 700, "b": b""}) == 512 + 1024 + 512


def test_a_shard_packed_from_fragments_is_the_writers_shard(tmp_path):
    """Samples written as fragments by whoever encodes them, then packed: the same tar and .idx, byte for
    byte, as the writer's, and the same record."""
    samples = {
        "a-1": {"webm": b"x" * 700, "lbl": b"\0\0\0\0", "frames": b"\5\0\0\0", "json": b"{}"},
        "b-2": {"lbl": b"\1\0\0\0", "json": b'{"k": 1}', "000000.jpg": b"\xff\xd8" * 300, "000001.jpg": b""},
        "c-3": {"webm": b"z" * 10240, "json": b"{}"},
    }
    (tmp_path / "w").mkdir()
    writer = ShardWriter(tmp_path / "w" / "train-000000.tar")
    fragments = []
    for key, comps in samples.items():
        writer.add(key, comps)
        members, sha256 = write_fragment(tmp_path / f"{key}.frag", key, comps)
        data = (tmp_path / f"{key}.frag").read_bytes()
        assert len(data) == fragment_bytes(comps) and hashlib.sha256(data).hexdigest() == sha256
        fragments.append(Fragment(str(tmp_path / f"{key}.frag"), len(data), key, tuple(members)))
    written = writer.close()
    (tmp_path / "p").mkdir()
    packed = pack_shard(str(tmp_path / "p" / "train-000000.tar"), fragments)
    assert packed == written
    for name in ("train-000000.tar", "train-000000.idx"):
        assert (tmp_path / "p" / name).read_bytes() == (tmp_path / "w" / name).read_bytes()
    fragments[1] = Fragment(fragments[1].location, fragments[1].bytes + 1, "b-2", fragments[1].members)
    with pytest.raises(OSError, match="b-2.frag holds"):
        pack_shard(str(tmp_path / "p" / "train-000001.tar"), fragments)
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["train-000000.idx", "train-000000.tar"]


def test_format_index():
    text = format_index([[("webm", 512, 10, "k.webm"), ("lbl", 1536, 4, "k.lbl")]])
    assert text == "v1.2 1\nwebm 512 10 k.webm lbl 1536 4 k.lbl\n"


def test_writer_rejects_dotted_keys(tmp_path):
    w = ShardWriter(tmp_path / "t.tar")
    with pytest.raises(ValueError, match="key"):
        w.add("a.b", {"lbl": b"0000"})
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_tar_readable_by_stdlib_stream(tmp_path):
    w = ShardWriter(tmp_path / "s.tar")
    w.add("k", {"lbl": b"1234"})
    w.close()
    data = (tmp_path / "s.tar").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as t:
        assert [m.name for m in t] == ["k.lbl"]


def test_error_family_has_one_base_and_keeps_the_builtin_bases():
    from pipeline import DataError, ShardError, ShardingError, ShardReadError
    from pipeline.shard import MergeError, RejectedInputsError

    for cls in (ShardingError, ShardReadError, DataError, MergeError, RejectedInputsError):
        assert issubclass(cls, ShardError)
    assert issubclass(ShardReadError, ValueError) and issubclass(MergeError, ValueError)
    assert issubclass(ShardingError, RuntimeError) and issubclass(DataError, RuntimeError)
    assert not issubclass(ShardReadError, ShardingError) and not issubclass(DataError, ShardReadError)


def test_the_shipped_ffmpeg_wins_over_the_systems_unless_told(tmp_path, monkeypatch):
    """A distribution's ffmpeg on PATH (another version, other pixels) is not picked up by accident."""
    import imageio_ffmpeg

    from pipeline.shard.ffmpeg import find_ffmpeg

    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.delenv("TPN_FFMPEG", raising=False)
    find_ffmpeg.cache_clear()  # the binary is looked up once per process
    try:
        assert find_ffmpeg() == imageio_ffmpeg.get_ffmpeg_exe()
        find_ffmpeg.cache_clear()
        monkeypatch.setenv("TPN_FFMPEG", str(fake))
        assert find_ffmpeg() == str(fake)
        find_ffmpeg.cache_clear()
        monkeypatch.setenv("TPN_FFMPEG", str(tmp_path / "missing"))
        with pytest.raises(FileNotFoundError, match="TPN_FFMPEG"):
            find_ffmpeg()
    finally:
        find_ffmpeg.cache_clear()


@pytest.mark.parametrize(
    "inputs, workers, most, job",
    [(9, 2, 8, 1), (24, 2, 8, 3), (72, 2, 8, 8), (10_000_000, 1600, 8, 8), (10_000, 500, 8, 5), (10_000, 2, 1, 1)],
)
def test_jobs_grow_with_the_run_to_share_their_cost(inputs, workers, most, job):
    from pipeline.shard.core import job_size

    assert job_size(inputs, workers, most) == job


def test_results_come_in_input_order_whatever_the_jobs(tmp_path):
    """Jobs of several inputs, some rejected without a job, finishing out of order: the outcomes come in
    input order, each input once."""
    import random
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.shard.core import ordered
    from pipeline.shard.encode import Outcome
    from pipeline.shard.layouts import WorkItem

    items = [(n, WorkItem(f"k{n}", "train", "a", f"a/{n}.mp4", f"/x/{n}.mp4")) for n in range(23)]
    early = lambda item: Outcome(item.key, reason="missing_file") if item.key.endswith("3") else None  # noqa: E731
    rng, lock, jobs = random.Random(0), threading.Lock(), []

    def work(batch):
        with lock:
            jobs.append(len(batch))
            delay = rng.random() / 100
        threading.Event().wait(delay)
        return [Outcome(item.key) for item in batch]

    with ThreadPoolExecutor(4) as pool:
        got = list(ordered(items, early, lambda batch: pool.submit(work, batch), window=8, job=3))
    assert [(n, o.key) for n, _, o in got] == [(n, f"k{n}") for n in range(23)]
    assert [o.key for _, _, o in got if not o.ok] == ["k3", "k13"] and max(jobs) == 3 and sum(jobs) == 21
