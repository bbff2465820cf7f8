"""Dataset-provided prompts (sidecar JSON per video) travel through augmentation and batching."""
from __future__ import annotations

import json

import pytest
import torch

from sam2_video.data import ClipTransform, SAM2ClipSampler, VOSFolderDataset, collate_fn, synthesize
from sam2_video.data.prompts import center_point, mask_to_box
from sam2_video.errors import UserInputError


@pytest.fixture
def video_with_prompts(tmp_path):
    root = synthesize(tmp_path / "syn", num_videos=1, num_frames=3, image_size=40, seed=2)
    dataset = VOSFolderDataset(root)
    objects = dataset.read_objects(0, 0)
    object_id = min(objects)
    mask = torch.from_numpy(objects[object_id])
    x, y = center_point(mask).tolist()
    far = [0.0, 0.0] if not mask[0, 0] else [39.0, 39.0]
    entry = {"frame": "00000", "object_id": object_id, "point_coords": [[x, y], far], "point_labels": [1, 0], "box": mask_to_box(mask).tolist()}
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "synthetic_0000.json").write_text(json.dumps({"prompts": [entry]}))
    return root, tmp_path / "prompts", object_id, (x, y), far


def test_sidecar_prompts_are_flipped_with_the_frame_and_batched(video_with_prompts):
    root, prompts_dir, object_id, (x, y), far = video_with_prompts
    flip = ClipTransform(40, hflip_prob=1.0)
    dataset = VOSFolderDataset(root, clip_sampler=SAM2ClipSampler(num_frames=3), transform=flip, prompts_dir=prompts_dir, prompt_frames=None)
    clip = dataset[0]
    n = clip.object_ids.tolist().index(object_id)
    given = clip.prompts[0][n]
    assert given.point_labels.tolist() == [1, 0]
    assert given.point_coords[0].tolist() == [39 - x, y]  # flipped, same size so no resize
    assert clip.masks[0, n, int(y), int(39 - x)]
    assert torch.equal(given.box, mask_to_box(clip.masks[0, n]))
    # frames without a given prompt get generated ones (prompt_frames=None: every frame)
    assert all(p is not None for p in clip.prompts[1])
    batch = collate_fn([clip, clip])
    assert batch.point_labels[0, n, :2].tolist() == [1, 0] and batch.box_valid[0, n]
    assert batch.point_labels[0, n + len(clip.object_ids), :2].tolist() == [1, 0]


def test_bad_sidecar_prompt_file_names_the_file(video_with_prompts):
    root, prompts_dir, *_ = video_with_prompts
    (prompts_dir / "synthetic_0000.json").write_text(json.dumps({"prompts": [{"frame": "00000", "point_coords": [[1, 2]]}]}))
    dataset = VOSFolderDataset(root, clip_sampler=SAM2ClipSampler(num_frames=3), transform=ClipTransform(40), prompts_dir=prompts_dir)
    with pytest.raises(UserInputError, match=r"synthetic_0000\.json: prompt #0 needs \"frame\", \"object_id\""):
        dataset[0]
