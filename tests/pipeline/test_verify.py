"""pipeline.verify: a clean set passes; each kind of damage is found and named."""

import hashlib
import json
import shutil
import struct

import pytest

from pipeline.shard import shard_dataset
from pipeline.synth import make_dataset
from pipeline.shard.verify import check_sample, main, verify_dataset
from pipeline.format.tar import ShardWriter, iter_samples
from tests.shard_helpers import SMALL


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    src = make_dataset(
        tmp_path_factory.mktemp("src"), classes=2, train_per_class=2, val_per_class=1, frames=16, size=(64, 48), seed=2
    )
    out = tmp_path_factory.mktemp("out")
    shard_dataset(src, out, **SMALL, shard_samples=2)
    return out


@pytest.fixture
def damaged(clean, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(clean, copy)
    return copy


def test_clean_set_passes(clean, capsys):
    report = verify_dataset(clean)
    assert report.ok and (report.shards, report.samples, report.decoded) == (3, 6, 6)
    assert main([str(clean), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("OK: 3 shard(s), 6 sample(s), 6 decoded")


def test_flipped_byte_fails_naming_the_shard(damaged, capsys):
    tar = damaged / "train-000001.tar"
    data = bytearray(tar.read_bytes())
    data[700] ^= 0x01  # inside the first video's bytes
    tar.write_bytes(bytes(data))
    assert main([str(damaged), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM train-000001.tar: sha256 differs from the manifest" in out
    assert "train-000001.tar:" in out and "video sha256 differs from its json" in out
    assert "train-000000.tar" not in out and "val-000000.tar" not in out


def test_missing_index_truncated_shard_and_stray_file(damaged):
    (damaged / "val-000000.idx").unlink()
    tar = damaged / "train-000000.tar"
    tar.write_bytes(tar.read_bytes()[:3000])
    (damaged / "train-000009.tar").write_bytes(b"")
    problems = "\n".join(verify_dataset(damaged, decode=False).problems)
    assert "val-000000.idx: missing" in problems
    assert "train-000000.tar: size 3000 != manifest" in problems
    assert "train-000009.tar: on disk but not in the manifest" in problems


def test_wrong_frame_count_is_caught_by_decoding(damaged):
    """A consistent-looking sample whose video has fewer frames than recorded."""
    manifest = json.loads((damaged / "manifest.json").read_text())
    entry = manifest["shards"][0]
    samples = list(iter_samples(damaged / entry["file"]))
    meta = json.loads(samples[0]["json"])
    meta["frames"] += 1
    samples[0]["json"] = json.dumps(meta).encode()
    samples[0]["frames"] = struct.pack("<i", meta["frames"])
    writer = ShardWriter(damaged / entry["file"])
    for s in samples:
        writer.add(s["__key__"], {k: v for k, v in s.items() if k != "__key__"})
    info = writer.close()
    entry.update(bytes=info.bytes, sha256=hashlib.sha256((damaged / entry["file"]).read_bytes()).hexdigest())
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    assert verify_dataset(damaged, decode=False).ok  # structure alone cannot see it
    [problem] = verify_dataset(damaged).problems
    assert problem == f"{entry['file']}: {meta['key']}: decodes to 16 frames, recorded 17"


def test_check_sample_names_each_inconsistency():
    meta = {
        "key": "k",
        "label": 1,
        "frames": 5,
        "class": "b",
        "codec": "vp9",
        "sha256": hashlib.sha256(b"v").hexdigest(),
    }
    good = {
        "__key__": "k",
        "webm": b"v",
        "lbl": struct.pack("<i", 1),
        "frames": struct.pack("<i", 5),
        "json": json.dumps(meta).encode(),
    }
    assert check_sample(good, ["a", "b"], "webm", "vp9") == []
    assert check_sample({**good, "lbl": struct.pack("<i", 0)}, ["a", "b"], "webm", "vp9") == [
        "k: json label 1 != .lbl 0",
        "k: json class 'b' is not classes[0]",
    ]
    assert check_sample({k: v for k, v in good.items() if k != "frames"}, ["a", "b"], "webm", "vp9") == [
        "k: missing component .frames"
    ]
    assert check_sample(good, ["a", "b"], "webm", "h264") == ["k: json codec 'vp9' != manifest codec 'h264'"]


def test_not_a_shard_folder(tmp_path, capsys):
    assert main([str(tmp_path), "--no-progress"]) == 2
    assert "manifest.json not found" in capsys.readouterr().err


def test_a_file_where_the_shard_folder_goes_is_named(tmp_path, capsys):
    from pipeline import ShardingError

    video = tmp_path / "x.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypisom")
    assert main([str(video)]) == 2
    assert "x.mp4 is a file, not a shard folder" in capsys.readouterr().err
    (tmp_path / "src" / "a").mkdir(parents=True)
    with pytest.raises(ShardingError, match="--out .*x.mp4 is a file, not a folder"):
        shard_dataset(tmp_path / "src", video)
