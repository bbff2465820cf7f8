"""What `sam2-video annotate` keeps in its output folder, written atomically as it changes.

    DIR/session/session.json   objects, prompts (every click and box in order) and the video they belong to
    DIR/session/masks/NAME.png the masks computed so far, one palettized PNG of object ids per frame

A frame without a PNG has no mask yet. Reopening the same video and DIR reads both back.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam2_video.errors import UserInputError
from sam2_video.io import atomic_path
from sam2_video.predict.masks_io import read_mask_png, write_palette_png

FORMAT = "sam2-video annotate session 1"


@dataclass
class VideoInfo:
    """The video a session belongs to (checked when DIR is reopened)."""

    path: str
    num_frames: int
    height: int
    width: int


@dataclass
class ObjectInfo:
    obj_id: int
    name: str
    hidden: bool = False


@dataclass(frozen=True)
class Action:
    """One click (`point` x, y with `label` 1 = object, 0 = background) or one `box` [x0, y0, x1, y1];
    a box replaces the object's earlier prompts on that frame, as in the official API."""

    frame: int
    obj_id: int
    point: tuple[float, float] | None = None
    label: int | None = None
    box: tuple[float, float, float, float] | None = None


@dataclass
class SessionRecord:
    video: VideoInfo
    objects: list[ObjectInfo] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "video": asdict(self.video), "objects": [asdict(o) for o in self.objects],
                "actions": [{k: v for k, v in asdict(a).items() if v is not None} for a in self.actions]}

    @classmethod
    def from_json(cls, content: Any, source: Path) -> SessionRecord:
        try:
            if content.get("format") != FORMAT:
                raise ValueError(f"format {content.get('format')!r}, expected {FORMAT!r}")
            actions = [Action(a["frame"], a["obj_id"], tuple(a["point"]) if "point" in a else None, a.get("label"),
                              tuple(a["box"]) if "box" in a else None) for a in content["actions"]]
            return cls(VideoInfo(**content["video"]), [ObjectInfo(**o) for o in content["objects"]], actions)
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise UserInputError(f"{source}: not a session file of sam2-video annotate ({type(err).__name__}: {err}); "
                                 "move it away to start a new session in this folder") from None


class Store:
    """The session file and mask PNGs under `out/session` (see the module docstring)."""

    def __init__(self, out: Path, frame_names: list[str]):
        self.root = out / "session"
        self.session_path = self.root / "session.json"
        self.masks_dir = self.root / "masks"
        self.frame_names = frame_names

    def load(self) -> SessionRecord | None:
        """The saved session, or None when there is none yet."""
        if not self.session_path.exists():
            return None
        try:
            content = json.loads(self.session_path.read_text())
        except json.JSONDecodeError as err:
            raise UserInputError(f"{self.session_path}: not valid JSON ({err}); move it away to start a new "
                                 "session in this folder") from None
        return SessionRecord.from_json(content, self.session_path)

    def save(self, record: SessionRecord) -> None:
        with atomic_path(self.session_path) as tmp:
            tmp.write_text(json.dumps(record.to_json(), indent=1))

    def mask_path(self, frame: int) -> Path:
        return self.masks_dir / f"{self.frame_names[frame]}.png"

    def write_mask(self, frame: int, ids: np.ndarray) -> None:
        write_palette_png(self.mask_path(frame), ids)

    def read_mask(self, frame: int) -> np.ndarray:
        return read_mask_png(self.mask_path(frame)).astype(np.uint8)

    def mask_frames(self) -> list[int]:
        """Indices of the frames that have a saved mask."""
        if not self.masks_dir.is_dir():
            return []
        saved = {name[:-4] for name in os.listdir(self.masks_dir) if name.endswith(".png")}
        return [frame for frame, name in enumerate(self.frame_names) if name in saved]
