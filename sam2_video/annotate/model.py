"""The SAM2 video predictor for `sam2-video annotate`, from an official, exported or training checkpoint."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from sam2_video.config import stored_model_section
from sam2_video.errors import UserInputError
from sam2_video.model.presets import PRESET_NAMES, sam2_config
from sam2_video.model.run_checkpoint import stored_run_config
from sam2_video.predict.video_predictor import SAM2VideoPredictor, build_sam2_video_predictor
from sam2_video.train.family import model_family
from sam2_video.train.sam2_family import SAM2Family


def build_predictor(checkpoint: Path | None, preset: str | None, image_size: int | None,
                    device: torch.device) -> SAM2VideoPredictor:
    """SAM2 from `checkpoint`: a training run's last.pt/best.pt (its preset, image size and memory
    size are the run's), or official/exported weights (preset from `preset` or the file name).
    Without a checkpoint the weights are random (with a warning). STCN runs are refused.

    `add_all_frames_to_correct_as_cond=True` (an official option): a click on a frame reached by
    propagation makes it a conditioning frame, so the correction is kept when propagating from it
    (with the default the official predictor re-tracks that frame and drops the correction)."""
    overrides: dict[str, Any] = {}
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise UserInputError(f"--checkpoint {checkpoint}: file not found")
        run = stored_model_section(stored_run_config(checkpoint), f"--checkpoint {checkpoint}")
        if run is not None:
            if not isinstance(model_family(run), SAM2Family):
                raise UserInputError(f"--checkpoint {checkpoint}: a {run.model!r} training run; annotate needs "
                                     "SAM2, which takes clicks and boxes (STCN is prompted by masks only)")
            if image_size is not None and image_size != run.image_size:
                raise UserInputError(f"--image-size {image_size}: {checkpoint} was trained at {run.image_size} px; "
                                     "leave --image-size out to use it")
            preset = preset or run.config_path
            image_size = run.image_size
            overrides.update(run.sam2_overrides())
        elif preset is None:
            try:
                sam2_config(checkpoint.name)
            except ValueError:
                raise UserInputError(f"--checkpoint {checkpoint}: its file name names no SAM2 preset; pass --config "
                                     f"PRESET (one of {', '.join(PRESET_NAMES)})") from None
            preset = checkpoint.name
    elif preset is None:
        raise UserInputError("give --checkpoint FILE (SAM2 weights or a training run's last.pt) or --config PRESET")
    else:
        print(f"warning: no --checkpoint: {preset} gets random weights, so the masks will be meaningless "
              "(give SAM2 weights or a training run's last.pt with --checkpoint)", file=sys.stderr)
    try:
        return build_sam2_video_predictor(preset, checkpoint=None if checkpoint is None else str(checkpoint),
                                          device=device, image_size=image_size,
                                          add_all_frames_to_correct_as_cond=True, **overrides)
    except ValueError as err:
        if isinstance(err, UserInputError):
            raise
        raise UserInputError(str(err)) from None
