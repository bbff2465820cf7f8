"""SAM2 image encoder: Hiera trunk + FPN neck with sine position encodings."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam2_video.model.hiera import Hiera
from sam2_video.model.layers import PositionEmbeddingSine
from sam2_video.model.presets import SAM2Config


class FpnNeck(nn.Module):
    """Feature pyramid without output convs: 1x1 lateral convs to `d_model`, nearest-neighbour top-down
    fusion (sum) only into the levels listed in `top_down_levels`.

    `backbone_channel_list` is the trunk's channel list, coarsest level first (convs.0 maps the coarsest).
    """

    def __init__(
        self,
        d_model: int,
        backbone_channel_list: tuple[int, ...],
        top_down_levels: tuple[int, ...] = (2, 3),
    ) -> None:
        super().__init__()
        self.position_encoding = PositionEmbeddingSine(d_model)
        self.convs = nn.ModuleList()
        for dim in backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module("conv", nn.Conv2d(dim, d_model, kernel_size=1))
            self.convs.append(lateral)
        self.backbone_channel_list = tuple(backbone_channel_list)
        self.top_down_levels = tuple(top_down_levels)

    def forward(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Trunk outputs (highest resolution first) -> (features, position encodings), each [B, d_model, H_i, W_i]."""
        if len(xs) != len(self.convs):
            raise ValueError(f"FpnNeck expects {len(self.convs)} feature maps, got {len(xs)}")
        n = len(self.convs) - 1
        features: list[torch.Tensor] = [None] * len(xs)  # type: ignore[list-item]
        pos: list[torch.Tensor] = [None] * len(xs)  # type: ignore[list-item]
        prev = None
        for i in range(n, -1, -1):  # coarse to fine
            lateral = self.convs[n - i](xs[i])
            if i in self.top_down_levels and prev is not None:
                # upsampled in fp32 like the official code (matters under bf16 autocast)
                top_down = F.interpolate(prev.to(torch.float32), scale_factor=2.0, mode="nearest")
                prev = lateral + top_down
            else:
                prev = lateral
            features[i] = prev
            pos[i] = self.position_encoding(prev).to(prev.dtype)
        return features, pos


class ImageEncoder(nn.Module):
    """Image [B, 3, S, S] -> dict with
    - `vision_features`: [B, d, S/16, S/16] (the stride-16 FPN level),
    - `vision_pos_enc`: 3 sine encodings [B, d, S/4|S/8|S/16, ...],
    - `backbone_fpn`: 3 FPN levels [B, d, S/4|S/8|S/16, ...] (the stride-32 level is dropped).
    """

    def __init__(self, cfg: SAM2Config) -> None:
        super().__init__()
        self.trunk = Hiera(cfg.trunk)
        self.neck = FpnNeck(cfg.d_model, cfg.trunk.backbone_channel_list)
        if self.trunk.channel_list != self.neck.backbone_channel_list:
            raise ValueError(
                f"trunk channels {self.trunk.channel_list} do not match neck channels "
                f"{self.neck.backbone_channel_list}"
            )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        features, pos = self.neck(self.trunk(images))
        features, pos = features[:-1], pos[:-1]  # drop the lowest-resolution level
        return {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}
