"""Per-clip samples and the batched structure the models consume.

A dataset returns one `VideoClip` per item; `collate_fn` pads and stacks clips into one
`BatchedVideoDatapoint`. Shapes use T = frames per clip, B = clips, O = objects (all clips'
objects together), K = prompt points per object, H x W = image size.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch


@dataclass
class ObjectPrompt:
    """Explicit or generated prompt for one object on one frame (coordinates in pixels, x then y).

    point_coords [K,2] float, point_labels [K] int (1 positive, 0 negative, 2/3 box corners),
    box [4] float (x0, y0, x1, y1) or None, mask [H,W] bool or None.
    """

    point_coords: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 2))
    point_labels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int32))
    box: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    @property
    def is_empty(self) -> bool:
        return len(self.point_labels) == 0 and self.box is None and self.mask is None


@dataclass
class VideoClip:
    """One sampled clip of one video, after augmentation.

    images [T,3,H,W] float (normalised), masks [T,N,H,W] bool for the N sampled objects,
    object_ids [N] int64 (ids as in the annotation), prompts[t][n] an ObjectPrompt or None,
    frame_names T strings, is_padding [T] bool (frames repeated to fill a short video).
    """

    images: torch.Tensor
    masks: torch.Tensor
    object_ids: torch.Tensor
    video_name: str
    frame_names: list[str]
    prompts: list[list[ObjectPrompt | None]] | None = None
    is_padding: torch.Tensor | None = None
    orig_size: tuple[int, int] | None = None  # (H, W) of the source frames


@dataclass
class BatchedVideoDatapoint:
    """A batch of B clips of T frames with O objects in total.

    img_batch [T,B,3,H,W] float; obj_to_frame_idx [T,O,2] int (frame t, video b) for each object;
    masks [T,O,H,W] bool (empty where the object is absent); point_coords [T,O,K,2] float and
    point_labels [T,O,K] int (padding label -1, "not a point"); boxes [T,O,4] float with
    box_valid [T,O] bool; mask_prompts [T,O,H,W] bool with mask_prompt_valid [T,O] bool;
    object_ids [O] int64; frame_is_padding [T,B] bool; video_names B strings; frame_names [B][T].
    """

    img_batch: torch.Tensor
    obj_to_frame_idx: torch.Tensor
    masks: torch.Tensor
    point_coords: torch.Tensor
    point_labels: torch.Tensor
    boxes: torch.Tensor
    box_valid: torch.Tensor
    mask_prompts: torch.Tensor
    mask_prompt_valid: torch.Tensor
    object_ids: torch.Tensor
    frame_is_padding: torch.Tensor
    video_names: list[str]
    frame_names: list[list[str]]

    @property
    def num_frames(self) -> int:
        return self.img_batch.shape[0]

    @property
    def num_videos(self) -> int:
        return self.img_batch.shape[1]

    @property
    def num_objects(self) -> int:
        return self.masks.shape[1]

    @property
    def flat_img_batch(self) -> torch.Tensor:
        """[(B*T),3,H,W]: clip b's frame t sits at index b*T + t."""
        return self.img_batch.transpose(0, 1).flatten(0, 1)

    @property
    def flat_obj_to_img_idx(self) -> torch.Tensor:
        """[T,O] long: index into `flat_img_batch` of each object's image at each time step."""
        frame_idx, video_idx = self.obj_to_frame_idx.long().unbind(dim=-1)
        return video_idx * self.num_frames + frame_idx

    @property
    def object_frame_is_padding(self) -> torch.Tensor:
        """[T,O] bool: the object's clip repeats an earlier frame there (`frame_is_padding` per object)."""
        video_idx = self.obj_to_frame_idx[..., 1].long()  # [T,O]
        return self.frame_is_padding.gather(1, video_idx)

    @property
    def num_unpadded_frames(self) -> int:
        """Leading frames that are real in every clip (padding only ever follows a clip's real frames)."""
        any_padding = self.frame_is_padding.any(1)
        return int(any_padding.long().argmax()) if bool(any_padding.any()) else self.num_frames

    @property
    def has_prompts(self) -> torch.Tensor:
        """[T,O] bool: an explicit point, box or mask prompt exists for the object on that frame."""
        return (self.point_labels >= 0).any(-1) | self.box_valid | self.mask_prompt_valid

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "BatchedVideoDatapoint":
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = value.to(device, non_blocking=non_blocking) if torch.is_tensor(value) else value
        return BatchedVideoDatapoint(**moved)

    def pin_memory(self) -> "BatchedVideoDatapoint":
        pinned = {}
        for f in fields(self):
            value = getattr(self, f.name)
            pinned[f.name] = value.pin_memory() if torch.is_tensor(value) else value
        return BatchedVideoDatapoint(**pinned)


def collate_fn(clips: list[VideoClip]) -> BatchedVideoDatapoint:
    """Pad and stack B clips into one batch (T = longest clip, O = all clips' objects, K = most points).

    A clip shorter than T repeats its last frame (image and masks) with `frame_is_padding` set and no
    prompts. Every clip's objects get their own columns in O; objects absent on a frame keep an empty
    mask and no prompt. Missing points are padded with label -1 at (0, 0).
    """
    if not clips:
        raise ValueError("collate_fn needs at least one clip")
    image_shape = clips[0].images.shape[1:]
    for clip in clips:
        if clip.images.shape[1:] != image_shape:
            raise ValueError(
                f"clips of one batch need the same image size: {clips[0].video_name} has {tuple(image_shape)}, "
                f"{clip.video_name} has {tuple(clip.images.shape[1:])}; resize clips to a square image_size"
            )
    num_frames = max(clip.images.shape[0] for clip in clips)
    num_objects = sum(clip.masks.shape[1] for clip in clips)
    height, width = image_shape[1:]
    num_points = max(
        (len(prompt.point_labels) for clip in clips for row in (clip.prompts or []) for prompt in row if prompt is not None),
        default=0,
    )

    img_batch = torch.empty(num_frames, len(clips), *image_shape, dtype=clips[0].images.dtype)
    obj_to_frame_idx = torch.zeros(num_frames, num_objects, 2, dtype=torch.int32)
    masks = torch.zeros(num_frames, num_objects, height, width, dtype=torch.bool)
    point_coords = torch.zeros(num_frames, num_objects, num_points, 2)
    point_labels = torch.full((num_frames, num_objects, num_points), -1, dtype=torch.int32)
    boxes = torch.zeros(num_frames, num_objects, 4)
    box_valid = torch.zeros(num_frames, num_objects, dtype=torch.bool)
    mask_prompts = torch.zeros(num_frames, num_objects, height, width, dtype=torch.bool)
    mask_prompt_valid = torch.zeros(num_frames, num_objects, dtype=torch.bool)
    object_ids = torch.zeros(num_objects, dtype=torch.int64)
    frame_is_padding = torch.zeros(num_frames, len(clips), dtype=torch.bool)
    frame_names: list[list[str]] = []

    first_object = 0
    for video_idx, clip in enumerate(clips):
        clip_len, clip_objects = clip.images.shape[0], clip.masks.shape[1]
        source_frame = [min(t, clip_len - 1) for t in range(num_frames)]
        objects = slice(first_object, first_object + clip_objects)
        img_batch[:, video_idx] = clip.images[source_frame]
        masks[:, objects] = clip.masks[source_frame]
        object_ids[objects] = clip.object_ids
        obj_to_frame_idx[:, objects, 0] = torch.arange(num_frames, dtype=torch.int32)[:, None]
        obj_to_frame_idx[:, objects, 1] = video_idx
        frame_is_padding[:, video_idx] = torch.arange(num_frames) >= clip_len
        if clip.is_padding is not None:
            frame_is_padding[:clip_len, video_idx] |= clip.is_padding.bool()
        frame_names.append([clip.frame_names[t] for t in source_frame])
        for t, row in enumerate(clip.prompts or []):
            for n, prompt in enumerate(row):
                if prompt is None:
                    continue
                o = first_object + n
                k = len(prompt.point_labels)
                point_coords[t, o, :k] = prompt.point_coords
                point_labels[t, o, :k] = prompt.point_labels.to(torch.int32)
                if prompt.box is not None:
                    boxes[t, o] = prompt.box
                    box_valid[t, o] = True
                if prompt.mask is not None:
                    mask_prompts[t, o] = prompt.mask
                    mask_prompt_valid[t, o] = True
        first_object += clip_objects

    return BatchedVideoDatapoint(
        img_batch=img_batch,
        obj_to_frame_idx=obj_to_frame_idx,
        masks=masks,
        point_coords=point_coords,
        point_labels=point_labels,
        boxes=boxes,
        box_valid=box_valid,
        mask_prompts=mask_prompts,
        mask_prompt_valid=mask_prompt_valid,
        object_ids=object_ids,
        frame_is_padding=frame_is_padding,
        video_names=[clip.video_name for clip in clips],
        frame_names=frame_names,
    )
