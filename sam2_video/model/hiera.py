"""Hiera image trunk (hierarchical ViT with windowed attention and query pooling), as in SAM2.

Tensors inside the trunk are channels-last: [B, H, W, C].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam2_video.model.layers import MLP, DropPath, run_checkpointed
from sam2_video.model.presets import HieraConfig


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B, H, W, C] -> ([B * num_windows, ws, ws, C], padded (Hp, Wp)); zero-pads H and W up to multiples of ws."""
    batch, height, width, channels = x.shape
    pad_h = (window_size - height % window_size) % window_size
    pad_w = (window_size - width % window_size) % window_size
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    x = x.view(batch, padded_h // window_size, window_size, padded_w // window_size, window_size, channels)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, channels)
    return windows, (padded_h, padded_w)


def window_unpartition(
    windows: torch.Tensor, window_size: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `window_partition`: [B * num_windows, ws, ws, C] -> [B, H, W, C] with padding removed."""
    padded_h, padded_w = padded_hw
    height, width = hw
    batch = windows.shape[0] // (padded_h * padded_w // window_size // window_size)
    x = windows.reshape(batch, padded_h // window_size, padded_w // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, -1)
    return x[:, :height, :width, :]


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution: image [B, 3, H, W] -> tokens [B, H/4, W/4, C]."""

    def __init__(self, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention whose queries may be max-pooled (halving the token grid)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, W, dim] -> [B, H', W', dim_out] (H' = H / stride when pooling queries)."""
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1)
        q, k, v = torch.unbind(qkv, 2)  # each [B, HW, heads, c]
        if self.q_pool is not None:
            q = self.q_pool(q.reshape(batch, height, width, -1).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            height, width = q.shape[1:3]
            q = q.reshape(batch, height * width, self.num_heads, -1)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x.transpose(1, 2).reshape(batch, height, width, -1)
        return self.proj(x)


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block; windowed when `window_size` > 0, and pooling queries when `q_stride` is set.

    At a stage change (dim != dim_out) the shortcut is projected with `proj` and pooled like the queries.
    `checkpoint_activations`: recompute the block in the backward pass (see `run_checkpointed`).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        q_stride: tuple[int, int] | None = None,
        window_size: int = 0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride) if q_stride else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads=num_heads, q_pool=self.pool)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, activation=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)
        self.checkpoint_activations = False

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """Max-pool a channels-last [B, H, W, C] map by `q_stride` (identity without pooling)."""
        if self.pool is None:
            return x
        return self.pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, W, dim] -> [B, H', W', dim_out]."""
        return run_checkpointed(self, self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self._pool(self.proj(x))

        window_size = self.window_size
        if window_size > 0:
            height, width = x.shape[1], x.shape[2]
            x, padded_hw = window_partition(x, window_size)

        x = self.attn(x)
        if self.window_size > 0:
            if self.q_stride:
                # queries were pooled: the windows and the grid shrank by the stride
                window_size = self.window_size // self.q_stride[0]
                height, width = shortcut.shape[1:3]
                pad_h = (window_size - height % window_size) % window_size
                pad_w = (window_size - width % window_size) % window_size
                padded_hw = (height + pad_h, width + pad_w)
            x = window_unpartition(x, window_size, padded_hw, (height, width))

        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Hiera(nn.Module):
    """Hiera trunk: image [B, 3, S, S] -> 4 feature maps [B, C_i, S/4/2^i, S/4/2^i], highest resolution first."""

    def __init__(self, cfg: HieraConfig) -> None:
        super().__init__()
        if len(cfg.stages) != len(cfg.window_spec):
            raise ValueError(f"Hiera needs one window size per stage: stages={cfg.stages}, window_spec={cfg.window_spec}")
        depth = sum(cfg.stages)
        self.stage_ends = [sum(cfg.stages[:i]) - 1 for i in range(1, len(cfg.stages) + 1)]
        q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][: cfg.q_pool]

        self.patch_embed = PatchEmbed(cfg.embed_dim)
        # windowed absolute position embedding (https://arxiv.org/abs/2311.05613)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.embed_dim, *cfg.window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(
            torch.zeros(1, cfg.embed_dim, cfg.window_spec[0], cfg.window_spec[0])
        )

        drop_rates = torch.linspace(0, cfg.drop_path_rate, depth, device="cpu").tolist()
        embed_dim, num_heads, stage = cfg.embed_dim, cfg.num_heads, 0
        self.blocks = nn.ModuleList()
        for i in range(depth):
            dim_out = embed_dim
            # the window size lags by one block: a stage's first block uses the previous stage's window
            window_size = 0 if i in cfg.global_att_blocks else cfg.window_spec[stage]
            if i - 1 in self.stage_ends:
                dim_out = int(embed_dim * cfg.dim_mul)
                num_heads = int(num_heads * cfg.head_mul)
                stage += 1
            self.blocks.append(
                MultiScaleBlock(
                    dim=embed_dim,
                    dim_out=dim_out,
                    num_heads=num_heads,
                    drop_path=drop_rates[i],
                    q_stride=cfg.q_stride if i in q_pool_blocks else None,
                    window_size=window_size,
                )
            )
            embed_dim = dim_out
        self.channel_list = tuple(self.blocks[i].dim_out for i in reversed(self.stage_ends))

    def _get_pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        """Background embedding interpolated to (h, w) plus the tiled window embedding: [1, h, w, C]."""
        pos_embed = F.interpolate(self.pos_embed, size=hw, mode="bicubic")
        window = self.pos_embed_window
        reps = [full // part for full, part in zip(pos_embed.shape, window.shape)]
        return (pos_embed + window.tile(reps)).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        x = x + self._get_pos_embed(x.shape[1:3])
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
