"""The loader benchmark's own parts: its peers must do the same work as ClipLoader, on the frames asked."""

import subprocess

import cv2
import numpy as np
import pytest
import torch

from benchmarks import common, data, footage, peers
from pipeline.shard.ffmpeg import find_ffmpeg
from pipeline.clips.plan import plan_sample
from pipeline.format.shardset import ShardSet
from tests.clipdata import SMALL, coded_frames, coded_shards, frame_codes, write_source
from tests.shard_helpers import write_anamorphic

SPEC = SMALL.replace(color_jitter=True)


@pytest.fixture(scope="module")
def shardset(tmp_path_factory):
    return ShardSet.open(coded_shards(tmp_path_factory.mktemp("coded")))


def video_of(shardset: ShardSet, frames: int) -> bytes:
    i = next(i for i in range(len(shardset)) if shardset.frame_count(i) == frames)
    return bytes(shardset.member(i, "video"))


@pytest.fixture(scope="module")
def coded_folders(tmp_path_factory):
    """One coded video of 40 frames as an H.264 mp4 (decord's input) and as a rawframes folder."""
    root = tmp_path_factory.mktemp("peers")
    frames = coded_frames(40)
    write_source(root / "v.mp4", frames)
    (root / "v").mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(
            str(root / "v" / f"img_{i + 1:05d}.jpg"),
            cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, 95],
        )
    return root


@pytest.mark.parametrize("peer", ["rawframes", "decord"])
def test_peers_decode_exactly_the_planned_frames_and_augment_like_the_recipe(coded_folders, peer):
    if peer == "decord":
        pytest.importorskip("decord", reason="decord is in the [bench] extra")
    where = str(coded_folders / ("v" if peer == "rawframes" else "v.mp4"))
    decode = peers.decode_rawframes if peer == "rawframes" else peers.decode_decord
    stream = iter(peers.ClipStream([(where, 40, 0, 48, 64)], SPEC, decode, seed=3))
    for epoch in range(3):
        clip, label = next(stream)
        plan = plan_sample(SPEC, "train", 3, epoch, 0, 40, (48, 64), 0)
        assert clip.shape == (3, SPEC.frames, SPEC.crop_size, SPEC.crop_size) and clip.dtype == torch.float32
        # the coded colours survive the jitter only as a colour map: compare the frames before jitter
        plain = peers.augment(
            decode(where, plan.frames),
            plan.__class__(
                **{
                    **plan.__dict__,
                    "train": plan.train.__class__(
                        indices=plan.train.indices, box=plan.train.box, flip=plan.train.flip, jitter=None
                    ),
                }
            ),
            SPEC,
        )
        np.testing.assert_array_equal(frame_codes(plain, SPEC), plan.frames)
        assert label == 0 and not torch.equal(clip, plain)  # the jitter did change the colours


def test_peer_list_files_round_trip(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'a dir' / 'v'} 40 2 48 64\n")
    assert peers.read_list(listing) == [(str(tmp_path / "a dir" / "v"), 40, 2, 48, 64)]


def test_footage_cut_keeps_the_display_aspect_with_square_pixels(tmp_path):
    src = tmp_path / "sar.mp4"  # 176x144 stored, 128:117 pixels: displayed about 4:3
    write_anamorphic(src, seconds=4)
    dst = tmp_path / "cut.mp4"
    subprocess.run(footage.cut_argv(find_ffmpeg(), src, dst, 5, (1.0, 1.0)), check=True, timeout=120)
    import av

    with av.open(str(dst)) as c:
        s = c.streams.video[0]
        assert s.height == footage.SHORT_SIDE and s.sample_aspect_ratio in (None, 1)
        assert abs(s.width / s.height - 176 * 128 / 117 / 144) < 0.02 and footage.frame_count(dst) == footage.FRAMES


def test_keyframes_and_frames_decoded_per_clip(shardset):
    keys = data.keyframes(video_of(shardset, 70))
    assert keys.tolist() == [0, 16, 32, 48, 64]  # pipeline.shard's default GOP of 16
    assert data.frames_decoded(np.array([20, 28, 36]), keys) == 36 - 16 + 1
    assert data.frames_decoded(np.array([5, 0, 9]), keys) == 10


def test_jpeg_decode_rates_count_full_frame_decodes(tmp_path):
    ok, jpeg = cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))
    rates = data.jpeg_decode_rates([jpeg.tobytes()] * 4, repeats=1)
    assert set(rates) == {"opencv_frames_per_s_per_core", "simplejpeg_frames_per_s_per_core"}
    assert all(v > 0 for v in rates.values())


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
    assert '"frames_vs_rawframes"' in result and '"limit_opencv_clips_per_s"' in result
    assert (tmp_path / "results" / "data_tiny.png").is_file()


def test_coordination_rows_take_the_slope_between_two_sizes():
    """The cost that grows with the dataset is the slope between N and 3N videos; the rest is fixed."""
    from benchmarks.shard import coordination_row

    small = {"videos": 24, "coordinator_cpu_s": 0.2 + 24 * 0.005, "encode_cpu_s": 24 * 0.5}
    large = {"videos": 72, "coordinator_cpu_s": 0.2 + 72 * 0.005, "encode_cpu_s": 72 * 0.5}
    row = coordination_row(small, large, 200)
    assert row["slope_resolved"] and abs(row["coordinator_cpu_s_per_video_marginal"] - 0.005) < 1e-9
    assert abs(row["coordinator_fixed_cpu_s"] - 0.2) < 1e-9 and abs(row["cores"] - 100) < 1e-6
    assert abs(row["cores_whole_run"] - 0.5 / (0.56 / 72)) < 1e-6


def test_the_coordinators_idle_rate_is_taken_out_of_the_slope():
    """CPU the coordinator burns per second whatever it does (a Ray driver's threads) grows with the wall time,
    not the videos: taken out before the slope, it leaves the per-video cost, and a share of one core."""
    from benchmarks.shard import coordination_row
    from benchmarks.tables import coordination_rows

    idle, per_video = 0.002, 0.0008

    def run(videos, wall):
        cpu = 0.3 + idle * wall + per_video * videos
        return {"videos": videos, "wall_s": wall, "coordinator_cpu_s": cpu, "idle_cpu_s_per_s": idle,
                "encode_cpu_s": videos * 0.5}  # fmt: skip

    row = coordination_row(run(72, 20.0), run(216, 60.0), 500)
    assert row["slope_resolved"] and abs(row["coordinator_cpu_s_per_video_marginal"] - per_video) < 1e-9
    assert abs(row["coordinator_fixed_cpu_s"] - 0.3) < 1e-9
    assert abs(row["cores"] - 0.5 * (1 - idle) / per_video) < 1e-6
    with_idle = per_video + idle * 40.0 / 144
    assert abs(row["coordinator_cpu_s_per_video_marginal_with_idle"] - with_idle) < 1e-9
    assert abs(row["cores_with_idle"] - 0.5 / with_idle) < 1e-6 and row["cores_with_idle"] < 500 < row["cores"]
    text = "\n".join(coordination_rows({"rows": {"ray-jpeg": row}, "workers": 2}))
    assert "2.0 ms/s" in text and "0.800 ms (1.356 ms)" in text and "**624** (>= 500: met)" in text


def test_a_slope_within_noise_leaves_the_whole_run_as_a_lower_bound():
    from benchmarks.shard import coordination_row
    from benchmarks.tables import coordination_rows

    small = {"videos": 24, "coordinator_cpu_s": 0.80, "encode_cpu_s": 24 * 0.5}
    large = {"videos": 72, "coordinator_cpu_s": 0.78, "encode_cpu_s": 72 * 0.5}
    row = coordination_row(small, large, 500)
    assert not row["slope_resolved"] and row["coordinator_cpu_s_per_video_marginal"] == 0.0
    assert abs(row["cores"] - 0.5 / (0.78 / 72)) < 1e-6  # never an infinite or huge figure
    text = "\n".join(coordination_rows({"rows": {"ray-vp9": row}, "workers": 2}))
    assert "within noise" in text and "not shown" in text and "met" not in text


def test_the_shard_rows_cpu_counts_the_local_engines_workers(tmp_path):
    """The local engine's workers are its fork server's children: the shard benchmark's CPU row must still
    count them (and their ffmpeg), or pipeline.shard would read as almost free next to plain ffmpeg."""
    import json

    from benchmarks.shard import measure
    from pipeline.shard import shard_dataset
    from pipeline.synth import make_dataset

    src = make_dataset(tmp_path / "src", classes=2, train_per_class=2, val_per_class=0, frames=24, size=(64, 48))
    _, cpu = measure(lambda: shard_dataset(src, tmp_path / "out", short_side=48, workers=2))
    encodes = json.loads((tmp_path / "out" / "manifest.json").read_text())["run"]["worker_cpu_s"]
    assert encodes > 0 and cpu >= encodes
