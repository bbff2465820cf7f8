"""Videos described by one COCO-style JSON (seed 002 format).

    {"images": [{"id", "video_id", "order_in_video", "path", "width", "height"}, ...],
     "annotations": [{"image_id", "segmentation", "object_id" | "track_id" (optional),
                      "point_coords", "point_labels", "box" (optional explicit prompt)}, ...]}

`segmentation` is RLE (compressed string or uncompressed counts) or polygons. An object is followed
across frames by `object_id` (or `track_id`); without either, the k-th annotation of each image is
object k (1-based). Every listed image is an annotated frame. Relative `path`s are resolved against
`image_root` (default: the JSON's folder). `order_in_video` must be an integer (a string of one is
read as its number, so "10" comes after "9"), distinct within a video. Every image file's header is checked against its
`width` and `height` when the dataset is built (`file_check`).
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from sam2_video.data.batch import ObjectPrompt
from sam2_video.data.clip_dataset import ClipDataset, Objects
from sam2_video.data.file_check import check_videos
from sam2_video.data.prompts import PromptGenerator
from sam2_video.data.readers import read_frame
from sam2_video.data.rle import decode_segmentation, require_keys
from sam2_video.data.sampling import ClipSampler
from sam2_video.data.transforms import ClipTransform
from sam2_video.errors import UserInputError

IMAGE_KEYS = ("id", "video_id", "order_in_video", "path", "width", "height")
ANNOTATION_KEYS = ("image_id", "segmentation")


class COCOVideoDataset(ClipDataset):
    """Clips from a COCO-style video JSON (see the module doc); decoded masks go through the LRU
    cache of `mask_cache_size` frames. Other arguments: see `ClipDataset`."""

    def __init__(
        self,
        json_path: str | os.PathLike,
        image_root: str | os.PathLike | None = None,
        clip_sampler: ClipSampler | None = None,
        transform: ClipTransform | None = None,
        prompt_generator: PromptGenerator | None = None,
        prompt_frames: int | None = 1,
        mask_cache_size: int = 64,
    ):
        super().__init__(clip_sampler, transform, prompt_generator, prompt_frames, mask_cache_size)
        self.json_path = Path(json_path)
        self.image_root = Path(image_root) if image_root is not None else self.json_path.parent
        try:
            content = json.loads(self.json_path.read_text())
        except FileNotFoundError as err:
            raise UserInputError(f"{self.json_path}: annotation file not found") from err
        except json.JSONDecodeError as err:
            raise UserInputError(f"{self.json_path}: not valid JSON ({err})") from err
        require_keys(content, ("images", "annotations"), self.json_path, "the JSON")

        frames_by_video: dict[object, list[tuple[int, dict]]] = defaultdict(list)
        for number, image in enumerate(content["images"]):
            require_keys(image, IMAGE_KEYS, self.json_path, f"images[{number}]")
            frames_by_video[image["video_id"]].append((self._order(number, image), image))
        if not frames_by_video:
            raise UserInputError(f"{self.json_path}: \"images\" is empty")
        self.videos = sorted(frames_by_video, key=str)
        self._frames = [self._in_order(video, frames_by_video[video]) for video in self.videos]
        position = {image["id"]: (v, f) for v, frames in enumerate(self._frames) for f, image in enumerate(frames)}

        # (object id, annotation, its index in "annotations") per (video, frame)
        self._annotations: dict[tuple[int, int], list[tuple[int, dict, int]]] = defaultdict(list)
        for number, annotation in enumerate(content["annotations"]):
            require_keys(annotation, ANNOTATION_KEYS, self.json_path, f"annotations[{number}]")
            if annotation["image_id"] not in position:
                raise UserInputError(f"{self.json_path}: annotations[{number}] refers to image_id {annotation['image_id']!r}, which is not in \"images\"")
            key = position[annotation["image_id"]]
            object_id = annotation.get("object_id", annotation.get("track_id"))
            object_id = len(self._annotations[key]) + 1 if object_id is None else int(object_id)
            self._annotations[key].append((object_id, annotation, number))
        self._check_image_files()

    def _order(self, number: int, image: dict) -> int:
        """`order_in_video` as an int (an int, or a string of one); an error names the image otherwise."""
        order = image["order_in_video"]
        if isinstance(order, int) and not isinstance(order, bool):
            return order
        if isinstance(order, str):
            try:
                return int(order)
            except ValueError:
                pass
        raise UserInputError(
            f"{self.json_path}: images[{number}] (image id {image['id']!r}) has order_in_video {order!r}; "
            f"expected an integer giving the frame's position in its video"
        )

    def _in_order(self, video: object, frames: list[tuple[int, dict]]) -> list[dict]:
        """A video's image records sorted by order; two images with one order are an error naming both."""
        frames = sorted(frames, key=lambda item: item[0])
        for (order, first), (next_order, second) in zip(frames, frames[1:]):
            if order == next_order:
                raise UserInputError(
                    f"{self.json_path}: video {video!r} has images {first['id']!r} and {second['id']!r} both at "
                    f"order_in_video {order}; each frame of a video needs its own order"
                )
        return [image for _, image in frames]

    def _check_image_files(self) -> None:
        """Every image file opens and has its record's width and height (headers only, see `file_check`)."""
        paths = [[self._path(v, f) for f in range(len(frames))] for v, frames in enumerate(self._frames)]
        for v, video_sizes in enumerate(check_videos(paths)):
            for f, (height, width) in enumerate(video_sizes):
                record = self._frames[v][f]
                if (height, width) != (record["height"], record["width"]):
                    raise UserInputError(
                        f"{paths[v][f]}: the frame is {width}x{height} but {self.json_path} gives width "
                        f"{record['width']} and height {record['height']} (image id {record['id']!r})"
                    )

    def __len__(self) -> int:
        return len(self.videos)

    def video_name(self, index: int) -> str:
        return str(self.videos[index])

    def frame_names(self, index: int) -> list[str]:
        return [Path(image["path"]).stem for image in self._frames[index]]

    def annotated_frames(self, index: int) -> list[int]:
        return list(range(len(self._frames[index])))

    def _path(self, index: int, frame: int) -> Path:
        path = Path(self._frames[index][frame]["path"])
        return path if path.is_absolute() else self.image_root / path

    def frame_source(self, index: int, frame: int) -> str:
        return f"{self._path(index, frame)} (image id {self._frames[index][frame]['id']} in {self.json_path})"

    def read_image(self, index: int, frame: int) -> np.ndarray:
        return read_frame(self._path(index, frame))

    def _annotation_name(self, annotation: dict, number: int, image_id: object) -> str:
        """`<json>: annotations[7] (id 12, image id 3)`, without the id when the annotation has none."""
        ids = ([f"id {annotation['id']!r}"] if "id" in annotation else []) + [f"image id {image_id!r}"]
        return f"{self.json_path}: annotations[{number}] ({', '.join(ids)})"

    def read_objects(self, index: int, frame: int) -> Objects:
        record = self._frames[index][frame]
        objects: Objects = {}
        for object_id, annotation, number in self._annotations.get((index, frame), []):
            source = self._annotation_name(annotation, number, record["id"])
            mask = decode_segmentation(annotation["segmentation"], record["height"], record["width"], source)
            objects[object_id] = objects[object_id] | mask if object_id in objects else mask
        return objects

    def read_prompts(self, index: int, frame: int) -> dict[int, ObjectPrompt]:
        prompts = {}
        for object_id, annotation, number in self._annotations.get((index, frame), []):
            if "point_coords" not in annotation and "box" not in annotation:
                continue
            coords = torch.tensor(annotation.get("point_coords", []), dtype=torch.float32).view(-1, 2)
            labels = torch.tensor(annotation.get("point_labels", [1] * len(coords)), dtype=torch.int32).view(-1)
            if len(labels) != len(coords):
                raise UserInputError(f"{self._annotation_name(annotation, number, self._frames[index][frame]['id'])}: "
                                     f"{len(coords)} point_coords but {len(labels)} point_labels")
            box = torch.tensor(annotation["box"], dtype=torch.float32).view(4) if annotation.get("box") is not None else None
            prompts[object_id] = ObjectPrompt(point_coords=coords, point_labels=labels, box=box)
        return prompts
