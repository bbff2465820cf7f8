"""DAVIS / YouTube-VOS / BCSS folders: `<root>/JPEGImages/<video>/<frame>.jpg|png` + `<root>/Annotations/<video>/<frame>.png`.

Masks may exist for only some frames (YouTube-VOS and SA-V annotate every k-th frame); a mask must
share its frame's name. Clips are drawn from the annotated frames only, as the official SAM2 sampler
does: a frame without a mask has no ground truth to train on, and counting it as empty would teach
that the objects vanished. So a clip skips unannotated frames and a video whose first masks are
missing starts at its first annotated frame; one line at start-up says how many frames that leaves
out. Every frame's and mask's header is checked when the dataset is built (`file_check`).

Explicit prompts may come from `<prompts_dir>/<video>.json`:

    {"prompts": [{"frame": "00000", "object_id": 1, "point_coords": [[x, y], ...],
                  "point_labels": [1, 0, ...], "box": [x0, y0, x1, y1]}, ...]}

(pixel coordinates of the original frame; `box` and the points are each optional).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sam2_video.data.batch import ObjectPrompt
from sam2_video.data.clip_dataset import ClipDataset, Objects
from sam2_video.data.prompts import PromptGenerator
from sam2_video.data.file_check import check_videos
from sam2_video.data.loader import distributed_rank_and_size
from sam2_video.data.readers import VOID_ID, dropped_values, list_frames, read_frame, read_id_map, read_video_list, split_ids
from sam2_video.data.sampling import ClipSampler
from sam2_video.data.transforms import ClipTransform
from sam2_video.errors import UserInputError


def read_prompt_file(path: Path) -> dict[tuple[str, int], ObjectPrompt]:
    """{(frame name, object id): ObjectPrompt} from a sidecar prompt JSON (see module doc)."""
    try:
        content = json.loads(path.read_text())
        entries = content["prompts"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserInputError(f"{path}: expected JSON of the form {{\"prompts\": [{{\"frame\", \"object_id\", ...}}]}} ({err!r})") from err
    prompts = {}
    for number, entry in enumerate(entries):
        try:
            coords = torch.tensor(entry.get("point_coords", []), dtype=torch.float32).view(-1, 2)
            labels = torch.tensor(entry.get("point_labels", []), dtype=torch.int32).view(-1)
            box = torch.tensor(entry["box"], dtype=torch.float32).view(4) if entry.get("box") is not None else None
            key = (str(entry["frame"]), int(entry["object_id"]))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise UserInputError(
                f"{path}: prompt #{number} needs \"frame\", \"object_id\", and optional \"point_coords\" [[x, y], ...], "
                f"\"point_labels\" [1|0, ...], \"box\" [x0, y0, x1, y1] ({err!r})"
            ) from err
        if len(coords) != len(labels):
            raise UserInputError(f"{path}: prompt #{number} has {len(coords)} point_coords but {len(labels)} point_labels")
        prompts[key] = ObjectPrompt(point_coords=coords, point_labels=labels, box=box)
    return prompts


class VOSFolderDataset(ClipDataset):
    """Clips from a DAVIS-layout folder (see the module doc).

    root: the folder holding `image_folder` and `mask_folder` (e.g. "JPEGImages/480p" for full DAVIS).
    video_list: optional text file naming the videos to use (default: every folder in image_folder).
    ignore_ids: label values that are not objects (e.g. BCSS classes to skip); 255 in palettized masks
      is always void.
    prompts_dir: optional folder of `<video>.json` explicit prompts, used instead of generated ones.
    Other arguments: see `ClipDataset`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        clip_sampler: ClipSampler | None = None,
        transform: ClipTransform | None = None,
        prompt_generator: PromptGenerator | None = None,
        prompt_frames: int | None = 1,
        image_folder: str = "JPEGImages",
        mask_folder: str = "Annotations",
        video_list: str | os.PathLike | None = None,
        ignore_ids: Sequence[int] = (),
        prompts_dir: str | os.PathLike | None = None,
        mask_cache_size: int = 64,
    ):
        super().__init__(clip_sampler, transform, prompt_generator, prompt_frames, mask_cache_size)
        self.root = Path(root)
        self.image_dir, self.mask_dir = self.root / image_folder, self.root / mask_folder
        for folder in (self.image_dir, self.mask_dir):
            if not folder.is_dir():
                raise UserInputError(f"{folder}: folder not found; expected {self.root}/{image_folder}/<video>/ and {self.root}/{mask_folder}/<video>/")
        if video_list is not None:
            self.videos = read_video_list(video_list)
        else:
            self.videos = sorted(p.name for p in self.image_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.videos:
            raise UserInputError(f"{self.image_dir}: no video folders found")
        self.ignore_ids = tuple(ignore_ids)
        self.prompts_dir = Path(prompts_dir) if prompts_dir is not None else None
        self._frames = [list_frames(self.image_dir / video) for video in self.videos]
        self._masks = [self._match_masks(video, frames) for video, frames in zip(self.videos, self._frames)]
        check_videos(self._frames, self._masks)
        self._prompts: dict[int, dict[tuple[str, int], ObjectPrompt]] = {}
        summary = self.unannotated_summary()
        if summary is not None and distributed_rank_and_size()[0] == 0:
            print(summary, file=sys.stderr)

    def unannotated_summary(self, examples: int = 3) -> str | None:
        """One line on the frames without a mask (None when every frame has one), naming a few videos."""
        missing = [(video, len(frames) - len(masks), frames[min(masks)].stem)
                   for video, frames, masks in zip(self.videos, self._frames, self._masks) if len(masks) < len(frames)]
        if not missing:
            return None
        total = sum(len(frames) for frames in self._frames)
        named = ", ".join(f"{video} ({count}, first mask {first})" for video, count, first in missing[:examples])
        more = f" and {len(missing) - examples} more" if len(missing) > examples else ""
        return (
            f"note: {self.mask_dir}: {len(missing)} of {len(self.videos)} videos lack masks for "
            f"{sum(count for _, count, _ in missing)} of {total} frames: {named}{more}; training clips use "
            f"only the annotated frames and skip the others"
        )

    def _match_masks(self, video: str, frames: list[Path]) -> dict[int, Path]:
        """{frame index: mask path}; every mask must be named as a frame."""
        mask_folder = self.mask_dir / video
        if not mask_folder.is_dir():
            raise UserInputError(f"{mask_folder}: mask folder not found for the frames in {self.image_dir / video}")
        index_of = {frame.stem: i for i, frame in enumerate(frames)}
        masks = {}
        for mask in sorted(mask_folder.glob("*.png")):
            if mask.stem not in index_of:
                raise UserInputError(
                    f"{mask}: no frame named {mask.stem}.jpg/.png in {self.image_dir / video} (frames are named like "
                    f"{frames[0].name}); mask files must share their frame's name"
                )
            masks[index_of[mask.stem]] = mask
        if not masks:
            raise UserInputError(f"{mask_folder}: no .png masks, expected one per annotated frame named like {frames[0].stem}.png")
        return masks

    def __len__(self) -> int:
        return len(self.videos)

    def video_name(self, index: int) -> str:
        return self.videos[index]

    def frame_names(self, index: int) -> list[str]:
        return [frame.stem for frame in self._frames[index]]

    def annotated_frames(self, index: int) -> list[int]:
        return sorted(self._masks[index])

    def frame_source(self, index: int, frame: int) -> str:
        mask = self._masks[index].get(frame)
        return f"{self._frames[index][frame]} (mask {mask})" if mask else str(self._frames[index][frame])

    def read_image(self, index: int, frame: int) -> np.ndarray:
        return read_frame(self._frames[index][frame])

    def read_objects(self, index: int, frame: int) -> Objects:
        return split_ids(read_id_map(self._masks[index][frame], self.ignore_ids))

    def why_no_object(self, index: int) -> str | None:
        """Names the first mask whose only labels are void (255 in a palettized mask) or in `ignore_ids`."""
        for mask in self._masks[index].values():
            dropped = dropped_values(mask, self.ignore_ids)
            if not dropped or split_ids(read_id_map(mask, self.ignore_ids)):
                continue
            ignored = [value for value in dropped if value in self.ignore_ids]
            reasons, advice = [], []
            if VOID_ID in dropped and VOID_ID not in ignored:
                reasons.append("255 in a palettized mask is void (ignored), not an object")
                advice.append("give objects ids 1..254 (or save one object as a grayscale 0/255 PNG)")
            if ignored:
                reasons.append(f"{', '.join(map(str, ignored))} in dataset.ignore_ids count as background")
                advice.append("take object ids out of dataset.ignore_ids")
            values = ", ".join(map(str, dropped))
            return f"{mask} holds only 0 and {values}: {'; '.join(reasons)}; {' or '.join(advice)}"
        return None

    def read_prompts(self, index: int, frame: int) -> dict[int, ObjectPrompt]:
        if self.prompts_dir is None:
            return {}
        if index not in self._prompts:
            path = self.prompts_dir / f"{self.videos[index]}.json"
            self._prompts[index] = read_prompt_file(path) if path.is_file() else {}
        name = self._frames[index][frame].stem
        return {object_id: prompt for (frame_name, object_id), prompt in self._prompts[index].items() if frame_name == name}
