"""Export a session to DIR as training data and prompts:

    DIR/JPEGImages/<video>/<frame>.jpg    every frame (a JPEG frame file is copied as it is)
    DIR/Annotations/<video>/<frame>.png   palettized object ids, for the frames that have masks
    DIR/coco.json                         the same masks as a COCO-video JSON (RLE, video_id, order_in_video)
    DIR/prompts.json                      the clicks and boxes, as `sam2-video predict --prompts` reads them

Only frames with a computed mask get an annotation: a frame the model never reached has no ground
truth, and an empty PNG would tell the trainer the objects vanished there (the vos and coco datasets
train on annotated frames only). `sam2-video train` reads DIR (dataset_type vos) or DIR/coco.json
(dataset_type coco) as they are.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from sam2_video.annotate.session import AnnotationSession
from sam2_video.io import atomic_path
from sam2_video.predict.frames import list_frame_files
from sam2_video.predict.video_frames import open_video_frames


def video_name(video: Path) -> str:
    return video.name if video.is_dir() else video.stem


def _write_frames(video: Path, target: Path, names: list[str]) -> None:
    """JPEGs of every frame not yet in `target`: copies of .jpg frame files, else encoded (quality 95)."""
    missing = [name for name in names if not (target / f"{name}.jpg").exists()]
    if not missing:
        return
    files = {p.stem: p for p in list_frame_files(video)} if video.is_dir() else {}
    if all(name in files and files[name].suffix.lower() in (".jpg", ".jpeg") for name in missing):
        for name in missing:
            with atomic_path(target / f"{name}.jpg") as tmp:
                shutil.copyfile(files[name], tmp)
        return
    wanted = set(missing)
    with open_video_frames(video, 32, prefetch=0) as frames:
        for name, rgb in zip(names, frames.iter_rgb()):
            if name in wanted:
                with atomic_path(target / f"{name}.jpg") as tmp:
                    Image.fromarray(rgb).save(tmp, format="JPEG", quality=95)


def _coco(session: AnnotationSession, name: str, names: list[str], frames: list[int]) -> dict:
    images, annotations = [], []
    for frame in frames:
        image_id = len(images) + 1
        images.append({"id": image_id, "video_id": name, "order_in_video": frame,
                       "path": f"JPEGImages/{name}/{names[frame]}.jpg", "file_name": f"{name}/{names[frame]}.jpg",
                       "width": session.width, "height": session.height})
        ids = session.store.read_mask(frame)
        for obj_id in (int(i) for i in np.unique(ids) if 0 < i < 255):
            rle = mask_utils.encode(np.asfortranarray(ids == obj_id, dtype=np.uint8))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "object_id": obj_id,
                                "category_id": 1, "iscrowd": 0, "area": int(mask_utils.area(rle)),
                                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}],
            "videos": [{"id": name, "name": name}]}


def _prompts(session: AnnotationSession) -> list[dict]:
    """One item per object and frame with prompts: its box and/or its clicks since that box."""
    items = []
    for obj_id, frame in dict.fromkeys((a.obj_id, a.frame) for a in session.record.actions):
        actions = session.effective_prompts(obj_id, frame)
        item: dict = {"frame": frame, "obj_id": obj_id}
        if actions[0].box is not None:
            item["box"] = list(actions[0].box)
        clicks = [a for a in actions if a.point is not None]
        if clicks:
            item["points"], item["labels"] = [list(a.point) for a in clicks], [a.label for a in clicks]
        items.append(item)
    return items


def export_session(session: AnnotationSession, video: Path, out: Path, names: list[str]) -> dict[str, Any]:
    """Write the DAVIS folders, coco.json and prompts.json (module docstring); returns what was written."""
    name = video_name(video)
    with session.lock:
        frames = sorted(session.frame_versions)
        annotations = out / "Annotations" / name
        for frame in frames:
            with atomic_path(annotations / f"{names[frame]}.png") as tmp:
                shutil.copyfile(session.store.mask_path(frame), tmp)
        kept = {f"{names[frame]}.png" for frame in frames}
        for stale in annotations.glob("*.png") if annotations.is_dir() else []:
            if stale.name not in kept and stale.stem in names:
                stale.unlink()
        coco = _coco(session, name, names, frames)
        prompts = _prompts(session)
    _write_frames(video, out / "JPEGImages" / name, names)
    written: dict[str, Any] = {"davis": str(out), "annotated_frames": len(frames)}
    with atomic_path(out / "coco.json") as tmp:
        tmp.write_text(json.dumps(coco))
    written["coco"] = str(out / "coco.json")
    if prompts:
        with atomic_path(out / "prompts.json") as tmp:
            tmp.write_text(json.dumps(prompts, indent=1))
        written["prompts"] = str(out / "prompts.json")
    return written
