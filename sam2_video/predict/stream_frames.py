"""Frames of a live stream for the video predictor (`SAM2VideoPredictor.track_stream`): each RGB
uint8 frame is preprocessed as video files are, and only the current one is held."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from sam2_video.errors import UserInputError
from sam2_video.predict.frames import IMAGE_MEAN, IMAGE_STD
from sam2_video.predict.tracking import Prompt


class CurrentFrame:
    """The frame source of a stream session: only the frame being tracked, [3,S,S] float32."""

    def __init__(self) -> None:
        self.frame_idx, self.image = -1, None

    def set(self, frame_idx: int, image: torch.Tensor) -> None:
        self.frame_idx, self.image = frame_idx, image

    def __getitem__(self, frame_idx: int) -> torch.Tensor:
        if frame_idx != self.frame_idx:
            raise UserInputError(f"frame {frame_idx} of a stream is gone: only the current frame "
                                 f"({self.frame_idx}) can be prompted or tracked")
        return self.image


def prompts_by_frame(prompts: Sequence[Prompt], num_frames: int | None) -> dict[int, list[Prompt]]:
    """The prompts grouped by frame, in order; a frame beyond a stream of known length is refused."""
    by_frame: dict[int, list[Prompt]] = {}
    for prompt in prompts:
        if prompt.frame_idx < 0 or (num_frames is not None and prompt.frame_idx >= num_frames):
            raise UserInputError(f"{prompt.source}: frame {prompt.frame_idx} is not a frame of the stream, "
                                 f"which has {num_frames} frames (0..{(num_frames or 0) - 1})")
        by_frame.setdefault(prompt.frame_idx, []).append(prompt)
    return by_frame


def stream_frame_input(rgb: Any, frame_idx: int, state: Mapping[str, Any], image_size: int) -> torch.Tensor:
    """An RGB uint8 frame [H,W,3] of the session's size -> [3,S,S] float32, preprocessed as video
    files are (PIL bicubic resize on uint8, /255, ImageNet normalisation)."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        got = f"{type(rgb).__name__} {getattr(rgb, 'dtype', '')} {list(getattr(rgb, 'shape', []))}"
        raise UserInputError(f"stream frame {frame_idx} must be an RGB uint8 array [H,W,3], got {got}")
    if rgb.shape[:2] != (state["video_height"], state["video_width"]):
        raise UserInputError(f"stream frame {frame_idx} is {rgb.shape[1]}x{rgb.shape[0]} but the first was "
                             f"{state['video_width']}x{state['video_height']} (width x height); all frames "
                             "of a stream must have the same size")
    resized = np.asarray(Image.fromarray(rgb).resize((image_size, image_size)))
    image = torch.from_numpy(resized / 255.0).permute(2, 0, 1).float()
    mean = torch.tensor(IMAGE_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGE_STD, dtype=torch.float32)[:, None, None]
    return (image - mean) / std
