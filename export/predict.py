"""`python -m export.predict`: classify video files with an exported model or its checkpoint.

    python -m export.predict exports/tpn_r50/tpn_r50_f8s8.fp16.onnx videos/ --model tpn_r50_f8s8 \\
        --classes shards/k400/classes.json --json predictions.json

SOURCE is an exported artifact (`.onnx`, FP16 or INT8 `.onnx`, OpenVINO `.xml`, TensorRT `.engine`),
run through `export.runtime`, or the checkpoint itself, run in PyTorch.
Each video gets the model's test protocol, as `tpn.test` and the Top-1
gate apply it through the loader's test mode:

  - frames: `pipeline.clip_indices(spec, n, "test")` on the number
    of frames the file holds (its packets, checked against what decodes);
  - frames are converted to RGB as the loader converts its test views
    (`pipeline.frame_rgb`: the frame's YUV matrix and range, bilinear
    chroma), stretched to square pixels at the display aspect ratio when
    the video's are not (as `pipeline.shard` does), and resized so the
    short side is `test_scale` (`pipeline.resize_shorter`'s size): for
    frames up to the shards' size exactly as the loader's resize, larger
    ones with an antialiased filter (see `resize_short_side`);
  - crops at `pipeline.view_crop_positions`, with the origin at
    `pipeline.crop_origin`, optional flips, then the config's mean/std;
    views are ordered clips, then crops, then flips;
  - the video's score is the mean softmax over its views (`tpn.metrics`).

Any container and codec PyAV's libavcodec reads works. Frames are decoded
in order, without seeking: timestamps in user files are often irregular,
so `pipeline.clips.pyav` (which seeks by timestamp in the constant-rate shards)
is not used here. Files that do not decode, or hold fewer than
`--min-frames` frames, are listed with the reason while the others are
classified; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import tpn
from tpn.cli import add_other_architecture_arg
from export.errors import EXIT_BAD_INPUT, EXIT_CODES_HELP, EXIT_FAILED, EXIT_OK, ExportError, positive_int
from export import runtime
from export.artifact import artifact_metadata, check_artifact_model, check_view_size
from export.marker import check_marker
from export.outputs import write_json
from export.source import load_model, reference_logits
from pipeline import (
    ClipSpec,
    Display,
    ShardError,
    clip_indices,
    crop_origin,
    decode_plan,
    frame_rgb,
    is_partial,
    missing_numbers,
    number_ranges,
    numbered_frames,
    parse_classes,
    partial_words,
    resize_shorter,
    source_display,
    view_crop_positions,
)

VIDEO_SUFFIXES = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".webm",
        ".mkv",
        ".avi",
        ".mpg",
        ".mpeg",
        ".ts",
        ".mts",
        ".m2ts",
        ".ogv",
        ".ogg",
        ".flv",
        ".wmv",
        ".asf",
        ".3gp",
        ".3g2",
        ".gif",
        ".y4m",
        ".vob",
        ".mxf",
        ".divx",
        ".f4v",
    }
)
ARTIFACT_SUFFIXES = (".onnx", ".engine", ".plan", ".xml")
TOP_K = 5


class VideoError(Exception):
    """A video that cannot be classified; the message is the reason shown to the user."""


@dataclass
class Prediction:
    path: str
    frames: int
    views: int
    top: list[dict]  # [{"class": name, "index": i, "prob": p}], best first
    note: str | None = None  # e.g. only part of the file decodes: classified on what does


@dataclass
class PredictRun:
    predictions: list[Prediction] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: int = 0  # files in folders that are not videos by their suffix


# ----------------------------------------------------------------- finding videos


def find_videos(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], int, bool]:
    """(videos, non-video files skipped in folders, whether a folder was given).

    A video is a file, or a folder of numbered JPEG frames (Something-Something
    V1's layout, classified as its frames in number order). Files named on the
    command line are tried whatever their suffix; other folders are walked
    recursively for video suffixes and frame folders.
    """
    videos, skipped, folder_given = [], 0, False
    for item in map(Path, inputs):
        if item.is_dir() and numbered_frames(item):
            videos.append(item)
        elif item.is_dir():
            folder_given = True
            frame_dirs = sorted(d for d in item.rglob("*") if d.is_dir() and numbered_frames(d))
            videos += frame_dirs
            for f in sorted(p for p in item.rglob("*") if p.is_file() and p.parent not in frame_dirs):
                if f.suffix.lower() in VIDEO_SUFFIXES:
                    videos.append(f)
                else:
                    skipped += 1
        elif item.exists():
            videos.append(item)
        else:
            raise ExportError(f"{item} does not exist")
    return videos, skipped, folder_given


# ----------------------------------------------------------------- decoding


def count_frames(path: Path) -> tuple[int, int | None]:
    """(frames in the file's first video stream by its packets, frames its container claims: its duration x
    frame rate, as pipeline.shard reads them from ffmpeg; None when it does not say), without decoding."""
    import av

    if path.stat().st_size == 0:
        raise VideoError("is empty (0 bytes)")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoError("no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        claimed = round(container.duration / 1_000_000 * rate) if container.duration and rate else None
        return sum(1 for packet in container.demux(stream) if packet.size > 0), claimed


def decode_in_order(path: Path, wanted: np.ndarray, resize: Callable[[np.ndarray], np.ndarray]) -> tuple[dict, int]:
    """({index: resized frame} for the sorted `wanted` indices, frames decoded), reading in order.

    Stops after the last wanted frame; decoding errors after at least one
    frame end the video there (a truncated file), so the caller sees how
    many frames really decode.
    """
    import av

    keep, last, n = set(wanted.tolist()), int(wanted.max()), 0
    out: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if n in keep:
                    out[n] = resize(frame_rgb(frame))
                n += 1
                if n > last:
                    break
        except (av.FFmpegError, ValueError) as e:
            if n == 0:
                raise VideoError(f"does not decode: {av_reason(e)}") from None
    return out, n


def av_reason(err: Exception) -> str:
    """libav's reason in words (PyAV's message starts with an '[Errno 1094995529]' no user can read)."""
    return getattr(err, "strerror", None) or str(err)


def sampled_frames(path: Path, spec: ClipSpec, min_frames: int) -> tuple[np.ndarray, int, str | None]:
    """(C * F, h, w, 3) uint8 frames of the test clips, resized; the frames the video has; a note when only
    part of it decodes (its clips are then spread over the frames that do)."""
    import av

    if path.is_dir():
        return folder_frames(path, spec, min_frames)
    try:
        packets, claimed = count_frames(path)
        if packets < min_frames:
            raise VideoError(too_short(packets, spec, min_frames))
        whole = max(packets, claimed or 0)  # the frames the file says it has
        display = source_display(path)  # pixels' aspect ratio and rotation: shown (and sharded) upright first
        resize = lambda f: resize_short_side(to_display(f, display), spec.test_scale)  # noqa: E731
        n = packets
        unique, order = decode_plan(clip_indices(spec, n, "test"))  # the test clips' frames (C, F)
        frames, decoded = decode_in_order(path, unique, resize)
        cut = len(frames) < len(unique)  # decoding failed before the last frame wanted: sample what decodes
        if cut:
            if decoded < min_frames:
                raise VideoError(f"{partial_words(decoded, whole)}; " + too_short(decoded, spec, min_frames))
            n = decoded
            unique, order = decode_plan(clip_indices(spec, n, "test"))
            frames, _ = decode_in_order(path, unique, resize)
        note = None
        if cut or is_partial(n, claimed):
            note = f"{partial_words(n, whole)}: classified on those (pipeline.shard lists such files too)"
    except av.FFmpegError as e:
        raise VideoError(f"cannot be read: {av_reason(e)}") from None
    return np.stack([frames[int(i)] for i in unique])[order], n, note


def folder_frames(folder: Path, spec: ClipSpec, min_frames: int) -> tuple[np.ndarray, int, str | None]:
    """`sampled_frames` of a frame folder: its frames in number order, a gap in the numbering closed (as
    pipeline.shard keeps them, and says so); a frame that does not decode fails the video (as it rejects it)."""
    from PIL import Image

    numbered = numbered_frames(folder)
    n = len(numbered)
    if n < min_frames:
        raise VideoError(too_short(n, spec, min_frames))
    unique, order = decode_plan(clip_indices(spec, n, "test"))
    frames = {}
    for i in unique:
        path = numbered[int(i)][1]
        try:
            with Image.open(path) as image:
                frames[int(i)] = resize_short_side(np.array(image.convert("RGB")), spec.test_scale)
        except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError... for bad data
            raise VideoError(f"frame {path.name} does not decode: {err}") from None
    missing = missing_numbers([number for number, _ in numbered])
    note = None
    if missing:
        note = f"frames {number_ranges(missing)} are missing from its numbering; its {n} frames are kept in order"
    return np.stack([frames[int(i)] for i in unique])[order], n, note


def to_display(frame: np.ndarray, display: Display) -> np.ndarray:
    """A stored frame as it is shown (pipeline.shard's rules): non-square pixels stretched to square ones at
    the display width, then turned upright."""
    h, w = frame.shape[:2]
    width = display.stretched_width(w)
    if width != w:
        x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
        y = torch.nn.functional.interpolate(
            x, size=(h, width), mode="bilinear", align_corners=False, antialias=width < w
        )
        frame = y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    return np.ascontiguousarray(np.rot90(frame, display.rotation // 90)) if display.rotation else frame


def too_short(n: int, spec: ClipSpec, min_frames: int) -> str:
    return f"too short: {n} frames, fewer than --min-frames {min_frames} (a clip has {spec.frames} frames)"


# ----------------------------------------------------------------- the test views (pure)


def resize_short_side(frame: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> short side `size`, aspect kept (long side rounded), rounded to uint8 levels.

    Up to the shards' size (short side <= `size`) this is the loader's
    resize exactly: DALI's linear filter keeps the scale factor size/short
    side on both axes and centres the rounded output on the input. Larger
    frames (user videos are often 1080p; the shards were scaled down by
    `pipeline.shard` with ffmpeg's filtered scaler) are scaled down with an
    antialiased bilinear filter instead of point-sampling them.
    """
    h, w = frame.shape[:2]
    if min(h, w) == size:
        return frame
    scale = size / min(h, w)
    out_h, out_w = resize_shorter(size, h, w)
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
    if scale < 1.0:
        y = torch.nn.functional.interpolate(
            x, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True
        )
    else:
        grid = torch.stack(
            torch.meshgrid(_norm_coords(out_h, h, scale), _norm_coords(out_w, w, scale), indexing="ij")[::-1], dim=-1
        )[None]  # (1, out_h, out_w, 2): x, y
        y = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _norm_coords(n_out: int, n_in: int, scale: float) -> torch.Tensor:
    """grid_sample coordinates (-1..1 over the input) of `n_out` samples at a fixed `scale`, centred."""
    first = (n_in - n_out / scale) / 2  # where the output's edge falls in the input
    centres = first + (torch.arange(n_out, dtype=torch.float64) + 0.5) / scale  # in input pixels
    return (centres / n_in * 2 - 1).float()


def protocol_views(frames: np.ndarray, spec: ClipSpec) -> torch.Tensor:
    """(C * F, h, w, 3) uint8 frames, clip by clip -> (V, 3, F, S, S) normalised views in the loader's order."""
    clips = torch.from_numpy(frames).float().unflatten(0, (spec.num_test_clips, spec.frames))  # (C, F, h, w, 3)
    clips = clips.permute(0, 4, 1, 2, 3)  # (C, 3, F, h, w)
    h, w = clips.shape[-2:]
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1, 1)
    crops = [crop(clips, spec, h, w, pos) for pos in view_crop_positions(spec, h, w)]
    flips = (False, True) if spec.test_flip else (False,)
    views = [c.flip(-1) if f else c for c in crops for f in flips]  # crops, then flips
    per_clip = torch.stack(views, dim=1)  # (C, crops * flips, 3, F, S, S): clips-major
    return ((per_clip - mean[:, None]) / std[:, None]).flatten(0, 1)


def crop(clips: torch.Tensor, spec: ClipSpec, h: int, w: int, pos: tuple[float, float]) -> torch.Tensor:
    """The test crop at normalised (x, y) position `pos`, origin pos * (extent - crop) ("full": all of it)."""
    if spec.test_crops == "full":
        return clips
    size = spec.test_crop
    if size > min(h, w):
        raise VideoError(f"frames of {h}x{w} after resizing are smaller than the {size} test crop")
    y0, x0 = crop_origin(pos[1], h, size), crop_origin(pos[0], w, size)
    return clips[..., y0 : y0 + size, x0 : x0 + size]


def top_classes(probs: torch.Tensor, names: list[str], k: int = TOP_K) -> list[dict]:
    """The k most probable classes of (K,) probabilities, best first."""
    values, idx = probs.topk(min(k, probs.numel()))
    return [{"class": names[i], "index": int(i), "prob": round(float(v), 6)} for v, i in zip(values, idx.tolist())]


# ----------------------------------------------------------------- the model


@dataclass
class Classifier:
    """`logits(views) -> (V, K)` plus what the report says about it."""

    logits: Callable[[torch.Tensor], torch.Tensor]
    spec: ClipSpec
    num_classes: int
    backend: str
    weights_note: str | None = None
    class_names: list[str] | None = None  # what a checkpoint run in PyTorch records (an artifact records none)


def load_classifier(
    model_file: Path, name: str, other_architecture: bool = False, backend: runtime.Backend = "auto"
) -> Classifier:
    """An exported artifact through `export.runtime`, or the checkpoint itself in PyTorch (a checkpoint of
    another architecture only with `other_architecture`, see `tpn.load_checkpoint`)."""
    if not model_file.is_file():
        raise ExportError(f"{model_file} does not exist: pass an exported .onnx / .xml / .engine or a checkpoint")
    if model_file.name.endswith(ARTIFACT_SUFFIXES):
        return _artifact_classifier(model_file, name, backend)
    model, weights = load_model(name, model_file, other_architecture=other_architecture)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)

    return Classifier(
        partial(reference_logits, model),
        model.config.clip,
        int(model.num_classes),
        f"pytorch ({device.type})",
        class_names=weights.class_names,
    )


def _artifact_classifier(artifact: Path, name: str, backend: runtime.Backend = "auto") -> Classifier:
    meta = artifact_metadata(artifact)
    check_artifact_model(meta, artifact, name)
    try:
        spec = tpn.get_config(name).clip
    except ValueError as e:
        raise ExportError(str(e)) from None
    runner = runtime.load(artifact, backend=backend)
    if spec.test_crops != "full":  # full-frame views take each video's own width: no fixed size to check
        check_view_size(runner, (spec.test_crop, spec.test_crop), name)
    validated = check_marker(artifact, model=name)
    classes = getattr(runner, "num_classes", None) or int(meta.get("num_classes") or tpn.get_config(name).num_classes)
    note = None
    if meta.get("weights") == "random" or meta.get("checkpoint_sha256") == "":
        note = f"{artifact.name} was exported from random weights: its predictions mean nothing"
    status = "validated" if validated.valid else validated.summary()
    return Classifier(lambda x: runner(x).float(), spec, classes, f"{runner.backend}, {status}", note)


def class_names(
    classes: str | None, clf: Classifier, model_file: Path, checkpoint: Path | None
) -> tuple[list[str], str]:
    """Names in label order and where they came from.

    --classes, else those of the model file when it is a checkpoint (read when the
    model was loaded), else those of --checkpoint, else class numbers.
    """
    names, where = None, None
    if classes:
        names, where = read_class_names(Path(classes)), classes
    elif clf.class_names:
        names, where = clf.class_names, str(model_file)
    elif checkpoint is not None and (found := _checkpoint_names(checkpoint)):
        names, where = found, str(checkpoint)
    if names is None:
        return [f"class {i}" for i in range(clf.num_classes)], None
    if len(names) != clf.num_classes:
        raise ExportError(f"{where} names {len(names)} classes but the model has {clf.num_classes}")
    return names, where


def read_class_names(path: Path) -> list[str]:
    """A classes.json (JSON list), a shard folder holding one, or a text file with one name per line."""
    if path.is_dir():
        path = path / "classes.json"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ExportError(f"cannot read class names from {path}: {e}") from None
    except UnicodeDecodeError:
        raise ExportError(
            f"{path} is not a text file of class names (not UTF-8 text; a video?): pass a classes.json, a shard "
            "folder holding one, or a text file with one name per line"
        ) from None
    if path.suffix == ".json":
        try:
            return parse_classes(text, str(path))  # the rules of the shards' classes.json
        except ShardError as e:
            raise ExportError(str(e)) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _checkpoint_names(path: Path) -> list[str] | None:
    """The class names `path` records when it is a readable checkpoint (an exported file is not one)."""
    if not path.is_file() or path.name.endswith(ARTIFACT_SUFFIXES):
        return None
    try:
        return tpn.checkpoint_classes(path).names
    except tpn.CheckpointError:  # not a checkpoint, or unreadable: names come from elsewhere
        return None


# ----------------------------------------------------------------- running


def prefetched(fn: Callable, items: list, ahead: int = 2) -> Iterator[tuple[object, object]]:
    """(item, fn(item) or the exception it raised), in order, with up to `ahead` items decoded in advance."""
    with ThreadPoolExecutor(max_workers=ahead) as pool:
        futures = [pool.submit(fn, it) for it in items[:ahead]]
        for i, item in enumerate(items):
            if i + ahead < len(items):
                futures.append(pool.submit(fn, items[i + ahead]))
            try:
                yield item, futures[i].result()
            except Exception as e:  # handed to the caller, which records the video as failed
                yield item, e
            futures[i] = None  # free the frames


def classify(clf: Classifier, frames: np.ndarray, max_views: int) -> torch.Tensor:
    """(K,) mean softmax over the video's test views."""
    views = protocol_views(frames, clf.spec)  # (V, 3, F, S, S)
    logits = torch.cat([clf.logits(views[i : i + max_views]).cpu() for i in range(0, len(views), max_views)])
    return logits.softmax(dim=-1).mean(dim=0)


def predict(
    clf: Classifier, videos: list[Path], names: list[str], *, min_frames: int, max_views: int, log, progress: bool
) -> PredictRun:
    from tqdm import tqdm

    run = PredictRun()
    decode = lambda p: sampled_frames(p, clf.spec, min_frames)  # noqa: E731
    bar = tqdm(total=len(videos), unit="video", disable=None if progress else True, file=sys.stderr)
    say = bar.write if progress else log
    for path, result in prefetched(decode, videos):
        bar.update(1)
        if isinstance(result, Exception):
            reason = str(result) if isinstance(result, VideoError) else f"{type(result).__name__}: {result}"
            run.failed[str(path)] = reason
            say(f"{path}: FAILED: {reason}")
            continue
        frames, n, note = result
        try:
            probs = classify(clf, frames, max_views)
        except VideoError as e:
            run.failed[str(path)] = str(e)
            say(f"{path}: FAILED: {e}")
            continue
        p = Prediction(str(path), n, clf.spec.num_test_views, top_classes(probs, names), note)
        run.predictions.append(p)
        say(
            f"{path}: "
            + " | ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in p.top)
            + (f"   (note: {note})" if note else "")
        )
    bar.close()
    return run


# ----------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.predict",
        description=(
            "Classify video files (any container and codec libavcodec reads) with an exported model (.onnx, "
            "FP16 .onnx, TensorRT .engine) or its checkpoint (PyTorch), using the model's test protocol: prints "
            "the top-5 classes with probabilities for each video. Unreadable or too-short files are listed with "
            "their reason and the others classified; the exit status is then 1."
        ),
        epilog=EXIT_CODES_HELP,
    )
    p.add_argument("source", help="exported .onnx / .engine file, or a checkpoint (.pth) to run in PyTorch")
    p.add_argument("videos", nargs="+", help="video files and/or folders (searched recursively for video files)")
    p.add_argument("--model", required=True, help="zoo model name the source belongs to (its test protocol)")
    p.add_argument("--checkpoint", help="checkpoint whose class names to use when SOURCE is an exported file")
    p.add_argument(
        "--backend",
        choices=runtime.BACKENDS,
        default="auto",
        help="runtime of an exported file: auto (on a CPU OpenVINO when installed, for FP32 and INT8 files), "
        "ort-cpu, ort-cuda, openvino, trt (default %(default)s)",
    )
    add_other_architecture_arg(p)
    p.add_argument(
        "--classes",
        help="class names in label order: a classes.json, a shard folder holding one, or a text file with one "
        "name per line (default: the checkpoint's names, else class numbers)",
    )
    p.add_argument("--json", type=Path, help="write every prediction (and every failure), keyed by file, here")
    p.add_argument(
        "--min-frames",
        type=int,
        help="videos with fewer frames are listed as too short (default: the frames of one clip)",
    )
    p.add_argument("--max-views", type=positive_int, default=32, help="views per forward pass (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        model_file = Path(args.source)
        clf = load_classifier(model_file, args.model, args.allow_other_architecture, args.backend)
        names, names_from = class_names(
            args.classes, clf, model_file, Path(args.checkpoint) if args.checkpoint else None
        )
        videos, skipped, folder = find_videos(args.videos)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if clf.weights_note:
        print(f"WARNING: {clf.weights_note}", flush=True)
    if names_from is None:
        print(
            f"{model_file.name}: {clf.backend}; class names unknown (neither it nor --checkpoint records them): "
            "classes are shown by number; pass --classes (a classes.json, a shard folder, or a text file with one "
            "name per line) for names",
            file=sys.stderr,
        )
    else:
        print(f"{model_file.name}: {clf.backend}; classes from {names_from}", file=sys.stderr)
    if not videos:
        print(
            f"error: no videos in {', '.join(args.videos)} (video files by their suffix: "
            f"{', '.join(sorted(VIDEO_SUFFIXES))}; or folders of numbered JPEG frames)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    min_frames = args.min_frames if args.min_frames is not None else clf.spec.frames
    run = predict(clf, videos, names, min_frames=min_frames, max_views=args.max_views, log=print, progress=folder)
    run.skipped = skipped
    print(closing_line(run, time.perf_counter() - t0))
    for path, reason in run.failed.items():
        print(f"  failed: {path}: {reason}")
    if args.json:
        write_json(args.json, json_payload(args, clf, names_from, run))
        print(f"predictions: {args.json}")
    return EXIT_FAILED if run.failed else EXIT_OK


def closing_line(run: PredictRun, seconds: float) -> str:
    total = len(run.predictions) + len(run.failed)
    extra = f"; {run.skipped} non-video files skipped" if run.skipped else ""
    return f"classified {len(run.predictions)} of {total} videos in {seconds:.1f}s; {len(run.failed)} failed{extra}"


def json_payload(args: argparse.Namespace, clf: Classifier, names_from: str | None, run: PredictRun) -> dict:
    videos = {
        p.path: {"top5": p.top, "frames": p.frames, "views": p.views, **({"note": p.note} if p.note else {})}
        for p in run.predictions
    }
    videos.update({path: {"error": reason} for path, reason in run.failed.items()})
    return {
        "model": args.model,
        "source": str(args.source),
        "backend": clf.backend,
        "classes_from": names_from,
        "protocol": {
            "views": clf.spec.num_test_views,
            "frames": clf.spec.frames,
            "stride": clf.spec.stride,
            "test_scale": clf.spec.test_scale,
            "test_crop": clf.spec.test_crop,
        },
        "warning": clf.weights_note,
        "videos": videos,
        "failed": run.failed,
    }


if __name__ == "__main__":
    sys.exit(main())
