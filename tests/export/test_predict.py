"""`export.predict`: the loader's test views from any video file, and a folder of mixed files classified.

The fitted tiny model of `tests.export_helpers` gets every validation video
right through the loader; re-muxed and losslessly re-encoded copies of
those videos must then be classified right by `export.predict` too, from
the exported ONNX file and from the checkpoint alike.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tpn
from export import runtime
from export.errors import ExportError
from export.onnx import export_onnx
from export.predict import (
    find_videos,
    main,
    protocol_views,
    read_class_names,
    resize_short_side,
    sampled_frames,
    top_classes,
)
from pipeline import ClipLoader, clip_indices
from pipeline.shard.ffmpeg import find_ffmpeg
from pipeline.format.shardset import ShardSet
from tests.export_helpers import TINY, make_val_shards, trained_tiny
from tests.shard_helpers import write_anamorphic

# container: ffmpeg codec arguments (lossless, so the frames are the shard video's exactly)
LOSSLESS = {
    "mp4": ["-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p"],
    "mkv": ["-c:v", "ffv1", "-pix_fmt", "yuv420p"],
    "avi": ["-c:v", "ffv1", "-pix_fmt", "yuv420p"],
}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    shards = make_val_shards(root)
    ckpt = trained_tiny(root, shards)
    onnx_path = export_onnx(TINY, checkpoint=ckpt, out_dir=root / "out", size="test", parity_batches=(2,)).path
    data = ShardSet.open(shards)
    videos = root / "shard_videos"
    videos.mkdir()
    labels = {}
    for i in range(len(data)):
        f = videos / f"{data.key(i).replace('/', '_')}.{data.video_ext}"
        f.write_bytes(bytes(data.member(i, "video")))
        labels[f.stem] = data.classes[data.label(i)]
    return dict(root=root, shards=shards, ckpt=ckpt, onnx=Path(onnx_path), videos=videos, labels=labels, data=data)


def _transcode(src: Path, dst: Path, codec: list[str]) -> Path:
    argv = [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), *codec, str(dst)]
    subprocess.run(argv, check=True, timeout=60)
    return dst


# ----------------------------------------------------------------- the views are the loader's


@pytest.mark.parametrize(
    "changes",
    [{}, {"test_scale": 100, "test_crop": 64, "test_flip": True}, {"test_crops": "center", "test_clips": 3}],
    ids=["config", "upscaled-three-crops-flipped", "centre-crop-three-clips"],
)
def test_views_match_the_loaders_test_mode(work, changes):
    spec = tpn.get_config(TINY).clip.replace(**changes)
    loader = ClipLoader(work["shards"], spec, mode="test", batch_size=4, return_keys=True, device="cpu")
    std = torch.tensor(spec.std).view(1, 3, 1, 1, 1)
    checked = 0
    for clips, _, keys in loader:
        for views, key in zip(clips, keys):
            f = work["videos"] / f"{key.replace('/', '_')}.{work['data'].video_ext}"
            frames, n, _ = sampled_frames(f, spec, min_frames=1)
            mine = protocol_views(frames, spec)
            assert mine.shape == views.shape == (spec.num_test_views, 3, spec.frames, spec.test_crop, spec.test_crop)
            levels = (mine - views).abs() * std  # in 0-255 pixel levels
            assert levels.max() <= 1.01 and levels.mean() < 0.05, (key, float(levels.max()))
            checked += 1
    assert checked == len(work["data"])


def test_yuv_conversion_and_resize_units():
    import av

    from pipeline import frame_rgb

    for luma, rgb in ((235, 255), (16, 0)):  # white and black in limited range, no colour
        planes = np.concatenate([np.full((4, 6), luma, np.uint8), np.full((2, 6), 128, np.uint8)])  # Y, U, V
        assert (frame_rgb(av.VideoFrame.from_ndarray(planes, format="yuv420p")) == rgb).all()
    frame = np.random.default_rng(0).integers(0, 256, (72, 96, 3), dtype=np.uint8)
    assert resize_short_side(frame, 72) is frame
    assert resize_short_side(frame, 128).shape == (128, 171, 3)  # 96 * 128 / 72 = 170.7
    assert resize_short_side(frame, 36).shape == (36, 48, 3)
    flat = np.full((72, 96, 3), 77, np.uint8)
    assert (resize_short_side(flat, 128) == 77).all() and (resize_short_side(flat, 36) == 77).all()


def test_top_classes_and_class_files(tmp_path):
    probs = torch.tensor([0.1, 0.5, 0.04, 0.2, 0.11, 0.05])
    top = top_classes(probs, list("abcdef"))
    assert [t["class"] for t in top] == ["b", "d", "e", "a", "f"] and [t["index"] for t in top] == [1, 3, 4, 0, 5]
    assert top[0]["prob"] == pytest.approx(0.5)
    (tmp_path / "names.txt").write_text("walk\nrun\n\n")
    assert read_class_names(tmp_path / "names.txt") == ["walk", "run"]
    (tmp_path / "classes.json").write_text('["a", "b"]')
    assert read_class_names(tmp_path) == ["a", "b"]
    for bad, why in (('["a", "a"]', "distinct class names"), ('{"a": 0}', "JSON list"), ("[a", "not valid JSON")):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(ExportError, match=why):
            read_class_names(tmp_path / "bad.json")
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom\xff\xfe\x80" + bytes(32))  # --classes clip.mp4
    with pytest.raises(ExportError, match="clip.mp4 is not a text file of class names"):
        read_class_names(tmp_path / "clip.mp4")


# ----------------------------------------------------------------- a folder of mixed files


@pytest.fixture(scope="module")
def folder(work):
    """Every validation video as webm (the shard's own bytes) and one lossless re-encode per container, plus bad
    files."""
    out = work["root"] / "mixed"
    (out / "sub").mkdir(parents=True)
    expected = {}
    sources = sorted(work["videos"].glob("*.webm"))
    for i, src in enumerate(sources):
        dst = out / src.name
        dst.write_bytes(src.read_bytes())
        expected[str(dst)] = work["labels"][src.stem]
        ext = list(LOSSLESS)[i % len(LOSSLESS)]
        copy = _transcode(src, out / "sub" / f"{src.stem}.{ext}", LOSSLESS[ext])
        expected[str(copy)] = work["labels"][src.stem]
    good = sources[0].read_bytes()
    (out / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + good[len(good) // 2 :])
    short = _transcode(sources[0], out / "short.mkv", LOSSLESS["mkv"][:2] + ["-frames:v", "3"])
    (out / "notes.txt").write_text("not a video")
    return out, expected, short


@pytest.mark.parametrize("source", ["onnx", "ckpt"])
def test_folder_of_containers_is_classified_and_bad_files_listed(work, folder, source, tmp_path, capsys):
    out, expected, short = folder
    js = tmp_path / "pred.json"
    argv = [
        str(work[source]),
        str(out),
        "--model",
        TINY,
        "--classes",
        str(work["shards"] / "classes.json"),
        "--json",
        str(js),
    ]
    assert main(argv) == 1  # some files failed
    text = capsys.readouterr().out
    assert f"classified {len(expected)} of {len(expected) + 2} videos" in text and "1 non-video files skipped" in text
    report = json.loads(js.read_text())
    videos = report["videos"]
    assert set(videos) == set(expected) | {str(out / "broken.mp4"), str(short)}
    for path, label in expected.items():
        top = videos[path]["top5"]
        assert len(top) == 5 and top[0]["class"] == label, (path, top)
        assert (
            all(top[i]["prob"] >= top[i + 1]["prob"] for i in range(4))
            and 0.0 < sum(t["prob"] for t in top) <= 1.0 + 1e-5
        )
        assert videos[path]["views"] == 6 and videos[path]["frames"] == 40
    assert videos[str(out / "broken.mp4")]["error"].startswith("cannot be read")
    assert "[Errno" not in videos[str(out / "broken.mp4")]["error"]  # libav's reason in words, not its number
    assert "too short: 3 frames" in videos[str(short)]["error"]
    assert report["failed"] == {p: v["error"] for p, v in videos.items() if "error" in v}
    onnx_backend = "openvino" if runtime.openvino_installed() else "ort-cpu"
    assert report["backend"].startswith(onnx_backend if source == "onnx" else "pytorch")


def test_a_partly_decodable_video_is_classified_with_a_note(work, monkeypatch):
    """Fewer frames decode than the file holds: the clips spread over what decodes, and the user is told."""
    from export import predict as mod

    real = mod.decode_in_order

    def cut_short(path, wanted, resize):  # the file stops decoding after 12 of its 40 frames
        frames, _ = real(path, wanted[wanted < 12], resize)
        return frames, 12

    monkeypatch.setattr(mod, "decode_in_order", cut_short)
    video = sorted(work["videos"].glob("*.webm"))[0]
    frames, n, note = mod.sampled_frames(video, tpn.get_config(TINY).clip, min_frames=1)
    assert n == 12 and "only 12 of its 40 frames decode" in note and len(frames) > 0


def test_class_names_come_from_the_checkpoint(work, capsys):
    ckpt = work["root"] / "named.pth"
    obj = torch.load(work["ckpt"], weights_only=True)
    obj["classes"] = [f"name{i}" for i in range(8)]
    torch.save(obj, ckpt)
    video = next(work["videos"].glob("*.webm"))
    assert main([str(work["onnx"]), str(video), "--model", TINY, "--checkpoint", str(ckpt)]) == 0
    assert "name" in capsys.readouterr().out
    assert main([str(ckpt), str(video), "--model", TINY]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(str(video)) and line.count("%") == 5 and "name" in line


def test_a_checkpoint_source_is_read_once(work, monkeypatch, capsys):
    ckpt = work["root"] / "named_once.pth"
    obj = torch.load(work["ckpt"], weights_only=True)
    obj["classes"] = [f"label{i}" for i in range(8)]
    torch.save(obj, ckpt)
    reads, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **kw: reads.append(str(f)) or real_load(f, *a, **kw))
    video = next(work["videos"].glob("*.webm"))
    assert main([str(ckpt), str(video), "--model", TINY]) == 0
    assert reads == [str(ckpt)] and "label" in capsys.readouterr().out


def test_bad_inputs_are_named(work, tmp_path, capsys):
    video = next(work["videos"].glob("*.webm"))
    assert main([str(tmp_path / "none.onnx"), str(video), "--model", TINY]) == 3
    assert "does not exist" in capsys.readouterr().err
    assert main([str(work["onnx"]), str(tmp_path / "missing.mp4"), "--model", TINY]) == 3
    assert "missing.mp4 does not exist" in capsys.readouterr().err
    assert main([str(work["onnx"]), str(video), "--model", "baseline_tiny_f8s4"]) == 3
    assert "exported from tpn_tiny_f8s4" in capsys.readouterr().err
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    assert main([str(work["onnx"]), str(video), "--model", TINY, "--classes", str(tmp_path / "three.txt")]) == 3
    assert "names 3 classes but the model has 8" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(work["onnx"]), str(empty), "--model", TINY]) == 3  # bad input, like a missing file
    assert "no videos in" in capsys.readouterr().err


def test_small_answers_say_what_is_what(work, tmp_path, capsys):
    """Unknown class names are said once; an empty file is empty; a folder of JPEG frames is a video, given
    directly or inside a folder, its gap named; a truncated video says how much of it decodes, in
    pipeline.shard's words."""
    from pipeline.shard.ffmpeg import find_ffmpeg

    video = next(work["videos"].glob("*.webm"))
    assert main([str(work["onnx"]), str(video), "--model", TINY]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("class names unknown") == 1 and "pass --classes" in captured.err
    assert "classes from none" not in captured.err and "class " in captured.out
    (tmp_path / "zero.mp4").write_bytes(b"")
    assert main([str(work["onnx"]), str(tmp_path / "zero.mp4"), "--model", TINY]) == 1
    assert "zero.mp4: is empty (0 bytes)" in capsys.readouterr().out
    frames = tmp_path / "videos" / "v1" / "1025"
    frames.mkdir(parents=True)
    subprocess.run([find_ffmpeg(), "-v", "error", "-i", str(video), "-start_number", "1", str(frames / "%05d.jpg")],
                   check=True)  # fmt: skip
    (frames / "00003.jpg").unlink()
    for given in (frames, tmp_path / "videos"):
        assert main([str(work["onnx"]), str(given), "--model", TINY]) == 0
        out = capsys.readouterr().out
        assert "1025: " in out and "frames 3 are missing from its numbering" in out and "skipped" not in out
    cut = tmp_path / "cut.webm"
    data = video.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert main([str(work["onnx"]), str(cut), "--model", TINY]) == 0
    assert "frames decode (a cut or damaged file): classified on those" in capsys.readouterr().out


@pytest.mark.slow
def test_an_export_at_the_training_size_is_refused_with_what_to_do(work, tmp_path, capsys):
    """The test protocol feeds test_crop views; a default (--size train) export takes the training crop."""
    spec = tpn.get_config(TINY).clip
    assert spec.crop_size != spec.test_crop
    train_size = export_onnx(TINY, checkpoint=work["ckpt"], out_dir=tmp_path, size="train", parity_batches=(1,)).path
    video = next(work["videos"].glob("*.webm"))
    assert main([train_size, str(video), "--model", TINY]) == 3
    err = capsys.readouterr().err
    assert f"takes {spec.crop_size}x{spec.crop_size} clips" in err and "--size test" in err


def test_find_videos(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.MP4", "a/y.webm", "a/z.txt", "w.bin"):
        (tmp_path / name).write_bytes(b"")
    videos, skipped, folder_given = find_videos([tmp_path / "a", tmp_path / "w.bin"])
    assert [v.name for v in videos] == ["x.MP4", "y.webm", "w.bin"] and skipped == 1 and folder_given


def test_non_square_pixels_are_shown_at_the_display_aspect_ratio(tmp_path):
    """predict applies pipeline.shard's rule: 176x144 with 128:117 pixels is classified as a 4:3-ish frame."""
    src = tmp_path / "qcif.mp4"
    write_anamorphic(src, seconds=2)
    spec = tpn.get_config(TINY).clip.replace(test_crops="full", test_clips=1)
    frames, _, _ = sampled_frames(src, spec, min_frames=1)
    h, w = frames.shape[1:3]
    assert h == spec.test_scale and abs(w / h - 192 / 144) < 0.02  # not 176 / 144


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_a_phone_video_is_classified_upright_as_it_was_sharded(tmp_path, rotation):
    """A video with a display rotation is fed upright, as pipeline.shard stores it: predict's frames are the
    shard's frames (the same picture, the same shape), not the stored, sideways ones."""
    from pipeline.shard import shard_dataset

    src = write_anamorphic(tmp_path / "src" / "a" / "phone.mp4", seconds=1, sar="1/1", rotation=rotation)
    shard_dataset(src.parent.parent, tmp_path / "out", codec="jpeg", quality=2, short_side=None, workers=1)
    spec = tpn.get_config(TINY).clip.replace(test_crops="full", test_clips=1, test_scale=144)
    frames, n, _ = sampled_frames(src, spec, min_frames=1)
    wanted = [int(i) for i in clip_indices(spec, n, "test").ravel()]  # the frames predict sampled, in order
    with ShardSet.open(tmp_path / "out") as data:
        shard = np.stack([np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in data.frame_bytes(0, wanted)])
    assert frames.shape == shard.shape and shard.shape[1:3] == ((176, 144) if rotation != 180 else (144, 176))
    assert np.abs(frames.astype(int) - shard.astype(int)).mean() < 4  # JPEG at -q:v 2; turned wrong: ~100
