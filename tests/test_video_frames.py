"""Frames read on demand (`open_video_frames`): the same values as an eager decode in any order,
a bounded cache, prefetching, errors naming the frame, fast opening of long videos."""
from __future__ import annotations

import gc
from fractions import Fraction
import random
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from sam2_video.errors import UserInputError
from sam2_video.predict.frames import load_video_frames
from sam2_video.predict.video_frames import open_video_frames

SIZE = 64
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def expected_input(rgb: Image.Image, size: int = SIZE) -> torch.Tensor:
    """The official video predictor's preprocessing of one frame, written out: [3, S, S]."""
    resized = np.asarray(rgb.convert("RGB").resize((size, size)))
    return (torch.from_numpy(resized / 255.0).permute(2, 0, 1).float() - MEAN) / STD


def moving_frames(num_frames: int, height: int = 48, width: int = 64) -> list[np.ndarray]:
    """RGB uint8 frames of a square moving over a gradient."""
    base = np.zeros((height, width, 3), np.uint8)
    base[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None]
    frames = []
    for t in range(num_frames):
        frame = base.copy()
        y, x = (3 * t) % (height - 12), (5 * t) % (width - 12)
        frame[y:y + 12, x:x + 12] = (255, 60 + t % 190, 10)
        frames.append(frame)
    return frames


def write_mp4(path: Path, frames: list[np.ndarray], irregular: bool = False, faststart: bool = False) -> None:
    """H.264 with B-frames and a keyframe every 24 frames, in the container of the file's suffix;
    `irregular` leaves gaps in the timestamps."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=30, options={"preset": "ultrafast", "bf": "2", "g": "24"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        pts = 0
        for t, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if irregular:
                frame.pts, frame.time_base = pts, Fraction(1, 30)
                pts += 1 + 2 * (t % 3 == 0) + 5 * (t % 17 == 0)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def decode_all(path: Path) -> list[Image.Image]:
    with av.open(str(path)) as container:
        return [frame.to_image() for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def long_mp4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[torch.Tensor]]:
    """300 frames with B-frames and irregular timestamps, and each frame's expected input."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_mp4(path, moving_frames(300), irregular=True)
    return path, [expected_input(image) for image in decode_all(path)]


def test_folder_matches_eager(tmp_path: Path):
    for t, frame in enumerate(moving_frames(6)):
        Image.fromarray(frame).save(tmp_path / f"{t:05d}.{'jpg' if t % 2 else 'png'}")
    with open_video_frames(tmp_path, SIZE) as frames:
        assert (len(frames), frames.height, frames.width) == (6, 48, 64)
        assert frames.names == [f"{t:05d}" for t in range(6)]
        for t in (3, 0, 5, 4, 1, 2):
            assert torch.equal(frames[t], expected_input(Image.open(sorted(tmp_path.iterdir())[t])))
        assert torch.equal(frames[1:4], torch.stack([frames[t] for t in range(1, 4)]))
        eager = load_video_frames(tmp_path, SIZE)
        assert torch.equal(frames[:], eager[0])
        assert (frames.height, frames.width, frames.names) == eager[1:]


def test_real_davis_sequence(davis_root: Path):
    folder = davis_root / "JPEGImages" / "blackswan"
    paths = sorted(folder.glob("*.jpg"))
    with open_video_frames(folder, 256) as frames:
        assert (len(frames), frames.height, frames.width) == (len(paths), 480, 854)
        for t in [*range(len(paths) - 1, len(paths) - 6, -1), 0, 1, 2]:
            assert torch.equal(frames[t], expected_input(Image.open(paths[t]), 256))


def test_mp4_any_order_matches_full_decode(long_mp4: tuple[Path, list[torch.Tensor]]):
    path, expected = long_mp4
    with open_video_frames(path, SIZE, cache_size=16, prefetch=8) as frames:
        assert (len(frames), frames.height, frames.width) == (300, 48, 64)
        assert frames.names[:2] == ["00000", "00001"]
        order = list(range(300)) + list(range(299, -1, -1))
        order += random.Random(0).sample(range(300), 60)
        order += list(range(280, 100, -1))  # reverse from a late frame, after random access
        for t in order:
            assert torch.equal(frames[t], expected[t]), f"frame {t}"
        assert torch.equal(frames[-1], expected[-1])
        assert torch.equal(frames[150:153], torch.stack(expected[150:153]))
        with pytest.raises(IndexError, match="frame 300 is out of range.*has 300 frames"):
            frames[300]


@pytest.mark.parametrize("suffix", [".mkv", ".avi"])
def test_other_containers_any_order(tmp_path: Path, suffix: str):
    """.avi stores no presentation timestamps: with B-frames, frames are numbered as decoded."""
    path = tmp_path / f"clip{suffix}"
    write_mp4(path, moving_frames(100))
    expected = [expected_input(image) for image in decode_all(path)]
    with open_video_frames(path, SIZE, cache_size=16, prefetch=8) as frames:
        assert len(frames) == len(expected) == 100
        for t in [*range(100), *range(99, -1, -1), *random.Random(0).sample(range(100), 20)]:
            assert torch.equal(frames[t], expected[t]), f"frame {t}"


def test_iter_rgb_gives_original_frames(long_mp4: tuple[Path, list[torch.Tensor]]):
    path, _ = long_mp4
    with open_video_frames(path, SIZE) as frames:
        frames[200]  # the iterator reads with its own decoder
        decoded = decode_all(path)
        rgb = list(frames.iter_rgb())
        assert len(rgb) == len(decoded) == 300
        assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(rgb, decoded))


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_cache_bounded_and_prefetch_follows_direction(long_mp4: tuple[Path, list[torch.Tensor]]):
    path, _ = long_mp4
    with open_video_frames(path, SIZE, cache_size=12, prefetch=6) as frames:
        for t in range(40):
            frames[t]
            assert len(frames.cached_indices) <= 12
        # at least half the window ahead (a refill starts once half of it is missing)
        assert wait_for(lambda: set(range(40, 43)) <= set(frames.cached_indices))
        frames[200]
        frames[199]  # now reading backwards
        assert wait_for(lambda: set(range(193, 199)) <= set(frames.cached_indices))
        assert len(frames.cached_indices) <= 12


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "video-frames-prefetch"]


def open_with_its_thread(path: Path):
    """Frames of `path` after a first read, and the one prefetch thread that read started (found by
    identity: a thread of an earlier test may end meanwhile)."""
    before = set(prefetch_threads())
    frames = open_video_frames(path, SIZE)
    frames[0]
    started = set(prefetch_threads()) - before
    assert len(started) == 1
    return frames, started.pop()


def test_threads_stop_on_close_and_when_dropped(long_mp4: tuple[Path, list[torch.Tensor]]):
    path, _ = long_mp4
    frames, thread = open_with_its_thread(path)
    frames.close()
    assert not thread.is_alive()
    frames, thread = open_with_its_thread(path)
    del frames
    gc.collect()
    assert wait_for(lambda: not thread.is_alive())


@pytest.mark.parametrize("prefetch", [0, 4])
def test_corrupt_frame_in_folder_named_when_reached(tmp_path: Path, prefetch: int):
    for t, frame in enumerate(moving_frames(8)):
        Image.fromarray(frame).save(tmp_path / f"{t:05d}.jpg")
    (tmp_path / "00005.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (40, 30)).save(tmp_path / "00007.jpg")
    with open_video_frames(tmp_path, SIZE, prefetch=prefetch) as frames:
        assert len(frames) == 8
        for t in range(5):
            frames[t]
        with pytest.raises(UserInputError, match=r"00005\.jpg: cannot read the image of frame 5"):
            frames[5]
        frames[6]
        with pytest.raises(UserInputError, match=r"00007\.jpg: frame size 40x30 differs from 64x48 .*frame 7"):
            frames[7]


def test_truncated_mp4(tmp_path: Path):
    frames = moving_frames(120)
    for faststart in (False, True):  # index at the end of the file (lost) or at its start
        path = tmp_path / f"faststart_{faststart}.mp4"
        write_mp4(path, frames, faststart=faststart)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
        message = r"frame \d+ is incomplete|lists 120 frames but holds only" if faststart else "cannot open the video"
        with pytest.raises(UserInputError, match=rf"faststart_{faststart}\.mp4: ({message})"):
            open_video_frames(path, SIZE)


def test_long_mp4_opens_fast(tmp_path: Path):
    path = tmp_path / "long.mp4"
    square = moving_frames(1, 32, 32)[0]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"preset": "ultrafast"})
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(square, format="rgb24")
        for _ in range(2000):
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    start = time.perf_counter()
    with open_video_frames(path, SIZE) as frames:
        seconds = time.perf_counter() - start
        assert len(frames) == 2000
        last = frames[1999]
    assert seconds < 2.0, f"opening 2000 frames took {seconds:.2f} s"
    assert torch.equal(last, expected_input(decode_all(path)[-1]))
