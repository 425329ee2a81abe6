"""Shards on object storage: a local S3 server (moto) on 127.0.0.1, read through fsspec/s3fs.

The loader must give exactly the batches it gives from a local disk (same permutation, frames,
crops, resume), fetch only byte ranges, and name the object when one is missing.
"""

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from pipeline import ClipLoader  # noqa: E402
from pipeline.format.shardset import ShardSet  # noqa: E402
from tests.clipdata import SMALL, coded_shards, frame_codes  # noqa: E402
from tests.s3_helpers import BUCKET, upload  # noqa: E402


@pytest.fixture(scope="module", params=["vp9", "jpeg"])
def shards(request, s3, tmp_path_factory) -> tuple[Path, str]:
    local = coded_shards(tmp_path_factory.mktemp(f"coded-{request.param}"), codec=request.param)
    return local, upload(s3, local, request.param)


def batches(loader, epoch: int, start: int = 0) -> list:
    loader.set_epoch(epoch, start_batch=start)
    return [(c.clone(), labels.clone(), k) for c, labels, k in loader]


def test_remote_shards_give_the_local_batches_bit_for_bit(shards):
    local, url = shards
    for mode, spec in (("train", SMALL), ("test", SMALL.replace(test_crops="three"))):
        here = ClipLoader(local, spec, mode=mode, batch_size=3, device="cpu", seed=7, return_keys=True)
        there = ClipLoader(url, spec, mode=mode, batch_size=3, device="cpu", seed=7, return_keys=True)
        assert len(there.data) == len(here.data) == 8 and there.classes == here.classes
        for (a, la, ka), (b, lb, kb) in zip(batches(here, 2), batches(there, 2), strict=True):
            assert ka == kb and torch.equal(la, lb) and torch.equal(a, b)
    resumed = batches(there, 2, start=1)
    assert [k for _, _, k in resumed] == [k for _, _, k in batches(there, 2)][1:]


def test_remote_index_is_cached_locally_and_frames_are_exact(shards, tmp_path, monkeypatch):
    _, url = shards
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = ShardSet.open(url, "train")
    assert any((tmp_path / "cache").rglob("index.bin"))
    assert all(isinstance(t, str) and t.startswith("s3://") for t in data.tars)
    again = ShardSet.open(url, "train")  # from the cache: same samples
    data_keys = [data.key(i) for i in range(len(data))]
    assert [again.key(i) for i in range(len(again))] == data_keys
    loader = ClipLoader(url, SMALL, batch_size=2, device="cpu", seed=5, return_keys=True)
    seen = 0
    for clips, _, keys in loader:
        for code, key in zip(frame_codes(clips, SMALL), keys):  # the exact frames the plan draws, from S3
            np.testing.assert_array_equal(code, loader.plan(data_keys.index(key), 0).frames)
            seen += 1
    assert seen == len(loader) * 2 > 0


def test_missing_object_and_missing_split_are_named(s3, shards):
    local, url = shards
    broken = upload(s3, local, f"broken-{local.parent.name}")
    loader = ClipLoader(broken, SMALL, batch_size=2, device="cpu")  # the index is built while all is there
    victim = loader.data.tars[0]
    s3.rm(victim.split("://", 1)[1])
    with pytest.raises(FileNotFoundError, match=rf"{victim}.*does not exist.*credentials"):
        for _ in loader:
            pass
    with pytest.raises(Exception, match="no shards of split 'val'"):
        ClipLoader(url, SMALL, batch_size=2, device="cpu", split="val")


def test_unreachable_endpoint_fails_with_the_url_after_retries(shards, monkeypatch):
    _, url = shards
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import fsspec

    # fsspec's own configuration (what FSSPEC_S3_ENDPOINT_URL sets) points s3:// at the dead port
    monkeypatch.setitem(
        fsspec.config.conf,
        "s3",
        {
            "endpoint_url": f"http://127.0.0.1:{port}",
            "retries": 1,
            "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}},
        },
    )
    fsspec.AbstractFileSystem.clear_instance_cache()
    try:
        with pytest.raises(OSError, match=rf"{url}/manifest.json.*tries"):
            ShardSet.open(url, cache=False)
    finally:
        fsspec.AbstractFileSystem.clear_instance_cache()


@pytest.mark.slow
def test_train_and_test_clis_take_a_bucket_url(shards, tmp_path):
    """tpn.test on s3:// shards scores the same videos as on the local copy."""
    import json
    import subprocess
    import sys

    from tpn.evaluate import shard_source

    import tpn

    local, url = shards
    from pipeline import ShardReadError

    with pytest.raises(ShardReadError, match="no 'val' split.*splits present: train"):
        shard_source([url], "val")  # never a silent switch to the training shards
    assert shard_source([url], "train") == (url, "train") and shard_source([url], "all") == (url, None)
    checkpoint = tmp_path / "tiny.pth"
    torch.manual_seed(0)
    torch.save(tpn.create_model("tpn_tiny_f8s4", num_classes=3).state_dict(), checkpoint)
    reports = {}
    for name, where in (("local", str(local)), ("s3", url)):
        out = tmp_path / f"{name}.json"
        cmd = [
            sys.executable,
            "-m",
            "tpn.test",
            "tpn_tiny_f8s4",
            "--checkpoint",
            str(checkpoint),
            "--shards",
            where,
            "--split",
            "train",
            "--out",
            str(out),
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--num-classes",
            "3",
        ]
        run = subprocess.run(
            cmd, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300, env=os.environ
        )
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        reports[name] = json.loads(out.read_text())
    assert reports["local"]["num_videos"] == reports["s3"]["num_videos"] == 8
    for key in ("top1", "top5", "mean_class_acc"):
        assert reports["local"][key] == reports["s3"][key]


def test_verify_reads_a_bucket_and_names_a_damaged_shard(s3, shards):
    from pipeline.shard.verify import main as verify_main
    from pipeline.shard.verify import verify_dataset

    local, url = shards
    report = verify_dataset(url)
    assert report.ok and report.samples == 8 and report.decoded == 8, report.problems
    damaged = upload(s3, local, f"damaged-{local.parent.name}")
    blob = bytearray((local / "train-000001.tar").read_bytes())
    blob[3000] ^= 0xFF
    s3.pipe(f"{BUCKET}/damaged-{local.parent.name}/train-000001.tar", bytes(blob))
    assert verify_main([damaged, "--no-progress"]) == 1
    problems = verify_dataset(damaged).problems
    assert any(p.startswith("train-000001.tar: sha256 differs") for p in problems), problems


def test_shard_uploads_to_a_bucket_and_resumes_from_what_is_there(s3, tmp_path):
    """pipeline.shard --out s3://...: shards go up as they finish; a rerun uploads only what is missing."""
    from pipeline.shard import shard_dataset
    from pipeline.shard.__main__ import main as shard_main
    from pipeline.shard.verify import verify_dataset
    from tests.shard_helpers import noise_frames, write_video

    src = tmp_path / "src"
    for c in ("a", "b"):
        for i in range(3):
            write_video(src / c / f"{c}{i}.mp4", noise_frames(10, 64, 48, seed=i))
    url = f"s3://{BUCKET}/made"
    work = tmp_path / "work"
    args = [
        str(src),
        "--out",
        url,
        "--work",
        str(work),
        "--short-side",
        "48",
        "--shard-samples",
        "2",
        "--codec",
        "jpeg",
        "--no-progress",
        "--workers",
        "1",
    ]
    assert shard_main(args) == 0
    names = set(s3.ls(f"{BUCKET}/made", detail=False))
    assert {
        f"{BUCKET}/made/{n}"
        for n in (
            "manifest.json",
            "classes.json",
            "rejected.jsonl",
            "train-000000.tar",
            "train-000000.idx",
            "train-000002.tar",
        )
    } <= names
    assert not list(work.glob("*.tar"))  # uploaded shards are not kept locally
    assert verify_dataset(url).ok
    s3.rm(f"{BUCKET}/made/train-000001.tar")  # lost in the bucket: the rerun cannot re-upload it...
    s3.rm(f"{BUCKET}/made/manifest.json")
    report = shard_dataset(src, url, work=work, short_side=48, shard_samples=2, codec="jpeg", workers=1)
    assert report.resumed_shards < 3 and verify_dataset(url).ok  # ...so its split is made again
    local = tmp_path / "local"
    shard_dataset(src, local, short_side=48, shard_samples=2, codec="jpeg", workers=1)
    for tar in sorted(local.glob("*.tar")):
        assert s3.cat_file(f"{BUCKET}/made/{tar.name}") == tar.read_bytes()


def test_a_bucket_prefix_another_tool_wrote_is_refused_naming_its_objects(s3, tmp_path):
    from pipeline.shard import ShardingError, shard_dataset
    from tests.shard_helpers import noise_frames, write_video

    src = tmp_path / "src"
    for i in range(2):
        write_video(src / "a" / f"a{i}.mp4", noise_frames(10, 64, 48, seed=i))
    s3.pipe(f"{BUCKET}/theirs/manifest.json", b'{"made_by": "another tool"}')
    s3.pipe(f"{BUCKET}/theirs/train-000000.tar", b"their tar")
    s3.pipe(f"{BUCKET}/theirs/readme.txt", b"keep me")
    url, opts = f"s3://{BUCKET}/theirs", {"work": tmp_path / "work", "short_side": 48, "workers": 1}
    with pytest.raises(ShardingError, match=r"2 file.*manifest.json, train-000000.tar.*--overwrite"):
        shard_dataset(src, url, **opts)
    assert s3.cat_file(f"{BUCKET}/theirs/train-000000.tar") == b"their tar"
    report = shard_dataset(src, url, **opts, overwrite=True)
    assert report.samples == 2 and s3.cat_file(f"{BUCKET}/theirs/readme.txt") == b"keep me"
    assert json.loads(s3.cat_file(f"{BUCKET}/theirs/manifest.json"))["tool"]["name"] == "pipeline.shard"


def test_object_storage_answers_name_the_bucket_and_the_bucket_copy(s3, tmp_path):
    """A missing output bucket is named as a bucket; the summary points at rejected.jsonl in the bucket; an
    output inside the source prefix is refused before anything is written."""
    from pipeline.shard import ShardingError, shard_dataset
    from pipeline.shard.core import summary_table
    from tests.shard_helpers import noise_frames, write_video

    src = tmp_path / "src"
    for i in range(2):
        write_video(src / "a" / f"a{i}.mp4", noise_frames(10, 64, 48, seed=i))
    (src / "a" / "broken.mp4").write_bytes(b"not a video")
    opts = {"work": tmp_path / "work", "short_side": 48, "workers": 1}
    with pytest.raises(FileNotFoundError, match=r"the bucket s3://no-such-bucket does not exist"):
        shard_dataset(src, "s3://no-such-bucket/k400", **opts)
    report = shard_dataset(src, f"s3://{BUCKET}/answers", **opts)
    assert f"see s3://{BUCKET}/answers/rejected.jsonl" in summary_table(report)
    for out in (f"s3://{BUCKET}/dataset", f"s3://{BUCKET}/dataset/shards/"):
        with pytest.raises(ShardingError, match="the source"):
            shard_dataset(f"s3://{BUCKET}/dataset", out, **opts)
    for out in (src, src / "shards"):
        with pytest.raises(ShardingError, match="the source"):
            shard_dataset(src, out, **opts)
    assert not (src / "shards").exists()


def test_append_to_a_bucket_adds_shards_and_keeps_the_old_objects(s3, tmp_path):
    from pipeline.shard import shard_dataset
    from pipeline.shard.verify import verify_dataset
    from tests.shard_helpers import noise_frames, write_video

    src = tmp_path / "src"
    for i in range(3):
        write_video(src / "a" / f"a{i}.mp4", noise_frames(10, 64, 48, seed=i))
    url, opts = f"s3://{BUCKET}/grows", {"work": tmp_path / "work", "short_side": 48, "workers": 1, "shard_samples": 2}
    shard_dataset(src, url, **opts)
    before = {p: s3.cat_file(p) for p in s3.ls(f"{BUCKET}/grows", detail=False) if p.endswith((".tar", ".idx"))}
    write_video(src / "a" / "a3.mp4", noise_frames(10, 64, 48, seed=3))
    report = shard_dataset(src, url, **opts, append=True)
    s3.invalidate_cache()
    after = {p: s3.cat_file(p) for p in s3.ls(f"{BUCKET}/grows", detail=False) if p.endswith((".tar", ".idx"))}
    assert {p: after[p] for p in before} == before and len(after) == len(before) + 2
    assert report.samples == 4 and verify_dataset(url).ok
    inputs = s3.cat_file(f"{BUCKET}/grows/inputs.jsonl").decode().splitlines()
    assert len(inputs) == 4 and json.loads(inputs[-1])["source"] == "a/a3.mp4"
