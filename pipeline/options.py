"""The loader's vocabularies and the pure rule that picks a decoder: no DALI, no torch.

`ClipLoader` accepts these words, and `pipeline.cli` offers them as flag
choices; both import them from here, so `--help` stays fast and a word is
defined once.

Backends, by shard kind and decoder (see `resolve_decoder`):

| shards | decoder | decodes | augments |
|---|---|---|---|
| JPEG frames | "host" | libjpeg-turbo (simplejpeg), host threads | OpenCV, host threads |
| JPEG frames | "cpu" / "nvjpeg" | DALI, CPU threads / nvJPEG | DALI, loader's device |
| video | "host" | PyAV (libavcodec, any codec), host threads | OpenCV, host threads |
| video | "cpu" / "nvdec" | DALI, libavcodec / NVDEC | DALI, loader's device |
| video | "pyav" | PyAV, host threads | DALI, loader's device |

On a CPU, "auto" is "host" for every kind and codec (H.264 included);
on a GPU it is nvJPEG for frames, DALI's CPU decoder for VP9 and NVDEC
for H.264, with the augmentation on the GPU.
"""

from __future__ import annotations

from typing import Literal, get_args

Mode = Literal["train", "test"]
Device = Literal["auto", "cpu", "gpu", "cuda"]
Decoder = Literal["auto", "nvdec", "cpu", "pyav", "nvjpeg", "host"]

LOADER_DEVICES: tuple[Device, ...] = get_args(Device)  # "cuda" is another name for "gpu"
DECODERS: tuple[Decoder, ...] = get_args(Decoder)
FRAME_DECODERS: tuple[Decoder, ...] = ("auto", "host", "cpu", "nvjpeg")  # what frame shards accept
VIDEO_DECODERS: tuple[Decoder, ...] = ("auto", "host", "nvdec", "cpu", "pyav")  # what video shards accept
CPU_CODECS = ("vp9", "vp8", "mjpeg")  # what DALI's CPU video decoder handles
# Frame shards on a GPU: the share of the JPEGs nvJPEG gives the hardware decoder where the GPU has one
# (DALI's default).
HW_DECODER_LOAD = 0.65
DALI_DECODERS = ("cpu", "nvjpeg", "nvdec", "pyav")  # the decoders that run a DALI backend
GPU_EXTRA_HINT = "pip install -e '.[gpu]' (or pip install nvidia-dali-cuda130)"


def resolve_decoder(decoder: Decoder, device: str, codec: str) -> str:
    """Where the frames are decoded: "host", "cpu", "nvjpeg", "nvdec" or "pyav" (see the module table).

    On a CPU, "auto" is "host": OpenCV in host threads does per frame the
    resize and colour work in a fraction of the time DALI's CPU operators
    take (`python -m benchmarks.data` measures both paths in one run).
    On a GPU, frame shards take nvJPEG (DALI's mixed image decoder, with the
    hardware JPEG engines where the GPU has them) and VP9 decodes on the CPU
    threads with the augmentation on the GPU (measured on an H100:
    `benchmarks/results/2026-11-25-h100-loader_variants.json`); H.264 has no
    CPU decoder in DALI, so it stays on NVDEC there. "host" on a GPU loader
    still works: the clips are made on the CPU and copied to the GPU.
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
        return "cpu" if decoder == "nvjpeg" and device == "cpu" else decoder
    if decoder not in VIDEO_DECODERS:
        raise ValueError(
            f"decoder={decoder!r} decodes JPEG frame shards; these shards hold {codec} video: use "
            f"{', '.join(map(repr, VIDEO_DECODERS))}"
        )
    if decoder in ("host", "pyav"):
        return decoder
    if device == "cpu":
        return "host" if decoder == "auto" else "cpu"
    if decoder != "auto":
        return decoder
    return "cpu" if codec in CPU_CODECS else "nvdec"
