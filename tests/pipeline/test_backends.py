"""The CPU backends are interchangeable: DALI's graphs and the host path (libjpeg-turbo or PyAV + OpenCV).

Both consume the same `SamplePlan`s, so they return the same samples, labels,
frames, boxes and flips (exact frames are checked per backend in
test_loader.py); their pixels differ only by resampling and rounding. The
tolerances, as |difference| on the 0-255 scale (mean; 99th percentile):

| | frame shards (JPEG) | video shards (VP9) |
|---|---|---|
| training clips | 0.5; 3 | 1.5; 8 |
| test views | 1.0; 6 | 2.0; 9 |

Training clips of frame shards without jitter agree to rounding (the host
maps pixel centres as DALI's resize does); with jitter DALI rounds and clips
between its two colour operators, the host once. Test views resized by a
non-integer factor differ by OpenCV's and DALI's bilinear weights. Video
frames differ more: DALI converts whole frames to RGB (upsampling the 4:2:0
chroma first), the host resamples the chroma planes straight to the output.
"""

WINDOW_MISSING = (
    "pipeline.clips._jpegwindow is not built (setup.py needs a C compiler and libjpeg-turbo's headers, "
    "e.g. Debian's libjpeg62-turbo-dev; reinstall with pip install -e .)"
)
TOLERANCE = {
    ("jpeg", "train"): (0.5, 3),
    ("jpeg", "test"): (1.0, 6),
    ("vp9", "train"): (1.5, 8),
    ("vp9", "test"): (2.0, 9),
}

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from nvidia.dali import fn, pipeline_def

from pipeline import ClipLoader, ClipSpec
from pipeline.clips import sampling
from pipeline.clips.colour import jitter_matrix, normalise_matrix
from tests.clipdata import make_shards, to_rgb


def textured_frames(n: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """Camera-like frames: a coarse random texture panning right by a pixel per frame, plus sensor noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = cv2.resize(
        rng.integers(0, 256, (h // 6, w // 6, 3), dtype=np.uint8), (w + n, h), interpolation=cv2.INTER_CUBIC
    )
    noise = rng.normal(0, 6, (n, h, w, 3))
    return np.stack([np.clip(base[:, i : i + w] + noise[i], 0, 255).astype(np.uint8) for i in range(n)])


@pytest.fixture(scope="module", params=["jpeg", "vp9"])
def textured(request, tmp_path_factory) -> Path:
    sizes = {"a0": (12, (96, 72)), "a1": (20, (72, 96)), "b0": (16, (96, 72)), "b1": (9, (80, 80))}
    videos: dict[str, list] = {"a": [], "b": []}
    for seed, (name, (n, size)) in enumerate(sizes.items()):
        videos[name[0]].append((name, textured_frames(n, size, seed)))
    return make_shards(tmp_path_factory.mktemp(f"textured-{request.param}-"), videos, codec=request.param)


def codec_of(shards: Path) -> str:
    return shards.parent.name.split("-")[1]


def assert_close(a: torch.Tensor, b: torch.Tensor, spec: ClipSpec, limits: tuple[float, float], keys) -> None:
    diff = (to_rgb(a, spec) - to_rgb(b, spec)).abs()
    mean, q99 = diff.mean().item(), diff.quantile(0.99).item()
    assert mean < limits[0] and q99 <= limits[1], (keys, mean, q99)


def both(shards: Path, spec: ClipSpec, mode: str) -> list[tuple]:
    runs = []
    for decoder in ("cpu", "host"):
        ld = ClipLoader(shards, spec, mode=mode, batch_size=2, device="cpu", decoder=decoder, return_keys=True, seed=3)
        runs.append([(c.clone(), labels, keys) for c, labels, keys in ld])
    return list(zip(*runs, strict=True))


@pytest.mark.parametrize("jitter", [False, True], ids=["plain", "jitter"])
def test_host_and_dali_training_clips_agree(textured, jitter):
    spec = ClipSpec(frames=4, stride=2, crop_size=48, color_jitter=jitter)
    pairs = both(textured, spec, "train")
    assert len(pairs) == 2
    for (a, la, ka), (b, lb, kb) in pairs:
        assert ka == kb and torch.equal(la, lb) and a.shape == b.shape == (2, 3, 4, 48, 48)
        assert_close(a, b, spec, TOLERANCE[codec_of(textured), "train"], ka)


def test_host_and_dali_test_views_agree(textured):
    spec = ClipSpec(frames=4, stride=2, test_scale=56, test_crop=48, test_clips=2, test_flip=True)
    pairs = both(textured, spec, "test")
    assert len(pairs) == 2
    for (a, la, ka), (b, lb, kb) in pairs:
        assert ka == kb and torch.equal(la, lb) and a.shape == b.shape and a.shape[1:3] == (12, 3)
        assert_close(a, b, spec, TOLERANCE[codec_of(textured), "test"], ka)


def test_host_training_clips_are_channels_last_3d(textured):
    ld = ClipLoader(textured, ClipSpec(frames=4, stride=2, crop_size=48), batch_size=2, device="cpu", decoder="host")
    clips, _ = next(iter(ld))
    assert clips.is_contiguous(memory_format=torch.channels_last_3d)


# -- the colour maps against DALI's operators ---------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_jitter_matrix_is_dalis_hsv_then_brightness_contrast(seed):
    jitter = sampling.draw_jitter(np.random.default_rng(seed))
    rng = np.random.default_rng(100 + seed)
    image = rng.uniform(60, 195, (32, 32, 3)).astype(np.float32)  # no channel leaves 0-255 under the jitter
    j = np.array([jitter.hue, jitter.saturation, jitter.contrast, jitter.brightness / 255.0], np.float32)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def graph():
        x = fn.external_source(source=lambda: [image], batch=True, layout="HWC")
        # float in and out: the loader's maths (DALI still rounds each operator's output to whole levels)
        x = fn.hsv(x, hue=float(j[0]), saturation=float(j[1]))
        return fn.brightness_contrast(x, contrast=float(j[2]), brightness_shift=float(j[3]))

    pipe = graph()
    pipe.build()
    (out,) = pipe.run()
    m = jitter_matrix(jitter).astype(np.float64)
    want = image.reshape(-1, 3) @ m[:, :3].T + m[:, 3]
    assert want.min() > 0 and want.max() < 255
    got = np.array(out[0]).reshape(-1, 3)
    # each operator rounds to a whole level: at most 0.5 * contrast + 0.5 apart, about 0.33 on average
    assert np.abs(got - want).max() <= 0.5 * jitter.contrast + 0.5 + 1e-3 and np.abs(got - want).mean() < 0.45
    assert np.abs(want - image.reshape(-1, 3)).mean() > 3  # the map is not close to the identity


def test_normalise_matrix_is_crop_mirror_normalize_on_uint8():
    spec = ClipSpec()
    values = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    got = cv2.transform(values.astype(np.float32), normalise_matrix(spec.mean, spec.std))
    want = (values.astype(np.float64) - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_host_batch_buffers_are_reused_only_when_nothing_refers_to_them():
    from pipeline.clips.host import _Buffers

    def address(a: np.ndarray) -> int:
        return a.__array_interface__["data"][0]

    pool = _Buffers(keep=4)
    a = pool.take((2, 3))
    first = address(a)
    clips = torch.from_numpy(a).permute(1, 0)  # what the loader yields: a view of the buffer
    del a
    b = pool.take((2, 3))
    assert address(b) != first  # the batch is still alive: a new buffer
    view = clips[0]
    del clips
    c = pool.take((2, 3))
    assert address(c) not in (first, address(b))  # a view alone keeps the buffer in use too
    del view
    d = pool.take((2, 3))
    assert address(d) == first  # nothing refers to the first buffer any more: it comes back


@pytest.mark.parametrize("window", [False, True], ids=["whole", "window"])
def test_host_decodes_crops_twice_the_output_at_reduced_size(tmp_path, monkeypatch, window):
    """DCT-domain scaling: a crop box at least twice the output decodes at 1/2 (or less), the frames stay exact
    (whole frames with simplejpeg, windows with pipeline.clips._jpegwindow)."""
    from pipeline.clips import host
    from tests.clipdata import SMALL, coded_frames, frame_codes

    if window and host._jpegwindow is None:
        pytest.skip(WINDOW_MISSING)
    monkeypatch.setattr(host, "WINDOW_DECODE", window)
    frames = coded_frames(12, size=(192, 144))
    shards = make_shards(tmp_path, {"a": [("a0", frames)], "b": [("b0", frames)]}, codec="jpeg")
    decoded, real = [], host.simplejpeg.decode_jpeg

    def spy(data, **kw):
        image = real(data, **kw)
        decoded.append(image.shape[:2])
        return image

    class WindowSpy:
        @staticmethod
        def decode_many(items):
            result = real_window.decode_many(items)
            decoded.extend((-(-144 // item[-1]), None) for item in items)  # the frame's rows at its decode scale
            return result

    real_window = host._jpegwindow
    monkeypatch.setattr(host.simplejpeg, "decode_jpeg", spy)
    monkeypatch.setattr(host, "_jpegwindow", WindowSpy if window else None)
    for scale, reduced in (((0.6, 1.0), True), ((0.01, 0.02), False)):  # boxes >= 2 x 32, and boxes < 32
        decoded.clear()
        spec = SMALL.replace(scale_range=scale)
        ld = ClipLoader(shards, spec, batch_size=2, device="cpu", decoder="host", return_keys=True, seed=1)
        for clips, _, keys in ld:
            want = np.stack([ld.plan([ld.data.key(i) for i in range(2)].index(k), 0).frames for k in keys])
            np.testing.assert_array_equal(frame_codes(clips, spec), want)
        assert decoded and all((h < 144) == reduced for h, _ in decoded), decoded


def test_host_threads_carry_their_names_to_the_os(textured):
    """top, py-spy and the benchmark's per-thread accounting tell the loader's threads apart by their OS name."""
    import os
    from pathlib import Path as P

    ld = ClipLoader(textured, ClipSpec(frames=4, stride=2, crop_size=48), batch_size=2, device="cpu", decoder="host")
    it = iter(ld)
    next(it)
    names = {(P(t) / "comm").read_text().strip() for t in P(f"/proc/{os.getpid()}/task").iterdir()}
    it.close()
    assert {"host-decode", "host-read"} <= names, names


# -- partial decoding -----------------------------------------------------------------------------


def test_window_decode_is_the_full_decode_cut_to_the_window(tmp_path):
    """pipeline._jpegwindow gives exactly the pixels a whole-frame decode has there, at every DCT scale."""
    import simplejpeg

    from pipeline.clips import host

    if host._jpegwindow is None:
        if Path("/usr/include/jpeglib.h").exists():
            pytest.fail(f"libjpeg-turbo's headers are here but {WINDOW_MISSING}")
        pytest.skip(WINDOW_MISSING)
    frames = textured_frames(3, (341, 256), seed=7)  # odd width: partial MCUs at the right edge
    rng = np.random.default_rng(0)
    checked = 0
    for subsampling in ("420", "444"):
        for frame in frames:
            jpeg = simplejpeg.encode_jpeg(frame, quality=95, colorsubsampling=subsampling)
            for denom in (1, 2, 4, 8):
                full = simplejpeg.decode_jpeg(
                    jpeg, min_height=-(-256 // denom), min_width=-(-341 // denom), min_factor=denom
                )
                h, w = full.shape[:2]
                for _ in range(6):
                    y0, x0 = rng.integers(0, h - 1), rng.integers(0, w - 1)
                    y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
                    pixels, top, left, rows, cols = host._jpegwindow.decode(jpeg, y0, x0, y1, x1, denom)
                    got = np.frombuffer(pixels, np.uint8).reshape(rows, cols, 3)
                    assert top == y0 and left <= x0 and top + rows == y1 and left + cols >= x1
                    np.testing.assert_array_equal(got, full[top : top + rows, left : left + cols])
                    checked += 1
    assert checked == 2 * 3 * 4 * 6
    # several windows in one call: the same regions, packed in one buffer
    items = [(simplejpeg.encode_jpeg(f, quality=90), 10 * k, 7 * k, 120 + k, 200 + 9 * k, 1 << k) for k, f in
             enumerate(frames)]  # fmt: skip
    pixels, regions = host._jpegwindow.decode_many(items)
    for item, (offset, top, left, rows, cols) in zip(items, regions, strict=True):
        alone, *where = host._jpegwindow.decode(*item)
        assert where == [top, left, rows, cols]
        assert pixels[offset : offset + rows * cols * 3] == alone


def test_window_decode_names_bad_input():
    import simplejpeg

    from pipeline.clips import host

    if host._jpegwindow is None:
        pytest.skip(WINDOW_MISSING)
    with pytest.raises(ValueError, match="JPEG decode failed"):
        host._jpegwindow.decode(b"\xff\xd8 not a jpeg", 0, 0, 8, 8, 1)
    with pytest.raises(ValueError, match="denom"):
        host._jpegwindow.decode(b"", 0, 0, 8, 8, 3)
    good = simplejpeg.encode_jpeg(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=r"JPEG decode failed \(item 1\)"):
        host._jpegwindow.decode_many([(good, 0, 0, 8, 8, 1), (b"\xff\xd8 not a jpeg", 0, 0, 8, 8, 1)])
    with pytest.raises(ValueError, match=r"outside the image \(item 0\)"):
        host._jpegwindow.decode_many([(good, 20, 20, 30, 30, 1)])
