"""Which frames a clip takes and which crop it sees: small pure numpy functions.

The loader computes every clip's frame indices and crop box here, on the host,
and hands them to DALI; the reference loader and the tests call the same
functions, so "the loader returns exactly these frames" is checkable.

Temporal conventions (n = frames in the video, F = `frames`, S = `stride`,
span = (F - 1) * S + 1):

* dense, train: one start drawn uniformly from every valid start
  [0, n - span]; frames start + S * [0 .. F-1].
* dense, test: K = `test_clips` starts spread evenly from the first to the
  last valid start, start_k = round(k * (n - span) / (K - 1)) with numpy's
  round-half-to-even (mmaction2 1.x / PySlowFast); K = 1 takes the middle
  start (n - span) // 2.
* dense, short video (n < span): every start is 0 and indices past the end
  wrap modulo n (`short_video="loop"`, mmaction2's default) or are clamped to
  the last frame (`short_video="edge"`). Never an error.
* segments (TSN/TSM), train: with a = n // F, segment k is [k*a, (k+1)*a)
  and contributes one uniform frame; videos with n < F take floor(k * n / F),
  so frames repeat instead of failing.
* segments, test: each segment's centre floor((k + 1/2) * n / F);
  `twice_sample` adds a second clip of segment starts floor(k * n / F), i.e.
  the centres shifted back by half a segment (mmaction2's twice_sample).

Randomness comes from `sample_rng(seed, epoch, index)`: one generator per
(sample, epoch), so a sample's clip does not depend on which rank or batch
it lands in, and a resumed epoch reproduces it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np

from pipeline.clip import ClipSpec, ShortVideo
from pipeline.options import Mode

# Stream tags keep the per-sample streams apart from the epoch permutation.
_SAMPLE_STREAM = 2


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one sample in one epoch (independent of rank and batch)."""
    return np.random.default_rng([seed, epoch, _SAMPLE_STREAM, index])


def _check_count(n: int) -> None:
    if n < 1:
        raise ValueError(f"a video needs at least one frame, got a frame count of {n}")


def dense_span(frames: int, stride: int) -> int:
    """Frames one dense clip covers, first to last: (F - 1) * S + 1."""
    return (frames - 1) * stride + 1


def fit_to_video(indices: np.ndarray, n: int, short_video: ShortVideo = "loop") -> np.ndarray:
    """Map indices past the last frame back into [0, n): wrap ("loop") or clamp ("edge")."""
    if short_video == "loop":
        return np.mod(indices, n)
    if short_video == "edge":
        return np.minimum(indices, n - 1)
    raise ValueError(f"short_video must be 'loop' or 'edge', got {short_video!r}")


def dense_train(
    n: int, frames: int, stride: int, rng: np.random.Generator, short_video: ShortVideo = "loop"
) -> np.ndarray:
    """(F,) indices of one dense clip with a uniformly random valid start."""
    _check_count(n)
    span = dense_span(frames, stride)
    start = int(rng.integers(0, n - span + 1)) if n >= span else 0
    return fit_to_video(start + stride * np.arange(frames), n, short_video)


def dense_test_starts(n: int, span: int, clips: int) -> np.ndarray:
    """(K,) clip starts spread evenly over the valid starts [0, max(n - span, 0)]."""
    last = max(n - span, 0)
    if clips == 1:
        return np.array([last // 2])
    return np.round(np.arange(clips) * (last / (clips - 1))).astype(np.int64)


def dense_test(n: int, frames: int, stride: int, clips: int, short_video: ShortVideo = "loop") -> np.ndarray:
    """(K, F) indices of K dense clips spread over the video."""
    _check_count(n)
    span = dense_span(frames, stride)
    starts = dense_test_starts(n, span, clips)
    return fit_to_video(starts[:, None] + stride * np.arange(frames)[None, :], n, short_video)


def segments_train(n: int, segments: int, rng: np.random.Generator) -> np.ndarray:
    """(F,) one random frame from each of F equal segments (TSN training)."""
    _check_count(n)
    k = np.arange(segments)
    if n < segments:
        return k * n // segments
    width = n // segments
    return k * width + rng.integers(0, width, size=segments)


def segments_test(n: int, segments: int, twice: bool = False) -> np.ndarray:
    """(C, F) segment centres; with `twice`, a second clip of segment starts."""
    _check_count(n)
    k = np.arange(segments)
    centres = (2 * k + 1) * n // (2 * segments)  # floor((k + 1/2) * n / F), in integers
    if not twice:
        return centres[None, :]
    return np.stack([centres, k * n // segments])


def clip_indices(spec: ClipSpec, n: int, mode: Mode, rng: np.random.Generator | None = None) -> np.ndarray:
    """(C, F) frame indices for one video: C = 1 in training, `spec.num_test_clips` in test."""
    if mode == "train":
        if rng is None:
            raise ValueError("training clips are random: pass an rng (see sample_rng)")
        if spec.sampling == "segments":
            return segments_train(n, spec.frames, rng)[None, :]
        return dense_train(n, spec.frames, spec.stride, rng, spec.short_video)[None, :]
    if mode == "test":
        if spec.sampling == "segments":
            return segments_test(n, spec.frames, spec.twice_sample)
        return dense_test(n, spec.frames, spec.stride, spec.test_clips, spec.short_video)
    raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")


def decode_plan(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique sorted frames to decode, order that rebuilds `indices` from them).

    Decoding each distinct frame once matters: the decoder seeks back to a
    keyframe whenever a frame repeats (looped short videos, overlapping test
    clips). `unique[order] == indices.ravel()`.
    """
    unique, order = np.unique(np.asarray(indices).ravel(), return_inverse=True)
    return unique.astype(np.int32), order.astype(np.int32)


@dataclass(frozen=True)
class CropBox:
    """A crop window in pixels of the decoded frame."""

    y: int
    x: int
    h: int
    w: int


def random_resized_crop(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
    attempts: int = 10,
) -> CropBox:
    """Inception-style crop: area fraction ~ U(scale), log aspect ~ U(log ratio).

    Ten tries, then the largest centred window whose aspect is within
    `ratio` (torchvision's / mmaction2's RandomResizedCrop). All draws are
    made up front so the stream advances the same way whatever is accepted.
    """
    area = height * width
    areas = area * rng.uniform(scale[0], scale[1], size=attempts)
    aspects = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=attempts))
    offsets = rng.random(size=(attempts, 2))
    ws = np.round(np.sqrt(areas * aspects)).astype(np.int64)
    hs = np.round(np.sqrt(areas / aspects)).astype(np.int64)
    for i in range(attempts):
        w, h = int(ws[i]), int(hs[i])
        if 0 < w <= width and 0 < h <= height:
            y = int(offsets[i, 0] * (height - h + 1))
            x = int(offsets[i, 1] * (width - w + 1))
            return CropBox(y, x, h, w)
    return centre_crop_in_ratio(height, width, ratio)


def centre_crop_in_ratio(height: int, width: int, ratio: tuple[float, float]) -> CropBox:
    """The largest centred window whose width/height lies within `ratio`."""
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w)


@dataclass(frozen=True)
class Jitter:
    """Colour jitter for one clip (applied in this order: hue, saturation, contrast, brightness).

    hue: degrees added to the hue; saturation, contrast: multipliers;
    brightness: shift on the 0-255 scale. Ranges follow the TPN recipe
    (brightness +-32, contrast / saturation 0.6-1.4, hue +-18 degrees).
    """

    hue: float = 0.0
    saturation: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0


def draw_jitter(rng: np.random.Generator) -> Jitter:
    hue, sat, con, bri = rng.uniform((-18.0, 0.6, 0.6, -32.0), (18.0, 1.4, 1.4, 32.0))
    return Jitter(hue=float(hue), saturation=float(sat), contrast=float(con), brightness=float(bri))


@dataclass(frozen=True)
class TrainView:
    """Everything random about one training clip."""

    indices: np.ndarray  # (F,)
    box: CropBox
    flip: bool
    jitter: Jitter | None


def draw_train_view(spec: ClipSpec, n: int, height: int, width: int, rng: np.random.Generator) -> TrainView:
    """Draw a training clip's frames, crop, flip and jitter, always in this order."""
    indices = clip_indices(spec, n, "train", rng)[0]
    box = random_resized_crop(height, width, spec.scale_range, spec.ratio_range, rng)
    flip = bool(rng.random() < 0.5) if spec.flip else False
    jitter = draw_jitter(rng) if spec.color_jitter else None
    return TrainView(indices=indices, box=box, flip=flip, jitter=jitter)


def flip_label(label: int, pairs: tuple[tuple[int, int], ...]) -> int:
    """The label of a horizontally flipped clip: swapped within left/right class pairs."""
    for a, b in pairs:
        if label == a:
            return b
        if label == b:
            return a
    return label


def three_crop_positions(height: int, width: int) -> list[tuple[float, float]]:
    """Normalised (x, y) crop positions of the three test crops, along the long side.

    Left/top, centre, right/bottom; the other axis is centred. In DALI's
    convention the crop origin is pos * (extent - crop).
    """
    if width >= height:
        return [(0.0, 0.5), (0.5, 0.5), (1.0, 0.5)]
    return [(0.5, 0.0), (0.5, 0.5), (0.5, 1.0)]


def view_crop_positions(spec: ClipSpec, height: int, width: int) -> list[tuple[float, float]]:
    """(x, y) positions of the spatial test crops, in view order ("full" has one: the frame)."""
    if spec.test_crops == "three":
        return three_crop_positions(height, width)
    return [(0.5, 0.5)]
