"""The state of one video-tracking session: the frames, the objects, their prompts and memory banks.

`TrackingSession` is what `SAM2VideoPredictor.init_state` returns. Its fields carry the official
`inference_state` key names and it can be read and written like that dict
(`state["obj_ids"]`, `state["output_dict_per_obj"][obj_idx]["cond_frame_outputs"]`), so code
written for facebookresearch/sam2 keeps working.

Per object and frame a session keeps (see `FrameTracker.track`): maskmem_features
[1,mem_dim,S/16,S/16] in bfloat16 (float32 with memory_in_bfloat16=False), pred_masks [1,1,S/4,S/4]
float32 logits, obj_ptr [1,C], object_score_logits [1,1], serial (an int naming the output) and, on
tracked frames, inputs (what it was computed from, see `frame_tracker.tracking_inputs`); the memory
position encoding is one shared copy. Nothing at full resolution: at S=1024 that is 512 KiB + 256 KiB per object-frame.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, fields
from typing import Any, Iterator

import torch

from sam2_video.errors import UserInputError
from sam2_video.model.memory_bank import MemoryBank
from sam2_video.predict.feature_cache import FeatureCache

FrameOutput = dict[str, Any]
PromptOutputs = dict[str, dict[int, FrameOutput]]  # {"cond_frame_outputs"|"non_cond_frame_outputs": {t: out}}


def _empty_prompt_outputs() -> PromptOutputs:
    return {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}


@dataclass
class TrackingSession:
    """Frames (`images`: [i] -> [3,S,S] float32, a tensor or a lazy reader), objects and their memory.

    num_frames is None for a live stream of unknown length. Per object index (0..O-1, in the order
    objects were first prompted; `obj_ids` holds the user's ids): point and mask prompts per frame,
    its `MemoryBank` (output_dict_per_obj), prompt outputs whose memory is not encoded yet
    (temp_output_dict_per_obj) and the tracked frames with their direction (frames_tracked_per_obj).
    """

    video_path: str
    images: Any
    num_frames: int | None
    video_height: int
    video_width: int
    device: torch.device
    storage_device: torch.device
    frame_names: list[str] | None = None
    offload_video_to_cpu: bool = False
    offload_state_to_cpu: bool = False
    obj_id_to_idx: OrderedDict[int, int] = field(default_factory=OrderedDict)
    obj_idx_to_id: OrderedDict[int, int] = field(default_factory=OrderedDict)
    obj_ids: list[int] = field(default_factory=list)
    point_inputs_per_obj: dict[int, dict[int, dict[str, torch.Tensor]]] = field(default_factory=dict)
    mask_inputs_per_obj: dict[int, dict[int, torch.Tensor]] = field(default_factory=dict)
    output_dict_per_obj: dict[int, MemoryBank] = field(default_factory=dict)
    temp_output_dict_per_obj: dict[int, PromptOutputs] = field(default_factory=dict)
    frames_tracked_per_obj: dict[int, dict[int, dict[str, bool]]] = field(default_factory=dict)
    feature_cache: FeatureCache | None = None  # encoder outputs by frame, made by FrameTracker
    constants: dict[str, Any] = field(default_factory=dict)  # the shared memory position encoding

    # ---------------------------------------------------------------- the official dict view
    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self._keys():
            raise KeyError(f"{key!r} is not a field of the tracking session")
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        return key in self._keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def keys(self) -> tuple[str, ...]:
        return self._keys()

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self._keys() else default

    @classmethod
    def _keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @property
    def feature_cache_bytes(self) -> int:
        """Memory held by the cached image-encoder outputs (bounded by the predictor's
        `feature_cache_mib` / `feature_cache_frames`)."""
        return 0 if self.feature_cache is None else self.feature_cache.nbytes

    # ---------------------------------------------------------------- objects
    @property
    def memory_banks(self) -> list[MemoryBank]:
        """Each object's memory bank, by object index (`MemoryBank.num_outputs` says its size)."""
        return [self.output_dict_per_obj[i] for i in range(len(self.obj_ids))]

    def object_index(self, obj_id: int, new_bank: MemoryBank) -> int:
        """The index of `obj_id`, registering it (with the empty `new_bank`) if it is new."""
        obj_idx = self.obj_id_to_idx.get(obj_id)
        if obj_idx is not None:
            return obj_idx
        obj_idx = len(self.obj_id_to_idx)
        self.obj_id_to_idx[obj_id] = obj_idx
        self.obj_idx_to_id[obj_idx] = obj_id
        self.obj_ids = list(self.obj_id_to_idx)
        self.point_inputs_per_obj[obj_idx] = {}
        self.mask_inputs_per_obj[obj_idx] = {}
        self.output_dict_per_obj[obj_idx] = new_bank
        self.temp_output_dict_per_obj[obj_idx] = _empty_prompt_outputs()
        self.frames_tracked_per_obj[obj_idx] = {}
        return obj_idx

    def existing_object_index(self, obj_id: Any) -> int:
        obj_idx = self.obj_id_to_idx.get(obj_id)
        if obj_idx is None:
            raise UserInputError(f"object id {obj_id!r} has no prompts in this session (objects: {self.obj_ids})")
        return obj_idx

    def forget_object(self, removed_idx: int) -> None:
        """Drop one object; the later ones move down one index."""
        kept = [idx for idx in range(len(self.obj_ids)) if idx != removed_idx]
        new_ids = [self.obj_ids[idx] for idx in kept]
        self.obj_id_to_idx = OrderedDict((oid, i) for i, oid in enumerate(new_ids))
        self.obj_idx_to_id = OrderedDict(enumerate(new_ids))
        self.obj_ids = new_ids
        for key in ("point_inputs_per_obj", "mask_inputs_per_obj", "output_dict_per_obj",
                    "temp_output_dict_per_obj", "frames_tracked_per_obj"):
            per_obj = self[key]
            self[key] = {new: per_obj[old] for new, old in enumerate(kept)}

    def clear_objects(self) -> None:
        """Remove every object, prompt and tracking result (the frames stay)."""
        for key in ("obj_id_to_idx", "obj_idx_to_id", "point_inputs_per_obj", "mask_inputs_per_obj",
                    "output_dict_per_obj", "temp_output_dict_per_obj", "frames_tracked_per_obj"):
            self[key].clear()
        self.obj_ids.clear()

    # ---------------------------------------------------------------- prompts and outputs
    def prompt_kind(self, obj_idx: int, frame_idx: int) -> tuple[bool, bool]:
        """(is_init_cond_frame, reverse) of a prompt: a prompt on a frame this object was not
        tracked on starts a conditioning frame segmented without memory; one on a tracked frame is
        a correction, segmented with memory in that frame's tracking direction."""
        tracked = self.frames_tracked_per_obj[obj_idx]
        if frame_idx not in tracked:
            return True, False
        return False, tracked[frame_idx]["reverse"]

    def latest_output(self, obj_idx: int, frame_idx: int, is_cond: bool) -> FrameOutput | None:
        """The object's most recent output on a frame: prompt outputs first, then tracked ones."""
        storage_key = "cond_frame_outputs" if is_cond else "non_cond_frame_outputs"
        out = self.temp_output_dict_per_obj[obj_idx][storage_key].get(frame_idx)
        bank = self.output_dict_per_obj[obj_idx]
        if out is None:
            out = bank.cond_frame_outputs.get(frame_idx)
        if out is None:
            out = bank.non_cond_frame_outputs.get(frame_idx)
        return out

    def has_prompt_output(self, frame_idx: int) -> bool:
        """Whether some object has a not yet merged conditioning prompt output on the frame."""
        return any(frame_idx in temp["cond_frame_outputs"] for temp in self.temp_output_dict_per_obj.values())
