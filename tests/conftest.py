"""Shared test fixtures: the real data folder and the official reference implementation."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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
