"""pipeline.synth: deterministic files, the promised layout, and classes that only motion separates."""

import hashlib

import av
import numpy as np
import pytest

from pipeline.synth import CLASS_NAMES, SPEEDS, SynthConfig, main, make_dataset, motion, render_video

TINY = {"classes": 2, "train_per_class": 2, "val_per_class": 1, "frames": 16, "size": (64, 48)}


def _digests(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.mp4"))
    }


def test_layout_and_reuse(tmp_path):
    out = make_dataset(tmp_path / "s", **TINY, seed=1)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mp4")) == [
        "train/left_slow/left_slow_0000.mp4",
        "train/left_slow/left_slow_0001.mp4",
        "train/right_slow/right_slow_0000.mp4",
        "train/right_slow/right_slow_0001.mp4",
        "val/left_slow/left_slow_0000.mp4",
        "val/right_slow/right_slow_0000.mp4",
    ]
    stamp = (out / "train/left_slow/left_slow_0000.mp4").stat().st_mtime_ns
    make_dataset(out, **TINY, seed=1)  # complete with the same settings: reused untouched
    assert (out / "train/left_slow/left_slow_0000.mp4").stat().st_mtime_ns == stamp
    with av.open(str(out / "val/right_slow/right_slow_0000.mp4")) as c:
        s = c.streams.video[0]
        frames = [f for f in c.decode(s)]
        assert (len(frames), s.codec_context.width, s.codec_context.height, s.average_rate) == (16, 64, 48, 25)


def test_same_seed_same_bytes_other_seed_other_videos(tmp_path):
    a = _digests(make_dataset(tmp_path / "a", **TINY, seed=5, workers=1))
    b = _digests(make_dataset(tmp_path / "b", **TINY, seed=5, workers=2))
    c = _digests(make_dataset(tmp_path / "c", **TINY, seed=6))
    assert a == b
    assert set(a) == set(c) and all(a[k] != c[k] for k in a)


def test_regenerating_with_other_settings_replaces_the_old_set(tmp_path):
    out = make_dataset(tmp_path / "s", **TINY)
    make_dataset(out, **{**TINY, "classes": 3, "train_per_class": 1, "val_per_class": 0})
    assert sorted(p.parent.name for p in out.rglob("*.mp4")) == ["down_slow", "left_slow", "right_slow"]


def test_a_single_frame_carries_no_class_information():
    """Given the same per-video draw, every class renders the very same first frame."""
    first = [render_video(name, np.random.default_rng(7), 3, (96, 64))[0] for name in CLASS_NAMES]
    for frame in first[1:]:
        np.testing.assert_array_equal(frame, first[0])
    later = {render_video(name, np.random.default_rng(7), 3, (96, 64))[2].tobytes() for name in CLASS_NAMES}
    assert len(later) == len(CLASS_NAMES)  # ... while motion makes later frames differ by class


def _shift(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """Circular (dy, dx) that best maps mask `a` onto mask `b`."""
    corr = np.fft.ifft2(np.fft.fft2(b) * np.conj(np.fft.fft2(a))).real
    dy, dx = np.unravel_index(np.argmax(corr), corr.shape)
    h, w = a.shape
    return (dy + h // 2) % h - h // 2, (dx + w // 2) % w - w // 2


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_object_moves_with_the_class_direction_and_speed(name):
    w, h, t = 160, 120, 4
    video = render_video(name, np.random.default_rng(11), 96, (w, h)).astype(int)
    background = np.median(video, axis=0)
    masks = (np.abs(video - background).max(axis=-1) > 12).astype(float)
    dy, dx = _shift(masks[0], masks[t])
    my, mx, speed = motion(name)
    assert speed == SPEEDS[name.split("_")[1]]
    assert abs(dy - my * speed * h * t) <= 1.5 and abs(dx - mx * speed * w * t) <= 1.5


def test_config_validation_and_cli(tmp_path, capsys):
    with pytest.raises(ValueError, match="classes"):
        SynthConfig(classes=9)
    with pytest.raises(ValueError, match="even"):
        SynthConfig(size=(65, 48))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep me")
    assert main([str(tmp_path / "busy")]) == 1
    assert "not empty" in capsys.readouterr().err and (tmp_path / "busy" / "mine.txt").exists()
    assert (
        main(
            [
                str(tmp_path / "cli"),
                "--classes",
                "2",
                "--train-per-class",
                "1",
                "--val-per-class",
                "1",
                "--frames",
                "8",
                "--size",
                "64x48",
            ]
        )
        == 0
    )
    assert "wrote 4 videos" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
