"""The memory bank of the SAM2 core: stored frame outputs and the rule of which ones a frame reads.

SAM2 conditions each frame on (a) the conditioning frames (those with a prompt), (b) a few recent
tracked frames (spatial memories) and (c) the object pointers of recent frames. `MemoryBank.select`
is the one place that rule is written; `SAM2.prepare_memory_conditioned_features` reads exactly
what it selects, the video predictor groups objects that select the same frames into one batch,
and streaming tracking drops what no later frame can select (`MemoryBank.release_unreadable`).

A bank holds the outputs of one batch of N objects (training: every object of the clip; the
video predictor: one bank per object, stacked per batch). `FrameOutput` keys read here:
maskmem_features [N,Cm,H,W], maskmem_pos_enc [[N,Cm,H,W]], obj_ptr [N,C] (see `sam2.FrameOutput`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Iterator

FrameOutput = dict[str, Any]
COND, NON_COND = "cond_frame_outputs", "non_cond_frame_outputs"  # the official output_dict keys


@dataclass(frozen=True)
class MemoryPolicy:
    """How many past frames SAM2 reads; from `SAM2Config` (see `SAM2.memory_policy`).

    num_maskmem: spatial memories, 1 conditioning slot + num_maskmem - 1 recent frames (7 in every
    official preset: what the model was trained with). temporal_stride: recent frames after the
    previous one are taken every `stride` frames (evaluation option of the official code to reach
    further back at the same cost; 1 in training). max_cond_frames_in_attn: at most this many
    conditioning frames attend (-1: all), the temporally closest, so that many prompts do not
    make attention slower. max_obj_ptrs_in_encoder: object pointers of at most this many frames.
    cond_pointers_only_from_past: in evaluation a conditioning frame contributes its pointer only
    when it lies behind the current frame in the tracking direction (official behaviour; training
    uses every selected conditioning frame).
    """

    num_maskmem: int
    temporal_stride: int
    max_cond_frames_in_attn: int
    max_obj_ptrs_in_encoder: int
    cond_pointers_only_from_past: bool

    def __post_init__(self) -> None:
        if self.max_cond_frames_in_attn != -1 and self.max_cond_frames_in_attn < 2:
            raise ValueError(f"max_cond_frames_in_attn must be -1 or at least 2, got {self.max_cond_frames_in_attn}")
        if self.temporal_stride < 1:
            raise ValueError(f"memory_temporal_stride_for_eval must be at least 1, got {self.temporal_stride}")


@dataclass(frozen=True)
class MemorySelection:
    """The stored frames one frame reads, in the order memory attention sees them.

    cond_frames: conditioning frames whose spatial memory attends (temporal position 0).
    recent_frames: (t_pos, frame) spatial memories of recent frames, t_pos in 1..num_maskmem-1.
    pointer_frames: frames whose object pointer attends, selected conditioning frames first.
    max_obj_ptrs: the pointer window min(num_frames, max_obj_ptrs_in_encoder), which also scales
    the pointers' temporal position encoding.
    Objects with equal selections (of equal memory tensors' shapes) can run as one batch.
    """

    cond_frames: tuple[int, ...]
    recent_frames: tuple[tuple[int, int], ...]
    pointer_frames: tuple[int, ...]
    max_obj_ptrs: int

    @property
    def frames(self) -> set[int]:
        """Every frame whose output is read."""
        return {*self.cond_frames, *(t for _, t in self.recent_frames), *self.pointer_frames}


def select_closest_cond_frames(frame_idx: int, cond_frames: list[int], max_cond_frame_num: int) -> list[int]:
    """The conditioning frames that attend at `frame_idx` (official `select_closest_cond_frames`).

    With max_cond_frame_num = -1 (or enough room) all, in the given order; otherwise the closest
    frame before, the closest at/after, then the temporally closest others up to the limit.
    """
    if max_cond_frame_num == -1 or len(cond_frames) <= max_cond_frame_num:
        return list(cond_frames)
    selected = []
    idx_before = max((t for t in cond_frames if t < frame_idx), default=None)
    if idx_before is not None:
        selected.append(idx_before)
    idx_after = min((t for t in cond_frames if t >= frame_idx), default=None)
    if idx_after is not None:
        selected.append(idx_after)
    others = sorted((t for t in cond_frames if t not in selected), key=lambda t: abs(t - frame_idx))
    return selected + others[: max_cond_frame_num - len(selected)]


def _select(
    policy: MemoryPolicy,
    frame_idx: int,
    track_in_reverse: bool,
    num_frames: int | None,
    cond_frames: list[int],
    has_output: Callable[[int], bool],
) -> MemorySelection:
    """The rule behind `MemoryBank.select`: `has_output(t)` says whether frame t has a stored
    non-conditioning output or is a conditioning frame outside the selected ones."""
    selected_cond = select_closest_cond_frames(frame_idx, cond_frames, policy.max_cond_frames_in_attn)
    stride = policy.temporal_stride
    recent = []
    for t_pos in range(1, policy.num_maskmem):
        t_rel = policy.num_maskmem - t_pos  # frames before the current one
        if t_rel == 1:
            prev_idx = frame_idx + 1 if track_in_reverse else frame_idx - 1
        elif not track_in_reverse:
            prev_idx = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
        else:
            prev_idx = -(-(frame_idx + 2) // stride) * stride + (t_rel - 2) * stride
        if has_output(prev_idx):
            recent.append((t_pos, prev_idx))

    max_obj_ptrs = policy.max_obj_ptrs_in_encoder if num_frames is None else min(num_frames, policy.max_obj_ptrs_in_encoder)
    pointers = [t for t in selected_cond
                if not policy.cond_pointers_only_from_past or (t >= frame_idx if track_in_reverse else t <= frame_idx)]
    for t_diff in range(1, max_obj_ptrs):
        t = frame_idx + t_diff if track_in_reverse else frame_idx - t_diff
        if t < 0 or (num_frames is not None and t >= num_frames):
            break
        if has_output(t):
            pointers.append(t)
    return MemorySelection(tuple(selected_cond), tuple(recent), tuple(pointers), max_obj_ptrs)


class MemoryBank(Mapping):
    """Frame outputs of N objects, conditioning and tracked ones apart, with SAM2's reading rule.

    Also a read-only mapping with the official keys ("cond_frame_outputs",
    "non_cond_frame_outputs" -> {frame_idx: FrameOutput}), so code written against the official
    `output_dict` keeps working. Conditioning frames are never released.
    """

    def __init__(self, policy: MemoryPolicy) -> None:
        self.policy = policy
        self.cond_frame_outputs: dict[int, FrameOutput] = {}
        self.non_cond_frame_outputs: dict[int, FrameOutput] = {}

    # ---------------------------------------------------------------- mapping view
    def __getitem__(self, key: str) -> dict[int, FrameOutput]:
        if key == COND:
            return self.cond_frame_outputs
        if key == NON_COND:
            return self.non_cond_frame_outputs
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter((COND, NON_COND))

    def __len__(self) -> int:
        return 2

    # ---------------------------------------------------------------- storage
    @property
    def num_outputs(self) -> int:
        """How many frame outputs the bank holds (conditioning and tracked)."""
        return len(self.cond_frame_outputs) + len(self.non_cond_frame_outputs)

    def add(self, frame_idx: int, output: FrameOutput, is_cond: bool) -> None:
        """Store a frame's output; a conditioning output replaces a tracked one of the same frame."""
        if is_cond:
            self.cond_frame_outputs[frame_idx] = output
            self.non_cond_frame_outputs.pop(frame_idx, None)
        else:
            self.non_cond_frame_outputs[frame_idx] = output

    def output(self, frame_idx: int) -> FrameOutput:
        """The stored output of a selected frame (tracked outputs first, as the official lookup)."""
        out = self.non_cond_frame_outputs.get(frame_idx)
        return self.cond_frame_outputs[frame_idx] if out is None else out

    def frames_in_order(self) -> list[FrameOutput]:
        """Every stored output, by frame index."""
        merged = {**self.cond_frame_outputs, **self.non_cond_frame_outputs}
        return [merged[t] for t in sorted(merged)]

    # ---------------------------------------------------------------- the reading rule
    def select(self, frame_idx: int, track_in_reverse: bool, num_frames: int | None) -> MemorySelection:
        """Which stored frames SAM2 reads to segment `frame_idx` (tracking backwards when
        `track_in_reverse`; `num_frames` None for a stream of unknown length)."""
        cond = list(self.cond_frame_outputs)
        selected = set(select_closest_cond_frames(frame_idx, cond, self.policy.max_cond_frames_in_attn))
        non_cond = self.non_cond_frame_outputs
        cond_outputs = self.cond_frame_outputs

        def has_output(t: int) -> bool:
            return t in non_cond or (t in cond_outputs and t not in selected)

        return _select(self.policy, frame_idx, track_in_reverse, num_frames, cond, has_output)

    def restricted_to(self, selection: MemorySelection) -> "MemoryBank":
        """A bank holding only what `selection` reads, selecting the same frames again."""
        bank = MemoryBank(self.policy)
        bank.cond_frame_outputs = {t: self.cond_frame_outputs[t] for t in selection.cond_frames}
        rest = sorted({t for _, t in selection.recent_frames} | set(selection.pointer_frames))
        bank.non_cond_frame_outputs = {t: self.output(t) for t in rest if t not in bank.cond_frame_outputs}
        return bank

    def oldest_readable_frame(self, frame_idx: int, track_in_reverse: bool, num_frames: int | None) -> int:
        """The tracked frame furthest back (in the tracking direction) that `frame_idx` or any frame
        after it may read: the bound of the recent-memory and pointer windows."""
        window = _select(self.policy, frame_idx, track_in_reverse, num_frames, [], lambda t: True)
        reach = [t for _, t in window.recent_frames] + list(window.pointer_frames) + [frame_idx]
        return max(reach) if track_in_reverse else min(reach)

    def release_unreadable(self, next_frame_idx: int, track_in_reverse: bool, num_frames: int | None) -> list[int]:
        """Drop the tracked outputs that neither `next_frame_idx` nor any later frame of this
        tracking direction can read (the windows only move forward); returns the dropped frames.
        Conditioning outputs are kept."""
        bound = self.oldest_readable_frame(next_frame_idx, track_in_reverse, num_frames)
        dropped = [t for t in self.non_cond_frame_outputs if (t > bound if track_in_reverse else t < bound)]
        for t in dropped:
            del self.non_cond_frame_outputs[t]
        return dropped
