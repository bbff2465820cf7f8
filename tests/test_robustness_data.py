"""Issue 14, data and config cases (5, 6, 16, 20): each bad input gives one message naming the culprit,
and the command line exits with status 2 without a traceback."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam2_video.cli import main
from sam2_video.data import COCOVideoDataset, ClipTransform, SAM2ClipSampler, SAVJsonDataset, VideoDataset, VOSFolderDataset
from sam2_video.data import file_check
from sam2_video.data.synthetic import davis_palette
from sam2_video.errors import UserInputError

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = 32


def write_frame(path: Path, height: int = SIZE, width: int = SIZE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(len(str(path))).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def write_palette_mask(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette(davis_palette().flatten().tolist())
    image.save(path)


def vos_folder(root: Path, videos: dict[str, list[int]], num_frames: int = 6, label: int = 1) -> Path:
    """DAVIS layout: `videos` maps each video name to its annotated frame indices; masks hold `label`."""
    ids = np.zeros((SIZE, SIZE), dtype=np.uint8)
    ids[8:20, 10:24] = label
    for video, annotated in videos.items():
        for t in range(num_frames):
            write_frame(root / "JPEGImages" / video / f"{t:05d}.jpg")
            if t in annotated:
                write_palette_mask(root / "Annotations" / video / f"{t:05d}.png", ids)
    return root


def train_config(tmp_path: Path, dataset: str) -> Path:
    """A tiny SAM2 run (random weights, 64 px, 1 epoch, no workers) on `dataset` (a YAML `dataset:` body)."""
    path = tmp_path / "run.yaml"
    path.write_text(
        "model:\n  config_path: sam2.1_tiny_test\n  image_size: 64\n"
        f"dataset:\n{dataset}  video_clip_length: 3\n  batch_size: 1\n  num_workers: 0\n  augment: false\n"
        f"train:\n  out_dir: {tmp_path / 'run'}\n  epochs: 1\n  lr: 1.0e-4\n"
    )
    return path


def run_train(capsys, config: Path, *overrides: str) -> tuple[int, str]:
    """`sam2-video train --config CONFIG OVERRIDES...`: exit status and stdout + stderr."""
    status = main(["train", "--config", str(config), *overrides])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


# --- case 5: COCO order_in_video ------------------------------------------------------------------

def coco_json(tmp_path: Path, orders: list[object]) -> Path:
    """One video whose image k has order `orders[k]`, image id 100 + k, one box-shaped polygon each."""
    images, annotations = [], []
    for k, order in enumerate(orders):
        write_frame(tmp_path / "frames" / f"f{k}.jpg")
        images.append({"id": 100 + k, "video_id": "v", "order_in_video": order, "path": f"frames/f{k}.jpg",
                       "width": SIZE, "height": SIZE})
        annotations.append({"id": k, "image_id": 100 + k, "segmentation": [[4, 4, 20, 4, 20, 20, 4, 20]]})
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def test_coco_numeric_string_orders_sort_as_numbers(tmp_path: Path) -> None:
    orders = [str(k) for k in (11, 2, 0, 10, 1, 3, 4, 5, 6, 7, 8, 9)]
    dataset = COCOVideoDataset(coco_json(tmp_path, orders))
    by_position = [int(orders[int(name[1:])]) for name in dataset.frame_names(0)]
    assert by_position == list(range(12))


@pytest.mark.parametrize(("orders", "expected"), [
    ([0, "second", 2], "images[1] (image id 101) has order_in_video 'second'; expected an integer"),
    ([0, 1.5], "images[1] (image id 101) has order_in_video 1.5; expected an integer"),
    ([0, True], "images[1] (image id 101) has order_in_video True"),
    ([0, "+-1"], "images[1] (image id 101) has order_in_video '+-1'"),
    ([0, None], "images[1] (image id 101) has order_in_video None"),
    ([0, 1, "1"], "video 'v' has images 101 and 102 both at order_in_video 1; each frame of a video needs its own order"),
])
def test_coco_bad_orders_name_the_images(tmp_path: Path, orders: list, expected: str) -> None:
    with pytest.raises(UserInputError) as err:
        COCOVideoDataset(coco_json(tmp_path, orders))
    assert f"{tmp_path / 'coco.json'}: " in str(err.value) and expected in str(err.value)


def test_coco_bad_order_from_the_command_line(tmp_path: Path, capsys) -> None:
    path = coco_json(tmp_path, [0, "second"])
    status, output = run_train(capsys, train_config(tmp_path, f"  dataset_type: coco\n  data_path: {path}\n"))
    assert status == 2 and "Traceback" not in output
    assert "images[1] (image id 101) has order_in_video 'second'" in output


# --- case 6: frames without masks ------------------------------------------------------------------

def test_unannotated_frames_are_summarised_once_and_clips_use_annotated_frames(tmp_path: Path, capsys) -> None:
    root = vos_folder(tmp_path / "data", {"a": [0, 1, 3, 5], "b": [2, 3, 4, 5], "c": list(range(6))})
    dataset = VOSFolderDataset(root, clip_sampler=SAM2ClipSampler(num_frames=3), transform=ClipTransform(SIZE))
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert (f"note: {root / 'Annotations'}: 2 of 3 videos lack masks for 4 of 18 frames: a (2, first mask 00000), "
            "b (2, first mask 00002); training clips use only the annotated frames") in err
    assert dataset.annotated_frames(0) == [0, 1, 3, 5] and dataset.annotated_frames(1) == [2, 3, 4, 5]
    for seed in range(10):
        torch.manual_seed(seed)
        clip = dataset[1]
        assert set(clip.frame_names) <= {"00002", "00003", "00004", "00005"}


def test_unannotated_frames_summary_appears_once_in_a_training_run(tmp_path: Path, capsys) -> None:
    root = vos_folder(tmp_path / "data", {"a": [1, 2, 4, 5], "b": list(range(6))})
    status, output = run_train(capsys, train_config(tmp_path, f"  dataset_type: vos\n  data_path: {root}\n"))
    assert status == 0 and "Traceback" not in output
    assert output.count("lack masks for") == 1
    assert "1 of 2 videos lack masks for 2 of 12 frames: a (2, first mask 00001)" in output


# --- case 16: palettized masks of only 0 and 255 ------------------------------------------------

def test_void_only_masks_say_255_is_void(tmp_path: Path, capsys) -> None:
    """Raised in a loader worker, the error still reaches the user as one line (no worker traceback)."""
    root = vos_folder(tmp_path / "data", {"a": list(range(6))}, label=255)
    config = train_config(tmp_path, f"  dataset_type: vos\n  data_path: {root}\n")
    status, output = run_train(capsys, config, "dataset.num_workers=1")
    assert status == 2 and "Traceback" not in output
    mask = root / "Annotations" / "a" / "00000.png"
    assert f"{mask} holds only 0 and 255: 255 in a palettized mask is void (ignored), not an object" in output
    assert "give objects ids 1..254" in output and "are the masks empty" not in output


def test_masks_emptied_by_ignore_ids_name_the_setting(tmp_path: Path) -> None:
    root = vos_folder(tmp_path / "data", {"a": list(range(6))}, label=3)
    dataset = VOSFolderDataset(root, ignore_ids=[3], transform=ClipTransform(SIZE))
    with pytest.raises(UserInputError, match=r"00000\.png holds only 0 and 3: 3 in dataset\.ignore_ids count as background; "
                                             r"take object ids out of dataset\.ignore_ids"):
        dataset[0]


def test_truly_empty_masks_keep_the_plain_question(tmp_path: Path) -> None:
    dataset = VOSFolderDataset(vos_folder(tmp_path / "data", {"a": [0, 1]}, label=0), transform=ClipTransform(SIZE))
    with pytest.raises(UserInputError, match="no object is visible .* of a; are the masks empty"):
        dataset[0]


# --- case 20a: every file's header and size, checked when the dataset is built ------------------

def test_vos_files_are_checked_at_construction(tmp_path: Path) -> None:
    root = vos_folder(tmp_path / "data", {"a": list(range(6))})
    bad = root / "JPEGImages" / "a" / "00004.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(UserInputError, match=rf"{bad}: cannot read the file as an image"):
        VOSFolderDataset(root)
    write_frame(bad, width=40)
    with pytest.raises(UserInputError, match=rf"{bad}: the frame is 40x32 but .*00000\.jpg is 32x32; all frames of a video must have one size"):
        VOSFolderDataset(root)
    write_frame(bad)
    mask = root / "Annotations" / "a" / "00003.png"
    write_palette_mask(mask, np.zeros((16, SIZE)))
    with pytest.raises(UserInputError, match=rf"{mask}: the mask is 32x16 but its frame .*00003\.jpg is 32x32"):
        VOSFolderDataset(root)


def test_bare_frames_and_sav_frames_are_checked_at_construction(tmp_path: Path) -> None:
    for t in range(3):
        write_frame(tmp_path / "frames" / "v" / f"{t:05d}.jpg")
    bad = tmp_path / "frames" / "v" / "00002.jpg"
    write_frame(bad, height=20)
    with pytest.raises(UserInputError, match=rf"{bad}: the frame is 32x20 but .*00000\.jpg is 32x32"):
        VideoDataset(tmp_path / "frames")
    (tmp_path / "v_manual.json").write_text(json.dumps({"masklet": [], "video_height": SIZE, "video_width": SIZE}))
    with pytest.raises(UserInputError, match=rf"{bad}: the frame is 32x20"):
        SAVJsonDataset(tmp_path / "frames", tmp_path)


def test_coco_image_files_are_checked_against_the_json(tmp_path: Path) -> None:
    path = coco_json(tmp_path, [0, 1, 2])
    (tmp_path / "frames" / "f2.jpg").unlink()
    with pytest.raises(UserInputError, match=r"frames/f2\.jpg: file not found"):
        COCOVideoDataset(path)
    write_frame(tmp_path / "frames" / "f2.jpg")
    content = json.loads(path.read_text())
    content["images"][2]["width"] = 30
    path.write_text(json.dumps(content))
    with pytest.raises(UserInputError, match=r"f2\.jpg: the frame is 32x32 but .*coco\.json gives width 30 and height 32 \(image id 102\)"):
        COCOVideoDataset(path)


def test_big_datasets_show_a_progress_bar(tmp_path: Path, capsys, monkeypatch) -> None:
    root = vos_folder(tmp_path / "data", {"a": list(range(4))}, num_frames=4)
    monkeypatch.setattr(file_check, "PROGRESS_FROM", 7)  # 4 frames + 4 masks
    VOSFolderDataset(root)
    assert "checking image files: 100%" in capsys.readouterr().err
    monkeypatch.setattr(file_check, "PROGRESS_FROM", 8)
    VOSFolderDataset(root)
    assert "checking image files" not in capsys.readouterr().err


# --- case 20b: unknown override keys ------------------------------------------------------------

def test_unknown_override_key_is_blamed_on_the_command_line(capsys) -> None:
    status, output = run_train(capsys, REPO_ROOT / "configs" / "demo.yaml", "train.lrr=1")
    assert status == 2 and "Traceback" not in output
    assert "command-line override 'train.lrr=1': unknown key 'train.lrr'; did you mean 'train.lr'?" in output
    assert "demo.yaml" not in output
    status, output = run_train(capsys, REPO_ROOT / "configs" / "demo.yaml", "train.epochs=-1")
    assert status == 2 and "demo.yaml with command-line overrides: 'train.epochs' must not be negative" in output


def test_unknown_key_in_the_file_is_still_blamed_on_the_file(tmp_path: Path, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  lrr: 1\n")
    status, output = run_train(capsys, config, "train.lr=1")
    assert status == 2 and f"{config}: unknown key 'train.lrr'" in output


# --- case 20c: COCO RLE errors name the annotation ----------------------------------------------

@pytest.mark.parametrize(("with_id", "expected"), [
    (True, "annotations[1] (id 7, image id 101): invalid segmentation"),
    (False, "annotations[1] (image id 101): invalid segmentation"),
])
def test_coco_rle_errors_name_the_annotation(tmp_path: Path, with_id: bool, expected: str) -> None:
    path = coco_json(tmp_path, [0, 1])
    content = json.loads(path.read_text())
    content["annotations"][1] = {"image_id": 101, "segmentation": {"size": [SIZE, SIZE], "counts": "not an rle"}}
    if with_id:
        content["annotations"][1]["id"] = 7
    path.write_text(json.dumps(content))
    dataset = COCOVideoDataset(path, transform=ClipTransform(SIZE))
    with pytest.raises(UserInputError) as err:
        dataset.read_objects(0, 1)
    assert str(err.value).startswith(f"{path}: {expected}")
