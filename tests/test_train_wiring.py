"""`sam2-video train` wiring: seed 002's dataset blocks build clips, missing data paths, STCN schedules and resume."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from sam2_video.config import RunConfig, load_config
from sam2_video.data import VideoClip
from sam2_video.errors import UserInputError
from sam2_video.train.cli import build_train_dataset, build_trainer
from sam2_video.train.loss import CORE_LOSS_KEY
from sam2_video.train.stcn_loss import STCNLoss

SEED_002_VIDEO_BLOCK = """
dataset:
  dataset_type: "video"
  data_path: "{data}"
  image_size: [512, 512]
  video_clip_length: 5
  batch_size: 1
  num_workers: 16
  shuffle: True
  prompt_types: ["point"]
  num_of_pos_points: 1
  include_center_point: True
"""
SEED_002_COCO_BLOCK = """
dataset:
  dataset_type: "coco"
  data_path: "{data}"
  image_size: [512, 512]
  video_clip_length: 5
  batch_size: 1
  num_workers: 16
  shuffle: True
  prompt_types: ["point", "bbox"]
  num_of_pos_points: 1
  include_center_point: True
"""
SIZE = 512  # the blocks' image size; frames are generated at it so masks need no resizing
NUM_FRAMES = 5


def load_block(tmp_path: Path, block: str, data: Path, overrides: tuple[str, ...] = ()) -> RunConfig:
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(block.format(data=data)))
    return load_config(path, list(overrides))


def write_frames(folder: Path, rng: np.random.Generator) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for t in range(NUM_FRAMES):
        paths.append(folder / f"frame_{t + 1:03d}.jpg")
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.fixture
def coco_json(tmp_path: Path) -> tuple[Path, dict[tuple[int, int], np.ndarray]]:
    """Seed 002's JSON: one video of 5 frames, two objects as pycocotools RLE; also the masks by (frame, object)."""
    frames = write_frames(tmp_path / "frames", np.random.default_rng(0))
    images, annotations, masks = [], [], {}
    for t, path in enumerate(frames):
        images.append({"id": t + 1, "video_id": 1, "order_in_video": t, "path": str(path), "width": SIZE, "height": SIZE})
        for k, (top, left) in enumerate([(40, 60 + 20 * t), (300, 200 - 10 * t)]):
            mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
            mask[top : top + 120, left : left + 150] = 1
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({"id": len(annotations) + 1, "image_id": t + 1, "segmentation": rle})
            masks[t, k + 1] = mask.astype(bool)
    path = tmp_path / "coco_annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path, masks


def test_seed_002_coco_block_builds_clips_with_the_json_masks(tmp_path: Path, coco_json) -> None:
    json_path, masks = coco_json
    as_written = build_train_dataset(load_block(tmp_path, SEED_002_COCO_BLOCK, json_path))
    clip = as_written[0]
    assert isinstance(clip, VideoClip) and len(as_written) == 1
    assert clip.images.shape == (NUM_FRAMES, 3, SIZE, SIZE) and clip.masks.shape == (NUM_FRAMES, 2, SIZE, SIZE)
    assert all(prompt is not None for prompt in clip.prompts[0])

    # without augmentation the clip's masks are the JSON's RLE masks, frame by frame
    plain = build_train_dataset(load_block(tmp_path, SEED_002_COCO_BLOCK, json_path, ("dataset.augment=false",)))
    clip = plain[0]
    assert clip.frame_names == [f"frame_{t + 1:03d}" for t in range(NUM_FRAMES)]
    for n, obj_id in enumerate(clip.object_ids.tolist()):
        for t in range(NUM_FRAMES):
            assert torch.equal(clip.masks[t, n], torch.from_numpy(masks[t, obj_id])), (t, obj_id)


def test_seed_002_video_block_builds_clips_from_bare_frames(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for video in ("video_001", "video_002"):
        write_frames(tmp_path / "video_data" / video, rng)
    dataset = build_train_dataset(load_block(tmp_path, SEED_002_VIDEO_BLOCK, tmp_path / "video_data"))
    assert len(dataset) == 2
    clip = dataset[1]
    assert clip.video_name == "video_002"
    assert clip.images.shape == (NUM_FRAMES, 3, SIZE, SIZE)
    assert clip.masks.shape[0] == NUM_FRAMES and 1 <= clip.masks.shape[1] <= 3
    assert clip.masks[0].flatten(1).any(dim=1).all()  # generated objects are visible on the prompted frame
    assert all(prompt is not None and prompt.point_coords is not None for prompt in clip.prompts[0])


@pytest.mark.parametrize(("block", "expected"), [
    (SEED_002_VIDEO_BLOCK, "a folder of video folders"),
    (SEED_002_COCO_BLOCK, "a COCO-video JSON file"),
])
def test_missing_data_path_is_one_clear_error(tmp_path: Path, block: str, expected: str) -> None:
    missing = tmp_path / "no_such_data"
    with pytest.raises(UserInputError) as err:
        load_block(tmp_path, block, missing)
    message = str(err.value)
    assert f"'dataset.data_path' {missing} does not exist" in message and expected in message
    assert str(tmp_path / "run.yaml") in message


def test_coco_data_path_that_is_a_folder_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="is a folder; expected a COCO-video JSON file"):
        load_block(tmp_path, SEED_002_COCO_BLOCK, tmp_path)


def stcn_config(out_dir: Path, epochs: int = 2) -> RunConfig:
    """Tiny STCN (ResNet-18 keys, 64 channels, 64x64 frames) on 2 synthetic videos: 2 steps per epoch."""
    return load_config(None, [
        "model.model=stcn", "model.image_size=64", "model.stcn.key_backbone=18", "model.stcn.value_dim=64",
        "model.stcn.decoder_dim=64", "dataset.dataset_type=synthetic", "dataset.synthetic_videos=2",
        "dataset.synthetic_frames=8", "dataset.video_clip_length=3", "dataset.max_num_objects=2",
        "dataset.batch_size=1", "dataset.num_workers=0", f"train.out_dir={out_dir}", f"train.epochs={epochs}",
        "train.device=cpu", "train.lr=1e-3", "train.checkpoint_every_steps=1", "train.seed=5",
    ])


def test_stcn_max_jump_follows_the_curriculum_each_epoch(tmp_path: Path) -> None:
    trainer = build_trainer(stcn_config(tmp_path, epochs=10))
    clip_sampler = trainer.loader.dataset.dataset.clip_sampler
    jumps = []
    for epoch in range(10):
        trainer.on_epoch_start(epoch)
        jumps.append(clip_sampler.max_jump)
    assert jumps == [5, 10, 15, 20, 25, 25, 25, 25, 25, 5]  # STCN: 5, +5 every 10% up to 25, 5 for the last 10%


class CrashAtCall:
    """Loss wrapper that raises on its n-th call, standing in for a crash mid-training."""

    def __init__(self, loss_fn, crash_at: int) -> None:
        self.loss_fn, self.crash_at, self.calls = loss_fn, crash_at, 0

    def __call__(self, outputs, batch):
        self.calls += 1
        if self.calls == self.crash_at:
            raise RuntimeError("simulated crash")
        return self.loss_fn(outputs, batch)


def test_stcn_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path: Path) -> None:
    """4 steps in 2 epochs, interrupted in the middle of the first. The bootstrapped-CE warm-up
    keeps all pixels for 2 steps, then 15%: a warm-up counter restarted at 0 on resume changes
    the loss of step 3, a max_jump not set for the resumed epoch the clips."""
    full = build_trainer(stcn_config(tmp_path / "full")).fit()

    crashing = build_trainer(stcn_config(tmp_path / "resumed"))
    assert isinstance(crashing.loss_fn, STCNLoss)
    crashing.loss_fn = CrashAtCall(crashing.loss_fn, crash_at=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.fit()  # dies during step 2: last.pt holds step 1, in the middle of epoch 0
    resumed = build_trainer(stcn_config(tmp_path / "resumed")).fit(resume=True)

    assert resumed.steps == full.steps == 4
    for key in (CORE_LOSS_KEY, "kept_fraction"):
        assert [r[key] for r in resumed.history] == [r[key] for r in full.history[1:]], key
    assert [r["kept_fraction"] for r in full.history] == pytest.approx([1.0, 1.0, 0.15, 0.15])


def test_video_list_picks_the_training_videos(tmp_path: Path) -> None:
    from sam2_video.data import synthesize

    root = synthesize(tmp_path / "davis", 3, num_frames=4, image_size=32, seed=0)
    (tmp_path / "videos.txt").write_text("synthetic_0002\nsynthetic_0000\n")
    config = load_config(None, ["dataset.dataset_type=vos", f"dataset.data_path={root}", "model.image_size=32",
                                "dataset.video_clip_length=2", f"dataset.video_list={tmp_path / 'videos.txt'}"])
    dataset = build_train_dataset(config)
    assert sorted(dataset[i].video_name for i in range(len(dataset))) == ["synthetic_0000", "synthetic_0002"]
    with pytest.raises(UserInputError, match=r"'dataset.video_list' .*missing.txt is not a file"):
        load_config(None, ["dataset.dataset_type=vos", f"dataset.data_path={root}",
                           f"dataset.video_list={tmp_path / 'missing.txt'}"])
