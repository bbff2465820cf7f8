"""Synthetic videos: DAVIS layout on disk, determinism, motion that defeats copying the first mask."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sam2_video.data import ClipTransform, SAM2ClipSampler, SyntheticVideoDataset, VideoDataset, VOSFolderDataset, render_video, synthesize
from sam2_video.data.synthetic import davis_palette
from sam2_video.errors import UserInputError


def test_synthesize_writes_the_davis_layout_read_back_exactly(tmp_path, shared_data):
    out = synthesize(tmp_path / "syn", num_videos=2, num_frames=6, image_size=(48, 64), seed=5)
    video = out / "JPEGImages" / "synthetic_0001"
    assert sorted(p.name for p in video.iterdir()) == [f"{t:05d}.jpg" for t in range(6)]
    mask = Image.open(out / "Annotations" / "synthetic_0001" / "00003.png")
    assert mask.mode == "P" and mask.size == (64, 48)
    osvos = Image.open(shared_data / "davis2017_val_osvos_predictions" / "blackswan" / "00000.png")
    assert np.array_equal(np.array(mask.getpalette()[:768]), np.array(osvos.getpalette()[:768]))  # the DAVIS palette
    frames, ids = render_video(np.random.SeedSequence([5, 1]), 6, (48, 64))
    assert np.array_equal(np.asarray(mask), ids[3])
    jpeg = np.asarray(Image.open(video / "00003.jpg")).astype(int)
    assert np.abs(jpeg - frames[3]).mean() < 6  # JPEG quality 95
    dataset = VOSFolderDataset(out, transform=ClipTransform(32))
    objects = dataset.read_objects(1, 3)
    assert sorted(objects) == sorted(set(np.unique(ids[3])) - {0})
    with pytest.raises(UserInputError, match=r"synthetic_0000 already exists"):
        synthesize(out, num_videos=1)


def test_davis_palette_starts_like_davis():
    palette = davis_palette()
    assert palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]


def test_rendering_is_a_function_of_the_seed():
    a = render_video(np.random.SeedSequence([0, 3]), 8, 32)
    b = render_video(np.random.SeedSequence([0, 3]), 8, 32)
    c = render_video(np.random.SeedSequence([1, 3]), 8, 32)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_objects_move_enter_and_leave():
    """Over 30 videos of 12 frames at 96 px: copying frame 0's mask scores a low IoU, and objects enter and leave."""
    ious, entering, leaving = [], 0, 0
    for index in range(30):
        _, ids = render_video(np.random.SeedSequence([0, index]), 12, 96)
        for object_id in range(1, int(ids.max()) + 1):
            visible = (ids == object_id).reshape(12, -1).any(-1)
            entering += not visible[0] and visible.any()
            leaving += visible[0] and not visible[-1]
            if visible[0]:
                first = ids[0] == object_id
                for t in range(1, 8):
                    now = ids[t] == object_id
                    ious.append((first & now).sum() / max(1, (first | now).sum()))
    assert np.mean(ious) < 0.5
    assert entering >= 2 and leaving >= 2


def test_objects_stand_out_from_the_background():
    """Objects are saturated, backgrounds muted: a colour threshold separates them (the task is learnable)."""
    frames, ids = render_video(np.random.SeedSequence([0, 0]), 4, 64)
    rgb = frames.astype(float) / 255
    saturation = rgb.max(-1) - rgb.min(-1)
    assert saturation[ids > 0].mean() > saturation[ids == 0].mean() + 0.3


def test_synthetic_dataset_clip():
    dataset = SyntheticVideoDataset(3, num_frames=10, image_size=48, clip_sampler=SAM2ClipSampler(num_frames=6))
    torch.manual_seed(0)
    clip = dataset[1]
    assert clip.images.shape == (6, 3, 48, 48) and clip.masks.shape[:2] == (6, len(clip.object_ids))
    assert clip.masks[0].flatten(1).any(-1).all()
    assert all(p is not None and len(p.point_labels) == 1 for p in clip.prompts[0])
    assert all(p is None for row in clip.prompts[1:] for p in row)
    torch.manual_seed(0)
    again = dataset[1]
    assert torch.equal(clip.images, again.images) and torch.equal(clip.masks, again.masks)


def test_video_dataset_composites_known_objects_over_real_frames(davis_root):
    dataset = VideoDataset(davis_root / "JPEGImages", clip_sampler=SAM2ClipSampler(num_frames=3), transform=ClipTransform(64, mean=(0, 0, 0), std=(1, 1, 1)))
    clip = dataset[0]
    assert clip.images.shape == (3, 3, 64, 64) and len(clip.object_ids) >= 1
    assert clip.masks[0].flatten(1).any(-1).all()
    frame = np.asarray(Image.open(davis_root / "JPEGImages" / "blackswan" / f"{clip.frame_names[0]}.jpg").resize((64, 64), Image.BILINEAR)) / 255
    background = ~clip.masks[0].any(0)
    difference = np.abs(clip.images[0].permute(1, 2, 0).numpy() - frame)
    assert difference[background.numpy()].mean() < 0.02  # the real frame shows where no object is
    assert difference[clip.masks[0, 0].numpy()].mean() > 0.05  # the object covers it
