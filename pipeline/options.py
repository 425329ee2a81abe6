"""The loader's vocabularies and the pure rule that picks a decoder: no DALI, no torch.

`ClipLoader` accepts these words, and `pipeline.cli` offers them as flag
choices; both import them from here, so `--help` stays fast and a word is
defined once.

Backends, by shard kind and decoder (see `resolve_decoder`):

| shards | decoder | decodes | augments |
|---|---|---|---|
| JPEG frames | "host" | libjpeg-turbo (simplejpeg), host threads | OpenCV, host threads |
| JPEG frames | "cpu" / "nvjpeg" | DALI, CPU threads / nvJPEG | DALI, loader's device |
| video | "cpu" / "nvdec" | DALI, libavcodec / NVDEC | DALI, loader's device |
| video | "pyav" | PyAV, host threads | DALI, loader's device |
"""

from __future__ import annotations

from typing import Literal

Mode = Literal["train", "test"]
Device = Literal["auto", "cpu", "gpu", "cuda"]
Decoder = Literal["auto", "nvdec", "cpu", "pyav", "nvjpeg", "host"]

LOADER_DEVICES: tuple[Device, ...] = ("auto", "cpu", "gpu", "cuda")  # "cuda" is another name for "gpu"
DECODERS: tuple[Decoder, ...] = ("auto", "nvdec", "cpu", "pyav", "nvjpeg", "host")
FRAME_DECODERS: tuple[Decoder, ...] = ("auto", "host", "cpu", "nvjpeg")  # what frame shards accept
VIDEO_DECODERS: tuple[Decoder, ...] = ("auto", "nvdec", "cpu", "pyav")  # what video shards accept
CPU_CODECS = ("vp9", "vp8", "mjpeg")  # what DALI's CPU video decoder handles


def resolve_decoder(decoder: Decoder, device: str, codec: str) -> str:
    """Where the frames are decoded: "host", "cpu", "nvjpeg", "nvdec" or "pyav" (see the module table).

    Frame shards ("jpeg"): on a CPU, "auto" is "host": libjpeg-turbo and
    OpenCV in host threads do per frame in about a quarter of the time what
    DALI's CPU resize and colour operators do (`python -m benchmarks.data`
    compares both). On a GPU, "auto" is nvJPEG (DALI's mixed image decoder,
    with the hardware JPEG engines where the GPU has them), and the
    augmentation runs on the GPU. "host" on a GPU loader still works: the
    clips are made on the CPU and copied to the GPU.

    Video shards: "auto" on a GPU decodes VP9 on the CPU threads and augments
    on the GPU (measured on an H100: `benchmarks/results/2026-11-25-h100-loader_variants.json`);
    H.264 has no CPU decoder in DALI, so it stays on NVDEC there.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(map(repr, DECODERS))}, got {decoder!r}")
    if codec == "jpeg":
        if decoder not in FRAME_DECODERS:
            raise ValueError(
                f"decoder={decoder!r} decodes video; these shards hold JPEG frames, which decode with "
                f"{', '.join(map(repr, FRAME_DECODERS))}"
            )
        if decoder == "auto":
            return "host" if device == "cpu" else "nvjpeg"
        if decoder == "nvjpeg" and device == "cpu":
            return "cpu"
        return decoder
    if decoder not in VIDEO_DECODERS:
        raise ValueError(
            f"decoder={decoder!r} decodes JPEG frame shards; these shards hold {codec} video: use "
            f"{', '.join(map(repr, VIDEO_DECODERS))}"
        )
    if decoder == "pyav":
        return "pyav"
    if device == "cpu":
        return "cpu"
    if decoder != "auto":
        return decoder
    return "cpu" if codec in CPU_CODECS else "nvdec"
