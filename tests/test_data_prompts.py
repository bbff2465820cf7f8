"""Prompts from masks, and prompts that stay right through clip augmentation (property tests)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from sam2_video.data import ClipTransform, ObjectPrompt, PromptGenerator
from sam2_video.data.prompts import center_point, mask_to_box


@st.composite
def masks(draw, max_size: int = 48):
    """A random [H,W] bool mask: a union of 1-3 rectangles/ellipses (possibly touching the border)."""
    height, width = draw(st.integers(8, max_size)), draw(st.integers(8, max_size))
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    mask = torch.zeros(height, width, dtype=torch.bool)
    for _ in range(draw(st.integers(1, 3))):
        cy, cx = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
        ry, rx = draw(st.integers(1, height // 2)), draw(st.integers(1, width // 2))
        if draw(st.booleans()):
            mask |= ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
        else:
            mask |= ((ys - cy).abs() <= ry) & ((xs - cx).abs() <= rx)
    return mask


def inside(mask: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    cols, rows = points.round().long().unbind(-1)
    return mask[rows, cols]


def in_frame(mask: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    cols, rows = points.round().long().unbind(-1)
    return (cols >= 0) & (cols < mask.shape[1]) & (rows >= 0) & (rows < mask.shape[0])


def box_contains(box: torch.Tensor, mask: torch.Tensor) -> bool:
    tight = mask_to_box(mask)
    return bool((box[:2] <= tight[:2]).all() and (box[2:] >= tight[2:]).all())


@settings(max_examples=80, deadline=None)
@given(masks(), st.integers(0, 4), st.integers(0, 4), st.booleans(), st.booleans(), st.integers(0, 2**31))
def test_generated_points_and_boxes_respect_the_mask(mask, num_pos, num_neg, with_center, near, seed):
    if num_pos == 0 and not with_center:
        num_pos = 1
    generator = PromptGenerator(("point",), num_pos, with_center, num_neg, negatives_near_object=near)
    prompt = generator(mask, torch.Generator().manual_seed(seed))
    positives = prompt.point_coords[prompt.point_labels == 1]
    negatives = prompt.point_coords[prompt.point_labels == 0]
    assert len(positives) == num_pos + with_center
    assert inside(mask, positives).all()
    if (~mask).any():
        assert len(negatives) == num_neg
    assert in_frame(mask, negatives).all() and not inside(mask, negatives).any()
    box = PromptGenerator(("bbox",)).box(mask, torch.Generator())
    assert torch.equal(box, mask_to_box(mask))


def test_center_point_is_farthest_from_the_boundary():
    mask = torch.zeros(40, 60, dtype=torch.bool)
    mask[5:35, 5:20] = True  # a 30x15 bar
    mask[15:25, 20:55] = True  # a thinner arm: the centre must stay in the thick part
    x, y = center_point(mask).long().tolist()
    distance = ndimage.distance_transform_edt(np.pad(mask.numpy(), 1))[1:-1, 1:-1]
    assert mask[y, x] and distance[y, x] == distance.max()
    assert 5 <= x < 20


def test_negatives_near_the_object_by_default():
    mask = torch.zeros(200, 200, dtype=torch.bool)
    mask[90:110, 90:110] = True
    prompt = PromptGenerator(("point",), 1, num_of_neg_points=20)(mask, torch.Generator().manual_seed(0))
    negatives = prompt.point_coords[prompt.point_labels == 0]
    # band = max(4, a quarter of the 20 px object): every negative within 5 px of the box
    assert ((negatives >= 85) & (negatives <= 114)).all()


def test_empty_mask_gives_empty_prompt_and_seed_determines_prompt():
    generator = PromptGenerator(("point", "bbox", "mask"), (1, 3), True, 2, box_jitter=0.1)
    assert generator(torch.zeros(10, 10, dtype=torch.bool), torch.Generator()).is_empty
    mask = torch.zeros(30, 30, dtype=torch.bool)
    mask[5:20, 8:25] = True
    first = [generator(mask, torch.Generator().manual_seed(s)) for s in range(10)]
    again = [generator(mask, torch.Generator().manual_seed(s)) for s in range(10)]
    for a, b in zip(first, again):
        assert torch.equal(a.point_coords, b.point_coords) and torch.equal(a.point_labels, b.point_labels)
        assert (a.box is None) == (b.box is None) and (a.box is None or torch.equal(a.box, b.box))
    kinds = {("point" if len(p.point_labels) else "bbox" if p.box is not None else "mask") for p in first}
    assert len(kinds) > 1


def test_invalid_prompt_settings_are_rejected():
    with pytest.raises(ValueError, match="prompt_types"):
        PromptGenerator(("clicks",))
    with pytest.raises(ValueError, match="num_of_pos_points"):
        PromptGenerator(num_of_pos_points=(3, 1))


augmentations = st.builds(
    lambda size, flip, rot, shear, low, high, per_frame: ClipTransform(
        size,
        hflip_prob=float(flip),
        affine_prob=1.0,
        rotation_degrees=rot,
        shear_degrees=shear,
        scale_range=(low, max(low, high)),
        affine_per_frame=per_frame,
        brightness=0.2,
        hue=0.1,
        grayscale_prob=0.3,
    ),
    st.integers(12, 64),
    st.booleans(),
    st.floats(0, 45),
    st.floats(0, 30),
    st.floats(0.6, 1.2),
    st.floats(0.6, 1.4),
    st.booleans(),
)


@settings(max_examples=50, deadline=None)
@given(masks(), augmentations, st.integers(1, 3), st.integers(0, 2**31))
def test_explicit_prompts_follow_the_augmented_masks(mask, transform, num_frames, seed):
    """Prompts given on the original frames: after augmentation positives lie on the transformed object,
    negatives off it and in the frame, boxes contain the transformed mask, absent objects lose their prompt."""
    generator = torch.Generator().manual_seed(seed)
    clicks = PromptGenerator(("point",), 3, True, 3)
    clip_masks = mask.expand(num_frames, 1, *mask.shape).clone()
    prompts = []
    for t in range(num_frames):
        prompt = clicks(clip_masks[t, 0], generator)
        prompts.append([ObjectPrompt(prompt.point_coords, prompt.point_labels, box=mask_to_box(clip_masks[t, 0]))])
    images = np.zeros((num_frames, *mask.shape, 3), dtype=np.uint8)
    out_images, out_masks, out_prompts = transform(images, clip_masks, prompts, generator, clicks)
    size = transform.image_size
    assert out_images.shape == (num_frames, 3, size, size) and out_masks.shape == (num_frames, 1, size, size)
    for t in range(num_frames):
        moved, moved_mask = out_prompts[t][0], out_masks[t, 0]
        if not moved_mask.any():
            assert moved is None
            continue
        labels, coords = moved.point_labels, moved.point_coords
        assert (labels == 1).sum() == 4  # 3 random + centre, re-sampled where the geometry lost one
        assert inside(moved_mask, coords[labels == 1]).all()
        negatives = coords[labels == 0]
        assert in_frame(moved_mask, negatives).all() and not inside(moved_mask, negatives).any()
        assert box_contains(moved.box, moved_mask)
        assert (moved.box >= 0).all() and (moved.box <= size - 1).all()


def test_geometry_moves_points_with_the_image():
    """Without re-sampling, an interior click lands on the same texture pixel after flip + resize + affine."""
    image = np.zeros((1, 40, 60, 3), dtype=np.uint8)
    image[0, 10:30, 35:55] = 255  # white block on the right
    mask = torch.from_numpy(image[..., 0] > 0)[:, None]
    prompt = ObjectPrompt(torch.tensor([[45.0, 20.0]]), torch.tensor([1], dtype=torch.int32))
    transform = ClipTransform(32, hflip_prob=1.0, affine_prob=1.0, rotation_degrees=20, mean=(0, 0, 0), std=(1, 1, 1))
    clicks = PromptGenerator()
    clicks.resample_point = lambda *args: pytest.fail("a click in the middle of the block must not need re-sampling")
    images, masks_out, prompts = transform(image, mask, [[prompt]], torch.Generator().manual_seed(3), clicks)
    x, y = prompts[0][0].point_coords[0].round().long().tolist()
    assert x < 16  # the block moved to the left half
    assert masks_out[0, 0, y, x] and images[0, :, y, x].min() > 0.9


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 22), st.integers(0, 40), st.integers(0, 2**31))
def test_interior_clicks_land_on_the_same_image_content(top: int, left: int, seed: int):
    """Points move by the 3x3 geometry, pixels by PIL's warps: a click in the middle of a white block
    that is not re-sampled must land on white, on its mask, for any flip + rotation + shear + scale."""
    from hypothesis import assume

    image = np.zeros((1, 40, 60, 3), dtype=np.uint8)
    image[0, top : top + 18, left : left + 20] = 255
    mask = torch.from_numpy(image[..., 0] > 0)[:, None]
    prompt = ObjectPrompt(torch.tensor([[left + 9.5, top + 8.5]]), torch.tensor([1], dtype=torch.int32))
    transform = ClipTransform(32, hflip_prob=0.5, affine_prob=1.0, rotation_degrees=30, shear_degrees=10,
                              scale_range=(0.8, 1.2), mean=(0, 0, 0), std=(1, 1, 1))
    clicks = PromptGenerator()
    resampled = []
    resample_point = clicks.resample_point
    clicks.resample_point = lambda *args: resampled.append(True) or resample_point(*args)
    images, masks_out, prompts = transform(image, mask, [[prompt]], torch.Generator().manual_seed(seed), clicks)
    assume(not resampled)  # the block's middle left the frame: a new click, checked by the property above
    x, y = prompts[0][0].point_coords[0].round().long().tolist()
    assert masks_out[0, 0, y, x] and images[0, :, y, x].min() > 0.9


def test_colour_jitter_matches_pil_enhancers():
    """The one-matrix jitter equals brightness -> contrast -> saturation applied one after another (up to rounding)."""
    from PIL import Image, ImageEnhance

    from sam2_video.data.transforms import _jitter

    rng = np.random.default_rng(0)
    smooth = rng.uniform(40, 215, size=(6, 8, 3)).astype(np.uint8)
    frame = Image.fromarray(smooth).resize((64, 48), Image.BICUBIC)
    for brightness, contrast, saturation in [(1.1, 0.97, 1.03), (0.8, 1.2, 0.7)]:
        expected = ImageEnhance.Color(ImageEnhance.Contrast(ImageEnhance.Brightness(frame).enhance(brightness)).enhance(contrast)).enhance(saturation)
        difference = np.abs(np.asarray(expected).astype(int) - np.asarray(_jitter(frame, brightness, contrast, saturation)))
        assert difference.mean() < 2.0 and difference.max() <= 16  # PIL clips between steps, the matrix once
