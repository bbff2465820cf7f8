"""Training checkpoints: atomic writes, loading with clear errors, and the RNG states for exact resume.

A training checkpoint (`last.pt`, `best.pt`) is a dict with keys
`model` (full state dict), `optimizer`, `scheduler`, `scaler`, `epoch` (epochs finished),
`batches_in_epoch` (batches of the current epoch consumed), `steps` (optimizer steps),
`loss` (last logged loss terms), `time_elapsed` (training seconds), `best_meter_values`
(e.g. {"J&F": 71.3, "step": 400}), `config` (the resolved `RunConfig.to_dict()`), `rng`
(torch / CUDA / numpy / python RNG states) and `format` ("sam2_video.train/1").
"""
from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sam2_video.errors import UserInputError
from sam2_video.io import atomic_path

CHECKPOINT_FORMAT = "sam2_video.train/1"


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write `payload` with torch.save so that `path` is either the old file or the complete new one."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU; raise `UserInputError` if it is missing or not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise UserInputError(f"{path}: not a readable PyTorch checkpoint ({err})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise UserInputError(f"{path}: expected a checkpoint dict with a 'model' entry")
    return checkpoint


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG the training step may draw from."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
