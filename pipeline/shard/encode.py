"""Worker side: one input -> its sample's tar fragment, staged, or the reason it cannot be one.

`prepare_sample` runs where the encodes run (a process of the local pool, or
a Ray task): it transcodes the input with ffmpeg, probes the result, builds
the sample's members (video or JPEG frames, `.lbl`, `.frames`, `.json`) and
writes them as one tar fragment (`pipeline.shard.pack`) into the staging
folder, `OUT/.staging` (or `URL/.staging` on object storage), with a
`<key>.json` record written last. The process that packs shards reads only
that small record. A resumed run reuses a staged fragment whose record and
size (and, locally, sha256) check out, instead of encoding again.
Rejections are recorded the same way, so a file that timed out is not
retried on every resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import resource
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.shard.ffmpeg import (
    EncodeSettings,
    EncoderInterrupted,
    FFmpegError,
    SourceSpec,
    claimed_frames,
    copy_frames_argv,
    mjpeg_packets,
    output_geometry,
    probe_encoded,
    run_ffmpeg,
    transcode_argv,
)
from pipeline.display import is_partial, source_display
from pipeline.errors import ShardingError
from pipeline.frames import missing_numbers, number_ranges, numbered_frames
from pipeline.format.jpeg import JpegError, decode_check
from pipeline.format.members import frame_ext, frames_sha256, pack_int32
from pipeline.io import storage
from pipeline.io.files import atomic_write_text
from pipeline.shard.layouts import WorkItem, frames_pattern
from pipeline.shard.pack import Fragment, fragment_bytes, write_fragment
from pipeline.shard.source import fetched


@dataclass
class Outcome:
    """What happened to one work item; when it was encoded, where its staged fragment is."""

    key: str
    reason: str | None = None  # None: encoded
    message: str = ""
    frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    duration: float = 0.0
    codec: str = ""
    sha256: str = ""  # of the encoded video, or of the JPEG frames as stored
    bytes: int = 0  # of the encoded video
    copied: bool = False  # frame shards: source JPEGs stored as they were, not re-encoded
    claimed_frames: int | None = None  # frames the source container claims (duration x rate), when it says
    sar: str | None = None  # the source's sample aspect ratio ("128:117") when its pixels are not square
    rotation: int = 0  # the source's display rotation (degrees counter-clockwise) when it has one
    missing_frames: str | None = None  # a frame folder's gap in its numbering ("11-12"), its frames kept in order
    fragment: str | None = None  # the staged tar fragment (a path, or a URL)
    fragment_bytes: int = 0
    fragment_sha256: str = ""
    members: list[list] = field(default_factory=list)  # (ext, data offset in the fragment, data size) per member
    fresh: bool = False  # ffmpeg ran for it in this call (not reused from staging); not part of the record
    cpu_s: float = 0.0  # CPU the worker spent on it (its own and its ffmpeg's); not part of the record

    @property
    def partial(self) -> bool:
        """Far fewer frames decoded than the container claims (e.g. a download cut mid-way)."""
        return self.ok and is_partial(self.frames, self.claimed_frames)

    @property
    def ok(self) -> bool:
        return self.reason is None

    def piece(self) -> Fragment:
        """The fragment as the shard packer takes it (its member table stays in the staged record)."""
        return Fragment(self.fragment, self.fragment_bytes, self.key)


TRANSIENT = ("fresh", "cpu_s")  # Outcome fields of one call, never staged


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


@dataclass(frozen=True)
class FrameFolder:
    """A folder of numbered JPEG frames, every one decoded once: their numbers and sizes."""

    numbers: tuple[int, ...]  # sorted
    names: tuple[str, ...]  # the file of each number
    sizes: frozenset[tuple[int, int]]

    @property
    def missing(self) -> list[int]:
        """Numbers absent between the first and the last (a gap in the numbering)."""
        return missing_numbers(list(self.numbers))


def check_frame_folder(folder: Path, rel: str) -> FrameFolder:
    """Decode every numbered frame of `folder`: a frame that does not decode rejects the whole input, whatever
    the codec (ffmpeg's MJPEG decoder would conceal it, e.g. by repeating a neighbour)."""
    numbered = {number: path.name for number, path in numbered_frames(folder)}
    sizes = set()
    for number in sorted(numbered):
        try:
            info = decode_check((folder / numbered[number]).read_bytes())
        except JpegError as err:
            raise FFmpegError("unreadable", f"frame {numbered[number]} of {rel}: {err}") from None
        sizes.add((info.width, info.height))
    order = tuple(sorted(numbered))
    return FrameFolder(order, tuple(numbered[n] for n in order), frozenset(sizes))


@contextlib.contextmanager
def _frames_in_order(src: SourceSpec, frames: FrameFolder) -> Iterator[SourceSpec]:
    """`src`, or with a gap in its numbering, a temp folder of links numbered 1, 2, ... to the frames in
    order: the rule is to keep every frame there is, in order (the warning names the gap)."""
    if not frames.missing:
        yield src
        return
    with tempfile.TemporaryDirectory(prefix="tpn-frames-") as tmp:
        ext = Path(frames.names[0]).suffix
        for n, name in enumerate(frames.names, start=1):
            os.symlink(Path(src.path) / name, Path(tmp) / f"{n:06d}{ext}")
        yield dataclasses.replace(src, path=tmp, pattern=f"%06d{ext}", start_number=1)


def _staged(staging: str, key: str) -> tuple[str, str]:
    """(fragment, record) locations of `key` in `staging` (a folder, or a URL)."""
    return str(storage.join(staging, f"{key}.frag")), str(storage.join(staging, f"{key}.json"))


def load_staged(staging: str, key: str) -> Outcome | None:
    """A previous run's outcome for `key`, if its record (and fragment) survived."""
    fragment, record = _staged(staging, key)
    try:
        outcome = Outcome(**json.loads(storage.read_bytes(record)))
    except (OSError, ValueError, TypeError):
        return None
    if not outcome.ok:
        return outcome
    # Staged files are not fsync'ed (that is slow, and only power loss needs it): check them instead. An object
    # store shows only whole objects: its size says enough.
    try:
        if storage.is_remote(fragment):
            return outcome if storage.size_of(fragment) == outcome.fragment_bytes else None
        data = Path(fragment).read_bytes()
    except OSError:
        return None
    if len(data) != outcome.fragment_bytes or hashlib.sha256(data).hexdigest() != outcome.fragment_sha256:
        return None
    return outcome


class StagedOutputLost(ShardingError):
    """Our own encoded file could not be read back (removed under us): never the input's fault."""


def prepare_sample(
    item: WorkItem, s: EncodeSettings, staging: str, timeout: float, min_frames: int, label: int
) -> Outcome:
    """`item` encoded and staged as its sample's tar fragment in `staging` (a folder, or a URL), or the
    reason it is rejected, recorded there too; a valid staged result is reused. Runs in a worker."""
    c0 = _cpu()
    if not storage.is_remote(staging) and not Path(staging).is_dir():
        raise ShardingError(
            f"the staging folder {staging} is not there on {socket.gethostname()}: with --engine ray, --out must "
            "be a folder every node sees (a shared filesystem) or a URL"
        )
    cached = load_staged(staging, item.key)
    if cached is not None:
        cached.members = []
        return cached
    place = None if storage.is_remote(staging) else staging  # a local encode lands beside the shards, not in /tmp
    with tempfile.TemporaryDirectory(prefix=".tpn-shard-", dir=place) as tmp:
        encoded = Path(tmp) / f"encoded.{s.ext}"
        outcome = outcome_of(item, s, encoded, timeout, min_frames)
        if outcome.ok:
            _stage_fragment(staging, item, outcome, sample_components(item, outcome, label, s, encoded), Path(tmp))
        _stage_record(staging, outcome)
    outcome.fresh, outcome.cpu_s = True, _cpu() - c0
    outcome.members = []  # in the record, for the packer: the coordinator gets a result of constant size
    return outcome


def prepare_samples(
    work: list[tuple[WorkItem, int]], s: EncodeSettings, staging: str, timeout: float, min_frames: int
) -> list[Outcome]:
    """`prepare_sample` of each (item, label) in turn: one job for a few inputs, so that what a job costs
    the process that hands it out is shared by them."""
    return [prepare_sample(item, s, staging, timeout, min_frames, label) for item, label in work]


def remove_staged(locations: list[str]) -> None:
    """Delete staged records and fragments of committed work (a folder's files, or objects). Runs in a
    worker, like the encodes that wrote them."""
    remote = [loc for loc in locations if storage.is_remote(loc)]
    for loc in locations:
        if not storage.is_remote(loc):
            Path(loc).unlink(missing_ok=True)
    if remote:
        storage.remove_many(remote)


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (a worker runs one input at a time)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _stage_fragment(staging: str, item: WorkItem, outcome: Outcome, components: dict, tmp: Path) -> None:
    fragment, _ = _staged(staging, item.key)
    local = tmp / "fragment" if storage.is_remote(staging) else Path(fragment)
    members, sha256 = write_fragment(local, item.key, components)
    if storage.is_remote(staging):
        storage.upload(local, fragment)
    outcome.fragment, outcome.fragment_bytes, outcome.fragment_sha256 = fragment, fragment_bytes(components), sha256
    outcome.members = [list(m) for m in members]


def _stage_record(staging: str, outcome: Outcome) -> None:
    """The record, written last (atomically, or as one object): a resumed run reuses what it names."""
    _, record = _staged(staging, outcome.key)
    text = json.dumps({k: v for k, v in asdict(outcome).items() if k not in TRANSIENT})
    if storage.is_remote(record):
        storage.write_bytes(record, text.encode())
    else:
        atomic_write_text(Path(record), text, durable=False)


def sample_components(item: WorkItem, o: Outcome, label: int, s: EncodeSettings, encoded: Path) -> dict[str, bytes]:
    """A sample's tar members, extension -> bytes, in tar order.

    Video shards: `<key>.webm|mp4`, `.lbl`, `.frames`, `.json`. Frame shards:
    `.lbl`, `.frames`, `.json`, then one `<key>.NNNNNN.jpg` per frame, so a
    reader fetches exactly the frames it samples by their index offsets.
    """
    meta = {
        "key": item.key,
        "class": item.class_name,
        "label": label,
        "frames": o.frames,
        "fps": o.fps,
        "width": o.width,
        "height": o.height,
        "duration": o.duration,
        "source": item.rel,
        "sha256": o.sha256,
        "codec": s.codec,
        **({"sar": o.sar} if o.sar else {}),  # the source's non-square pixels (width and height are displayed)
        **({"rotation": o.rotation} if o.rotation else {}),  # and its display rotation (shown upright)
    }
    small = {"lbl": pack_int32(label), "frames": pack_int32(o.frames)}
    if not s.is_frames:
        meta_json = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")
        return {s.ext: encoded.read_bytes(), **small, "json": meta_json}
    images = mjpeg_packets(encoded)
    if len(images) != o.frames:
        raise ShardingError(
            f"{item.rel}: {len(images)} JPEG frames read back, {o.frames} counted; re-run to re-encode it"
        )
    # The checksum covers the frames as stored (their concatenation), so verify can recompute it.
    o.sha256 = frames_sha256(images)
    meta.update(sha256=o.sha256, jpeg_q=None if o.copied else s.resolved_quality, copied=o.copied)
    meta_json = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")
    return {**small, "json": meta_json, **{frame_ext(i): image for i, image in enumerate(images)}}


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
    frames = check_frame_folder(Path(src.path), item.rel) if src.kind == "frames" else None
    copied = frames is not None and copyable_frames(frames, src, s)
    with contextlib.nullcontext(src) if frames is None else _frames_in_order(src, frames) as ordered:
        log = run_ffmpeg(copy_frames_argv(ordered, tmp) if copied else transcode_argv(ordered, tmp, s), timeout)
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
        missing_frames=number_ranges(frames.missing) if frames is not None and frames.missing else None,
    )


def copyable_frames(frames: FrameFolder, src: SourceSpec, s: EncodeSettings) -> bool:
    """Whether a checked JPEG frame folder already is what `--codec jpeg` would write, so it is stored, not
    re-encoded: the frame rate stays and all frames share one size that the size rules keep as it is (e.g.
    Something-Something V1's frames with `--short-side keep`)."""
    if not s.is_frames or (s.fps is not None and s.fps != src.fps) or len(frames.sizes) != 1:
        return False
    (size,) = frames.sizes
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
