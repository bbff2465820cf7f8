"""Bare frame folders without labels: `<data_path>/<video>/<frame>.jpg|png`.

Each clip gets generated objects (textured shapes that move, rotate and occlude each other, from
`synthetic`) composited over its real frames, so the ground truth is known exactly. Every frame's
header is checked when the dataset is built (`file_check`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sam2_video.data.clip_dataset import ClipDataset, Objects
from sam2_video.data.file_check import check_videos
from sam2_video.data.prompts import PromptGenerator
from sam2_video.data.readers import list_frames, read_frame, read_video_list
from sam2_video.data.sampling import ClipSampler, ClipSelection
from sam2_video.data.synthetic import composite, random_tracks
from sam2_video.data.transforms import ClipTransform
from sam2_video.errors import UserInputError


class VideoDataset(ClipDataset):
    """Clips of real frames with `num_objects` (min, max) generated objects pasted in per clip;
    the objects visible on the first frame (at most the sampler's `max_num_objects`) are the targets.
    Other arguments: see `ClipDataset`."""

    def __init__(
        self,
        data_path: str | os.PathLike,
        num_objects: tuple[int, int] = (1, 3),
        clip_sampler: ClipSampler | None = None,
        transform: ClipTransform | None = None,
        prompt_generator: PromptGenerator | None = None,
        prompt_frames: int | None = 1,
        video_list: str | os.PathLike | None = None,
    ):
        super().__init__(clip_sampler, transform, prompt_generator, prompt_frames, mask_cache_size=0)
        self.data_path = Path(data_path)
        if not self.data_path.is_dir():
            raise UserInputError(f"{self.data_path}: folder not found; expected <data_path>/<video>/<frame>.jpg")
        if video_list is not None:
            self.videos = read_video_list(video_list)
        else:
            self.videos = sorted(p.name for p in self.data_path.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.videos:
            raise UserInputError(f"{self.data_path}: no video folders found; expected <data_path>/<video>/<frame>.jpg")
        self.num_objects = num_objects
        self._frames = [list_frames(self.data_path / video) for video in self.videos]
        check_videos(self._frames)

    def __len__(self) -> int:
        return len(self.videos)

    def video_name(self, index: int) -> str:
        return self.videos[index]

    def frame_names(self, index: int) -> list[str]:
        return [frame.stem for frame in self._frames[index]]

    def annotated_frames(self, index: int) -> list[int]:
        return list(range(len(self._frames[index])))

    def frame_source(self, index: int, frame: int) -> str:
        return str(self._frames[index][frame])

    def read_image(self, index: int, frame: int) -> np.ndarray:
        return read_frame(self._frames[index][frame])

    def visible_objects(self, index: int, frame: int) -> list[int]:
        """Objects are generated per clip in `load_clip`; every frame can start one."""
        return [1]

    def read_objects(self, index: int, frame: int) -> Objects:
        raise TypeError("VideoDataset has no stored masks: its objects are generated per clip in load_clip")

    def load_clip(
        self, index: int, selection: ClipSelection, rng: np.random.Generator
    ) -> tuple[np.ndarray, torch.Tensor, list[int]]:
        frames = [self.read_image(index, frame) for frame in selection.frame_indices]  # one size: check_videos
        background = np.stack(frames).astype(np.float32) / 255
        num_frames, height, width, _ = background.shape
        count = int(rng.integers(self.num_objects[0], self.num_objects[1] + 1))
        images, ids = composite(background, random_tracks(rng, count, num_frames, height, width))
        visible = [int(i) for i in np.unique(ids[0]) if i != 0]
        limit = self.clip_sampler.max_num_objects
        object_ids = visible if len(visible) <= limit else sorted(int(i) for i in rng.choice(visible, limit, replace=False))
        masks = torch.from_numpy(np.stack([ids == object_id for object_id in object_ids], axis=1))
        return images, masks.reshape(num_frames, len(object_ids), height, width), object_ids
