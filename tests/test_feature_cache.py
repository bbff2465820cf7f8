"""The session's cache of image-encoder outputs, through the public predictor API: a correction and
a re-propagation give the logits of a predictor without cache while encoding only frames not
cached; the cache's memory stays within its bound, also when streaming."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sam2_video.predict.video_predictor import SAM2VideoPredictor
from conftest import present_object_predictor, write_moving_square_video

NUM_FRAMES = 8
VIDEO_HW = (48, 64)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_moving_square_video(tmp_path_factory.mktemp("video"), NUM_FRAMES, *VIDEO_HW)


def tiny_predictor(**options) -> SAM2VideoPredictor:
    return present_object_predictor(fill_hole_area=0, **options)


def count_encoder_calls(predictor: SAM2VideoPredictor) -> list[int]:
    """A forward hook on the (public) image encoder module: one entry per encoded image."""
    calls: list[int] = []
    predictor.model.image_encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    return calls


def interactive_session(predictor: SAM2VideoPredictor, video: Path, calls: list[int]) -> dict:
    """Clicks on frame 0, propagate, a correction on frame 4, propagate from 4, reverse from the end.
    Returns {(pass, frame): logits} and the encoder calls of each pass."""
    state = predictor.init_state(str(video))
    predictor.add_new_points_or_box(state, 0, 1, points=[[18, 20]], labels=[1])
    predictor.add_new_points_or_box(state, 0, 2, box=[40, 30, 60, 46])
    out, calls_per_pass = {}, {}
    passes = (("forward", {}), ("again", {"start_frame_idx": 4}),
              ("reverse", {"start_frame_idx": NUM_FRAMES - 1, "reverse": True}))
    for name, kwargs in passes:
        if name == "again":
            calls.clear()
            _, _, masks = predictor.add_new_points_or_box(state, 4, 1, points=[[40, 12]], labels=[0],
                                                          clear_old_points=False)
            out["correction", 4] = masks.clone()
            calls_per_pass["correction"] = len(calls)
        calls.clear()
        for frame_idx, _, masks in predictor.propagate_in_video(state, **kwargs):
            out[name, frame_idx] = masks.clone()
        calls_per_pass[name] = len(calls)
    return {"outputs": out, "calls": calls_per_pass, "state": state}


def test_repropagation_reuses_cached_frames_with_identical_logits(video):
    uncached = tiny_predictor(feature_cache_mib=0)
    uncached_run = interactive_session(uncached, video, count_encoder_calls(uncached))
    # without a cache: frame 0 again for its memory, the corrected frame for the correction, for its
    # memory and for its re-tracking (it is not a conditioning frame), frame 0 skipped in reverse
    assert uncached_run["calls"] == {"forward": NUM_FRAMES, "correction": 1, "again": NUM_FRAMES - 4 + 1,
                                     "reverse": NUM_FRAMES - 1}
    assert uncached_run["state"].feature_cache_bytes == 0

    cached = tiny_predictor()
    cached_run = interactive_session(cached, video, count_encoder_calls(cached))
    # frame 0 was encoded by init_state; after that every frame is encoded once in the whole session
    assert cached_run["calls"] == {"forward": NUM_FRAMES - 1, "correction": 0, "again": 0, "reverse": 0}
    assert cached_run["outputs"].keys() == uncached_run["outputs"].keys()
    for key, logits in uncached_run["outputs"].items():
        assert torch.equal(cached_run["outputs"][key], logits), key


def test_lru_window_recomputes_evicted_frames(video):
    predictor = tiny_predictor(feature_cache_frames=3)
    calls = count_encoder_calls(predictor)
    run = interactive_session(predictor, video, calls)
    # after the forward pass frames 5, 6, 7 are cached; the correction on 4 encodes 4 (evicting 5);
    # its memory and re-tracking find it; propagating 4..7 encodes 5 (evicting 6), then 6, then 7; the reverse pass 7..0 finds 7, 6, 5
    # and encodes 4..1 (frame 0 is a conditioning frame, not tracked)
    assert run["calls"] == {"forward": NUM_FRAMES - 1, "correction": 1, "again": 3, "reverse": 4}
    assert len(run["state"].feature_cache) == 3
    reference = interactive_session(tiny_predictor(feature_cache_mib=0), video, [])
    for key, logits in reference["outputs"].items():
        assert torch.equal(run["outputs"][key], logits), key


def test_cache_memory_stays_within_its_bound_when_streaming(video):
    probe = tiny_predictor()
    state = probe.init_state(str(video))
    one_frame = state.feature_cache_bytes  # frame 0, position encodings included
    bound_mib = 2.5 * one_frame / 2**20
    predictor = tiny_predictor(feature_cache_mib=bound_mib)
    state = predictor.init_state(str(video))
    predictor.add_new_points_or_box(state, 0, 1, points=[[18, 20]], labels=[1])
    for _ in predictor.propagate_in_video(state, release_old_outputs=True):
        assert 0 < state.feature_cache_bytes <= bound_mib * 2**20
    # the position encodings are shared, so more than 2 frames fit in 2.5 frames' worth
    assert len(state.feature_cache) > 2
