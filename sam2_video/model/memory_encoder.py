"""Memory encoder: fuses a frame's image features with its predicted mask into memory features.

Official SAM2 semantics and state-dict keys (`mask_downsampler.encoder.N`, `pix_feat_proj`,
`fuser.layers.N`, `out_proj`).
"""
from __future__ import annotations

import torch
from torch import nn

from sam2_video.model.layers import LayerNorm2d, PositionEmbeddingSine, run_checkpointed, run_per_object, same_for_each_object
from sam2_video.model.presets import SAM2Config


class MaskDownSampler(nn.Module):
    """Downsample a mask [B,1,S,S] by 16 with four stride-2 convs (channels 1->4->16->64->256,
    each followed by LayerNorm2d and GELU), then a 1x1 conv to embed_dim: [B,embed_dim,S/16,S/16]."""

    def __init__(self, embed_dim: int, num_stages: int = 4, stride: int = 2) -> None:
        super().__init__()
        self.encoder = nn.Sequential()
        in_chans = 1
        for _ in range(num_stages):
            out_chans = in_chans * stride**2
            self.encoder.append(nn.Conv2d(in_chans, out_chans, kernel_size=3, stride=stride, padding=1))
            self.encoder.append(LayerNorm2d(out_chans))
            self.encoder.append(nn.GELU())
            in_chans = out_chans
        self.encoder.append(nn.Conv2d(in_chans, embed_dim, kernel_size=1))

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        return self.encoder(masks)


class CXBlock(nn.Module):
    """ConvNeXt block: 7x7 depthwise conv, LayerNorm2d, MLP (4x) with GELU, layer scale, residual."""

    def __init__(self, dim: int, kernel_size: int = 7, layer_scale_init_value: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, dim, h, w] -> [B, dim, h, w]."""
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """A stack of CXBlocks (state-dict keys `layers.N`)."""

    def __init__(self, dim: int, num_layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Image features + mask -> memory features [B, mem_dim, h, w] and their sine position encoding.

    `checkpoint_activations`: recompute the fusion in the backward pass (see `run_checkpointed`).
    """

    def __init__(self, cfg: SAM2Config) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(cfg.d_model)
        self.pix_feat_proj = nn.Conv2d(cfg.d_model, cfg.d_model, kernel_size=1)
        self.fuser = Fuser(cfg.d_model)
        self.out_proj = (
            nn.Conv2d(cfg.d_model, cfg.mem_dim, kernel_size=1) if cfg.mem_dim != cfg.d_model else nn.Identity()
        )
        self.position_encoding = PositionEmbeddingSine(cfg.mem_dim)
        self.checkpoint_activations = False

    def forward(
        self, pix_feat: torch.Tensor, masks: torch.Tensor, skip_mask_sigmoid: bool = False
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """pix_feat [B, d_model, h, w], masks [B, 1, 16h, 16w] (logits unless skip_mask_sigmoid).

        Returns {"vision_features": [B, mem_dim, h, w], "vision_pos_enc": [[B, mem_dim, h, w]]}.
        """
        pix_feat = pix_feat.to(masks.device)
        if same_for_each_object(pix_feat, 0):
            # The objects of one frame share the image features, so their projection is the same
            # for each: once.
            projected = self.pix_feat_proj(pix_feat[:1])
            x = run_per_object(lambda feat, mask: self._fuse(feat, mask, skip_mask_sigmoid), projected, masks)
        else:
            x = run_checkpointed(self, self._project_and_fuse, pix_feat, masks, skip_mask_sigmoid)
        pos = self.position_encoding(x).to(x.dtype)
        return {"vision_features": x, "vision_pos_enc": [pos]}

    def _project_and_fuse(self, pix_feat: torch.Tensor, masks: torch.Tensor, skip_mask_sigmoid: bool) -> torch.Tensor:
        return self._fuse(self.pix_feat_proj(pix_feat), masks, skip_mask_sigmoid)

    def _fuse(self, projected: torch.Tensor, masks: torch.Tensor, skip_mask_sigmoid: bool) -> torch.Tensor:
        """projected image features [B or 1, d_model, h, w] + masks [B, 1, 16h, 16w] -> [B, mem_dim, h, w]."""
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        masks = self.mask_downsampler(masks)
        return self.out_proj(self.fuser(projected + masks))
