"""SAM2 training forward: equality with the video predictor (one core, two callers), the training
recipe's outputs, selective training, the feature cache, simulated prompts vs the reference, and
validation by J&F."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import require_reference
from sam2_video.data.batch import BatchedVideoDatapoint
from sam2_video.errors import UserInputError
from sam2_video.model.sam2_train import FeatureCache, SAM2Model
from sam2_video.predict.frames import load_video_frames
from sam2_video.predict.video_predictor import SAM2VideoPredictor
from sam2_video.model import prompt_sampling
from sam2_video.train.loss import MultiStepMultiMaskLoss
from sam2_video.train.validate import validate_sam2

TINY = "sam2.1_tiny_test"
SIZE = 128


def _tiny_model(**options) -> SAM2Model:
    """Tiny random SAM2 whose logits are far from the 0 thresholds (objects present, |logit| large)."""
    model = SAM2Model(config_path=TINY, image_size=SIZE, verbose=False, dropout=0.0, **options)
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 5.0
        for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight *= 20.0
            mlp.layers[-1].bias *= 20.0
    return model


def _square_masks(num_frames: int, num_objects: int, size: int) -> torch.Tensor:
    """[T,O,S,S] bool: object o is a box moving a few pixels per frame."""
    masks = torch.zeros(num_frames, num_objects, size, size, dtype=torch.bool)
    side = size // 4
    for t in range(num_frames):
        for o in range(num_objects):
            y0, x0 = size // 8 + o * size // 3 + 2 * t, size // 8 + 3 * t + o * size // 5
            masks[t, o, y0:y0 + side, x0:x0 + side] = True
    return masks


def _batch(images: torch.Tensor, masks: torch.Tensor, clicks: torch.Tensor | None = None,
           mask_prompt_frame0: bool = False) -> BatchedVideoDatapoint:
    """One clip: images [T,3,S,S], masks [T,O,S,S]; optional explicit clicks [O,2] on frame 0."""
    num_frames, num_objects, size = masks.shape[0], masks.shape[1], masks.shape[-1]
    point_coords = torch.zeros(num_frames, num_objects, 1, 2)
    point_labels = torch.full((num_frames, num_objects, 1), -1, dtype=torch.int32)
    if clicks is not None:
        point_coords[0, :, 0] = clicks
        point_labels[0] = 1
    mask_prompt_valid = torch.zeros(num_frames, num_objects, dtype=torch.bool)
    mask_prompt_valid[0] = mask_prompt_frame0
    return BatchedVideoDatapoint(
        img_batch=images.unsqueeze(1),
        obj_to_frame_idx=torch.stack([torch.tensor([[t, 0]] * num_objects, dtype=torch.int32) for t in range(num_frames)]),
        masks=masks,
        point_coords=point_coords,
        point_labels=point_labels,
        boxes=torch.zeros(num_frames, num_objects, 4),
        box_valid=torch.zeros(num_frames, num_objects, dtype=torch.bool),
        mask_prompts=masks & mask_prompt_valid[..., None, None],
        mask_prompt_valid=mask_prompt_valid,
        object_ids=torch.arange(1, num_objects + 1),
        frame_is_padding=torch.zeros(num_frames, 1, dtype=torch.bool),
        video_names=["clip"],
        frame_names=[[f"{t:05d}" for t in range(num_frames)]],
    )


@pytest.fixture
def video_folder(tmp_path: Path) -> Path:
    """5 random-noise PNG frames of SIZE x SIZE (lossless, so both callers see the same pixels)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(5):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / f"{t:05d}.png")
    return folder


def _predictor_logits(model: SAM2Model, folder: Path, prompt) -> list[torch.Tensor]:
    """Per-frame [O,1,S,S] logits of the video predictor after `prompt(predictor, state)`."""
    predictor = SAM2VideoPredictor(model)
    state = predictor.init_state(str(folder))
    prompt(predictor, state)
    frames = {t: logits.clone() for t, _, logits in predictor.propagate_in_video(state)}
    return [frames[t] for t in range(len(frames))]


def test_training_forward_equals_video_predictor_with_clicks(video_folder: Path):
    model = _tiny_model(explicit_prompts=True, memory_in_bfloat16=False, fill_hole_area=0).eval()
    images, _, _, _ = load_video_frames(video_folder, SIZE)
    masks = _square_masks(5, 2, SIZE)
    clicks = torch.tensor([[40.0, 30.0], [52.0, 70.0]])
    with torch.no_grad():
        outputs = model(_batch(images, masks, clicks=clicks))

    def click(predictor, state):
        for o in range(2):
            predictor.add_new_points_or_box(state, 0, o + 1, points=clicks[o:o + 1].numpy(), labels=np.array([1]))

    expected = _predictor_logits(model, video_folder, click)
    for t in range(5):
        ours = outputs[t]["pred_masks_high_res"]
        assert (ours > 0).any() and (ours < 0).any(), "degenerate test: logits of one sign"
        torch.testing.assert_close(ours, expected[t], atol=1e-4, rtol=0, msg=f"frame {t}")


def test_training_forward_equals_video_predictor_on_mask_prompt_frame(video_folder: Path):
    """A mask prompt is taken as the output on its frame by both callers.

    The predictor reports the stride-4 logits upsampled to the video size, so those are compared.
    (Later frames differ by design, as in the official code: training encodes the memory from the
    sigmoid of the full-resolution mask logits, the predictor from its binarised stride-4 mask.)
    """
    model = _tiny_model(explicit_prompts=True, memory_in_bfloat16=False, fill_hole_area=0).eval()
    images, _, _, _ = load_video_frames(video_folder, SIZE)
    masks = _square_masks(5, 2, SIZE)
    with torch.no_grad():
        outputs = model(_batch(images, masks, mask_prompt_frame0=True))

    def mask_prompt(predictor, state):
        for o in range(2):
            predictor.add_new_mask(state, 0, o + 1, masks[0, o].numpy())

    expected = _predictor_logits(model, video_folder, mask_prompt)
    upsampled = F.interpolate(outputs[0]["pred_masks"], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsampled, expected[0], atol=1e-4, rtol=0)


def _synthetic_batch(num_frames: int = 3, num_objects: int = 2, seed: int = 0) -> BatchedVideoDatapoint:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(num_frames, 3, SIZE, SIZE, generator=generator)
    return _batch(images, _square_masks(num_frames, num_objects, SIZE))


def test_recipe_click_training_outputs_for_the_loss():
    model = _tiny_model(prob_to_use_pt_input_for_train=1.0, prob_to_use_box_input_for_train=0.0,
                        num_init_cond_frames_for_train=1, num_frames_to_correct_for_train=1,
                        num_correction_pt_per_frame=3).train()
    batch = _synthetic_batch()
    outputs = model(batch)
    assert len(outputs) == 3
    first = outputs[0]
    # an initial click, then 3 correction clicks, each a decoder step; multimask only on the first click
    assert [m.shape[1] for m in first["multistep_pred_multimasks_high_res"]] == [3, 1, 1, 1]
    assert [p["point_labels"].shape[1] for p in first["multistep_point_inputs"]] == [1, 2, 3, 4]
    assert first["multistep_pred_ious"][0].shape == (2, 3)
    assert first["pred_masks_high_res"].shape == (2, 1, SIZE, SIZE)
    assert [len(o["multistep_pred_multimasks_high_res"]) for o in outputs[1:]] == [1, 1]
    assert all("obj_ptr" not in o for o in outputs)
    loss = MultiStepMultiMaskLoss()(outputs, batch.masks)["core_loss"]
    assert torch.isfinite(loss)


def test_box_prompt_and_two_conditioning_frames():
    model = _tiny_model(prob_to_use_pt_input_for_train=1.0, prob_to_use_box_input_for_train=1.0,
                        num_init_cond_frames_for_train=2, rand_init_cond_frames_for_train=False,
                        num_frames_to_correct_for_train=2, num_correction_pt_per_frame=1).train()
    outputs = model(_synthetic_batch(num_frames=4))
    prompted = [t for t, o in enumerate(outputs) if o["point_inputs"] is not None]
    assert len(prompted) == 2 and prompted[0] == 0
    for t in prompted:  # a box = two corner points labelled 2 and 3, then one correction click
        labels = outputs[t]["multistep_point_inputs"][-1]["point_labels"]
        assert labels[:, :2].tolist() == [[2, 3], [2, 3]] and labels.shape[1] == 3


def test_selective_training_gradients_and_frozen_encoder_without_autograd():
    model = _tiny_model(prob_to_use_pt_input_for_train=1.0, num_correction_pt_per_frame=1).train()
    grad_enabled_in_encoder = []
    model.image_encoder.register_forward_hook(lambda *_: grad_enabled_in_encoder.append(torch.is_grad_enabled()))
    batch = _synthetic_batch(num_frames=2)
    MultiStepMultiMaskLoss()(model(batch), batch.masks)["core_loss"].backward()
    assert grad_enabled_in_encoder == [False]
    with_grad = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"memory_attention", "memory_encoder"}
    assert all(p.requires_grad == n.startswith(("memory_attention.", "memory_encoder."))
               for n, p in model.named_parameters())

    table = model.configure_for_training(["image_encoder.neck", "sam_mask_decoder", "no_mem_embed"])
    assert "image_encoder" in table and "trainable" in table
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "no_mem_embed" in trainable
    assert all(n.startswith(("image_encoder.neck.", "sam_mask_decoder.", "no_mem_embed")) for n in trainable)
    assert not any(n.startswith("image_encoder.trunk.") for n in trainable)
    model.zero_grad(set_to_none=True)
    MultiStepMultiMaskLoss()(model(batch), batch.masks)["core_loss"].backward()
    assert grad_enabled_in_encoder[-1] is True
    assert model.image_encoder.neck.convs[0].conv.weight.grad is not None
    assert all(p.grad is None for p in model.image_encoder.trunk.parameters())


def test_unknown_trainable_module_lists_valid_names():
    with pytest.raises(UserInputError, match="memory_atention.*Did you mean 'memory_attention'.*sam_mask_decoder"):
        SAM2Model(config_path=TINY, image_size=SIZE, trainable_modules=["memory_atention"], verbose=False)
    with pytest.raises(UserInputError, match="unknown option 'prob_to_use_pt_input'"):
        SAM2Model(config_path=TINY, image_size=SIZE, prob_to_use_pt_input=0.5, verbose=False)


def test_from_random_weights_memory_is_read_at_the_querys_own_position(tmp_path: Path):
    """Training from random weights starts with memory attention reading each memory frame where the
    query is (the demo's tracker otherwise learned to use its memory only after a seed-dependent plateau);
    weights from a checkpoint are kept as they are."""
    model = SAM2Model(config_path=TINY, image_size=SIZE, verbose=False).eval()  # no attention dropout
    side = SIZE // 16
    tokens = side * side
    for layer in model.memory_attention.layers:
        attention = layer.cross_attn_image
        queries = torch.zeros(1, tokens, attention.embedding_dim)
        keys = torch.zeros(1, 2 * tokens, attention.kv_in_dim)  # two memory frames of `tokens` positions
        with torch.no_grad():
            plain = attention(queries, keys, keys)
            read = []  # read[p, i]: how much query i takes from the value marked at position p of frame 2
            for position in range(tokens):
                values = keys.clone()
                values[0, tokens + position] = 1.0
                read.append((attention(queries, keys, values) - plain)[0].norm(dim=-1))
        assert torch.equal(torch.stack(read).argmax(dim=0), torch.arange(tokens))

    path = tmp_path / "weights.pt"
    with torch.no_grad():
        for layer in model.memory_attention.layers:
            layer.cross_attn_image.q_proj.bias.normal_()
    torch.save({"model": model.state_dict()}, path)
    loaded = SAM2Model(checkpoint_path=path, config_path=TINY, image_size=SIZE, verbose=False)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_a_few_steps_decrease_the_loss():
    model = _tiny_model(prob_to_use_pt_input_for_train=0.0,
                        trainable_modules=["memory_attention", "memory_encoder", "sam_mask_decoder"]).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = _synthetic_batch(num_frames=2, num_objects=2)
    loss_fn = MultiStepMultiMaskLoss()
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = loss_fn(model(batch), batch.masks)["core_loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_feature_cache_gives_the_same_outputs_and_skips_the_encoder():
    model = _tiny_model(prob_to_use_pt_input_for_eval=0.0, feature_cache_frames=16).eval()
    calls = []
    model.image_encoder.register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[0]))
    batch = _synthetic_batch(num_frames=3)
    with torch.no_grad():
        first = model(batch)
        second = model(batch)
        model.feature_cache = None
        uncached = model(batch)
    assert calls == [3, 3]  # cached run: no encoder call
    model.feature_cache = FeatureCache(2)  # smaller than a batch's 3 frames: evicts while filling
    with torch.no_grad():
        small = model(batch)
    for a, b, c, d in zip(first, second, uncached, small):
        torch.testing.assert_close(a["pred_masks_high_res"], d["pred_masks_high_res"], rtol=0, atol=0)
        torch.testing.assert_close(a["pred_masks_high_res"], b["pred_masks_high_res"], rtol=0, atol=0)
        torch.testing.assert_close(a["pred_masks_high_res"], c["pred_masks_high_res"], rtol=0, atol=0)


def test_feature_cache_with_a_trained_decoder_gives_the_same_gradients():
    """With the mask decoder trained, the cache holds the encoder's levels before the decoder's
    high-res projections, which then run with autograd: same loss gradients, no encoder call."""
    model = _tiny_model(prob_to_use_pt_input_for_eval=0.0, feature_cache_frames=16,
                        trainable_modules=["sam_mask_decoder", "memory_attention"]).eval()
    calls = []
    model.image_encoder.register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[0]))
    batch = _synthetic_batch(num_frames=3)

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        loss = sum(out["pred_masks_high_res"].sigmoid().mean() for out in model(batch))
        loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    filling, cached = gradients(), gradients()
    model.feature_cache = None
    uncached = gradients()
    assert calls == [3, 3]  # the cached step ran no encoder
    assert any(name.startswith("sam_mask_decoder.conv_s0") for name in cached)  # the projection is trained
    assert cached.keys() == uncached.keys() == filling.keys()
    for name in cached:
        torch.testing.assert_close(cached[name], uncached[name], rtol=0, atol=1e-6, msg=name)


def test_objects_of_two_clips_run_as_one_batch_with_shared_frames():
    model = _tiny_model(prob_to_use_pt_input_for_eval=0.0).eval()
    calls = []
    model.image_encoder.register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[0]))
    one = _synthetic_batch(num_frames=3, num_objects=2, seed=1)
    two = _synthetic_batch(num_frames=3, num_objects=1, seed=2)
    joint = BatchedVideoDatapoint(
        img_batch=torch.cat([one.img_batch, two.img_batch], dim=1),
        obj_to_frame_idx=torch.cat([one.obj_to_frame_idx, two.obj_to_frame_idx + torch.tensor([0, 1], dtype=torch.int32)], 1),
        **{name: torch.cat([getattr(one, name), getattr(two, name)], dim=1)
           for name in ("masks", "point_coords", "point_labels", "boxes", "box_valid", "mask_prompts",
                        "mask_prompt_valid", "frame_is_padding")},
        object_ids=torch.cat([one.object_ids, two.object_ids]),
        video_names=["one", "two"],
        frame_names=one.frame_names + two.frame_names,
    )
    with torch.no_grad():
        together = model(joint)
        alone = [model(one), model(two)]
    assert calls[0] == 6  # 2 clips x 3 frames, once each although clip 0 has 2 objects
    for t in range(3):
        torch.testing.assert_close(together[t]["pred_masks_high_res"][:2], alone[0][t]["pred_masks_high_res"], atol=1e-4, rtol=0)
        torch.testing.assert_close(together[t]["pred_masks_high_res"][2:], alone[1][t]["pred_masks_high_res"], atol=1e-4, rtol=0)


def test_simulated_prompts_match_the_reference():
    require_reference()
    from sam2.modeling import sam2_utils

    masks = _square_masks(1, 3, 64)[0].unsqueeze(1)
    preds = torch.roll(masks, shifts=5, dims=-1)
    for ours, theirs, args in (
        (prompt_sampling.sample_box_points, sam2_utils.sample_box_points, (masks,)),
        (prompt_sampling.sample_points_from_errors, sam2_utils.sample_random_points_from_errors, (masks, preds)),
        (prompt_sampling.sample_points_from_errors, sam2_utils.sample_random_points_from_errors, (masks, None)),
    ):
        torch.manual_seed(3)
        expected = theirs(*args)
        torch.manual_seed(3)
        got = ours(*args)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_center_click_is_deepest_error_pixel():
    gt = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    gt[0, 0, 4:15, 10:21] = True  # an 11 x 11 square missed by the prediction: centre (15, 9)
    coords, labels = prompt_sampling.sample_point_from_error_center(gt, torch.zeros_like(gt))
    assert coords.tolist() == [[[15.0, 9.0]]] and labels.tolist() == [[1]]
    coords, labels = prompt_sampling.sample_point_from_error_center(torch.zeros_like(gt), gt)
    assert coords.tolist() == [[[15.0, 9.0]]] and labels.tolist() == [[0]]


@pytest.fixture
def davis_like(tmp_path: Path) -> Path:
    """A DAVIS-layout folder: one video of 5 frames, object 1 from frame 0, object 2 from frame 2."""
    root = tmp_path / "val"
    (root / "JPEGImages" / "vid").mkdir(parents=True)
    (root / "Annotations" / "vid").mkdir(parents=True)
    rng = np.random.default_rng(1)
    masks = _square_masks(5, 2, 96).numpy()
    for t in range(5):
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(root / "JPEGImages" / "vid" / f"{t:05d}.jpg")
        ids = np.zeros((96, 96), dtype=np.uint8)
        ids[masks[t, 0]] = 1
        if t >= 2:
            ids[masks[t, 1] & (ids == 0)] = 2
        image = Image.fromarray(ids, mode="P")
        image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
        image.save(root / "Annotations" / "vid" / f"{t:05d}.png")
    return root


def test_validate_sam2_tracks_objects_from_their_first_frame(davis_like: Path, tmp_path: Path):
    model = _tiny_model().train()
    scores = validate_sam2(model, davis_like, image_size=SIZE, out_dir=tmp_path / "pred")
    assert set(scores) == {"J&F", "J", "F"} and 0.0 <= scores["J&F"] <= 1.0
    assert scores["J&F"] == pytest.approx((scores["J"] + scores["F"]) / 2)
    assert model.training  # left as it was
    predicted = [np.array(Image.open(tmp_path / "pred" / "vid" / f"{t:05d}.png")) for t in range(5)]
    assert not (predicted[0] == 2).any() and not (predicted[1] == 2).any()  # object 2 starts on frame 2
    assert ((predicted[2] == 2) == np.array(Image.open(davis_like / "Annotations" / "vid" / "00002.png")).__eq__(2)).mean() > 0.95
    with pytest.raises(UserInputError, match="expected DAVIS layout"):
        validate_sam2(model, tmp_path / "pred", image_size=SIZE)


def test_explicit_prompts_are_used_as_they_are():
    model = _tiny_model(explicit_prompts=True).eval()
    batch = _synthetic_batch(num_frames=3)
    batch.boxes[0, 0] = torch.tensor([10.0, 12.0, 50.0, 60.0])
    batch.box_valid[0, 0] = True
    batch.point_coords[2, 1, 0] = torch.tensor([70.0, 80.0])
    batch.point_labels[2, 1, 0] = 1
    with torch.no_grad():
        outputs = model(batch)
    first = outputs[0]["point_inputs"]
    assert first["point_labels"].tolist() == [[2, 3], [-1, -1]]
    assert first["point_coords"][0].tolist() == [[10.0, 12.0], [50.0, 60.0]]
    assert outputs[1]["point_inputs"] is None  # tracked from memory
    assert outputs[2]["point_inputs"]["point_labels"].tolist() == [[-1], [1]]
    assert [len(o["multistep_pred_ious"]) for o in outputs] == [1, 1, 1]  # no simulated correction clicks

    batch.mask_prompt_valid[2, 0] = True
    with pytest.raises(UserInputError, match="frame 2: some objects have only a mask prompt"):
        model(batch)
    with pytest.raises(UserInputError, match="carry no point, box or mask prompt"):
        model(_synthetic_batch(num_frames=2))
