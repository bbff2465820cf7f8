"""The video predictor against the official `SAM2VideoPredictor` on the same random weights.

Both sides: fp32 on the CPU, hole filling off (the official code skips it on the CPU), the
random-weight tweaks of refharness/ref_dump.py (object-score bias +5, mask logits x20, so that
the > 0 thresholds are not decided by noise) and, on the reference, ref_dump's exact fp32 cast
of the bf16 memory before memory attention (without it the official code crashes where a
tracked frame has no object pointer, facebookresearch/sam2#308; case (c) runs into that).
Every mask returned by a prompt call or yielded by propagation must match: logits within 1e-3
and thresholded masks equal on >= 99.9% of the pixels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require_reference
from sam2_video.predict.video_predictor import SAM2VideoPredictor, build_sam2_video_predictor

LOGIT_ATOL = 1e-3
MIN_SIGN_AGREEMENT = 0.999
SYNTHETIC_FRAMES = 6
DAVIS_SEQUENCE = "blackswan"

Step = tuple[str, dict[str, Any]]
Output = tuple[str, int, list[int], torch.Tensor]


def _official_config_path(preset: str) -> str:
    version = preset.split("_hiera_")[0]
    return f"configs/{version}/{preset}.yaml"


def build_both(preset: str, image_size: int, tmp_path: Path, seed: int = 0,
               **config: Any) -> tuple[Any, SAM2VideoPredictor, list[int]]:
    """(official predictor, ours, [number of times the official memory attention got bf16
    memory, i.e. hit facebookresearch/sam2#308]) with the same random weights, saved and
    loaded as a checkpoint; `config` overrides model settings on both sides."""
    require_reference()
    from sam2.build_sam import build_sam2_video_predictor as build_official

    torch.manual_seed(seed)
    overrides = [f"++model.image_size={image_size}"] + [f"++model.{key}={value}" for key, value in config.items()]
    official = build_official(_official_config_path(preset), None, device="cpu", hydra_overrides_extra=overrides)
    with torch.no_grad():
        official.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 5.0
        for mlp in official.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight *= 20.0
            mlp.layers[-1].bias *= 20.0
    official.fill_hole_area = 0

    bf16_memory_calls = [0]

    def memory_to_fp32(module, args, kwargs):
        if kwargs["memory"].dtype != torch.float32:
            bf16_memory_calls[0] += 1
            kwargs["memory"] = kwargs["memory"].float()
        return args, kwargs

    official.memory_attention.register_forward_pre_hook(memory_to_fp32, with_kwargs=True)
    checkpoint = tmp_path / "weights.pt"
    torch.save({"model": official.state_dict()}, checkpoint)
    ours = build_sam2_video_predictor(preset, checkpoint=checkpoint, image_size=image_size, fill_hole_area=0, **config)
    return official, ours, bf16_memory_calls


def run_session(predictor: Any, video: Path, steps: list[Step]) -> list[Output]:
    """Apply prompt and propagation steps; collect every returned or yielded mask."""
    state = predictor.init_state(str(video))
    outputs: list[Output] = []
    for kind, kwargs in steps:
        if kind == "propagate":
            for frame_idx, obj_ids, masks in predictor.propagate_in_video(state, **kwargs):
                outputs.append((kind, frame_idx, list(obj_ids), masks.clone()))
            continue
        if kind == "mask":
            frame_idx, obj_ids, masks = predictor.add_new_mask(state, **kwargs)
        else:
            frame_idx, obj_ids, masks = predictor.add_new_points_or_box(state, **kwargs)
        outputs.append((kind, frame_idx, list(obj_ids), masks.clone()))
    return outputs


def assert_same_outputs(ours: list[Output], official: list[Output]) -> None:
    assert [o[:3] for o in ours] == [o[:3] for o in official]
    for (kind, frame_idx, _, mask), (_, _, _, expected) in zip(ours, official):
        assert mask.shape == expected.shape and mask.dtype == torch.float32
        where = f"{kind} output on frame {frame_idx}"
        max_diff = (mask - expected).abs().max().item()
        assert max_diff <= LOGIT_ATOL, f"{where}: logits differ by up to {max_diff:.2e}"
        agreement = ((mask > 0) == (expected > 0)).float().mean().item()
        assert agreement >= MIN_SIGN_AGREEMENT, f"{where}: masks agree on only {agreement:.4%} of pixels"
    positive = torch.stack([(o[3] > 0).float().mean() for o in official if o[0] == "propagate"])
    assert (positive > 0).all() and (positive < 1).all(), "degenerate test: masks all empty or all full"


def run_both(preset: str, image_size: int, video: Path, steps: list[Step], tmp_path: Path,
             **config: Any) -> tuple[list[Output], int]:
    """Our outputs (checked against the official ones) and how often the official run hit #308."""
    official, ours, bf16_memory_calls = build_both(preset, image_size, tmp_path, **config)
    expected = run_session(official, video, steps)
    got = run_session(ours, video, steps)
    assert_same_outputs(got, expected)
    return got, bf16_memory_calls[0]


# ---------------------------------------------------------------------------- videos
@pytest.fixture(scope="module")
def synthetic_video(tmp_path_factory) -> tuple[Path, list[list[np.ndarray]]]:
    """6 JPEG frames 240x320 with three moving shapes; returns (folder, masks[t][k] bool HxW)."""
    folder = tmp_path_factory.mktemp("synthetic")
    return folder, write_shapes_video(folder, SYNTHETIC_FRAMES)


@pytest.fixture(scope="module")
def long_synthetic_video(tmp_path_factory) -> tuple[Path, list[list[np.ndarray]]]:
    """The same shapes over 12 frames: more than the memory bank's 7 frames."""
    folder = tmp_path_factory.mktemp("long_synthetic")
    return folder, write_shapes_video(folder, 12)


def write_shapes_video(folder: Path, num_frames: int) -> list[list[np.ndarray]]:
    """JPEG frames 240x320 with a disc, a rectangle and an ellipse moving; returns masks[t][k] bool HxW."""
    height, width = 240, 320
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack([90 + 60 * np.sin(xx / 23) * np.cos(yy / 31),
                           110 + 50 * np.cos(xx / 17 + yy / 41),
                           100 + 70 * xx / width], axis=-1)
    masks = []
    for t in range(num_frames):
        frame = background.copy()
        disc = (xx - (80 + 8 * t)) ** 2 + (yy - 120) ** 2 < 30**2
        rectangle = (abs(xx - (220 - 6 * t)) < 35) & (abs(yy - (70 + 4 * t)) < 25)
        ellipse = ((xx - 230) / 40) ** 2 + ((yy - (180 - 3 * t)) / 22) ** 2 < 1
        for shape, colour in ((disc, (220, 40, 40)), (rectangle, (40, 200, 60)), (ellipse, (30, 60, 220))):
            frame[shape] = colour
        Image.fromarray(frame.clip(0, 255).astype(np.uint8)).save(folder / f"{t:05d}.jpg", quality=95)
        masks.append([disc, rectangle, ellipse])
    return masks


@pytest.fixture
def davis_video(davis_root: Path, tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A folder linking the first 6 frames of a DAVIS sequence; returns (folder, first-frame mask)."""
    frames = sorted((davis_root / "JPEGImages" / DAVIS_SEQUENCE).glob("*.jpg"))[:SYNTHETIC_FRAMES]
    if not frames:
        pytest.skip(f"no frames in {davis_root / 'JPEGImages' / DAVIS_SEQUENCE}")
    folder = tmp_path / "davis"
    folder.mkdir()
    for path in frames:
        (folder / path.name).symlink_to(path)
    annotation = davis_root / "Annotations" / DAVIS_SEQUENCE / f"{frames[0].stem}.png"
    return folder, np.array(Image.open(annotation).convert("L")) > 0


def first_frames(folder: Path, count: int, tmp_path: Path) -> Path:
    subset = tmp_path / f"first{count}"
    subset.mkdir()
    for path in sorted(folder.iterdir())[:count]:
        (subset / path.name).symlink_to(path.resolve())
    return subset


def centre_click(mask: np.ndarray) -> list[list[float]]:
    ys, xs = np.nonzero(mask)
    return [[float(xs.mean()), float(ys.mean())]]


def bounding_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


# ---------------------------------------------------------------------------- cases
def test_a_one_click_real_frames_1024(davis_video, tmp_path):
    """(a) one object from one click, sam2.1_hiera_t at the official 1024, 3 real frames."""
    folder, mask = davis_video
    steps = [("points", dict(frame_idx=0, obj_id=1, points=centre_click(mask), labels=[1])),
             ("propagate", {})]
    outputs, _ = run_both("sam2.1_hiera_t", 1024, first_frames(folder, 3, tmp_path), steps, tmp_path)
    assert [o[1] for o in outputs if o[0] == "propagate"] == [0, 1, 2]


def test_b_three_objects_click_box_mask(synthetic_video, tmp_path):
    """(b) three objects prompted on one frame by a click, a box and a mask, tracked as one batch."""
    folder, masks = synthetic_video
    steps = [("points", dict(frame_idx=0, obj_id=1, points=centre_click(masks[0][0]), labels=[1])),
             ("box", dict(frame_idx=0, obj_id=2, box=bounding_box(masks[0][1]))),
             ("mask", dict(frame_idx=0, obj_id=3, mask=masks[0][2])),
             ("propagate", {})]
    outputs, _ = run_both("sam2.1_hiera_t", 512, first_frames(folder, 4, tmp_path), steps, tmp_path)
    assert outputs[-1][2] == [1, 2, 3] and outputs[-1][3].shape == (3, 1, 240, 320)


def test_b_three_objects_real_frames(davis_video, tmp_path):
    folder, mask = davis_video
    background_box = [10.0, 10.0, 150.0, 120.0]
    corner = np.zeros_like(mask)
    corner[-100:, -160:] = True
    steps = [("points", dict(frame_idx=0, obj_id=5, points=centre_click(mask) + [[10.0, 470.0]],
                             labels=[1, 0])),
             ("box", dict(frame_idx=0, obj_id=9, box=background_box)),
             ("mask", dict(frame_idx=0, obj_id=2, mask=corner)),
             ("propagate", {})]
    run_both("sam2.1_hiera_t", 256, folder, steps, tmp_path)


def test_c_object_added_on_a_later_frame(synthetic_video, tmp_path):
    """(c) a second object appears on frame 2 after a first propagation; propagating again from
    frame 0 tracks it on frames before its prompt, where frame 0 has no object pointer (the
    official crash case, facebookresearch/sam2#308)."""
    folder, masks = synthetic_video
    steps = [("points", dict(frame_idx=0, obj_id=1, points=centre_click(masks[0][0]), labels=[1])),
             ("propagate", {}),
             ("box", dict(frame_idx=2, obj_id=2, box=bounding_box(masks[2][1]))),
             ("propagate", {})]
    outputs, bf16_memory_calls = run_both("sam2.1_hiera_t", 256, first_frames(folder, 4, tmp_path), steps, tmp_path)
    assert [o[1] for o in outputs if o[0] == "propagate"] == list(range(4)) * 2
    assert outputs[-1][2] == [1, 2]
    assert bf16_memory_calls == 1, "object 2 on frame 0 should be the official crash case"


def test_d_reverse_propagation_sam2(davis_video, tmp_path):
    """(d) reverse propagation from the last frame (SAM2.0 preset); max_frame_num_to_track=3
    processes 4 frames, as the official code does."""
    folder, mask = davis_video
    steps = [("mask", dict(frame_idx=5, obj_id=1, mask=mask)),
             ("propagate", dict(reverse=True, max_frame_num_to_track=3)),
             ("propagate", dict(start_frame_idx=2, reverse=False))]
    outputs, _ = run_both("sam2_hiera_t", 256, folder, steps, tmp_path)
    assert [o[1] for o in outputs if o[0] == "propagate"] == [5, 4, 3, 2, 2, 3, 4, 5]


def test_e_correction_click_then_repropagation(synthetic_video, tmp_path):
    """(e) two clicks correcting a tracked frame (the second added to the first), then
    propagation over the following frames, which remember the corrected mask."""
    folder, masks = synthetic_video
    steps = [("points", dict(frame_idx=0, obj_id=1, points=centre_click(masks[0][0]), labels=[1])),
             ("points", dict(frame_idx=0, obj_id=2, points=centre_click(masks[0][1]), labels=[1])),
             ("propagate", {}),
             ("points", dict(frame_idx=3, obj_id=1, points=centre_click(masks[3][0]), labels=[1])),
             ("points", dict(frame_idx=3, obj_id=1, points=[[5.0, 5.0]], labels=[0], clear_old_points=False)),
             ("propagate", dict(start_frame_idx=4))]
    outputs, _ = run_both("sam2.1_hiera_t", 256, folder, steps, tmp_path)
    tracked = [o for o in outputs if o[0] == "propagate"]
    assert [o[1] for o in tracked] == [0, 1, 2, 3, 4, 5, 4, 5]
    before, after = tracked[4][3], tracked[6][3]  # frame 4, first and second pass
    assert not torch.equal(before[0], after[0]), "the correction on frame 3 changed nothing"
    torch.testing.assert_close(before[1], after[1], atol=1e-4, rtol=0)  # object 2 was not corrected


def test_f_long_video_with_three_conditioning_frames_and_a_cap(long_synthetic_video, tmp_path):
    """(f) 12 frames, more than the 7-frame memory bank, so old memories drop out; three conditioning
    frames (a mask, a box, a click) of which memory attention may use only the 2 closest
    (max_cond_frames_in_attn=2), for two objects."""
    folder, masks = long_synthetic_video
    steps = [("mask", dict(frame_idx=0, obj_id=1, mask=masks[0][0])),
             ("points", dict(frame_idx=0, obj_id=3, points=centre_click(masks[0][2]), labels=[1])),
             ("box", dict(frame_idx=5, obj_id=1, box=bounding_box(masks[5][0]))),
             ("points", dict(frame_idx=9, obj_id=1, points=centre_click(masks[9][0]), labels=[1])),
             ("propagate", {})]
    outputs, _ = run_both("sam2.1_hiera_t", 256, folder, steps, tmp_path, max_cond_frames_in_attn=2)
    assert [o[1] for o in outputs if o[0] == "propagate"] == list(range(12))


def test_g_corrections_become_conditioning_frames(long_synthetic_video, tmp_path):
    """(g) add_all_frames_to_correct_as_cond: clicks on tracked frames 3 and 5 make them conditioning
    frames, which the frames after them attend to beyond the 7-frame memory."""
    folder, masks = long_synthetic_video
    steps = [("points", dict(frame_idx=0, obj_id=1, points=centre_click(masks[0][0]), labels=[1])),
             ("propagate", dict(max_frame_num_to_track=5)),
             ("points", dict(frame_idx=3, obj_id=1, points=centre_click(masks[3][0]), labels=[1])),
             ("points", dict(frame_idx=5, obj_id=1, points=[[5.0, 5.0]], labels=[0])),
             ("points", dict(frame_idx=5, obj_id=1, points=centre_click(masks[5][0]), labels=[1],
                             clear_old_points=False)),
             ("propagate", dict(start_frame_idx=3))]
    outputs, _ = run_both("sam2.1_hiera_t", 256, folder, steps, tmp_path, add_all_frames_to_correct_as_cond=True)
    assert [o[1] for o in outputs if o[0] == "propagate"] == list(range(6)) + list(range(3, 12))


def test_h_interactive_session_retracks_only_the_corrected_object(synthetic_video, tmp_path):
    """(h) the annotate page's session (corrections become conditioning frames): three objects
    clicked on frame 0, propagated, object 1 corrected on frame 2, propagated from frame 2, then
    backwards from the last frame. Ours tracks objects 2 and 3 on frames 2.. once (their memory did
    not change, so their stored outputs are reused) and still returns the official masks."""
    folder, masks = synthetic_video
    official, ours, _ = build_both("sam2.1_hiera_t", 256, tmp_path, add_all_frames_to_correct_as_cond=True)
    steps = [("points", dict(frame_idx=0, obj_id=k + 1, points=centre_click(masks[0][k]), labels=[1]))
             for k in range(3)]
    steps += [("propagate", {}),
              ("points", dict(frame_idx=2, obj_id=1, points=[[5.0, 5.0]], labels=[0], clear_old_points=False)),
              ("propagate", dict(start_frame_idx=2)),
              ("propagate", dict(start_frame_idx=SYNTHETIC_FRAMES - 1, reverse=True))]
    batch_sizes: list[int] = []
    ours.model.memory_attention.register_forward_hook(lambda module, args, out: batch_sizes.append(out.shape[1]))
    got = run_session(ours, folder, steps)
    assert_same_outputs(got, run_session(official, folder, steps))
    forward, correction = [3] * (SYNTHETIC_FRAMES - 1), [1]
    repropagation = [1] * (SYNTHETIC_FRAMES - 3)  # frames 3.. of object 1; frame 2 is its conditioning frame
    assert batch_sizes[: len(forward) + len(correction) + len(repropagation)] == forward + correction + repropagation
