"""Validation of a SAM2 model during fine-tuning: semi-supervised VOS on held-out videos, scored by J&F.

Each video of a DAVIS-layout folder (`JPEGImages/<video>/<frame>.jpg`, `Annotations/<video>/<frame>.png`)
is tracked by the video predictor from its annotation: every object gets its mask on the first
annotated frame where it appears and is tracked from there on (objects appearing later start on
their own first frame, as the official `vos_inference.py` does). Predictions are written as
palettized PNGs (smaller object ids on top) and scored with the DAVIS evaluator.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from sam2_video.errors import UserInputError
from sam2_video.evaluate.davis import evaluate_davis
from sam2_video.model.sam2 import SAM2
from sam2_video.predict.masks_io import VOID_ID, read_mask_png, write_palette_png
from sam2_video.predict.video_predictor import SAM2VideoPredictor


def _first_appearances(annotation_folder: Path) -> dict[int, dict[int, np.ndarray]]:
    """{frame_index: {object_id: mask [H,W] bool}} for each object on the first annotated frame it appears on.

    Frame indices count the PNGs in name order, which must match the video's frames.
    """
    first: dict[int, dict[int, np.ndarray]] = {}
    seen: set[int] = set()
    for index, png in enumerate(sorted(annotation_folder.glob("*.png"))):
        ids = read_mask_png(png)
        for obj_id in sorted(set(np.unique(ids).tolist()) - {0, VOID_ID} - seen):
            first.setdefault(index, {})[obj_id] = ids == obj_id
            seen.add(obj_id)
    return first


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
    predictor: SAM2VideoPredictor, frames_folder: Path, annotation_folder: Path, out_folder: Path
) -> None:
    """Track the annotated objects of one video and write `out_folder/<frame>.png` for every frame."""
    first = _first_appearances(annotation_folder)
    state = predictor.init_state(str(frames_folder))
    height, width = state["video_height"], state["video_width"]
    num_frames = state["num_frames"]
    predicted: list[dict[int, np.ndarray]] = [{} for _ in range(num_frames)]
    for start, masks in sorted(first.items()):
        if start >= num_frames:
            raise UserInputError(
                f"{annotation_folder}: annotation {start} has no frame in {frames_folder} ({num_frames} frames)"
            )
        predictor.reset_state(state)
        for obj_id, mask in masks.items():
            if mask.shape != (height, width):
                raise UserInputError(
                    f"{annotation_folder}: masks are {mask.shape[1]}x{mask.shape[0]} but frames are {width}x{height}"
                )
            predictor.add_new_mask(state, start, obj_id, mask)
        for frame_idx, obj_ids, logits in predictor.propagate_in_video(state, start_frame_idx=start):
            for obj_id, obj_logits in zip(obj_ids, logits):
                predicted[frame_idx][obj_id] = (obj_logits[0] > 0).cpu().numpy()
    for frame_idx, name in enumerate(state["frame_names"]):
        ids = np.zeros((height, width), dtype=np.uint8)
        for obj_id in sorted(predicted[frame_idx], reverse=True):  # smaller ids end on top
            ids[predicted[frame_idx][obj_id]] = obj_id
        write_palette_png(out_folder / f"{name}.png", ids)


def validate_sam2(
    model: SAM2, val_root: str | os.PathLike, image_size: int, out_dir: str | os.PathLike | None = None
) -> dict[str, float]:
    """J&F of `model` on the held-out videos of `val_root` (DAVIS layout); returns {"J&F", "J", "F"}.

    `image_size` must be the model's (it is checked, so a config mix-up fails loudly). Predictions
    go to `out_dir/<video>/<frame>.png` (a temporary folder when None). The model is left in the
    train/eval mode it had.
    """
    val_root = Path(val_root)
    if not val_root.is_dir():
        raise UserInputError(f"validation data folder not found: {val_root}")
    if image_size != model.config.image_size:
        raise UserInputError(
            f"validate_sam2: image_size {image_size} differs from the model's {model.config.image_size}"
        )
    videos = _video_folders(val_root)
    was_training = model.training
    try:
        predictor = SAM2VideoPredictor(model)
        with tempfile.TemporaryDirectory(prefix="sam2_val_") as tmp:
            pred_root = Path(out_dir) if out_dir is not None else Path(tmp)
            with torch.no_grad():
                for frames_folder, annotation_folder in videos:
                    predict_video(predictor, frames_folder, annotation_folder, pred_root / annotation_folder.name)
            summary = evaluate_davis(val_root / "Annotations", pred_root,
                                     sequences=[a.name for _, a in videos]).summary()
    finally:
        model.train(was_training)
    return {"J&F": summary["J&F-Mean"], "J": summary["J-Mean"], "F": summary["F-Mean"]}
