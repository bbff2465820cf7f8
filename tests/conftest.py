"""Shared test fixtures: the real data folder and the official reference implementation."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data() -> Path:
    """`../shared/data` beside the checkout; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (expected ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture
def davis_root(shared_data: Path) -> Path:
    root = shared_data / "davis2016_val_subset"
    if not root.is_dir():
        pytest.skip(f"DAVIS 2016 subset not found at {root}")
    return root


def require_reference():
    """Import the official SAM2 code (pip sam2==1.1.0); skip with the install command if missing."""
    try:
        import sam2  # noqa: F401
    except ImportError:
        message = "reference implementation missing: pip install --no-deps sam2==1.1.0 hydra-core iopath"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI must run the comparisons with the reference, not skip them)")
        pytest.skip(message)


def make_decisive(model) -> None:
    """Seeded random weights made decisive as ../shared/refharness does: every object counts as present
    (object-score bias +5) and mask logits are scaled x20, so that rounding cannot flip a mask pixel."""
    decoder = model.sam_mask_decoder
    with torch.no_grad():
        decoder.pred_obj_score_head.layers[-1].bias += 5.0
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight *= 20.0
            mlp.layers[-1].bias *= 20.0


def write_moving_square_video(folder: Path, num_frames: int, height: int = 48, width: int = 64) -> Path:
    """PNG frames of noise with a red 20x20 square moving 4 px right per frame, rows 10-30."""
    rng = np.random.default_rng(0)
    for t in range(num_frames):
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        frame[10:30, 8 + 4 * t : 28 + 4 * t] = (230, 30, 30)
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    return folder


def present_object_predictor(**options):
    """The tiny-preset video predictor with seeded random weights whose objects count as present
    (object-score bias +5), so that tracking keeps producing masks."""
    from sam2_video.predict.video_predictor import build_sam2_video_predictor

    torch.manual_seed(0)
    predictor = build_sam2_video_predictor("sam2.1_tiny_test", **options)
    with torch.no_grad():
        predictor.model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 5.0
    return predictor
