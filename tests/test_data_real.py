"""The datasets on the real files in ../shared/data (DAVIS 2016, OSVOS palettized predictions, SA-V JSON)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from sam2_video.data import ClipTransform, PromptGenerator, SAM2ClipSampler, SAVJsonDataset, VOSFolderDataset, read_sav_annotation

# object ids per sequence, from davis2017_val_osvos_predictions/SOURCE.md
OSVOS_IDS = {
    "blackswan": {1}, "car-shadow": {1}, "dog": {1}, "drift-straight": {1}, "libby": {1},
    "bmx-trees": {1, 2}, "horsejump-high": {1, 2}, "motocross-jump": {1, 2}, "scooter-black": {1, 2},
    "kite-surf": {1, 2, 3}, "paragliding-launch": {1, 2, 3},
}


def test_davis2016_masks_are_one_object_equal_to_png_above_zero(davis_root):
    dataset = VOSFolderDataset(davis_root, transform=ClipTransform(64))
    assert len(dataset) == 11
    for index in range(len(dataset)):
        video = dataset.video_name(index)
        assert dataset.annotated_frames(index) == list(range(len(dataset.frame_names(index))))
        for frame in dataset.annotated_frames(index)[::10]:
            png = np.asarray(Image.open(davis_root / "Annotations" / video / f"{dataset.frame_names(index)[frame]}.png"))
            objects = dataset.read_objects(index, frame)
            assert list(objects) == [1]
            assert np.array_equal(objects[1], png > 0)


def test_davis2016_clip(davis_root):
    dataset = VOSFolderDataset(
        davis_root,
        clip_sampler=SAM2ClipSampler(num_frames=4),
        transform=ClipTransform.sam2_training(64),
        prompt_generator=PromptGenerator(("point", "bbox"), (1, 2), True, 1),
    )
    clip = dataset[3]
    assert clip.images.shape == (4, 3, 64, 64) and clip.masks.shape == (4, 1, 64, 64)
    assert clip.object_ids.tolist() == [1] and clip.orig_size == (480, 854)
    assert clip.masks[0, 0].any() and clip.prompts[0][0] is not None
    assert not clip.is_padding.any()


@pytest.fixture
def osvos_root(davis_root, shared_data, tmp_path) -> Path:
    """DAVIS layout pointing at the real frames and the OSVOS predictions (symlinks, nothing copied)."""
    predictions = shared_data / "davis2017_val_osvos_predictions"
    if not predictions.is_dir():
        pytest.skip(f"OSVOS predictions not found at {predictions}")
    (tmp_path / "JPEGImages").symlink_to(davis_root / "JPEGImages")
    (tmp_path / "Annotations").symlink_to(predictions)
    return tmp_path


def test_osvos_palettized_predictions_load_with_their_object_ids(osvos_root):
    dataset = VOSFolderDataset(osvos_root, transform=ClipTransform(64))
    assert {dataset.video_name(i) for i in range(len(dataset))} == set(OSVOS_IDS)
    for index in range(len(dataset)):
        seen: set[int] = set()
        for frame in dataset.annotated_frames(index)[::4]:
            path = osvos_root / "Annotations" / dataset.video_name(index) / f"{dataset.frame_names(index)[frame]}.png"
            png = Image.open(path)
            assert png.mode == "P"
            values = np.asarray(png)
            objects = dataset.read_objects(index, frame)
            for object_id, mask in objects.items():
                assert np.array_equal(mask, values == object_id)
            seen |= set(objects)
        assert seen == OSVOS_IDS[dataset.video_name(index)]


@pytest.fixture
def sav_root(shared_data) -> Path:
    root = shared_data / "sav_example_annotations"
    if not root.is_dir():
        pytest.skip(f"SA-V example annotations not found at {root}")
    return root


@pytest.mark.parametrize("kind, num_objects", [("manual", 5), ("auto", 9)])
def test_sav_json_objects_decode_like_pycocotools(sav_root, kind, num_objects):
    annotation = read_sav_annotation(sav_root / f"sav_000001_{kind}.json")
    assert annotation.num_objects == num_objects and len(annotation.masklet) == 121
    assert (annotation.height, annotation.width) == (848, 480)
    visible_frames = np.zeros(num_objects, dtype=int)
    step = 1 if kind == "manual" else 3
    for k in range(0, 121, step):
        objects = annotation.objects(k)
        for position, rle in enumerate(annotation.masklet[k]):
            reference = mask_utils.decode(rle).astype(bool)
            assert np.array_equal(objects[position + 1], reference)
            visible_frames[position] += reference.any()
    if kind == "manual":  # SOURCE.md: visible frames per object
        assert visible_frames.tolist() == [120, 121, 110, 8, 121]


def test_sav_dataset_annotates_every_fourth_frame(sav_root, tmp_path):
    """Frames 0..39 of the video (blank stand-ins, the mp4 is not shipped): annotated frames are 0, 4, ..., 36."""
    frames = tmp_path / "frames" / "sav_000001"
    frames.mkdir(parents=True)
    blank = Image.new("RGB", (480, 848))
    for number in range(40):
        blank.save(frames / f"{number:05d}.jpg", quality=50)
    dataset = SAVJsonDataset(
        tmp_path / "frames", sav_root, "manual", clip_sampler=SAM2ClipSampler(num_frames=3, max_num_objects=5), transform=ClipTransform(32)
    )
    annotated = dataset.annotated_frames(0)
    assert [int(dataset.frame_names(0)[i]) for i in annotated] == list(range(0, 40, 4))
    reference = read_sav_annotation(sav_root / "sav_000001_manual.json")
    for frame in annotated[:3]:
        objects = dataset.read_objects(0, frame)
        expected = reference.masklet[int(dataset.frame_names(0)[frame]) // 4]
        assert len(objects) == 5
        assert dataset.visible_objects(0, frame) == [1, 2, 3, 5]  # masklet 3 first appears at annotated frame 113
        for object_id, mask in objects.items():
            assert np.array_equal(mask, mask_utils.decode(expected[object_id - 1]).astype(bool))
    clip = dataset[0]
    assert clip.object_ids.tolist() == [1, 2, 3, 5]
    assert all(int(name) % 4 == 0 for name in clip.frame_names)
    assert torch.equal(clip.masks.flatten(2).any(-1)[0], torch.ones(4, dtype=torch.bool))
