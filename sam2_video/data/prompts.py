"""Prompts (clicks, boxes, mask inputs) generated from ground-truth masks, as a user would give them.

Coordinates are pixel indices, x (column) then y (row): a point (x, y) is the centre of pixel
[y, x], and a box (x0, y0, x1, y1) spans pixels x0..x1, y0..y1 inclusive (the SAM convention).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from sam2_video.data.batch import ObjectPrompt

PROMPT_TYPES = ("point", "bbox", "mask")
POSITIVE, NEGATIVE = 1, 0


def mask_to_box(mask: torch.Tensor) -> torch.Tensor | None:
    """Tight box [4] (x0, y0, x1, y1) of a [H,W] bool mask, or None when the mask is empty."""
    rows = torch.nonzero(mask.any(1)).flatten()
    if len(rows) == 0:
        return None
    cols = torch.nonzero(mask.any(0)).flatten()
    return torch.tensor([cols[0], rows[0], cols[-1], rows[-1]], dtype=torch.float32)


def center_point(mask: torch.Tensor) -> torch.Tensor:
    """[2] (x, y) of the mask pixel farthest from the mask boundary (the frame edge counts as boundary)."""
    box = mask_to_box(mask)
    if box is None:
        raise ValueError("center_point needs a non-empty mask")
    x0, y0, x1, y1 = box.long().tolist()
    crop = np.pad(mask[y0 : y1 + 1, x0 : x1 + 1].numpy(), 1)
    distance = ndimage.distance_transform_edt(crop)
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return torch.tensor([x0 + col - 1, y0 + row - 1], dtype=torch.float32)


def points_inside(mask: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """[K] bool: each (x, y) point lies in the frame and on a mask pixel (rounded to the nearest pixel)."""
    height, width = mask.shape
    cols, rows = points.round().long().unbind(-1)
    in_frame = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    inside = torch.zeros(len(points), dtype=torch.bool)
    inside[in_frame] = mask[rows[in_frame], cols[in_frame]]
    return inside


def points_in_frame(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[K] bool: each (x, y) point rounds to a pixel of an H x W frame."""
    cols, rows = points.round().long().unbind(-1)
    return (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)


def _pick_pixels(candidates: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """[count,2] (x, y) float from a [H,W] bool map, distinct while enough pixels exist."""
    rows, cols = torch.nonzero(candidates, as_tuple=True)
    if len(rows) == 0 or count == 0:
        return torch.zeros(0, 2)
    if count <= len(rows):
        picked = torch.randperm(len(rows), generator=generator)[:count]
    else:
        picked = torch.randint(len(rows), (count,), generator=generator)
    return torch.stack([cols[picked], rows[picked]], dim=-1).float()


def negative_candidates(mask: torch.Tensor, near_object: bool) -> torch.Tensor:
    """[H,W] bool background pixels to click as negatives: within a band around the object when
    `near_object` (width a quarter of the object's size, at least 4 px), else anywhere outside it."""
    background = ~mask
    if not near_object:
        return background
    box = mask_to_box(mask)
    if box is None:
        return background
    x0, y0, x1, y1 = box.long().tolist()
    band = max(4, int(0.25 * max(x1 - x0 + 1, y1 - y0 + 1)))
    height, width = mask.shape
    top, left = max(0, y0 - band), max(0, x0 - band)
    bottom, right = min(height, y1 + band + 1), min(width, x1 + band + 1)
    crop = background[top:bottom, left:right].numpy()
    near = torch.zeros_like(mask)
    near[top:bottom, left:right] = torch.from_numpy(ndimage.distance_transform_edt(crop) <= band) & background[top:bottom, left:right]
    return near if near.any() else background


class PromptGenerator:
    """Samples one prompt per (object, frame) from its ground-truth mask.

    prompt_types: the kinds to choose from uniformly ("point", "bbox", "mask").
    num_of_pos_points: positive clicks inside the mask, an int or an inclusive (min, max) range.
    include_center: add the interior point farthest from the boundary as an extra positive (first).
    num_of_neg_points: negative clicks outside the mask, in a band around the object when
      `negatives_near_object` (where users click), else anywhere in the background.
    box_jitter: std of the noise added to each box side, as a fraction of the box's width/height.
    An empty mask gives an empty prompt. Draws come only from the `torch.Generator` passed in.
    """

    def __init__(
        self,
        prompt_types: Sequence[str] = ("point",),
        num_of_pos_points: int | tuple[int, int] = 1,
        include_center: bool = False,
        num_of_neg_points: int = 0,
        negatives_near_object: bool = True,
        box_jitter: float = 0.0,
    ):
        unknown = [kind for kind in prompt_types if kind not in PROMPT_TYPES]
        if unknown or not prompt_types:
            raise ValueError(f"prompt_types must be a non-empty subset of {PROMPT_TYPES}, got {list(prompt_types)}")
        pos_range = (num_of_pos_points, num_of_pos_points) if isinstance(num_of_pos_points, int) else tuple(num_of_pos_points)
        if len(pos_range) != 2 or not 0 <= pos_range[0] <= pos_range[1]:
            raise ValueError(f"num_of_pos_points must be an int >= 0 or a (min, max) range, got {num_of_pos_points}")
        if "point" in prompt_types and pos_range[1] == 0 and not include_center:
            raise ValueError("point prompts need num_of_pos_points >= 1 or include_center=True")
        if num_of_neg_points < 0 or box_jitter < 0:
            raise ValueError("num_of_neg_points and box_jitter must be >= 0")
        self.prompt_types = tuple(prompt_types)
        self.pos_range = pos_range
        self.include_center = include_center
        self.num_of_neg_points = num_of_neg_points
        self.negatives_near_object = negatives_near_object
        self.box_jitter = box_jitter

    def __call__(self, mask: torch.Tensor, generator: torch.Generator) -> ObjectPrompt:
        """Prompt for one [H,W] bool mask."""
        if not mask.any():
            return ObjectPrompt()
        kind = self.prompt_types[int(torch.randint(len(self.prompt_types), (), generator=generator))]
        if kind == "point":
            return self.points(mask, generator)
        if kind == "bbox":
            return ObjectPrompt(box=self.box(mask, generator))
        return ObjectPrompt(mask=mask.clone())

    def points(self, mask: torch.Tensor, generator: torch.Generator) -> ObjectPrompt:
        """Positive (and negative) clicks: coords [K,2], labels [K] (centre first when enabled)."""
        low, high = self.pos_range
        num_pos = int(torch.randint(low, high + 1, (), generator=generator))
        positives = [_pick_pixels(mask, num_pos, generator)]
        if self.include_center:
            positives.insert(0, center_point(mask)[None])
        positives = torch.cat(positives)
        negatives = _pick_pixels(negative_candidates(mask, self.negatives_near_object), self.num_of_neg_points, generator)
        labels = torch.cat([
            torch.full((len(positives),), POSITIVE, dtype=torch.int32),
            torch.full((len(negatives),), NEGATIVE, dtype=torch.int32),
        ])
        return ObjectPrompt(point_coords=torch.cat([positives, negatives]), point_labels=labels)

    def box(self, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """[4] tight box of the mask, each side moved by Gaussian noise when `box_jitter` > 0, kept in frame."""
        box = mask_to_box(mask)
        if self.box_jitter > 0:
            size = torch.stack([box[2] - box[0] + 1, box[3] - box[1] + 1]).repeat(2)
            box = box + torch.randn(4, generator=generator) * self.box_jitter * size
        return clip_box(box, *mask.shape)

    def resample_point(self, mask: torch.Tensor, label: int, generator: torch.Generator) -> torch.Tensor:
        """[1,2] a fresh click of `label` (1 inside the mask, 0 near it outside), or [0,2] if impossible."""
        candidates = mask if label == POSITIVE else negative_candidates(mask, self.negatives_near_object)
        return _pick_pixels(candidates, 1, generator)


def clip_box(box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[4] box clamped to the frame with x0 <= x1 and y0 <= y1."""
    x0, x1 = sorted(box[[0, 2]].clamp(0, width - 1).tolist())
    y0, y1 = sorted(box[[1, 3]].clamp(0, height - 1).tolist())
    return torch.tensor([x0, y0, x1, y1], dtype=torch.float32)
