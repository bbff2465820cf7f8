"""A bounded LRU cache of per-frame image-encoder outputs for a tracking session.

The image encoder is most of a tracked frame's cost, and its output depends on the frame only, not
on prompts or memory. Keeping it lets a re-propagation after a correction click, a reverse pass
over frames just tracked forward, or the annotate page going back to a frame skip the encoder on
every frame still cached; evicted frames (least recently used first) are simply encoded again.

Entries are stored as the encoder returned them (float32 in the default precision), so results are
bit-identical to recomputing. The sine position encodings (`vision_pos_enc`) are a function of the
feature-map shape only (`PositionEmbeddingSine`), identical for every frame, and at 1024 px they are
5x the size of the features: the cache keeps one copy and every entry refers to it.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import torch

BackboneOut = dict[str, Any]

DEFAULT_SHARE_OF_FREE_MEMORY = 0.25
DEFAULT_CAP_BYTES = 8 * 2**30
FALLBACK_BYTES = 512 * 2**20


def default_cache_bytes(device: torch.device) -> int:
    """A quarter of the memory free now on `device` (CUDA: `mem_get_info`; CPU: the system's available
    pages from `os.sysconf`), at most 8 GiB; 512 MiB where the free memory cannot be read."""
    free: int | None = None
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # not Linux: no such sysconf name
            free = None
    if free is None or free <= 0:
        return FALLBACK_BYTES
    return int(min(free * DEFAULT_SHARE_OF_FREE_MEMORY, DEFAULT_CAP_BYTES))


def _tensors(backbone_out: BackboneOut) -> list[torch.Tensor]:
    return [backbone_out["vision_features"], *backbone_out["backbone_fpn"], *backbone_out["vision_pos_enc"]]


def _unique_bytes(tensors: list[torch.Tensor], seen: set[int]) -> int:
    total = 0
    for tensor in tensors:
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += tensor.untyped_storage().nbytes()
    return total


class FeatureCache:
    """Image-encoder outputs by frame index, least recently used evicted first.

    `max_bytes` bounds the memory of the cached tensors (shared position encodings counted once);
    `max_frames`, when given, also bounds the number of frames. A frame larger than the whole bound
    is not kept. Both bounds exist because users think of a budget in memory (the default, sized from
    free memory) while a fixed window of frames (e.g. 1 for a live stream that never comes back) is
    simpler to reason about.
    """

    def __init__(self, max_bytes: int, max_frames: int | None = None) -> None:
        if max_bytes < 0 or (max_frames is not None and max_frames < 0):
            raise ValueError(f"feature cache bounds must be >= 0, got {max_bytes} bytes and {max_frames} frames")
        self.max_bytes = max_bytes
        self.max_frames = max_frames
        self._entries: OrderedDict[int, tuple[BackboneOut, int]] = OrderedDict()  # (output, own bytes)
        self._pos_enc: list[torch.Tensor] | None = None
        self._pos_enc_bytes = 0
        self._entry_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, frame_idx: object) -> bool:
        return frame_idx in self._entries

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached tensors (each storage counted once)."""
        return self._entry_bytes + (self._pos_enc_bytes if self._entries else 0)

    def get(self, frame_idx: int) -> BackboneOut | None:
        entry = self._entries.get(frame_idx)
        if entry is None:
            return None
        self._entries.move_to_end(frame_idx)
        return entry[0]

    def put(self, frame_idx: int, backbone_out: BackboneOut) -> BackboneOut:
        """Keep a frame's encoder output (evicting the least recently used frames to stay within the
        bounds); returns the output to use, whose position encodings may be the shared copy."""
        pos_enc = backbone_out["vision_pos_enc"]
        shared = self._pos_enc is not None and self._entries and \
            [(p.shape, p.dtype, p.device) for p in self._pos_enc] == [(p.shape, p.dtype, p.device) for p in pos_enc]
        if shared:
            backbone_out = {**backbone_out, "vision_pos_enc": self._pos_enc}
        else:
            self.clear()
            self._pos_enc = list(pos_enc)
            self._pos_enc_bytes = _unique_bytes(self._pos_enc, set())
        pos_ptrs = {p.untyped_storage().data_ptr() for p in self._pos_enc}
        own_bytes = _unique_bytes(_tensors(backbone_out), pos_ptrs)
        self.pop(frame_idx)
        self._entries[frame_idx] = (backbone_out, own_bytes)
        self._entry_bytes += own_bytes
        while self._entries and (self.nbytes > self.max_bytes
                                 or (self.max_frames is not None and len(self._entries) > self.max_frames)):
            self.pop(next(iter(self._entries)))
        return backbone_out

    def pop(self, frame_idx: int) -> None:
        entry = self._entries.pop(frame_idx, None)
        if entry is not None:
            self._entry_bytes -= entry[1]

    def clear(self) -> None:
        self._entries.clear()
        self._entry_bytes = 0
