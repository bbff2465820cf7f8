"""`SAM2Model`: the SAM2 tracking core run as a training forward, with selective training.

The training caller of the shared core (`SAM2`): it samples the official SAM2 training recipe's
prompts (a mask, a click or a box on 1-2 initial conditioning frames, correction clicks from the
error region), then tracks every frame of a `BatchedVideoDatapoint` in order with the core's memory
code, so gradients flow through memory across frames. All objects of all clips form one batch of
B*O; the image encoder runs once per distinct frame and its features are gathered per object.
"""
from __future__ import annotations

import dataclasses
import difflib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from sam2_video.config import CHECKPOINTABLE_MODULES
from sam2_video.data.batch import BatchedVideoDatapoint
from sam2_video.errors import UserInputError
from sam2_video.model.build import load_checkpoint
from sam2_video.model.memory_bank import MemoryBank
from sam2_video.model.presets import SAM2Config, sam2_config
from sam2_video.model.prompt_sampling import (
    BOX_BOTTOM_RIGHT_LABEL,
    BOX_TOP_LEFT_LABEL,
    append_points,
    next_click,
    sample_box_points,
)
from sam2_video.model.sam2 import SAM2

DEFAULT_TRAINABLE_MODULES: tuple[str, ...] = ("memory_attention", "memory_encoder")

PointInputs = dict[str, torch.Tensor]  # {"point_coords": [N,P,2] float, "point_labels": [N,P] int32}
FrameOutput = dict[str, Any]


@dataclass(frozen=True)
class TrainingRecipe:
    """How prompts are simulated during the training forward (official `SAM2Train` names and MOSE values).

    `*_for_train` apply in `model.train()`, `*_for_eval` in `model.eval()`. With `explicit_prompts`
    the batch's own point/box/mask prompts are used as they are: every frame carrying one is a
    conditioning frame and no clicks are simulated.
    """

    prob_to_use_pt_input_for_train: float = 0.5
    prob_to_use_pt_input_for_eval: float = 0.0
    prob_to_use_box_input_for_train: float = 0.5  # given point input: P(box) = 0.5 * 0.5
    prob_to_use_box_input_for_eval: float = 0.0
    num_init_cond_frames_for_train: int = 2
    num_init_cond_frames_for_eval: int = 1
    rand_init_cond_frames_for_train: bool = True  # 1..num_init_cond_frames
    rand_init_cond_frames_for_eval: bool = False
    num_frames_to_correct_for_train: int = 2
    num_frames_to_correct_for_eval: int = 1
    rand_frames_to_correct_for_train: bool = True  # num_init_cond_frames..num_frames_to_correct
    rand_frames_to_correct_for_eval: bool = False
    add_all_frames_to_correct_as_cond: bool = True
    num_correction_pt_per_frame: int = 7
    pt_sampling_for_eval: str = "center"
    prob_to_sample_from_gt_for_train: float = 0.1
    explicit_prompts: bool = False

    def __post_init__(self) -> None:
        for phase in ("train", "eval"):
            init = getattr(self, f"num_init_cond_frames_for_{phase}")
            correct = getattr(self, f"num_frames_to_correct_for_{phase}")
            if init < 1 or correct < init:
                raise UserInputError(
                    f"training recipe: need 1 <= num_init_cond_frames_for_{phase} ({init}) "
                    f"<= num_frames_to_correct_for_{phase} ({correct})"
                )
        if self.pt_sampling_for_eval not in ("uniform", "center"):
            raise UserInputError(
                f"training recipe: pt_sampling_for_eval must be 'uniform' or 'center', got {self.pt_sampling_for_eval!r}"
            )


@dataclass
class FramePrompts:
    """The prompts of one training forward: which frames condition, get clicks, and with what.

    point_inputs[t] {"point_coords" [N,P,2], "point_labels" [N,P]} and mask_inputs[t] [N,1,H,W]
    bool, N = objects of the batch.
    """

    init_cond_frames: list[int]
    frames_to_correct: list[int]
    point_inputs: dict[int, PointInputs] = field(default_factory=dict)
    mask_inputs: dict[int, torch.Tensor] = field(default_factory=dict)


class FeatureCache:
    """Image-encoder outputs of frames, kept across steps (least recently used dropped beyond `max_frames`).

    Valid only while the image encoder is frozen and frames are not augmented: the key is
    (video name, frame name, height, width). Per frame it stores the FPN levels [C,h,w] (after the
    decoder's high-res projections while those are frozen, before them while they are trained,
    which costs 8x the memory on level 0 and 4x on level 1); the position encodings depend on the
    image size alone and are stored once per size. Changing the trainable modules clears it.
    """

    def __init__(self, max_frames: int) -> None:
        self.max_frames = max_frames
        self._levels: OrderedDict[tuple, list[torch.Tensor]] = OrderedDict()
        self._pos_enc: dict[tuple[int, int], list[torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._levels)

    def clear(self) -> None:
        self._levels.clear()
        self._pos_enc.clear()

    def get(self, key: tuple) -> list[torch.Tensor] | None:
        levels = self._levels.get(key)
        if levels is not None:
            self._levels.move_to_end(key)
        return levels

    def put(self, key: tuple, levels: list[torch.Tensor]) -> None:
        self._levels[key] = levels
        self._levels.move_to_end(key)
        while len(self._levels) > self.max_frames:
            self._levels.popitem(last=False)

    def pos_enc(self, size: tuple[int, int]) -> list[torch.Tensor] | None:
        return self._pos_enc.get(size)

    def put_pos_enc(self, size: tuple[int, int], pos_enc: list[torch.Tensor]) -> None:
        self._pos_enc[size] = pos_enc


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split keyword options into TrainingRecipe fields and SAM2Config overrides; unknown names raise."""
    recipe_names = {f.name for f in dataclasses.fields(TrainingRecipe)}
    config_names = {f.name for f in dataclasses.fields(SAM2Config)} - {"name", "trunk", "image_size", "num_maskmem"}
    recipe, config = {}, {}
    for key, value in options.items():
        if key in recipe_names:
            recipe[key] = value
        elif key in config_names:
            config[key] = value
        else:
            close = difflib.get_close_matches(key, sorted(recipe_names | config_names), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UserInputError(f"SAM2Model: unknown option {key!r}.{hint}")
    return recipe, config


class SAM2Model(SAM2):
    """SAM2 with the official training forward and selective training.

    Its parameters and `state_dict()` are the core `SAM2`'s (official checkpoint keys), so it can be
    saved, exported and handed to the video predictor as it is.

    Options: any `TrainingRecipe` field (e.g. `prob_to_use_pt_input_for_train=0.0`,
    `explicit_prompts=True`) or `SAM2Config` field (e.g. `dropout=0.0`); `feature_cache_frames > 0`
    keeps that many frames' image features across steps (only with a frozen image encoder and no
    augmentation); `activation_checkpointing` names modules of `CHECKPOINTABLE_MODULES` whose
    activations are recomputed in the backward pass (see `set_activation_checkpointing`).
    """

    def __init__(
        self,
        checkpoint_path: str | Path | None = None,
        config_path: str | SAM2Config = "sam2.1_hiera_t",
        trainable_modules: list[str] | tuple[str, ...] = DEFAULT_TRAINABLE_MODULES,
        device: str | torch.device = "cpu",
        image_size: int = 512,
        num_maskmem: int = 7,
        feature_cache_frames: int = 0,
        verbose: bool = True,
        activation_checkpointing: list[str] | tuple[str, ...] = (),
        **training_options: Any,
    ) -> None:
        recipe_options, config_overrides = _split_options(training_options)
        try:
            config = sam2_config(config_path, image_size=image_size, num_maskmem=num_maskmem, **config_overrides)
        except ValueError as err:
            raise UserInputError(f"SAM2Model config_path={str(config_path)!r}: {err}") from err
        super().__init__(config)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.recipe = TrainingRecipe(**recipe_options)
        self.trainable_modules = tuple(trainable_modules)
        self.verbose = verbose
        self.feature_cache = FeatureCache(feature_cache_frames) if feature_cache_frames > 0 else None
        self.load(device)
        self.set_activation_checkpointing(activation_checkpointing)

    # ---------------------------------------------------------------- set-up

    def load(self, device: str | torch.device | None = None) -> "SAM2Model":
        """Load `checkpoint_path` (strictly), or start from random weights whose memory attention reads
        each memory frame at the query's own position (see `MemoryAttention.read_memory_at_own_position`);
        move to `device` and apply `trainable_modules`."""
        if self.checkpoint_path is not None:
            load_checkpoint(self, self.checkpoint_path)
        else:
            self.memory_attention.read_memory_at_own_position()
        if device is not None:
            self.to(device)
        self.configure_for_training(self.trainable_modules)
        return self

    def trainable_module_names(self) -> list[str]:
        """Names accepted by `configure_for_training`: every submodule (dotted) and every parameter."""
        modules = [name for name, _ in self.named_modules() if name]
        params = [name for name, _ in self.named_parameters()]
        return sorted(set(modules) | set(params))

    def configure_for_training(self, trainable_modules: list[str] | tuple[str, ...]) -> str:
        """Freeze everything, then unfreeze the named submodules / parameters; returns (and prints) a table.

        A name may be any dotted submodule (`sam_mask_decoder`, `image_encoder.neck`) or parameter
        (`no_mem_embed`); a name matching nothing raises `UserInputError` listing the valid ones.
        """
        modules = dict(self.named_modules())
        params = dict(self.named_parameters())
        for name in trainable_modules:
            if name not in params and (not name or name not in modules):
                top_level = sorted({n.split(".")[0] for n in self.trainable_module_names()})
                close = difflib.get_close_matches(name, self.trainable_module_names(), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise UserInputError(
                    f"trainable_modules: {name!r} matches no module or parameter of SAM2.{hint} "
                    f"Valid top-level names: {', '.join(top_level)} "
                    "(dotted submodules such as 'image_encoder.neck' also work)."
                )
        for p in self.parameters():
            p.requires_grad_(False)
        for name in trainable_modules:
            if name in params:
                params[name].requires_grad_(True)
            else:
                modules[name].requires_grad_(True)
        self.trainable_modules = tuple(trainable_modules)
        if self.feature_cache is not None:
            self.feature_cache.clear()
        table = self.parameter_table()
        if self.verbose:
            print(table)
        return table

    def set_activation_checkpointing(self, modules: list[str] | tuple[str, ...]) -> None:
        """Recompute the activations of the named modules (of `CHECKPOINTABLE_MODULES`) in the backward
        pass instead of keeping them, and stop doing so for the others.

        Why: activations kept for the backward pass, for every frame of the clip, dominate a training
        step's memory; recomputing them costs about one more forward pass of those modules. The unit
        of recomputation is a Hiera block, a memory-attention layer, the memory encoder's fusion, the
        mask decoder's `predict_masks` and the prompt encoder's mask embedding; each applies only where
        gradients flow through it (a frozen image encoder runs without autograd, so it costs nothing).
        """
        unknown = [name for name in modules if name not in CHECKPOINTABLE_MODULES]
        if unknown:
            raise UserInputError(
                f"activation_checkpointing: {', '.join(map(repr, unknown))} cannot be checkpointed; "
                f"valid names: {', '.join(CHECKPOINTABLE_MODULES)} (or true for all of them)"
            )
        units = {
            "image_encoder": list(self.image_encoder.trunk.blocks),
            "memory_attention": list(self.memory_attention.layers),
            "memory_encoder": [self.memory_encoder],
            "sam_mask_decoder": [self.sam_mask_decoder],
            "sam_prompt_encoder": [self.sam_prompt_encoder],
        }
        for name, parts in units.items():
            for part in parts:
                part.checkpoint_activations = name in modules

    def parameter_table(self) -> str:
        """Trainable and total parameters per top-level module (and top-level parameters)."""
        rows: dict[str, list[int]] = {}
        for name, p in self.named_parameters():
            top = name.split(".")[0]
            counts = rows.setdefault(top, [0, 0])
            counts[0] += p.numel() if p.requires_grad else 0
            counts[1] += p.numel()
        width = max(len(n) for n in rows) + 2
        lines = [f"{'module':<{width}}{'trainable':>14}{'total':>14}"]
        for name, (trainable, total) in rows.items():
            lines.append(f"{name:<{width}}{trainable:>14,}{total:>14,}")
        trainable_sum, total_sum = sum(r[0] for r in rows.values()), sum(r[1] for r in rows.values())
        lines.append(f"{'all':<{width}}{trainable_sum:>14,}{total_sum:>14,}")
        return "\n".join(lines)

    def image_encoder_is_trainable(self) -> bool:
        return any(p.requires_grad for p in self.image_encoder.parameters())

    def high_res_projections_are_trainable(self) -> bool:
        """Whether the decoder's conv_s0 / conv_s1, which `forward_image` applies, are trained."""
        convs = list(self.sam_mask_decoder.conv_s0.parameters()) + list(self.sam_mask_decoder.conv_s1.parameters())
        return any(p.requires_grad for p in convs)

    # ---------------------------------------------------------------- forward

    def forward(self, batch: BatchedVideoDatapoint) -> list[FrameOutput]:
        """Track all objects of `batch` through its T frames; one output dict per frame.

        Each dict holds, for the N = O objects of the batch (official `SAM2Train` keys):
        `multistep_pred_multimasks_high_res` (list over decoder steps of [N,M,H,W] logits, M = 3
        on a first click else 1), `multistep_pred_ious` (list of [N,M]),
        `multistep_object_score_logits` (list of [N,1]), `multistep_pred_masks_high_res` [N,steps,H,W],
        `multistep_point_inputs`, `pred_masks` [N,1,H/4,W/4], `pred_masks_high_res` [N,1,H,W]
        (the final, selected mask), `maskmem_features`, `maskmem_pos_enc`, `point_inputs`, `mask_inputs`.
        """
        vision_feats, vision_pos_embeds, feat_sizes, image_pos = self._frame_features(batch)
        prompts = self._explicit_prompts(batch) if self.recipe.explicit_prompts else self._sample_prompts(batch)
        gt_masks = batch.masks.unsqueeze(2)  # [T,O,1,H,W]
        num_frames = batch.num_frames
        processing_order = prompts.init_cond_frames + [
            t for t in range(num_frames) if t not in prompts.init_cond_frames
        ]
        memory_bank = self.new_memory_bank()
        img_ids = batch.flat_obj_to_img_idx  # [T,O]
        for t in processing_order:
            rows = image_pos[img_ids[t]]
            frame_out = self._track_frame(
                frame_idx=t,
                is_init_cond_frame=t in prompts.init_cond_frames,
                current_vision_feats=[x[:, rows] for x in vision_feats],
                current_vision_pos_embeds=[x[:, rows] for x in vision_pos_embeds],
                feat_sizes=feat_sizes,
                point_inputs=prompts.point_inputs.get(t),
                mask_inputs=prompts.mask_inputs.get(t),
                gt_masks=gt_masks[t],
                correct=t in prompts.frames_to_correct,
                memory_bank=memory_bank,
                num_frames=num_frames,
            )
            as_cond = t in prompts.init_cond_frames or (
                self.recipe.add_all_frames_to_correct_as_cond and t in prompts.frames_to_correct
            )
            memory_bank.add(t, frame_out, is_cond=as_cond)
        return [{k: v for k, v in out.items() if k != "obj_ptr"} for out in memory_bank.frames_in_order()]

    def _frame_features(
        self, batch: BatchedVideoDatapoint
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]], torch.Tensor]:
        """Image features of every distinct frame used by an object, flattened (HW)xFxC.

        Returns vision_feats and vision_pos_embeds (lists over levels of [HW,F,C]), feat_sizes, and
        image_pos [B*T] long: the column of each flat image index (-1 for frames no object uses).
        """
        used = torch.unique(batch.flat_obj_to_img_idx.flatten())
        image_pos = torch.full((batch.num_frames * batch.num_videos,), -1, dtype=torch.long, device=used.device)
        image_pos[used] = torch.arange(len(used), device=used.device)
        images = batch.flat_img_batch[used]
        if self.image_encoder_is_trainable():
            backbone_out = self.forward_image(images)
        else:
            # a frozen encoder runs without autograd (and its outputs may come from the cache); the
            # decoder's high-res projections run outside it when they are trained
            project_later = self.high_res_projections_are_trainable()
            frozen_part = self.image_encoder if project_later else self.forward_image
            if self.feature_cache is not None:
                backbone_out = self._cached_forward(frozen_part, batch, used, images)
            else:
                with torch.no_grad():
                    backbone_out = frozen_part(images)
            if project_later:
                backbone_out = self.project_high_res_levels(backbone_out)
        _, vision_feats, vision_pos_embeds, feat_sizes = self.prepare_backbone_features(backbone_out)
        return vision_feats, vision_pos_embeds, feat_sizes, image_pos

    def _cached_forward(
        self,
        frozen_part: Callable[[torch.Tensor], dict[str, Any]],
        batch: BatchedVideoDatapoint,
        used: torch.Tensor,
        images: torch.Tensor,
    ) -> dict[str, list[torch.Tensor]]:
        """`frozen_part(images)` for `images` [F,3,H,W] (the image encoder, with or without the high-res
        projections), computing only frames not in the feature cache; without autograd."""
        cache = self.feature_cache
        size = (images.shape[-2], images.shape[-1])
        keys = []
        for flat in used.tolist():
            b, t = divmod(flat, batch.num_frames)
            keys.append((batch.video_names[b], batch.frame_names[b][t], *size))
        per_frame = [cache.get(key) for key in keys]  # held here: putting new frames may evict these
        missing = [i for i, levels in enumerate(per_frame) if levels is None]
        if missing or cache.pos_enc(size) is None:
            with torch.no_grad():
                fresh = frozen_part(images[missing] if missing else images[:1])
            cache.put_pos_enc(size, [x[:1] for x in fresh["vision_pos_enc"]])
            for j, i in enumerate(missing):
                per_frame[i] = [level[j] for level in fresh["backbone_fpn"]]
                cache.put(keys[i], per_frame[i])
        levels = [torch.stack(parts) for parts in zip(*per_frame)]
        pos_enc = [x.expand(len(keys), -1, -1, -1) for x in cache.pos_enc(size)]
        return {"backbone_fpn": levels, "vision_pos_enc": pos_enc, "vision_features": levels[-1]}

    # ---------------------------------------------------------------- prompts

    def _phase(self, name: str) -> Any:
        return getattr(self.recipe, f"{name}_for_{'train' if self.training else 'eval'}")

    def _sample_prompts(self, batch: BatchedVideoDatapoint) -> FramePrompts:
        """The official recipe: mask input, or (points or box) input plus correction clicks."""
        num_frames = batch.num_frames
        prob_pt = self._phase("prob_to_use_pt_input")
        prob_box = self._phase("prob_to_use_box_input")
        num_init = self._phase("num_init_cond_frames")
        num_correct = self._phase("num_frames_to_correct")
        if num_frames == 1:  # a single image: SAM-style interactive training with clicks
            prob_pt, num_init, num_correct = 1.0, 1, 1
        # prompts go only on frames that are real in every clip: a padded frame (a repeat of the
        # clip's last frame) must not become a conditioning memory that real frames read
        num_real = batch.num_unpadded_frames
        # unlike the official code, a clip keeps at least one tracked frame: with only prompted
        # frames a mask-prompted step would have nothing to learn (a loss without gradient)
        num_init = min(num_init, max(num_real - 1, 1))
        use_pt_input = _uniform() < prob_pt
        if self._phase("rand_init_cond_frames") and num_init > 1:
            num_init = _randint(1, num_init)
        if use_pt_input and self._phase("rand_frames_to_correct") and num_correct > num_init:
            num_correct = _randint(num_init, num_correct)
        others = list(range(1, num_real))
        init_cond = [0] + _choose(others, num_init - 1)
        prompts = FramePrompts(init_cond_frames=init_cond, frames_to_correct=[])
        method = "uniform" if self.training else self.recipe.pt_sampling_for_eval
        for t in init_cond:
            gt = batch.masks[t].unsqueeze(1)  # [O,1,H,W]
            if not use_pt_input:
                prompts.mask_inputs[t] = gt
            elif _uniform() < prob_box:
                coords, labels = sample_box_points(gt)
                prompts.point_inputs[t] = {"point_coords": coords, "point_labels": labels}
            else:
                coords, labels = next_click(gt, None, method)
                prompts.point_inputs[t] = {"point_coords": coords, "point_labels": labels}
        if use_pt_input:
            remaining = [t for t in range(num_real) if t not in init_cond]
            extra = min(max(num_correct - num_init, 0), len(remaining))
            prompts.frames_to_correct = init_cond + _choose(remaining, extra)
        return prompts

    def _explicit_prompts(self, batch: BatchedVideoDatapoint) -> FramePrompts:
        """The batch's own prompts as they are; each frame with one is a conditioning frame.

        On such a frame, if every object has a mask prompt it is the mask input; otherwise each
        object's box (two corner points, labels 2/3) then its clicks form the point input, padded
        with label -1. An object with only a mask prompt on a frame where others have clicks is an error.
        """
        prompted_frames = [t for t in range(batch.num_frames) if bool(batch.has_prompts[t].any())]
        if not prompted_frames:
            raise UserInputError(
                f"explicit_prompts is on but clips {batch.video_names} carry no point, box or mask prompt"
            )
        prompts = FramePrompts(init_cond_frames=prompted_frames, frames_to_correct=[])
        for t in prompted_frames:
            if bool(batch.mask_prompt_valid[t].all()):
                prompts.mask_inputs[t] = batch.mask_prompts[t].unsqueeze(1)
                continue
            has_points = (batch.point_labels[t] >= 0).any(-1) | batch.box_valid[t]
            mask_only = batch.mask_prompt_valid[t] & ~has_points
            if bool(mask_only.any()):
                raise UserInputError(
                    f"explicit prompts of clips {batch.video_names}, frame {t}: some objects have only a mask "
                    "prompt while others have clicks or boxes; give every object on a frame the same kind"
                )
            prompts.point_inputs[t] = _points_with_boxes(
                batch.point_coords[t], batch.point_labels[t], batch.boxes[t], batch.box_valid[t]
            )
        return prompts

    # ---------------------------------------------------------------- one frame

    def _track_frame(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[torch.Tensor],
        current_vision_pos_embeds: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: PointInputs | None,
        mask_inputs: torch.Tensor | None,
        gt_masks: torch.Tensor,
        correct: bool,
        memory_bank: MemoryBank,
        num_frames: int,
    ) -> FrameOutput:
        """One frame for all objects: the core's `segment_frame`, correction clicks, then the core's
        tail step (`complete_frame_output`: final outputs and memory encoding).

        gt_masks [N,1,H,W] bool is used only to sample correction clicks.
        """
        frame_out, sam_outputs, high_res_features, pix_feat = self.segment_frame(
            frame_idx=frame_idx,
            is_init_cond_frame=is_init_cond_frame,
            current_vision_feats=current_vision_feats,
            current_vision_pos_embeds=current_vision_pos_embeds,
            feat_sizes=feat_sizes,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            memory=memory_bank,
            num_frames=num_frames,
        )
        steps = [sam_outputs]
        step_points = [point_inputs]
        if correct:
            method = "uniform" if self.training else self.recipe.pt_sampling_for_eval
            for _ in range(self.recipe.num_correction_pt_per_frame):
                from_gt = self.training and _uniform() < self.recipe.prob_to_sample_from_gt_for_train
                pred_for_click = None if from_gt else steps[-1].high_res_masks > 0
                coords, labels = next_click(gt_masks, pred_for_click, method)
                point_inputs = append_points(point_inputs, coords, labels)
                # the previous logits go in as a mask prompt together with the new click
                steps.append(
                    self.forward_sam_heads(
                        backbone_features=pix_feat,
                        point_inputs=point_inputs,
                        mask_inputs=steps[-1].low_res_masks,
                        high_res_features=high_res_features,
                        multimask_output=self.use_multimask(is_init_cond_frame, point_inputs),
                    )
                )
                step_points.append(point_inputs)
        final = steps[-1]
        frame_out.update(
            multistep_pred_masks=torch.cat([s.low_res_masks for s in steps], dim=1),
            multistep_pred_masks_high_res=torch.cat([s.high_res_masks for s in steps], dim=1),
            multistep_pred_multimasks=[s.low_res_multimasks for s in steps],
            multistep_pred_multimasks_high_res=[s.high_res_multimasks for s in steps],
            multistep_pred_ious=[s.ious for s in steps],
            multistep_point_inputs=step_points,
            multistep_object_score_logits=[s.object_score_logits for s in steps],
        )
        return self.complete_frame_output(frame_out, final, current_vision_feats, feat_sizes, point_inputs)


def _uniform() -> float:
    """A float in [0, 1) from torch's global generator (seeded and checkpointed by the trainer)."""
    return float(torch.rand(()))


def _randint(low: int, high: int) -> int:
    """An int in [low, high], both inclusive."""
    return int(torch.randint(low, high + 1, ()))


def _choose(items: list[int], count: int) -> list[int]:
    """`count` distinct items in random order."""
    if count <= 0:
        return []
    order = torch.randperm(len(items))[:count].tolist()
    return [items[i] for i in order]


def _points_with_boxes(
    point_coords: torch.Tensor, point_labels: torch.Tensor, boxes: torch.Tensor, box_valid: torch.Tensor
) -> PointInputs:
    """Per object: box corners (if any) then clicks, as one padded point prompt.

    point_coords [N,K,2], point_labels [N,K] (-1 padding), boxes [N,4], box_valid [N] ->
    {"point_coords" [N,P,2], "point_labels" [N,P] int32}, padded with label -1 at (0, 0).
    """
    n = point_coords.shape[0]
    corner_labels = torch.tensor([BOX_TOP_LEFT_LABEL, BOX_BOTTOM_RIGHT_LABEL], dtype=torch.int32, device=boxes.device)
    per_object = []
    for i in range(n):
        keep = point_labels[i] >= 0
        coords, labels = point_coords[i][keep].float(), point_labels[i][keep].to(torch.int32)
        if bool(box_valid[i]):
            coords = torch.cat([boxes[i].float().view(2, 2), coords])
            labels = torch.cat([corner_labels, labels])
        per_object.append((coords, labels))
    width = max(1, max(len(labels) for _, labels in per_object))
    out_coords = torch.zeros(n, width, 2, device=point_coords.device)
    out_labels = torch.full((n, width), -1, dtype=torch.int32, device=point_coords.device)
    for i, (coords, labels) in enumerate(per_object):
        out_coords[i, : len(labels)] = coords
        out_labels[i, : len(labels)] = labels
    return {"point_coords": out_coords, "point_labels": out_labels}
