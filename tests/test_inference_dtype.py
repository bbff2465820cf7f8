"""`dtype="bfloat16"` (bf16 autocast) against float32 on real DAVIS frames: float32 outputs, masks
(logit > 0) agreeing on >= 99% of the pixels; an unknown dtype is refused with the choices."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam2_video.errors import UserInputError
from sam2_video.predict.video_predictor import SAM2VideoPredictor, build_sam2_video_predictor
from conftest import make_decisive

NUM_FRAMES = 5
MIN_AGREEMENT = 0.99


def decisive_tiny_predictor(dtype: str) -> SAM2VideoPredictor:
    """Seeded random weights with refharness's tweaks (object score +5, mask logits x20), so that
    the > 0 thresholds are not decided by noise."""
    torch.manual_seed(0)
    predictor = build_sam2_video_predictor("sam2.1_tiny_test", fill_hole_area=0, dtype=dtype)
    make_decisive(predictor.model)
    return predictor


def track(predictor: SAM2VideoPredictor, video: Path, first_mask: np.ndarray) -> list[torch.Tensor]:
    state = predictor.init_state(str(video))
    ys, xs = np.nonzero(first_mask)
    predictor.add_new_points_or_box(state, 0, 1, points=[[xs.mean(), ys.mean()]], labels=[1])
    predictor.add_new_points_or_box(state, 0, 2, box=[xs.min(), ys.min(), xs.max(), ys.max()])
    return [masks.clone() for _, _, masks in predictor.propagate_in_video(state)]


def test_bfloat16_masks_agree_with_float32(davis_root: Path, tmp_path: Path):
    frames = sorted((davis_root / "JPEGImages" / "blackswan").glob("*.jpg"))[:NUM_FRAMES]
    for frame in frames:
        shutil.copy(frame, tmp_path / frame.name)
    first_mask = np.array(Image.open(davis_root / "Annotations" / "blackswan" / f"{frames[0].stem}.png")) > 0

    expected = track(decisive_tiny_predictor("float32"), tmp_path, first_mask)
    got = track(decisive_tiny_predictor("bfloat16"), tmp_path, first_mask)
    assert len(got) == len(expected) == NUM_FRAMES
    assert all(masks.dtype == torch.float32 for masks in got)
    agreement = np.mean([((a > 0) == (b > 0)).float().mean().item() for a, b in zip(got, expected)])
    assert agreement >= MIN_AGREEMENT, f"bf16 masks agree with float32 on {agreement:.2%} of the pixels"
    assert (torch.cat(expected) > 0).any()  # not trivially agreeing on empty masks


def test_unknown_dtype_is_refused():
    with pytest.raises(UserInputError, match="float32, bfloat16"):
        build_sam2_video_predictor("sam2.1_tiny_test", dtype="float16")
