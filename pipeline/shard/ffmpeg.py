"""ffmpeg for the data pipeline: find the binary, build argv, run it, probe outputs.

Sources are only ever touched by an ffmpeg subprocess with a timeout, so a
corrupt or hostile file can cost at most one killed process. Outputs (our own
VP9/H.264 files) are read in-process with PyAV, which is cheap and exact.

The argv builders are pure functions of `EncodeSettings`, so tests and the
shard benchmark use exactly the command `pipeline.shard` runs.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import ffmpeg as ffmpeg_python

from pipeline.display import Display
from pipeline.errors import ShardingError

Codec = Literal["vp9", "h264", "jpeg"]
CODECS: dict[str, dict[str, str]] = {
    "vp9": {"encoder": "libvpx-vp9", "container": "webm", "ext": "webm"},
    "h264": {"encoder": "libx264", "container": "mp4", "ext": "mp4"},
    # Frame shards: ffmpeg's mjpeg encoder (baseline, 4:2:0) into Matroska, one JPEG per packet; the
    # shard stores each packet as its own `<key>.NNNNNN.jpg` member (see pipeline.format.jpeg).
    "jpeg": {"encoder": "mjpeg", "container": "matroska", "ext": "mkv"},
}
DEFAULT_CRF = {"vp9": 32, "h264": 23}
# ffmpeg's mjpeg quantiser scale (-q:v, 2 = finest .. 31), chosen with `python -m benchmarks.jpeg_quality`.
DEFAULT_JPEG_Q = 2
LOGLEVEL = "error"


class FFmpegError(RuntimeError):
    """ffmpeg failed on one input; `reason` is a word from `REJECT_REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class EncoderInterrupted(ShardingError):
    """ffmpeg ended because of a signal (the run was interrupted, or the machine killed it): not the input's fault.

    Nothing is recorded for the input, so the next run encodes it again;
    it is never listed as rejected. `signum` is the signal (0 when unknown).
    """

    def __init__(self, message: str, signum: int = 0):
        super().__init__(message)
        self.signum = signum

    @property
    def stray(self) -> bool:
        """An interrupt this process ignores (a background job): it reached only ffmpeg, and the run goes on."""
        return self.signum == signal.SIGINT and signal.getsignal(signal.SIGINT) == signal.SIG_IGN


# ffmpeg catches SIGINT, SIGTERM and SIGQUIT and then exits on its own: status 255, saying so at info level
# ("Exiting normally, received signal 2."), or 123 after more than three signals. A terminal's Ctrl-C reaches
# it that way (the whole process group gets SIGINT).
_CAUGHT_SIGNAL = re.compile(r"received signal (\d+)|Received > 3 system signals", re.I)


def stopping_signal(returncode: int, stderr: str) -> int | None:
    """The signal that ended an ffmpeg run, whether it died of it or exited after catching it (0: a signal,
    number unknown); None when it ended on its own (pure)."""
    if returncode < 0:
        return -returncode
    m = _CAUGHT_SIGNAL.search(stderr) if returncode in (255, 123) else None
    if m is None:
        return None
    return int(m.group(1)) if m.group(1) else 0


def check_exit(returncode: int, stderr: str, what: str = "ffmpeg") -> None:
    """Raise for a failed ffmpeg: `EncoderInterrupted` when a signal ended it, else `FFmpegError`."""
    signum = stopping_signal(returncode, stderr)
    if signum is not None:
        which = f"signal {signum}" if signum else "signals"
        raise EncoderInterrupted(
            f"{what} was stopped by {which} before it finished: nothing was recorded for this input; "
            "rerun the same command to resume (it encodes the input again)",
            signum,
        )
    if returncode != 0:
        raise FFmpegError(classify_ffmpeg_error(stderr), tail(stderr) or f"ffmpeg exited with {returncode}")


@functools.lru_cache(maxsize=None)
def find_ffmpeg() -> str:
    """Path of the ffmpeg binary: $TPN_FFMPEG when set, else the one imageio-ffmpeg ships.

    The shipped binary comes first, before any `ffmpeg` on PATH: shards,
    tests and `export.predict` then give the same bytes and pixels on every
    machine (distributions' builds differ, e.g. Debian 12's ffmpeg 5.1
    scales and converts colours a level or two apart). Set TPN_FFMPEG to
    use another build on purpose; `ffmpeg` on PATH is the fallback only when
    imageio-ffmpeg is missing.
    """
    env = os.environ.get("TPN_FFMPEG")
    if env:
        if not Path(env).is_file():
            raise FileNotFoundError(f"TPN_FFMPEG={env!r} is not a file; point it at an ffmpeg binary or unset it")
        return env
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):  # not installed, or no binary for this platform
        pass
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    raise FileNotFoundError("no ffmpeg found: `pip install imageio-ffmpeg` (a dependency), or set TPN_FFMPEG")


@functools.lru_cache(maxsize=None)
def has_encoder(exe: str, encoder: str) -> bool:
    out = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=60)
    return re.search(rf"^\s*V\S*\s+{re.escape(encoder)}\s", out.stdout, re.MULTILINE) is not None


@dataclass(frozen=True, kw_only=True)
class EncodeSettings:
    """Everything that decides the bytes of an encoded video.

    `threads` is part of the settings (not derived from the worker count)
    because libvpx output differs with the thread count; fixing it keeps
    shards identical whatever `--workers` is.
    """

    codec: Codec = "vp9"
    short_side: int | None = 256  # None: keep the source size (rounded down to even)
    size: tuple[int, int] | None = None  # fixed (W, H); overrides short_side
    fps: float | None = None  # None: the source's frame rate
    gop: int = 16
    # Lower is better: the CRF of vp9 / h264 (None: DEFAULT_CRF[codec]), ffmpeg's mjpeg quantiser scale -q:v for
    # jpeg (None: DEFAULT_JPEG_Q).
    quality: int | None = None
    vp9_deadline: str = "realtime"
    vp9_cpu_used: int = 8
    x264_preset: str = "veryfast"
    threads: int = 1

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {sorted(CODECS)}, got {self.codec!r}")
        if self.short_side is not None and (self.short_side < 2 or self.short_side % 2):
            raise ValueError(f"short_side must be an even number >= 2, got {self.short_side}")
        if self.size is not None:
            w, h = self.size
            if w < 2 or h < 2 or w % 2 or h % 2:
                raise ValueError(f"size must be even WxH (yuv420p needs even sizes), got {w}x{h}")
        if self.gop < 1:
            raise ValueError(f"gop must be >= 1, got {self.gop}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.codec == "jpeg" and self.quality is not None and not 2 <= self.quality <= 31:
            raise ValueError(f"JPEG quality (mjpeg -q:v) must be in 2..31 (2 is finest), got {self.quality}")

    @property
    def encoder(self) -> str:
        return CODECS[self.codec]["encoder"]

    @property
    def container(self) -> str:
        return CODECS[self.codec]["container"]

    @property
    def ext(self) -> str:
        return CODECS[self.codec]["ext"]

    @property
    def resolved_quality(self) -> int:
        """`quality`, or the codec's default."""
        if self.quality is not None:
            return self.quality
        return DEFAULT_JPEG_Q if self.codec == "jpeg" else DEFAULT_CRF[self.codec]

    @property
    def is_frames(self) -> bool:
        """Frame shards (one JPEG per frame) rather than one video file per sample."""
        return self.codec == "jpeg"

    def to_json(self) -> dict:
        """The manifest's `settings` record. Its quality key keeps its first name, `crf` (for every codec), so
        manifests and their fingerprints stay what earlier runs wrote."""
        d = {("crf" if k == "quality" else k): v for k, v in asdict(self).items()}
        d.update(size=list(self.size) if self.size else None, crf=self.resolved_quality)
        d.update(container=self.container, encoder=self.encoder, pix_fmt="yuv420p")
        return d


def parse_size(text: str) -> tuple[int, int]:
    """'320x240' -> (320, 240)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"size must look like WIDTHxHEIGHT (e.g. 320x240), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def sar_filter(display: Display) -> list[str]:
    """Stretch non-square pixels to square ones at the display aspect ratio, before every geometry rule.

    ffmpeg has already turned the frame upright (its autorotation, before the
    filters), and the SAR applies to the stored frame: after a quarter turn the
    stored width, the one to stretch, is the height.
    """
    sar = display.sar
    if not sar or sar[0] == sar[1]:
        return []
    if display.sideways:
        return [f"scale=w=iw:h=trunc(ih*{sar[0]}/{sar[1]}/2)*2", "setsar=1"]
    return [f"scale=w=trunc(iw*{sar[0]}/{sar[1]}/2)*2:h=ih", "setsar=1"]


def output_geometry(width: int, height: int, s: EncodeSettings, display: Display = Display()) -> tuple[int, int]:
    """The (W, H) ffmpeg produces for a stored `width` x `height` source shown as `display` says (mirrors
    the autorotation, `sar_filter` then `scale_filter`: every rule applies to the displayed size).

    ffmpeg's `-2` keeps the aspect ratio and rounds to the nearest multiple of 2.
    """
    width, height = display.size(width, height)
    if s.size is not None:
        return s.size
    if s.short_side is None:
        return width - width % 2, height - height % 2
    if width <= height:
        return s.short_side, _round_even(s.short_side * height / width)
    return _round_even(s.short_side * width / height), s.short_side


def _round_even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def scale_filter(s: EncodeSettings) -> str:
    """The `scale` filter for the size policy; the source size is known only to ffmpeg."""
    if s.size is not None:
        return f"scale={s.size[0]}:{s.size[1]}"
    if s.short_side is None:
        return "scale=trunc(iw/2)*2:trunc(ih/2)*2"
    n = s.short_side
    return f"scale=w='if(lte(iw,ih),{n},-2)':h='if(lte(iw,ih),-2,{n})'"


def video_filter(s: EncodeSettings, display: Display = Display()) -> str:
    parts = [] if s.fps is None else [f"fps={s.fps:g}"]
    parts += sar_filter(display)
    # JPEG stores full-range YCbCr (JFIF); the video codecs limited-range 4:2:0.
    parts += [scale_filter(s), "setsar=1", "format=yuvj420p" if s.is_frames else "format=yuv420p"]
    return ",".join(parts)


def codec_options(s: EncodeSettings) -> dict[str, object]:
    """Encoder options: CRF quality, a closed GOP of exactly `gop` frames, no scene-cut keyframes."""
    if s.is_frames:
        # Every frame stands alone: no GOP. -q:v is the quantiser scale (2 finest .. 31).
        return {"c:v": s.encoder, "q:v": s.resolved_quality, "threads": s.threads, "f": "matroska"}
    common: dict[str, object] = {
        "c:v": s.encoder,
        "crf": s.resolved_quality,
        "g": s.gop,
        "keyint_min": s.gop,
        "threads": s.threads,
    }
    if s.codec == "vp9":
        # VP9 keyframes never reference across; min == max distance pins them every `gop` frames.
        opts = {"deadline": s.vp9_deadline, "cpu-used": s.vp9_cpu_used, "b:v": 0, "row-mt": int(s.threads > 1)}
        return {**common, **opts, "f": "webm"}
    # x264: no B-frames, no scene-cut I-frames, closed GOPs; moov first so readers can stream it.
    opts = {"preset": s.x264_preset, "sc_threshold": 0, "bf": 0, "x264-params": "open-gop=0", "profile:v": "high"}
    return {**common, **opts, "movflags": "+faststart", "f": "mp4"}


@dataclass(frozen=True)
class SourceSpec:
    """What ffmpeg reads: a video file, or a folder of numbered JPEG frames at `fps`."""

    path: str
    kind: Literal["video", "frames"] = "video"
    fps: float | None = None  # frames only
    pattern: str = "%05d.jpg"  # frames only
    start_number: int = 1  # frames only
    display: Display = Display()  # a video's non-square pixels and display rotation


def transcode_argv(src: SourceSpec, dst: str | os.PathLike, s: EncodeSettings, exe: str | None = None) -> list[str]:
    """The full ffmpeg command that writes `dst` from `src` with settings `s` (pure)."""
    if src.kind == "frames":
        if not src.fps:
            raise ValueError(f"frame folder {src.path} needs an fps to be encoded as video")
        inp = ffmpeg_python.input(
            os.path.join(src.path, src.pattern), framerate=f"{src.fps:g}", start_number=src.start_number
        )
    else:
        inp = ffmpeg_python.input(src.path)
    out_kwargs = {
        **codec_options(s),
        "map": "0:v:0",
        "vf": video_filter(s, src.display),
        "an": None,
        "sn": None,
        "dn": None,
    }
    out_kwargs.update({"map_metadata": -1, "fflags": "+bitexact"})
    if s.fps is None:
        out_kwargs["fps_mode"] = "cfr"  # constant rate at the source's rate
    args = ffmpeg_python.output(inp, str(dst), **out_kwargs).get_args()
    # get_args adds `-map 0` only for multi-stream outputs; ours maps explicitly. Info level (without the
    # progress lines) prints the input's container duration, which `claimed_frames` reads.
    return [exe or find_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "info", "-nostats", "-y", *args]


def copy_frames_argv(src: SourceSpec, dst: str | os.PathLike, exe: str | None = None) -> list[str]:
    """ffmpeg command that stores a JPEG frame folder's files as MJPEG packets unchanged (pure)."""
    inp = ffmpeg_python.input(
        os.path.join(src.path, src.pattern), framerate=f"{src.fps:g}", start_number=src.start_number
    )
    out_kwargs = {"map": "0:v:0", "c:v": "copy", "f": "matroska", "map_metadata": -1, "fflags": "+bitexact"}
    args = ffmpeg_python.output(inp, str(dst), **out_kwargs).get_args()
    return [exe or find_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "info", "-nostats", "-y", *args]


def claimed_frames(stderr: str, fps: float) -> int | None:
    """Frames the input's container claims (its duration x the output rate), from ffmpeg's info log (pure)."""
    m = re.search(r"Input #0.*?Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", stderr, re.S)
    if not m or fps <= 0:
        return None
    seconds = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    return int(round(seconds * fps))


# Reasons an input is rejected; rejected.jsonl only ever holds these words.
REJECT_REASONS = (
    "missing_file",
    "unreadable",
    "no_video_stream",
    "too_short",
    "ffmpeg_error",
    "timeout",
    "unknown_class",
    "dangling_symlink",
    "directory_loop",
    "partly_decodable",  # only with strict=True; otherwise such inputs are sharded and listed as warnings
    "frame_gap",  # only with strict=True: a frame folder whose numbering has a gap (otherwise kept, and warned of)
)

_PATTERNS = [
    ("no_video_stream", re.compile(r"matches no streams|does not contain any stream|no video stream", re.I)),
    ("missing_file", re.compile(r"No such file or directory|Could find no file or sequence", re.I)),
    (
        "unreadable",
        re.compile(
            r"Invalid data found when processing input|moov atom not found|could not find codec parameters"
            r"|End of file|EBML header parsing failed|Failed to read frame size|unknown format",
            re.I,
        ),
    ),
]


def classify_ffmpeg_error(stderr: str) -> str:
    """Map ffmpeg's stderr to a reject reason (pure)."""
    for reason, pattern in _PATTERNS:
        if pattern.search(stderr):
            return reason
    return "ffmpeg_error"


_CONTEXT_ADDRESS = re.compile(r" @ 0x[0-9a-fA-F]+\]")


def tail(text: str, lines: int = 6, chars: int = 800) -> str:
    """The last lines of a log, for error messages that stay readable. ffmpeg's per-line memory addresses
    (`[in#0 @ 0x55c8...]`) are dropped: they differ from run to run, and rejected.jsonl must not."""
    kept = "\n".join(_CONTEXT_ADDRESS.sub("]", line) for line in text.strip().splitlines()[-lines:])
    return kept[-chars:]


def run_ffmpeg(argv: list[str], timeout: float | None, input_bytes: bytes | None = None) -> str:
    """Run one ffmpeg command; return its stderr or raise `FFmpegError`."""
    try:
        proc = subprocess.run(
            argv,
            input=input_bytes,
            stdin=None if input_bytes is not None else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as err:
        # subprocess.run has killed and reaped ffmpeg by now.
        msg = (err.stderr or b"").decode("utf-8", "replace")
        raise FFmpegError("timeout", f"ffmpeg ran longer than {timeout:g} s. {tail(msg)}".strip()) from None
    stderr = proc.stderr.decode("utf-8", "replace")
    check_exit(proc.returncode, stderr)
    return stderr


def raw_rgb_input(width: int, height: int, fps: float | None = None, exe: str | None = None) -> list[str]:
    """The start of an ffmpeg command that reads raw RGB24 frames of width x height from stdin (at `fps`,
    else ffmpeg's default of 25); add the output options and the output (pure)."""
    rate = ["-r", f"{fps:g}"] if fps is not None else []
    return [exe or find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
            "-s", f"{width}x{height}", *rate, "-i", "pipe:"]  # fmt: skip


def pipe_frames(argv: list[str], chunks: Iterable[bytes], timeout: float) -> None:
    """Run ffmpeg feeding `chunks` to its stdin (raw frames); raise `FFmpegError` on failure.

    stderr goes to a temp file rather than a pipe, so a chatty ffmpeg can never
    block while we are busy writing its input.
    """
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(argv, timeout)
            proc.stdin.close()
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise FFmpegError("timeout", f"ffmpeg ran longer than {timeout:g} s") from None
        except BrokenPipeError:
            proc.wait()  # ffmpeg quit early: its stderr says why
        finally:
            if proc.poll() is None:  # an exception from `chunks`: do not leave ffmpeg behind
                proc.kill()
                proc.wait()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    check_exit(proc.returncode, stderr)


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int
    duration: float
    codec: str


def probe_encoded(path: str | os.PathLike) -> VideoInfo:
    """Frame count and geometry of a file we encoded, by counting packets (no decoding).

    Our encodes have no B-frames and libvpx packs hidden alt-ref frames into
    superframes, so one packet is one displayed frame; the tests check this
    against full decodes by PyAV and by DALI.
    """
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise FFmpegError("no_video_stream", f"{path} has no video stream after encoding")
        stream = container.streams.video[0]
        frames = sum(1 for p in container.demux(stream) if p.size > 0)
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        fps = float(rate)
        ctx = stream.codec_context
        return VideoInfo(
            frames=frames,
            fps=round(fps, 6),
            width=ctx.width,
            height=ctx.height,
            duration=round(frames / fps, 6) if fps else 0.0,
            codec=ctx.name,
        )


def count_decoded_frames(video: str | os.PathLike | bytes) -> int:
    """Frames a decoder returns for a file or in-memory video (full decode with PyAV)."""
    import io

    import av

    source = io.BytesIO(video) if isinstance(video, bytes) else str(video)
    with av.open(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def mjpeg_packets(path: str | os.PathLike) -> list[bytes]:
    """The JPEG images of an MJPEG stream we encoded, in presentation order (one per packet)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [bytes(p) for p in container.demux(stream) if p.size > 0]
