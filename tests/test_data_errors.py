"""Bad input gives one UserInputError that names the file and says what was expected."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from sam2_video.data import (
    COCOVideoDataset,
    ClipTransform,
    SAM2ClipSampler,
    SAVJsonDataset,
    VideoDataset,
    VOSFolderDataset,
    read_sav_annotation,
)
from sam2_video.data.rle import decode_segmentation
from sam2_video.data.synthetic import davis_palette
from sam2_video.errors import UserInputError


def write_frame(path: Path, width: int = 16, height: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 90, dtype=np.uint8)).save(path)


def write_palette_mask(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette(davis_palette().flatten().tolist())
    image.save(path)


def vos_video(root: Path, num_frames: int = 3, mask_every: int = 1, mask_size: tuple[int, int] = (12, 16)) -> Path:
    ids = np.zeros(mask_size, dtype=np.uint8)
    ids[2:6, 3:9] = 1
    for t in range(num_frames):
        write_frame(root / "JPEGImages" / "video" / f"{t:05d}.jpg")
        if t % mask_every == 0:
            write_palette_mask(root / "Annotations" / "video" / f"{t:05d}.png", ids)
    return root


def test_frame_and_mask_of_different_sizes(tmp_path):
    """Found from the file headers when the dataset is built, before any clip loads."""
    with pytest.raises(UserInputError, match=r"Annotations/video/00000\.png: the mask is 20x12 but its frame .*00000\.jpg is 16x12"):
        VOSFolderDataset(vos_video(tmp_path, mask_size=(12, 20)), transform=ClipTransform(16))


def test_mask_names_that_do_not_match_the_frames(tmp_path):
    vos_video(tmp_path)
    write_palette_mask(tmp_path / "Annotations" / "video" / "frame_7.png", np.zeros((12, 16)))
    with pytest.raises(UserInputError, match=r"frame_7\.png: no frame named frame_7\.jpg/\.png .* named like 00000\.jpg"):
        VOSFolderDataset(tmp_path)


def test_rgb_colour_mask(tmp_path):
    vos_video(tmp_path)
    rgb = np.zeros((12, 16, 3), dtype=np.uint8)
    rgb[2:6, 3:9] = (200, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "Annotations" / "video" / "00000.png")
    dataset = VOSFolderDataset(tmp_path, transform=ClipTransform(16))
    with pytest.raises(UserInputError, match=r"00000\.png: RGB colour mask; expected a palettized PNG"):
        dataset[0]


def test_grayscale_binary_and_label_map_masks(tmp_path):
    """{0,255} grayscale is one object (id 1); other gray values are class ids, minus ignore_ids."""
    vos_video(tmp_path)
    binary = np.zeros((12, 16), dtype=np.uint8)
    binary[1:4, 1:4] = 255
    Image.fromarray(binary, mode="L").save(tmp_path / "Annotations" / "video" / "00000.png")
    labels = np.zeros((12, 16), dtype=np.uint8)
    labels[0:3], labels[5:8], labels[9:] = 2, 7, 9
    Image.fromarray(labels, mode="L").save(tmp_path / "Annotations" / "video" / "00001.png")
    dataset = VOSFolderDataset(tmp_path, ignore_ids=[9])
    assert list(dataset.read_objects(0, 0)) == [1] and np.array_equal(dataset.read_objects(0, 0)[1], binary > 0)
    objects = dataset.read_objects(0, 1)
    assert sorted(objects) == [2, 7] and np.array_equal(objects[7], labels == 7)


def test_empty_video_folder(tmp_path):
    vos_video(tmp_path)
    (tmp_path / "JPEGImages" / "empty").mkdir()
    (tmp_path / "Annotations" / "empty").mkdir()
    with pytest.raises(UserInputError, match=r"JPEGImages/empty: empty video folder"):
        VOSFolderDataset(tmp_path)
    (tmp_path / "bare" / "clip").mkdir(parents=True)
    with pytest.raises(UserInputError, match=r"bare/clip: empty video folder"):
        VideoDataset(tmp_path / "bare")


def test_too_few_annotated_frames_without_padding(tmp_path):
    root = vos_video(tmp_path, num_frames=6, mask_every=3)  # frames 0 and 3 annotated
    strict = VOSFolderDataset(root, clip_sampler=SAM2ClipSampler(num_frames=4, allow_padding=False), transform=ClipTransform(16))
    with pytest.raises(UserInputError, match=r"video: only 2 annotated frame\(s\), but clips have 4 frames and padding is disabled"):
        strict[0]
    padded = VOSFolderDataset(root, clip_sampler=SAM2ClipSampler(num_frames=4), transform=ClipTransform(16))[0]
    assert padded.frame_names == ["00000", "00003", "00003", "00003"]
    assert padded.is_padding.tolist() == [False, False, True, True]


def coco_json(tmp_path: Path, segmentation: object, drop: str | None = None) -> Path:
    write_frame(tmp_path / "frames" / "a.jpg")
    image = {"id": 1, "video_id": 7, "order_in_video": 0, "path": "frames/a.jpg", "width": 16, "height": 12}
    if drop:
        del image[drop]
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({"images": [image], "annotations": [{"id": 3, "image_id": 1, "segmentation": segmentation}]}))
    return path


def test_invalid_rle(tmp_path):
    dataset = COCOVideoDataset(coco_json(tmp_path, {"size": [12, 16], "counts": "not an rle"}), transform=ClipTransform(16))
    with pytest.raises(UserInputError, match=r"coco\.json: annotations\[0\] \(id 3, image id 1\): invalid segmentation"):
        dataset[0]
    uncompressed = COCOVideoDataset(coco_json(tmp_path, {"size": [12, 16], "counts": [5, 10]}), transform=ClipTransform(16))
    with pytest.raises(UserInputError, match=r"coco\.json: .*counts sum to 15, not 12x16"):
        uncompressed[0]


@pytest.mark.parametrize("segmentation, message", [
    ({"size": [12, 16], "counts": ""}, "runs add up to .* pixels, not the 12x16 frame"),  # pycocotools decodes junk pixels
    ({"size": [12, 16], "counts": "0"}, "runs add up to .* pixels, not the 12x16 frame"),
    ({"size": [12, 16], "counts": "V148000"}, "runs add up to .* pixels, not the 12x16 frame"),  # a valid string, cut short
    ([[1.0, 1.0, 5.0, 5.0]], "invalid segmentation"),  # a polygon of 2 points
])
def test_rle_that_pycocotools_would_accept_silently(tmp_path, segmentation, message):
    dataset = COCOVideoDataset(coco_json(tmp_path, segmentation), transform=ClipTransform(16))
    with pytest.raises(UserInputError, match=rf"coco\.json: annotations\[0\] \(id 3, image id 1\): .*{message}"):
        dataset[0]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_valid_rle_in_any_form_decodes(height, width, density, seed):
    """Every string pycocotools encodes passes the run-length check, and so do valid runs it would
    not write itself (zero-length runs in the middle or at the end)."""
    mask = np.random.default_rng(seed).random((height, width)) < density
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    decoded = decode_segmentation({"size": [height, width], "counts": rle["counts"].decode()}, height, width, "x")
    np.testing.assert_array_equal(decoded, mask)
    runs, value = [0], False  # column-major runs, starting with background
    for pixel in mask.ravel(order="F"):
        if pixel != value:
            runs.append(0)
            value = pixel
        runs[-1] += 1
    padded = runs[:1] + [0, 0] + runs[1:] + [0]  # the same mask with empty runs inserted
    for counts in (runs, padded):
        decoded = decode_segmentation({"size": [height, width], "counts": counts}, height, width, "x")
        np.testing.assert_array_equal(decoded, mask)


def test_json_missing_required_keys(tmp_path):
    with pytest.raises(UserInputError, match=r"coco\.json: images\[0\] is missing required key\(s\) 'video_id'"):
        COCOVideoDataset(coco_json(tmp_path, [[0, 0, 5, 0, 5, 5]], drop="video_id"))
    sav = tmp_path / "v_manual.json"
    sav.write_text(json.dumps({"video_id": "v", "masklets": []}))
    with pytest.raises(UserInputError, match=r"v_manual\.json: the SA-V annotation is missing required key\(s\) 'masklet'"):
        read_sav_annotation(sav)
    write_frame(tmp_path / "sav_frames" / "v" / "00000.jpg")
    with pytest.raises(UserInputError, match=r"v_manual\.json"):
        SAVJsonDataset(tmp_path / "sav_frames", tmp_path, transform=ClipTransform(16))[0]


def test_coco_polygons_and_uncompressed_rle_decode(tmp_path):
    counts = [16, 4, 8, 4, 160]  # column-major: pixels 16..19 and 28..31 -> column 1 rows 4..7, column 2 rows 4..7
    dataset = COCOVideoDataset(coco_json(tmp_path, {"size": [12, 16], "counts": counts}), transform=ClipTransform(16))
    mask = dataset.read_objects(0, 0)[1]
    expected = np.zeros((12, 16), dtype=bool)
    expected[4:8, 1:3] = True
    assert np.array_equal(mask, expected)
    polygon = COCOVideoDataset(coco_json(tmp_path, [[2, 2, 10, 2, 10, 8, 2, 8]]), transform=ClipTransform(16))
    assert polygon.read_objects(0, 0)[1][5, 6] and not polygon.read_objects(0, 0)[1][10, 14]


def test_frames_of_different_sizes_in_one_video(tmp_path):
    vos_video(tmp_path)
    write_frame(tmp_path / "JPEGImages" / "video" / "00001.jpg", width=20)
    write_palette_mask(tmp_path / "Annotations" / "video" / "00001.png", np.zeros((12, 20)))
    with pytest.raises(UserInputError, match=r"00001\.jpg: the frame is 20x12 but .*00000\.jpg is 16x12"):
        VOSFolderDataset(tmp_path, clip_sampler=SAM2ClipSampler(num_frames=3), transform=ClipTransform(16))
