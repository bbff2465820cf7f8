"""Simulated user prompts for training: clicks and boxes from ground-truth masks, correction clicks.

Follows the official SAM2 training recipe (`sam2.modeling.sam2_utils`): a box is the mask's
bounding box with corners jittered by 10% of its size (at most 20 px); a correction click is
drawn uniformly from the error region (false negatives give a positive click, false positives a
negative one) or, in evaluation, at the point farthest inside the largest error. Coordinates are
pixels (x, y) in the image the masks are given at. Random draws use torch's global generator.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

BOX_TOP_LEFT_LABEL = 2
BOX_BOTTOM_RIGHT_LABEL = 3


def mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """Bounding boxes of masks [N,1,H,W] bool -> [N,1,4] int (x0, y0, x1, y1), inclusive pixels.

    An empty mask gives (W, H, -1, -1), as in the official code.
    """
    n, _, h, w = masks.shape
    xs = torch.arange(w, device=masks.device, dtype=torch.int32).view(1, 1, 1, w).expand(n, 1, h, w)
    ys = torch.arange(h, device=masks.device, dtype=torch.int32).view(1, 1, h, 1).expand(n, 1, h, w)
    x0 = torch.where(masks, xs, w).flatten(-2).amin(-1)
    x1 = torch.where(masks, xs, -1).flatten(-2).amax(-1)
    y0 = torch.where(masks, ys, h).flatten(-2).amin(-1)
    y1 = torch.where(masks, ys, -1).flatten(-2).amax(-1)
    return torch.stack((x0, y0, x1, y1), dim=-1)


def sample_box_points(
    masks: torch.Tensor, noise: float = 0.1, noise_bound: float = 20.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A jittered bounding box of each mask [N,1,H,W] bool as two corner points.

    Returns coords [N,2,2] float (top-left, bottom-right) and labels [N,2] int32 (2, 3).
    """
    n, _, h, w = masks.shape
    boxes = mask_to_box(masks).float()  # [N,1,4]
    if noise > 0.0:
        max_dx = torch.clamp((boxes[..., 2] - boxes[..., 0]) * noise, max=noise_bound)
        max_dy = torch.clamp((boxes[..., 3] - boxes[..., 1]) * noise, max=noise_bound)
        jitter = (2 * torch.rand(n, 1, 4, device=masks.device) - 1) * torch.stack(
            (max_dx, max_dy, max_dx, max_dy), dim=-1
        )
        bounds = torch.tensor([w, h, w, h], device=masks.device, dtype=boxes.dtype) - 1
        boxes = torch.minimum(torch.clamp(boxes + jitter, min=0), bounds)
    labels = torch.tensor([BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL], dtype=torch.int32, device=masks.device)
    return boxes.reshape(n, 2, 2), labels.repeat(n, 1)


def sample_points_from_errors(
    gt_masks: torch.Tensor, pred_masks: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per mask, uniform over the error region (all of gt when `pred_masks` is None).

    gt_masks, pred_masks [N,1,H,W] bool -> coords [N,1,2] float, labels [N,1] int32
    (1: in a missed part of the object, 0: on a false positive). Where the prediction is
    already perfect a negative click is drawn from the background.
    """
    if pred_masks is None:
        pred_masks = torch.zeros_like(gt_masks)
    n, _, h, w = gt_masks.shape
    false_pos = ~gt_masks & pred_masks
    false_neg = gt_masks & ~pred_masks
    all_correct = (gt_masks == pred_masks).flatten(2).all(dim=2)[..., None, None]
    noise = torch.rand(n, 1, h, w, 2, device=gt_masks.device)
    noise[..., 0] *= false_pos | (all_correct & ~gt_masks)
    noise[..., 1] *= false_neg
    flat = noise.flatten(2).argmax(dim=2)  # [N,1]: pixel * 2 + channel
    labels = (flat % 2).to(torch.int32)
    pixel = flat // 2
    coords = torch.stack([pixel % w, pixel // w], dim=2).float()
    return coords, labels


def sample_point_from_error_center(
    gt_masks: torch.Tensor, pred_masks: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per mask at the error pixel farthest from the error region's border (RITM clicker).

    Same shapes as `sample_points_from_errors`; the click is positive when the deepest false-negative
    pixel is deeper than the deepest false-positive one.
    """
    if pred_masks is None:
        pred_masks = torch.zeros_like(gt_masks)
    n, _, _, w = gt_masks.shape
    false_pos = (~gt_masks & pred_masks).cpu().numpy()
    false_neg = (gt_masks & ~pred_masks).cpu().numpy()
    coords = torch.zeros(n, 1, 2)
    labels = torch.ones(n, 1, dtype=torch.int32)
    for i in range(n):
        # a 1-pixel zero border makes the image edge count as a region boundary
        depth_fn = distance_transform_edt(np.pad(false_neg[i, 0], 1))[1:-1, 1:-1].reshape(-1)
        depth_fp = distance_transform_edt(np.pad(false_pos[i, 0], 1))[1:-1, 1:-1].reshape(-1)
        best_fn, best_fp = int(depth_fn.argmax()), int(depth_fp.argmax())
        positive = depth_fn[best_fn] > depth_fp[best_fp]
        pixel = best_fn if positive else best_fp
        coords[i, 0] = torch.tensor([pixel % w, pixel // w], dtype=torch.float)
        labels[i, 0] = int(positive)
    return coords.to(gt_masks.device), labels.to(gt_masks.device)


def next_click(
    gt_masks: torch.Tensor, pred_masks: torch.Tensor | None, method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """A click per mask by `method` ('uniform' for training, 'center' for evaluation)."""
    if method == "uniform":
        return sample_points_from_errors(gt_masks, pred_masks)
    if method == "center":
        return sample_point_from_error_center(gt_masks, pred_masks)
    raise ValueError(f"unknown click sampling method {method!r}; expected 'uniform' or 'center'")


def append_points(
    point_inputs: dict[str, torch.Tensor] | None, coords: torch.Tensor, labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Point prompt {"point_coords" [N,P,2], "point_labels" [N,P]} with new points added at the end."""
    if point_inputs is None:
        return {"point_coords": coords, "point_labels": labels}
    return {
        "point_coords": torch.cat([point_inputs["point_coords"], coords], dim=1),
        "point_labels": torch.cat([point_inputs["point_labels"], labels], dim=1),
    }
