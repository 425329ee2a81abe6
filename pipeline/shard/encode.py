"""Worker side: transcode one input into the staging folder, or say why not.

Runs in a worker thread (the encoding itself is an ffmpeg subprocess), or as a cluster task
(`encode_to_bytes`, whose bytes the driver stages). The encoded file lands in `OUT/.staging/<key>.<ext>`
with a `<key>.json` record (written last, atomically); a resumed run reuses
both instead of encoding again. Rejections are recorded the same way, so a
file that timed out is not retried on every resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.shard.ffmpeg import (
    EncodeSettings,
    EncoderInterrupted,
    FFmpegError,
    SourceSpec,
    claimed_frames,
    copy_frames_argv,
    is_partial,
    output_geometry,
    probe_encoded,
    run_ffmpeg,
    transcode_argv,
)
from pipeline.display import source_display
from pipeline.errors import ShardingError
from pipeline.format.jpeg import JpegError, decode_check
from pipeline.shard.layouts import WorkItem, frames_pattern
from pipeline.shard.source import fetched
from pipeline.io.files import atomic_write_text, temp_path


@dataclass
class Outcome:
    """What happened to one work item; `video` is set when it was encoded."""

    key: str
    reason: str | None = None  # None: encoded
    message: str = ""
    video: str | None = None  # staged file
    frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    duration: float = 0.0
    codec: str = ""
    sha256: str = ""
    bytes: int = 0
    copied: bool = False  # frame shards: source JPEGs stored as they were, not re-encoded
    claimed_frames: int | None = None  # frames the source container claims (duration x rate), when it says
    sar: str | None = None  # the source's sample aspect ratio ("128:117") when its pixels are not square
    rotation: int = 0  # the source's display rotation (degrees counter-clockwise) when it has one
    fresh: bool = False  # ffmpeg ran for it in this call (not reused from staging); not part of the record

    @property
    def partial(self) -> bool:
        """Far fewer frames decoded than the container claims (e.g. a download cut mid-way)."""
        return self.ok and is_partial(self.frames, self.claimed_frames)

    @property
    def ok(self) -> bool:
        return self.reason is None


def source_spec(item: WorkItem) -> SourceSpec:
    """Check the input exists and is non-empty; raise FFmpegError with a reject reason otherwise."""
    path = Path(item.path)
    if item.kind == "frames":
        if not path.is_dir():
            raise FFmpegError("missing_file", f"frame folder {item.rel} does not exist")
        try:
            pattern, first, _count = frames_pattern(path)
        except FileNotFoundError as err:
            raise FFmpegError("missing_file", str(err)) from None
        return SourceSpec(str(path), kind="frames", fps=item.fps, pattern=pattern, start_number=first)
    if not path.is_file():
        raise FFmpegError("missing_file", f"{item.rel} does not exist")
    if path.stat().st_size == 0:
        raise FFmpegError("unreadable", f"{item.rel} is empty (0 bytes)")
    return SourceSpec(str(path), display=source_display(path))


def _staged(staging: Path, key: str, s: EncodeSettings) -> tuple[Path, Path]:
    return staging / f"{key}.{s.ext}", staging / f"{key}.json"


def load_staged(staging: Path, key: str, s: EncodeSettings) -> Outcome | None:
    """A previous run's outcome for `key`, if its record (and video) survived."""
    video, record = _staged(staging, key, s)
    try:
        outcome = Outcome(**json.loads(record.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if outcome.ok:
        # Staged files are not fsync'ed (that is slow, and only power loss needs it): check them instead.
        try:
            data = video.read_bytes()
        except OSError:
            return None
        if len(data) != outcome.bytes or hashlib.sha256(data).hexdigest() != outcome.sha256:
            return None
        outcome.video = str(video)
    return outcome


class StagedOutputLost(ShardingError):
    """Our own encoded file could not be read back (removed under us): never the input's fault."""


def encode_item(item: WorkItem, s: EncodeSettings, staging: str, timeout: float, min_frames: int) -> Outcome:
    """Transcode `item` into `staging` (reusing a staged result) and return the outcome."""
    staging_dir = Path(staging)
    cached = load_staged(staging_dir, item.key, s)
    if cached is not None:
        return cached
    tmp = temp_path(staging_dir / item.key, f".{s.ext}")
    try:
        return stage(staging_dir, s, outcome_of(item, s, tmp, timeout, min_frames), tmp)
    finally:
        tmp.unlink(missing_ok=True)


def encode_to_bytes(item: WorkItem, s: EncodeSettings, timeout: float, min_frames: int) -> tuple[Outcome, bytes | None]:
    """Transcode `item` in a private temp folder of this machine: (outcome, encoded bytes when it is ok).

    What a remote worker (`pipeline.shard.engines`) runs: the driver stages the bytes with `stage`.
    """
    with tempfile.TemporaryDirectory(prefix="tpn-shard-") as folder:
        tmp = Path(folder) / f"encoded.{s.ext}"
        outcome = outcome_of(item, s, tmp, timeout, min_frames)
        return outcome, (tmp.read_bytes() if outcome.ok else None)


def outcome_of(item: WorkItem, s: EncodeSettings, tmp: Path, timeout: float, min_frames: int) -> Outcome:
    """Encode `item` to `tmp`: its outcome, a rejection when the input is at fault.

    Encoded once more, never rejected: an encoded file that vanished before it
    was read back (another process cleaned the folder?), and an ffmpeg stopped
    by an interrupt this process ignores (a background job's group got Ctrl-C;
    the run goes on). A second time, or any other signal (Ctrl-C, kill, the
    OOM killer), stops the run, naming the input, with nothing recorded for it.
    """
    try:
        try:
            return _encode(item, s, tmp, timeout, min_frames)
        except StagedOutputLost:
            pass
        except EncoderInterrupted as err:
            if not err.stray:
                raise
        return _encode(item, s, tmp, timeout, min_frames)  # once more; a second loss goes up
    except FFmpegError as err:
        return Outcome(item.key, reason=err.reason, message=err.message)


def stage(staging: Path, s: EncodeSettings, outcome: Outcome, encoded: Path | None) -> Outcome:
    """Move an encoded file (when the outcome is ok) to its staged name, then write the record (last,
    atomically): a resumed run reuses both."""
    video, record = _staged(staging, outcome.key, s)
    if outcome.ok:
        os.replace(encoded, video)
        outcome.video = str(video)
    atomic_write_text(record, json.dumps({k: v for k, v in asdict(outcome).items() if k != "fresh"}), durable=False)
    outcome.fresh = True
    return outcome


def _encode(item: WorkItem, s: EncodeSettings, tmp: Path, timeout: float, min_frames: int) -> Outcome:
    with fetched(item) as local:  # an object-storage input is fetched to this machine first
        try:
            return _encode_local(local, s, tmp, timeout, min_frames)
        except FFmpegError as err:
            # ffmpeg names its input by the path it was given: say the input's own name instead, so that a
            # rejection reads the same whichever machine, folder or engine encoded it
            raise FFmpegError(err.reason, err.message.replace(local.path, item.rel)) from None


def _encode_local(item: WorkItem, s: EncodeSettings, tmp: Path, timeout: float, min_frames: int) -> Outcome:
    src = source_spec(item)
    copied = copyable_frames(src, s)
    log = run_ffmpeg(copy_frames_argv(src, tmp) if copied else transcode_argv(src, tmp, s), timeout)
    lost = StagedOutputLost(
        f"the encoded output of {item.rel} ({tmp}) vanished after ffmpeg wrote it: is another "
        "process cleaning that folder? Nothing was recorded for this input; rerun"
    )
    if not tmp.is_file():
        raise lost
    try:
        info = probe_encoded(tmp)
    except FFmpegError:
        raise
    except Exception as err:  # PyAV raises its own error family
        if not tmp.is_file():
            raise lost from None
        raise FFmpegError("ffmpeg_error", f"encoded output of {item.rel} cannot be read back: {err}") from None
    if info.frames < min_frames:
        raise FFmpegError("too_short", f"{item.rel} has {info.frames} frame(s); at least {min_frames} are needed")
    try:
        data = tmp.read_bytes()
    except FileNotFoundError:
        raise lost from None
    return Outcome(
        item.key,
        frames=info.frames,
        fps=info.fps,
        width=info.width,
        height=info.height,
        duration=info.duration,
        codec=info.codec,
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=len(data),
        copied=copied,
        claimed_frames=claimed_frames(log, info.fps),
        sar=f"{src.display.sar[0]}:{src.display.sar[1]}" if src.display.sar else None,
        rotation=src.display.rotation,
    )


def copyable_frames(src: SourceSpec, s: EncodeSettings) -> bool:
    """Whether a JPEG frame folder already is what `--codec jpeg` would write, so it is stored, not re-encoded.

    True when the frame rate stays, every frame decodes and all share one size
    that the size rules keep as it is (e.g. Something-Something V1's frames with
    `--short-side keep`). A frame that does not decode rejects the input.
    """
    if not s.is_frames or src.kind != "frames" or (s.fps is not None and s.fps != src.fps):
        return False
    folder = Path(src.path)
    sizes = set()
    for path in sorted(folder.iterdir()):
        if not path.name.lower().endswith((".jpg", ".jpeg")):
            continue
        try:
            info = decode_check(path.read_bytes())
        except JpegError as err:
            raise FFmpegError("unreadable", f"frame {path.name} of {folder.name}: {err}") from None
        sizes.add((info.width, info.height))
    if len(sizes) != 1:
        return False
    (size,) = sizes
    return output_geometry(*size, s) == size


def reject_without_encoding(item: WorkItem) -> Outcome | None:
    """Inputs the main process can reject at once (listed but absent)."""
    if item.missing:
        return Outcome(
            item.key, reason="missing_file", message=f"{item.rel} is listed in the annotations but not on disk"
        )
    if item.problem is not None:
        return Outcome(item.key, reason=item.problem[0], message=f"{item.rel}: {item.problem[1]}")
    return None
