"""Checks of what users give the video predictors (SAM2 and STCN): one message per mistake,
saying what was expected (`UserInputError`)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sam2_video.errors import UserInputError


def check_frame_idx(frame_idx: Any, num_frames: int | None, video: str, what: str = "frame_idx") -> int:
    """`frame_idx` as an int in 0..num_frames-1 (num_frames None: a stream, any frame >= 0)."""
    is_int = isinstance(frame_idx, (int, np.integer)) and not isinstance(frame_idx, bool)
    if num_frames is None:
        if not is_int or frame_idx < 0:
            raise UserInputError(f"{what} {frame_idx!r} is not a frame of {video}: give an int >= 0")
    elif not is_int or not 0 <= frame_idx < num_frames:
        raise UserInputError(
            f"{what} {frame_idx!r} is not a frame of {video}: it has {num_frames} frames, "
            f"so {what} must be an int from 0 to {num_frames - 1}"
        )
    return int(frame_idx)


def check_obj_id(obj_id: Any) -> int:
    if isinstance(obj_id, bool) or not isinstance(obj_id, (int, np.integer)):
        raise UserInputError(f"obj_id must be an int (any int naming the object), got {obj_id!r} "
                             f"of type {type(obj_id).__name__}")
    return int(obj_id)


def check_mask(mask: Any, obj_id: int, frame_idx: int, video: str, video_hw: tuple[int, int]) -> torch.Tensor:
    """A 2-D mask of the frame's size [H, W] as a tensor (nonzero = object)."""
    mask = torch.as_tensor(mask if isinstance(mask, torch.Tensor) else np.asarray(mask))
    if mask.dim() != 2 or tuple(mask.shape) != tuple(video_hw):
        got = "x".join(str(s) for s in mask.shape) or "a scalar"
        raise UserInputError(
            f"mask for object {obj_id} on frame {frame_idx} of {video} is {got} but the video frames are "
            f"{video_hw[0]}x{video_hw[1]} (height x width); give a 2-D mask of the frame's size"
        )
    return mask


def check_inside_frame(points: Any, box: Any, width: float, height: float, where: str,
                       unit: str = "video pixels") -> None:
    """Refuse clicks ([N,2] x, y) or a box (x0, y0, x1, y1) outside the width x height frame
    (edges included): a click there is a mistake in the coordinates, not an object."""
    for name, coords in (("click", points), ("box corner", box)):
        if coords is None:
            continue
        for x, y in np.asarray(coords, dtype=np.float64).reshape(-1, 2):
            if not (0 <= x <= width and 0 <= y <= height):
                raise UserInputError(
                    f"{where}: {name} ({x:g}, {y:g}) lies outside the {width:g}x{height:g} frame (width x height); "
                    f"coordinates are {unit}, x in 0..{width:g} and y in 0..{height:g}"
                )


def points_and_labels(points: Any, labels: Any, box: Any, clear_old_points: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked prompt tensors on the CPU: coords [1,N,2] float32 (box corners first) and labels
    [1,N] int32."""
    if (points is None) != (labels is None):
        raise UserInputError("points and labels must be given together: one label (1 = object, "
                             "0 = background) per point")
    if points is None and box is None:
        raise UserInputError("give points with labels, a box, or both")
    coords = torch.zeros(1, 0, 2) if points is None else torch.as_tensor(points, dtype=torch.float32).cpu()
    point_labels = (torch.zeros(1, 0, dtype=torch.int32) if labels is None
                    else torch.as_tensor(labels, dtype=torch.int32).cpu())
    if coords.dim() == 2:
        coords = coords.unsqueeze(0)
    if point_labels.dim() == 1:
        point_labels = point_labels.unsqueeze(0)
    if coords.dim() != 3 or coords.shape[0] != 1 or coords.shape[2] != 2:
        raise UserInputError(f"points must be N (x, y) pairs, shape [N,2], got shape {list(coords.shape)}")
    if point_labels.dim() != 2 or point_labels.shape[0] != 1:
        raise UserInputError(f"labels must be N ints, shape [N], got shape {list(point_labels.shape)}")
    if coords.shape[1] != point_labels.shape[1]:
        raise UserInputError(f"points and labels differ in length: {coords.shape[1]} points but "
                             f"{point_labels.shape[1]} labels (one label per point)")
    if box is not None:
        if not clear_old_points:
            raise UserInputError("a box must come before any click, so it cannot be added with "
                                 "clear_old_points=False")
        box_coords = torch.as_tensor(box, dtype=torch.float32).cpu()
        if box_coords.numel() != 4:
            raise UserInputError(f"box must be 4 numbers (x0, y0, x1, y1), got {box_coords.numel()}")
        coords = torch.cat([box_coords.reshape(1, 2, 2), coords], dim=1)
        point_labels = torch.cat([torch.tensor([[2, 3]], dtype=torch.int32), point_labels], dim=1)
    return coords, point_labels
