"""Build SAM2 from a preset, and load / save checkpoints in the official format `{"model": state_dict}`."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from sam2_video.errors import UserInputError
from sam2_video.io import atomic_path
from sam2_video.model.presets import SAM2Config, sam2_config
from sam2_video.model.sam2 import SAM2

MAX_KEYS_IN_ERROR = 5


def build_sam2(
    config: str | SAM2Config,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
) -> SAM2:
    """A SAM2 model in eval mode on `device`, with random weights or loaded strictly from `checkpoint`.

    config: a preset name ('sam2.1_hiera_t', 'sam2.1_hiera_tiny', ...), an official config path
    ('configs/sam2.1/sam2.1_hiera_t.yaml') or a SAM2Config. image_size overrides the preset's (1024).
    """
    try:
        cfg = sam2_config(config, image_size=image_size)
    except ValueError as err:
        raise UserInputError(str(err)) from None
    model = SAM2(cfg)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.to(device).eval()


def _describe(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_IN_ERROR])
    more = f" (and {len(keys) - MAX_KEYS_IN_ERROR} more)" if len(keys) > MAX_KEYS_IN_ERROR else ""
    return f"{shown}{more}"


def load_checkpoint(model: SAM2, path: str | os.PathLike) -> None:
    """Load an official-format checkpoint `{"model": state_dict}` into `model`, strictly.

    Raises one UserInputError naming the file for a missing file, a file that is not a SAM2
    checkpoint, or a state dict whose keys or shapes differ from the model's (first few of each).
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: checkpoint file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the unpickler raises many types on a file that is not a checkpoint
        raise UserInputError(f"{path}: not a PyTorch checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        found = sorted(checkpoint)[:MAX_KEYS_IN_ERROR] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise UserInputError(f"{path}: not a SAM2 checkpoint: expected a dict with a 'model' state dict, found {found}")
    state_dict = checkpoint["model"]
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
                  if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys: {_describe(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys: {_describe(unexpected)}")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches: {_describe(mismatched)}")
        raise UserInputError(
            f"{path}: checkpoint does not match model {model.config.name!r}: {'; '.join(problems)}"
        )
    model.load_state_dict(state_dict, strict=True)


def save_checkpoint(model: SAM2, path: str | os.PathLike) -> None:
    """Write `{"model": state_dict}` (the official format) to `path` atomically."""
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"model": state_dict}, tmp)
