"""Mask post-processing: small holes and sprinkles (CPU replacement of the official CUDA kernel).

The official code labels connected components with a CUDA extension (8-connectivity) and
silently skips this step on machines without it; here scipy does the labelling on any device.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

# 8-connectivity inside each [H, W] plane, no connection between the N planes of a batch
_PLANE_8_CONNECTIVITY = np.zeros((3, 3, 3), dtype=bool)
_PLANE_8_CONNECTIVITY[1] = True


def connected_components(binary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Label the 8-connected components of each binary mask [N, 1, H, W].

    Returns (labels, areas), both [N, 1, H, W] int32 on binary's device: a component id > 0 and
    the component's pixel count at foreground pixels, 0 at background pixels.
    """
    planes = binary.detach().to("cpu", torch.bool).numpy()[:, 0]
    labels, _ = ndimage.label(planes, structure=_PLANE_8_CONNECTIVITY)
    component_areas = np.bincount(labels.ravel())
    component_areas[0] = 0
    areas = component_areas[labels]
    labels_t = torch.from_numpy(labels.astype(np.int32))[:, None].to(binary.device)
    areas_t = torch.from_numpy(areas.astype(np.int32))[:, None].to(binary.device)
    return labels_t, areas_t


def fill_holes_in_mask_scores(mask: torch.Tensor, max_area: int) -> torch.Tensor:
    """Video-predictor hole filling: background components (scores <= 0) of at most `max_area`
    pixels get the small positive score 0.1. mask [N, 1, H, W] logits -> same shape and dtype.

    As in the official code every small background component counts as a hole, including one
    that touches the image border.
    """
    if max_area <= 0:
        raise ValueError(f"max_area must be positive, got {max_area}")
    labels, areas = connected_components(mask <= 0)
    is_hole = (labels > 0) & (areas <= max_area)
    return torch.where(is_hole, 0.1, mask)


def remove_small_regions(
    masks: torch.Tensor, mask_threshold: float = 0.0, max_hole_area: float = 0.0, max_sprinkle_area: float = 0.0
) -> torch.Tensor:
    """Image-predictor post-processing of mask logits [B, C, H, W] (float32 result).

    Background components (<= mask_threshold) of at most `max_hole_area` pixels become
    mask_threshold + 10; then foreground components (> mask_threshold) of at most
    `max_sprinkle_area` pixels become mask_threshold - 10. An area of 0 switches a step off.
    """
    masks = masks.float()
    if max_hole_area > 0:
        labels, areas = connected_components(masks.flatten(0, 1)[:, None] <= mask_threshold)
        is_hole = ((labels > 0) & (areas <= max_hole_area)).reshape_as(masks)
        masks = torch.where(is_hole, mask_threshold + 10.0, masks)
    if max_sprinkle_area > 0:
        labels, areas = connected_components(masks.flatten(0, 1)[:, None] > mask_threshold)
        is_sprinkle = ((labels > 0) & (areas <= max_sprinkle_area)).reshape_as(masks)
        masks = torch.where(is_sprinkle, mask_threshold - 10.0, masks)
    return masks
