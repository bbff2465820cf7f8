"""Which frames and objects of a video make one training clip.

A sampler sees a video's annotated frames (indices into its frame list, in time order) and a
function giving the objects visible on an annotated frame; it returns a `ClipSelection`. Videos
with fewer annotated frames than the clip are padded by repeating the last frame (flagged), or
rejected with a `UserInputError` when padding is disabled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from sam2_video.errors import UserInputError

VisibleObjects = Callable[[int], Sequence[int]]


@dataclass
class ClipSelection:
    """frame_indices: T indices into the video's frame list; is_padding: T flags (repeated frames);
    object_ids: the sampled objects, all visible on the first frame."""

    frame_indices: list[int]
    is_padding: list[bool]
    object_ids: list[int]


class ClipSampler(Protocol):
    num_frames: int
    max_num_objects: int

    def sample(
        self, video: str, annotated: Sequence[int], visible_objects: VisibleObjects, rng: np.random.Generator
    ) -> ClipSelection | None:
        """A clip, or None when no tried window has a visible object on its first frame."""


def _check_length(video: str, num_annotated: int, num_frames: int, allow_padding: bool) -> None:
    if num_annotated < num_frames and not allow_padding:
        raise UserInputError(
            f"{video}: only {num_annotated} annotated frame(s), but clips have {num_frames} frames and padding "
            f"is disabled; lower the clip length or enable padding of short videos"
        )


def _pad(frames: list[int], num_frames: int) -> tuple[list[int], list[bool]]:
    """Repeat the last frame up to `num_frames`; flags mark the repeats."""
    missing = num_frames - len(frames)
    return frames + [frames[-1]] * missing, [False] * len(frames) + [True] * missing


def _pick_objects(visible: Sequence[int], max_num_objects: int, rng: np.random.Generator) -> list[int]:
    visible = sorted(visible)
    if len(visible) <= max_num_objects:
        return visible
    return sorted(int(i) for i in rng.choice(visible, size=max_num_objects, replace=False))


class SAM2ClipSampler:
    """SAM2 training: `num_frames` consecutive annotated frames from a random start, up to
    `max_num_objects` objects visible on the first frame, time reversed with `reverse_prob`.
    `num_tries` windows are tried before giving up on a video with nothing visible."""

    def __init__(
        self,
        num_frames: int = 8,
        max_num_objects: int = 3,
        reverse_prob: float = 0.0,
        allow_padding: bool = True,
        num_tries: int = 10,
    ):
        if num_frames < 1 or max_num_objects < 1:
            raise ValueError("num_frames and max_num_objects must be >= 1")
        self.num_frames = num_frames
        self.max_num_objects = max_num_objects
        self.reverse_prob = reverse_prob
        self.allow_padding = allow_padding
        self.num_tries = num_tries

    def sample(
        self, video: str, annotated: Sequence[int], visible_objects: VisibleObjects, rng: np.random.Generator
    ) -> ClipSelection | None:
        if len(annotated) == 0:
            raise UserInputError(f"{video}: no annotated frames")
        _check_length(video, len(annotated), self.num_frames, self.allow_padding)
        for _ in range(self.num_tries):
            start = int(rng.integers(0, max(1, len(annotated) - self.num_frames + 1)))
            window = list(annotated[start : start + self.num_frames])
            if rng.uniform() < self.reverse_prob:
                window.reverse()
            visible = visible_objects(window[0])
            if visible:
                frames, padding = _pad(window, self.num_frames)
                return ClipSelection(frames, padding, _pick_objects(visible, self.max_num_objects, rng))
        return None


class STCNClipSampler:
    """STCN training: `num_frames` (3) annotated frames in time order with random gaps of 1..`max_jump`
    annotated frames, a target object and up to `max_num_objects - 1` more visible on the first frame.
    Set `max_jump` during training from `stcn_max_jump` (the curriculum)."""

    def __init__(
        self,
        num_frames: int = 3,
        max_jump: int = 5,
        max_num_objects: int = 2,
        reverse_prob: float = 0.5,
        allow_padding: bool = True,
        num_tries: int = 10,
    ):
        if num_frames < 1 or max_jump < 1 or max_num_objects < 1:
            raise ValueError("num_frames, max_jump and max_num_objects must be >= 1")
        self.num_frames = num_frames
        self.max_jump = max_jump
        self.max_num_objects = max_num_objects
        self.reverse_prob = reverse_prob
        self.allow_padding = allow_padding
        self.num_tries = num_tries

    def sample(
        self, video: str, annotated: Sequence[int], visible_objects: VisibleObjects, rng: np.random.Generator
    ) -> ClipSelection | None:
        if len(annotated) == 0:
            raise UserInputError(f"{video}: no annotated frames")
        count = len(annotated)
        _check_length(video, count, self.num_frames, self.allow_padding)
        for _ in range(self.num_tries):
            steps = self.num_frames - 1
            # the largest jump that still fits the clip into the video
            jump = max(1, min(self.max_jump, (count - 1) // steps if steps else 1))
            gaps = rng.integers(1, jump + 1, size=steps) if count > steps else np.zeros(steps, dtype=int)
            span = int(gaps.sum())
            start = int(rng.integers(0, max(1, count - span)))
            positions = np.minimum(start + np.concatenate([[0], np.cumsum(gaps)]), count - 1)
            window = [annotated[int(p)] for p in dict.fromkeys(positions.tolist())]
            if rng.uniform() < self.reverse_prob:
                window.reverse()
            visible = visible_objects(window[0])
            if visible:
                frames, padding = _pad(window, self.num_frames)
                target = int(rng.choice(sorted(visible)))
                others = [i for i in visible if i != target]
                return ClipSelection(frames, padding, [target] + _pick_objects(others, self.max_num_objects - 1, rng))
        return None


def stcn_max_jump(
    progress: float,
    jumps: Sequence[int] = (5, 10, 15, 20, 25, 5),
    change_at: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.9),
) -> int:
    """STCN's max_jump curriculum for `progress` = fraction of training done (0..1): 5, then 10, 15, 20, 25
    from 10/20/30/40% of training, and back to 5 for the last 10%. jumps[i] holds until change_at[i]."""
    if len(jumps) != len(change_at) + 1:
        raise ValueError("stcn_max_jump needs one more jump value than change points")
    for jump, end in zip(jumps, change_at):
        if progress < end:
            return jump
    return jumps[-1]
