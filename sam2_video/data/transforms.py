"""Clip augmentation that keeps masks and prompts aligned with the images.

Order: resize to a square `image_size` (antialiased) -> horizontal flip -> affine (rotation, shear,
scale) -> colour jitter (brightness, contrast, saturation, hue) -> grayscale -> ImageNet
normalisation. Each random op is drawn once per clip, or once per frame where its `*_per_frame`
option is set. The pixel work runs in PIL on uint8 frames (bilinear for images, nearest for masks),
several times faster than float `grid_sample` on CPU workers; kornia and albumentations are not
dependencies of this project (albumentations would also pull OpenCV), and the geometry is one 3x3
matrix per frame, tested against the masks.

Points are pixel indices (x, y) as in `sam2_video.data.prompts`. After the geometric ops a positive
click that no longer lies on its object (or a negative one that lands on it or leaves the frame) is
dropped and a fresh click of the same label is sampled from the transformed mask; boxes are the
bounds of their transformed corners, clipped to the frame and grown to contain the transformed mask.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from sam2_video.data.batch import ObjectPrompt
from sam2_video.data.prompts import POSITIVE, PromptGenerator, clip_box, mask_to_box, points_in_frame, points_inside

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Prompts = list[list[ObjectPrompt | None]]


def _uniform(low: float, high: float, count: int, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)


class ClipTransform:
    """Augment one clip: images [T,H,W,3] uint8 (numpy), masks [T,N,H,W] bool, per-frame per-object prompts.

    The defaults only resize and normalise (evaluation); `ClipTransform.sam2_training(size)` gives the
    augmentation SAM2 trains with. Returns images [T,3,S,S] float (normalised), masks [T,N,S,S] bool.
    An affine draw that empties an object visible on the first frame is redrawn (`affine_tries`), and
    dropped if every draw does.
    """

    def __init__(
        self,
        image_size: int,
        hflip_prob: float = 0.0,
        affine_prob: float = 0.0,
        rotation_degrees: float = 0.0,
        shear_degrees: float = 0.0,
        scale_range: tuple[float, float] = (1.0, 1.0),
        affine_per_frame: bool = False,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        color_per_frame: bool = False,
        grayscale_prob: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        affine_tries: int = 3,
    ):
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.image_size = image_size
        self.hflip_prob = hflip_prob
        self.affine_prob = affine_prob
        self.rotation_degrees = rotation_degrees
        self.shear_degrees = shear_degrees
        self.scale_range = scale_range
        self.affine_per_frame = affine_per_frame
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self.color_per_frame = color_per_frame
        self.grayscale_prob = grayscale_prob
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.affine_tries = affine_tries

    @classmethod
    def sam2_training(cls, image_size: int) -> "ClipTransform":
        """SAM2.1's video training augmentation (flip, affine 25 deg / shear 20, light jitter, 5% gray)."""
        return cls(
            image_size,
            hflip_prob=0.5,
            affine_prob=1.0,
            rotation_degrees=25.0,
            shear_degrees=20.0,
            brightness=0.1,
            contrast=0.03,
            saturation=0.03,
            grayscale_prob=0.05,
        )

    def __call__(
        self,
        images: np.ndarray,
        masks: torch.Tensor,
        prompts: Prompts,
        generator: torch.Generator,
        prompt_generator: PromptGenerator,
    ) -> tuple[torch.Tensor, torch.Tensor, Prompts]:
        """Transform a clip; `prompt_generator` re-samples clicks that the geometry invalidated."""
        num_frames, height, width, _ = images.shape
        size = self.image_size
        # point/box maps as 3x3 matrices on homogeneous pixel coordinates, one per frame
        geometry = _resize_matrix(height, width, size).repeat(num_frames, 1, 1)
        frames = [Image.fromarray(frame).resize((size, size), Image.BILINEAR) for frame in images]
        masks = _map_masks(masks, lambda image, t: image.resize((size, size), Image.NEAREST))

        # resizing and flipping commute, so the flip runs on the smaller resized clip
        if self.hflip_prob > 0 and torch.rand((), generator=generator) < self.hflip_prob:
            frames = [frame.transpose(Image.FLIP_LEFT_RIGHT) for frame in frames]
            masks = masks.flip(-1)
            geometry = _hflip_matrix(size) @ geometry

        if self.affine_prob > 0 and torch.rand((), generator=generator) < self.affine_prob:
            affine = self._draw_affine(masks, generator)
            frames = [_warp(frame, matrix, Image.BILINEAR) for frame, matrix in zip(frames, affine)]
            masks = _warp_masks(masks, affine)
            geometry = affine @ geometry

        frames = self._color(frames, generator)
        pixels = torch.from_numpy(np.stack([np.asarray(frame) for frame in frames])).permute(0, 3, 1, 2).float()
        images_out = torch.addcmul(-self.mean / self.std, pixels, 1 / (255 * self.std))
        return images_out, masks, _move_prompts(prompts, geometry, masks, generator, prompt_generator)

    def _draw_affine(self, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """[T,3,3] pixel maps; identity when every draw empties an object visible on the first frame."""
        num_frames, size = masks.shape[0], masks.shape[-1]
        draws = num_frames if self.affine_per_frame else 1
        visible_first = masks[0].flatten(1).any(-1)
        for _ in range(self.affine_tries):
            angle = _uniform(-self.rotation_degrees, self.rotation_degrees, draws, generator)
            shear = _uniform(-self.shear_degrees, self.shear_degrees, draws, generator)
            scale = _uniform(*self.scale_range, draws, generator)
            affine = _affine_matrix(angle, shear, scale, size).expand(num_frames, 3, 3)
            first = _warp_masks(masks[:1], affine[:1])
            if (first[0].flatten(1).any(-1) | ~visible_first).all():
                return affine
        return torch.eye(3, dtype=torch.float64).expand(num_frames, 3, 3)

    def _color(self, frames: list[Image.Image], generator: torch.Generator) -> list[Image.Image]:
        """Brightness, contrast and saturation jitter (one colour matrix per frame), hue, grayscale."""
        num_frames = len(frames)
        draws = num_frames if self.color_per_frame else 1

        def per_frame(values: torch.Tensor) -> list:
            return values.expand(num_frames).tolist()

        def factors(amount: float) -> list[float]:
            return per_frame(_uniform(max(0.0, 1 - amount), 1 + amount, draws, generator)) if amount > 0 else [1.0] * num_frames

        jitter = zip(factors(self.brightness), factors(self.contrast), factors(self.saturation))
        if self.brightness > 0 or self.contrast > 0 or self.saturation > 0:
            frames = [_jitter(frame, *amounts) for frame, amounts in zip(frames, jitter)]
        if self.hue > 0:
            shifts = per_frame(_uniform(-self.hue, self.hue, draws, generator))
            frames = [_shift_hue(frame, shift) for frame, shift in zip(frames, shifts)]
        if self.grayscale_prob > 0:
            to_gray = per_frame(torch.rand(draws, generator=generator) < self.grayscale_prob)
            frames = [frame.convert("L").convert("RGB") if gray else frame for frame, gray in zip(frames, to_gray)]
        return frames


LUMA = np.array([0.299, 0.587, 0.114])


def _jitter(frame: Image.Image, brightness: float, contrast: float, saturation: float) -> Image.Image:
    """Scale by `brightness`, stretch about the mean gray by `contrast`, blend with gray by `saturation`
    (torchvision's definitions, composed into one RGB matrix so PIL makes a single clipped pass)."""
    mean_gray = brightness * float(np.asarray(frame.convert("L")).mean())
    to_gray = np.outer(np.ones(3), LUMA)
    saturate = saturation * np.eye(3) + (1 - saturation) * to_gray
    linear = saturate @ (contrast * brightness * np.eye(3))
    offset = saturate @ np.full(3, (1 - contrast) * mean_gray)
    return frame.convert("RGB", tuple(np.concatenate([linear, offset[:, None]], 1).flatten().tolist()))


def _shift_hue(frame: Image.Image, shift: float) -> Image.Image:
    """Rotate the hue of an RGB frame by `shift` turns (HSV, 8-bit hue)."""
    hsv = np.array(frame.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(shift * 256)) % 256
    return Image.fromarray(hsv, mode="HSV").convert("RGB")


def _pil_affine(matrix: torch.Tensor) -> tuple[float, ...]:
    """PIL's AFFINE data (output -> input, in continuous coordinates where pixel i spans [i, i+1))
    for a forward map on pixel-centre indices."""
    half = torch.tensor([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]], dtype=torch.float64)
    inverse = half @ torch.linalg.inv(matrix) @ torch.linalg.inv(half)
    return tuple(inverse[:2].flatten().tolist())


def _warp(image: Image.Image, matrix: torch.Tensor, resample: int) -> Image.Image:
    return image.transform(image.size, Image.AFFINE, _pil_affine(matrix), resample=resample, fillcolor=0)


def _map_masks(masks: torch.Tensor, operation: Callable[[Image.Image, int], Image.Image]) -> torch.Tensor:
    """Apply a nearest-neighbour PIL `operation(image, t)` to every mask of [T,N,H,W] bool.

    Up to 8 objects travel as the bits of one uint8 image, so a frame needs one call per 8 objects.
    """
    num_frames, num_objects = masks.shape[:2]
    bits = (1 << torch.arange(8, dtype=torch.uint8)).view(8, 1, 1)
    frames = []
    for t in range(num_frames):
        groups = []
        for first in range(0, max(num_objects, 1), 8):
            group = masks[t, first : first + 8]
            packed = (group.to(torch.uint8) * bits[: group.shape[0]]).sum(0, dtype=torch.uint8)
            moved = torch.from_numpy(np.array(operation(Image.fromarray(packed.numpy()), t)))
            groups.append((moved & bits[: group.shape[0]]) > 0)
        frames.append(torch.cat(groups)[:num_objects])
    return torch.stack(frames)


def _warp_masks(masks: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """[T,N,S,S] bool warped by affine[t] with nearest sampling (outside the frame = empty)."""
    return _map_masks(masks, lambda image, t: _warp(image, affine[t], Image.NEAREST))


def _hflip_matrix(width: int) -> torch.Tensor:
    return torch.tensor([[-1, 0, width - 1], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)


def _resize_matrix(height: int, width: int, size: int) -> torch.Tensor:
    """Pixel centres of an H x W frame to those of the S x S resize: x' = (x + 0.5) * S / W - 0.5."""
    sx, sy = size / width, size / height
    return torch.tensor([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], dtype=torch.float64)


def _affine_matrix(angle: torch.Tensor, shear: torch.Tensor, scale: torch.Tensor, size: int) -> torch.Tensor:
    """[D,3,3] pixel maps: rotate by angle (deg), shear x by shear (deg), scale, about the image centre."""
    rad, shear_rad = angle * math.pi / 180, shear * math.pi / 180
    cos, sin = rad.cos(), rad.sin()
    linear = torch.stack([cos, -sin, sin, cos], -1).view(-1, 2, 2)
    shear_x = torch.zeros(len(angle), 2, 2, dtype=torch.float64)
    shear_x[:, 0, 0] = 1
    shear_x[:, 0, 1] = shear_rad.tan()
    shear_x[:, 1, 1] = 1
    linear = linear @ shear_x * scale.view(-1, 1, 1)
    centre = torch.full((2,), (size - 1) / 2, dtype=torch.float64)
    matrix = torch.eye(3, dtype=torch.float64).repeat(len(angle), 1, 1)
    matrix[:, :2, :2] = linear
    matrix[:, :2, 2] = centre - linear @ centre
    return matrix


def _apply(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """[K,2] points mapped by a 3x3 matrix."""
    moved = points.double() @ matrix[:2, :2].T + matrix[:2, 2]
    return moved.float()


def _move_prompts(
    prompts: Prompts,
    geometry: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    prompt_generator: PromptGenerator,
) -> Prompts:
    """Map every prompt of frame t by geometry[t] and repair it against masks[t]."""
    size = masks.shape[-1]
    moved: Prompts = []
    for t, row in enumerate(prompts):
        moved_row: list[ObjectPrompt | None] = []
        for n, prompt in enumerate(row):
            mask = masks[t, n]
            if prompt is None or not mask.any():
                moved_row.append(None)
                continue
            moved_row.append(_repair(prompt, geometry[t], mask, size, generator, prompt_generator))
        moved.append(moved_row)
    return moved


def _repair(
    prompt: ObjectPrompt,
    matrix: torch.Tensor,
    mask: torch.Tensor,
    size: int,
    generator: torch.Generator,
    prompt_generator: PromptGenerator,
) -> ObjectPrompt:
    coords, labels = _apply(matrix, prompt.point_coords), prompt.point_labels
    inside = points_inside(mask, coords)
    valid = torch.where(labels == POSITIVE, inside, points_in_frame(coords, size, size) & ~inside)
    valid |= (labels > POSITIVE) & points_in_frame(coords, size, size)  # box-corner labels 2/3: only stay in frame
    kept_coords, kept_labels = [coords[valid]], [labels[valid]]
    for label in labels[~valid & (labels <= POSITIVE)].tolist():
        fresh = prompt_generator.resample_point(mask, label, generator)
        kept_coords.append(fresh)
        kept_labels.append(torch.full((len(fresh),), label, dtype=labels.dtype))
    box = None
    if prompt.box is not None:
        corners = prompt.box[[0, 1, 2, 1, 2, 3, 0, 3]].view(4, 2)
        moved = _apply(matrix, corners)
        box = torch.cat([moved.min(0).values, moved.max(0).values])
        tight = mask_to_box(mask)
        box = clip_box(torch.cat([torch.minimum(box[:2], tight[:2]), torch.maximum(box[2:], tight[2:])]), size, size)
    # a mask prompt stands for the object's mask, so it becomes the transformed ground truth
    return ObjectPrompt(
        point_coords=torch.cat(kept_coords),
        point_labels=torch.cat(kept_labels),
        box=box,
        mask=mask.clone() if prompt.mask is not None else None,
    )
