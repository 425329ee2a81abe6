"""Colour jitter, YUV -> RGB and normalisation as 3x4 affine maps on 0-255 RGB, one per clip.

DALI's `fn.hsv` is a linear map of RGB (it works in YIQ: hue rotates the
I/Q plane, saturation scales it), and `fn.brightness_contrast` is affine
(contrast about 128, then a shift), so the recipe's whole jitter is one 3x4
matrix on RGB. The host path applies it with `cv2.transform` on uint8
(rounded and clipped to 0-255 once, where DALI rounds and clips after each
of its two operators: the two differ only where a channel saturates between
them), then converts uint8 to float32 and normalises with one diagonal 3x4
map, which is DALI's `crop_mirror_normalize` on uint8.

The maps are checked against DALI's operators in `tests/pipeline/test_backends.py`.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.clips.sampling import Jitter

# The RGB -> YIQ matrix DALI's hsv operator uses; its inverse takes YIQ back.
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]])
CONTRAST_CENTRE = 128.0  # DALI's default contrast centre for uint8 images: half the range


def hsv_matrix(hue: float, saturation: float) -> np.ndarray:
    """(3, 3) RGB map of `fn.hsv(hue=hue, saturation=saturation)`: hue in degrees, saturation a factor."""
    t = math.radians(hue)
    c, s = saturation * math.cos(t), saturation * math.sin(t)
    rotate = np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])
    return np.linalg.inv(RGB_TO_YIQ) @ rotate @ RGB_TO_YIQ


def jitter_matrix(jitter: Jitter) -> np.ndarray:
    """(3, 4) float32 map of the loader's jitter (hsv, then contrast and brightness) on 0-255 RGB."""
    k = jitter.contrast
    m = np.empty((3, 4))
    m[:, :3] = k * hsv_matrix(jitter.hue, jitter.saturation)
    m[:, 3] = CONTRAST_CENTRE * (1.0 - k) + jitter.brightness
    return m.astype(np.float32)


# (Kr, Kb) luma weights of the YUV matrices a video may be tagged with; untagged video is read as BT.601,
# as libswscale and DALI read it.
LUMA_WEIGHTS = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


def yuv_to_rgb_matrix(matrix: str = "bt601", full_range: bool = False) -> np.ndarray:
    """(3, 4) map of 8-bit Y, U, V (Cb), V (Cr) to 0-255 RGB, for limited ("tv") or full ("pc") range."""
    kr, kb = LUMA_WEIGHTS[matrix]
    kg = 1.0 - kr - kb
    luma, chroma = (1.0, 1.0) if full_range else (255.0 / 219.0, 255.0 / 224.0)
    # R = Y + 2(1 - Kr) Cr;  B = Y + 2(1 - Kb) Cb;  G = (Y - Kr R - Kb B) / Kg
    m = np.array(
        [
            [1.0, 0.0, 2.0 * (1.0 - kr)],
            [1.0, -2.0 * kb * (1.0 - kb) / kg, -2.0 * kr * (1.0 - kr) / kg],
            [1.0, 2.0 * (1.0 - kb), 0.0],
        ]
    ) * np.array([luma, chroma, chroma])
    offset = -m @ np.array([0.0 if full_range else 16.0, 128.0, 128.0])
    return np.concatenate([m, offset[:, None]], axis=1)


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The (3, 4) affine map `outer` after `inner`, as float32."""
    m = outer[:, :3].astype(np.float64) @ inner[:, :3]
    return np.concatenate([m, (outer[:, :3] @ inner[:, 3] + outer[:, 3])[:, None]], axis=1).astype(np.float32)


def normalise_matrix(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 4) float32 map x -> (x - mean) / std per channel (a `cv2.transform` matrix)."""
    inv = 1.0 / np.asarray(std, np.float64)
    return np.concatenate([np.diag(inv), (-np.asarray(mean, np.float64) * inv)[:, None]], axis=1).astype(np.float32)
