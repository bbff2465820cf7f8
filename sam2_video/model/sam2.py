"""The SAM2 model core: image encoder, SAM heads, memory attention, memory encoder, object pointers.

One core serves the image predictor, the video predictor and training. It follows the official
`SAM2Base` semantics with the batch dimension = objects: every tensor of a frame has one row per
tracked object (the image features of a frame are gathered per object by the caller).

Shapes below: N objects, C = config.d_model, Cm = config.mem_dim, S = config.image_size,
H = W = S // 16 (the stride-16 feature map), HW = H * W.

Behaviour shared by every official preset is built in: high-resolution features in the decoder,
object-score head with a fixed no-object pointer, object pointers in memory attention (MLP
projection, multimask tokens), no-memory embedding added directly on initial conditioning frames,
object pointers only from the past in evaluation. What differs between presets or is user-tunable
comes from `SAM2Config`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import trunc_normal_

from sam2_video.model.image_encoder import ImageEncoder
from sam2_video.model.layers import MLP
from sam2_video.model.mask_decoder import MaskDecoder
from sam2_video.model.memory_bank import MemoryBank, MemoryPolicy
from sam2_video.model.memory_attention import MemoryAttention
from sam2_video.model.memory_encoder import MemoryEncoder
from sam2_video.model.presets import SAM2Config
from sam2_video.model.prompt_encoder import PromptEncoder

NO_OBJ_SCORE = -1024.0  # mask logit placed where an object is predicted absent
NUM_FEATURE_LEVELS = 3  # FPN levels used: strides 4 and 8 (decoder high-res features) and 16
MASK_AS_OUTPUT_SCALE, MASK_AS_OUTPUT_BIAS = 20.0, -10.0  # binary mask -> logits -10 / +10

FrameOutput = dict[str, Any]
"""One frame's tracking output (`track_step`): point_inputs, mask_inputs, pred_masks [N,1,S/4,S/4],
pred_masks_high_res [N,1,S,S], obj_ptr [N,C], object_score_logits [N,1],
maskmem_features [N,Cm,H,W] or None, maskmem_pos_enc [[N,Cm,H,W]] or None."""


@dataclass(frozen=True)
class SAMHeadOutputs:
    """Outputs of the SAM prompt encoder + mask decoder for N objects (M = 3 with multimask, else 1)."""

    low_res_multimasks: torch.Tensor  # [N, M, S/4, S/4] mask logits
    ious: torch.Tensor  # [N, M] predicted IoU
    low_res_masks: torch.Tensor  # [N, 1, S/4, S/4] the mask with the highest predicted IoU
    high_res_masks: torch.Tensor  # [N, 1, S, S]
    obj_ptr: torch.Tensor  # [N, C] object pointer
    object_score_logits: torch.Tensor  # [N, 1] > 0: object present

    @property
    def high_res_multimasks(self) -> torch.Tensor:
        """[N, M, S, S]: upsampled when asked (only the training loss reads all M; inference needs the
        kept mask alone, and at 1024 px the other two cost 2 x 4 MiB of interpolation per object)."""
        if self.low_res_multimasks is self.low_res_masks:
            return self.high_res_masks
        return _masks_at_size(self.low_res_multimasks, self.high_res_masks.shape[-1])


def _masks_at_size(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Mask logits [N, M, h, w] -> [N, M, size, size], bilinear as the official code."""
    return F.interpolate(masks, size=(size, size), mode="bilinear", align_corners=False)


class FrameSegmentation(NamedTuple):
    """What `segment_frame` computes before the memory encoder (training adds correction clicks here)."""

    current_out: FrameOutput  # holds point_inputs and mask_inputs so far
    sam_outputs: SAMHeadOutputs
    high_res_features: list[torch.Tensor]  # [[N,C/8,4H,4W], [N,C/4,2H,2W]]
    pix_feat: torch.Tensor  # [N, C, H, W] memory-conditioned features fed to the SAM heads


def sine_pe_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """1D sine/cosine position encoding: positions [L] (float) -> [L, dim]."""
    half = dim // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=positions.device)
    dim_t = temperature ** (2 * (dim_t // 2) / half)
    angles = positions.unsqueeze(-1) / dim_t
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def _to_bchw(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[HW, N, C] -> [N, C, H, W]."""
    return tokens.permute(1, 2, 0).reshape(tokens.size(1), tokens.size(2), *size)


class SAM2(nn.Module):
    """SAM2 / SAM2.1 with the official parameter names (loads official checkpoints strictly).

    Call order per frame: `forward_image` -> `prepare_backbone_features` -> `track_step`
    (or, for single images, the SAM heads directly; see `SAM2ImagePredictor`).
    """

    def __init__(self, config: SAM2Config) -> None:
        super().__init__()
        self.config = config
        self.hidden_dim = config.d_model
        self.mem_dim = config.mem_dim
        self.num_maskmem = config.num_maskmem
        self.image_size = config.image_size
        self.backbone_stride = config.backbone_stride
        feat_size = config.feat_size

        self.image_encoder = ImageEncoder(config)
        self.memory_attention = MemoryAttention(config)
        self.memory_encoder = MemoryEncoder(config)
        self.sam_prompt_encoder = PromptEncoder(
            embed_dim=config.d_model,
            image_embedding_size=(feat_size, feat_size),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=16,
        )
        self.sam_mask_decoder = MaskDecoder(
            transformer_dim=config.d_model,
            dynamic_multimask_via_stability=config.dynamic_multimask_via_stability,
            dynamic_multimask_stability_delta=config.dynamic_multimask_stability_delta,
            dynamic_multimask_stability_thresh=config.dynamic_multimask_stability_thresh,
        )

        # a mask prompt -> stride-4 logits, to get an object pointer from a mask input
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(config.num_maskmem, 1, 1, config.mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, config.d_model))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, config.d_model))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, config.d_model))
        self.no_obj_embed_spatial = (
            nn.Parameter(torch.zeros(1, config.mem_dim)) if config.no_obj_embed_spatial else None
        )
        for param in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc, self.no_obj_ptr,
                      self.no_obj_embed_spatial):
            if param is not None:
                trunc_normal_(param, std=0.02)
        self.obj_ptr_proj = MLP(config.d_model, config.d_model, config.d_model, 3)
        self.obj_ptr_tpos_proj = (
            nn.Linear(config.d_model, config.mem_dim) if config.proj_tpos_enc_in_obj_ptrs else nn.Identity()
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ image features
    def forward_image(self, img_batch: torch.Tensor) -> dict[str, Any]:
        """Run the image encoder on normalised images [B,3,S,S].

        Returns the encoder dict: "vision_features" [B,C,H,W], "vision_pos_enc" and "backbone_fpn"
        (lists of 3 levels, strides 4, 8, 16); levels 0 and 1 of backbone_fpn are already projected
        by the decoder's conv_s0 / conv_s1 (to C/8 and C/4 channels).
        """
        return self.project_high_res_levels(self.image_encoder(img_batch))

    def project_high_res_levels(self, encoder_out: dict[str, Any]) -> dict[str, Any]:
        """The image encoder's dict with backbone_fpn levels 0 and 1 through the decoder's conv_s0 / conv_s1."""
        fpn = list(encoder_out["backbone_fpn"])
        fpn[0] = self.sam_mask_decoder.conv_s0(fpn[0])
        fpn[1] = self.sam_mask_decoder.conv_s1(fpn[1])
        return {**encoder_out, "backbone_fpn": fpn}

    def prepare_backbone_features(
        self, backbone_out: dict[str, Any]
    ) -> tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
        """Flatten the 3 feature levels: returns (backbone_out, vision_feats, vision_pos_embeds, feat_sizes).

        vision_feats[i] and vision_pos_embeds[i] are [H_i*W_i, B, C_i] (finest first), feat_sizes[i] = (H_i, W_i).
        """
        feature_maps = backbone_out["backbone_fpn"][-NUM_FEATURE_LEVELS:]
        pos_maps = backbone_out["vision_pos_enc"][-NUM_FEATURE_LEVELS:]
        feat_sizes = [(x.shape[-2], x.shape[-1]) for x in pos_maps]
        vision_feats = [x.flatten(2).permute(2, 0, 1) for x in feature_maps]
        vision_pos_embeds = [x.flatten(2).permute(2, 0, 1) for x in pos_maps]
        return dict(backbone_out), vision_feats, vision_pos_embeds, feat_sizes

    # ------------------------------------------------------------------ SAM heads
    def forward_sam_heads(
        self,
        backbone_features: torch.Tensor,
        point_inputs: dict[str, torch.Tensor] | None = None,
        mask_inputs: torch.Tensor | None = None,
        high_res_features: list[torch.Tensor] | None = None,
        multimask_output: bool = False,
    ) -> SAMHeadOutputs:
        """Prompt encoder + mask decoder on features [N,C,H,W].

        point_inputs: {"point_coords": [N,P,2] float pixels in the S x S input frame (x, y),
        "point_labels": [N,P] int32 (1 positive, 0 negative, 2/3 box corners, -1 padding)}.
        mask_inputs: [N,1,h,w] mask or logits (resized to S/4 with antialiased bilinear if needed).
        high_res_features: [[N,C/8,4H,4W], [N,C/4,2H,2W]] (already projected by conv_s0/conv_s1).
        """
        batch = backbone_features.size(0)
        device = backbone_features.device
        if point_inputs is not None:
            coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
        else:  # no prompt: one padding point
            coords = torch.zeros(batch, 1, 2, device=device)
            labels = -torch.ones(batch, 1, dtype=torch.int32, device=device)

        mask_prompt = None
        if mask_inputs is not None:
            mask_prompt = mask_inputs
            if mask_inputs.shape[-2:] != self.sam_prompt_encoder.mask_input_size:
                mask_prompt = F.interpolate(mask_inputs.float(), size=self.sam_prompt_encoder.mask_input_size,
                                            mode="bilinear", align_corners=False, antialias=True)

        sparse, dense = self.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=mask_prompt)
        low_res_multimasks, ious, sam_output_tokens, object_score_logits = self.sam_mask_decoder(
            image_embeddings=backbone_features,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=False,
            high_res_features=high_res_features,
        )
        is_obj_appearing = object_score_logits > 0
        # the mask used for memory is a hard choice between object and no object
        low_res_multimasks = torch.where(is_obj_appearing[:, None, None], low_res_multimasks, NO_OBJ_SCORE)
        low_res_multimasks = low_res_multimasks.float()

        sam_output_token = sam_output_tokens[:, 0]
        if multimask_output:
            best = torch.argmax(ious, dim=-1)
            rows = torch.arange(batch, device=device)
            low_res_masks = low_res_multimasks[rows, best].unsqueeze(1)
            if sam_output_tokens.size(1) > 1:
                sam_output_token = sam_output_tokens[rows, best]
        else:
            low_res_masks = low_res_multimasks
        # upsampling is per mask: the kept mask alone gives the same numbers as picking it after
        high_res_masks = _masks_at_size(low_res_masks, self.image_size)

        obj_ptr = self._gate_obj_ptr(self.obj_ptr_proj(sam_output_token), is_obj_appearing.float())
        return SAMHeadOutputs(low_res_multimasks, ious, low_res_masks, high_res_masks, obj_ptr, object_score_logits)

    def _gate_obj_ptr(self, obj_ptr: torch.Tensor, is_obj_appearing: torch.Tensor) -> torch.Tensor:
        """Replace the pointer by the learned no-object pointer where the object is absent ([N,1] 0/1)."""
        return is_obj_appearing * obj_ptr + (1 - is_obj_appearing) * self.no_obj_ptr

    def use_mask_as_output(
        self,
        backbone_features: torch.Tensor,
        high_res_features: list[torch.Tensor] | None,
        mask_inputs: torch.Tensor,
    ) -> SAMHeadOutputs:
        """Turn a binary mask input [N,1,S,S] into output logits (-10/+10) without the SAM decoder.

        The object pointer still comes from the SAM heads, prompted by the downsampled mask;
        object presence follows the mask (any foreground pixel). Same outputs as `forward_sam_heads`.
        """
        mask_float = mask_inputs.float()
        high_res_masks = mask_float * MASK_AS_OUTPUT_SCALE + MASK_AS_OUTPUT_BIAS
        low_res_masks = F.interpolate(high_res_masks, size=(high_res_masks.size(-2) // 4, high_res_masks.size(-1) // 4),
                                      mode="bilinear", align_corners=False, antialias=True)
        ious = mask_inputs.new_ones(mask_inputs.size(0), 1).float()
        obj_ptr = self.forward_sam_heads(
            backbone_features=backbone_features,
            mask_inputs=self.mask_downsample(mask_float),
            high_res_features=high_res_features,
        ).obj_ptr
        is_obj_appearing = torch.any(mask_inputs.flatten(1).float() > 0.0, dim=1)[:, None].float()
        object_score_logits = MASK_AS_OUTPUT_SCALE * is_obj_appearing + MASK_AS_OUTPUT_BIAS
        obj_ptr = self._gate_obj_ptr(obj_ptr, is_obj_appearing)
        return SAMHeadOutputs(low_res_masks, ious, low_res_masks, high_res_masks, obj_ptr, object_score_logits)

    # ------------------------------------------------------------------ memory
    @property
    def memory_policy(self) -> MemoryPolicy:
        """How many past frames this model reads, in its current mode (training reads recent
        frames at stride 1 and the pointers of every selected conditioning frame)."""
        cfg = self.config
        return MemoryPolicy(
            num_maskmem=self.num_maskmem,
            temporal_stride=1 if self.training else cfg.memory_temporal_stride_for_eval,
            max_cond_frames_in_attn=cfg.max_cond_frames_in_attn,
            max_obj_ptrs_in_encoder=cfg.max_obj_ptrs_in_encoder,
            cond_pointers_only_from_past=not self.training,
        )

    def new_memory_bank(self) -> MemoryBank:
        """An empty memory bank that reads past frames as this model does (see `memory_policy`)."""
        return MemoryBank(self.memory_policy)

    def prepare_memory_conditioned_features(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[torch.Tensor],
        current_vision_pos_embeds: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        memory: MemoryBank,
        num_frames: int | None,
        track_in_reverse: bool = False,
    ) -> torch.Tensor:
        """Fuse the current frame's stride-16 features with the memory bank -> [N, C, H, W].

        Only the last entry of the feature lists is used ([HW, N, C]). The frames read are
        `memory.select(frame_idx, track_in_reverse, num_frames)` (num_frames None: a stream of
        unknown length). On an initial conditioning frame the no-memory embedding is added
        instead. Memory features may be stored in bfloat16 (memory attention casts them to the
        current features' dtype).
        """
        feats = current_vision_feats[-1]
        batch, channels = feats.size(1), self.hidden_dim
        size = feat_sizes[-1]
        device = feats.device
        if is_init_cond_frame:
            return _to_bchw(feats + self.no_mem_embed, size)
        if not memory.cond_frame_outputs:
            raise ValueError(f"frame {frame_idx} is not an initial conditioning frame but no frame has a prompt yet")
        selection = memory.select(frame_idx, track_in_reverse, num_frames)

        # spatial memories: conditioning frames at t_pos 0, then the recent frames
        memories, memory_pos = [], []
        t_pos_and_frames = [(0, t) for t in selection.cond_frames] + list(selection.recent_frames)
        for t_pos, t in t_pos_and_frames:
            prev = memory.cond_frame_outputs[t] if t_pos == 0 else memory.output(t)
            memories.append(prev["maskmem_features"].to(device).flatten(2).permute(2, 0, 1))
            pos = prev["maskmem_pos_enc"][-1].to(device).flatten(2).permute(2, 0, 1)
            memory_pos.append(pos + self.maskmem_tpos_enc[self.num_maskmem - t_pos - 1])

        # object pointers, with their temporal distance in the tracking direction
        max_obj_ptrs = selection.max_obj_ptrs
        sign = -1 if track_in_reverse else 1
        pos_and_ptrs = [
            ((frame_idx - t) * sign if self.config.use_signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t),
             (memory.cond_frame_outputs[t] if t in selection.cond_frames else memory.output(t))["obj_ptr"])
            for t in selection.pointer_frames
        ]

        num_obj_ptr_tokens = 0
        if pos_and_ptrs:
            positions, ptrs = zip(*pos_and_ptrs)
            obj_ptrs = torch.stack(ptrs, dim=0)  # [P, N, C]
            if self.config.add_tpos_enc_to_obj_ptrs:
                tpos_dim = channels if self.config.proj_tpos_enc_in_obj_ptrs else self.mem_dim
                obj_pos = torch.tensor(positions, device=device) / (max_obj_ptrs - 1)
                obj_pos = self.obj_ptr_tpos_proj(sine_pe_1d(obj_pos, dim=tpos_dim))
                obj_pos = obj_pos.unsqueeze(1).expand(-1, batch, self.mem_dim)
            else:
                obj_pos = obj_ptrs.new_zeros(len(positions), batch, self.mem_dim)
            if self.mem_dim < channels:  # split each pointer into C // Cm tokens
                split = channels // self.mem_dim
                obj_ptrs = obj_ptrs.reshape(-1, batch, split, self.mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
                obj_pos = obj_pos.repeat_interleave(split, dim=0)
            memories.append(obj_ptrs)
            memory_pos.append(obj_pos)
            num_obj_ptr_tokens = obj_ptrs.shape[0]

        pix_feat_with_mem = self.memory_attention(
            curr=feats,
            curr_pos=current_vision_pos_embeds[-1],
            memory=torch.cat(memories, dim=0),
            memory_pos=torch.cat(memory_pos, dim=0),
            num_obj_ptr_tokens=num_obj_ptr_tokens,
        )
        return _to_bchw(pix_feat_with_mem, size)

    def encode_new_memory(
        self,
        current_vision_feats: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        pred_masks_high_res: torch.Tensor,
        object_score_logits: torch.Tensor,
        is_mask_from_pts: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode the frame's features and predicted mask logits [N,1,S,S] into a memory.

        Returns (maskmem_features [N,Cm,H,W], maskmem_pos_enc [[N,Cm,H,W]]). In eval, masks from
        clicks are binarised when config.binarize_mask_from_pts_for_mem_enc; otherwise sigmoid.
        Frames predicted without the object get the no-object spatial embedding (SAM2.1).
        """
        pix_feat = _to_bchw(current_vision_feats[-1], feat_sizes[-1])
        if self.config.binarize_mask_from_pts_for_mem_enc and is_mask_from_pts and not self.training:
            mask_for_mem = (pred_masks_high_res > 0).float()
        else:
            mask_for_mem = torch.sigmoid(pred_masks_high_res)
        mask_for_mem = mask_for_mem * self.config.sigmoid_scale_for_mem_enc + self.config.sigmoid_bias_for_mem_enc
        maskmem_out = self.memory_encoder(pix_feat, mask_for_mem, skip_mask_sigmoid=True)
        maskmem_features = maskmem_out["vision_features"]
        maskmem_pos_enc = maskmem_out["vision_pos_enc"]
        if self.no_obj_embed_spatial is not None:
            is_obj_appearing = (object_score_logits > 0).float()
            maskmem_features = maskmem_features + (
                (1 - is_obj_appearing[..., None, None]) * self.no_obj_embed_spatial[..., None, None]
            )
        return maskmem_features, maskmem_pos_enc

    # ------------------------------------------------------------------ one tracking step
    def use_multimask(self, is_init_cond_frame: bool, point_inputs: dict[str, torch.Tensor] | None) -> bool:
        """Whether the SAM heads output 3 masks (first click on a conditioning frame, and tracking)."""
        num_pts = 0 if point_inputs is None else point_inputs["point_labels"].size(1)
        cfg = self.config
        return (cfg.multimask_output_in_sam
                and (is_init_cond_frame or cfg.multimask_output_for_tracking)
                and cfg.multimask_min_pt_num <= num_pts <= cfg.multimask_max_pt_num)

    def segment_frame(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[torch.Tensor],
        current_vision_pos_embeds: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        memory: MemoryBank,
        num_frames: int | None,
        track_in_reverse: bool = False,
        prev_sam_mask_logits: torch.Tensor | None = None,
    ) -> FrameSegmentation:
        """The first half of `track_step`: memory conditioning and SAM heads, no memory encoding.

        A mask input with config.use_mask_input_as_output_without_sam is taken as the output;
        otherwise memory-conditioned features go through the SAM heads, with `prev_sam_mask_logits`
        [N,1,S/4,S/4] (previous logits, together with new clicks) as the mask prompt.
        """
        current_out: FrameOutput = {"point_inputs": point_inputs, "mask_inputs": mask_inputs}
        high_res_features = [_to_bchw(x, s) for x, s in zip(current_vision_feats[:-1], feat_sizes[:-1])]
        if mask_inputs is not None and self.config.use_mask_input_as_output_without_sam:
            pix_feat = _to_bchw(current_vision_feats[-1], feat_sizes[-1])
            sam_outputs = self.use_mask_as_output(pix_feat, high_res_features, mask_inputs)
        else:
            pix_feat = self.prepare_memory_conditioned_features(
                frame_idx=frame_idx,
                is_init_cond_frame=is_init_cond_frame,
                current_vision_feats=current_vision_feats[-1:],
                current_vision_pos_embeds=current_vision_pos_embeds[-1:],
                feat_sizes=feat_sizes[-1:],
                memory=memory,
                num_frames=num_frames,
                track_in_reverse=track_in_reverse,
            )
            if prev_sam_mask_logits is not None:
                if point_inputs is None or mask_inputs is not None:
                    raise ValueError("prev_sam_mask_logits needs point_inputs and no mask_inputs")
                mask_inputs = prev_sam_mask_logits
            sam_outputs = self.forward_sam_heads(
                backbone_features=pix_feat,
                point_inputs=point_inputs,
                mask_inputs=mask_inputs,
                high_res_features=high_res_features,
                multimask_output=self.use_multimask(is_init_cond_frame, point_inputs),
            )
        return FrameSegmentation(current_out, sam_outputs, high_res_features, pix_feat)

    def track_step(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[torch.Tensor],
        current_vision_pos_embeds: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        memory: MemoryBank,
        num_frames: int | None,
        track_in_reverse: bool = False,
        run_mem_encoder: bool = True,
        prev_sam_mask_logits: torch.Tensor | None = None,
    ) -> FrameOutput:
        """Segment N objects on one frame with memory, then encode the result as a new memory.

        current_vision_feats / current_vision_pos_embeds: 3 levels [H_i*W_i, N, C_i] (from
        `prepare_backbone_features`, gathered per object); point_inputs: see `forward_sam_heads`;
        mask_inputs: [N,1,S,S]; memory: the objects' bank (see `prepare_memory_conditioned_features`).
        Returns a FrameOutput (see `FrameOutput`); the caller stores it with `memory.add`.
        """
        current_out, sam_outputs, _, _ = self.segment_frame(
            frame_idx, is_init_cond_frame, current_vision_feats, current_vision_pos_embeds, feat_sizes,
            point_inputs, mask_inputs, memory, num_frames, track_in_reverse, prev_sam_mask_logits)
        return self.complete_frame_output(current_out, sam_outputs, current_vision_feats, feat_sizes,
                                          point_inputs, run_mem_encoder)

    def complete_frame_output(
        self,
        current_out: FrameOutput,
        sam_outputs: SAMHeadOutputs,
        current_vision_feats: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, torch.Tensor] | None,
        run_mem_encoder: bool = True,
    ) -> FrameOutput:
        """The tail of a tracking step, shared by inference and training: the final SAM outputs
        (pred_masks, pred_masks_high_res, obj_ptr, object_score_logits) go into `current_out`, and
        the frame is encoded as a new memory from that mask (maskmem_features / maskmem_pos_enc,
        None without `run_mem_encoder`). `point_inputs`: every click of the frame (masks from
        clicks may be binarised for memory, see `encode_new_memory`)."""
        current_out["pred_masks"] = sam_outputs.low_res_masks
        current_out["pred_masks_high_res"] = sam_outputs.high_res_masks
        current_out["obj_ptr"] = sam_outputs.obj_ptr
        current_out["object_score_logits"] = sam_outputs.object_score_logits
        current_out["maskmem_features"], current_out["maskmem_pos_enc"] = None, None
        if run_mem_encoder:
            current_out["maskmem_features"], current_out["maskmem_pos_enc"] = self.encode_new_memory(
                current_vision_feats=current_vision_feats,
                feat_sizes=feat_sizes,
                pred_masks_high_res=sam_outputs.high_res_masks,
                object_score_logits=sam_outputs.object_score_logits,
                is_mask_from_pts=point_inputs is not None,
            )
        return current_out

    def forward(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "SAM2 is driven frame by frame: use SAM2ImagePredictor, the video predictor, or the trainer "
            "(they call forward_image / track_step)."
        )
