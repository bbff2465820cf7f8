"""Clip sampling (SAM2 and STCN styles) and the seeded DataLoader."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2_video.data import ClipTransform, SAM2ClipSampler, STCNClipSampler, SyntheticVideoDataset, build_dataloader, stcn_max_jump

ANNOTATED = list(range(0, 60, 3))  # every 3rd frame of a 60-frame video


def visible_from(start_frame: int):
    """Objects 1..4 visible everywhere, object 9 only from `start_frame` on."""
    return lambda frame: [1, 2, 3, 4] + ([9] if frame >= start_frame else [])


def test_sam2_sampler_takes_consecutive_annotated_frames_and_first_frame_objects():
    sampler = SAM2ClipSampler(num_frames=5, max_num_objects=3)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(50):
        clip = sampler.sample("v", ANNOTATED, visible_from(30), rng)
        first = ANNOTATED.index(clip.frame_indices[0])
        assert clip.frame_indices == ANNOTATED[first : first + 5] and not any(clip.is_padding)
        assert len(clip.object_ids) == 3 and set(clip.object_ids) <= set(visible_from(30)(clip.frame_indices[0]))
        starts.add(first)
    assert len(starts) > 5


def test_sam2_sampler_reverses_time_and_gives_up_on_invisible_videos():
    reversed_clip = SAM2ClipSampler(num_frames=4, reverse_prob=1.0).sample("v", ANNOTATED, visible_from(0), np.random.default_rng(1))
    assert reversed_clip.frame_indices == sorted(reversed_clip.frame_indices, reverse=True)
    assert SAM2ClipSampler().sample("v", ANNOTATED, lambda frame: [], np.random.default_rng(0)) is None


def test_short_videos_are_padded_with_flags():
    clip = SAM2ClipSampler(num_frames=5).sample("v", [0, 4], visible_from(0), np.random.default_rng(0))
    assert clip.frame_indices == [0, 4, 4, 4, 4] and clip.is_padding == [False, False, True, True, True]
    stcn = STCNClipSampler(num_frames=3, reverse_prob=0).sample("v", [7], visible_from(0), np.random.default_rng(0))
    assert stcn.frame_indices == [7, 7, 7] and stcn.is_padding == [False, True, True]


@pytest.mark.parametrize("max_jump", [1, 3, 25])
def test_stcn_sampler_gaps_and_objects(max_jump):
    sampler = STCNClipSampler(num_frames=3, max_jump=max_jump, reverse_prob=0.0)
    rng = np.random.default_rng(max_jump)
    gaps = set()
    for _ in range(60):
        clip = sampler.sample("v", ANNOTATED, visible_from(45), rng)
        positions = [ANNOTATED.index(f) for f in clip.frame_indices]
        steps = np.diff(positions)
        assert len(positions) == 3 and (steps >= 1).all() and (steps <= max_jump).all()
        gaps |= set(steps.tolist())
        assert len(clip.object_ids) == 2 and len(set(clip.object_ids)) == 2
        assert set(clip.object_ids) <= set(visible_from(45)(clip.frame_indices[0]))
    assert max(gaps) == min(max_jump, 9)  # 20 annotated frames fit gaps of at most 9


def test_stcn_curriculum():
    assert [stcn_max_jump(p) for p in (0.0, 0.15, 0.25, 0.35, 0.5, 0.95)] == [5, 10, 15, 20, 25, 5]


def batches_of(loader) -> list[torch.Tensor]:
    return [batch.img_batch.clone() for batch in loader]


def test_loader_clips_depend_only_on_the_seed():
    dataset = SyntheticVideoDataset(6, num_frames=6, image_size=24, clip_sampler=SAM2ClipSampler(num_frames=3), transform=ClipTransform.sam2_training(24))
    torch.manual_seed(1)
    first = batches_of(build_dataloader(dataset, batch_size=2, num_workers=2, seed=11))
    torch.manual_seed(2)  # the global RNG plays no part
    in_process = batches_of(build_dataloader(dataset, batch_size=2, num_workers=0, seed=11))
    other = batches_of(build_dataloader(dataset, batch_size=2, num_workers=2, seed=12))
    assert len(first) == 3 and all(batch.shape == (3, 2, 3, 24, 24) for batch in first)
    assert all(torch.equal(a, b) for a, b in zip(first, in_process))  # the same clips with or without workers
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_loader_shards_over_ranks_and_changes_order_each_epoch():
    dataset = SyntheticVideoDataset(5, num_frames=4, image_size=16, clip_sampler=SAM2ClipSampler(num_frames=2))
    shards = [build_dataloader(dataset, batch_size=1, seed=3, rank=rank, world_size=2) for rank in (0, 1)]
    names = [[batch.video_names[0] for batch in shard] for shard in shards]
    assert len(names[0]) == len(names[1]) == 3  # 5 clips over 2 ranks, padded by repeating one
    assert set(names[0]) | set(names[1]) == {f"synthetic_{i:04d}" for i in range(5)}
    epoch_0 = names[0]
    shards[0].sampler.set_epoch(1)
    assert [batch.video_names[0] for batch in shards[0]] != epoch_0


def test_loading_leaves_cuda_alone(monkeypatch):
    """Reading or seeding CUDA's generator initialises CUDA, which a forked DataLoader worker cannot
    do once the trainer has put the model on a GPU: clips draw on the CPU generators only."""
    def no_cuda(*args, **kwargs):
        raise AssertionError("data loading touched CUDA's random generator")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("get_rng_state_all", "set_rng_state_all", "manual_seed_all", "manual_seed"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)
    dataset = SyntheticVideoDataset(2, num_frames=4, image_size=16, clip_sampler=SAM2ClipSampler(num_frames=2))
    assert len(batches_of(build_dataloader(dataset, batch_size=1, seed=0, pin_memory=False))) == 2
