"""Interactive video segmentation with the official `SAM2VideoPredictor` API.

Code written for facebookresearch/sam2 runs on this predictor by changing one import:
`init_state`, `add_new_points_or_box`, `add_new_mask`, `propagate_in_video`,
`clear_all_prompts_in_frame`, `remove_object` and `reset_state` take the same arguments and
return the same shapes, and `inference_state` is a dict with the official key names.

What differs from the official predictor:
  - Objects are tracked as batches. On each frame the image encoder runs once, and every group
    of objects whose memory bank holds the same frames (normally all objects prompted on the
    same frame) runs as one batch through `SAM2.track_step`; the per-object outputs are kept
    exactly as the official code keeps them, so the numbers are those of the per-object loop.
  - A tracked frame without any object pointer (propagation from a frame before an object's
    first prompt) works; the official code crashes there ("mat1 and mat2 must have the same
    dtype", facebookresearch/sam2#308) because its bf16 memory reaches the attention uncast.
  - Small background holes are filled on the CPU as well (`config.fill_hole_area`; the official
    code needs its CUDA extension for that and silently skips it on the CPU).
  - Bad input raises `UserInputError` with one message saying what was expected.

Shapes: O = objects, H x W = video size, S = model image size; mask logits are float32.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sam2_video.errors import UserInputError
from sam2_video.model.build import build_sam2
from sam2_video.model.memory_bank import MemoryBank, MemorySelection
from sam2_video.model.presets import SAM2Config, sam2_config
from sam2_video.model.sam2 import SAM2
from sam2_video.predict.frames import load_video_frames
from sam2_video.predict.postprocess import fill_holes_in_mask_scores

# mask score of an object that has no output on a frame (official placeholder value)
NO_OBJ_SCORE = -1024.0

InferenceState = dict[str, Any]
FrameOutput = dict[str, Any]


class SAM2VideoPredictor:
    """Tracks prompted objects through a video with a `SAM2` model (see the module docstring).

    Memory features are stored in bfloat16 by default (`model.config.memory_in_bfloat16`), as the
    official predictor does, so that the numbers match it. `memory_in_bfloat16=False` keeps
    them in float32: the memory bank, which holds one entry per tracked frame and object
    (mem_dim x (S/16)^2 values, 1 MiB in float32 at S=1024), takes twice the memory, and the
    results drift from the official ones by the bf16 rounding it no longer applies.
    """

    def __init__(self, model: SAM2) -> None:
        self.model = model.eval()
        self.config: SAM2Config = model.config

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ session
    @torch.inference_mode()
    def init_state(
        self,
        video_path: str,
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
        async_loading_frames: bool = False,
    ) -> InferenceState:
        """Load a video (a folder of JPEG/PNG frames or an .mp4) and start an empty session.

        `offload_video_to_cpu` keeps the frames [T,3,S,S] in CPU memory, `offload_state_to_cpu`
        keeps the per-frame outputs there (both only matter on a GPU). `async_loading_frames` is
        accepted so that code written for the official predictor runs unchanged; frames are
        always loaded before this returns.
        """
        device = self.device
        images, video_height, video_width, frame_names = load_video_frames(
            video_path, self.image_size, offload_video_to_cpu=offload_video_to_cpu, device=device
        )
        state: InferenceState = {
            "video_path": str(video_path),
            "images": images,
            "num_frames": len(images),
            "frame_names": frame_names,
            "offload_video_to_cpu": offload_video_to_cpu,
            "offload_state_to_cpu": offload_state_to_cpu,
            "video_height": video_height,
            "video_width": video_width,
            "device": device,
            "storage_device": torch.device("cpu") if offload_state_to_cpu else device,
            # prompts per object: {obj_idx: {frame_idx: ...}}
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            # backbone output of the most recently used frame: {frame_idx: backbone_out}
            "cached_features": {},
            # values shared by all frames and objects (the memory position encoding)
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            # per object {"cond_frame_outputs": {t: out}, "non_cond_frame_outputs": {t: out}}
            "output_dict_per_obj": {},
            # outputs of prompts not yet merged into output_dict_per_obj (same layout)
            "temp_output_dict_per_obj": {},
            # per object {frame_idx: {"reverse": bool}}
            "frames_tracked_per_obj": {},
        }
        self._backbone_out(state, 0)  # warm-up: frame 0 is the usual first prompt
        return state

    @torch.inference_mode()
    def reset_state(self, inference_state: InferenceState) -> None:
        """Remove every object, prompt and tracking result (the video stays loaded)."""
        for key in ("obj_id_to_idx", "obj_idx_to_id", "point_inputs_per_obj", "mask_inputs_per_obj",
                    "output_dict_per_obj", "temp_output_dict_per_obj", "frames_tracked_per_obj"):
            inference_state[key].clear()
        inference_state["obj_ids"].clear()

    # ------------------------------------------------------------------ prompts
    @torch.inference_mode()
    def add_new_points_or_box(
        self,
        inference_state: InferenceState,
        frame_idx: int,
        obj_id: int,
        points: Any = None,
        labels: Any = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box: Any = None,
    ) -> tuple[int, list[int], torch.Tensor]:
        """Add clicks (points [N,2] x,y with labels [N], 1 = object, 0 = background) and/or a box
        [4] (x0,y0,x1,y1) for `obj_id` on `frame_idx`; coordinates are video pixels unless
        `normalize_coords=False` (then they are already in model pixels, 0..S).

        Returns (frame_idx, obj_ids, video_res_masks [O,1,H,W] logits on that frame).
        """
        frame_idx = self._check_frame_idx(inference_state, frame_idx)
        obj_id = _check_obj_id(obj_id)
        new_points, new_labels = _points_and_labels(points, labels, box, clear_old_points)
        if normalize_coords:
            video_wh = torch.tensor([inference_state["video_width"], inference_state["video_height"]])
            new_points = new_points / video_wh
        new_points = (new_points * self.image_size).to(inference_state["device"])
        new_labels = new_labels.to(inference_state["device"])

        obj_idx = self._obj_idx(inference_state, obj_id)
        point_inputs_per_frame = inference_state["point_inputs_per_obj"][obj_idx]
        old = None if clear_old_points else point_inputs_per_frame.get(frame_idx)
        if old is not None:
            new_points = torch.cat([old["point_coords"], new_points], dim=1)
            new_labels = torch.cat([old["point_labels"], new_labels], dim=1)
        point_inputs = {"point_coords": new_points, "point_labels": new_labels}
        point_inputs_per_frame[frame_idx] = point_inputs
        inference_state["mask_inputs_per_obj"][obj_idx].pop(frame_idx, None)

        # earlier logits of this object on this frame go into the decoder with the new clicks
        is_cond, reverse = self._prompt_kind(inference_state, obj_idx, frame_idx)
        prev_out = self._latest_output(inference_state, obj_idx, frame_idx, is_cond)
        prev_logits = None
        if prev_out is not None and prev_out["pred_masks"] is not None:
            prev_logits = torch.clamp(prev_out["pred_masks"].to(inference_state["device"]), -32.0, 32.0)
        return self._run_prompt(inference_state, obj_idx, frame_idx, is_cond, reverse,
                                point_inputs=point_inputs, mask_inputs=None, prev_sam_mask_logits=prev_logits)

    @torch.inference_mode()
    def add_new_mask(
        self,
        inference_state: InferenceState,
        frame_idx: int,
        obj_id: int,
        mask: Any,
    ) -> tuple[int, list[int], torch.Tensor]:
        """Give `obj_id` the mask [H,W] (nonzero = object, video size) on `frame_idx`.

        Returns (frame_idx, obj_ids, video_res_masks [O,1,H,W] logits on that frame).
        """
        frame_idx = self._check_frame_idx(inference_state, frame_idx)
        obj_id = _check_obj_id(obj_id)
        mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
        video_hw = (inference_state["video_height"], inference_state["video_width"])
        if mask.dim() != 2 or tuple(mask.shape) != video_hw:
            got = "x".join(str(s) for s in mask.shape) or "a scalar"
            raise UserInputError(
                f"mask for object {obj_id} on frame {frame_idx} of {inference_state['video_path']} is "
                f"{got} but the video frames are {video_hw[0]}x{video_hw[1]} (height x width); "
                "give a 2-D mask of the frame's size"
            )
        mask_inputs = mask.bool()[None, None].float().to(inference_state["device"])
        if video_hw != (self.image_size, self.image_size):
            mask_inputs = F.interpolate(mask_inputs, size=(self.image_size, self.image_size),
                                        mode="bilinear", align_corners=False, antialias=True)
            mask_inputs = (mask_inputs >= 0.5).float()

        obj_idx = self._obj_idx(inference_state, obj_id)
        inference_state["mask_inputs_per_obj"][obj_idx][frame_idx] = mask_inputs
        inference_state["point_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        is_cond, reverse = self._prompt_kind(inference_state, obj_idx, frame_idx)
        return self._run_prompt(inference_state, obj_idx, frame_idx, is_cond, reverse,
                                point_inputs=None, mask_inputs=mask_inputs, prev_sam_mask_logits=None)

    @torch.inference_mode()
    def clear_all_prompts_in_frame(
        self, inference_state: InferenceState, frame_idx: int, obj_id: int, need_output: bool = True
    ) -> tuple[int, list[int], torch.Tensor] | None:
        """Remove `obj_id`'s clicks, box or mask on `frame_idx`; its output there becomes a
        tracked (non-conditioning) one. Returns the frame's masks like `add_new_points_or_box`."""
        frame_idx = self._check_frame_idx(inference_state, frame_idx)
        obj_idx = self._existing_obj_idx(inference_state, obj_id)
        inference_state["point_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        inference_state["mask_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        temp_outputs = inference_state["temp_output_dict_per_obj"]
        temp_outputs[obj_idx]["cond_frame_outputs"].pop(frame_idx, None)
        temp_outputs[obj_idx]["non_cond_frame_outputs"].pop(frame_idx, None)
        outputs = inference_state["output_dict_per_obj"][obj_idx]
        out = outputs["cond_frame_outputs"].pop(frame_idx, None)
        if out is not None:
            outputs["non_cond_frame_outputs"][frame_idx] = out
            inference_state["frames_tracked_per_obj"][obj_idx].pop(frame_idx, None)
        if not need_output:
            return None
        is_cond = any(frame_idx in temp["cond_frame_outputs"] for temp in temp_outputs.values())
        return frame_idx, inference_state["obj_ids"], self._frame_masks(inference_state, frame_idx, is_cond)

    @torch.inference_mode()
    def remove_object(
        self, inference_state: InferenceState, obj_id: int, strict: bool = False, need_output: bool = True
    ) -> tuple[list[int], list[tuple[int, torch.Tensor]]]:
        """Forget `obj_id` (its prompts and results). Returns (remaining obj_ids, [(frame_idx,
        video_res_masks [O,1,H,W])] for the frames where it had prompts). An unknown id is
        ignored unless `strict`."""
        if obj_id not in inference_state["obj_id_to_idx"]:
            if strict:
                raise UserInputError(
                    f"cannot remove object id {obj_id!r}: it does not exist "
                    f"(objects in this session: {inference_state['obj_ids']})"
                )
            return inference_state["obj_ids"], []
        if len(inference_state["obj_ids"]) == 1:
            self.reset_state(inference_state)
            return inference_state["obj_ids"], []

        removed_idx = inference_state["obj_id_to_idx"][obj_id]
        prompted_frames = sorted(set(inference_state["point_inputs_per_obj"][removed_idx])
                                 | set(inference_state["mask_inputs_per_obj"][removed_idx]))
        for frame_idx in prompted_frames:
            self.clear_all_prompts_in_frame(inference_state, frame_idx, obj_id, need_output=False)

        kept = [idx for idx in range(len(inference_state["obj_ids"])) if idx != removed_idx]
        new_ids = [inference_state["obj_ids"][idx] for idx in kept]
        inference_state["obj_id_to_idx"] = OrderedDict((oid, i) for i, oid in enumerate(new_ids))
        inference_state["obj_idx_to_id"] = OrderedDict(enumerate(new_ids))
        inference_state["obj_ids"] = new_ids
        for key in ("point_inputs_per_obj", "mask_inputs_per_obj", "output_dict_per_obj",
                    "temp_output_dict_per_obj", "frames_tracked_per_obj"):
            per_obj = inference_state[key]
            inference_state[key] = {new: per_obj[old] for new, old in enumerate(kept)}

        updated = []
        if need_output:
            temp_outputs = inference_state["temp_output_dict_per_obj"]
            for frame_idx in prompted_frames:
                is_cond = any(frame_idx in temp["cond_frame_outputs"] for temp in temp_outputs.values())
                updated.append((frame_idx, self._frame_masks(inference_state, frame_idx, is_cond)))
        return inference_state["obj_ids"], updated

    # ------------------------------------------------------------------ tracking
    @torch.inference_mode()
    def propagate_in_video(
        self,
        inference_state: InferenceState,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[int, list[int], torch.Tensor]]:
        """Track every object from `start_frame_idx` (default: the first prompted frame).

        Yields (frame_idx, obj_ids, video_res_masks [O,1,H,W] logits) per frame in processing
        order. As in the official code, `max_frame_num_to_track=N` processes N+1 frames (the
        end index is inclusive), and reverse tracking from frame 0 yields nothing.
        """
        self._merge_prompt_outputs(inference_state)
        obj_ids = inference_state["obj_ids"]
        num_frames = inference_state["num_frames"]
        num_objects = len(obj_ids)
        outputs_per_obj = inference_state["output_dict_per_obj"]

        if start_frame_idx is None:
            start_frame_idx = min(t for outputs in outputs_per_obj.values() for t in outputs["cond_frame_outputs"])
        start_frame_idx = self._check_frame_idx(inference_state, start_frame_idx, what="start_frame_idx")
        if max_frame_num_to_track is None:
            max_frame_num_to_track = num_frames
        if isinstance(max_frame_num_to_track, bool) or not isinstance(max_frame_num_to_track, (int, np.integer)) \
                or max_frame_num_to_track < 0:
            raise UserInputError(
                f"max_frame_num_to_track must be a non-negative int, got {max_frame_num_to_track!r}"
            )
        if reverse:
            end_frame_idx = max(start_frame_idx - max_frame_num_to_track, 0)
            order = range(start_frame_idx, end_frame_idx - 1, -1) if start_frame_idx > 0 else range(0)
        else:
            end_frame_idx = min(start_frame_idx + max_frame_num_to_track, num_frames - 1)
            order = range(start_frame_idx, end_frame_idx + 1)

        for frame_idx in order:
            masks_per_obj: list[torch.Tensor | None] = [None] * num_objects
            groups: dict[MemorySelection, list[int]] = {}
            for obj_idx in range(num_objects):
                bank = outputs_per_obj[obj_idx]
                if frame_idx in bank.cond_frame_outputs:
                    masks_per_obj[obj_idx] = bank.cond_frame_outputs[frame_idx]["pred_masks"].to(
                        inference_state["device"])
                else:
                    groups.setdefault(bank.select(frame_idx, reverse, num_frames), []).append(obj_idx)
            for selection, obj_idxs in groups.items():
                frame_outs, pred_masks = self._track(
                    inference_state, obj_idxs, frame_idx, is_init_cond_frame=False, point_inputs=None,
                    mask_inputs=None, reverse=reverse, run_mem_encoder=True,
                    memory=self._batched_memory(inference_state, obj_idxs, selection),
                )
                for i, (obj_idx, out) in enumerate(zip(obj_idxs, frame_outs)):
                    outputs_per_obj[obj_idx]["non_cond_frame_outputs"][frame_idx] = out
                    masks_per_obj[obj_idx] = pred_masks[i : i + 1]
            for obj_idx in range(num_objects):
                inference_state["frames_tracked_per_obj"][obj_idx][frame_idx] = {"reverse": reverse}
            yield frame_idx, obj_ids, self._to_video_res(inference_state, torch.cat(masks_per_obj, dim=0))

    # ------------------------------------------------------------------ internals
    def _check_frame_idx(self, state: InferenceState, frame_idx: Any, what: str = "frame_idx") -> int:
        num_frames = state["num_frames"]
        if isinstance(frame_idx, bool) or not isinstance(frame_idx, (int, np.integer)) \
                or not 0 <= frame_idx < num_frames:
            raise UserInputError(
                f"{what} {frame_idx!r} is not a frame of {state['video_path']}: it has {num_frames} "
                f"frames, so {what} must be an int from 0 to {num_frames - 1}"
            )
        return int(frame_idx)

    def _obj_idx(self, state: InferenceState, obj_id: int) -> int:
        """The model-side index of `obj_id`, registering a new object if needed."""
        obj_idx = state["obj_id_to_idx"].get(obj_id)
        if obj_idx is not None:
            return obj_idx
        obj_idx = len(state["obj_id_to_idx"])
        state["obj_id_to_idx"][obj_id] = obj_idx
        state["obj_idx_to_id"][obj_idx] = obj_id
        state["obj_ids"] = list(state["obj_id_to_idx"])
        state["point_inputs_per_obj"][obj_idx] = {}
        state["mask_inputs_per_obj"][obj_idx] = {}
        state["output_dict_per_obj"][obj_idx] = self.model.new_memory_bank()
        state["temp_output_dict_per_obj"][obj_idx] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        state["frames_tracked_per_obj"][obj_idx] = {}
        return obj_idx

    def _existing_obj_idx(self, state: InferenceState, obj_id: Any) -> int:
        obj_idx = state["obj_id_to_idx"].get(obj_id)
        if obj_idx is None:
            raise UserInputError(
                f"object id {obj_id!r} has no prompts in this session (objects: {state['obj_ids']})"
            )
        return obj_idx

    def _prompt_kind(self, state: InferenceState, obj_idx: int, frame_idx: int) -> tuple[bool, bool]:
        """(is_cond, reverse) of a prompt: a prompt on a frame this object was not tracked on
        starts a conditioning frame; one on a tracked frame is a correction stored as a
        non-conditioning output, tracked in that frame's direction."""
        tracked = state["frames_tracked_per_obj"][obj_idx]
        if frame_idx not in tracked:
            return True, False
        return False, tracked[frame_idx]["reverse"]

    def _latest_output(self, state: InferenceState, obj_idx: int, frame_idx: int, is_cond: bool) -> FrameOutput | None:
        """The object's most recent output on a frame: prompt outputs first, then tracked ones."""
        storage_key = "cond_frame_outputs" if is_cond else "non_cond_frame_outputs"
        out = state["temp_output_dict_per_obj"][obj_idx][storage_key].get(frame_idx)
        outputs = state["output_dict_per_obj"][obj_idx]
        if out is None:
            out = outputs["cond_frame_outputs"].get(frame_idx)
        if out is None:
            out = outputs["non_cond_frame_outputs"].get(frame_idx)
        return out

    def _run_prompt(
        self,
        state: InferenceState,
        obj_idx: int,
        frame_idx: int,
        is_cond: bool,
        reverse: bool,
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        prev_sam_mask_logits: torch.Tensor | None,
    ) -> tuple[int, list[int], torch.Tensor]:
        """Segment one object on a prompted frame; its memory is encoded later, when
        `propagate_in_video` starts (so further clicks on the frame stay cheap)."""
        bank = state["output_dict_per_obj"][obj_idx]
        memory = (self.model.new_memory_bank() if is_cond else
                  self._batched_memory(state, [obj_idx], bank.select(frame_idx, reverse, state["num_frames"])))
        frame_outs, _ = self._track(
            state, [obj_idx], frame_idx, is_init_cond_frame=is_cond, point_inputs=point_inputs,
            mask_inputs=mask_inputs, reverse=reverse, run_mem_encoder=False, memory=memory,
            prev_sam_mask_logits=prev_sam_mask_logits,
        )
        storage_key = "cond_frame_outputs" if is_cond else "non_cond_frame_outputs"
        state["temp_output_dict_per_obj"][obj_idx][storage_key][frame_idx] = frame_outs[0]
        return frame_idx, state["obj_ids"], self._frame_masks(state, frame_idx, is_cond)

    def _frame_masks(self, state: InferenceState, frame_idx: int, is_cond: bool) -> torch.Tensor:
        """Every object's latest mask logits on a frame, [O,1,H,W] at video size; objects
        without an output there get NO_OBJ_SCORE."""
        video_hw = (state["video_height"], state["video_width"])
        masks = torch.full((len(state["obj_ids"]), 1, *video_hw), NO_OBJ_SCORE, dtype=torch.float32,
                           device=state["storage_device"])
        for obj_idx in range(len(state["obj_ids"])):
            out = self._latest_output(state, obj_idx, frame_idx, is_cond)
            if out is not None:
                masks[obj_idx : obj_idx + 1] = F.interpolate(out["pred_masks"], size=video_hw,
                                                             mode="bilinear", align_corners=False)
        return masks.to(state["device"])

    def _to_video_res(self, state: InferenceState, masks: torch.Tensor) -> torch.Tensor:
        """[O,1,S/4,S/4] logits -> [O,1,H,W] at the video's size."""
        video_hw = (state["video_height"], state["video_width"])
        masks = masks.to(state["device"])
        if masks.shape[-2:] == video_hw:
            return masks
        return F.interpolate(masks, size=video_hw, mode="bilinear", align_corners=False)

    def _merge_prompt_outputs(self, state: InferenceState) -> None:
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

    def _batched_memory(self, state: InferenceState, obj_idxs: Sequence[int], selection: MemorySelection) -> MemoryBank:
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

    def _backbone_out(self, state: InferenceState, frame_idx: int) -> dict:
        """Image-encoder output of one frame (batch 1); the most recent frame is cached."""
        cached = state["cached_features"].get(frame_idx)
        if cached is None:
            image = state["images"][frame_idx].to(state["device"]).float().unsqueeze(0)
            cached = self.model.forward_image(image)
            state["cached_features"] = {frame_idx: cached}
        return cached

    def _image_features(self, state: InferenceState, frame_idx: int, batch_size: int) -> tuple:
        """The frame's features expanded (without copies) to `batch_size` objects:
        (backbone_out, vision_feats, vision_pos_embeds, feat_sizes) with feats [HW,B,C] per level."""
        backbone_out = self._backbone_out(state, frame_idx)
        expanded = {
            "backbone_fpn": [x.expand(batch_size, -1, -1, -1) for x in backbone_out["backbone_fpn"]],
            "vision_pos_enc": [x.expand(batch_size, -1, -1, -1) for x in backbone_out["vision_pos_enc"]],
        }
        return self.model.prepare_backbone_features(expanded)

    def _stored_memory(self, state: InferenceState, features: torch.Tensor) -> torch.Tensor:
        dtype = torch.bfloat16 if self.config.memory_in_bfloat16 else torch.float32
        return features.to(dtype).to(state["storage_device"])

    def _memory_pos_enc(self, state: InferenceState, pos_enc: list[torch.Tensor]) -> list[torch.Tensor]:
        """The memory position encoding is the same for every frame and object: keep one copy
        (batch 1) in the session's constants."""
        constants = state["constants"]
        if "maskmem_pos_enc" not in constants:
            constants["maskmem_pos_enc"] = [x[0:1].clone() for x in pos_enc]
        return constants["maskmem_pos_enc"]

    def _track(
        self,
        state: InferenceState,
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
        [1,1,S/4,S/4], obj_ptr [1,C], object_score_logits [1,1]) and the batch's mask logits
        [B,1,S/4,S/4] on the compute device, small holes filled.
        """
        _, vision_feats, vision_pos_embeds, feat_sizes = self._image_features(state, frame_idx, len(obj_idxs))
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
        pred_masks = out["pred_masks"]
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
                "obj_ptr": out["obj_ptr"][i : i + 1],
                "object_score_logits": out["object_score_logits"][i : i + 1],
            }
            for i in range(len(obj_idxs))
        ]
        return frame_outs, pred_masks


def _check_obj_id(obj_id: Any) -> int:
    if isinstance(obj_id, bool) or not isinstance(obj_id, (int, np.integer)):
        raise UserInputError(f"obj_id must be an int (any int naming the object), got {obj_id!r} "
                             f"of type {type(obj_id).__name__}")
    return int(obj_id)


def _points_and_labels(points: Any, labels: Any, box: Any, clear_old_points: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked prompt tensors on the CPU: coords [1,N,2] float32 (box corners first) and labels
    [1,N] int32."""
    if (points is None) != (labels is None):
        raise UserInputError("points and labels must be given together: one label (1 = object, "
                             "0 = background) per point")
    if points is None and box is None:
        raise UserInputError("give points with labels, a box, or both")
    coords = torch.zeros(1, 0, 2) if points is None else torch.as_tensor(points, dtype=torch.float32).cpu()
    point_labels = (torch.zeros(1, 0, dtype=torch.int32) if labels is None
                    else torch.as_tensor(labels, dtype=torch.int32).cpu())
    if coords.dim() == 2:
        coords = coords.unsqueeze(0)
    if point_labels.dim() == 1:
        point_labels = point_labels.unsqueeze(0)
    if coords.dim() != 3 or coords.shape[0] != 1 or coords.shape[2] != 2:
        raise UserInputError(f"points must be N (x, y) pairs, shape [N,2], got shape {list(coords.shape)}")
    if point_labels.dim() != 2 or point_labels.shape[0] != 1:
        raise UserInputError(f"labels must be N ints, shape [N], got shape {list(point_labels.shape)}")
    if coords.shape[1] != point_labels.shape[1]:
        raise UserInputError(f"points and labels differ in length: {coords.shape[1]} points but "
                             f"{point_labels.shape[1]} labels (one label per point)")
    if box is not None:
        if not clear_old_points:
            raise UserInputError("a box must come before any click, so it cannot be added with "
                                 "clear_old_points=False")
        box_coords = torch.as_tensor(box, dtype=torch.float32).cpu()
        if box_coords.numel() != 4:
            raise UserInputError(f"box must be 4 numbers (x0, y0, x1, y1), got {box_coords.numel()}")
        coords = torch.cat([box_coords.reshape(1, 2, 2), coords], dim=1)
        point_labels = torch.cat([torch.tensor([[2, 3]], dtype=torch.int32), point_labels], dim=1)
    return coords, point_labels


def build_sam2_video_predictor(
    config: str | SAM2Config,
    checkpoint: str | None = None,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
    **config_overrides: Any,
) -> SAM2VideoPredictor:
    """A video predictor for the preset `config` (e.g. 'sam2.1_hiera_t' or an official config
    path) with weights from an official or exported `checkpoint` (random weights if None).
    `image_size` and other `SAM2Config` fields (e.g. fill_hole_area=0) may be overridden."""
    cfg = sam2_config(config, image_size=image_size, **config_overrides)
    return SAM2VideoPredictor(build_sam2(cfg, checkpoint=checkpoint, device=device))
