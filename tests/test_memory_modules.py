"""Memory attention and memory encoder against the official SAM2 modules (same weights, same inputs)."""
from __future__ import annotations

import pytest
import torch

from sam2_video.model import memory_attention
from sam2_video.model.memory_attention import MemoryAttention
from sam2_video.model.memory_encoder import MemoryEncoder
from sam2_video.model.presets import SAM2Config, sam2_config
from conftest import require_reference

# (preset, image size): official hiera_t widths at 256 px, and the tiny test preset
CONFIGS = [("sam2.1_hiera_t", 256), ("sam2.1_tiny_test", 128)]


def _randomise(module: torch.nn.Module) -> None:
    """Random values for every parameter (LayerNorm and layer-scale included) so that no path is trivial."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def _official_memory_attention(cfg: SAM2Config) -> torch.nn.Module:
    from sam2.modeling.memory_attention import MemoryAttention as RefMemoryAttention
    from sam2.modeling.memory_attention import MemoryAttentionLayer as RefLayer
    from sam2.modeling.sam.transformer import RoPEAttention as RefRoPE

    side = cfg.feat_size
    layer = RefLayer(
        activation="relu",
        cross_attention=RefRoPE(embedding_dim=cfg.d_model, num_heads=1, downsample_rate=1, dropout=cfg.dropout,
                                kv_in_dim=cfg.mem_dim, rope_theta=10000.0, feat_sizes=[side, side],
                                rope_k_repeat=True),
        d_model=cfg.d_model,
        dim_feedforward=cfg.memory_attention_ffn_dim,
        dropout=cfg.dropout,
        pos_enc_at_attn=False,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        self_attention=RefRoPE(embedding_dim=cfg.d_model, num_heads=1, downsample_rate=1, dropout=cfg.dropout,
                               rope_theta=10000.0, feat_sizes=[side, side]),
    )
    return RefMemoryAttention(d_model=cfg.d_model, pos_enc_at_input=True, layer=layer,
                              num_layers=cfg.memory_attention_layers)


def _official_memory_encoder(cfg: SAM2Config) -> torch.nn.Module:
    from sam2.modeling.memory_encoder import CXBlock as RefCXBlock
    from sam2.modeling.memory_encoder import Fuser as RefFuser
    from sam2.modeling.memory_encoder import MaskDownSampler as RefMaskDownSampler
    from sam2.modeling.memory_encoder import MemoryEncoder as RefMemoryEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine as RefPE

    return RefMemoryEncoder(
        out_dim=cfg.mem_dim,
        mask_downsampler=RefMaskDownSampler(embed_dim=cfg.d_model, kernel_size=3, stride=2, padding=1),
        fuser=RefFuser(RefCXBlock(dim=cfg.d_model, kernel_size=7, padding=3, layer_scale_init_value=1e-6,
                                  use_dwconv=True), num_layers=2),
        position_encoding=RefPE(num_pos_feats=cfg.mem_dim, normalize=True, scale=None, temperature=10000),
        in_dim=cfg.d_model,
    )


def _pair(ours: torch.nn.Module, ref: torch.nn.Module) -> None:
    _randomise(ref)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval()
    ref.eval()


@pytest.mark.parametrize("preset,image_size", CONFIGS)
@pytest.mark.parametrize("num_frames,num_ptr_tokens", [(1, 0), (3, 8)])
def test_memory_attention_matches_official(preset, image_size, num_frames, num_ptr_tokens):
    require_reference()
    cfg = sam2_config(preset, image_size=image_size)
    ours, ref = MemoryAttention(cfg), _official_memory_attention(cfg)
    _pair(ours, ref)
    tokens, batch = cfg.feat_size**2, 2
    curr = torch.randn(tokens, batch, cfg.d_model)
    curr_pos = torch.randn(tokens, batch, cfg.d_model)
    memory = torch.randn(num_frames * tokens + num_ptr_tokens, batch, cfg.mem_dim)
    memory_pos = torch.randn_like(memory)
    with torch.no_grad():
        expected = ref(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=num_ptr_tokens)
        actual = ours(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=num_ptr_tokens)
    assert actual.shape == (tokens, batch, cfg.d_model)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rows,columns", [(memory_attention.QUERY_CHUNK_ROWS, memory_attention.KEY_BLOCK_COLUMNS),
                                          (3, 100)])
def test_memory_attention_gives_the_official_result_with_and_without_gradients(monkeypatch, rows, columns):
    """Inference on the CPU weighs the memory's values before their projection, a block of queries and
    keys at a time (3 x 100: the last of this frame's 256 queries and of its 776 keys in short blocks, the
    softmax carried over 8 blocks of keys); with gradients the fused attention runs. Both give the
    official numbers."""
    require_reference()
    monkeypatch.setattr(memory_attention, "QUERY_CHUNK_ROWS", rows)
    monkeypatch.setattr(memory_attention, "KEY_BLOCK_COLUMNS", columns)
    cfg = sam2_config("sam2.1_hiera_t", image_size=256)
    ours, ref = MemoryAttention(cfg), _official_memory_attention(cfg)
    _pair(ours, ref)
    tokens, objects = cfg.feat_size**2, 2
    curr, curr_pos = torch.randn(tokens, objects, cfg.d_model), torch.randn(tokens, objects, cfg.d_model)
    memory = torch.randn(3 * tokens + 8, objects, cfg.mem_dim)
    memory_pos = torch.randn_like(memory)
    with torch.no_grad():
        expected = ref(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=8)
        inference = ours(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=8)
    with torch.enable_grad():
        training = ours(curr.requires_grad_(), memory, curr_pos, memory_pos, num_obj_ptr_tokens=8)
    torch.testing.assert_close(inference, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(training.detach(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset,image_size", CONFIGS)
def test_objects_sharing_one_frame_run_the_first_self_attention_once(preset, image_size):
    """Objects of one frame read the same image features, passed expanded over the batch (as the
    video predictor does): the first layer's self-attention runs once for all of them, and every
    object still gets the official result."""
    require_reference()
    cfg = sam2_config(preset, image_size=image_size)
    ours, ref = MemoryAttention(cfg), _official_memory_attention(cfg)
    _pair(ours, ref)
    tokens, batch = cfg.feat_size**2, 3
    curr = torch.randn(tokens, 1, cfg.d_model).expand(-1, batch, -1)
    curr_pos = torch.randn(tokens, 1, cfg.d_model).expand(-1, batch, -1)
    memory = torch.randn(2 * tokens + 8, batch, cfg.mem_dim)
    memory_pos = torch.randn_like(memory)
    self_attention_batches: list[int] = []
    ours.layers[0].self_attn.register_forward_hook(lambda m, args, out: self_attention_batches.append(out.shape[0]))
    with torch.no_grad():
        expected = ref(curr.contiguous(), memory, curr_pos.contiguous(), memory_pos, num_obj_ptr_tokens=8)
        actual = ours(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=8)
        copied = ours(curr.contiguous(), memory, curr_pos.contiguous(), memory_pos, num_obj_ptr_tokens=8)
    assert self_attention_batches == [1, batch]
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(actual, copied, atol=1e-6, rtol=0)


def test_memory_attention_state_dict_keys_match_checkpoint():
    """The keys and shapes of the official sam2.1_hiera_t checkpoint (prefix memory_attention.)."""
    require_reference()
    cfg = sam2_config("sam2.1_hiera_t")
    ours = MemoryAttention(cfg).state_dict()
    ref = _official_memory_attention(cfg).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}


def test_memory_attention_accepts_bfloat16_memory():
    """The predictor stores memory in bf16; the official module crashes there (upstream issue 308),
    ours casts it to the query dtype, which equals the official result on the fp32-cast memory."""
    require_reference()
    cfg = sam2_config("sam2.1_tiny_test", image_size=64)
    ours, ref = MemoryAttention(cfg), _official_memory_attention(cfg)
    _pair(ours, ref)
    tokens = cfg.feat_size**2
    curr, curr_pos = torch.randn(tokens, 1, cfg.d_model), torch.randn(tokens, 1, cfg.d_model)
    memory = torch.randn(2 * tokens, 1, cfg.mem_dim).bfloat16()
    memory_pos = torch.randn(2 * tokens, 1, cfg.mem_dim).bfloat16()
    with torch.no_grad():
        expected = ref(curr, memory.float(), curr_pos, memory_pos.float())
        actual = ours(curr, memory, curr_pos, memory_pos)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_memory_attention_rejects_mismatched_batches():
    cfg = sam2_config("sam2.1_tiny_test", image_size=64)
    tokens = cfg.feat_size**2
    with pytest.raises(ValueError, match="batch size differs"):
        MemoryAttention(cfg)(torch.randn(tokens, 2, cfg.d_model), torch.randn(tokens, 3, cfg.mem_dim),
                             torch.randn(tokens, 2, cfg.d_model), torch.randn(tokens, 3, cfg.mem_dim))


@pytest.mark.parametrize("preset,image_size", CONFIGS)
@pytest.mark.parametrize("skip_mask_sigmoid", [False, True])
def test_memory_encoder_matches_official(preset, image_size, skip_mask_sigmoid):
    require_reference()
    cfg = sam2_config(preset, image_size=image_size)
    ours, ref = MemoryEncoder(cfg), _official_memory_encoder(cfg)
    _pair(ours, ref)
    side = cfg.feat_size
    pix_feat = torch.randn(2, cfg.d_model, side, side)
    masks = torch.randn(2, 1, image_size, image_size) * 5
    if skip_mask_sigmoid:
        masks = (masks > 0).float()
    with torch.no_grad():
        expected = ref(pix_feat, masks, skip_mask_sigmoid=skip_mask_sigmoid)
        actual = ours(pix_feat, masks, skip_mask_sigmoid=skip_mask_sigmoid)
    assert actual["vision_features"].shape == (2, cfg.mem_dim, side, side)
    torch.testing.assert_close(actual["vision_features"], expected["vision_features"], atol=1e-5, rtol=0)
    torch.testing.assert_close(actual["vision_pos_enc"][0], expected["vision_pos_enc"][0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("preset,image_size", CONFIGS)
def test_objects_sharing_one_frame_project_its_features_once(preset, image_size):
    """The memory encoder given one frame's features expanded over 3 objects (as the video predictor
    passes them) projects them once and returns the official memory of each object."""
    require_reference()
    cfg = sam2_config(preset, image_size=image_size)
    ours, ref = MemoryEncoder(cfg), _official_memory_encoder(cfg)
    _pair(ours, ref)
    side, batch = cfg.feat_size, 3
    pix_feat = torch.randn(1, cfg.d_model, side, side).expand(batch, -1, -1, -1)
    masks = torch.randn(batch, 1, image_size, image_size) * 5
    projections: list[int] = []
    ours.pix_feat_proj.register_forward_hook(lambda m, args, out: projections.append(out.shape[0]))
    with torch.no_grad():
        expected = ref(pix_feat.contiguous(), masks)
        actual = ours(pix_feat, masks)
    assert projections == [1]
    torch.testing.assert_close(actual["vision_features"], expected["vision_features"], atol=1e-5, rtol=0)
    torch.testing.assert_close(actual["vision_pos_enc"][0], expected["vision_pos_enc"][0], atol=1e-6, rtol=0)
