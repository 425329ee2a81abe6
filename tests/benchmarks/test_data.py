"""The loader benchmark's own parts: the PyAV reference loader must do the same work as ClipLoader."""

import zlib

import numpy as np
import pytest
import torch

from benchmarks import common, data
from benchmarks.reference_loader import decode_frames, make_sample
from pipeline import ClipSpec, sampling
from pipeline.shardset import ShardSet
from tests.clipdata import SMALL, coded_shards, frame_codes


@pytest.fixture(scope="module")
def shardset(tmp_path_factory):
    return ShardSet.open(coded_shards(tmp_path_factory.mktemp("coded")))


def video_of(shardset: ShardSet, frames: int) -> bytes:
    i = next(i for i in range(len(shardset)) if shardset.frame_count(i) == frames)
    return bytes(shardset.member(i, "video"))


@pytest.mark.parametrize("indices", [[0, 3, 6], [37, 40, 43, 46], [69, 5, 69, 33]])
def test_reference_decodes_exactly_the_requested_frames(shardset, indices):
    frames = decode_frames(video_of(shardset, 70), np.array(indices))
    rgb = torch.from_numpy(frames).permute(3, 0, 1, 2).float()  # (3, F, H, W)
    spec = ClipSpec(mean=(0, 0, 0), std=(1, 1, 1))
    np.testing.assert_array_equal(frame_codes(rgb, spec), indices)


def test_reference_sample_follows_the_shared_sampling(shardset):
    i = 0
    sample = {ext: bytes(shardset.member(i, name)) for ext, name in
              [(shardset.video_ext, "video"), ("lbl", "lbl"), ("frames", "frames"), ("json", "meta")]}
    sample["__key__"] = shardset.key(i)
    clip, label = make_sample(sample, SMALL, seed=1, epoch=2)
    assert clip.shape == (3, SMALL.frames, SMALL.crop_size, SMALL.crop_size) and clip.dtype == torch.float32
    assert label == shardset.label(i)
    meta = shardset.meta(i)
    view = sampling.draw_train_view(SMALL, shardset.frame_count(i), meta["height"], meta["width"],
                                    sampling.sample_rng(1, 2, zlib.crc32(shardset.key(i).encode())))
    np.testing.assert_array_equal(frame_codes(clip, SMALL), view.indices)


def test_keyframes_and_frames_decoded_per_clip(shardset):
    keys = data.keyframes(video_of(shardset, 70))
    assert keys.tolist() == [0, 16, 32, 48, 64]  # pipeline.shard's default GOP of 16
    assert data.frames_decoded(np.array([20, 28, 36]), keys) == 36 - 16 + 1
    assert data.frames_decoded(np.array([5, 0, 9]), keys) == 10


def test_ffmpeg_decode_argv_uses_one_thread_and_discards_frames(tmp_path):
    argv = data.ffmpeg_decode_argv("ffmpeg", tmp_path / "list.txt")
    assert argv[argv.index("-threads") + 1] == "1" and argv[-3:] == ["-f", "null", "-"]
    assert argv[argv.index("-i") - 1] == "0" and "concat" in argv


def test_tree_cpu_seconds_counts_this_process():
    before = common.tree_cpu_seconds()
    sum(i * i for i in range(300_000))
    assert common.tree_cpu_seconds() > before


@pytest.mark.slow
def test_benchmark_tiny_smoke(tmp_path, monkeypatch):
    """`python -m benchmarks.data --tiny` end to end on one clip shape, results kept out of the repo."""
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    code = data.main(["--tiny", "--configs", "8x8", "--batches", "1", "--rounds", "1", "--data", str(tmp_path / "d")])
    assert code == 0
    result = (tmp_path / "results" / "data_tiny.json").read_text()
    assert '"dali_vs_reference_cpu"' in result and '"frames_vs_vp9_wall"' in result and (tmp_path / "results" / "data_tiny.png").is_file()
