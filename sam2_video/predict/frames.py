"""Loading video frames and images into the model's input format (official SAM2 preprocessing).

Video frames (folder of images or a video file) follow the official video predictor: PIL
`convert("RGB").resize((S, S))` (bicubic) on uint8, /255 in float64, stored as float32, then
ImageNet mean/std normalisation. Single images follow the official image predictor: float /255,
bilinear antialiased resize on the float image, then normalisation.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sam2_video.errors import UserInputError

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")


def list_frame_files(folder: str | os.PathLike) -> list[Path]:
    """The .jpg/.jpeg/.png files of `folder` in frame order.

    Ordered by the integer in the name when every name (without extension) is an integer
    (so "9.jpg" comes before "10.jpg"), otherwise lexicographically. Raises UserInputError when
    the folder does not exist or holds no frames.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{folder}: frame folder not found")
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS]
    if not files:
        raise UserInputError(f"{folder}: no frames found (expected {', '.join(FRAME_EXTENSIONS)} files)")
    if all(p.stem.isdigit() for p in files):
        return sorted(files, key=lambda p: (int(p.stem), p.name))
    return sorted(files, key=lambda p: p.name)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    """Float images [..., 3, H, W] in [0, 1] -> ImageNet-normalised (float32 arithmetic)."""
    mean = torch.tensor(IMAGE_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGE_STD, dtype=torch.float32)[:, None, None]
    return (images - mean) / std


def resize_frame(rgb: Image.Image, image_size: int) -> np.ndarray:
    """An RGB PIL image -> uint8 [S, S, 3], resized as the official video predictor (PIL bicubic)."""
    return np.asarray(rgb.resize((image_size, image_size)))


def frames_to_input(resized: np.ndarray) -> torch.Tensor:
    """uint8 frames [..., S, S, 3] from `resize_frame` -> normalised float32 [..., 3, S, S].

    /255 in float64, then float32 and normalisation, as the official video predictor; the result
    of a frame does not depend on the frames batched with it.
    """
    return _normalise(torch.from_numpy(resized / 255.0).movedim(-1, -3).float())


def load_video_frames(
    video_path: str | os.PathLike,
    image_size: int,
    offload_video_to_cpu: bool = False,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, int, int, list[str]]:
    """Load all frames of a video resized to image_size x image_size and normalised.

    `video_path` is a folder of .jpg/.jpeg/.png frames (see `list_frame_files`) or a
    .mp4/.avi/.mov/.mkv file (decoded with PyAV, frames named "00000", "00001", ...).
    Returns (images [T, 3, S, S] float32 on `device`, or on the CPU with offload_video_to_cpu,
    video_height, video_width, frame_names: file names without extension). The eager form of
    `open_video_frames` (same reader, same values), which reads frames on demand instead.
    """
    from sam2_video.predict.video_frames import open_video_frames  # imports this module's helpers

    with open_video_frames(video_path, image_size, prefetch=0) as frames:
        images = frames[:]
        height, width, names = frames.height, frames.width, frames.names
    if not offload_video_to_cpu:
        images = images.to(device)
    return images, height, width, names


def preprocess_image(image: np.ndarray, image_size: int) -> torch.Tensor:
    """An RGB uint8 image [H, W, 3] -> [1, 3, S, S] float32, as the official image predictor
    (ToTensor, bilinear antialiased Resize on the float image, Normalize)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UserInputError(
            f"expected an RGB uint8 image of shape [H, W, 3], got dtype {image.dtype} and shape {image.shape}"
        )
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255)
    x = F.interpolate(x[None], size=(image_size, image_size), mode="bilinear", align_corners=False,
                      antialias=True)
    return _normalise(x)
