"""The per-frame work of the video predictor: SAM2's `track_step` on batches of objects, prompt
outputs turned into memory, the session's memory banks fed and, when streaming, released.

Objects whose memory banks select the same frames (`MemoryBank.select`) run as one batch through
the model, on one image-encoder run per frame; each object keeps its own compact outputs (see
`session.py`), so the numbers are those of the official per-object loop. An object whose frame
would read exactly the outputs it was last tracked from there keeps its stored output instead
(`tracking_inputs`). Shapes: O objects, S the model image size, H x W the video size.
"""
from __future__ import annotations

import itertools
from contextlib import AbstractContextManager, nullcontext
from typing import Sequence

import torch
import torch.nn.functional as F

from sam2_video.errors import UserInputError
from sam2_video.model.memory_bank import MemoryBank, MemorySelection
from sam2_video.model.sam2 import NO_OBJ_SCORE, SAM2
from sam2_video.predict.feature_cache import FeatureCache, default_cache_bytes
from sam2_video.predict.postprocess import fill_holes_in_mask_scores
from sam2_video.predict.session import FrameOutput, TrackingSession


INFERENCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# What a tracked frame's output was computed from besides the frame itself: (track_in_reverse,
# the MemorySelection, the serial of every output that selection reads).
TrackingInputs = tuple[bool, MemorySelection, tuple[int, ...]]


def tracking_inputs(bank: MemoryBank, selection: MemorySelection, reverse: bool) -> TrackingInputs | None:
    """The inputs of tracking one object on a frame with `selection` read from its `bank`; None
    when an output it reads has no serial (not made by `FrameTracker.track`)."""
    read = bank.restricted_to(selection)
    serials = tuple(out.get("serial") for outputs in read.values() for out in outputs.values())
    return None if None in serials else (reverse, selection, serials)


class FrameTracker:
    """Runs a `SAM2` model (eval mode) frame by frame on a `TrackingSession`.

    `feature_cache_bytes` / `feature_cache_frames` bound each session's `FeatureCache` of image-encoder
    outputs (None: `default_cache_bytes` of the device's free memory when the session first encodes a
    frame; no frame bound). `dtype` bfloat16 runs the model calls under bf16 autocast (CPU or CUDA);
    what the session keeps and returns stays float32, except the memory features, stored as the
    model config says.
    """

    def __init__(self, model: SAM2, feature_cache_bytes: int | None = None, feature_cache_frames: int | None = None,
                 dtype: str = "float32") -> None:
        if dtype not in INFERENCE_DTYPES:
            raise UserInputError(f"dtype {dtype!r}: use one of {', '.join(INFERENCE_DTYPES)}")
        self.model = model
        self.config = model.config
        self.image_size = model.config.image_size
        self.feature_cache_bytes = feature_cache_bytes
        self.feature_cache_frames = feature_cache_frames
        self.dtype = INFERENCE_DTYPES[dtype]
        self._serials = itertools.count()  # names each output this tracker makes (see tracking_inputs)

    def new_feature_cache(self, state: TrackingSession, max_frames: int | None = None) -> FeatureCache:
        """A cache with this tracker's bounds (`max_frames` overrides the frame bound)."""
        max_bytes = self.feature_cache_bytes
        if max_bytes is None:
            max_bytes = default_cache_bytes(state.device)
        return FeatureCache(max_bytes, self.feature_cache_frames if max_frames is None else max_frames)

    def _autocast(self, state: TrackingSession) -> AbstractContextManager:
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(state.device.type, dtype=self.dtype)

    def run_prompt(
        self,
        state: TrackingSession,
        obj_idx: int,
        frame_idx: int,
        is_init_cond_frame: bool,
        is_cond: bool,
        reverse: bool,
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        prev_sam_mask_logits: torch.Tensor | None,
    ) -> torch.Tensor:
        """Segment one object on a prompted frame; its memory is encoded later, when
        `propagate_in_video` starts (so further clicks on the frame stay cheap). The output is
        kept as a conditioning one when `is_cond`. Returns the frame's masks (`frame_masks`)."""
        bank = state["output_dict_per_obj"][obj_idx]
        memory = (self.model.new_memory_bank() if is_init_cond_frame else
                  self._batched_memory(state, [obj_idx], bank.select(frame_idx, reverse, state["num_frames"])))
        frame_outs, _ = self.track(
            state, [obj_idx], frame_idx, is_init_cond_frame=is_init_cond_frame, point_inputs=point_inputs,
            mask_inputs=mask_inputs, reverse=reverse, run_mem_encoder=False, memory=memory,
            prev_sam_mask_logits=prev_sam_mask_logits,
        )
        storage_key = "cond_frame_outputs" if is_cond else "non_cond_frame_outputs"
        state["temp_output_dict_per_obj"][obj_idx][storage_key][frame_idx] = frame_outs[0]
        return self.frame_masks(state, frame_idx, is_cond)

    def frame_masks(self, state: TrackingSession, frame_idx: int, is_cond: bool) -> torch.Tensor:
        """Every object's latest mask logits on a frame, [O,1,H,W] at video size; objects
        without an output there get NO_OBJ_SCORE."""
        video_hw = (state["video_height"], state["video_width"])
        masks = torch.full((len(state["obj_ids"]), 1, *video_hw), NO_OBJ_SCORE, dtype=torch.float32,
                           device=state["storage_device"])
        for obj_idx in range(len(state["obj_ids"])):
            out = state.latest_output(obj_idx, frame_idx, is_cond)
            if out is not None:
                masks[obj_idx : obj_idx + 1] = F.interpolate(out["pred_masks"], size=video_hw,
                                                             mode="bilinear", align_corners=False)
        return masks.to(state["device"])

    def to_video_res(self, state: TrackingSession, masks: torch.Tensor) -> torch.Tensor:
        """[O,1,S/4,S/4] logits -> [O,1,H,W] at the video's size."""
        video_hw = (state["video_height"], state["video_width"])
        masks = masks.to(state["device"])
        if masks.shape[-2:] == video_hw:
            return masks
        return F.interpolate(masks, size=video_hw, mode="bilinear", align_corners=False)

    def merge_prompt_outputs(self, state: TrackingSession) -> None:
        """Encode the memory of the prompted frames (one batch per frame) and move the prompt
        outputs into the tracking results (official `propagate_in_video_preflight`)."""
        num_objects = len(state["obj_ids"])
        if num_objects == 0:
            raise UserInputError(
                f"no prompts in this session of {state['video_path']}: add points, a box or a mask "
                "with add_new_points_or_box / add_new_mask before propagate_in_video"
            )
        to_encode: dict[int, list[FrameOutput]] = {}
        for temp in state["temp_output_dict_per_obj"].values():
            for storage_key in ("non_cond_frame_outputs", "cond_frame_outputs"):
                for frame_idx, out in temp[storage_key].items():
                    if out["maskmem_features"] is None:
                        to_encode.setdefault(frame_idx, []).append(out)
        for frame_idx, outs in to_encode.items():
            low_res = torch.cat([out["pred_masks"] for out in outs], dim=0).to(state["device"])
            high_res = F.interpolate(low_res, size=(self.image_size, self.image_size),
                                     mode="bilinear", align_corners=False)
            object_scores = torch.cat([out["object_score_logits"] for out in outs], dim=0)
            _, vision_feats, _, feat_sizes = self._image_features(state, frame_idx, len(outs))
            with self._autocast(state):
                features, pos_enc = self.model.encode_new_memory(
                    current_vision_feats=vision_feats, feat_sizes=feat_sizes, pred_masks_high_res=high_res,
                    object_score_logits=object_scores, is_mask_from_pts=True,
                )
            features = self._stored_memory(state, features)
            pos_enc = self._memory_pos_enc(state, pos_enc)
            for i, out in enumerate(outs):
                out["maskmem_features"] = features[i : i + 1]
                out["maskmem_pos_enc"] = pos_enc

        for obj_idx in range(num_objects):
            temp = state["temp_output_dict_per_obj"][obj_idx]
            outputs = state["output_dict_per_obj"][obj_idx]
            for storage_key in ("non_cond_frame_outputs", "cond_frame_outputs"):
                outputs[storage_key].update(temp[storage_key])
                temp[storage_key].clear()
            if not outputs["cond_frame_outputs"]:
                raise UserInputError(
                    f"object id {state['obj_idx_to_id'][obj_idx]} has no prompt left: add points, a box "
                    "or a mask for it (or remove_object it) before propagate_in_video"
                )
            for frame_idx in outputs["cond_frame_outputs"]:
                outputs["non_cond_frame_outputs"].pop(frame_idx, None)

    def track_frame(
        self,
        state: TrackingSession,
        frame_idx: int,
        reverse: bool,
        obj_idxs: Sequence[int],
        release_old_outputs: bool,
    ) -> torch.Tensor:
        """Track the objects `obj_idxs` on one frame (those with a conditioning output there keep
        it); objects whose banks select the same memory run as one batch. Returns every object's
        mask logits [O,1,S/4,S/4] on the compute device, NO_OBJ_SCORE for objects not in obj_idxs.
        With `release_old_outputs` the outputs no later frame of this direction reads are dropped."""
        num_frames = state["num_frames"]
        banks = state["output_dict_per_obj"]
        low_res = self.image_size // 4
        masks = torch.full((len(state["obj_ids"]), 1, low_res, low_res), NO_OBJ_SCORE, dtype=torch.float32,
                           device=state["device"])
        groups: dict[MemorySelection, list[int]] = {}
        inputs: dict[int, TrackingInputs] = {}
        for obj_idx in obj_idxs:
            bank = banks[obj_idx]
            if frame_idx in bank.cond_frame_outputs:
                masks[obj_idx] = bank.cond_frame_outputs[frame_idx]["pred_masks"][0].to(state["device"])
                continue
            stored = bank.non_cond_frame_outputs.get(frame_idx)
            selection = bank.select(frame_idx, reverse, num_frames)
            inputs[obj_idx] = tracking_inputs(bank, selection, reverse)
            if stored is not None and inputs[obj_idx] is not None and stored.get("inputs") == inputs[obj_idx]:
                # Tracked before from the very outputs it would read now (same frames, same
                # serials): track_step is a function of those and of the frame, so it would
                # return what is stored. Re-propagation after a correction of one object
                # recomputes that object only, the official code every object.
                masks[obj_idx] = stored["pred_masks"][0].to(state["device"])
                continue
            groups.setdefault(selection, []).append(obj_idx)
        for selection, group in groups.items():
            frame_outs, pred_masks = self.track(
                state, group, frame_idx, is_init_cond_frame=False, point_inputs=None, mask_inputs=None,
                reverse=reverse, run_mem_encoder=True, memory=self._batched_memory(state, group, selection),
            )
            for i, (obj_idx, out) in enumerate(zip(group, frame_outs)):
                out["inputs"] = inputs[obj_idx]
                banks[obj_idx].add(frame_idx, out, is_cond=False)
                masks[obj_idx] = pred_masks[i]
        next_frame_idx = frame_idx - 1 if reverse else frame_idx + 1
        for obj_idx in obj_idxs:
            tracked = state["frames_tracked_per_obj"][obj_idx]
            tracked[frame_idx] = {"reverse": reverse}
            if release_old_outputs:
                for t in banks[obj_idx].release_unreadable(next_frame_idx, reverse, num_frames):
                    tracked.pop(t, None)
        return masks

    def _batched_memory(self, state: TrackingSession, obj_idxs: Sequence[int], selection: MemorySelection) -> MemoryBank:
        """One bank for objects whose banks make the same `selection`, holding only what it reads,
        stacked: maskmem_features [B,mem_dim,S/16,S/16] in the storage dtype, maskmem_pos_enc list of
        [B,mem_dim,h,w], obj_ptr [B,C]. The model casts the memory exactly to float32 where it reads
        it, which keeps frames without object pointers working (facebookresearch/sam2#308)."""
        device = state["device"]
        banks = [state["output_dict_per_obj"][i].restricted_to(selection) for i in obj_idxs]

        def stack(outs: list[FrameOutput]) -> FrameOutput:
            return {
                "maskmem_features": torch.cat([o["maskmem_features"] for o in outs], dim=0),
                "maskmem_pos_enc": [p.to(device).expand(len(outs), -1, -1, -1) for p in outs[0]["maskmem_pos_enc"]],
                "obj_ptr": torch.cat([o["obj_ptr"] for o in outs], dim=0).to(device),
            }

        batched = self.model.new_memory_bank()
        for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
            batched[key].update((t, stack([bank[key][t] for bank in banks])) for t in banks[0][key])
        return batched

    def encode_frame(self, state: TrackingSession, frame_idx: int) -> dict:
        """Image-encoder output of one frame (batch 1), from the session's `FeatureCache` when it
        holds the frame (prompts, re-propagation and reverse passes reuse it), else encoded and cached."""
        if state.feature_cache is None:
            state.feature_cache = self.new_feature_cache(state)
        cached = state.feature_cache.get(frame_idx)
        if cached is None:
            image = state["images"][frame_idx].to(state["device"]).float().unsqueeze(0)
            with self._autocast(state):
                cached = state.feature_cache.put(frame_idx, self.model.forward_image(image))
        return cached

    def _image_features(self, state: TrackingSession, frame_idx: int, batch_size: int) -> tuple:
        """The frame's features expanded (without copies) to `batch_size` objects:
        (backbone_out, vision_feats, vision_pos_embeds, feat_sizes) with feats [HW,B,C] per level."""
        backbone_out = self.encode_frame(state, frame_idx)
        expanded = {
            "backbone_fpn": [x.expand(batch_size, -1, -1, -1) for x in backbone_out["backbone_fpn"]],
            "vision_pos_enc": [x.expand(batch_size, -1, -1, -1) for x in backbone_out["vision_pos_enc"]],
        }
        return self.model.prepare_backbone_features(expanded)

    def _stored_memory(self, state: TrackingSession, features: torch.Tensor) -> torch.Tensor:
        dtype = torch.bfloat16 if self.config.memory_in_bfloat16 else torch.float32
        return features.to(dtype).to(state["storage_device"])

    def _memory_pos_enc(self, state: TrackingSession, pos_enc: list[torch.Tensor]) -> list[torch.Tensor]:
        """The memory position encoding is the same for every frame and object: keep one copy
        (batch 1) in the session's constants."""
        constants = state["constants"]
        if "maskmem_pos_enc" not in constants:
            constants["maskmem_pos_enc"] = [x[0:1].clone() for x in pos_enc]
        return constants["maskmem_pos_enc"]

    def track(
        self,
        state: TrackingSession,
        obj_idxs: Sequence[int],
        frame_idx: int,
        is_init_cond_frame: bool,
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        reverse: bool,
        run_mem_encoder: bool,
        memory: MemoryBank,
        prev_sam_mask_logits: torch.Tensor | None = None,
    ) -> tuple[list[FrameOutput], torch.Tensor]:
        """One `track_step` for a batch of objects on one frame, reading `memory` (their batched bank).

        Returns the per-object compact outputs (what the session keeps: maskmem_features
        [1,mem_dim,S/16,S/16] in the storage dtype or None, maskmem_pos_enc, pred_masks
        [1,1,S/4,S/4], obj_ptr [1,C], object_score_logits [1,1], a new serial) and the batch's mask logits
        [B,1,S/4,S/4] on the compute device, small holes filled.
        """
        _, vision_feats, vision_pos_embeds, feat_sizes = self._image_features(state, frame_idx, len(obj_idxs))
        with self._autocast(state):
            out = self.model.track_step(
                frame_idx=frame_idx,
                is_init_cond_frame=is_init_cond_frame,
                current_vision_feats=vision_feats,
                current_vision_pos_embeds=vision_pos_embeds,
                feat_sizes=feat_sizes,
                point_inputs=point_inputs,
                mask_inputs=mask_inputs,
                memory=memory,
                num_frames=state["num_frames"],
                track_in_reverse=reverse,
                run_mem_encoder=run_mem_encoder,
                prev_sam_mask_logits=prev_sam_mask_logits,
            )
        pred_masks = out["pred_masks"].float()
        if self.config.fill_hole_area > 0:
            pred_masks = fill_holes_in_mask_scores(pred_masks, self.config.fill_hole_area)
        stored_masks = pred_masks.to(state["storage_device"])
        features = out["maskmem_features"]
        if features is not None:
            features = self._stored_memory(state, features)
            pos_enc = self._memory_pos_enc(state, out["maskmem_pos_enc"])
        frame_outs = [
            {
                "maskmem_features": None if features is None else features[i : i + 1],
                "maskmem_pos_enc": None if features is None else pos_enc,
                "pred_masks": stored_masks[i : i + 1],
                "obj_ptr": out["obj_ptr"][i : i + 1].float(),
                "object_score_logits": out["object_score_logits"][i : i + 1].float(),
                "serial": next(self._serials),
            }
            for i in range(len(obj_idxs))
        ]
        return frame_outs, pred_masks
