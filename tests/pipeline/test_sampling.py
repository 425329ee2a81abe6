"""Frame-index, crop and batch maths of the clip loader (pure numpy, no decoding)."""

import numpy as np
import pytest

from pipeline import ClipSpec
from pipeline.clips import batching, sampling


def rng(i=0):
    return np.random.default_rng(i)


# -- dense clips ----------------------------------------------------------------------------


@pytest.mark.parametrize("n,frames,stride", [(100, 8, 8), (64, 16, 4), (63, 32, 2), (57, 8, 8)])
def test_dense_train_takes_every_valid_start_and_only_those(n, frames, stride):
    span = (frames - 1) * stride + 1
    starts = set()
    for seed in range(400):
        idx = sampling.dense_train(n, frames, stride, rng(seed))
        assert np.array_equal(np.diff(idx), np.full(frames - 1, stride))
        assert idx[0] >= 0 and idx[-1] < n
        starts.add(int(idx[0]))
    assert starts == set(range(n - span + 1))


@pytest.mark.parametrize(
    "short,expected",
    [("loop", [0, 8, 16, 4, 12, 0, 8, 16]), ("edge", [0, 8, 16, 19, 19, 19, 19, 19])],
)
def test_dense_short_video_policy(short, expected):
    # 20 frames < span 57: start 0, then wrap or clamp; never an error.
    assert sampling.dense_train(20, 8, 8, rng(), short).tolist() == expected
    assert sampling.dense_test(20, 8, 8, 3, short).tolist() == [expected] * 3


@pytest.mark.parametrize(
    "n,span,clips,expected",
    [
        (100, 57, 10, [0, 5, 10, 14, 19, 24, 29, 33, 38, 43]),  # round(k * 43 / 9), half to even
        (100, 57, 1, [21]),
        (57, 57, 3, [0, 0, 0]),
        (30, 57, 4, [0, 0, 0, 0]),
        (11, 1, 3, [0, 5, 10]),
    ],
)
def test_dense_test_starts_spread_from_first_to_last_valid_start(n, span, clips, expected):
    assert sampling.dense_test_starts(n, span, clips).tolist() == expected


def test_dense_test_clips_are_strided_from_their_starts():
    idx = sampling.dense_test(100, 8, 8, 10)
    assert idx.shape == (10, 8)
    assert np.array_equal(idx, sampling.dense_test_starts(100, 57, 10)[:, None] + 8 * np.arange(8))


# -- TSN segments ---------------------------------------------------------------------------


def test_segments_train_one_frame_per_segment():
    n, f = 83, 8
    width = n // f
    for seed in range(50):
        idx = sampling.segments_train(n, f, rng(seed))
        assert np.array_equal(idx // width, np.arange(f))


def test_segments_train_short_video_repeats_frames():
    assert sampling.segments_train(5, 8, rng()).tolist() == [0, 0, 1, 1, 2, 3, 3, 4]


@pytest.mark.parametrize(
    "n,twice,expected",
    [
        (80, False, [[5, 15, 25, 35, 45, 55, 65, 75]]),
        (80, True, [[5, 15, 25, 35, 45, 55, 65, 75], [0, 10, 20, 30, 40, 50, 60, 70]]),
        (20, False, [[1, 3, 6, 8, 11, 13, 16, 18]]),  # floor((k + 1/2) * 2.5)
        (4, False, [[0, 0, 1, 1, 2, 2, 3, 3]]),
    ],
)
def test_segments_test_centres_and_twice_sample(n, twice, expected):
    assert sampling.segments_test(n, 8, twice).tolist() == expected


@pytest.mark.parametrize(
    "spec,mode,shape",
    [
        (ClipSpec(frames=8, stride=8), "train", (1, 8)),
        (ClipSpec(frames=8, stride=8, test_clips=10), "test", (10, 8)),
        (ClipSpec(frames=8, sampling="segments"), "train", (1, 8)),
        (ClipSpec(frames=8, sampling="segments"), "test", (1, 8)),
        (ClipSpec(frames=8, sampling="segments", twice_sample=True), "test", (2, 8)),
    ],
)
def test_clip_indices_shape_per_mode(spec, mode, shape):
    idx = sampling.clip_indices(spec, 90, mode, rng())
    assert idx.shape == shape
    assert shape[0] == (1 if mode == "train" else spec.num_test_clips)
    assert idx.min() >= 0 and idx.max() < 90


def test_train_clips_need_an_rng():
    with pytest.raises(ValueError, match="rng"):
        sampling.clip_indices(ClipSpec(), 90, "train")


def test_zero_frame_video_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one frame"):
        sampling.dense_test(0, 8, 8, 10)


def test_decode_plan_decodes_each_frame_once_and_rebuilds_the_order():
    indices = np.array([[4, 6, 0, 2], [0, 2, 4, 6], [6, 6, 6, 1]])
    unique, order = sampling.decode_plan(indices)
    assert unique.tolist() == [0, 1, 2, 4, 6]
    assert np.array_equal(unique[order], indices.ravel())


# -- crops, flips, rng ----------------------------------------------------------------------


def test_random_resized_crop_stays_inside_and_respects_area_and_ratio():
    for seed in range(300):
        box = sampling.random_resized_crop(240, 320, (0.08, 1.0), (3 / 4, 4 / 3), rng(seed))
        assert 0 <= box.y and box.y + box.h <= 240 and 0 <= box.x and box.x + box.w <= 320
        area = box.h * box.w / (240 * 320)
        assert 0.07 < area <= 1.0
        assert 3 / 4 - 0.05 < box.w / box.h < 4 / 3 + 0.05


def test_random_resized_crop_falls_back_to_the_centre():
    # An area of 2-3x the frame never fits: the centred, ratio-limited window is used.
    box = sampling.random_resized_crop(100, 300, (2.0, 3.0), (3 / 4, 4 / 3), rng())
    assert box == sampling.CropBox(y=0, x=83, h=100, w=133)


def test_sample_rng_is_a_pure_function_of_seed_epoch_index():
    a = sampling.sample_rng(3, 1, 17).random(4)
    assert np.array_equal(a, sampling.sample_rng(3, 1, 17).random(4))
    assert not np.array_equal(a, sampling.sample_rng(3, 2, 17).random(4))
    assert not np.array_equal(a, sampling.sample_rng(3, 1, 18).random(4))


def test_train_view_draws_flip_only_when_enabled():
    spec = ClipSpec(flip=False, color_jitter=True)
    views = [sampling.draw_train_view(spec, 90, 240, 320, rng(s)) for s in range(40)]
    assert not any(v.flip for v in views)
    assert all(-18 <= v.jitter.hue <= 18 and -32 <= v.jitter.brightness <= 32 for v in views)
    flips = [sampling.draw_train_view(ClipSpec(), 90, 240, 320, rng(s)).flip for s in range(40)]
    assert 5 < sum(flips) < 35


def test_flip_label_swaps_left_right_pairs():
    pairs = ((2, 4), (30, 41))
    assert [sampling.flip_label(x, pairs) for x in (2, 4, 30, 41, 7)] == [4, 2, 41, 30, 7]


def test_three_crops_run_along_the_long_side():
    assert [p[0] for p in sampling.three_crop_positions(240, 320)] == [0.0, 0.5, 1.0]
    assert [p[1] for p in sampling.three_crop_positions(320, 240)] == [0.0, 0.5, 1.0]
    assert sampling.view_crop_positions(ClipSpec(test_crops="center"), 240, 320) == [(0.5, 0.5)]


# -- batches and ranks ----------------------------------------------------------------------


@pytest.mark.parametrize("n,batch,world", [(103, 4, 1), (103, 4, 2), (100, 3, 4), (9, 2, 3)])
def test_train_batches_are_disjoint_equal_and_cover_all_but_the_rest(n, batch, world):
    per_rank = [batching.train_batches(n, batch, 7, 3, r, world) for r in range(world)]
    count = batching.num_train_batches(n, batch, world)
    assert all(b.shape == (count, batch) for b in per_rank)
    seen = np.concatenate([b.ravel() for b in per_rank])
    assert len(set(seen.tolist())) == len(seen) == count * batch * world
    assert n - len(seen) < world * batch + world


def test_train_batches_reshuffle_each_epoch_and_repeat_per_seed():
    a = batching.train_batches(50, 5, 0, 0, 0, 1)
    assert np.array_equal(a, batching.train_batches(50, 5, 0, 0, 0, 1))
    assert not np.array_equal(a, batching.train_batches(50, 5, 0, 1, 0, 1))
    assert not np.array_equal(a, batching.train_batches(50, 5, 1, 0, 0, 1))


@pytest.mark.parametrize("n,batch,world", [(10, 3, 1), (10, 3, 3), (7, 4, 2), (2, 4, 3)])
def test_test_batches_see_every_sample_exactly_once(n, batch, world):
    seen = []
    for r in range(world):
        count = batching.num_eval_batches(n, batch, r, world)
        batches = [batching.eval_batch(n, batch, b, r, world) for b in range(count)]
        assert all(1 <= len(b) <= batch for b in batches)
        seen += [int(i) for b in batches for i in b]
    assert sorted(seen) == list(range(n))


def test_bad_rank_is_rejected():
    with pytest.raises(ValueError, match="rank"):
        batching.check_rank(2, 2)
