"""collate_fn: padding of frames, objects and points, and the flat image indexing the models rely on."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sam2_video.data import ObjectPrompt, VideoClip, collate_fn

SIZE = 8


@st.composite
def clips(draw):
    """A random clip: T frames, N objects, some prompts (points / box / mask) and some absent objects."""
    num_frames = draw(st.integers(1, 4))
    num_objects = draw(st.integers(0, 3))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    masks = torch.rand(num_frames, num_objects, SIZE, SIZE, generator=gen) > 0.6
    prompts = []
    for t in range(num_frames):
        row = []
        for n in range(num_objects):
            if not masks[t, n].any() or draw(st.booleans()):
                row.append(None)
                continue
            k = draw(st.integers(0, 3))
            row.append(
                ObjectPrompt(
                    point_coords=torch.rand(k, 2, generator=gen) * SIZE,
                    point_labels=torch.randint(0, 2, (k,), generator=gen, dtype=torch.int32),
                    box=torch.tensor([0.0, 1.0, 5.0, 6.0]) if draw(st.booleans()) else None,
                    mask=masks[t, n].clone() if draw(st.booleans()) else None,
                )
            )
        prompts.append(row)
    return VideoClip(
        images=torch.rand(num_frames, 3, SIZE, SIZE, generator=gen),
        masks=masks,
        object_ids=torch.arange(1, num_objects + 1),
        video_name=f"video{seed}",
        frame_names=[f"{t:05d}" for t in range(num_frames)],
        prompts=prompts,
        is_padding=torch.zeros(num_frames, dtype=torch.bool),
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(clips(), min_size=1, max_size=4))
def test_collate_pads_and_keeps_every_clip(batch_clips):
    batch = collate_fn(batch_clips)
    num_frames = max(c.images.shape[0] for c in batch_clips)
    num_objects = sum(c.masks.shape[1] for c in batch_clips)
    assert batch.img_batch.shape == (num_frames, len(batch_clips), 3, SIZE, SIZE)
    assert batch.masks.shape == (num_frames, num_objects, SIZE, SIZE)
    assert batch.point_coords.shape[:2] == (num_frames, num_objects) == batch.point_labels.shape[:2]
    assert batch.obj_to_frame_idx.shape == (num_frames, num_objects, 2)

    first = 0
    for b, clip in enumerate(batch_clips):
        length, count = clip.images.shape[0], clip.masks.shape[1]
        assert batch.frame_is_padding[:, b].tolist() == [t >= length for t in range(num_frames)]
        for t in range(num_frames):
            source = min(t, length - 1)  # padding repeats the last frame
            assert torch.equal(batch.img_batch[t, b], clip.images[source])
            assert batch.frame_names[b][t] == clip.frame_names[source]
            for n in range(count):
                o = first + n
                assert torch.equal(batch.masks[t, o], clip.masks[source, n])
                prompt = clip.prompts[t][n] if t < length else None
                labels = batch.point_labels[t, o]
                if prompt is None:
                    assert (labels == -1).all() and not batch.box_valid[t, o] and not batch.mask_prompt_valid[t, o]
                    continue
                k = len(prompt.point_labels)
                assert torch.equal(labels[:k], prompt.point_labels) and (labels[k:] == -1).all()
                assert torch.equal(batch.point_coords[t, o, :k], prompt.point_coords)
                assert bool(batch.box_valid[t, o]) == (prompt.box is not None)
                assert bool(batch.mask_prompt_valid[t, o]) == (prompt.mask is not None)
        assert torch.equal(batch.object_ids[first : first + count], clip.object_ids)
        first += count


@settings(max_examples=40, deadline=None)
@given(st.lists(clips(), min_size=1, max_size=4))
def test_flat_obj_to_img_idx_points_at_the_objects_image(batch_clips):
    batch = collate_fn(batch_clips)
    flat = batch.flat_img_batch
    assert flat.shape[0] == batch.num_videos * batch.num_frames
    video_of_object = torch.cat([torch.full((c.masks.shape[1],), b) for b, c in enumerate(batch_clips)])
    for t in range(batch.num_frames):
        for o, b in enumerate(video_of_object.tolist()):
            assert torch.equal(flat[batch.flat_obj_to_img_idx[t, o]], batch.img_batch[t, b])


def test_clip_padding_flags_survive_collate():
    """Frames the sampler repeated inside a clip stay flagged after batching."""
    clip = VideoClip(
        images=torch.rand(3, 3, SIZE, SIZE),
        masks=torch.zeros(3, 1, SIZE, SIZE, dtype=torch.bool),
        object_ids=torch.tensor([1]),
        video_name="short",
        frame_names=["0", "1", "1"],
        is_padding=torch.tensor([False, False, True]),
    )
    longer = VideoClip(torch.rand(4, 3, SIZE, SIZE), torch.zeros(4, 0, SIZE, SIZE, dtype=torch.bool), torch.zeros(0, dtype=torch.int64), "long", list("0123"))
    batch = collate_fn([clip, longer])
    assert batch.frame_is_padding[:, 0].tolist() == [False, False, True, True]
    assert batch.point_labels.shape == (4, 1, 0)
