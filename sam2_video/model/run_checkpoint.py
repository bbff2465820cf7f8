"""Reading a training run's checkpoint (`last.pt`, `best.pt`; written by `sam2_video.train.checkpoint`).

Here, below train/ and predict/, because both read them: resume, STCN prediction, export, annotate.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from sam2_video.config import upgrade_stored_config
from sam2_video.errors import UserInputError


def _load(path: Path, mmap: bool) -> dict[str, Any]:
    if not path.is_file():
        raise UserInputError(f"{path}: checkpoint not found")
    try:
        # a legacy (pre-zip) file, or a file that is no checkpoint, cannot be memory-mapped: read it whole
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as err:  # the unpickler raises many types (KeyError, IndexError, ...) on other files
        raise UserInputError(f"{path}: not a PyTorch checkpoint (torch.load failed: {type(err).__name__})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise UserInputError(f"{path}: expected a checkpoint dict with a 'model' entry")
    if "config" in checkpoint:
        checkpoint["config"] = upgrade_stored_config(checkpoint["config"])
    return checkpoint


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU, its stored run config (`config`) in today's shape; raise
    `UserInputError` if it is missing or not a checkpoint. Official weights (`{"model": ...}`) load too."""
    return _load(Path(path), mmap=False)


def stored_run_config(path: str | Path) -> dict[str, Any] | None:
    """The run config a training checkpoint stores (today's shape), None for official weights; errors as
    `load_training_checkpoint`. The tensors are memory-mapped, not read: predict, annotate and export
    learn how a run was built before they load its weights, without reading the file twice."""
    return _load(Path(path), mmap=True).get("config")
