"""`sam2-video predict`: prompts, per-frame id PNGs, overlay video, errors; mask PNG I/O."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from sam2_video.errors import UserInputError
from sam2_video.predict import cli as predict_cli
from sam2_video.predict.frames import list_frame_files
from sam2_video.predict.masks_io import davis_palette, read_mask_png, write_overlay_video, write_palette_png

HEIGHT, WIDTH = 48, 64


def run_predict(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    predict_cli.add_arguments(parser)
    return predict_cli.run(parser.parse_args(argv))


def write_frames(folder: Path, num_frames: int, size=(HEIGHT, WIDTH), ext="jpg") -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(num_frames):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{t:05d}.{ext}")
    return folder


def square(top: int, left: int, size: int, shape=(HEIGHT, WIDTH)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


class FakePredictor:
    """Stands in for SAM2: every object keeps the mask of its latest prompt on every frame it yields
    (logit = obj_id inside, -1 outside), including frames before that prompt, as SAM2 would output
    something there too. Records the calls so tests can check what the CLI asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def init_state(self, video_path: str) -> dict:
        frames = list_frame_files(video_path)
        width, height = Image.open(frames[0]).size
        return {"num_frames": len(frames), "video_height": height, "video_width": width, "masks": {}}

    def reset_state(self, state: dict) -> None:
        self.calls.append(("reset",))
        state["masks"].clear()

    def add_new_mask(self, state, frame_idx, obj_id, mask):
        self.calls.append(("mask", frame_idx, obj_id))
        state["masks"][obj_id] = np.asarray(mask, dtype=bool)

    def add_new_points_or_box(self, state, frame_idx, obj_id, points=None, labels=None,
                              clear_old_points=True, normalize_coords=True, box=None):
        self.calls.append(("clicks", frame_idx, obj_id, clear_old_points))
        mask = np.zeros((state["video_height"], state["video_width"]), dtype=bool)
        if not clear_old_points:
            mask |= state["masks"][obj_id]
        if box is not None:
            x0, y0, x1, y1 = (int(v) for v in box)
            mask[y0 : y1 + 1, x0 : x1 + 1] = True
        for (x, y), label in zip(points if points is not None else [], labels if labels is not None else []):
            mask[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3] = bool(label)
        state["masks"][obj_id] = mask

    def propagate_in_video(self, state, start_frame_idx=None):
        self.calls.append(("propagate", start_frame_idx))
        obj_ids = list(state["masks"])
        logits = torch.stack([torch.where(torch.from_numpy(state["masks"][i]), float(i), -1.0) for i in obj_ids])
        for frame_idx in range(start_frame_idx, state["num_frames"]):
            yield frame_idx, obj_ids, logits[:, None]


@pytest.fixture
def fake_predictor(monkeypatch) -> FakePredictor:
    predictor = FakePredictor()
    monkeypatch.setattr(predict_cli, "build_predictor", lambda args: predictor)
    return predictor


# ---- mask PNG I/O ----

def test_palette_png_round_trip_and_davis_palette(tmp_path: Path):
    ids = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    ids[square(5, 5, 10)] = 1
    ids[square(20, 30, 12)] = 7
    ids[0, :] = 255
    write_palette_png(tmp_path / "m.png", ids)
    with Image.open(tmp_path / "m.png") as image:
        assert image.mode == "P"
        palette = np.array(image.getpalette()).reshape(-1, 3)
    np.testing.assert_array_equal(read_mask_png(tmp_path / "m.png"), ids)
    # PASCAL VOC colour map: 1 dark red, 2 green, 3 olive, 255 light gray (davis2017 results use it)
    assert palette[[0, 1, 2, 3, 255]].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [224, 224, 192]]
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]


def test_palette_matches_official_davis_results(shared_data: Path):
    folder = shared_data / "davis2017_val_osvos_predictions" / "bmx-trees"
    if not folder.is_dir():
        pytest.skip(f"OSVOS predictions not found at {folder}")
    with Image.open(folder / "00000.png") as image:
        assert image.getpalette() == davis_palette()
        ids = np.array(image)
    np.testing.assert_array_equal(read_mask_png(folder / "00000.png"), ids)
    assert set(np.unique(ids)) == {0, 1, 2}


def test_grayscale_mask_is_object_one_and_rgb_colour_mask_is_refused(tmp_path: Path):
    gray = np.where(square(5, 5, 10), 255, 0).astype(np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_mask_png(tmp_path / "gray.png"), square(5, 5, 10).astype(np.int64))
    labels = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    labels[square(5, 5, 10)] = 3
    Image.fromarray(labels, mode="L").save(tmp_path / "labels.png")
    assert set(np.unique(read_mask_png(tmp_path / "labels.png"))) == {0, 3}
    rgb = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    rgb[square(5, 5, 10)] = (128, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with pytest.raises(UserInputError, match=r"rgb\.png: an RGB colour mask"):
        read_mask_png(tmp_path / "rgb.png")


def test_overlay_video_decodes_with_blended_colours(tmp_path: Path):
    frames = [np.full((HEIGHT + 1, WIDTH + 1, 3), 200, dtype=np.uint8) for _ in range(5)]  # odd size
    masks = [np.where(square(10, 10, 20, (HEIGHT + 1, WIDTH + 1)), 2, 0) for _ in range(5)]
    write_overlay_video(zip(frames, masks, strict=True), tmp_path / "overlay.mp4", fps=10)
    with av.open(str(tmp_path / "overlay.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 5 and decoded[0].shape == (HEIGHT, WIDTH, 3)
    inside, outside = decoded[2][20, 20].astype(int), decoded[2][40, 50].astype(int)
    assert np.abs(inside - [100, 164, 100]).max() < 12  # 0.5 * 200 + 0.5 * (0, 128, 0)
    assert np.abs(outside - 200).max() < 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.mp4"]


# ---- prompts and tracking (fake predictor) ----

def test_annotations_prompt_each_object_on_its_first_frame(tmp_path: Path, fake_predictor: FakePredictor, capsys):
    video = write_frames(tmp_path / "frames", 6)
    annotations = tmp_path / "ann"
    first = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    first[square(5, 5, 20)] = 1
    write_palette_png(annotations / "00000.png", first)
    later = first.copy()
    later[square(15, 15, 20)] = 2  # object 2 appears on frame 3, overlapping object 1
    write_palette_png(annotations / "00003.png", later)
    write_palette_png(annotations / "00004.png", later)  # object 2 again: not a new prompt
    out = tmp_path / "out"
    assert run_predict(["--video", str(video), "--out", str(out), "--annotations", str(annotations)]) == 0

    assert [c for c in fake_predictor.calls if c[0] != "reset"] == [
        ("mask", 0, 1), ("propagate", 0), ("mask", 3, 2), ("propagate", 3)
    ]
    assert "9/9" in capsys.readouterr().err  # the progress bar counts both passes: 6 + 3 frames
    assert sorted(p.name for p in out.iterdir()) == [f"{t:05d}.png" for t in range(6)]
    for t in range(6):
        ids = read_mask_png(out / f"{t:05d}.png")
        expected = np.zeros((HEIGHT, WIDTH), dtype=np.int64)
        expected[square(5, 5, 20)] = 1
        if t >= 3:  # before its first annotation object 2 is not written, although the fake predicts it
            expected[square(15, 15, 20)] = 2  # higher logit (2 > 1) wins the overlap
        np.testing.assert_array_equal(ids, expected, err_msg=f"frame {t}")


def test_clicks_json_and_existing_outputs_are_kept(tmp_path: Path, fake_predictor: FakePredictor):
    video = write_frames(tmp_path / "frames", 3, ext="png")
    prompts = tmp_path / "clicks.json"
    prompts.write_text(json.dumps([
        {"frame": 0, "obj_id": 4, "points": [[10, 12]], "labels": [1]},
        {"frame": 0, "obj_id": 4, "points": [[30, 12]], "labels": [1]},
        {"frame": 1, "obj_id": 9, "box": [40, 20, 50, 30]},
    ]))
    out = tmp_path / "out"
    out.mkdir()
    keep = out / "00001.png"
    keep.write_bytes(b"user data")
    argv = ["--video", str(video), "--out", str(out), "--prompts", str(prompts)]
    with pytest.raises(UserInputError, match=r"already exist, e\.g\. .*00001\.png.*--overwrite"):
        run_predict(argv)
    assert keep.read_bytes() == b"user data" and sorted(p.name for p in out.iterdir()) == ["00001.png"]

    assert run_predict(argv + ["--overwrite"]) == 0
    assert ("clicks", 0, 4, True) in fake_predictor.calls and ("clicks", 0, 4, False) in fake_predictor.calls
    ids = [read_mask_png(out / f"{t:05d}.png") for t in range(3)]
    assert set(np.unique(ids[0])) == {0, 4}  # object 9 starts on frame 1
    assert set(np.unique(ids[2])) == {0, 4, 9}
    assert ids[2][25, 45] == 9 and ids[2][12, 10] == 4


@pytest.mark.parametrize(
    "prompt, message",
    [
        ({"frame": 0, "obj_id": "1", "box": [1, 1, 5, 5]}, r"prompt #0: obj_id must be an int, got '1'"),
        ({"frame": 0, "obj_id": 1.0, "box": [1, 1, 5, 5]}, r"obj_id must be an int, got 1\.0"),
        ({"frame": 7, "obj_id": 1, "box": [1, 1, 5, 5]}, r"frame 7 is beyond the video .* 3 frames \(0\.\.2\)"),
        ({"frame": 0, "obj_id": 1, "points": [[1, 2]], "labels": [1, 0]}, r"one 0 \(background\) or 1"),
        ({"frame": 0, "obj_id": 1, "points": [[1, 2]]}, r"points and labels must be given together"),
        ({"frame": 0, "obj_id": 300, "box": [1, 1, 5, 5]}, r"obj_id must be 1\.\.254"),
    ],
)
def test_bad_click_prompts(tmp_path: Path, fake_predictor: FakePredictor, prompt: dict, message: str):
    video = write_frames(tmp_path / "frames", 3)
    prompts = tmp_path / "clicks.json"
    prompts.write_text(json.dumps([prompt]))
    with pytest.raises(UserInputError, match=message):
        run_predict(["--video", str(video), "--out", str(tmp_path / "out"), "--prompts", str(prompts)])
    assert not (tmp_path / "out").exists()


def test_stcn_refuses_clicks(tmp_path: Path):
    with pytest.raises(UserInputError, match="masks only"):
        run_predict(["--video", str(tmp_path / "frames"), "--out", str(tmp_path / "out"), "--model", "stcn",
                     "--prompts", str(tmp_path / "clicks.json")])


def test_mask_or_annotation_of_another_size_is_refused(tmp_path: Path, fake_predictor: FakePredictor):
    video = write_frames(tmp_path / "frames", 3)
    wrong = np.zeros((HEIGHT + 2, WIDTH), dtype=np.uint8)
    wrong[5:10, 5:10] = 1
    write_palette_png(tmp_path / "first.png", wrong)
    with pytest.raises(UserInputError, match=r"first\.png is 64x50 but frame 00000 of .* is 64x48"):
        run_predict(["--video", str(video), "--out", str(tmp_path / "out"), "--mask", str(tmp_path / "first.png")])
    good = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    good[5:10, 5:10] = 1
    write_palette_png(tmp_path / "ann" / "00000.png", good)
    write_palette_png(tmp_path / "ann" / "00002.png", wrong)
    with pytest.raises(UserInputError, match=r"annotation .*00002\.png is 64x50 but frame 00002"):
        run_predict(["--video", str(video), "--out", str(tmp_path / "out"), "--annotations", str(tmp_path / "ann")])
    assert not (tmp_path / "out").exists()


# ---- end to end with the real SAM2 video predictor (tiny random-weight preset) ----

def test_predict_end_to_end_with_tiny_sam2(tmp_path: Path):
    pytest.importorskip("sam2_video.predict.video_predictor", reason="SAM2 video predictor not in this checkout")
    video_frames = [np.full((HEIGHT, WIDTH, 3), 90, dtype=np.uint8) for _ in range(4)]
    video = tmp_path / "clip.mp4"
    write_overlay_video(zip(video_frames, [np.zeros((HEIGHT, WIDTH), dtype=np.uint8)] * 4), video, fps=12)
    first = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    first[square(8, 8, 16)] = 1
    first[square(20, 36, 12)] = 2
    write_palette_png(tmp_path / "first.png", first)
    out, overlay = tmp_path / "out", tmp_path / "overlay.mp4"
    argv = ["--video", str(video), "--out", str(out), "--mask", str(tmp_path / "first.png"),
            "--config", "sam2.1_tiny_test", "--image-size", "64", "--overlay", str(overlay)]
    assert run_predict(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{t:05d}.png" for t in range(4)]
    for t in range(4):
        with Image.open(out / f"{t:05d}.png") as image:
            assert image.mode == "P" and image.size == (WIDTH, HEIGHT)
        assert set(np.unique(read_mask_png(out / f"{t:05d}.png"))) <= {0, 1, 2}
    with av.open(str(overlay)) as container:
        assert container.streams.video[0].average_rate == 12
        assert sum(1 for _ in container.decode(video=0)) == 4


def test_bfloat16_on_a_cpu_without_bf16_units_warns(tmp_path: Path, capsys):
    """On a CPU that emulates bf16 (this project's AVX2 CPU: 5x slower tracking) `--dtype bfloat16`
    says so and names float32; the run still completes."""
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has bfloat16 units: no warning is due")
    video = tmp_path / "frames"
    write_frames(video, 2)
    first = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    first[square(8, 8, 16)] = 1
    write_palette_png(tmp_path / "first.png", first)
    argv = ["--video", str(video), "--out", str(tmp_path / "out"), "--mask", str(tmp_path / "first.png"),
            "--config", "sam2.1_tiny_test", "--image-size", "64", "--dtype", "bfloat16"]
    assert run_predict(argv) == 0
    assert "--dtype bfloat16 on this CPU" in capsys.readouterr().err
    assert len(list((tmp_path / "out").iterdir())) == 2


def test_video_errors_from_the_real_predictor(tmp_path: Path):
    pytest.importorskip("sam2_video.predict.video_predictor", reason="SAM2 video predictor not in this checkout")
    first = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    first[square(8, 8, 16)] = 1
    write_palette_png(tmp_path / "first.png", first)

    def predict(video: Path) -> int:
        return run_predict(["--video", str(video), "--out", str(tmp_path / "out"), "--mask", str(tmp_path / "first.png"),
                            "--config", "sam2.1_tiny_test", "--image-size", "64"])

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="no frames"):
        predict(tmp_path / "empty")
    mixed = write_frames(tmp_path / "mixed", 2)
    Image.new("RGB", (WIDTH + 4, HEIGHT)).save(mixed / "00002.jpg")
    # frames are read as tracking reaches them: the masks before the bad frame are written, whole
    with pytest.raises(UserInputError, match=r"00002.jpg: frame size 68x48 differs.*; 2 of 3 masks were written"):
        predict(mixed)
    assert [read_mask_png(p).shape for p in sorted((tmp_path / "out").iterdir())] == [(HEIGHT, WIDTH)] * 2
    shutil.rmtree(tmp_path / "out")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    with pytest.raises(UserInputError, match=r"broken\.mp4: cannot open the video"):
        predict(tmp_path / "broken.mp4")
    assert not (tmp_path / "out").exists()


def test_annotations_with_the_real_predictor_write_each_prompt_mask_on_its_frame(tmp_path: Path):
    """SAM2 outputs a given mask as it is on its own frame (use_mask_input_as_output_without_sam), so
    with random weights the prompted frames still show where each object starts."""
    video = write_frames(tmp_path / "frames", 5)
    first = np.where(square(8, 8, 16), 1, 0).astype(np.uint8)
    later = np.where(square(20, 36, 12), 3, first).astype(np.uint8)  # object 3 appears on frame 2
    annotations = tmp_path / "ann"
    for name, ids in (("00000", first), ("00002", later)):
        write_palette_png(annotations / f"{name}.png", ids)
    out = tmp_path / "out"
    argv = ["--video", str(video), "--out", str(out), "--annotations", str(annotations),
            "--config", "sam2.1_tiny_test", "--image-size", "64"]
    assert run_predict(argv) == 0
    predicted = [read_mask_png(out / f"{t:05d}.png") for t in range(5)]

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        return float((a & b).sum() / (a | b).sum())

    # the mask passes through the model's 16x16 low-resolution output, which rounds its corners
    assert iou(predicted[0] == 1, first == 1) > 0.85
    assert not (predicted[0] == 3).any() and not (predicted[1] == 3).any()
    assert iou(predicted[2] == 3, later == 3) > 0.85
