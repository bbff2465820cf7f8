"""Semi-supervised video segmentation with STCN, with the mask subset of our SAM2 predictor's API.

`init_state`, `reset_state`, `add_new_mask` and `propagate_in_video` take the arguments of
`SAM2VideoPredictor` and return the same shapes, so the validation and prediction code runs on
either model. Tracking follows STCN's inference: a frame with given masks becomes permanent
memory; while propagating, every `mem_every`-th frame is added to the permanent memory and the
previous frame is always in memory. An object is tracked from the first frame (in processing
order) on which it has a mask; a mask given for one object on a frame wins over the tracked
objects there. All objects of a frame are combined by soft aggregation, and the returned logits
are margins (log-probability of the object minus that of the best competitor, background
included), so `logits > 0` marks exactly the pixels the object wins.

Shapes: O = objects, H x W = video size, S = model image size.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from sam2_video.config import stored_model_section
from sam2_video.errors import UserInputError
from sam2_video.model.run_checkpoint import load_training_checkpoint
from sam2_video.model.stcn import STCN, KeyFeatures, STCNConfig, aggregate, get_affinity
from sam2_video.predict.input_checks import check_frame_idx, check_mask, check_obj_id
from sam2_video.predict.video_frames import open_video_frames

# mask score of an object that has no output on a frame (the SAM2 predictor's placeholder value)
NO_OBJ_SCORE = -1024.0

InferenceState = dict[str, Any]


@dataclass
class _MemoryEntry:
    """One memory frame: its key [1, Ck, h, w] and the values [Cv, h, w] of the objects tracked there."""

    key: torch.Tensor
    values: dict[int, torch.Tensor] = field(default_factory=dict)


class STCNVideoPredictor:
    """Tracks objects given by masks through a video with an `STCN` model (see the module docstring)."""

    def __init__(self, model: STCN, mem_every: int = 5) -> None:
        if mem_every < 1:
            raise ValueError(f"mem_every must be at least 1, got {mem_every}")
        self.model = model.eval()
        self.config = model.config
        self.mem_every = mem_every

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def init_state(self, video_path: str, offload_video_to_cpu: bool = False) -> InferenceState:
        """Open a video (a folder of frames or a video file, read on demand) and start an empty session."""
        images = open_video_frames(video_path, self.image_size,
                                   device=torch.device("cpu") if offload_video_to_cpu else self.device)
        return {
            "video_path": str(video_path),
            "images": images,
            "num_frames": len(images),
            "frame_names": images.names,
            "video_height": images.height,
            "video_width": images.width,
            "device": self.device,
            "obj_id_to_idx": OrderedDict(),
            "obj_ids": [],
            # {frame_idx: {obj_idx: mask [S, S] float}}
            "mask_inputs": {},
        }

    def reset_state(self, inference_state: InferenceState) -> None:
        """Remove every object and mask (the video stays loaded)."""
        inference_state["obj_id_to_idx"].clear()
        inference_state["obj_ids"].clear()
        inference_state["mask_inputs"].clear()

    @torch.inference_mode()
    def add_new_mask(
        self, inference_state: InferenceState, frame_idx: int, obj_id: int, mask: Any
    ) -> tuple[int, list[int], torch.Tensor]:
        """Give `obj_id` the mask [H, W] (nonzero = object, video size) on `frame_idx`.

        Returns (frame_idx, obj_ids, video_res_masks [O, 1, H, W] logits of the given masks on that
        frame; objects without a mask there get NO_OBJ_SCORE).
        """
        state = inference_state
        frame_idx = _check_frame_idx(state, frame_idx)
        obj_id = check_obj_id(obj_id)
        video_hw = (state["video_height"], state["video_width"])
        mask = check_mask(mask, obj_id, frame_idx, state["video_path"], video_hw)
        if obj_id not in state["obj_id_to_idx"]:
            if len(state["obj_ids"]) >= self.config.max_objects:
                raise UserInputError(
                    f"object {obj_id} on frame {frame_idx} of {state['video_path']} would be object number "
                    f"{len(state['obj_ids']) + 1}, but STCN is configured for at most {self.config.max_objects} "
                    "objects per video (model.stcn.max_objects)"
                )
            state["obj_id_to_idx"][obj_id] = len(state["obj_ids"])
            state["obj_ids"].append(obj_id)
        resized = mask.bool()[None, None].float().to(state["device"])
        if video_hw != (self.image_size, self.image_size):
            resized = F.interpolate(resized, size=(self.image_size, self.image_size), mode="bilinear",
                                    align_corners=False, antialias=True)
            resized = (resized >= 0.5).float()
        state["mask_inputs"].setdefault(frame_idx, {})[state["obj_id_to_idx"][obj_id]] = resized[0, 0]

        given = state["mask_inputs"][frame_idx]
        obj_idxs = sorted(given)
        labels = _label_probs(torch.stack([given[i] for i in obj_idxs]))
        return frame_idx, list(state["obj_ids"]), self._video_res_logits(state, obj_idxs, labels)

    @torch.inference_mode()
    def propagate_in_video(
        self,
        inference_state: InferenceState,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[int, list[int], torch.Tensor]]:
        """Track every object from `start_frame_idx` (default: the first frame with a mask).

        Yields (frame_idx, obj_ids, video_res_masks [O, 1, H, W] logits) per frame in processing
        order; as in the SAM2 predictor, `max_frame_num_to_track=N` processes N+1 frames.
        """
        state = inference_state
        if not state["mask_inputs"]:
            raise UserInputError(f"{state['video_path']}: add a mask with add_new_mask before propagating")
        if start_frame_idx is None:
            start_frame_idx = min(state["mask_inputs"])
        start_frame_idx = _check_frame_idx(state, start_frame_idx, what="start_frame_idx")
        num_frames = state["num_frames"]
        if max_frame_num_to_track is None:
            max_frame_num_to_track = num_frames
        if isinstance(max_frame_num_to_track, bool) or not isinstance(max_frame_num_to_track, (int, np.integer)) \
                or max_frame_num_to_track < 0:
            raise UserInputError(f"max_frame_num_to_track must be a non-negative int, got {max_frame_num_to_track!r}")
        if reverse:
            end_frame_idx = max(start_frame_idx - max_frame_num_to_track, 0)
            order = range(start_frame_idx, end_frame_idx - 1, -1) if start_frame_idx > 0 else range(0)
        else:
            order = range(start_frame_idx, min(start_frame_idx + max_frame_num_to_track, num_frames - 1) + 1)

        permanent: list[_MemoryEntry] = []
        previous: _MemoryEntry | None = None
        started: list[int] = []  # object indices being tracked, in the order they started
        for step, frame_idx in enumerate(order):
            query = self.model.encode_key(state["images"][frame_idx : frame_idx + 1].to(state["device"]))
            given = state["mask_inputs"].get(frame_idx, {})
            tracked = list(started)
            started += [i for i in sorted(given) if i not in started]
            if not started:
                yield frame_idx, list(state["obj_ids"]), self._video_res_logits(state, [], None)
                continue
            memory = permanent + ([previous] if previous is not None else [])
            labels = _label_probs(self._object_probs(state, query, memory, tracked, given, started))
            yield frame_idx, list(state["obj_ids"]), self._video_res_logits(state, started, labels)

            entry = _MemoryEntry(query.key)
            values = self.model.encode_value(state["images"][frame_idx : frame_idx + 1].to(state["device"]),
                                             query.f16, labels[None, 1:])[0]
            entry.values = dict(zip(started, values))
            if given or step % self.mem_every == 0:
                permanent.append(entry)
                previous = None
            else:
                previous = entry

    def _object_probs(
        self,
        state: InferenceState,
        query: KeyFeatures,
        memory: list[_MemoryEntry],
        tracked: list[int],
        given: dict[int, torch.Tensor],
        started: list[int],
    ) -> torch.Tensor:
        """Independent probabilities [len(started), S, S] of the started objects on the query frame:
        given masks as they are, tracked objects from memory (outside the given masks)."""
        size = (self.image_size, self.image_size)
        probs = {i: given[i] for i in given}
        to_decode = [i for i in tracked if i not in given]
        # objects whose memory holds the same frames share one affinity
        groups: dict[tuple[int, ...], list[int]] = {}
        for obj_idx in to_decode:
            frames = tuple(n for n, entry in enumerate(memory) if obj_idx in entry.values)
            groups.setdefault(frames, []).append(obj_idx)
        covered = torch.zeros(size, device=state["device"])
        for mask in given.values():
            covered = torch.maximum(covered, mask)
        for frames, obj_idxs in groups.items():
            memory_keys = torch.stack([memory[n].key for n in frames], dim=2)  # [1, Ck, T, h, w]
            memory_values = torch.stack(
                [torch.stack([memory[n].values[i] for n in frames], dim=1) for i in obj_idxs])[None]
            logits = self.model.decode_objects(get_affinity(memory_keys, query.key), memory_values, query)[0]
            for obj_idx, obj_logits in zip(obj_idxs, logits):
                probs[obj_idx] = torch.sigmoid(obj_logits) * (1 - covered)
        return torch.stack([probs[i] for i in started])

    def _video_res_logits(
        self, state: InferenceState, obj_idxs: list[int], labels: torch.Tensor | None
    ) -> torch.Tensor:
        """[O, 1, H, W] margins at video size for the objects `obj_idxs`, given the label
        probabilities [1 + len(obj_idxs), S, S] (background first); other objects get NO_OBJ_SCORE."""
        height, width = state["video_height"], state["video_width"]
        out = torch.full((len(state["obj_ids"]), 1, height, width), NO_OBJ_SCORE, device=state["device"])
        if obj_idxs:
            margins = _win_margins(labels)[:, None]
            margins = F.interpolate(margins, size=(height, width), mode="bilinear", align_corners=False)
            out[obj_idxs] = margins
        return out


def build_stcn_video_predictor(
    checkpoint: str | os.PathLike | None, device: str = "cpu", image_size: int | None = None
) -> STCNVideoPredictor:
    """An `STCNVideoPredictor` on the weights of an STCN training checkpoint (`last.pt` / `best.pt` of
    `sam2-video train` with `model: stcn`), whose stored config gives the sizes and `model.stcn.mem_every`.

    `image_size` (a multiple of 16) replaces the trained size; memory and decoder work at any size.
    """
    if checkpoint is None:
        raise UserInputError(
            "STCN has no pretrained weights to fall back on: give a training checkpoint (last.pt or best.pt "
            "of `sam2-video train` with model: stcn; --checkpoint on the command line)"
        )
    loaded = load_training_checkpoint(checkpoint)
    section = stored_model_section(loaded.get("config"), str(checkpoint))
    if section is None or section.model != "stcn":
        kind = "no run config (exported weights?)" if section is None else section.model
        raise UserInputError(
            f"{checkpoint}: not an STCN training checkpoint (it holds {kind}); give last.pt or best.pt "
            "of a `sam2-video train` run with model: stcn"
        )
    try:
        config = STCNConfig.from_section(section.stcn, image_size if image_size is not None else section.image_size)
    except ValueError as err:
        raise UserInputError(f"{checkpoint}: {err}") from None
    model = STCN(config)
    try:
        result = model.load_state_dict(loaded["model"], strict=False)
    except RuntimeError as err:  # shapes differ
        raise UserInputError(f"{checkpoint}: its weights do not fit the STCN its config describes: {err}") from None
    if result.missing_keys or result.unexpected_keys:
        raise UserInputError(
            f"{checkpoint}: its weights do not match the STCN its config describes: missing "
            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return STCNVideoPredictor(model.to(device), mem_every=section.stcn.mem_every)


def _check_frame_idx(state: InferenceState, frame_idx: Any, what: str = "frame_idx") -> int:
    return check_frame_idx(frame_idx, state["num_frames"], state["video_path"], what)


def _label_probs(prob: torch.Tensor) -> torch.Tensor:
    """Independent object probabilities [K, S, S] -> soft-aggregated label probabilities
    [K+1, S, S] (background first, summing to 1 at each pixel)."""
    return torch.softmax(aggregate(prob, dim=0), dim=0)


def _win_margins(labels: torch.Tensor) -> torch.Tensor:
    """Label probabilities [K+1, S, S] -> [K, S, S]: log p of object k minus the largest log p of
    the other labels (background included), positive exactly where object k is the most likely."""
    log_p = labels.clamp(min=1e-30).log()
    top2 = log_p.topk(2, dim=0).values
    best_other = torch.where(log_p[1:] >= top2[0], top2[1], top2[0])
    return log_p[1:] - best_other
