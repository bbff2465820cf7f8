"""Interactive video segmentation with the official `SAM2VideoPredictor` API, and streaming.

Code written for facebookresearch/sam2 runs on this predictor by changing one import:
`init_state`, `add_new_points_or_box`, `add_new_mask`, `propagate_in_video`,
`clear_all_prompts_in_frame`, `remove_object` and `reset_state` take the same arguments and
return the same shapes, and `inference_state` (a `TrackingSession`) reads and writes like the
official dict, with its key names.

This module is the facade; the session state lives in `session.py`, the per-frame model work in
`frame_tracker.py`, the checks of user input (shared with STCN) in `input_checks.py`, and which
past frames SAM2 reads in the model core (`sam2_video.model.memory_bank`).

Beyond the official API: `propagate_in_video(..., release_old_outputs=True)` and
`track_from_prompts` stream a one-pass run at memory that does not grow with the video, and
`track_stream` tracks live frames (a webcam, an RTSP stream).

What differs from the official predictor:
  - Objects are tracked as batches. On each frame the image encoder runs once, and every group
    of objects whose memory banks select the same frames (normally all objects prompted on the
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

from typing import Any, Iterable, Iterator, Sequence, Sized

import numpy as np
import torch
import torch.nn.functional as F

from sam2_video.errors import UserInputError
from sam2_video.model.build import build_sam2
from sam2_video.model.presets import SAM2Config, sam2_config
from sam2_video.model.sam2 import SAM2
from sam2_video.predict.frame_tracker import FrameTracker
from sam2_video.predict.input_checks import (
    check_frame_idx,
    check_inside_frame,
    check_mask,
    check_obj_id,
    points_and_labels,
)
from sam2_video.predict.session import TrackingSession
from sam2_video.predict.video_frames import open_video_frames
from sam2_video.predict.stream_frames import CurrentFrame, prompts_by_frame, stream_frame_input
from sam2_video.predict.tracking import Prompt, apply_prompts


class SAM2VideoPredictor:
    """Tracks prompted objects through a video with a `SAM2` model (see the module docstring).

    Memory features are stored in bfloat16 by default (`model.config.memory_in_bfloat16`), as the
    official predictor does, so that the numbers match it. `memory_in_bfloat16=False` keeps
    them in float32: the memory bank, which holds one entry per tracked frame and object
    (mem_dim x (S/16)^2 values, 1 MiB in float32 at S=1024), takes twice the memory, and the
    results drift from the official ones by the bf16 rounding it no longer applies.

    `add_all_frames_to_correct_as_cond` (official option, off by default as in the official
    inference configs): a correction (clicks or a mask on a frame the object was already tracked
    on) turns that frame into a conditioning frame, which every later frame then attends to
    (within `max_cond_frames_in_attn`), instead of a tracked frame that drops out of memory after
    num_maskmem frames. Corrections then last longer, at the cost of more memory per frame.

    `feature_cache_mib` / `feature_cache_frames` bound each session's cache of image-encoder
    outputs (`feature_cache.FeatureCache`, least recently used evicted, evicted frames encoded
    again): re-propagating after a correction, propagating back over tracked frames or returning to
    a frame skips the image encoder for cached frames, with identical results. Default: a quarter of
    the free memory (at most 8 GiB) when the session first encodes a frame; lower it when sessions
    share a machine, 0 encodes every frame again as the official predictor does.

    `dtype="bfloat16"` runs the model under bf16 autocast (CPU or CUDA), the precision official users
    run on GPUs, at a small accuracy cost (masks agree with float32 on about 99% of the pixels); on
    this project's 2-core CPU it was slower than float32 (README benchmark). Masks and logits are
    returned as float32 either way.
    """

    def __init__(self, model: SAM2, add_all_frames_to_correct_as_cond: bool = False,
                 feature_cache_mib: float | None = None, feature_cache_frames: int | None = None,
                 dtype: str = "float32") -> None:
        self.model = model.eval()
        self.config: SAM2Config = model.config
        self.add_all_frames_to_correct_as_cond = add_all_frames_to_correct_as_cond
        cache_bytes = None if feature_cache_mib is None else int(feature_cache_mib * 2**20)
        self._tracker = FrameTracker(self.model, feature_cache_bytes=cache_bytes,
                                     feature_cache_frames=feature_cache_frames, dtype=dtype)

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
    ) -> TrackingSession:
        """Open a video (a folder of JPEG/PNG frames or a .mp4/.avi/.mov/.mkv file) and start an empty session.

        Frames are read on demand (`open_video_frames`: a bounded cache of resized frames, read ahead
        in the direction of tracking), so this returns in about a second for any length of video and
        frame memory does not grow with it. `offload_video_to_cpu` keeps the decoded frames in CPU
        memory (each is moved to the device when used), `offload_state_to_cpu` keeps the per-frame
        outputs there (both only matter on a GPU). `async_loading_frames` is accepted so that code
        written for the official predictor runs unchanged (reading is always on demand).
        """
        device = self.device
        images = open_video_frames(video_path, self.image_size,
                                   device=torch.device("cpu") if offload_video_to_cpu else device)
        state = TrackingSession(
            video_path=str(video_path), images=images, num_frames=len(images), video_height=images.height,
            video_width=images.width, device=device,
            storage_device=torch.device("cpu") if offload_state_to_cpu else device, frame_names=images.names,
            offload_video_to_cpu=offload_video_to_cpu, offload_state_to_cpu=offload_state_to_cpu,
        )
        self._tracker.encode_frame(state, 0)  # warm-up: frame 0 is the usual first prompt
        return state

    @torch.inference_mode()
    def reset_state(self, inference_state: TrackingSession) -> None:
        """Remove every object, prompt and tracking result (the video stays loaded)."""
        inference_state.clear_objects()

    # ------------------------------------------------------------------ prompts
    @torch.inference_mode()
    def add_new_points_or_box(
        self,
        inference_state: TrackingSession,
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
        `normalize_coords=False` (then they are relative to the frame size, 0..1, as in the official
        code). A click or box corner outside the frame is refused.

        Returns (frame_idx, obj_ids, video_res_masks [O,1,H,W] logits on that frame).
        """
        frame_idx = self._check_frame_idx(inference_state, frame_idx)
        obj_id = check_obj_id(obj_id)
        new_points, new_labels = points_and_labels(points, labels, box, clear_old_points)
        where = f"object {obj_id} on frame {frame_idx} of {inference_state['video_path']}"
        if normalize_coords:
            check_inside_frame(points, box, inference_state["video_width"], inference_state["video_height"], where)
        else:
            check_inside_frame(points, box, 1, 1, where, unit="relative to the frame size (normalize_coords=False)")
        if normalize_coords:
            video_wh = torch.tensor([inference_state["video_width"], inference_state["video_height"]])
            new_points = new_points / video_wh
        new_points = (new_points * self.image_size).to(inference_state["device"])
        new_labels = new_labels.to(inference_state["device"])

        obj_idx = inference_state.object_index(obj_id, self.model.new_memory_bank())
        point_inputs_per_frame = inference_state["point_inputs_per_obj"][obj_idx]
        old = None if clear_old_points else point_inputs_per_frame.get(frame_idx)
        if old is not None:
            new_points = torch.cat([old["point_coords"], new_points], dim=1)
            new_labels = torch.cat([old["point_labels"], new_labels], dim=1)
        point_inputs = {"point_coords": new_points, "point_labels": new_labels}
        point_inputs_per_frame[frame_idx] = point_inputs
        inference_state["mask_inputs_per_obj"][obj_idx].pop(frame_idx, None)

        # earlier logits of this object on this frame go into the decoder with the new clicks
        is_init_cond_frame, _ = inference_state.prompt_kind(obj_idx, frame_idx)
        prev_out = inference_state.latest_output(obj_idx, frame_idx,
                                                 is_init_cond_frame or self.add_all_frames_to_correct_as_cond)
        prev_logits = None
        if prev_out is not None and prev_out["pred_masks"] is not None:
            prev_logits = torch.clamp(prev_out["pred_masks"].to(inference_state["device"]), -32.0, 32.0)
        return self._prompt(inference_state, obj_idx, frame_idx, point_inputs, None, prev_logits)

    @torch.inference_mode()
    def add_new_mask(
        self,
        inference_state: TrackingSession,
        frame_idx: int,
        obj_id: int,
        mask: Any,
    ) -> tuple[int, list[int], torch.Tensor]:
        """Give `obj_id` the mask [H,W] (nonzero = object, video size) on `frame_idx`.

        Returns (frame_idx, obj_ids, video_res_masks [O,1,H,W] logits on that frame).
        """
        frame_idx = self._check_frame_idx(inference_state, frame_idx)
        obj_id = check_obj_id(obj_id)
        video_hw = (inference_state["video_height"], inference_state["video_width"])
        mask = check_mask(mask, obj_id, frame_idx, inference_state["video_path"], video_hw)
        mask_inputs = mask.bool()[None, None].float().to(inference_state["device"])
        if video_hw != (self.image_size, self.image_size):
            mask_inputs = F.interpolate(mask_inputs, size=(self.image_size, self.image_size),
                                        mode="bilinear", align_corners=False, antialias=True)
            mask_inputs = (mask_inputs >= 0.5).float()

        obj_idx = inference_state.object_index(obj_id, self.model.new_memory_bank())
        inference_state["mask_inputs_per_obj"][obj_idx][frame_idx] = mask_inputs
        inference_state["point_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        return self._prompt(inference_state, obj_idx, frame_idx, None, mask_inputs, None)

    @torch.inference_mode()
    def clear_all_prompts_in_frame(
        self, inference_state: TrackingSession, frame_idx: int, obj_id: int, need_output: bool = True
    ) -> tuple[int, list[int], torch.Tensor] | None:
        """Remove `obj_id`'s clicks, box or mask on `frame_idx`; its output there becomes a
        tracked (non-conditioning) one. Returns the frame's masks like `add_new_points_or_box`."""
        frame_idx = self._check_frame_idx(inference_state, frame_idx)
        obj_idx = inference_state.existing_object_index(obj_id)
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
        is_cond = inference_state.has_prompt_output(frame_idx)
        return frame_idx, inference_state["obj_ids"], self._tracker.frame_masks(inference_state, frame_idx, is_cond)

    @torch.inference_mode()
    def remove_object(
        self, inference_state: TrackingSession, obj_id: int, strict: bool = False, need_output: bool = True
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

        inference_state.forget_object(removed_idx)
        updated = []
        if need_output:
            for frame_idx in prompted_frames:
                is_cond = inference_state.has_prompt_output(frame_idx)
                updated.append((frame_idx, self._tracker.frame_masks(inference_state, frame_idx, is_cond)))
        return inference_state["obj_ids"], updated

    # ------------------------------------------------------------------ tracking
    @torch.inference_mode()
    def propagate_in_video(
        self,
        inference_state: TrackingSession,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
        release_old_outputs: bool = False,
    ) -> Iterator[tuple[int, list[int], torch.Tensor]]:
        """Track every object from `start_frame_idx` (default: the first prompted frame).

        Yields (frame_idx, obj_ids, video_res_masks [O,1,H,W] logits) per frame in processing
        order. As in the official code, `max_frame_num_to_track=N` processes N+1 frames (the
        end index is inclusive), and reverse tracking from frame 0 yields nothing.

        `release_old_outputs=True` streams: as tracking moves on, each object's tracked outputs
        that no later frame of this pass can read (`MemoryBank.release_unreadable`: older than
        the recent-memory and object-pointer windows) are dropped, so the session holds at most
        its conditioning frames plus about max(num_maskmem * memory_temporal_stride_for_eval,
        max_obj_ptrs_in_encoder) frames per object, whatever the video's length; the yielded
        masks are exactly those of the default. Released frames count as never tracked (a prompt
        there starts a conditioning frame, a later pass tracks them again). It is an argument of
        the pass, not of the session, because the official contract (corrections on any tracked
        frame, re-propagation) needs every output, and only the caller knows that it will not
        come back to the frames it has passed.
        """
        self._tracker.merge_prompt_outputs(inference_state)
        num_frames = inference_state["num_frames"]
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

        obj_idxs = range(len(inference_state["obj_ids"]))
        for frame_idx in order:
            masks = self._tracker.track_frame(inference_state, frame_idx, reverse, obj_idxs, release_old_outputs)
            yield frame_idx, inference_state["obj_ids"], self._tracker.to_video_res(inference_state, masks)

    @torch.inference_mode()
    def track_from_prompts(
        self, inference_state: TrackingSession, prompts: Sequence[Prompt]
    ) -> Iterator[tuple[int, list[int], torch.Tensor]]:
        """One streaming forward pass in which each object is tracked from its first prompt on.

        The session is reset and given every prompt (`tracking.MaskPrompt` / `ClickPrompt`;
        clicks of one object on one frame accumulate); then frames are tracked from the first
        prompted frame to the end, old outputs released as with `propagate_in_video(...,
        release_old_outputs=True)`. On frames before an object's first prompt it is not tracked
        (its logits are NO_OBJ_SCORE) and gets no memory, so each object gets the numbers of a
        separate pass started at its first prompt (the DAVIS protocol for objects appearing
        later) while every frame is encoded once. During the pass the session's feature cache
        is set aside for a one-frame one: in one pass frames never return, and a full cache would grow
        with the video up to its bound. Yields (frame_idx, obj_ids, video_res_masks [O,1,H,W] logits).
        """
        self.reset_state(inference_state)
        if not prompts:
            raise UserInputError(f"no prompts for {inference_state['video_path']}: give at least one mask, "
                                 "click or box")
        apply_prompts(self, inference_state, prompts)
        self._tracker.merge_prompt_outputs(inference_state)
        starts = [min(bank.cond_frame_outputs) for bank in inference_state["output_dict_per_obj"].values()]
        interactive_cache = inference_state.feature_cache
        inference_state.feature_cache = self._tracker.new_feature_cache(inference_state, max_frames=1)
        try:
            for frame_idx in range(min(starts), inference_state["num_frames"]):
                started = [obj_idx for obj_idx, start in enumerate(starts) if start <= frame_idx]
                masks = self._tracker.track_frame(inference_state, frame_idx, False, started,
                                                  release_old_outputs=True)
                yield frame_idx, inference_state["obj_ids"], self._tracker.to_video_res(inference_state, masks)
        finally:
            inference_state.feature_cache = interactive_cache

    @torch.inference_mode()
    def track_stream(
        self, frames: Iterable[np.ndarray], prompts: Sequence[Prompt]
    ) -> Iterator[tuple[int, list[int], torch.Tensor]]:
        """Track objects through any iterable of RGB uint8 frames [H,W,3], at constant memory.

        `frames` may be a list or a live source, e.g. a webcam or RTSP stream decoded by PyAV:
        `(f.to_ndarray(format="rgb24") for f in av.open(url).decode(video=0))`. Only the current
        frame is held. `prompts` (`tracking.MaskPrompt` / `ClickPrompt`, coordinates in frame
        pixels) are applied when their frame arrives and each object is tracked from its first
        prompt on, as `track_from_prompts` does on a file (a prompt on a later frame of an object
        that is already tracked cannot condition the frames before it, which a file run would).
        Old outputs are released as with `propagate_in_video(..., release_old_outputs=True)`.
        A sized `frames` (a list) gives the object pointers the same temporal scale as a file of
        that length. Yields (frame_idx, obj_ids, video_res_masks [O,1,H,W] logits) per frame;
        before the first prompt O is 0.
        """
        num_frames = len(frames) if isinstance(frames, Sized) else None
        pending = prompts_by_frame(prompts, num_frames)
        state: TrackingSession | None = None
        frame_idx = -1
        for frame_idx, rgb in enumerate(frames):
            if state is None:
                state = TrackingSession(video_path="<stream>", images=CurrentFrame(), num_frames=num_frames,
                                        video_height=rgb.shape[0], video_width=rgb.shape[1], device=self.device,
                                        storage_device=self.device)
                state.feature_cache = self._tracker.new_feature_cache(state, max_frames=1)  # frames never return
            state["images"].set(frame_idx, stream_frame_input(rgb, frame_idx, state, self.image_size).to(self.device))
            new_prompts = pending.pop(frame_idx, [])
            if new_prompts:
                apply_prompts(self, state, new_prompts)
                self._tracker.merge_prompt_outputs(state)
            masks = self._tracker.track_frame(state, frame_idx, False, range(len(state["obj_ids"])), release_old_outputs=True)
            yield frame_idx, state["obj_ids"], self._tracker.to_video_res(state, masks)
        if pending:
            first = pending[min(pending)][0]
            raise UserInputError(f"{first.source}: frame {first.frame_idx} never came, the stream ended after "
                                 f"{frame_idx + 1} frames")

    # ------------------------------------------------------------------ internals
    def _check_frame_idx(self, state: TrackingSession, frame_idx: Any, what: str = "frame_idx") -> int:
        return check_frame_idx(frame_idx, state["num_frames"], state["video_path"], what)

    def _prompt(
        self,
        state: TrackingSession,
        obj_idx: int,
        frame_idx: int,
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        prev_sam_mask_logits: torch.Tensor | None,
    ) -> tuple[int, list[int], torch.Tensor]:
        """Segment one object on a prompted frame (see `FrameTracker.run_prompt`)."""
        is_init_cond_frame, reverse = state.prompt_kind(obj_idx, frame_idx)
        is_cond = is_init_cond_frame or self.add_all_frames_to_correct_as_cond
        masks = self._tracker.run_prompt(state, obj_idx, frame_idx, is_init_cond_frame, is_cond, reverse,
                                         point_inputs, mask_inputs, prev_sam_mask_logits)
        return frame_idx, state["obj_ids"], masks


def build_sam2_video_predictor(
    config: str | SAM2Config,
    checkpoint: str | None = None,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
    add_all_frames_to_correct_as_cond: bool = False,
    feature_cache_mib: float | None = None,
    feature_cache_frames: int | None = None,
    dtype: str = "float32",
    **config_overrides: Any,
) -> SAM2VideoPredictor:
    """A video predictor for the preset `config` (e.g. 'sam2.1_hiera_t' or an official config
    path) with weights from an official or exported `checkpoint` (random weights if None).
    `image_size` and other `SAM2Config` fields (e.g. fill_hole_area=0) may be overridden; the
    feature cache bounds and `dtype` ('float32' or 'bfloat16') are explained in `SAM2VideoPredictor`."""
    cfg = sam2_config(config, image_size=image_size, **config_overrides)
    return SAM2VideoPredictor(build_sam2(cfg, checkpoint=checkpoint, device=device),
                              add_all_frames_to_correct_as_cond=add_all_frames_to_correct_as_cond,
                              feature_cache_mib=feature_cache_mib, feature_cache_frames=feature_cache_frames,
                              dtype=dtype)
