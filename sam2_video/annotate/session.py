"""One annotation session: the objects, prompts and masks of one video, driven through the official
video-predictor API (`add_new_points_or_box`, `clear_all_prompts_in_frame`, `remove_object`,
`propagate_in_video`) and saved to the `Store` after every change.

Official semantics: clicks add to the object's prompts on that frame (a box starts them anew), a
click on a frame reached by propagation corrects it using the memory of the frames tracked before,
and propagation from a frame re-tracks the frames after it. Undo removes the last click or box and
replays the object's remaining prompts on that frame. One re-entrant lock serialises every model call
and save; edits are refused while a propagation runs (`Busy`).
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from sam2_video.annotate.store import Action, ObjectInfo, SessionRecord, Store, VideoInfo
from sam2_video.errors import UserInputError
from sam2_video.predict.tracking import MAX_OBJ_ID, combine_objects
from sam2_video.predict.video_predictor import SAM2VideoPredictor


class NotFound(UserInputError):
    """A request names an object that does not exist (HTTP 404)."""


class Busy(UserInputError):
    """An edit while a propagation runs (HTTP 409)."""


class AnnotationSession:
    """See the module docstring. `version` grows with every mask written; `frame_versions` holds each
    frame's latest, so a page asks only for the masks that changed."""

    def __init__(self, predictor: SAM2VideoPredictor, video: Path, store: Store):
        self.predictor, self.store = predictor, store
        self.state = predictor.init_state(str(video))
        self.num_frames = self.state["num_frames"]
        self.height, self.width = self.state["video_height"], self.state["video_width"]
        self.lock = threading.RLock()
        self.busy = False  # set by Propagation while it runs
        info = VideoInfo(str(video.resolve()), self.num_frames, self.height, self.width)
        record = store.load()
        if record is not None and (record.video.num_frames, record.video.height, record.video.width) != \
                (info.num_frames, info.height, info.width):
            raise UserInputError(f"{store.session_path}: this folder holds the session of {record.video.path} "
                                 f"({record.video.num_frames} frames {record.video.width}x{record.video.height}), not "
                                 f"of {video} ({info.num_frames} frames {info.width}x{info.height}); choose another --out")
        self.record = record or SessionRecord(info)
        self.version = 1
        self.frame_versions = {frame: 1 for frame in store.mask_frames()}
        for key in dict.fromkeys((a.obj_id, a.frame) for a in self.record.actions):
            self._replay(*key)  # the predictor's prompts; the saved masks stay as they were

    # ------------------------------------------------------------------ reading
    def snapshot(self) -> dict:
        """Everything the page shows: video size, objects, prompts, which frames have masks. Without
        the lock, which a propagation holds throughout (it changes only masks and versions)."""
        return {"num_frames": self.num_frames, "width": self.width, "height": self.height,
                "video": Path(self.record.video.path).name,
                "objects": [vars(o).copy() for o in list(self.record.objects)],
                "actions": self.record.to_json()["actions"], "version": self.version,
                "frame_versions": dict(list(self.frame_versions.items()))}

    def changed_since(self, version: int) -> dict[int, int]:
        """Frames whose mask changed after `version`: {frame: its version}."""
        return {frame: v for frame, v in list(self.frame_versions.items()) if v > version}

    def object(self, obj_id: int) -> ObjectInfo:
        for info in self.record.objects:
            if info.obj_id == obj_id:
                return info
        raise NotFound(f"object {obj_id} does not exist (objects: {[o.obj_id for o in self.record.objects]})")

    def effective_prompts(self, obj_id: int, frame: int) -> list[Action]:
        """The object's prompts on the frame that count: those since its last box."""
        actions = [a for a in self.record.actions if (a.obj_id, a.frame) == (obj_id, frame)]
        boxes = [k for k, a in enumerate(actions) if a.box is not None]
        return actions[boxes[-1]:] if boxes else actions

    # ------------------------------------------------------------------ editing
    @contextlib.contextmanager
    def editing(self) -> Iterator[None]:
        """Hold the lock for an edit; `Busy` while a propagation runs."""
        if self.busy:
            raise Busy("a propagation is running: cancel it or wait until it ends")
        with self.lock:
            if self.busy:
                raise Busy("a propagation is running: cancel it or wait until it ends")
            yield
            self.store.save(self.record)

    def add_object(self, name: str | None = None) -> ObjectInfo:
        with self.editing():
            used = {o.obj_id for o in self.record.objects}
            free = [i for i in range(1, MAX_OBJ_ID + 1) if i not in used]
            if not free:
                raise UserInputError(f"all {MAX_OBJ_ID} object ids are in use (masks are 8-bit PNGs)")
            info = ObjectInfo(free[0], name or f"object {free[0]}")
            self.record.objects.append(info)
            return info

    def update_object(self, obj_id: int, name: str | None = None, hidden: bool | None = None) -> ObjectInfo:
        with self.editing():
            info = self.object(obj_id)
            info.name = info.name if name is None else name
            info.hidden = info.hidden if hidden is None else hidden
            return info

    def delete_object(self, obj_id: int) -> None:
        """Forget the object, its prompts, and its pixels in every saved mask."""
        with self.editing():
            info = self.object(obj_id)
            if obj_id in self.state["obj_ids"]:
                self.predictor.remove_object(self.state, obj_id, need_output=False)
            self.record.objects.remove(info)
            self.record.actions = [a for a in self.record.actions if a.obj_id != obj_id]
            self._drop_id(obj_id)

    def click(self, frame: int, obj_id: int, x: float, y: float, label: int) -> None:
        """A positive (label 1) or negative (0) click at video pixel (x, y)."""
        self._add(Action(frame, obj_id, point=(x, y), label=label))

    def box(self, frame: int, obj_id: int, box: tuple[float, float, float, float]) -> None:
        self._add(Action(frame, obj_id, box=box))

    def undo(self) -> Action:
        """Remove the last click or box; the object's other prompts on that frame are replayed."""
        with self.editing():
            if not self.record.actions:
                raise UserInputError("nothing to undo: no clicks or boxes yet")
            action = self.record.actions.pop()
            self._replay(action.obj_id, action.frame, write=True)
            return action

    def clear(self, frame: int, obj_id: int) -> None:
        """Remove every prompt of the object on the frame."""
        with self.editing():
            self.object(obj_id)
            self.check_frame(frame)
            self.record.actions = [a for a in self.record.actions if (a.obj_id, a.frame) != (obj_id, frame)]
            self._replay(obj_id, frame, write=True)

    # ------------------------------------------------------------------ propagation (under the lock)
    def propagate(self, start: int, reverse: bool) -> Iterator[int]:
        """Track every prompted object from `start` (one direction), saving each frame's masks;
        yields the frames done. The caller holds the lock."""
        self.check_frame(start)
        if not self.state["obj_ids"]:
            raise UserInputError("nothing to propagate: click on an object first")
        for frame, obj_ids, logits in self.predictor.propagate_in_video(self.state, start_frame_idx=start,
                                                                        reverse=reverse):
            self._write_logits(frame, obj_ids, logits)
            yield frame

    # ------------------------------------------------------------------ internals
    def check_frame(self, frame: int) -> None:
        if not 0 <= frame < self.num_frames:
            raise UserInputError(f"frame {frame} is out of range: the video has {self.num_frames} frames "
                                 f"(0..{self.num_frames - 1})")

    def _add(self, action: Action) -> None:
        with self.editing():
            self.object(action.obj_id)
            self.check_frame(action.frame)
            for x, y in [action.point] if action.point else [action.box[:2], action.box[2:]]:
                if not (0 <= x <= self.width and 0 <= y <= self.height):
                    raise UserInputError(f"point ({x}, {y}) is outside the frame, which is {self.width}x{self.height}")
            first = not self.effective_prompts(action.obj_id, action.frame) or action.box is not None
            self._prompt(action, clear_old_points=first)
            self.record.actions.append(action)

    def _prompt(self, action: Action, clear_old_points: bool, write: bool = True) -> None:
        points = labels = None
        if action.point is not None:
            points, labels = np.array([action.point], dtype=np.float32), np.array([action.label], dtype=np.int32)
        frame, obj_ids, logits = self.predictor.add_new_points_or_box(
            self.state, action.frame, action.obj_id, points=points, labels=labels,
            clear_old_points=clear_old_points, box=None if action.box is None else np.array(action.box, np.float32))
        if write:
            self._write_logits(frame, obj_ids, logits)

    def _replay(self, obj_id: int, frame: int, write: bool = False) -> None:
        """Give the predictor exactly the object's recorded prompts on the frame. Without any left
        there, its prompts on the frame are cleared; an object left without any prompt is removed
        from the predictor and from every saved mask (an object without prompts has no masks)."""
        actions = self.effective_prompts(obj_id, frame)
        if obj_id in self.state["obj_ids"]:
            result = self.predictor.clear_all_prompts_in_frame(self.state, frame, obj_id,
                                                               need_output=write and not actions)
            if not any(a.obj_id == obj_id for a in self.record.actions):
                self.predictor.remove_object(self.state, obj_id, need_output=False)
                if write:
                    self._drop_id(obj_id)
            elif result is not None:
                self._write_logits(*result)
        for k, action in enumerate(actions):
            self._prompt(action, clear_old_points=k == 0, write=write and k == len(actions) - 1)

    def _drop_id(self, obj_id: int) -> None:
        """Remove the object's pixels from every saved mask."""
        for frame in list(self.frame_versions):
            ids = self.store.read_mask(frame)
            if (ids == obj_id).any():
                ids[ids == obj_id] = 0
                self._write_ids(frame, ids)

    def _write_logits(self, frame: int, obj_ids: list[int], logits: torch.Tensor) -> None:
        if not obj_ids:
            self._write_ids(frame, np.zeros((self.height, self.width), np.uint8))
            return
        best, ids = combine_objects(obj_ids, logits)
        self._write_ids(frame, np.where(best > 0, ids, 0).astype(np.uint8))

    def _write_ids(self, frame: int, ids: np.ndarray) -> None:
        self.store.write_mask(frame, ids)
        self.version += 1
        self.frame_versions[frame] = self.version
