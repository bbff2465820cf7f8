"""Frame loading (bit-exact with the official video predictor), video files, errors, hole filling."""
from __future__ import annotations

from collections import deque
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require_reference
from sam2_video.errors import UserInputError
from sam2_video.predict.frames import list_frame_files, load_video_frames, preprocess_image
from sam2_video.predict.postprocess import fill_holes_in_mask_scores, remove_small_regions

NUM_FRAMES = 3


@pytest.fixture
def davis_frames(davis_root: Path, tmp_path: Path) -> Path:
    """A folder linking the first DAVIS frames of one video."""
    source = sorted((davis_root / "JPEGImages" / "blackswan").glob("*.jpg"))[:NUM_FRAMES]
    folder = tmp_path / "frames"
    folder.mkdir()
    for path in source:
        (folder / path.name).symlink_to(path)
    return folder


@pytest.mark.parametrize("image_size", [256, 1024])
def test_frames_bit_exact_with_official(davis_frames: Path, image_size: int):
    require_reference()
    from sam2.utils.misc import load_video_frames as ref_load_video_frames

    expected, ref_height, ref_width = ref_load_video_frames(
        str(davis_frames), image_size, offload_video_to_cpu=True, compute_device=torch.device("cpu"))
    images, height, width, names = load_video_frames(davis_frames, image_size)
    assert (height, width) == (ref_height, ref_width) == (480, 854)
    assert names == [p.stem for p in sorted(davis_frames.iterdir())]
    assert images.dtype == torch.float32
    assert torch.equal(images, expected)


def test_frame_order_numeric_then_lexicographic(tmp_path: Path):
    for name in ["10.jpg", "9.png", "100.jpeg"]:
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a frame")
    assert [p.name for p in list_frame_files(tmp_path)] == ["9.png", "10.jpg", "100.jpeg"]
    Image.new("RGB", (8, 8)).save(tmp_path / "frame_b.jpg")
    assert [p.name for p in list_frame_files(tmp_path)] == ["10.jpg", "100.jpeg", "9.png", "frame_b.jpg"]


def test_lossless_video_file_equals_its_frames(tmp_path: Path):
    """A .mov with lossless PNG frames loads exactly like the folder of the same frames."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 80, 3), dtype=np.uint8) for _ in range(4)]
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:05d}.png")
    video = tmp_path / "clip.mov"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("png", rate=10)
        stream.width, stream.height, stream.pix_fmt = 80, 48, "rgb24"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())

    from_video = load_video_frames(video, 64)
    from_folder = load_video_frames(folder, 64)
    assert from_video[1:3] == (48, 80)
    assert from_video[3] == from_folder[3] == [f"{i:05d}" for i in range(4)]
    assert torch.equal(from_video[0], from_folder[0])


def test_preprocess_image_normalises_like_official():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    expected = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(preprocess_image(image, 32)[0], expected, atol=1e-6, rtol=0)
    assert preprocess_image(image, 64).shape == (1, 3, 64, 64)
    with pytest.raises(UserInputError, match=r"RGB uint8 image"):
        preprocess_image(image[..., 0], 64)


def test_missing_path(tmp_path: Path):
    with pytest.raises(UserInputError, match=r"nowhere.*video not found"):
        load_video_frames(tmp_path / "nowhere", 64)


def test_folder_without_frames(tmp_path: Path):
    (tmp_path / "readme.txt").write_text("no frames here")
    with pytest.raises(UserInputError, match=r"no frames found"):
        load_video_frames(tmp_path, 64)


def test_frames_of_different_sizes(tmp_path: Path):
    Image.new("RGB", (40, 30)).save(tmp_path / "00000.jpg")
    Image.new("RGB", (40, 30)).save(tmp_path / "00001.jpg")
    Image.new("RGB", (50, 30)).save(tmp_path / "00002.jpg")
    with pytest.raises(UserInputError, match=r"00002\.jpg: frame size 50x30 differs from 40x30 of 00000\.jpg"):
        load_video_frames(tmp_path, 64)


def test_unreadable_image(tmp_path: Path):
    Image.new("RGB", (40, 30)).save(tmp_path / "00000.jpg")
    (tmp_path / "00001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserInputError, match=r"00001\.jpg: cannot read the image"):
        load_video_frames(tmp_path, 64)


def test_undecodable_video(tmp_path: Path):
    video = tmp_path / "broken.mp4"
    video.write_bytes(b"\x00" * 1000)
    with pytest.raises(UserInputError, match=r"broken\.mp4: cannot open the video"):
        load_video_frames(video, 64)


def test_unsupported_file(tmp_path: Path):
    path = tmp_path / "clip.gif"
    path.write_bytes(b"GIF89a")
    with pytest.raises(UserInputError, match=r"clip\.gif: not a video"):
        load_video_frames(path, 64)


def _component_areas(binary: np.ndarray) -> np.ndarray:
    """Area of each pixel's 8-connected component (0 off the mask), by breadth-first flood fill."""
    height, width = binary.shape
    areas = np.zeros(binary.shape, dtype=np.int64)
    seen = np.zeros(binary.shape, dtype=bool)
    for start in zip(*np.nonzero(binary)):
        if seen[start]:
            continue
        seen[start] = True
        queue, component = deque([start]), []
        while queue:
            y, x = queue.popleft()
            component.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < height and 0 <= nx < width and binary[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        for pixel in component:
            areas[pixel] = len(component)
    return areas


def _random_blobs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Logits in blobs of several sizes: a smoothed random field, thresholded near 0."""
    noise = rng.standard_normal(shape)
    kernel = np.ones(3) / 3
    for axis in (-1, -2):
        noise = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), axis, noise)
    return (noise + 0.1 * rng.standard_normal(shape)).astype(np.float32)


@pytest.mark.parametrize("max_area", [1, 8, 30])
def test_fill_holes_matches_flood_fill(max_area: int):
    rng = np.random.default_rng(max_area)
    logits = _random_blobs(rng, (3, 1, 40, 36))
    expected = logits.copy()
    for n in range(logits.shape[0]):
        areas = _component_areas(logits[n, 0] <= 0)
        expected[n, 0][(areas > 0) & (areas <= max_area)] = 0.1
    assert (expected != logits).any(), "the random masks should contain holes to fill"
    actual = fill_holes_in_mask_scores(torch.from_numpy(logits), max_area)
    assert torch.equal(actual, torch.from_numpy(expected))


def test_remove_small_regions_matches_flood_fill():
    rng = np.random.default_rng(7)
    logits = _random_blobs(rng, (2, 2, 32, 32))
    threshold, max_hole, max_sprinkle = 0.05, 6, 10
    expected = logits.copy()
    for b in range(2):
        for c in range(2):
            plane = expected[b, c]
            hole_areas = _component_areas(plane <= threshold)
            plane[(hole_areas > 0) & (hole_areas <= max_hole)] = threshold + 10.0
            sprinkle_areas = _component_areas(plane > threshold)
            plane[(sprinkle_areas > 0) & (sprinkle_areas <= max_sprinkle)] = threshold - 10.0
    actual = remove_small_regions(torch.from_numpy(logits), threshold, max_hole, max_sprinkle)
    assert torch.equal(actual, torch.from_numpy(expected))
    assert torch.equal(remove_small_regions(torch.from_numpy(logits), threshold), torch.from_numpy(logits))
