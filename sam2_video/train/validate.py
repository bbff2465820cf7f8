"""Validation during training (SAM2 or STCN): semi-supervised VOS on held-out videos, scored by J&F.

Each video of a DAVIS-layout folder (`JPEGImages/<video>/<frame>.jpg`, `Annotations/<video>/<frame>.png`)
is tracked by the video predictor from its annotation, exactly as `sam2-video predict --annotations`
does: every object gets its mask on the first annotated frame where it appears and is tracked from
there on (SAM2: objects appearing later start on their own first frame, as the official
`vos_inference.py` does; STCN adds them to its running pass). Predictions are written as palettized
PNGs (each pixel: the object with the highest logit, if > 0) and scored with the DAVIS evaluator.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from sam2_video.errors import UserInputError
from sam2_video.evaluate.davis import evaluate_davis
from sam2_video.model.sam2 import SAM2
from sam2_video.model.stcn import STCN
from sam2_video.predict.masks_io import write_palette_png
from sam2_video.predict.stcn_predictor import STCNVideoPredictor
from sam2_video.predict.tracking import VideoPredictor, mask_prompts_from_annotations, track_video
from sam2_video.predict.video_predictor import SAM2VideoPredictor


def _video_folders(val_root: Path) -> list[tuple[Path, Path]]:
    """(frames folder, annotation folder) of every video of a DAVIS-layout root."""
    images, annotations = val_root / "JPEGImages", val_root / "Annotations"
    if not images.is_dir() or not annotations.is_dir():
        raise UserInputError(
            f"validation data {val_root}: expected DAVIS layout with JPEGImages/<video>/ and Annotations/<video>/"
        )
    videos = [(images / a.name, a) for a in sorted(annotations.iterdir()) if a.is_dir() and any(a.glob("*.png"))]
    missing = [str(frames) for frames, _ in videos if not frames.is_dir()]
    if missing:
        raise UserInputError(f"validation data {val_root}: annotated videos without frames: {', '.join(missing)}")
    if not videos:
        raise UserInputError(f"validation data {val_root}: no annotated video in {annotations}")
    return videos


def predict_video(
    predictor: VideoPredictor,
    frames_folder: Path,
    annotation_folder: Path,
    out_folder: Path,
    objects_start_together: bool = False,
) -> None:
    """Track the annotated objects of one video and write `out_folder/<frame>.png` for every frame.

    Every object is prompted with its mask on the first annotation (named like its frame) where it
    appears; `objects_start_together` as in `track_video` (True for STCN).
    """
    state = predictor.init_state(str(frames_folder))
    frame_names = state["frame_names"]
    prompts = mask_prompts_from_annotations(
        annotation_folder, frame_names, (state["video_height"], state["video_width"]), frames_folder
    )
    for frame_idx, ids in track_video(predictor, state, prompts, objects_start_together):
        write_palette_png(out_folder / f"{frame_names[frame_idx]}.png", ids)


def _validate(
    model: nn.Module,
    make_predictor: Callable[[], VideoPredictor],
    val_root: Path,
    out_dir: str | os.PathLike | None,
    objects_start_together: bool,
) -> dict[str, float]:
    """Predict every video of `val_root` with `make_predictor()` (a predictor on `model`, which it puts
    in eval mode) and score it; the model is left in the train/eval mode it had."""
    videos = _video_folders(val_root)
    was_training = model.training
    try:
        predictor = make_predictor()
        with tempfile.TemporaryDirectory(prefix="sam2_video_val_") as tmp:
            pred_root = Path(out_dir) if out_dir is not None else Path(tmp)
            with torch.no_grad():
                for frames_folder, annotation_folder in videos:
                    predict_video(predictor, frames_folder, annotation_folder, pred_root / annotation_folder.name,
                                  objects_start_together)
            summary = evaluate_davis(val_root / "Annotations", pred_root,
                                     sequences=[a.name for _, a in videos]).summary()
    finally:
        model.train(was_training)
    return {"J&F": summary["J&F-Mean"], "J": summary["J-Mean"], "F": summary["F-Mean"]}


def _existing_folder(val_root: str | os.PathLike) -> Path:
    val_root = Path(val_root)
    if not val_root.is_dir():
        raise UserInputError(f"validation data folder not found: {val_root}")
    return val_root


def validate_sam2(
    model: SAM2, val_root: str | os.PathLike, image_size: int, out_dir: str | os.PathLike | None = None
) -> dict[str, float]:
    """J&F of `model` on the held-out videos of `val_root` (DAVIS layout); returns {"J&F", "J", "F"}.

    `image_size` must be the model's (it is checked, so a config mix-up fails loudly). Predictions
    go to `out_dir/<video>/<frame>.png` (a temporary folder when None). The model is left in the
    train/eval mode it had.
    """
    val_root = _existing_folder(val_root)
    if image_size != model.config.image_size:
        raise UserInputError(
            f"validate_sam2: image_size {image_size} differs from the model's {model.config.image_size}"
        )
    return _validate(model, lambda: SAM2VideoPredictor(model), val_root, out_dir, objects_start_together=False)


def validate_stcn(
    model: STCN, val_root: str | os.PathLike, mem_every: int, out_dir: str | os.PathLike | None = None
) -> dict[str, float]:
    """J&F of an STCN `model` on the held-out videos of `val_root` (DAVIS layout), all objects of a
    video tracked in one pass with memory every `mem_every` frames; otherwise as `validate_sam2`."""
    val_root = _existing_folder(val_root)
    return _validate(model, lambda: STCNVideoPredictor(model, mem_every=mem_every), val_root, out_dir,
                     objects_start_together=True)
