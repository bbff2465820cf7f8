"""Image mode vs the official SAM2 (pip sam2==1.1.0) on the same random weights, fp32 on CPU.

The official SAM2ImagePredictor imports torchvision, so the reference side drives the official
model's own modules exactly as SAM2ImagePredictor.set_image / _predict do (torchvision's
ToTensor / Resize / Normalize written with torch), with feature sizes derived from image_size.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import require_reference
from sam2_video.errors import UserInputError
from sam2_video.model.build import build_sam2
from sam2_video.predict.image_predictor import SAM2ImagePredictor

TOLERANCE = 1e-4
MASK_LOGIT_SCALE = 20.0  # random weights give mask logits near 0 and object scores near 0:
OBJ_SCORE_BIAS = 5.0  # scale and bias them (as refharness/ref_dump.py) so no threshold sits on float noise
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _reference_and_ours(config_path: str, preset: str, image_size: int):
    require_reference()
    from sam2.build_sam import build_sam2 as build_reference

    torch.manual_seed(0)
    reference = build_reference(config_path, None, device="cpu",
                                hydra_overrides_extra=[f"++model.image_size={image_size}"])
    with torch.no_grad():
        reference.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += OBJ_SCORE_BIAS
        for mlp in reference.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight *= MASK_LOGIT_SCALE
            mlp.layers[-1].bias *= MASK_LOGIT_SCALE
    ours = build_sam2(preset, image_size=image_size)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


@torch.no_grad()
def _reference_set_image(model, image: np.ndarray) -> dict:
    size = model.image_size
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
    x = F.interpolate(x[None], size=[size, size], mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    backbone_out = model.forward_image(x)
    _, vision_feats, _, _ = model._prepare_backbone_features(backbone_out)
    vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
    sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
    feats = [f.permute(1, 2, 0).view(1, -1, *s) for f, s in zip(vision_feats, sizes)]
    return {"image_embed": feats[-1], "high_res_feats": feats[:-1], "orig_hw": image.shape[:2]}


@torch.no_grad()
def _reference_predict(model, feats, points=None, labels=None, box=None, mask_input=None, multimask_output=True):
    size = model.image_size
    h, w = feats["orig_hw"]
    scale = torch.tensor([size / w, size / h])
    concat = None
    if points is not None:
        concat = (torch.as_tensor(points, dtype=torch.float)[None] * scale, torch.as_tensor(labels, dtype=torch.int)[None])
    if box is not None:
        corners = torch.as_tensor(box, dtype=torch.float).reshape(-1, 2, 2) * scale
        corner_labels = torch.tensor([[2, 3]], dtype=torch.int)
        concat = (corners, corner_labels) if concat is None else (
            torch.cat([corners, concat[0]], 1), torch.cat([corner_labels, concat[1]], 1))
    masks = None if mask_input is None else torch.as_tensor(mask_input, dtype=torch.float)[None]
    sparse, dense = model.sam_prompt_encoder(points=concat, boxes=None, masks=masks)
    low, iou, _, obj_score = model.sam_mask_decoder(
        image_embeddings=feats["image_embed"], image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask_output,
        repeat_image=False, high_res_features=feats["high_res_feats"])
    full = F.interpolate(low.float(), (h, w), mode="bilinear", align_corners=False)
    return full[0], iou[0], torch.clamp(low, -32.0, 32.0)[0], obj_score[0]


@pytest.fixture
def test_image(request) -> np.ndarray:
    """A real DAVIS frame when ../shared/data is there, else a generated 480x640 image with shapes."""
    try:
        davis_root = request.getfixturevalue("davis_root")
    except pytest.skip.Exception:
        davis_root = None
    if davis_root is not None:
        frames = sorted((davis_root / "JPEGImages").rglob("*.jpg"))
        if frames:
            return np.array(Image.open(frames[0]).convert("RGB"))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:480, :640]
    image = np.stack([xx * 255 // 640, yy * 255 // 480, np.full_like(xx, 90)], axis=-1).astype(np.float64)
    image[(yy - 240) ** 2 + (xx - 300) ** 2 < 90**2] = (220, 40, 40)
    image[100:200, 420:600] = (30, 200, 60)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def _prompt_cases(height: int, width: int, previous_low_res: np.ndarray) -> dict[str, dict]:
    def at(fx, fy):
        return [fx * width, fy * height]

    return {
        "one_positive_point": dict(points=[at(0.47, 0.5)], labels=[1]),
        "two_positive_one_negative": dict(points=[at(0.47, 0.5), at(0.5, 0.4), at(0.8, 0.3)], labels=[1, 1, 0],
                                          multimask_output=False),
        "box": dict(box=at(0.3, 0.3) + at(0.65, 0.7)),
        "box_and_point": dict(box=at(0.3, 0.3) + at(0.65, 0.7), points=[at(0.8, 0.3)], labels=[0],
                              multimask_output=False),
        "mask_input": dict(mask_input=previous_low_res),
    }


def _assert_close(name: str, ours: torch.Tensor | np.ndarray, reference: torch.Tensor) -> None:
    ours = torch.as_tensor(ours)
    assert ours.shape == reference.shape, f"{name}: shape {tuple(ours.shape)} vs reference {tuple(reference.shape)}"
    diff = (ours.float() - reference.float()).abs().max().item()
    assert diff <= TOLERANCE, f"{name}: max abs diff {diff:.2e} > {TOLERANCE}"


def _capture_outputs(module: torch.nn.Module) -> list:
    """Record every output of `module` (to compare intermediate results without running anything twice).

    Lists inside a dict output are copied: the official forward_image replaces FPN levels in place.
    """
    outputs: list = []

    def record(_module, _args, output):
        if isinstance(output, dict):
            output = {k: list(v) if isinstance(v, list) else v for k, v in output.items()}
        outputs.append(output)

    module.register_forward_hook(record)
    return outputs


def _compare(config_path: str, preset: str, image_size: int, image: np.ndarray) -> None:
    reference, ours = _reference_and_ours(config_path, preset, image_size)
    ref_encoder_out, our_encoder_out = _capture_outputs(reference.image_encoder), _capture_outputs(ours.image_encoder)
    our_decoder_out = _capture_outputs(ours.sam_mask_decoder)

    ref_feats = _reference_set_image(reference, image)
    predictor = SAM2ImagePredictor(ours)
    predictor.set_image(image)
    for key in ("backbone_fpn", "vision_pos_enc"):
        for level, (a, b) in enumerate(zip(our_encoder_out[0][key], ref_encoder_out[0][key])):
            _assert_close(f"image encoder {key} level {level}", a, b)
    _assert_close("image embedding", predictor.get_image_embedding(), ref_feats["image_embed"])
    for level, (a, b) in enumerate(zip(predictor._features["high_res_feats"], ref_feats["high_res_feats"])):
        _assert_close(f"high-res features {level}", a, b)

    height, width = image.shape[:2]
    _, _, first_low_res, _ = _reference_predict(reference, ref_feats, points=[[0.47 * width, 0.5 * height]], labels=[1])
    for case, prompt in _prompt_cases(height, width, first_low_res[:1].numpy()).items():
        multimask = prompt.get("multimask_output", True)
        ref_masks, ref_iou, ref_low, ref_score = _reference_predict(
            reference, ref_feats, points=prompt.get("points"), labels=prompt.get("labels"), box=prompt.get("box"),
            mask_input=prompt.get("mask_input"), multimask_output=multimask)
        masks, iou, low = predictor.predict(
            point_coords=np.array(prompt["points"]) if "points" in prompt else None,
            point_labels=np.array(prompt["labels"]) if "labels" in prompt else None,
            box=np.array(prompt["box"]) if "box" in prompt else None,
            mask_input=prompt.get("mask_input"), multimask_output=multimask, return_logits=True)
        _assert_close(f"{case}: mask logits", masks, ref_masks)
        _assert_close(f"{case}: IoU predictions", iou, ref_iou)
        _assert_close(f"{case}: low-res mask logits", low, ref_low)
        _assert_close(f"{case}: object-score logits", our_decoder_out[-1][3][0], ref_score)
        assert (masks > 0).any() and (masks <= 0).any(), f"{case}: degenerate masks make the comparison weak"


def test_sam2_1_hiera_t_at_1024_matches_reference(test_image: np.ndarray) -> None:
    _compare("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_t", 1024, test_image)


def test_sam2_1_hiera_b_plus_at_256_matches_reference(test_image: np.ndarray) -> None:
    _compare("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_b+", 256, test_image)


@pytest.fixture(scope="module")
def tiny_predictor() -> SAM2ImagePredictor:
    return SAM2ImagePredictor(build_sam2("sam2.1_tiny_test"))


def test_predict_before_set_image(tiny_predictor: SAM2ImagePredictor) -> None:
    tiny_predictor.reset_predictor()
    with pytest.raises(RuntimeError, match="set_image"):
        tiny_predictor.predict(point_coords=np.array([[10, 10]]), point_labels=np.array([1]))


@pytest.mark.parametrize("image", [np.zeros((32, 48), np.uint8), np.zeros((32, 48, 4), np.uint8),
                                   np.zeros((32, 48, 3), np.float32)])
def test_image_must_be_hxwx3_uint8(tiny_predictor: SAM2ImagePredictor, image: np.ndarray) -> None:
    with pytest.raises(UserInputError, match=r"RGB uint8 image of shape \[H, W, 3\]"):
        tiny_predictor.set_image(image)


def test_point_labels_must_match_points(tiny_predictor: SAM2ImagePredictor) -> None:
    tiny_predictor.set_image(np.zeros((40, 60, 3), np.uint8))
    with pytest.raises(UserInputError, match="one label per point: 2 points"):
        tiny_predictor.predict(point_coords=np.array([[10, 10], [20, 20]]), point_labels=np.array([1]))
    with pytest.raises(UserInputError, match="point_labels must be given"):
        tiny_predictor.predict(point_coords=np.array([[10, 10]]))


def test_output_shapes_and_thresholding(tiny_predictor: SAM2ImagePredictor) -> None:
    """Official output convention: float 0/1 masks at the image size (logits > 0), low-res logits at S/4."""
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    tiny_predictor.set_image(image)
    prompt = dict(point_coords=np.array([[10, 10]]), point_labels=np.array([1]))
    masks, iou, low = tiny_predictor.predict(**prompt)
    logits, _, _ = tiny_predictor.predict(**prompt, return_logits=True)
    size = tiny_predictor.model.image_size // 4
    assert masks.shape == (3, 40, 60) and iou.shape == (3,) and low.shape == (3, size, size)
    np.testing.assert_array_equal(masks, (logits > 0).astype(np.float32))
    tiny_predictor.set_image(Image.fromarray(image))  # a PIL image gives the same embedding
    np.testing.assert_array_equal(tiny_predictor.predict(**prompt)[0], masks)
    single, _, _ = tiny_predictor.predict(**prompt, box=np.array([5, 5, 30, 30]), multimask_output=False)
    assert single.shape == (1, 40, 60)


def test_prompts_in_unit_coordinates_and_batched(tiny_predictor: SAM2ImagePredictor) -> None:
    """normalize_coords=False takes points and boxes already in [0, 1] (the official convention), and a
    batch of prompts gives each prompt's own answer."""
    image = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    tiny_predictor.set_image(image)
    points, box = np.array([[15.0, 10.0], [40.0, 30.0]]), np.array([5.0, 4.0, 50.0, 36.0])
    pixels = tiny_predictor.predict(point_coords=points, point_labels=np.array([1, 0]), box=box, return_logits=True)
    unit = tiny_predictor.predict(point_coords=points / [60, 40], point_labels=np.array([1, 0]), box=box / [60, 40, 60, 40],
                                  normalize_coords=False, return_logits=True)
    for a, b in zip(pixels, unit):
        np.testing.assert_allclose(a, b, atol=1e-5)
    other = np.array([[50.0, 8.0]])
    alone = tiny_predictor.predict(point_coords=other, point_labels=np.array([1]), return_logits=True)
    batched = tiny_predictor.predict(point_coords=np.stack([points[:1], other]), point_labels=np.array([[1], [1]]),
                                     return_logits=True)
    first = tiny_predictor.predict(point_coords=points[:1], point_labels=np.array([1]), return_logits=True)
    for a, b, c in zip(batched, first, alone):
        assert a.shape[0] == 2
        np.testing.assert_allclose(a[0], b, atol=1e-5)
        np.testing.assert_allclose(a[1], c, atol=1e-5)
