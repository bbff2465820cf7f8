"""Mask PNG input/output in the DAVIS conventions, and a video of masks drawn over frames.

A mask is an integer array `[H, W]` of object ids: 0 is background, 255 is void ("do not score").
On disk it is a palettized PNG with the DAVIS palette (the PASCAL VOC colour map).
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from sam2_video.errors import UserInputError
from sam2_video.io import atomic_path

VOID_ID = 255


def davis_palette() -> list[int]:
    """The DAVIS / PASCAL VOC palette as 768 ints (256 RGB triples): 1 -> dark red, 2 -> green, ..."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette += [red, green, blue]
    return palette


def read_mask_png(path: str | os.PathLike) -> np.ndarray:
    """Read a mask PNG as object ids `[H, W]` (int64).

    Palettized ('P') and integer label maps: pixel values are the ids (255 = void).
    Grayscale with only the values 0 and 255 (DAVIS 2016 style): one object, id 1.
    An RGB mask is accepted only when it is gray (R = G = B); a colour RGB mask is an error,
    since its colours cannot be mapped to ids without the palette.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            mode = image.mode
            values = np.array(image)
    except FileNotFoundError:
        raise UserInputError(f"mask file not found: {path}") from None
    except OSError as err:
        raise UserInputError(f"cannot read mask {path}: {err}") from None
    if mode in ("RGB", "RGBA"):
        rgb = values[..., :3]
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
            raise UserInputError(
                f"{path}: an RGB colour mask cannot be read as object ids; save it as a palettized PNG "
                "(mode 'P', pixel value = object id) or a grayscale PNG (0 = background, 255 = object)"
            )
        values, mode = rgb[..., 0], "L"
    elif mode == "LA":
        values, mode = values[..., 0], "L"
    elif mode not in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L"):
        raise UserInputError(f"{path}: unsupported mask image mode {mode!r}; expected a palettized or grayscale PNG")
    if mode == "1":
        return values.astype(np.int64)
    if mode == "L" and np.bincount(values.ravel(), minlength=256)[1:255].sum() == 0:
        return (values > 0).astype(np.int64)
    return values.astype(np.int64)


def write_palette_png(path: str | os.PathLike, ids: np.ndarray) -> None:
    """Write object ids `[H, W]` (0..255) as a palettized PNG with the DAVIS palette, atomically."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"mask ids must be [H, W], got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise ValueError(f"mask ids must lie in 0..255 to fit a palettized PNG, got {ids.min()}..{ids.max()}")
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette(davis_palette())
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def overlay_masks(frame: np.ndarray, ids: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend palette colours of `ids` `[H, W]` over an RGB uint8 `frame` `[H, W, 3]`; returns uint8 `[H, W, 3]`."""
    colours = np.asarray(davis_palette(), dtype=np.float32).reshape(256, 3)
    painted = (ids > 0) & (ids != VOID_ID)
    blended = frame.astype(np.float32)
    blended[painted] = (1 - alpha) * blended[painted] + alpha * colours[ids[painted]]
    return np.clip(blended.round(), 0, 255).astype(np.uint8)


def pick_video_codec() -> str:
    """H.264 when this PyAV build can encode it, else MPEG-4 part 2 (always built into FFmpeg)."""
    import av

    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
        except Exception:  # av raises UnknownCodecError or its own errors depending on the version
            continue
        return name
    raise RuntimeError("this PyAV build can encode neither libx264 nor mpeg4; cannot write an overlay video")


def write_overlay_video(
    frames_and_masks: Iterable[tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    fps: float = 24.0,
) -> None:
    """Write an .mp4 of masks drawn over frames (pairs of RGB uint8 `[H, W, 3]` and ids `[H, W]`, encoded
    as they come, so a tracker can feed it frame by frame), atomically.

    The encoder needs even sizes, so an odd last row/column is dropped from the video.
    """
    import av

    codec = pick_video_codec()
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = None
            for frame, ids in frames_and_masks:
                if stream is None:
                    height, width = (frame.shape[0] // 2) * 2, (frame.shape[1] // 2) * 2
                    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                picture = np.ascontiguousarray(overlay_masks(frame, ids)[:height, :width])
                for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                    container.mux(packet)
            if stream is None:
                raise ValueError("no frames to write to the overlay video")
            for packet in stream.encode():
                container.mux(packet)
