"""Video predictor behaviour beyond the reference: batching, issue-308 case, memory dtype,
hole filling, object removal and the error messages (tiny preset, random weights)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sam2_video.errors import UserInputError
from sam2_video.predict.postprocess import connected_components
from sam2_video.predict.tracking import check_prompts, click_prompts_from_json
from sam2_video.predict.video_predictor import SAM2VideoPredictor
from conftest import present_object_predictor, write_moving_square_video

NUM_FRAMES = 5
VIDEO_HW = (48, 64)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_moving_square_video(tmp_path_factory.mktemp("video"), NUM_FRAMES, *VIDEO_HW)


def tiny_predictor(**overrides) -> SAM2VideoPredictor:
    return present_object_predictor(**overrides)


def square(top: int, left: int, size: int = 16) -> np.ndarray:
    mask = np.zeros(VIDEO_HW, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def propagate(predictor: SAM2VideoPredictor, state: dict, **kwargs) -> dict[int, torch.Tensor]:
    return {frame_idx: masks.clone() for frame_idx, _, masks in predictor.propagate_in_video(state, **kwargs)}


def count_calls(monkeypatch, model, name: str) -> list[int]:
    """Record the batch size (objects) of every call of model.<name>."""
    sizes: list[int] = []
    original = getattr(model, name)

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        first = out["pred_masks"] if isinstance(out, dict) and "pred_masks" in out else out["vision_features"]
        sizes.append(first.shape[0])
        return out

    monkeypatch.setattr(model, name, wrapped)
    return sizes


def test_objects_of_a_frame_run_as_one_batch(video, monkeypatch):
    predictor = tiny_predictor()
    state = predictor.init_state(str(video))
    for obj_id, left in ((1, 4), (2, 30), (3, 44)):
        predictor.add_new_mask(state, 0, obj_id, square(8, left))
    encoder_calls = count_calls(monkeypatch, predictor.model, "forward_image")
    track_calls = count_calls(monkeypatch, predictor.model, "track_step")
    outputs = propagate(predictor, state)
    assert list(outputs) == list(range(NUM_FRAMES))
    assert all(masks.shape == (3, 1, *VIDEO_HW) for masks in outputs.values())
    assert encoder_calls == [1] * (NUM_FRAMES - 1)  # frame 0 was encoded by init_state
    assert track_calls == [3] * (NUM_FRAMES - 1)

    # an object added on a later frame has another memory bank: its own batch (backwards from
    # frame 2, where object 7 is prompted, over frames 1 and 0, where objects 1-3 are)
    predictor.add_new_points_or_box(state, 2, 7, points=[[20, 20]], labels=[1])
    track_calls.clear()
    propagate(predictor, state, start_frame_idx=2, reverse=True)
    assert track_calls == [3, 3, 1, 1]


def test_repropagation_recomputes_only_objects_whose_memory_changed(video, monkeypatch):
    """A frame whose memory inputs are the very outputs it was tracked from is not tracked again:
    a second identical pass runs no track_step, and after a correction of object 2 only object 2
    is re-tracked, the others keep their masks. (That the reused masks are the official ones is
    checked against the reference in test_video_predictor_vs_reference.py, case (h).)"""
    predictor = tiny_predictor(fill_hole_area=0)
    state = predictor.init_state(str(video))
    for obj_id, left in ((1, 4), (2, 30), (3, 44)):
        predictor.add_new_mask(state, 0, obj_id, square(8, left))
    first = propagate(predictor, state)
    track_calls = count_calls(monkeypatch, predictor.model, "track_step")
    again = propagate(predictor, state)
    assert track_calls == []
    assert all(torch.equal(first[t], again[t]) for t in first)

    predictor.add_new_points_or_box(state, 2, 2, points=[[36, 20]], labels=[0], clear_old_points=False)
    corrected = propagate(predictor, state, start_frame_idx=3)
    assert track_calls == [1] + [1] * (NUM_FRAMES - 3)  # the correction click, then frames 3.. for object 2
    assert not torch.equal(corrected[NUM_FRAMES - 1][1], first[NUM_FRAMES - 1][1])
    assert all(torch.equal(corrected[t][[0, 2]], first[t][[0, 2]]) for t in corrected)

    # backwards, every frame reads other frames than forwards: all objects are tracked again
    track_calls.clear()
    propagate(predictor, state, start_frame_idx=NUM_FRAMES - 1, reverse=True)
    assert track_calls == [3] * (NUM_FRAMES - 1)


def test_batched_objects_match_objects_tracked_alone(video):
    """Tracking objects together gives each one the numbers it gets when tracked alone; removing
    an object leaves the others' results unchanged."""
    prompts = {1: square(8, 4), 2: square(24, 30), 3: square(4, 44)}
    predictor = tiny_predictor(fill_hole_area=0)
    together = predictor.init_state(str(video))
    for obj_id, mask in prompts.items():
        predictor.add_new_mask(together, 0, obj_id, mask)
    batched = propagate(predictor, together)
    for row, (obj_id, mask) in enumerate(prompts.items()):
        alone = predictor.init_state(str(video))
        predictor.add_new_mask(alone, 0, obj_id, mask)
        for frame_idx, masks in propagate(predictor, alone).items():
            torch.testing.assert_close(batched[frame_idx][row : row + 1], masks, atol=1e-4, rtol=0)

    obj_ids, _ = predictor.remove_object(together, 2)
    assert obj_ids == [1, 3]
    after_removal = propagate(predictor, together)
    for frame_idx, masks in after_removal.items():
        torch.testing.assert_close(masks, batched[frame_idx][[0, 2]], atol=1e-4, rtol=0)


def test_tracking_before_the_first_prompt_has_no_object_pointer_and_works(video):
    """Upstream issue 308: the official predictor crashes on frames before an object's prompt
    ("mat1 and mat2 must have the same dtype"); ours tracks them."""
    predictor = tiny_predictor()
    state = predictor.init_state(str(video))
    predictor.add_new_points_or_box(state, 3, 1, points=[[20, 20]], labels=[1])
    outputs = propagate(predictor, state, start_frame_idx=0)
    assert list(outputs) == list(range(NUM_FRAMES))
    assert all(torch.isfinite(masks).all() for masks in outputs.values())


@pytest.mark.parametrize("in_bf16, dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_memory_storage_dtype(video, in_bf16, dtype):
    predictor = tiny_predictor(memory_in_bfloat16=in_bf16)
    state = predictor.init_state(str(video))
    predictor.add_new_mask(state, 0, 1, square(8, 4))
    propagate(predictor, state, max_frame_num_to_track=2)
    outputs = state["output_dict_per_obj"][0]
    stored = [out["maskmem_features"] for part in outputs.values() for out in part.values()]
    assert len(stored) == 3 and all(features.dtype == dtype for features in stored)


def test_max_frame_num_to_track_processes_n_plus_one_frames(video):
    predictor = tiny_predictor()
    state = predictor.init_state(str(video))
    predictor.add_new_mask(state, 1, 1, square(8, 4))
    assert list(propagate(predictor, state, max_frame_num_to_track=2)) == [1, 2, 3]
    assert list(propagate(predictor, state, start_frame_idx=3, reverse=True, max_frame_num_to_track=1)) == [3, 2]
    assert list(propagate(predictor, state, start_frame_idx=0, reverse=True)) == []


def test_hole_filling_is_on_by_default(video):
    """With the default fill_hole_area=8 no background component of <= 8 pixels is left in the
    stored low-resolution masks; with 0 the outputs are left as the model gives them."""
    filled = tiny_predictor()
    assert filled.config.fill_hole_area == 8
    state = filled.init_state(str(video))
    filled.add_new_points_or_box(state, 0, 1, points=[[20, 20], [50, 40]], labels=[1, 0])
    propagate(filled, state)
    for part in state["output_dict_per_obj"][0].values():
        for out in part.values():
            labels, areas = connected_components(out["pred_masks"] <= 0)
            assert not ((labels > 0) & (areas <= 8)).any()

    unfilled = tiny_predictor(fill_hole_area=0)
    state = unfilled.init_state(str(video))
    unfilled.add_new_points_or_box(state, 0, 1, points=[[20, 20], [50, 40]], labels=[1, 0])
    propagate(unfilled, state)
    holes = 0
    for part in state["output_dict_per_obj"][0].values():
        for out in part.values():
            labels, areas = connected_components(out["pred_masks"] <= 0)
            holes += int(((labels > 0) & (areas <= 8)).sum())
    assert holes > 0, "the test video gives no small holes, so it cannot show the filling"


def test_clear_prompts_and_reset(video):
    predictor = tiny_predictor()
    state = predictor.init_state(str(video))
    predictor.add_new_mask(state, 0, 1, square(8, 4))
    predictor.add_new_mask(state, 2, 2, square(8, 30))
    frame_idx, obj_ids, masks = predictor.clear_all_prompts_in_frame(state, 2, 2)
    assert (frame_idx, obj_ids) == (2, [1, 2])
    assert (masks[1] == -1024.0).all()
    with pytest.raises(UserInputError, match="object id 2 has no prompt left"):
        propagate(predictor, state)
    predictor.reset_state(state)
    assert state["obj_ids"] == []
    with pytest.raises(UserInputError, match="no prompts"):
        propagate(predictor, state)


def test_bad_input_messages(video, tmp_path):
    predictor = tiny_predictor()
    state = predictor.init_state(str(video))
    with pytest.raises(UserInputError, match=r"frame_idx 5 is not a frame of .*5 frames.*0 to 4"):
        predictor.add_new_points_or_box(state, 5, 1, points=[[1, 1]], labels=[1])
    with pytest.raises(UserInputError, match=r"frame_idx -1 is not a frame"):
        predictor.add_new_mask(state, -1, 1, square(0, 0))
    with pytest.raises(UserInputError, match=r"obj_id must be an int.*'car'.*str"):
        predictor.add_new_points_or_box(state, 0, "car", points=[[1, 1]], labels=[1])
    with pytest.raises(UserInputError, match=r"obj_id must be an int.*1.5"):
        predictor.add_new_mask(state, 0, 1.5, square(0, 0))
    with pytest.raises(UserInputError, match=r"2 points but 1 labels"):
        predictor.add_new_points_or_box(state, 0, 1, points=[[1, 1], [2, 2]], labels=[1])
    with pytest.raises(UserInputError, match=r"together"):
        predictor.add_new_points_or_box(state, 0, 1, points=[[1, 1]])
    with pytest.raises(UserInputError, match=r"mask for object 1 on frame 0 .* is 24x64 but the video frames are 48x64"):
        predictor.add_new_mask(state, 0, 1, np.ones((24, 64), dtype=bool))
    assert state["obj_ids"] == [], "a rejected prompt must not register the object"
    with pytest.raises(UserInputError, match=r"no prompts .* add points, a box or a mask"):
        next(predictor.propagate_in_video(state))
    predictor.add_new_mask(state, 0, 1, square(8, 4))
    with pytest.raises(UserInputError, match=r"start_frame_idx 9 is not a frame"):
        next(predictor.propagate_in_video(state, start_frame_idx=9))
    with pytest.raises(UserInputError, match=r"cannot remove object id 4"):
        predictor.remove_object(state, 4, strict=True)
    with pytest.raises(UserInputError, match=r"no frames|not found"):
        predictor.init_state(str(tmp_path))


def test_clicks_and_boxes_outside_the_frame_are_refused(video, tmp_path):
    """Issue 14 case 8: a click at (500, -40) on a 64x48 video names the frame size and the point,
    in the predictor and in `predict --prompts`; normalize_coords=False takes 0..1."""
    predictor = tiny_predictor()
    state = predictor.init_state(str(video))
    with pytest.raises(UserInputError, match=r"click \(500, -40\) lies outside the 64x48 frame"):
        predictor.add_new_points_or_box(state, 0, 1, points=[[500, -40]], labels=[1])
    with pytest.raises(UserInputError, match=r"box corner \(70, 40\) lies outside the 64x48 frame"):
        predictor.add_new_points_or_box(state, 0, 1, box=[10, 5, 70, 40])
    with pytest.raises(UserInputError, match=r"click \(20, 20\) lies outside the 1x1 frame .*normalize_coords=False"):
        predictor.add_new_points_or_box(state, 0, 1, points=[[20, 20]], labels=[1], normalize_coords=False)
    assert state["obj_ids"] == [], "a rejected prompt must not register the object"
    predictor.add_new_points_or_box(state, 0, 1, points=[[0.5, 0.5]], labels=[1], normalize_coords=False)
    predictor.add_new_points_or_box(state, 0, 2, points=[[64, 48]], labels=[1], box=[0, 0, 64, 48])

    prompts = tmp_path / "clicks.json"
    prompts.write_text('[{"frame": 0, "obj_id": 1, "points": [[500, -40]], "labels": [1]}]')
    with pytest.raises(UserInputError, match=r"clicks.json prompt #0: click \(500, -40\) lies outside the 64x48"):
        check_prompts(click_prompts_from_json(prompts), state, video, [])
