"""SAM prompt encoder: points and boxes -> sparse tokens, mask -> dense embedding."""
from __future__ import annotations

import torch
from torch import nn

from sam2_video.model.layers import LayerNorm2d, PositionEmbeddingRandom, run_checkpointed
from sam2_video.model.presets import SAM2Config

NOT_A_POINT = -1  # padding label: the point is ignored (gets `not_a_point_embed` only)
NUM_POINT_LABELS = 4  # 0 negative click, 1 positive click, 2 box top-left, 3 box bottom-right


class PromptEncoder(nn.Module):
    """Embeds prompts for the mask decoder.

    Point coordinates are pixels (x, y) of the `input_image_size` (H, W) model input; masks are
    logits of size 4 * `image_embedding_size`.
    `checkpoint_activations`: recompute the mask embedding in the backward pass (see `run_checkpointed`).
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(NUM_POINT_LABELS))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self.checkpoint_activations = False

    @classmethod
    def from_config(cls, cfg: SAM2Config) -> "PromptEncoder":
        return cls(
            embed_dim=cfg.d_model,
            image_embedding_size=(cfg.feat_size, cfg.feat_size),
            input_image_size=(cfg.image_size, cfg.image_size),
        )

    def get_dense_pe(self) -> torch.Tensor:
        """Position encoding of the image-embedding grid: [1, embed_dim, h, w]."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """points [B, N, 2], labels [B, N] -> [B, N (+1 if pad), embed_dim]."""
        points = points + 0.5  # pixel centres
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), NOT_A_POINT)], dim=1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels.unsqueeze(-1)
        embedding = torch.where(
            labels == NOT_A_POINT, torch.zeros_like(embedding) + self.not_a_point_embed.weight, embedding
        )
        for label, label_embed in enumerate(self.point_embeddings):
            embedding = torch.where(labels == label, embedding + label_embed.weight, embedding)
        return embedding

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """boxes [B, 4] (x0, y0, x1, y1) -> two corner tokens [B, 2, embed_dim]."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        embedding[:, 0, :] += self.point_embeddings[2].weight
        embedding[:, 1, :] += self.point_embeddings[3].weight
        return embedding

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns sparse [B, N, embed_dim] and dense [B, embed_dim, h, w] embeddings.

        points: (coords [B, N, 2], labels [B, N]); without a box a padding point is appended.
        boxes: [B, 4]; masks: [B, 1, 4h, 4w] logits.
        """
        if points is not None:
            batch = points[0].shape[0]
        elif boxes is not None:
            batch = boxes.shape[0]
        elif masks is not None:
            batch = masks.shape[0]
        else:
            batch = 1
        device = self.no_mask_embed.weight.device
        sparse = torch.empty((batch, 0, self.embed_dim), device=device)
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)

        if masks is not None:
            dense = run_checkpointed(self, self.mask_downscaling, masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, *self.image_embedding_size)
        return sparse, dense
