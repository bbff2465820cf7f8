"""Streaming tracking: released outputs change no number, memory stays bounded, live streams and
`track_video` give the full-state results (tiny preset, seeded random weights made decisive as
refharness/ref_dump.py: object-score bias +5, mask logits x20)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam2_video.predict.tracking import ClickPrompt, MaskPrompt, Prompt, apply_prompts, track_video
from sam2_video.predict.video_predictor import SAM2VideoPredictor, build_sam2_video_predictor
from conftest import make_decisive

DAVIS_FRAMES = 60
LATE_START = 20


def decisive_predictor(**overrides) -> SAM2VideoPredictor:
    torch.manual_seed(0)
    predictor = build_sam2_video_predictor("sam2.1_tiny_test", image_size=64, **overrides)
    make_decisive(predictor.model)
    return predictor


def generated_video(folder: Path, num_frames: int, size: tuple[int, int] = (64, 80)) -> Path:
    """PNG frames with two squares moving over noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for t in range(num_frames):
        frame = rng.integers(0, 120, (*size, 3), dtype=np.uint8)
        frame[10:30, (2 * t) % 40 : (2 * t) % 40 + 20] = (230, 40, 40)
        frame[36:56, 50 - t % 30 : 70 - t % 30] = (40, 220, 60)
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    return folder


def square(shape: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def collect(frames) -> list[tuple[int, list[int], torch.Tensor]]:
    return [(frame_idx, list(obj_ids), masks.clone()) for frame_idx, obj_ids, masks in frames]


def assert_identical(got, expected) -> None:
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    for (frame_idx, _, masks), (_, _, reference) in zip(got, expected):
        assert torch.equal(masks, reference), f"frame {frame_idx}: logits differ"


@pytest.fixture
def davis_60(davis_root: Path, tmp_path: Path) -> tuple[Path, np.ndarray]:
    """60 real frames (a DAVIS sequence with at least 60) and the first frame's annotation."""
    for sequence in sorted((davis_root / "JPEGImages").iterdir()):
        frames = sorted(sequence.glob("*.jpg"))
        if len(frames) >= DAVIS_FRAMES:
            break
    else:
        pytest.skip(f"no DAVIS sequence with {DAVIS_FRAMES} frames in {davis_root}")
    folder = tmp_path / sequence.name
    folder.mkdir()
    for path in frames[:DAVIS_FRAMES]:
        (folder / path.name).symlink_to(path)
    annotation = davis_root / "Annotations" / sequence.name / f"{frames[0].stem}.png"
    return folder, np.array(Image.open(annotation).convert("L")) > 0


def three_prompts(mask: np.ndarray) -> list[Prompt]:
    """A mask (object 1), a click (object 2) on frame 0 and a box (object 3) first on LATE_START."""
    height, width = mask.shape
    return [
        MaskPrompt(0, 1, mask, "annotation"),
        ClickPrompt(0, 2, np.array([[width * 0.2, height * 0.8]]), np.array([1], dtype=np.int32), None, "click"),
        ClickPrompt(LATE_START, 3, None, None, np.array([width * 0.6, 10.0, width * 0.9, height * 0.4]), "box"),
    ]


def test_streaming_propagation_equals_full_state_on_real_frames(davis_60):
    """(a) 60 DAVIS frames, 3 objects by mask, click and box, one first prompted on frame 20:
    releasing old outputs changes no logit, and the session holds a bounded window."""
    folder, mask = davis_60
    predictor = decisive_predictor()
    runs, stored = [], []
    for release in (False, True):
        state = predictor.init_state(str(folder))
        apply_prompts(predictor, state, three_prompts(mask))
        runs.append(collect(predictor.propagate_in_video(state, release_old_outputs=release)))
        stored.append(max(bank.num_outputs for bank in state.memory_banks))
    assert_identical(runs[1], runs[0])
    positive = torch.stack([(masks > 0).float().mean() for _, _, masks in runs[0]])
    assert (positive > 0).all() and (positive < 1).all(), "degenerate test: masks all empty or all full"
    assert stored[0] == DAVIS_FRAMES
    assert stored[1] <= 2 + predictor.config.max_obj_ptrs_in_encoder


def test_first_frames_of_a_long_run_equal_a_short_run(tmp_path):
    """(b) 120 frames: the first 60 yield exactly the logits of a run on those 60 frames only."""
    long_video = generated_video(tmp_path / "long", 120)
    short_video = tmp_path / "short"
    short_video.mkdir()
    for path in sorted(long_video.iterdir())[:60]:
        (short_video / path.name).symlink_to(path)
    predictor = decisive_predictor()
    prompts = [MaskPrompt(0, 1, square((64, 80), 10, 0, 20), "red"),
               MaskPrompt(0, 2, square((64, 80), 36, 50, 20), "green")]
    runs = []
    for video in (long_video, short_video):
        state = predictor.init_state(str(video))
        runs.append(collect(predictor.track_from_prompts(state, prompts)))
    assert len(runs[0]) == 120
    assert_identical(runs[0][:60], runs[1])


def test_stored_outputs_stay_bounded(tmp_path):
    """(c) the number of outputs each object's memory bank holds stays flat over a long run, with
    a memory stride that reaches further back than the pointer window."""
    video = generated_video(tmp_path / "video", 90)
    predictor = decisive_predictor(memory_temporal_stride_for_eval=3)
    state = predictor.init_state(str(video))
    predictor.add_new_mask(state, 0, 1, square((64, 80), 10, 0, 20))
    predictor.add_new_points_or_box(state, 5, 2, points=[[60, 46]], labels=[1])
    sizes = []
    for frame_idx, _, _ in predictor.propagate_in_video(state, release_old_outputs=True):
        sizes.append([bank.num_outputs for bank in state.memory_banks])
    cfg = predictor.config
    reach = max(cfg.num_maskmem * cfg.memory_temporal_stride_for_eval, cfg.max_obj_ptrs_in_encoder)
    assert max(max(s) for s in sizes) <= reach + 2  # the window, this frame, the conditioning frame
    assert sizes[-1] == sizes[50], "memory grows with the video"
    assert max(len(t) for t in state["frames_tracked_per_obj"].values()) <= reach + 2


def test_one_pass_keeps_one_frame_of_image_features(tmp_path):
    """`track_from_prompts` (what `sam2-video predict` runs) holds the image features of one frame at a
    time, not a cache that grows with the video."""
    video = generated_video(tmp_path / "video", 30)
    predictor = decisive_predictor()
    state = predictor.init_state(str(video))
    prompts = [MaskPrompt(source="test", frame_idx=0, obj_id=1, mask=square((64, 80), 10, 0, 20)),
               ClickPrompt(source="test", frame_idx=5, obj_id=2, points=np.array([[60.0, 46.0]]),
                           labels=np.array([1]), box=None)]
    cache_sizes = [state.feature_cache_bytes for _ in predictor.track_from_prompts(state, prompts)]
    predictor.reset_state(state)
    predictor.add_new_mask(state, 0, 1, square((64, 80), 10, 0, 20))
    full = [state.feature_cache_bytes for _ in predictor.propagate_in_video(state)]
    assert len(cache_sizes) == 30 and cache_sizes[-1] > 0
    assert set(cache_sizes) <= {0, cache_sizes[-1]}, "one frame's features at most"
    assert full[-1] > 3 * cache_sizes[-1], "the interactive cache should keep frames for re-propagation"


def test_track_video_in_one_pass_equals_passes_one_after_the_other(davis_60):
    """`track_video` on SAM2 (one streaming pass, objects starting at their first prompt) writes the
    masks of the pass-per-start-frame merge of full-state sessions."""
    folder, mask = davis_60
    folder_40 = folder.parent / "first40"
    folder_40.mkdir()
    for path in sorted(folder.iterdir())[:40]:
        (folder_40 / path.name).symlink_to(path.resolve())
    predictor = decisive_predictor()
    prompts = three_prompts(mask)

    class FullState:  # the VideoPredictor API without track_from_prompts: passes one after the other
        init_state, reset_state = predictor.init_state, predictor.reset_state
        add_new_mask, add_new_points_or_box = predictor.add_new_mask, predictor.add_new_points_or_box
        propagate_in_video = predictor.propagate_in_video

    streamed = list(track_video(predictor, predictor.init_state(str(folder_40)), prompts))
    passes = list(track_video(FullState(), predictor.init_state(str(folder_40)), prompts))
    assert [t for t, _ in streamed] == list(range(40))
    for (frame_idx, ids), (_, expected) in zip(streamed, passes):
        np.testing.assert_array_equal(ids, expected, err_msg=f"frame {frame_idx}")
    assert {int(i) for _, ids in streamed for i in np.unique(ids)} == {0, 1, 2, 3}


def test_live_stream_equals_the_file_run(tmp_path):
    """`track_stream` over decoded RGB frames (a list, and a generator of unknown length) gives the
    masks of the file-based streaming run; an object first prompted on frame 20 joins there."""
    video = generated_video(tmp_path / "video", 40)
    predictor = decisive_predictor()
    prompts = [MaskPrompt(0, 1, square((64, 80), 10, 0, 20), "red"),
               ClickPrompt(LATE_START, 2, np.array([[40.0, 46.0]]), np.array([1], dtype=np.int32), None, "click")]
    from_file = collect(predictor.track_from_prompts(predictor.init_state(str(video)), prompts))
    rgb = [np.asarray(Image.open(path).convert("RGB")) for path in sorted(video.iterdir())]
    from_list = collect(predictor.track_stream(rgb, prompts))
    # the file session knows object 2 from the start (NO_OBJ_SCORE before frame 20), the stream from frame 20
    assert [obj_ids for _, obj_ids, _ in from_list] == [[1]] * LATE_START + [[1, 2]] * (40 - LATE_START)
    from_file = [(t, ids[:len(masks)], reference[:len(masks)]) for (t, ids, reference), (_, _, masks)
                 in zip(from_file, from_list)]
    assert_identical(from_list, from_file)

    live = collect(predictor.track_stream((frame for frame in rgb), prompts[:1]))
    assert len(live) == 40 and all(obj_ids == [1] for _, obj_ids, _ in live)
    for (frame_idx, _, masks), (_, _, reference) in zip(live, from_list):  # objects are tracked apart
        assert torch.equal(masks, reference[:1]), f"frame {frame_idx}: logits differ"
