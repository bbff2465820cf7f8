"""STCN (Space-Time Correspondence Networks, Cheng et al. 2021): a memory network baseline.

Keys come from the frame alone (ResNet-50 key encoder, shared by all objects); values from the
frame and one object's mask (ResNet-18 value encoder on RGB + object mask + other objects' mask,
fused with the key encoder's f16). A query frame reads the memory through a softmax over the
negative squared L2 distance between its key and every memory key, and a decoder upsamples the
readout through f8 and f4 to mask logits. Objects are combined by soft aggregation.

Shapes: B = videos, K = object slots per video, T = memory frames, Ck = key channels,
Cv = value channels, H x W = image size, h x w = H/16 x W/16.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sam2_video.config import STCNSection
from sam2_video.data.batch import BatchedVideoDatapoint
from sam2_video.errors import UserInputError
from sam2_video.model.resnet import ResNet

# probabilities are clamped to [EPS, 1 - EPS] before soft aggregation (as STCN)
AGGREGATION_EPS = 1e-7


@dataclass(frozen=True)
class STCNConfig:
    """STCN sizes. The defaults are the paper's; a ResNet-18 key encoder with narrower values and
    decoder (`key_backbone=18, value_dim=128, decoder_dim=128`) trains much faster on a CPU."""

    image_size: int = 384  # frames are resized to image_size x image_size (a multiple of 16)
    key_backbone: int = 50  # ResNet depth of the key encoder (50 or 18)
    key_dim: int = 64
    value_dim: int = 512  # value channels, also the width of the query's f16_thin
    decoder_dim: int = 512
    max_objects: int = 20  # objects per video (training clip or tracked video)

    @classmethod
    def from_section(cls, section: STCNSection, image_size: int) -> "STCNConfig":
        """From a run config's `model.stcn` section and `model.image_size`."""
        return cls(image_size=image_size, key_backbone=section.key_backbone, value_dim=section.value_dim,
                   decoder_dim=section.decoder_dim, max_objects=section.max_objects)

    def __post_init__(self) -> None:
        if self.image_size % 16 != 0 or self.image_size < 32:
            raise ValueError(f"STCN image_size must be a multiple of 16 and at least 32, got {self.image_size}")
        if self.key_backbone not in (18, 50):
            raise ValueError(f"STCN key_backbone must be 18 or 50, got {self.key_backbone}")
        if self.max_objects < 1:
            raise ValueError(f"STCN max_objects must be at least 1, got {self.max_objects}")


@dataclass
class KeyFeatures:
    """Key-encoder outputs of N frames: key [N,Ck,h,w], f16_thin [N,Cv,h,w], f16, f8, f4."""

    key: torch.Tensor
    f16_thin: torch.Tensor
    f16: torch.Tensor
    f8: torch.Tensor
    f4: torch.Tensor


@dataclass
class STCNOutputs:
    """Training-forward outputs for frames 1..T-1 of each clip (frame 0 gives the reference masks).

    logits[i]: [B, K+1, H, W] aggregated logits of frame i+1, channel 0 = background, channel k+1 =
    object slot k (-inf for empty slots). probs[i]: [B, K, H, W] object probabilities.
    slot_objects: [B, K] index of each slot's object in the batch (-1 for an empty slot).
    """

    logits: list[torch.Tensor]
    probs: list[torch.Tensor]
    slot_objects: torch.Tensor


def get_affinity(mk: torch.Tensor, qk: torch.Tensor) -> torch.Tensor:
    """Softmax over memory of the negative squared L2 distance between keys, divided by sqrt(Ck).

    mk [B, Ck, T, h, w] memory keys, qk [B, Ck, h, w] query key -> [B, T*h*w, h*w] float32; each
    column (query pixel) sums to 1. The query's own |q|^2 term is constant over memory and dropped.
    Computed in float32 also under autocast.
    """
    ck = mk.shape[1]
    with torch.autocast(mk.device.type, enabled=False):
        mk = mk.flatten(2).float()
        qk = qk.flatten(2).float()
        mk_sq = mk.pow(2).sum(1).unsqueeze(2)
        affinity = (2 * mk.transpose(1, 2) @ qk - mk_sq) / math.sqrt(ck)
        return torch.softmax(affinity, dim=1)


def readout(affinity: torch.Tensor, mv: torch.Tensor, qv: torch.Tensor) -> torch.Tensor:
    """Memory values of K objects weighted by affinity, concatenated with the query's own features.

    affinity [B, T*h*w, h*w], mv [B, K, Cv, T, h, w], qv [B, Cq, h, w] -> [B, K, Cv + Cq, h, w].
    """
    b, k, cv, _, h, w = mv.shape
    memory = torch.einsum("bkcn,bnm->bkcm", mv.flatten(3), affinity).view(b, k, cv, h, w)
    return torch.cat([memory, qv[:, None].expand(-1, k, -1, -1, -1)], dim=2)


def aggregate(prob: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Soft aggregation of independent object probabilities [..., K, ...] (objects along `dim`).

    Returns float32 logits [..., K+1, ...] with the background first (log-odds of the background,
    the product of the objects' 1 - p, and of each object); softmax over `dim` gives label
    probabilities that sum to 1.
    """
    with torch.autocast(prob.device.type, enabled=False):
        prob = prob.float()
        background = torch.prod(1 - prob, dim=dim, keepdim=True)
        new_prob = torch.cat([background, prob], dim=dim).clamp(AGGREGATION_EPS, 1 - AGGREGATION_EPS)
        return torch.log(new_prob / (1 - new_prob))


class ResBlock(nn.Module):
    """Pre-activation residual block of two 3x3 convs (3x3 conv shortcut when widths differ)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.downsample = nn.Conv2d(in_dim, out_dim, 3, padding=1) if in_dim != out_dim else None
        self.conv1 = nn.Conv2d(in_dim, out_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv2(F.relu(self.conv1(F.relu(x))))
        return (x if self.downsample is None else self.downsample(x)) + r


class ChannelGate(nn.Module):
    """CBAM channel attention: an MLP on average- and max-pooled channels, sigmoid gate."""

    def __init__(self, dim: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(dim // reduction, 1)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        return x * torch.sigmoid(scores)[:, :, None, None]


class SpatialGate(nn.Module):
    """CBAM spatial attention: a 7x7 conv on the channel max and mean, sigmoid gate."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class FeatureFusionBlock(nn.Module):
    """Fuse value features with the key encoder's f16: ResBlock, CBAM attention, ResBlock."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.block1 = ResBlock(in_dim, out_dim)
        self.attention = nn.Sequential(ChannelGate(out_dim), SpatialGate())
        self.block2 = ResBlock(out_dim, out_dim)

    def forward(self, x: torch.Tensor, f16: torch.Tensor) -> torch.Tensor:
        x = self.block1(torch.cat([x, f16], dim=1))
        return self.block2(x + self.attention(x))


class KeyEncoder(nn.Module):
    """ResNet (stages 1-3) on RGB: f4, f8, f16 (strides 4, 8, 16)."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.backbone = ResNet(depth, in_channels=3, num_stages=3)
        self.out_channels = self.backbone.out_channels

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f4, f8, f16 = self.backbone(image)
        return f16, f8, f4


class ValueEncoder(nn.Module):
    """ResNet-18 (stages 1-3) on RGB + object mask + other objects' mask, fused with f16: [N, Cv, h, w]."""

    def __init__(self, f16_dim: int, value_dim: int) -> None:
        super().__init__()
        self.backbone = ResNet(18, in_channels=5, num_stages=3)
        self.fuser = FeatureFusionBlock(f16_dim + self.backbone.out_channels[-1], value_dim)

    def forward(self, image: torch.Tensor, f16: torch.Tensor, mask: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        """image [N,3,H,W], f16 [N,C16,h,w], mask and others [N,1,H,W] in [0,1]."""
        x = self.backbone(torch.cat([image, mask, others], dim=1))[-1]
        return self.fuser(x, f16)


class UpsampleBlock(nn.Module):
    """x2 bilinear upsampling of the coarse features plus a 3x3 conv of the skip features, then a ResBlock."""

    def __init__(self, skip_dim: int, up_dim: int, out_dim: int) -> None:
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_dim, up_dim, 3, padding=1)
        self.out_conv = ResBlock(up_dim, out_dim)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        x = self.skip_conv(skip) + F.interpolate(up, scale_factor=2, mode="bilinear", align_corners=False)
        return self.out_conv(x)


class Decoder(nn.Module):
    """Readout [N, 2*Cv, h, w] with f8 and f4 skips -> mask logits [N, 1, H, W]."""

    def __init__(self, in_dim: int, f8_dim: int, f4_dim: int, dim: int) -> None:
        super().__init__()
        self.compress = ResBlock(in_dim, dim)
        self.up_16_8 = UpsampleBlock(f8_dim, dim, dim // 2)
        self.up_8_4 = UpsampleBlock(f4_dim, dim // 2, dim // 2)
        self.pred = nn.Conv2d(dim // 2, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        x = self.up_8_4(f4, self.up_16_8(f8, self.compress(x)))
        return F.interpolate(self.pred(F.relu(x)), scale_factor=4, mode="bilinear", align_corners=False)


class STCN(nn.Module):
    """The STCN model. `forward(batch)` is the training pass; the predictor uses the pieces
    `encode_key`, `encode_value` and `decode_objects`."""

    def __init__(self, config: STCNConfig) -> None:
        super().__init__()
        self.config = config
        self.key_encoder = KeyEncoder(config.key_backbone)
        f4_dim, f8_dim, f16_dim = self.key_encoder.out_channels
        self.key_proj = nn.Conv2d(f16_dim, config.key_dim, 3, padding=1)
        self.key_comp = nn.Conv2d(f16_dim, config.value_dim, 3, padding=1)
        self.value_encoder = ValueEncoder(f16_dim, config.value_dim)
        self.decoder = Decoder(2 * config.value_dim, f8_dim, f4_dim, config.decoder_dim)
        nn.init.orthogonal_(self.key_proj.weight)
        nn.init.zeros_(self.key_proj.bias)

    def encode_key(self, images: torch.Tensor) -> KeyFeatures:
        """images [N, 3, H, W] (normalised) -> KeyFeatures of the N frames."""
        f16, f8, f4 = self.key_encoder(images)
        return KeyFeatures(key=self.key_proj(f16), f16_thin=self.key_comp(f16), f16=f16, f8=f8, f4=f4)

    def encode_value(self, images: torch.Tensor, f16: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Values of K objects on N frames.

        images [N, 3, H, W], f16 [N, C16, h, w], masks [N, K, H, W] object probabilities (an empty
        slot is all zeros); each object's "other objects" channel is the sum of the others' masks.
        Returns [N, K, Cv, h, w].
        """
        n, k = masks.shape[:2]
        others = masks.sum(dim=1, keepdim=True) - masks
        values = self.value_encoder(
            images.repeat_interleave(k, dim=0),
            f16.repeat_interleave(k, dim=0),
            masks.reshape(n * k, 1, *masks.shape[2:]),
            others.reshape(n * k, 1, *masks.shape[2:]),
        )
        return values.view(n, k, *values.shape[1:])

    def decode_objects(self, affinity: torch.Tensor, memory_values: torch.Tensor, query: KeyFeatures) -> torch.Tensor:
        """Independent mask logits [B, K, H, W] of K objects on B query frames.

        affinity [B, T*h*w, h*w] (see `get_affinity`), memory_values [B, K, Cv, T, h, w], query:
        KeyFeatures of the B frames.
        """
        b, k = memory_values.shape[:2]
        decoder_in = readout(affinity, memory_values, query.f16_thin).flatten(0, 1)
        logits = self.decoder(decoder_in, query.f8.repeat_interleave(k, dim=0), query.f4.repeat_interleave(k, dim=0))
        return logits.view(b, k, *logits.shape[-2:])

    def segment(
        self, affinity: torch.Tensor, memory_values: torch.Tensor, query: KeyFeatures, slot_valid: torch.Tensor
    ) -> torch.Tensor:
        """Aggregated logits [B, K+1, H, W] (background first) of B query frames; slot_valid [B, K]
        bool marks real objects (empty slots get probability 0 and logit -inf)."""
        prob = torch.sigmoid(self.decode_objects(affinity, memory_values, query)) * slot_valid[:, :, None, None]
        valid = torch.cat([torch.ones_like(slot_valid[:, :1]), slot_valid], dim=1)[:, :, None, None]
        return aggregate(prob, dim=1).masked_fill(~valid, float("-inf"))

    def slots(self, batch: BatchedVideoDatapoint) -> torch.Tensor:
        """[B, K] index of each video's objects in the batch (in batch order), -1 where a video has fewer.

        Raises UserInputError when a clip has more objects than `config.max_objects`.
        """
        video_of_object = batch.obj_to_frame_idx[0, :, 1].long().cpu()
        per_video = [torch.nonzero(video_of_object == b).flatten() for b in range(batch.num_videos)]
        counts = [len(objs) for objs in per_video]
        if max(counts, default=0) > self.config.max_objects:
            worst = max(range(len(counts)), key=counts.__getitem__)
            raise UserInputError(
                f"clip of video {batch.video_names[worst]!r} has {counts[worst]} objects but STCN is "
                f"configured for at most {self.config.max_objects} (model max_objects)"
            )
        if min(counts, default=0) == 0:
            empty = batch.video_names[counts.index(0)]
            raise UserInputError(f"clip of video {empty!r} has no object to segment")
        slots = torch.full((batch.num_videos, max(counts)), -1, dtype=torch.long)
        for b, objs in enumerate(per_video):
            slots[b, : len(objs)] = objs
        return slots.to(batch.masks.device)

    def forward(self, batch: BatchedVideoDatapoint) -> STCNOutputs:
        """Training pass over clips of T frames: the ground-truth masks of frame 0 are the first
        memory; each later frame is segmented from all earlier frames, and its predicted
        probabilities become memory for the frames after it (as STCN's 3-frame training)."""
        num_frames, num_videos = batch.num_frames, batch.num_videos
        if num_frames < 2:
            raise UserInputError(f"STCN training needs clips of at least 2 frames, got {num_frames}")
        images = batch.img_batch.transpose(0, 1)  # [B, T, 3, H, W]
        keys = self.encode_key(images.flatten(0, 1))
        per_frame = [
            KeyFeatures(*(f.view(num_videos, num_frames, *f.shape[1:])[:, t] for f in (
                keys.key, keys.f16_thin, keys.f16, keys.f8, keys.f4)))
            for t in range(num_frames)
        ]
        memory_keys = keys.key.view(num_videos, num_frames, *keys.key.shape[1:]).transpose(1, 2)  # [B,Ck,T,h,w]

        slot_objects = self.slots(batch)
        slot_valid = slot_objects >= 0
        gt = batch.masks[0][slot_objects.clamp(min=0)].float() * slot_valid[:, :, None, None]  # [B, K, H, W]
        values = [self.encode_value(images[:, 0], per_frame[0].f16, gt)]
        all_logits, all_probs = [], []
        for t in range(1, num_frames):
            affinity = get_affinity(memory_keys[:, :, :t], per_frame[t].key)
            logits = self.segment(affinity, torch.stack(values, dim=3), per_frame[t], slot_valid)
            probs = torch.softmax(logits, dim=1)[:, 1:]
            all_logits.append(logits)
            all_probs.append(probs)
            if t < num_frames - 1:
                values.append(self.encode_value(images[:, t], per_frame[t].f16, probs))
        return STCNOutputs(logits=all_logits, probs=all_probs, slot_objects=slot_objects)

    def load_backbone_weights(
        self,
        key_resnet: Mapping[str, torch.Tensor] | None = None,
        value_resnet18: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Load torchvision ImageNet state dicts: `resnet{50,18}` (per `config.key_backbone`) for the
        key encoder and/or `resnet18` for the value encoder (its mask channels start at zero)."""
        if key_resnet is not None:
            self.key_encoder.backbone.load_torchvision_weights(key_resnet)
        if value_resnet18 is not None:
            self.value_encoder.backbone.load_torchvision_weights(value_resnet18)
