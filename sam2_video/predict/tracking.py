"""Prompts and multi-object tracking shared by `sam2-video predict` and validation during training.

Prompts come from a mask PNG, an annotation folder (the DAVIS semi-supervised protocol: every object is
prompted with its mask on the first frame where it appears) or a JSON list of clicks and boxes:

    [{"frame": 0, "obj_id": 1, "points": [[x, y], ...], "labels": [1, 0]},
     {"frame": 0, "obj_id": 2, "box": [x0, y0, x1, y1]}]

`track_video` runs a video predictor (SAM2 or STCN) from such prompts and yields, per frame, the id of
the object with the highest logit at each pixel where that logit is > 0.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from sam2_video.errors import UserInputError
from sam2_video.predict.input_checks import check_inside_frame
from sam2_video.predict.masks_io import VOID_ID, read_mask_png

MAX_OBJ_ID = VOID_ID - 1  # ids are stored in an 8-bit PNG where 255 means void


class VideoPredictor(Protocol):
    """The subset of the official `SAM2VideoPredictor` API that prediction uses (STCN: masks only)."""

    def init_state(self, video_path: str) -> dict: ...

    def reset_state(self, inference_state: dict) -> None: ...

    def add_new_mask(self, inference_state: dict, frame_idx: int, obj_id: int, mask: Any) -> tuple: ...

    def add_new_points_or_box(
        self, inference_state: dict, frame_idx: int, obj_id: int, points: Any = None, labels: Any = None,
        clear_old_points: bool = True, box: Any = None,
    ) -> tuple: ...

    def propagate_in_video(
        self, inference_state: dict, start_frame_idx: int | None = None
    ) -> Iterator[tuple[int, list[int], torch.Tensor]]: ...


@runtime_checkable
class StreamingVideoPredictor(Protocol):
    """A predictor that tracks all objects in one forward pass, each from its first prompt, at
    constant memory (`SAM2VideoPredictor.track_from_prompts`)."""

    def track_from_prompts(
        self, inference_state: dict, prompts: Sequence[Prompt]
    ) -> Iterator[tuple[int, list[int], torch.Tensor]]: ...


@dataclass(frozen=True)
class MaskPrompt:
    """Object `obj_id` is the nonzero part of `mask` `[H, W]` on `frame_idx`; `source` names the file."""

    frame_idx: int
    obj_id: int
    mask: np.ndarray
    source: str


@dataclass(frozen=True)
class ClickPrompt:
    """Clicks (`points` `[N, 2]` x, y in video pixels, `labels` `[N]`, 1 = object) and/or a `box` `[4]`."""

    frame_idx: int
    obj_id: int
    points: np.ndarray | None
    labels: np.ndarray | None
    box: np.ndarray | None
    source: str


Prompt = MaskPrompt | ClickPrompt


# ------------------------------------------------------------------ reading prompts

def _objects_of(ids: np.ndarray, source: str) -> list[int]:
    obj_ids = [int(i) for i in np.flatnonzero(np.bincount(ids.ravel())) if i not in (0, VOID_ID)]
    too_large = [i for i in obj_ids if i > MAX_OBJ_ID]
    if too_large:
        raise UserInputError(f"{source}: object ids must be 1..{MAX_OBJ_ID}, found {too_large}")
    return obj_ids


def mask_prompts_from_png(path: Path, frame_idx: int = 0) -> list[MaskPrompt]:
    """One mask prompt per object id of a mask PNG (palettized ids, or grayscale 0/255 = object 1)."""
    ids = read_mask_png(path)
    obj_ids = _objects_of(ids, str(path))
    if not obj_ids:
        raise UserInputError(f"{path}: the mask has no object (all pixels are 0 or 255)")
    return [MaskPrompt(frame_idx, obj_id, ids == obj_id, str(path)) for obj_id in obj_ids]


def mask_prompts_from_annotations(
    folder: Path, frame_names: Sequence[str], frame_size: tuple[int, int], video_path: Path
) -> list[MaskPrompt]:
    """Each object's mask on the first annotated frame where it appears (DAVIS semi-supervised protocol).

    Annotation PNGs are matched to frames by name (`00012.png` annotates frame `00012.jpg`) and must
    have the frames' size `(height, width)`.
    """
    if not folder.is_dir():
        raise UserInputError(f"annotation folder not found: {folder}")
    files = sorted(folder.glob("*.png"))
    if not files:
        raise UserInputError(f"{folder}: no annotation PNGs (expected <frame name>.png)")
    frame_index = {name: t for t, name in enumerate(frame_names)}
    unmatched = [f.name for f in files if f.stem not in frame_index]
    if unmatched:
        raise UserInputError(
            f"{folder}: annotation {unmatched[0]} matches no frame of the video (frames are named "
            f"{frame_names[0]}..{frame_names[-1]}); annotations must be named like the frames"
        )
    prompts: list[MaskPrompt] = []
    seen: set[int] = set()
    for path in sorted(files, key=lambda f: frame_index[f.stem]):
        ids = read_mask_png(path)
        if ids.shape != frame_size:
            raise UserInputError(
                f"annotation {path} is {ids.shape[1]}x{ids.shape[0]} but frame {path.stem} of {video_path} is "
                f"{frame_size[1]}x{frame_size[0]} (width x height); annotations must have the frames' size"
            )
        for obj_id in _objects_of(ids, str(path)):
            if obj_id not in seen:
                seen.add(obj_id)
                prompts.append(MaskPrompt(frame_index[path.stem], obj_id, ids == obj_id, str(path)))
    if not prompts:
        raise UserInputError(f"{folder}: no annotation holds an object (all pixels are 0 or 255)")
    return prompts


def _number_array(value: Any, shape_text: str, where: str, ndim: int) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserInputError(f"{where} must be {shape_text}, got {value!r}") from None
    if array.ndim != ndim or (ndim == 2 and array.shape[1] != 2) or not np.isfinite(array).all():
        raise UserInputError(f"{where} must be {shape_text}, got {value!r}")
    return array


def click_prompts_from_json(path: Path) -> list[ClickPrompt]:
    """Read `[{"frame", "obj_id", "points" + "labels" and/or "box"}, ...]` (coordinates in video pixels)."""
    try:
        items = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"prompt file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(items, list) or not items:
        raise UserInputError(f"{path}: expected a non-empty JSON list of prompts like "
                             '{"frame": 0, "obj_id": 1, "points": [[x, y]], "labels": [1]}')
    prompts = []
    for k, item in enumerate(items):
        where = f"{path} prompt #{k}"
        if not isinstance(item, dict):
            raise UserInputError(f"{where}: expected an object with frame, obj_id and points/labels or box")
        unknown = set(item) - {"frame", "obj_id", "points", "labels", "box"}
        if unknown:
            raise UserInputError(f"{where}: unknown keys {sorted(unknown)} (allowed: frame, obj_id, points, labels, box)")
        for key in ("frame", "obj_id"):
            if key not in item:
                raise UserInputError(f"{where}: missing {key!r}")
            if isinstance(item[key], bool) or not isinstance(item[key], int):
                raise UserInputError(f"{where}: {key} must be an int, got {item[key]!r}")
        if item["frame"] < 0:
            raise UserInputError(f"{where}: frame must be >= 0, got {item['frame']}")
        if not 1 <= item["obj_id"] <= MAX_OBJ_ID:
            raise UserInputError(f"{where}: obj_id must be 1..{MAX_OBJ_ID} (it is written into an 8-bit PNG), "
                                 f"got {item['obj_id']}")
        if ("points" in item) != ("labels" in item):
            raise UserInputError(f"{where}: points and labels must be given together (one label per point)")
        if "points" not in item and "box" not in item:
            raise UserInputError(f"{where}: give points with labels, a box, or both")
        points = labels = box = None
        if "points" in item:
            points = _number_array(item["points"], "a list of [x, y] pairs", f"{where}: points", ndim=2)
            labels = _number_array(item["labels"], "a list of 0/1 labels", f"{where}: labels", ndim=1)
            if len(labels) != len(points) or not np.isin(labels, (0, 1)).all():
                raise UserInputError(f"{where}: labels must be one 0 (background) or 1 (object) per point, "
                                     f"got {item['labels']!r} for {len(points)} points")
            labels = labels.astype(np.int32)
        if "box" in item:
            box = _number_array(item["box"], "[x0, y0, x1, y1]", f"{where}: box", ndim=1)
            if box.shape != (4,) or box[2] < box[0] or box[3] < box[1]:
                raise UserInputError(f"{where}: box must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1, "
                                     f"got {item['box']!r}")
        prompts.append(ClickPrompt(item["frame"], item["obj_id"], points, labels, box, where))
    return prompts


# ------------------------------------------------------------------ tracking

def check_prompts(prompts: Sequence[Prompt], state: dict, video_path: Path, frame_names: Sequence[str]) -> None:
    """Raise UserInputError for a prompt beyond the video, a mask of another size than the frames, or a
    click or box outside the frame."""
    num_frames, height, width = state["num_frames"], state["video_height"], state["video_width"]
    for prompt in prompts:
        if not 0 <= prompt.frame_idx < num_frames:
            raise UserInputError(
                f"{prompt.source}: frame {prompt.frame_idx} is beyond the video {video_path}, "
                f"which has {num_frames} frames (0..{num_frames - 1})"
            )
        if isinstance(prompt, MaskPrompt) and prompt.mask.shape != (height, width):
            raise UserInputError(
                f"{prompt.source} is {prompt.mask.shape[1]}x{prompt.mask.shape[0]} but frame "
                f"{frame_names[prompt.frame_idx]} of {video_path} is {width}x{height} (width x height); "
                "the mask must have the frame's size"
            )
        if isinstance(prompt, ClickPrompt):
            check_inside_frame(prompt.points, prompt.box, width, height, prompt.source)


def apply_prompts(predictor: VideoPredictor, state: dict, prompts: Sequence[Prompt]) -> None:
    """Add every prompt to the predictor's session, in order; clicks on the same frame and object accumulate."""
    clicked: set[tuple[int, int]] = set()
    for prompt in prompts:
        if isinstance(prompt, MaskPrompt):
            predictor.add_new_mask(state, prompt.frame_idx, prompt.obj_id, prompt.mask)
            continue
        key = (prompt.frame_idx, prompt.obj_id)
        predictor.add_new_points_or_box(
            state, prompt.frame_idx, prompt.obj_id, points=prompt.points, labels=prompt.labels,
            clear_old_points=key not in clicked, box=prompt.box,
        )
        clicked.add(key)


def _group_by_start(prompts: Sequence[Prompt]) -> list[list[Prompt]]:
    """Objects grouped by the frame of their first prompt; each group keeps all its objects' prompts."""
    start: dict[int, int] = {}
    for prompt in prompts:
        start[prompt.obj_id] = min(prompt.frame_idx, start.get(prompt.obj_id, prompt.frame_idx))
    return [[p for p in prompts if start[p.obj_id] == frame] for frame in sorted(set(start.values()))]


def combine_objects(obj_ids: Sequence[int], logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel winner of mask logits `[O, 1, H, W]`: (best logit `[H, W]` float32, its id `[H, W]` uint8)."""
    scores = logits[:, 0].float().cpu().numpy()
    winner = scores.argmax(axis=0)
    best = np.take_along_axis(scores, winner[None], axis=0)[0]
    return best, np.asarray(obj_ids, dtype=np.uint8)[winner]


def object_id_map(obj_ids: Sequence[int], logits: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Ids `[H, W]` uint8 of mask logits `[O, 1, H, W]`: the highest-logit object where its logit > 0, else 0
    (all 0 when there is no object yet)."""
    if not len(obj_ids):
        return _empty(height, width)[1]
    return _foreground(*combine_objects(obj_ids, logits))


def _tracking_passes(prompts: Sequence[Prompt], objects_start_together: bool) -> list[list[Prompt]]:
    return [list(prompts)] if objects_start_together else _group_by_start(prompts)


def frames_to_track(prompts: Sequence[Prompt], num_frames: int, objects_start_together: bool = False) -> int:
    """How many frames `track_video` propagates over all its passes (the total of a progress bar)."""
    return sum(num_frames - min(p.frame_idx for p in group) for group in _tracking_passes(prompts, objects_start_together))


def track_video(
    predictor: VideoPredictor,
    state: dict,
    prompts: Sequence[Prompt],
    objects_start_together: bool = False,
    on_frame_tracked: Callable[[], object] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield `(frame_idx, ids [H, W] uint8)` for every frame in order: 0 = background, else the object id.

    Objects are tracked forward from their first prompt. SAM2 tracks objects independently, so objects
    whose first prompts are on different frames are tracked as separate passes (one per start frame,
    as the official DAVIS inference does for objects that appear later) and merged by highest logit
    (ties: the earlier pass). A `StreamingVideoPredictor` (SAM2) runs those passes as one streaming
    pass with the same numbers, each object starting at its first prompt, holding a bounded window of
    outputs per object, so memory does not grow with the video; other predictors run the passes one
    after the other, keeping the earlier passes' results for the merge. A predictor that itself starts
    each object at its first prompt (STCN) runs all objects in one pass with `objects_start_together=True`.
    `state` comes from `predictor.init_state`. `on_frame_tracked()` is called once per frame and pass
    (see `frames_to_track`).
    """
    if not objects_start_together and isinstance(predictor, StreamingVideoPredictor):
        yield from _track_in_one_pass(predictor, state, prompts, on_frame_tracked)
        return
    height, width = state["video_height"], state["video_width"]
    groups = _tracking_passes(prompts, objects_start_together)
    earlier: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # frame -> (best logit, id) of earlier passes
    for group_index, group in enumerate(groups):
        last_pass = group_index == len(groups) - 1
        predictor.reset_state(state)
        apply_prompts(predictor, state, group)
        start = min(p.frame_idx for p in group)
        if last_pass:
            for frame_idx in range(start):
                yield frame_idx, _foreground(*earlier.pop(frame_idx, _empty(height, width)))
        for frame_idx, obj_ids, logits in predictor.propagate_in_video(state, start_frame_idx=start):
            if on_frame_tracked is not None:
                on_frame_tracked()
            logit, ids = combine_objects(obj_ids, logits)
            if frame_idx in earlier:
                old_logit, old_ids = earlier.pop(frame_idx)
                keep_old = old_logit >= logit
                logit, ids = np.where(keep_old, old_logit, logit), np.where(keep_old, old_ids, ids)
            if last_pass:
                yield frame_idx, _foreground(logit, ids)
            else:
                earlier[frame_idx] = (logit, ids)


def _track_in_one_pass(
    predictor: StreamingVideoPredictor,
    state: dict,
    prompts: Sequence[Prompt],
    on_frame_tracked: Callable[[], object] | None,
) -> Iterator[tuple[int, np.ndarray]]:
    """`track_video` through `track_from_prompts`: the passes' objects in the passes' order, so that
    the per-pixel winner (first highest logit) is the one the pass-by-pass merge picks."""
    height, width = state["video_height"], state["video_width"]
    ordered = [prompt for group in _group_by_start(prompts) for prompt in group]
    pass_starts = sorted({min(p.frame_idx for p in group) for group in _group_by_start(prompts)})
    for frame_idx in range(pass_starts[0]):
        yield frame_idx, _empty(height, width)[1]
    for frame_idx, obj_ids, logits in predictor.track_from_prompts(state, ordered):
        if on_frame_tracked is not None:
            for _ in range(sum(start <= frame_idx for start in pass_starts)):
                on_frame_tracked()
        yield frame_idx, object_id_map(obj_ids, logits, height, width)


def _empty(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((height, width), -np.inf, dtype=np.float32), np.zeros((height, width), dtype=np.uint8)


def _foreground(logit: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return np.where(logit > 0, ids, 0).astype(np.uint8)
