"""Image-side SAM2 modules against the official implementation: same state-dict keys, same numbers (fp32, CPU)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import require_reference
from sam2_video.model.image_encoder import ImageEncoder
from sam2_video.model.mask_decoder import Attention, MaskDecoder
from sam2_video.model.presets import SAM2Config, sam2_config
from sam2_video.model.prompt_encoder import PromptEncoder

TOL = 1e-5


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item() if a.numel() else 0.0


def _official_image_encoder(cfg: SAM2Config) -> torch.nn.Module:
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder as RefImageEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine

    t = cfg.trunk
    trunk = Hiera(embed_dim=t.embed_dim, num_heads=t.num_heads, stages=t.stages,
                  global_att_blocks=t.global_att_blocks,
                  window_pos_embed_bkg_spatial_size=t.window_pos_embed_bkg_spatial_size,
                  window_spec=t.window_spec)
    neck = FpnNeck(PositionEmbeddingSine(cfg.d_model), cfg.d_model, list(t.backbone_channel_list),
                   fpn_top_down_levels=[2, 3], fpn_interp_model="nearest")
    return RefImageEncoder(trunk, neck, scalp=1)


def _official_heads(cfg: SAM2Config) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Official prompt encoder and mask decoder as SAM2Base builds them, widths derived from d_model."""
    from sam2.modeling.sam.mask_decoder import MaskDecoder as RefMaskDecoder
    from sam2.modeling.sam.prompt_encoder import PromptEncoder as RefPromptEncoder
    from sam2.modeling.sam.transformer import TwoWayTransformer

    d = cfg.d_model
    prompt_encoder = RefPromptEncoder(embed_dim=d, image_embedding_size=(cfg.feat_size, cfg.feat_size),
                                      input_image_size=(cfg.image_size, cfg.image_size), mask_in_chans=16)
    mask_decoder = RefMaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=d, mlp_dim=8 * d, num_heads=8),
        transformer_dim=d, iou_head_depth=3, iou_head_hidden_dim=d, use_high_res_features=True,
        iou_prediction_use_sigmoid=True, pred_obj_scores=True, pred_obj_scores_mlp=True,
        use_multimask_token_for_obj_ptr=True,
        dynamic_multimask_via_stability=cfg.dynamic_multimask_via_stability,
        dynamic_multimask_stability_delta=cfg.dynamic_multimask_stability_delta,
        dynamic_multimask_stability_thresh=cfg.dynamic_multimask_stability_thresh,
    )
    return prompt_encoder, mask_decoder


@pytest.mark.parametrize("name", ["sam2.1_hiera_t", "sam2.1_hiera_b+", "sam2.1_hiera_l"])
def test_state_dict_keys_and_shapes_match_official_model(name):
    """Our image encoder, prompt encoder and mask decoder hold exactly the official checkpoint's tensors."""
    require_reference()
    from hydra import compose
    from hydra.utils import instantiate

    version = "sam2.1" if name.startswith("sam2.1") else "sam2"
    official = instantiate(compose(config_name=f"configs/{version}/{name}.yaml").model, _recursive_=True)
    cfg = sam2_config(name)
    with torch.device("meta"):
        ours = {"image_encoder": ImageEncoder(cfg), "sam_prompt_encoder": PromptEncoder.from_config(cfg),
                "sam_mask_decoder": MaskDecoder.from_config(cfg)}
    expected = {k: tuple(v.shape) for k, v in official.state_dict().items() if k.split(".")[0] in ours}
    got = {f"{prefix}.{k}": tuple(v.shape) for prefix, m in ours.items() for k, v in m.state_dict().items()}
    assert got == expected


@pytest.mark.parametrize(
    "name, image_size",
    [("sam2.1_hiera_t", 256), ("sam2.1_hiera_b+", 256), ("tiny_trunk", 128)],
)
def test_image_encoder_matches_official(name, image_size):
    """Trunk + FPN outputs equal the official ones, incl. padded windows (16x16 grid, 14x14 windows at 256)."""
    require_reference()
    if name == "tiny_trunk":
        # the tiny test preset puts a global block on a q-pooling block, which the official Hiera cannot
        # run (window 0 // stride -> modulo by zero); compare its sizes with global attention in block 0
        base = sam2_config("sam2.1_tiny_test")
        cfg = base.replace(trunk=dataclasses.replace(base.trunk, global_att_blocks=(0,)), image_size=image_size)
    else:
        cfg = sam2_config(name, image_size=image_size)
    official = _official_image_encoder(cfg).eval()
    state = official.state_dict()
    for key in ("trunk.pos_embed", "trunk.pos_embed_window"):  # zero-initialised; make them count
        state[key] = torch.randn_like(state[key])
    official.load_state_dict(state)
    ours = ImageEncoder(cfg).eval()
    ours.load_state_dict(state, strict=True)

    images = torch.randn(1, 3, image_size, image_size)
    with torch.no_grad():
        expected, got = official(images), ours(images)
    s = image_size
    assert [tuple(f.shape) for f in got["backbone_fpn"]] == [
        (1, cfg.d_model, s // 4, s // 4), (1, cfg.d_model, s // 8, s // 8), (1, cfg.d_model, s // 16, s // 16)]
    assert _max_diff(got["vision_features"], expected["vision_features"]) <= TOL
    for key in ("backbone_fpn", "vision_pos_enc"):
        assert len(got[key]) == len(expected[key]) == 3
        for a, b in zip(got[key], expected[key]):
            assert _max_diff(a, b) <= TOL


@pytest.mark.parametrize("image_size", [64, 128, 256])
def test_tiny_preset_image_encoder_shapes(image_size):
    """The tiny test preset (global attention on a pooling block) runs at several sizes."""
    cfg = sam2_config("sam2.1_tiny_test", image_size=image_size)
    out = ImageEncoder(cfg)(torch.randn(1, 3, image_size, image_size))
    s, d = image_size, cfg.d_model
    assert out["vision_features"].shape == (1, d, s // 16, s // 16)
    assert [tuple(p.shape) for p in out["vision_pos_enc"]] == [
        (1, d, s // 4, s // 4), (1, d, s // 8, s // 8), (1, d, s // 16, s // 16)]
    assert all(torch.isfinite(f).all() for f in out["backbone_fpn"])


def _heads(cfg: SAM2Config) -> tuple[PromptEncoder, MaskDecoder, torch.nn.Module, torch.nn.Module]:
    ref_prompt, ref_decoder = _official_heads(cfg)
    prompt, decoder = PromptEncoder.from_config(cfg), MaskDecoder.from_config(cfg)
    prompt.load_state_dict(ref_prompt.state_dict(), strict=True)
    decoder.load_state_dict(ref_decoder.state_dict(), strict=True)
    return prompt.eval(), decoder.eval(), ref_prompt.eval(), ref_decoder.eval()


@pytest.mark.parametrize("name", ["sam2.1_tiny_test", "sam2.1_hiera_t"])
def test_prompt_encoder_matches_official(name):
    require_reference()
    cfg = sam2_config(name, image_size=256)
    ours, _, ref, _ = _heads(cfg)
    batch, s, m = 3, cfg.image_size, 4 * cfg.feat_size
    points = torch.rand(batch, 5, 2) * s
    labels = torch.tensor([[1, 0, 2, 3, -1], [1, 1, 1, 0, 0], [0, -1, -1, 2, 3]], dtype=torch.int32)
    boxes = torch.rand(batch, 4) * s
    masks = torch.randn(batch, 1, m, m)
    cases = {
        "points": ((points, labels), None, None),
        "points+box+mask": ((points, labels), boxes, masks),
        "box": (None, boxes, None),
        "mask": (None, None, masks),
        "nothing": (None, None, None),
    }
    with torch.no_grad():
        for case, args in cases.items():
            (sparse, dense), (ref_sparse, ref_dense) = ours(*args), ref(*args)
            assert _max_diff(sparse, ref_sparse) <= TOL, case
            assert _max_diff(dense, ref_dense) <= TOL, case
        assert _max_diff(ours.get_dense_pe(), ref.get_dense_pe()) <= TOL
    assert ours((points, labels), None, None)[0].shape == (batch, 6, cfg.d_model)  # + padding point


def _decoder_inputs(cfg: SAM2Config, prompt: PromptEncoder, batch: int = 3):
    d, h = cfg.d_model, cfg.feat_size
    points = torch.rand(batch, 2, 2) * cfg.image_size
    labels = torch.randint(0, 2, (batch, 2), dtype=torch.int32)
    with torch.no_grad():
        sparse, dense = prompt((points, labels), None, None)
    image = torch.randn(1, d, h, h)
    high_res = [torch.randn(batch, d // 8, 4 * h, 4 * h), torch.randn(batch, d // 4, 2 * h, 2 * h)]
    return image, prompt.get_dense_pe(), sparse, dense, high_res


def _assert_same_outputs(got, expected):
    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected):
        assert _max_diff(a, b) <= TOL


@pytest.mark.parametrize("name", ["sam2.1_tiny_test", "sam2.1_hiera_t"])
@pytest.mark.parametrize("multimask_output", [True, False])
def test_mask_decoder_matches_official(name, multimask_output):
    require_reference()
    cfg = sam2_config(name, image_size=256)
    prompt, ours, _, ref = _heads(cfg)
    image, pe, sparse, dense, high_res = _decoder_inputs(cfg, prompt)
    with torch.no_grad():
        got = ours(image, pe, sparse, dense, multimask_output, True, high_res)
        expected = ref(image, pe, sparse, dense, multimask_output, True, high_res)
    _assert_same_outputs(got, expected)
    masks, iou, tokens, obj_score = got
    num = 3 if multimask_output else 1
    assert masks.shape == (3, num, 4 * cfg.feat_size, 4 * cfg.feat_size)
    assert iou.shape == (3, num) and tokens.shape == (3, num, cfg.d_model) and obj_score.shape == (3, 1)

    # one image per prompt set instead of a repeated image
    images = image.expand(3, -1, -1, -1).contiguous()
    with torch.no_grad():
        got = ours(images, pe, sparse, dense, multimask_output, False, high_res)
    _assert_same_outputs(got, expected)


def test_mask_decoder_dynamic_multimask_takes_both_branches_like_official():
    """Single-mask output falls back to the best multimask where token 0 is unstable (as officially)."""
    require_reference()
    cfg = sam2_config("sam2.1_tiny_test", image_size=128)
    prompt, ours, _, ref = _heads(cfg)
    image, pe, sparse, dense, high_res = _decoder_inputs(cfg, prompt, batch=4)
    with torch.no_grad():
        all_masks, all_iou, _, _ = ours.predict_masks(image, pe, sparse, dense, True, high_res)
    # make token 0 stable for prompts 0 and 2 only, by pushing its logits far from 0
    stable = torch.tensor([True, False, True, False])
    all_masks[stable, 0] = torch.where(all_masks[stable, 0] > 0, 10.0, -10.0)
    all_masks[~stable, 0] = 0.01 * torch.sign(torch.randn_like(all_masks[~stable, 0]))

    got = ours._dynamic_multimask_via_stability(all_masks, all_iou)
    expected = ref._dynamic_multimask_via_stability(all_masks, all_iou)
    for a, b in zip(got, expected):
        assert _max_diff(a, b) <= TOL
    masks, iou = got
    best = all_iou[:, 1:].argmax(dim=1) + 1
    for i in range(4):
        source = 0 if stable[i] else best[i]
        assert torch.equal(masks[i, 0], all_masks[i, source]) and iou[i, 0] == all_iou[i, source]


def test_mask_decoder_single_mask_in_training_uses_token_zero_like_official():
    require_reference()
    cfg = sam2_config("sam2.1_tiny_test", image_size=128)
    prompt, ours, _, ref = _heads(cfg)
    image, pe, sparse, dense, high_res = _decoder_inputs(cfg, prompt)
    ours.train()
    ref.train()
    got = ours(image, pe, sparse, dense, False, True, high_res)
    expected = ref(image, pe, sparse, dense, False, True, high_res)
    _assert_same_outputs([t.detach() for t in got], [t.detach() for t in expected])
    with torch.no_grad():
        all_masks = ours.predict_masks(image, pe, sparse, dense, True, high_res)[0]
    assert torch.allclose(got[0].detach(), all_masks[:, 0:1], atol=TOL)
    got[0].sum().backward()  # trainable end to end
    assert ours.output_hypernetworks_mlps[0].layers[0].weight.grad is not None


def test_attention_with_downsampling_and_kv_width_matches_official():
    require_reference()
    from sam2.modeling.sam.transformer import Attention as RefAttention

    ref = RefAttention(64, 4, downsample_rate=2, kv_in_dim=32).eval()
    ours = Attention(64, 4, downsample_rate=2, kv_in_dim=32).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    q, k, v = torch.randn(2, 7, 64), torch.randn(2, 11, 32), torch.randn(2, 11, 32)
    with torch.no_grad():
        assert _max_diff(ours(q, k, v), ref(q, k, v)) <= TOL


def test_attention_rejects_heads_not_dividing_width():
    with pytest.raises(ValueError, match="num_heads=3 must divide"):
        Attention(64, 3)


def test_mask_decoder_without_high_res_features_matches_official_plain_upscaling():
    require_reference()
    from sam2.modeling.sam.mask_decoder import MaskDecoder as RefMaskDecoder
    from sam2.modeling.sam.transformer import TwoWayTransformer

    cfg = sam2_config("sam2.1_tiny_test", image_size=128)
    d = cfg.d_model
    prompt, ours, _, _ = _heads(cfg)
    ref = RefMaskDecoder(
        num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=d, mlp_dim=8 * d, num_heads=8),
        transformer_dim=d, iou_head_hidden_dim=d, use_high_res_features=False, iou_prediction_use_sigmoid=True,
        pred_obj_scores=True, pred_obj_scores_mlp=True, use_multimask_token_for_obj_ptr=True,
    ).eval()
    ref.load_state_dict({k: v for k, v in ours.state_dict().items() if not k.startswith("conv_s")}, strict=True)
    image, pe, sparse, dense, _ = _decoder_inputs(cfg, prompt)
    with torch.no_grad():
        _assert_same_outputs(ours(image, pe, sparse, dense, True, True), ref(image, pe, sparse, dense, True, True))
