"""`sam2-video predict` streams: masks written as frames are tracked, the overlay encoded on the fly, frames
read on demand, live sources through `track_stream`, and Ctrl-C or a bad frame leaves only complete files."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from sam2_video.cli import main
from sam2_video.predict.masks_io import read_mask_png, write_palette_png

HEIGHT, WIDTH = 48, 64
TINY = ["--config", "sam2.1_tiny_test", "--image-size", "64"]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def moving_square_frames(num_frames: int) -> list[np.ndarray]:
    frames = []
    for t in range(num_frames):
        frame = np.full((HEIGHT, WIDTH, 3), 40, dtype=np.uint8)
        left = 4 + t % 30
        frame[12:28, left : left + 16] = (220, 60, 60)
        frames.append(frame)
    return frames


def write_mp4(path: Path, frames: list[np.ndarray]) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def clip(tmp_path: Path) -> dict[str, Path]:
    frames = moving_square_frames(6)
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[12:28, 4:20] = 1
    write_palette_png(tmp_path / "first.png", mask)
    return {"mp4": write_mp4(tmp_path / "clip.mp4", frames), "mask": tmp_path / "first.png"}


def test_video_file_masks_and_overlay_come_out_frame_by_frame(clip: dict[str, Path], tmp_path: Path, capsys):
    out, overlay = tmp_path / "out", tmp_path / "overlay.mp4"
    argv = ["predict", "--video", str(clip["mp4"]), "--mask", str(clip["mask"]), "--out", str(out),
            "--overlay", str(overlay), *TINY]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{t:05d}.png" for t in range(6)]
    # the prompted frame shows the given mask, through the model's low-resolution output
    assert iou(read_mask_png(out / "00000.png") == 1, read_mask_png(clip["mask"]) == 1) > 0.85
    with av.open(str(overlay)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6
    assert "wrote 6 masks" in capsys.readouterr().out


def test_a_live_source_is_tracked_as_it_streams(clip: dict[str, Path], tmp_path: Path):
    """A URL goes through `track_stream` (here FFmpeg's file:// protocol stands in for rtsp://)."""
    out, overlay = tmp_path / "live", tmp_path / "live.mp4"
    argv = ["predict", "--video", f"file://{clip['mp4']}", "--mask", str(clip["mask"]), "--out", str(out),
            "--overlay", str(overlay), *TINY]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{t:05d}.png" for t in range(6)]
    assert main(["predict", "--video", str(clip["mp4"]), "--mask", str(clip["mask"]), "--out",
                 str(tmp_path / "file"), *TINY]) == 0
    # the prompted frame reads no memory, so the stream and the file give the same mask there
    np.testing.assert_array_equal(read_mask_png(out / "00000.png"), read_mask_png(tmp_path / "file" / "00000.png"))
    with av.open(str(overlay)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6


def test_a_live_source_that_cannot_be_opened_is_named(clip: dict[str, Path], tmp_path: Path, capsys):
    url = "rtsp://127.0.0.1:9/nothing-here"
    argv = ["predict", "--video", url, "--mask", str(clip["mask"]), "--out", str(tmp_path / "o"), *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--video {url}: cannot open the stream" in err and "Traceback" not in err


def test_ctrl_c_leaves_only_complete_masks(tmp_path: Path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(moving_square_frames(400)):
        Image.fromarray(frame).save(folder / f"{t:05d}.jpg")
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[12:28, 4:20] = 1
    write_palette_png(tmp_path / "first.png", mask)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "sam2_video.cli", "predict", "--video", str(folder), "--mask",
               str(tmp_path / "first.png"), "--out", str(out), *TINY]
    # an ignored SIGINT is inherited across exec, and earlier tests in the session (servers) may ignore
    # it in this process: give the child the default disposition, as a shell would
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("*.png"))) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    written = sorted(out.iterdir())
    assert 3 <= len(written) < 400
    assert all(p.suffix == ".png" and not p.name.startswith(".") for p in written)  # no partial temp file
    for path in written:
        assert read_mask_png(path).shape == (HEIGHT, WIDTH)
