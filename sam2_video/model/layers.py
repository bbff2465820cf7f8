"""Small building blocks shared by the SAM2 modules (same parameter names as the official code)."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def run_checkpointed(module: nn.Module, function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)`, with its activations recomputed in the backward pass instead of kept.

    Why: a training step keeps every block's intermediate activations for the backward pass, for
    every frame of the clip; recomputing them block by block trades about one extra forward pass
    for keeping only each block's input. It applies when `module.checkpoint_activations` is on
    (set by the training model, never by inference code), autograd is recording, and gradients can
    flow through the call (a trainable parameter in `module` or an input that requires grad);
    otherwise `function` simply runs. Non-reentrant `torch.utils.checkpoint` stashes the CPU RNG
    and that of the inputs' device before the call and restores it for the recomputation, so
    dropout and drop-path draw the same masks twice and the gradients equal those without it.
    """
    if getattr(module, "checkpoint_activations", False) and torch.is_grad_enabled() and _gradients_flow(module, args):
        return checkpoint(function, *args, use_reentrant=False)
    return function(*args)


def same_for_each_object(x: torch.Tensor, batch_dim: int) -> bool:
    """Whether x holds one tensor expanded over several objects (stride 0 along `batch_dim`), as the
    video predictor passes one frame's image features to the objects tracked on it."""
    return x.shape[batch_dim] > 1 and x.stride(batch_dim) == 0


def run_per_object(function: Callable[..., torch.Tensor], shared: torch.Tensor, *per_object: torch.Tensor) -> torch.Tensor:
    """`function(shared, *per_object)` for B objects: `shared` [1, ...] is the same for all of them,
    each tensor of `per_object` is [B, ...]; returns [B, ...].

    On the CPU the objects run one at a time: measured faster than one batch of 3 (memory attention
    8% at 512 px, the memory encoder's fusion 26% at 1024 px; an object's maps stay in cache), with
    the same numbers. Elsewhere as one batch, `shared` expanded without a copy.
    """
    batch = per_object[0].shape[0]
    if shared.device.type == "cpu":
        return torch.cat([function(shared, *(x[b : b + 1] for x in per_object)) for b in range(batch)])
    return function(shared.expand(batch, *shared.shape[1:]), *per_object)


def _gradients_flow(module: nn.Module, args: tuple[Any, ...]) -> bool:
    tensors = [a for arg in args for a in (arg if isinstance(arg, (list, tuple)) else [arg])]
    return any(torch.is_tensor(t) and t.requires_grad for t in tensors) or any(
        p.requires_grad for p in module.parameters()
    )


class MLP(nn.Module):
    """`num_layers` linear layers with `activation` between them (state-dict keys `layers.N`)."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        hidden = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out) for n_in, n_out in zip([input_dim] + hidden, hidden + [output_dim])
        )
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., input_dim] -> [..., output_dim]."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == last else self.act(layer(x))
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of a [B, C, H, W] tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class DropPath(nn.Module):
    """Stochastic depth: drop whole samples of a residual branch in training, scaled by 1/keep."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        keep = x.new_empty(shape).bernoulli_(keep_prob)
        if keep_prob > 0.0:
            keep.div_(keep_prob)
        return x * keep


class PositionEmbeddingSine(nn.Module):
    """Normalised 2-D sine/cosine position encoding (DETR style), temperature 10000.

    `forward(x)` for x [B, *, H, W] returns [B, num_pos_feats, H, W]: the first half of the
    channels encodes y, the second half x. Results are cached per (H, W).
    """

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0) -> None:
        super().__init__()
        if num_pos_feats % 2 != 0:
            raise ValueError(f"PositionEmbeddingSine needs an even width, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats // 2
        self.temperature = temperature
        self.scale = 2 * math.pi
        self._cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def _frequencies(self, device: torch.device) -> torch.Tensor:
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        return self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)

    def _grid(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """[num_pos_feats*2, H, W] encoding of the pixel grid."""
        eps = 1e-6
        y_embed = torch.arange(1, height + 1, dtype=torch.float32, device=device)
        x_embed = torch.arange(1, width + 1, dtype=torch.float32, device=device)
        y_embed = y_embed / (height + eps) * self.scale
        x_embed = x_embed / (width + eps) * self.scale
        dim_t = self._frequencies(device)
        pos_y = y_embed[:, None] / dim_t  # [H, F]
        pos_x = x_embed[:, None] / dim_t  # [W, F]
        pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
        pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
        pos_y = pos_y[:, None, :].expand(height, width, -1)
        pos_x = pos_x[None, :, :].expand(height, width, -1)
        return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).contiguous()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        key = (height, width, x.device)
        if key not in self._cache:
            self._cache[key] = self._grid(height, width, x.device)
        return self._cache[key][None].expand(x.shape[0], -1, -1, -1).clone()


class PositionEmbeddingRandom(nn.Module):
    """Position encoding with random Gaussian spatial frequencies (SAM prompt encoder).

    Output width is 2 * num_pos_feats (sin and cos of the projected coordinates).
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """coords [..., 2] in [0, 1] (x, y) -> [..., 2 * num_pos_feats]."""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of an (h, w) grid of pixel centres: [C, h, w]."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=torch.float32)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        return self._pe_encoding(torch.stack([x_embed, y_embed], dim=-1)).permute(2, 0, 1)

    def forward_with_coords(self, coords_input: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode pixel coordinates [B, N, 2] (x, y) of an image of size (H, W): [B, N, C]."""
        coords = coords_input.clone()
        coords[:, :, 0] = coords[:, :, 0] / image_size[1]
        coords[:, :, 1] = coords[:, :, 1] / image_size[0]
        return self._pe_encoding(coords.to(torch.float))
