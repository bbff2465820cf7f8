"""SA-V masklets: `<annotations_root>/<video>_manual.json` (or `_auto.json`) with `<frames_root>/<video>/00000.jpg`.

`masklet` holds one list per annotated frame with one COCO RLE per object (None where absent);
annotated frame k is video frame k * `ann_every` (SA-V: 24 fps frames annotated at 6 fps, so 4).
Object ids are the masklet's position + 1 (0 stays background). Frames are named by their number;
their headers are checked when the dataset is built (`file_check`), the JSONs when a clip reads them.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sam2_video.data.clip_dataset import ClipDataset, Objects
from sam2_video.data.file_check import check_videos
from sam2_video.data.prompts import PromptGenerator
from sam2_video.data.readers import list_frames, read_frame, read_video_list
from sam2_video.data.rle import decode_segmentation, require_keys
from sam2_video.data.sampling import ClipSampler
from sam2_video.data.transforms import ClipTransform
from sam2_video.errors import UserInputError


@dataclass
class SAVAnnotation:
    """One SA-V JSON: masklet[k][n] is object n's RLE on annotated frame k (or None); H x W frames."""

    path: Path
    masklet: list[list[dict | None]]
    height: int
    width: int

    @property
    def num_objects(self) -> int:
        return max((len(frame) for frame in self.masklet), default=0)

    def objects(self, annotated_index: int) -> Objects:
        """{object id (masklet position + 1): [H,W] bool} on annotated frame `annotated_index`."""
        objects = {}
        for position, rle in enumerate(self.masklet[annotated_index]):
            if rle is not None:
                source = f"{self.path} (masklet frame {annotated_index}, object {position})"
                objects[position + 1] = decode_segmentation(rle, self.height, self.width, source)
        return objects


def read_sav_annotation(path: str | os.PathLike) -> SAVAnnotation:
    """Parse an SA-V `*_manual.json` / `*_auto.json` (or a bare masklet list)."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise UserInputError(f"{path}: SA-V annotation file not found") from err
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}: not valid JSON ({err})") from err
    if isinstance(content, dict):
        require_keys(content, ("masklet",), path, "the SA-V annotation")
        masklet = content["masklet"]
    else:
        masklet = content
    if not isinstance(masklet, list) or not all(isinstance(frame, list) for frame in masklet):
        raise UserInputError(f"{path}: \"masklet\" must be a list (annotated frames) of lists (objects) of RLE dicts")
    sizes = {tuple(rle["size"]) for frame in masklet for rle in frame if isinstance(rle, dict) and "size" in rle}
    if isinstance(content, dict) and "video_height" in content:
        sizes.add((int(content["video_height"]), int(content["video_width"])))
    if len(sizes) != 1:
        raise UserInputError(f"{path}: expected every RLE \"size\" to be the same [height, width], found {sorted(sizes) or 'none'}")
    height, width = sizes.pop()
    return SAVAnnotation(path, masklet, int(height), int(width))


class SAVJsonDataset(ClipDataset):
    """Clips from SA-V style annotations (see the module doc).

    annotation_kind: "manual" or "auto" (which JSON of each video to read).
    video_list: optional text file of video names (default: every `<video>_<kind>.json`).
    Other arguments: see `ClipDataset`.
    """

    def __init__(
        self,
        frames_root: str | os.PathLike,
        annotations_root: str | os.PathLike,
        annotation_kind: str = "manual",
        ann_every: int = 4,
        clip_sampler: ClipSampler | None = None,
        transform: ClipTransform | None = None,
        prompt_generator: PromptGenerator | None = None,
        prompt_frames: int | None = 1,
        video_list: str | os.PathLike | None = None,
        mask_cache_size: int = 64,
        annotation_cache_size: int = 4,
    ):
        super().__init__(clip_sampler, transform, prompt_generator, prompt_frames, mask_cache_size)
        if annotation_kind not in ("manual", "auto"):
            raise ValueError(f"annotation_kind must be 'manual' or 'auto', got {annotation_kind!r}")
        self.frames_root, self.annotations_root = Path(frames_root), Path(annotations_root)
        self.suffix = f"_{annotation_kind}.json"
        self.ann_every = ann_every
        if video_list is not None:
            self.videos = read_video_list(video_list)
        else:
            self.videos = sorted(p.name[: -len(self.suffix)] for p in self.annotations_root.glob(f"*{self.suffix}"))
        if not self.videos:
            raise UserInputError(f"{self.annotations_root}: no *{self.suffix} annotation files")
        self._frames = [self._numbered_frames(video) for video in self.videos]
        check_videos([[path for _, path in frames] for frames in self._frames])
        self.annotation_cache_size = annotation_cache_size
        self._annotations: OrderedDict[int, SAVAnnotation] = OrderedDict()

    def _numbered_frames(self, video: str) -> list[tuple[int, Path]]:
        frames = []
        for path in list_frames(self.frames_root / video):
            if not path.stem.isdigit():
                raise UserInputError(f"{path}: SA-V frames must be named by their number, like 00000.jpg")
            frames.append((int(path.stem), path))
        return sorted(frames)

    def annotation(self, index: int) -> SAVAnnotation:
        """The parsed JSON of video `index` (an LRU cache keeps a few)."""
        if index not in self._annotations:
            self._annotations[index] = read_sav_annotation(self.annotations_root / f"{self.videos[index]}{self.suffix}")
            while len(self._annotations) > self.annotation_cache_size:
                self._annotations.popitem(last=False)
        self._annotations.move_to_end(index)
        return self._annotations[index]

    def __len__(self) -> int:
        return len(self.videos)

    def video_name(self, index: int) -> str:
        return self.videos[index]

    def frame_names(self, index: int) -> list[str]:
        return [path.stem for _, path in self._frames[index]]

    def annotated_frames(self, index: int) -> list[int]:
        count = len(self.annotation(index).masklet)
        return [i for i, (number, _) in enumerate(self._frames[index]) if number % self.ann_every == 0 and number // self.ann_every < count]

    def frame_source(self, index: int, frame: int) -> str:
        return f"{self._frames[index][frame][1]} (annotation {self.annotation(index).path})"

    def read_image(self, index: int, frame: int) -> np.ndarray:
        return read_frame(self._frames[index][frame][1])

    def read_objects(self, index: int, frame: int) -> Objects:
        number = self._frames[index][frame][0]
        return self.annotation(index).objects(number // self.ann_every)
