"""Start-up check of a dataset's image files, so that a bad frame or mask is named before training starts.

Only headers are read (PIL's `Image.open` parses the header and decodes no pixels): every file must
open as an image, the frames of a video must share one size and a mask must have its frame's size.
Over `PROGRESS_FROM` files a progress bar goes to stderr (on the first rank only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from tqdm import tqdm

from sam2_video.data.loader import distributed_rank_and_size
from sam2_video.data.readers import image_size
from sam2_video.errors import UserInputError

PROGRESS_FROM = 500

Size = tuple[int, int]  # (H, W)


def header_sizes(paths: Sequence[Path]) -> list[Size]:
    """(H, W) of every file from its header, in order; a `UserInputError` names a file that is not an image."""
    quiet = len(paths) <= PROGRESS_FROM or distributed_rank_and_size()[0] != 0
    return [image_size(path) for path in tqdm(paths, desc="checking image files", unit="file", disable=quiet)]


def check_videos(frames: Sequence[Sequence[Path]], masks: Sequence[Mapping[int, Path]] = ()) -> list[list[Size]]:
    """Frame sizes [video][frame] (H, W), after checking every frame and mask header.

    frames: each video's frame files in time order; masks (optional): each video's {frame index: mask file}.
    """
    mask_items = [sorted(video.items()) for video in masks]
    sizes = iter(header_sizes([p for video in frames for p in video] + [p for video in mask_items for _, p in video]))
    frame_sizes = [[next(sizes) for _ in video] for video in frames]
    for paths, video_sizes in zip(frames, frame_sizes):
        for path, (height, width) in zip(paths, video_sizes):
            if (height, width) != video_sizes[0]:
                raise UserInputError(
                    f"{path}: the frame is {width}x{height} but {paths[0]} is {video_sizes[0][1]}x{video_sizes[0][0]}; "
                    f"all frames of a video must have one size"
                )
    for paths, video_masks, video_sizes in zip(frames, mask_items, frame_sizes):
        for index, mask in video_masks:
            (height, width), (frame_height, frame_width) = next(sizes), video_sizes[index]
            if (height, width) != (frame_height, frame_width):
                raise UserInputError(
                    f"{mask}: the mask is {width}x{height} but its frame {paths[index]} is {frame_width}x{frame_height}; "
                    f"frames and masks must have the same size"
                )
    return frame_sizes
