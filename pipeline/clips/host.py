"""Clips decoded and augmented in host threads, no DALI: the CPU path of both shard kinds.

Per frame it does what the DALI graphs do (`pipeline.clips.dali_frames`,
`pipeline.clips.dali_video`), with the operators a CPU runs fastest:

1. decode: a frame shard's JPEG with libjpeg-turbo. A training frame decodes
   only the window its crop box needs (`pipeline.clips._jpegwindow`: rows above it
   skipped, rows below it never decoded, columns cut to the iMCU columns that
   cover it; the window's pixels are those of a full decode), and where the
   box is at least twice the output on both sides, at 1/2, 1/4 or 1/8 size by
   DCT-domain scaling. Without the compiled module (`WINDOW_DECODE` False),
   and for test views, whole frames decode with `simplejpeg`. A video's
   sampled frames decode with PyAV (libavcodec, from the keyframe before the
   first one; only the sampled frames are kept);
2. resample the crop box to the output on uint8, mirrored when the clip is
   flipped (`cv2.warpAffine`, bilinear, pixel centres mapped as DALI's
   `fn.resize` with antialias off maps them); a 4:2:0 video frame stays in
   its Y, U, V planes for this, so a training frame is never converted to
   RGB at full size (test views are: whole frames to RGB first, as DALI and
   `export.predict` do);
3. one 3x4 colour map (`cv2.transform`): the clip's jitter
   (`pipeline.clips.colour.jitter_matrix`) after the frame's YUV -> RGB matrix;
4. normalise: uint8 to float32, then (x - mean) / std as one diagonal
   3x4 map (`cv2.transform`), written straight into the batch tensor.

A training clip batches what it can: its frames' windows decode in one
call (`decode_many`), its frames are resampled into one uint8 clip, and
steps 3 and 4 each run once over the whole clip.

Every call above releases the GIL, so `num_threads` threads decode clips of
a batch in parallel while a reader thread fetches the next batches' bytes
and the caller trains on the current one. The plan (frames, boxes, flips,
jitter, test crops) is the `pipeline.clips.plan.SamplePlan` the DALI path
consumes, so the two paths return the same frames, boxes and flips; their
pixels differ by resampling and rounding only (`tests/pipeline/test_backends.py`
states the tolerances).

Training clips come back as (N, 3, F, S, S) in channels_last_3d memory order
(the order the training step wants), test views as contiguous
(N, V, 3, F, H, W) in the loader's view order.
"""

from __future__ import annotations

import ctypes
import math
import re
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import av
import cv2
import numpy as np
import simplejpeg
import torch

try:
    from pipeline.clips import _jpegwindow
except ImportError:  # built at install where a C compiler and libjpeg-turbo's headers are present (setup.py)
    _jpegwindow = None

from pipeline.clip import ClipSpec
from pipeline.clips.colour import compose, jitter_matrix, normalise_matrix, yuv_to_rgb_matrix
from pipeline.errors import VERIFY_HINT, DataError
from pipeline.clips.plan import SamplePlan, crop_origin, resize_shorter
from pipeline.clips.pyav import decoded_frames
from pipeline.format.shardset import ShardSet

# OpenCV would split each small resize over its own thread pool; the loader's threads are the parallelism.
cv2.setNumThreads(1)

# Training frames of frame shards decode only their crop's window (module docstring); False: whole frames.
WINDOW_DECODE = _jpegwindow is not None
WINDOW_MARGIN = 2  # pixels decoded around the box: the bilinear taps at its edge read one pixel past it


@dataclass
class _Batch:
    """One batch on its way: its plans, the output buffer and the clips' pending work."""

    plans: list[SamplePlan]
    tensor: torch.Tensor  # the output buffer: train (N, F, S, S, 3); test (N, C, V', F, H, W, 3)
    clips: list[Future]


class HostClips:
    """Batches of either shard kind made in host threads (see the module docstring)."""

    def __init__(
        self,
        data: ShardSet,
        spec: ClipSpec,
        mode: str,
        plan: Callable[[int, int], SamplePlan],
        num_threads: int,
        prefetch: int,
        device: str = "cpu",
    ):
        self.data, self.spec, self.mode, self.plan = data, spec, mode, plan
        self.num_threads, self.ahead = max(1, num_threads), max(1, prefetch) + 1
        self.device = device
        self.normalise = normalise_matrix(spec.mean, spec.std)
        self.flips = (False, True) if spec.test_flip else (False,)
        self._buffers = _Buffers(keep=self.ahead + 2)  # in flight, the one yielded, the one the caller holds

    def batches(
        self, batches: Sequence[np.ndarray], epoch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        """(clips, labels, sample indices) of every batch, in order; `ahead` batches are in flight."""
        reader = ThreadPoolExecutor(
            1, thread_name_prefix="host-read", initializer=name_os_thread, initargs=("host-read",)
        )
        workers = ThreadPoolExecutor(
            self.num_threads, thread_name_prefix="host-decode", initializer=name_os_thread, initargs=("host-decode",)
        )
        inflight: deque[Future] = deque()
        try:
            for number in range(min(self.ahead, len(batches))):
                inflight.append(reader.submit(self._start, batches[number], epoch, workers))
            for number in range(len(batches)):
                batch = inflight.popleft().result()
                if number + self.ahead < len(batches):
                    inflight.append(reader.submit(self._start, batches[number + self.ahead], epoch, workers))
                for clip in batch.clips:
                    clip.result()  # a DataError from a clip surfaces here
                yield self._finish(batch)
        finally:
            reader.shutdown(wait=True, cancel_futures=True)
            workers.shutdown(wait=True, cancel_futures=True)

    # -- one batch

    def _start(self, indices: np.ndarray, epoch: int, workers: ThreadPoolExecutor) -> _Batch:
        """Plan the batch, read its bytes (one batch of reads), hand its clips to the workers."""
        plans = [self.plan(int(i), epoch) for i in indices]
        decode = [p.decode_plan() for p in plans]
        if self.data.is_frames:
            encoded = self.data.frame_bytes_many([(p.index, unique) for p, (unique, _) in zip(plans, decode)])
        else:
            encoded = self.data.videos([p.index for p in plans])
        out = self._buffers.take(self._shape(plans))
        work = self._train_clip if self.mode == "train" else self._test_clip
        clips = [
            workers.submit(work, out[n], plan, unique, order, data)
            for n, (plan, (unique, order), data) in enumerate(zip(plans, decode, encoded))
        ]
        return _Batch(plans, torch.from_numpy(out), clips)

    def _shape(self, plans: list[SamplePlan]) -> tuple[int, ...]:
        spec, n = self.spec, len(plans)
        if self.mode == "train":
            return (n, spec.frames, spec.crop_size, spec.crop_size, 3)
        h, w = self._test_size(plans[0])
        if any(self._test_size(p) != (h, w) for p in plans[1:]):
            raise DataError(
                f"test views of different sizes in one batch ({[self._test_size(p) for p in plans]}): "
                "with test_crops='full' the videos of a batch must share one frame size"
            )
        views = len(plans[0].positions) * len(self.flips)
        return (n, spec.num_test_clips, views, spec.frames, h, w, 3)

    def _test_size(self, plan: SamplePlan) -> tuple[int, int]:
        if self.spec.test_crops == "full":
            return resize_shorter(self.spec.test_scale, *self.data.frame_size(plan.index))
        return self.spec.test_crop, self.spec.test_crop

    def _finish(self, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        labels = torch.tensor([p.label for p in batch.plans], dtype=torch.int64)
        indices = np.array([p.index for p in batch.plans], np.int64)
        x = batch.tensor
        if self.mode == "train":
            clips = x.permute(0, 4, 1, 2, 3)  # (N, 3, F, S, S) over (N, F, S, S, 3) memory: channels_last_3d
        else:
            n, c, v, f, h, w, _ = x.shape  # clips-major views, each (3, F, H, W)
            clips = x.permute(0, 1, 2, 6, 3, 4, 5).reshape(n, c * v, 3, f, h, w)
        if self.device == "gpu":
            return clips.pin_memory().to("cuda", non_blocking=True), labels.to("cuda"), indices
        return clips, labels, indices

    # -- one clip (runs in a worker thread; the OpenCV and libjpeg-turbo calls release the GIL)

    def _train_clip(self, out: np.ndarray, plan: SamplePlan, unique: np.ndarray, order: np.ndarray, encoded) -> None:
        """out (F, S, S, 3): decode, crop + resize and flip every distinct frame into one uint8 clip, then the
        colour map and the normalisation over the whole clip at once (one call each: fewer calls that take
        and give back the GIL per frame)."""
        view, size = plan.train, self.spec.crop_size
        box = view.box
        window = (box.y, box.x, box.y + box.h, box.x + box.w)
        jitter = jitter_matrix(view.jitter) if view.jitter is not None else None
        pictures = list(self._pictures(encoded, plan, unique, box=box, out_side=size))
        clip = np.empty((len(pictures), size, size, 3), np.uint8)
        for k, picture in enumerate(pictures):
            picture.resize(window, (size, size), flip=view.flip, dst=clip[k])
        _colour_clip(clip, [_colour_map(jitter, p.colour) for p in pictures])
        # every clip position gets the frame it shows (a frame repeats when the video is shorter than the clip)
        np.copyto(out, clip if np.array_equal(order, np.arange(len(clip))) else clip[order])
        flat = out.reshape(-1, size, 3)
        cv2.transform(flat, self.normalise, dst=flat)

    def _test_clip(self, out: np.ndarray, plan: SamplePlan, unique: np.ndarray, order: np.ndarray, encoded) -> None:
        """out (C, V', F, H, W, 3): decode, resize the short side, then every (crop, flip) view."""
        spec = self.spec
        height, width = resize_shorter(spec.test_scale, *self.data.frame_size(plan.index))
        for k, picture in enumerate(self._pictures(encoded, plan, unique)):
            # as DALI: the whole frame in RGB first, then resized by test_scale / short side on both axes,
            # the rounded output centred on the frame (so export.predict can compute the same views)
            image = RgbPicture(picture.rgb(), picture.height, picture.width)
            scale = spec.test_scale / min(picture.height, picture.width)
            y0, x0 = (picture.height - height / scale) / 2, (picture.width - width / scale) / 2
            image = image.resize((y0, x0, y0 + height / scale, x0 + width / scale), (height, width))
            where = [divmod(int(p), spec.frames) for p in np.flatnonzero(order == k)]  # (clip, frame) showing it
            for c, (px, py) in enumerate(plan.positions):
                window = image
                if spec.test_crops != "full":
                    y0, x0 = crop_origin(py, height, spec.test_crop), crop_origin(px, width, spec.test_crop)
                    window = image[y0 : y0 + spec.test_crop, x0 : x0 + spec.test_crop]
                for i, flip in enumerate(self.flips):
                    x = cv2.flip(window, 1) if flip else window
                    v = c * len(self.flips) + i
                    _write(x, self.normalise, [out[clip, v, f] for clip, f in where])

    def _pictures(
        self, encoded, plan: SamplePlan, unique: np.ndarray, box=None, out_side: int = 0
    ) -> Iterator[Picture]:
        """The distinct frames `unique`, in order, decoded as late as possible (a frame shard's training
        frames: only the window `box` needs, at the smallest DCT scale that keeps it `out_side` wide)."""
        if self.data.is_frames:
            if box is not None and WINDOW_DECODE:  # a clip's windows in one call: the GIL given back once
                yield from self._decode_windows(encoded, plan, unique, box, out_side)
                return
            for frame, jpeg in zip(unique, encoded):
                yield self._decode_jpeg(jpeg, plan, int(frame), box, out_side)
            return
        try:
            frames = decoded_frames(encoded, unique)
            pictures = [video_picture(frame) for frame in frames]
        except (av.FFmpegError, ValueError, IndexError) as err:
            raise DataError(
                f"PyAV could not decode {self.data.where(plan.index)}: {err}. "
                + VERIFY_HINT.format(dir=self.data.folder(plan.index))
            ) from err
        yield from pictures

    def _decode_windows(self, encoded, plan: SamplePlan, unique: np.ndarray, box, out_side: int) -> list[RgbPicture]:
        """The window `box` needs of every frame, decoded together (`window_pictures`)."""
        height, width = self.data.frame_size(plan.index)
        denom = dct_denominator(min(box.h, box.w), out_side)
        try:
            return window_pictures(list(encoded), (box.y, box.x, box.y + box.h, box.x + box.w), denom, height, width)
        except ValueError as err:
            item = re.search(r"\(item (\d+)\)", str(err))
            frame = f", frame {int(unique[int(item.group(1))])}" if item else ""
            raise DataError(
                f"could not decode {self.data.where(plan.index)}{frame} ({err}); "
                + VERIFY_HINT.format(dir=self.data.folder(plan.index))
            ) from None

    def _decode_jpeg(self, jpeg: bytes, plan: SamplePlan, frame: int, box, out_side: int) -> RgbPicture:
        """The whole frame, decoded at 1/2, 1/4 or 1/8 size where a `box` stays at least `out_side` wide
        (DCT-domain scaling; without a box, at full size). Windows are `window_pictures`' work."""
        height, width = self.data.frame_size(plan.index)
        try:
            if box is None:
                return RgbPicture(simplejpeg.decode_jpeg(jpeg, colorspace="RGB"), height, width)
            denom = dct_denominator(min(box.h, box.w), out_side)
            scale = {}
            if denom > 1:
                scale = {"min_height": -(-height // denom), "min_width": -(-width // denom), "min_factor": denom}
            return RgbPicture(simplejpeg.decode_jpeg(jpeg, colorspace="RGB", **scale), height, width)
        except ValueError as err:
            raise DataError(
                f"could not decode {self.data.where(plan.index)}, frame {frame} ({err}); "
                + VERIFY_HINT.format(dir=self.data.folder(plan.index))
            ) from None


# ----------------------------------------------------------------------------- decoded frames


class Picture:
    """A decoded frame of `height` x `width` pixels that can cut and resize a window of itself.

    `resize` returns a window, box = (y0, x0, y1, x1) in frame pixels, resampled (bilinear) to
    size = (H, W) as uint8 (H, W, 3) in the picture's own colour space;
    `colour` is the (3, 4) map from it to RGB (None: it is RGB already).
    """

    height: int
    width: int
    colour: np.ndarray | None = None

    def resize(
        self, box: tuple[float, float, float, float], size: tuple[int, int], flip: bool = False, dst=None
    ) -> np.ndarray:
        raise NotImplementedError

    def rgb(self) -> np.ndarray:
        """The whole frame as (height, width, 3) uint8 RGB."""
        raise NotImplementedError


class RgbPicture(Picture):
    """An RGB image of a `height` x `width` frame: the whole frame, possibly decoded at a reduced size
    (DCT scaling, `scale` = (image rows / frame rows, columns / columns)), or a window of it whose
    top-left pixel is `origin` = (row, column) of the scaled frame."""

    def __init__(
        self,
        image: np.ndarray,
        height: int,
        width: int,
        scale: tuple[float, float] | None = None,
        origin: tuple[int, int] | None = None,
    ):
        self.image, self.height, self.width = image, height, width
        self.window, self.origin = origin is not None, origin or (0, 0)
        self.scale = scale or (image.shape[0] / height, image.shape[1] / width)

    def resize(self, box, size, flip=False, dst=None):
        image = self.image
        if image.shape[:2] == size and tuple(box) == (0, 0, *size) and not flip and not self.window:
            if dst is not None:
                np.copyto(dst, image)
                return dst
            return image
        return _warp(image, box, size, *self.scale, flip, origin=self.origin, dst=dst)

    def rgb(self):
        if self.window:
            raise ValueError("a window of a frame has no whole frame to convert")
        if self.image.shape[:2] != (self.height, self.width):
            return self.resize((0, 0, self.height, self.width), (self.height, self.width))
        return self.image


def dct_denominator(box_side: float, out_side: int) -> int:
    """The largest of 1, 2, 4, 8 that keeps the box at least `out_side` wide once scaled by 1/it."""
    if not out_side:
        return 1
    return next(d for d in (8, 4, 2, 1) if d == 1 or box_side >= d * out_side)


def window_pictures(
    jpegs: list[bytes], box: tuple[float, float, float, float], denom: int, height: int, width: int
) -> list[RgbPicture]:
    """The part of each `height` x `width` JPEG frame that resampling `box` = (y0, x0, y1, x1) reads, decoded
    at 1/denom (libjpeg-turbo's partial decoding, `pipeline.clips._jpegwindow`), all in one call."""
    sy, sx = -(-height // denom) / height, -(-width // denom) / width  # libjpeg rounds scaled sizes up
    y0, x0, y1, x1 = box
    window = (
        math.floor(sy * y0) - WINDOW_MARGIN,
        math.floor(sx * x0) - WINDOW_MARGIN,
        math.ceil(sy * y1) + WINDOW_MARGIN,
        math.ceil(sx * x1) + WINDOW_MARGIN,
    )
    pixels, regions = _jpegwindow.decode_many([(jpeg, *window, denom) for jpeg in jpegs])
    return [
        RgbPicture(
            np.frombuffer(pixels, np.uint8, rows * cols * 3, offset).reshape(rows, cols, 3),
            height,
            width,
            scale=(sy, sx),
            origin=(top, left),
        )
        for offset, top, left, rows, cols in regions
    ]


class Yuv420Picture(Picture):
    """A 4:2:0 video frame left in its Y, U, V planes: the window is resampled plane by plane, the
    chroma straight from half resolution (bilinear upsampling, no full-frame conversion), and the
    YUV -> RGB matrix joins the clip's colour map."""

    def __init__(self, y: np.ndarray, u: np.ndarray, v: np.ndarray, colour: np.ndarray):
        self.planes, self.colour = (y, u, v), colour
        self.height, self.width = y.shape

    def resize(self, box, size, flip=False, dst=None):
        y, u, v = self.planes
        cy, cx = u.shape[0] / self.height, u.shape[1] / self.width
        planes = [
            _warp(y, box, size, 1.0, 1.0, flip),
            _warp(u, box, size, cy, cx, flip),
            _warp(v, box, size, cy, cx, flip),
        ]
        return cv2.merge(planes, dst=dst)

    def rgb(self):
        """Chroma upsampled bilinearly (centre-sited) in float, converted, rounded once: DALI's and
        export.predict's conversion of whole frames."""
        y, u, v = (p.astype(np.float32) for p in self.planes)
        box, size = (0, 0, self.height, self.width), (self.height, self.width)
        cy, cx = u.shape[0] / self.height, u.shape[1] / self.width
        yuv = cv2.merge([y, _warp(u, box, size, cy, cx), _warp(v, box, size, cy, cx)])
        rgb = cv2.transform(yuv, self.colour.astype(np.float32))
        np.clip(rgb, 0, 255, out=rgb)
        return np.rint(rgb).astype(np.uint8)


def frame_rgb(frame: av.VideoFrame) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a whole decoded frame, converted as the loader converts its test views."""
    return video_picture(frame).rgb()


def video_picture(frame: av.VideoFrame) -> Picture:
    """A decoded video frame: its planes when it is 8-bit 4:2:0, else converted to RGB by libswscale."""
    if frame.format.name not in ("yuv420p", "yuvj420p"):
        return RgbPicture(frame.to_ndarray(format="rgb24"), frame.height, frame.width)
    full = frame.format.name == "yuvj420p" or int(frame.color_range) == 2  # AVCOL_RANGE_JPEG
    matrix = "bt709" if int(frame.colorspace) == 1 else "bt601"  # AVCOL_SPC_BT709; untagged reads as BT.601
    h, w = frame.height, frame.width
    planes = [
        _plane(frame.planes[i], *dims)
        for i, dims in enumerate([(h, w), ((h + 1) // 2, (w + 1) // 2), ((h + 1) // 2, (w + 1) // 2)])
    ]
    return Yuv420Picture(*planes, colour=yuv_to_rgb_matrix(matrix, full))


def _plane(plane, height: int, width: int) -> np.ndarray:
    """A view of one plane of a frame (rows `line_size` bytes apart)."""
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:height, :width]


def _warp(
    plane: np.ndarray,
    box: tuple[float, float, float, float],
    size: tuple[int, int],
    sy: float,
    sx: float,
    flip: bool = False,
    origin: tuple[int, int] = (0, 0),
    dst: np.ndarray | None = None,
) -> np.ndarray:
    """The frame window box = (y0, x0, y1, x1) resampled (bilinear) to size = (H, W) from a plane that
    holds the frame at scale (sy, sx) (1: full size; 0.5: 4:2:0 chroma or a 1/2 DCT-scaled decode), or
    the part of it from pixel `origin` = (row, column) on, mirrored left-right with `flip`.

    Output pixel i samples the plane at s * (x0 + (i + 0.5) * w / W) - 0.5: pixel centres mapped as DALI's
    `fn.resize` maps them, reading past the window's edge where the frame goes on (as DALI does).
    """
    (y0, x0, y1, x1), (h, w) = box, size
    ay, ax = sy * (y1 - y0) / h, sx * (x1 - x0) / w
    bx = sx * x0 + 0.5 * ax - 0.5 - origin[1]
    if flip:  # output column i shows what column W - 1 - i would
        ax, bx = -ax, bx + ax * (w - 1)
    m = np.array([[ax, 0.0, bx], [0.0, ay, sy * y0 + 0.5 * ay - 0.5 - origin[0]]], np.float32)
    return cv2.warpAffine(
        plane, m, (w, h), dst=dst, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )


def name_os_thread(name: str) -> None:
    """Give the calling OS thread `name` (as top, py-spy and /proc/*/task/*/comm show it; Python before 3.14
    names only its own Thread objects), so the loader's threads can be told apart when profiling."""
    try:
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME (Linux)
    except (OSError, AttributeError):
        pass


class _Buffers:
    """Batch memory, reused once the batch handed out from it is gone.

    `take` hands out a fresh array view of pooled memory and keeps only a weak
    reference to that view. A batch tensor (`torch.from_numpy`) and every view
    of it keep the array alive, so the memory is free again exactly when the
    caller holds nothing of that batch: a batch the caller keeps is never
    written again. Reusing memory skips the page faults a fresh allocation of
    tens of MB costs on its first write, every batch. Thread-safe: the reader
    thread takes buffers while the caller drops batches.
    """

    def __init__(self, keep: int):
        self.keep = keep  # slots remembered; a kept batch beyond them just keeps its own memory
        self._slots: list[tuple[np.ndarray, weakref.ref | None]] = []  # (memory, the array lent from it)
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        with self._lock:
            for k, (memory, lent) in enumerate(self._slots):
                if memory.shape == shape and (lent is None or lent() is None):
                    return self._lend(k, memory)
            self._slots = self._slots[-(self.keep - 1) :] if self.keep > 1 else []
            self._slots.append((np.empty(shape, np.float32), None))
            return self._lend(len(self._slots) - 1, self._slots[-1][0])

    def _lend(self, k: int, memory: np.ndarray) -> np.ndarray:
        array = memory.view()
        self._slots[k] = (memory, weakref.ref(array))
        return array


def _colour_clip(clip: np.ndarray, maps: list[np.ndarray | None]) -> None:
    """Apply each frame's 3x4 colour map to uint8 `clip` (K, S, S, 3) in place, rounded and clipped to 0-255 as
    DALI's operators do; one call for the whole clip when its frames share one map (they do, but for a video
    whose frames change colour space)."""
    if all(m is None for m in maps):
        return
    if all(m is not None and np.array_equal(m, maps[0]) for m in maps):
        flat = clip.reshape(-1, clip.shape[2], 3)
        cv2.transform(flat, maps[0], dst=flat)
        return
    for frame, m in zip(clip, maps):
        if m is not None:
            cv2.transform(frame, m, dst=frame)


def _colour_map(jitter: np.ndarray | None, to_rgb: np.ndarray | None) -> np.ndarray | None:
    """The one 3x4 map a frame goes through: its YUV -> RGB matrix, then the clip's jitter (None: neither)."""
    if jitter is None or to_rgb is None:
        return to_rgb if jitter is None else jitter
    return compose(jitter, to_rgb)


def _write(image: np.ndarray, normalise: np.ndarray, targets: list[np.ndarray]) -> None:
    """Normalise uint8 `image` into the first float32 target (in place there), copy it to the others
    (the clip positions that show the same frame)."""
    first = targets[0]
    np.copyto(first, image)
    cv2.transform(first, normalise, dst=first)
    for target in targets[1:]:
        target[...] = first
