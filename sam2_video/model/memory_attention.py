"""Memory attention: the current frame's features attend to the memory bank (official SAM2 semantics).

Sequences are sequence-first, as in the official module: L = tokens of the current frame
(feat_size**2), M = memory tokens (spatial memories of several frames, then object-pointer
tokens), B = batch (in the video predictor, one entry per object).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sam2_video.model.mask_decoder import Attention
from sam2_video.model.layers import run_checkpointed, run_per_object, same_for_each_object
from sam2_video.model.presets import SAM2Config


def axial_rope_frequencies(head_dim: int, side: int, theta: float = 10000.0) -> torch.Tensor:
    """Complex rotations [side*side, head_dim//2] for a row-major side x side grid.

    The first head_dim//4 entries rotate by the x coordinate, the last head_dim//4 by y.
    """
    if head_dim % 4 != 0:
        raise ValueError(f"axial RoPE needs a head dimension divisible by 4, got {head_dim}")
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim))
    t = torch.arange(side * side, dtype=torch.float32)
    t_x = t % side
    t_y = torch.div(t, side, rounding_mode="floor")
    angles = torch.cat([torch.outer(t_x, freqs), torch.outer(t_y, freqs)], dim=-1)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of x [B, heads, N, head_dim] by freqs [N, head_dim//2]."""
    x_complex = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(x_complex * freqs).flatten(3).type_as(x)


# Block sizes of `attend_unprojected_values`: queries per chunk, and keys per block of scores. A 1024 x 1024
# block of scores (4 MiB) stays in the caches between the product that writes it, the exponential and the
# product that reads it. One thread, this function alone at 1024 px against 7 memory frames (29k keys): 1.13 s
# against 1.27 s with whole rows of scores (256 queries x 29k keys, 2 x 29 MiB of scores and probabilities);
# 1024 x 2048 and 512 x 1024 blocks 1.15 s, 4096 x 512 1.23 s (medians of 5, alternated)
QUERY_CHUNK_ROWS = 1024
KEY_BLOCK_COLUMNS = 1024


def attend_unprojected_values(q: torch.Tensor, k: torch.Tensor, values: torch.Tensor, v_proj: nn.Linear) -> torch.Tensor:
    """softmax(q k^T / sqrt(c)) @ v_proj(values), computed as v_proj(softmax(q k^T / sqrt(c)) @ values).

    q [B, heads, L, c], k [B, heads, M, c], values [B, M, C_kv] (before v_proj) -> [B, heads, L, c].
    Exact up to rounding: each row of attention weights sums to 1, so weighting the values before their
    projection gives the same sum, v_proj's bias included. Memory values are mem_dim wide (64 in the
    official models) against c = 256 once projected, so the weighted sum costs a quarter of the
    multiplications; PyTorch's fused CPU attention needs values as wide as the keys (with narrower ones it
    took longer than with the projected ones), hence the explicit scores.

    The scores are made a block of keys at a time with the online softmax of flash attention: each block's
    exponentials are taken against the running row maximum, and what was summed before is rescaled when
    the maximum grows. Whole rows of scores would not stay in the caches (see KEY_BLOCK_COLUMNS).
    """
    b, heads, num_q, c = q.shape
    num_k = k.shape[-2]
    q = q * c**-0.5
    values = values.unsqueeze(1)  # [B, 1, M, C_kv]: the same values for every head
    weighted = q.new_zeros(b, heads, num_q, values.shape[-1])
    rows, columns = min(num_q, QUERY_CHUNK_ROWS), min(num_k, KEY_BLOCK_COLUMNS)
    scores = q.new_empty(b, heads, rows, columns)  # one buffer: fresh memory pages cost their first touch
    block_sum = q.new_empty(b, heads, rows, values.shape[-1])
    for start in range(0, num_q, rows):
        n = min(rows, num_q - start)
        total = weighted[:, :, start:start + n]  # sum of exp(score - row_max) * value over the keys so far
        row_max = q.new_full((b, heads, n, 1), -math.inf)
        normaliser = q.new_zeros(b, heads, n, 1)  # sum of exp(score - row_max) over the keys so far
        for key_start in range(0, num_k, columns):
            keys = slice(key_start, key_start + columns)
            block = scores[:, :, :n, : min(columns, num_k - key_start)]
            torch.matmul(q[:, :, start:start + n], k[:, :, keys].transpose(-1, -2), out=block)
            new_max = torch.maximum(row_max, block.amax(-1, keepdim=True))
            rescale = (row_max - new_max).exp_()  # 0 on the first block (row_max is -inf there)
            block.sub_(new_max).exp_()
            normaliser.mul_(rescale).add_(block.sum(-1, keepdim=True))
            torch.matmul(block, values[:, :, keys], out=block_sum[:, :, :n])
            total.mul_(rescale).add_(block_sum[:, :, :n])
            row_max = new_max
        total.div_(normaliser)
    weight = v_proj.weight.unflatten(0, (heads, c))  # [heads, c, C_kv]: each head's rows of v_proj
    return torch.matmul(weighted, weight.transpose(-1, -2)) + v_proj.bias.unflatten(0, (heads, c))[:, None]


def rotate_in_place(x: torch.Tensor, freqs: torch.Tensor) -> None:
    """`apply_rope` written into float32 x [B, heads, R * N, head_dim] (R grids of N tokens, each
    rotated by freqs [N, head_dim//2]): on the memory keys, ~7 grids per object, it saves the copies
    of a new tensor, of the repeated frequencies and of a concatenation, ~5% of memory attention."""
    grids = torch.view_as_complex(x.unflatten(2, (-1, freqs.shape[0])).unflatten(-1, (-1, 2)))
    grids.mul_(freqs)


class RoPEAttention(Attention):
    """Attention with 2-D axial rotary position encoding on queries and keys.

    The query is a square grid of feat_size x feat_size tokens (the side is recomputed from
    the sequence length, so any image size works). With `rope_k_repeat` the keys may hold
    several such grids one after another (memories of several frames), each rotated like the
    query grid; the last `num_k_exclude_rope` keys (object pointers) are not rotated.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: int | None = None,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
    ) -> None:
        super().__init__(embedding_dim, num_heads, downsample_rate=downsample_rate, dropout=dropout,
                         kv_in_dim=kv_in_dim)
        self.head_dim = (embedding_dim // downsample_rate) // num_heads
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self._freqs_cache: dict[tuple[int, torch.device], torch.Tensor] = {}

    def _frequencies(self, num_tokens: int, device: torch.device) -> torch.Tensor:
        key = (num_tokens, device)
        if key not in self._freqs_cache:
            side = math.isqrt(num_tokens)
            if side * side != num_tokens:
                raise ValueError(
                    f"RoPEAttention expects a square grid of query tokens, got {num_tokens} tokens"
                )
            freqs = axial_rope_frequencies(self.head_dim, side, self.rope_theta)
            self._freqs_cache[key] = freqs.to(device)
        return self._freqs_cache[key]

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0
    ) -> torch.Tensor:
        """q [B, L, C], k and v [B, M, C_kv] -> [B, L, C]."""
        q = self.separate_heads(self.q_proj(q))
        k = self.separate_heads(self.k_proj(k))

        num_q = q.shape[-2]
        num_k_rope = k.shape[-2] - num_k_exclude_rope
        freqs = self._frequencies(num_q, q.device)
        q = apply_rope(q, freqs)
        if num_k_rope > 0:
            if num_k_rope != num_q and not (self.rope_k_repeat and num_k_rope % num_q == 0):
                raise ValueError(
                    f"RoPE keys ({num_k_rope}) must be {num_q} tokens"
                    + (" or a multiple of it" if self.rope_k_repeat else "")
                )
            if k.dtype == torch.float32:
                rotate_in_place(k[:, :, :num_k_rope], freqs)  # k is the fresh output of k_proj
            else:
                k_freqs = freqs.repeat(num_k_rope // num_q, 1)
                k = torch.cat([apply_rope(k[:, :, :num_k_rope], k_freqs), k[:, :, num_k_rope:]], dim=2)
        if self._weighs_values_before_projection(q):
            return self.out_proj(self.recombine_heads(attend_unprojected_values(q, k, v, self.v_proj)))
        return self.attend(q, k, self.separate_heads(self.v_proj(v)))

    def _weighs_values_before_projection(self, q: torch.Tensor) -> bool:
        """Whether to use `attend_unprojected_values`: for values narrower than a head (the 64-wide memory
        against 256), in inference on the CPU, where the whole memory attention took less time (see
        KEY_BLOCK_COLUMNS). With gradients the fused kernel keeps less for the backward pass (it stores no
        scores), and on a GPU the fused kernels run faster than these separate steps. Under autocast
        (bfloat16 inference) the fused kernel runs too: autocast picks each operation's precision, which
        the float32 buffers here would not follow."""
        return (q.device.type == "cpu" and not torch.is_grad_enabled() and self.active_dropout() == 0
                and not torch.is_autocast_enabled("cpu") and self.num_heads * self.kv_in_dim < self.internal_dim)


class MemoryAttentionLayer(nn.Module):
    """Pre-norm block: RoPE self-attention, RoPE cross-attention to memory, ReLU feed-forward.

    `checkpoint_activations`: recompute the layer in the backward pass (see `run_checkpointed`).
    """

    def __init__(self, d_model: int, mem_dim: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(d_model, num_heads=1, dropout=dropout)
        self.cross_attn_image = RoPEAttention(d_model, num_heads=1, dropout=dropout, kv_in_dim=mem_dim,
                                              rope_k_repeat=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.checkpoint_activations = False

    def forward(
        self, tgt: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor, num_k_exclude_rope: int = 0
    ) -> torch.Tensor:
        """tgt [B, L, d], memory and memory_pos [B, M, mem_dim] -> [B, L, d]."""
        tgt = run_checkpointed(self, self.attend_self, tgt)
        return run_checkpointed(self, self.attend_memory, tgt, memory, memory_pos, num_k_exclude_rope)

    def attend_self(self, tgt: torch.Tensor) -> torch.Tensor:
        """The self-attention half: tgt [B, L, d] -> [B, L, d]; each batch entry on its own."""
        x = self.norm1(tgt)
        return tgt + self.dropout1(self.self_attn(x, x, x))

    def attend_memory(
        self, tgt: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor, num_k_exclude_rope: int
    ) -> torch.Tensor:
        """Cross-attention to memory and the feed-forward: tgt [B, L, d] -> [B, L, d]."""
        x = self.norm2(tgt)
        attended = self.cross_attn_image(x, memory + memory_pos, memory, num_k_exclude_rope=num_k_exclude_rope)
        tgt = tgt + self.dropout2(attended)
        x = self.norm3(tgt)
        x = self.linear2(self.dropout(F.relu(self.linear1(x), inplace=True)))  # linear1 keeps no output for its backward
        return tgt + self.dropout3(x)


# `MemoryAttention.read_memory_at_own_position`: how much more a query's own position weighs (in attention
# logits) than a key one token away, and on how many of the fastest RoPE rotations of each axis
POSITION_LOGIT_GAP = 1.5
POSITION_ROTATIONS = 4


class MemoryAttention(nn.Module):
    """Stack of `cfg.memory_attention_layers` MemoryAttentionLayers and a final LayerNorm."""

    def __init__(self, cfg: SAM2Config) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MemoryAttentionLayer(cfg.d_model, cfg.mem_dim, cfg.memory_attention_ffn_dim, cfg.dropout)
            for _ in range(cfg.memory_attention_layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(
        self,
        curr: torch.Tensor,
        memory: torch.Tensor,
        curr_pos: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int = 0,
    ) -> torch.Tensor:
        """Condition the current frame on memory.

        curr, curr_pos [L, B, d]; memory, memory_pos [M, B, mem_dim] whose last
        `num_obj_ptr_tokens` tokens are object pointers. Returns [L, B, d].
        Memory stored in another dtype (the predictor keeps it in bfloat16) is cast to curr's dtype.
        """
        if curr.shape[1] != memory.shape[1]:
            raise ValueError(
                f"batch size differs between current features ({curr.shape[1]}) and memory ({memory.shape[1]})"
            )
        memory = memory.to(curr.dtype).transpose(0, 1)
        memory_pos = memory_pos.to(curr.dtype).transpose(0, 1)
        first = self.layers[0]
        if same_for_each_object(curr, 1) and same_for_each_object(curr_pos, 1):
            # The objects of one frame read the same image features. The first layer's
            # self-attention sees only those, so every object would get the same numbers: once.
            shared = run_checkpointed(first, first.attend_self, (curr[:, :1] + 0.1 * curr_pos[:, :1]).transpose(0, 1))
            output = run_per_object(lambda x, mem, pos: self._attend_memory(x, mem, pos, num_obj_ptr_tokens),
                                    shared, memory, memory_pos)
        else:
            output = run_checkpointed(first, first.attend_self, (curr + 0.1 * curr_pos).transpose(0, 1))
            output = self._attend_memory(output, memory, memory_pos, num_obj_ptr_tokens)
        return self.norm(output).transpose(0, 1)

    @torch.no_grad()
    def read_memory_at_own_position(self) -> None:
        """Initialise the cross-attention to memory so that each query starts by reading every memory
        frame at its own position: an initialisation for training from random weights.

        Why: with the default initialisation this attention is nearly uniform, so a tracked frame reads
        the average of all memory tokens, which says nothing about where the prompted object is. From
        random weights the network then first learns to segment salient objects without its memory and
        finds the memory only after a plateau whose length depends on the seed (the demo's SAM2: 2 to
        more than 8 of 8 epochs). Here q_proj and k_proj get the same bias on the fastest RoPE rotations
        of each axis, so q.k peaks where the query's and the key's positions coincide, POSITION_LOGIT_GAP
        above a key one token away (weights stay random: content moves the attention from there on).
        """
        for layer in self.layers:
            attention = layer.cross_attn_image
            head_dim = attention.head_dim
            rotations = axial_rope_frequencies(head_dim, 2, attention.rope_theta)[1, :POSITION_ROTATIONS]
            # the complex pair p rotates by angle p_x * f_p (x) and the pair head_dim // 4 + p by p_y * f_p (y):
            # a bias of size a on each gives q.k = a^2 * sum(cos(f_p * offset)) per axis, scaled by 1/sqrt(head_dim)
            cosine_drop_one_token_away = float((1 - rotations.real).sum())
            size = math.sqrt(POSITION_LOGIT_GAP * math.sqrt(head_dim) / cosine_drop_one_token_away)
            bias = torch.zeros(head_dim)
            for pair in range(POSITION_ROTATIONS):
                bias[2 * pair] = bias[2 * (head_dim // 4 + pair)] = size
            for projection in (attention.q_proj, attention.k_proj):
                projection.bias.copy_(bias.repeat(attention.num_heads))

    def _attend_memory(
        self, x: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor, num_obj_ptr_tokens: int
    ) -> torch.Tensor:
        """Everything after the first layer's self-attention: x [B, L, d], memory and memory_pos
        [B, M, mem_dim] -> [B, L, d]."""
        first = self.layers[0]
        x = run_checkpointed(first, first.attend_memory, x, memory, memory_pos, num_obj_ptr_tokens)
        for layer in self.layers[1:]:
            x = layer(x, memory, memory_pos, num_k_exclude_rope=num_obj_ptr_tokens)
        return x
