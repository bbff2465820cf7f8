"""STCN baseline: affinity/readout against NumPy, object-order invariance, loss, ResNet weights, errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sam2_video.data.batch import BatchedVideoDatapoint
from sam2_video.errors import UserInputError
from sam2_video.model.resnet import ResNet
from sam2_video.model.stcn import STCN, STCNConfig, get_affinity, readout
from sam2_video.predict.stcn_predictor import STCNVideoPredictor
from sam2_video.train.stcn_loss import BootstrappedCE, STCNLoss, class_targets

SIZE = 64
TINY = STCNConfig(image_size=SIZE, key_backbone=18, value_dim=32, decoder_dim=32, max_objects=3)


@pytest.fixture(scope="module")
def model() -> STCN:
    torch.manual_seed(0)
    return STCN(TINY).eval()


def _batch(masks: torch.Tensor, video_of_object: list[int], images: torch.Tensor) -> BatchedVideoDatapoint:
    """masks [T, O, H, W] bool, images [T, B, 3, H, W]."""
    num_frames, num_objects = masks.shape[:2]
    num_videos = images.shape[1]
    frame_and_video = torch.tensor([[[t, b] for b in video_of_object] for t in range(num_frames)])
    return BatchedVideoDatapoint(
        img_batch=images,
        obj_to_frame_idx=frame_and_video,
        masks=masks,
        point_coords=torch.zeros(num_frames, num_objects, 1, 2),
        point_labels=torch.full((num_frames, num_objects, 1), -1, dtype=torch.int32),
        boxes=torch.zeros(num_frames, num_objects, 4),
        box_valid=torch.zeros(num_frames, num_objects, dtype=torch.bool),
        mask_prompts=torch.zeros_like(masks),
        mask_prompt_valid=torch.zeros(num_frames, num_objects, dtype=torch.bool),
        object_ids=torch.arange(num_objects),
        frame_is_padding=torch.zeros(num_frames, num_videos, dtype=torch.bool),
        video_names=[f"video{b}" for b in range(num_videos)],
        frame_names=[[f"{t:05d}" for t in range(num_frames)] for _ in range(num_videos)],
    )


def _blob_masks(num_frames: int, num_objects: int, generator: torch.Generator) -> torch.Tensor:
    """Non-overlapping rectangles that move a little per frame: [T, O, SIZE, SIZE] bool."""
    masks = torch.zeros(num_frames, num_objects, SIZE, SIZE, dtype=torch.bool)
    for o in range(num_objects):
        y0 = 4 + 20 * o
        x0 = int(torch.randint(4, 30, (1,), generator=generator))
        for t in range(num_frames):
            masks[t, o, y0 : y0 + 14, x0 + 2 * t : x0 + 2 * t + 20] = True
    return masks


def test_affinity_matches_numpy():
    rng = np.random.default_rng(0)
    mk = rng.standard_normal((2, 4, 3, 2, 3)).astype(np.float32)  # B, Ck, T, h, w
    qk = rng.standard_normal((2, 4, 2, 3)).astype(np.float32)
    memory = mk.reshape(2, 4, -1)  # B, Ck, T*h*w
    query = qk.reshape(2, 4, -1)  # B, Ck, h*w
    distance = ((memory[:, :, :, None] - query[:, :, None, :]) ** 2).sum(axis=1)  # B, THW, HW
    scores = -distance / np.sqrt(4)
    expected = np.exp(scores - scores.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    actual = get_affinity(torch.from_numpy(mk), torch.from_numpy(qk))
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-6)


def test_readout_matches_numpy():
    rng = np.random.default_rng(1)
    b, k, cv, cq, t, h, w = 2, 3, 5, 4, 2, 2, 3
    affinity = rng.random((b, t * h * w, h * w)).astype(np.float32)
    mv = rng.standard_normal((b, k, cv, t, h, w)).astype(np.float32)
    qv = rng.standard_normal((b, cq, h, w)).astype(np.float32)
    expected = np.zeros((b, k, cv + cq, h, w), dtype=np.float32)
    for bi in range(b):
        for ki in range(k):
            for pixel in range(h * w):
                weights = affinity[bi, :, pixel]
                expected[bi, ki, :cv, pixel // w, pixel % w] = mv[bi, ki].reshape(cv, -1) @ weights
            expected[bi, ki, cv:] = qv[bi]
    actual = readout(torch.from_numpy(affinity), torch.from_numpy(mv), torch.from_numpy(qv))
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-5)


def test_training_forward_is_invariant_to_object_order(model: STCN):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(3, 2, 3, SIZE, SIZE, generator=generator)
    masks = _blob_masks(3, 3, generator)  # objects 0, 1 in video 0, object 2 in video 1
    with torch.no_grad():
        forward = model(_batch(masks, [0, 0, 1], images))
        order = [2, 1, 0]
        swapped = model(_batch(masks[:, order], [1, 0, 0], images))
    assert forward.slot_objects.tolist() == [[0, 1], [2, -1]]
    assert swapped.slot_objects.tolist() == [[1, 2], [0, -1]]
    for probs, probs_swapped in zip(forward.probs, swapped.probs):
        torch.testing.assert_close(probs[0], probs_swapped[0].flip(0), atol=1e-5, rtol=0)
        torch.testing.assert_close(probs[1, 0], probs_swapped[1, 0], atol=1e-5, rtol=0)
        assert torch.all(probs[1, 1] == 0)
    # later frames read the reference masks from memory
    with torch.no_grad():
        moved = model(_batch(masks.roll(10, dims=-1), [0, 0, 1], images))
    assert (moved.probs[1] - forward.probs[1]).abs().max() > 1e-6


def test_loss_drops_empty_slots_and_backpropagates():
    torch.manual_seed(0)
    train_model = STCN(TINY).train()
    generator = torch.Generator().manual_seed(1)
    masks = _blob_masks(3, 3, generator)
    batch = _batch(masks, [0, 0, 1], torch.randn(3, 2, 3, SIZE, SIZE, generator=generator))
    outputs = train_model(batch)
    loss = STCNLoss(start_warm=0, end_warm=0, top_p=0.2)
    terms = loss(outputs, batch)
    assert set(terms) == {"core_loss", "loss_frame_1", "loss_frame_2", "kept_fraction"}
    # STCN's loss on the one-object clip uses only its background and object channels
    expected = 0.0
    for t, logits in enumerate(outputs.logits, start=1):
        target = class_targets(batch.masks[t], outputs.slot_objects)
        per_clip = [F.cross_entropy(logits[0:1], target[0:1], reduction="none"),
                    F.cross_entropy(logits[1:2, :2], target[1:2], reduction="none")]
        kept = int(SIZE * SIZE * 0.2)
        expected = expected + sum(raw.flatten().topk(kept).values.mean() for raw in per_clip) / 2
    torch.testing.assert_close(terms["core_loss"], expected)
    terms["core_loss"].backward()
    grads = [p.grad for p in train_model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_training_under_bfloat16_autocast_stays_finite():
    """The trainer uses bf16 autocast on GPUs; affinity and aggregation must stay in float32
    (in bf16, 1 - 1e-7 rounds to 1 and the aggregated log-odds become infinite)."""
    torch.manual_seed(0)
    train_model = STCN(TINY).train()
    generator = torch.Generator().manual_seed(2)
    batch = _batch(_blob_masks(3, 2, generator), [0, 0], torch.randn(3, 1, 3, SIZE, SIZE, generator=generator))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = STCNLoss(start_warm=0, end_warm=0)(train_model(batch), batch)
    assert torch.isfinite(terms["core_loss"])
    terms["core_loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in train_model.parameters())


def test_bootstrapped_ce_schedule_and_top_pixels():
    criterion = BootstrappedCE(start_warm=10, end_warm=30, top_p=0.25)
    assert [criterion.kept_fraction(s) for s in (0, 9, 10, 20, 30, 99)] == [1.0, 1.0, 1.0, 0.625, 0.25, 0.25]
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    log_p = torch.log_softmax(logits, dim=1).gather(1, target[:, None]).flatten(1).numpy()
    hardest = np.sort(-log_p, axis=1)[:, ::-1][:, :4]  # 25% of 16 pixels per clip
    assert float(criterion(logits, target, step=50)) == pytest.approx(hardest.mean(), abs=1e-6)
    assert float(criterion(logits, target, step=0)) == pytest.approx((-log_p).mean(), abs=1e-6)


def test_training_clip_with_too_many_objects(model: STCN):
    masks = torch.zeros(2, 4, SIZE, SIZE, dtype=torch.bool)
    batch = _batch(masks, [0, 0, 0, 0], torch.zeros(2, 1, 3, SIZE, SIZE))
    with pytest.raises(UserInputError, match=r"'video0' has 4 objects but STCN is configured for at most 3"):
        model(batch)


@pytest.fixture
def video_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(tmp_path / f"{i:05d}.jpg")
    return tmp_path


def _object_masks() -> dict[int, np.ndarray]:
    masks = {obj_id: np.zeros((48, 80), dtype=bool) for obj_id in (3, 8, 11)}
    masks[3][5:20, 5:30] = True
    masks[8][25:45, 40:70] = True
    masks[11][5:20, 50:75] = True
    return masks


def test_predictor_is_invariant_to_object_order(model: STCN, video_folder: Path):
    predictor = STCNVideoPredictor(model, mem_every=2)
    masks = _object_masks()
    results = []
    for order in ([3, 8, 11], [11, 3, 8]):
        state = predictor.init_state(str(video_folder))
        for obj_id in order:
            frame = 2 if obj_id == 11 else 0  # object 11 appears on frame 2
            predictor.add_new_mask(state, frame, obj_id, masks[obj_id])
        frames = {}
        for frame_idx, obj_ids, logits in predictor.propagate_in_video(state):
            assert logits.shape == (3, 1, 48, 80)
            frames[frame_idx] = {obj_id: logits[i, 0] for i, obj_id in enumerate(obj_ids)}
        results.append(frames)
    assert sorted(results[0]) == [0, 1, 2, 3, 4]
    for frame_idx, per_object in results[0].items():
        for obj_id, logits in per_object.items():
            torch.testing.assert_close(logits, results[1][frame_idx][obj_id], atol=1e-4, rtol=0)
    assert torch.all(results[0][1][11] == -1024.0)  # not started yet
    # given masks come back as they were; labels never overlap
    assert torch.equal(results[0][0][3] > 0, torch.from_numpy(masks[3]))
    winners = torch.stack([results[0][4][i] > 0 for i in (3, 8, 11)]).sum(0)
    assert winners.max() <= 1


def test_predictor_object_limit_and_bad_mask(model: STCN, video_folder: Path):
    predictor = STCNVideoPredictor(model)
    state = predictor.init_state(str(video_folder))
    for obj_id in (1, 2, 3):
        predictor.add_new_mask(state, 0, obj_id, np.ones((48, 80), dtype=bool))
    with pytest.raises(UserInputError, match=r"object 4 .* at most 3 objects"):
        predictor.add_new_mask(state, 0, 4, np.ones((48, 80), dtype=bool))
    with pytest.raises(UserInputError, match=r"is 48x48 but the video frames are 48x80"):
        predictor.add_new_mask(state, 0, 1, np.ones((48, 48), dtype=bool))


def torchvision_resnet_keys(depth: int) -> set[str]:
    """The state-dict keys of torchvision's `resnet{depth}`, from its architecture: BasicBlocks
    (2 convs) for 18, Bottlenecks (3 convs, projection shortcut also in layer1) for 50."""
    blocks, convs = {18: ([2, 2, 2, 2], 2), 50: ([3, 4, 6, 3], 3)}[depth]

    def conv_bn(conv: str, bn: str) -> list[str]:
        return [f"{conv}.weight"] + [f"{bn}.{n}" for n in ("weight", "bias", "running_mean", "running_var",
                                                           "num_batches_tracked")]
    keys = conv_bn("conv1", "bn1") + ["fc.weight", "fc.bias"]
    for stage, num_blocks in enumerate(blocks, start=1):
        for block in range(num_blocks):
            prefix = f"layer{stage}.{block}"
            for c in range(1, convs + 1):
                keys += conv_bn(f"{prefix}.conv{c}", f"{prefix}.bn{c}")
            if block == 0 and (stage > 1 or depth == 50):
                keys += conv_bn(f"{prefix}.downsample.0", f"{prefix}.downsample.1")
    return set(keys)


def test_resnet_keys_and_extra_input_channels():
    for depth in (18, 50):  # every key of torchvision's, less the classifier
        assert set(ResNet(depth).state_dict()) == torchvision_resnet_keys(depth) - {"fc.weight", "fc.bias"}
    r50 = ResNet(50).state_dict()
    assert tuple(r50["layer3.5.conv3.weight"].shape) == (1024, 256, 1, 1)
    assert tuple(r50["layer4.0.downsample.1.running_var"].shape) == (2048,)
    torch.manual_seed(0)
    rgb_net = ResNet(18).eval()
    torchvision_like = dict(rgb_net.state_dict(), **{"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    five_channel = ResNet(18, in_channels=5, num_stages=3).eval()
    five_channel.load_torchvision_weights(torchvision_like)
    image, masks = torch.randn(1, 3, 64, 64), torch.rand(1, 2, 64, 64)
    with torch.no_grad():
        expected = rgb_net(image)[:3]
        actual = five_channel(torch.cat([image, masks], dim=1))
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)
    with pytest.raises(ValueError, match="lack"):
        ResNet(50, num_stages=3).load_torchvision_weights(torchvision_like)


def test_imagenet_resnet_weights_load_through_the_config(tmp_path: Path):
    from sam2_video.config import load_config
    from sam2_video.train.cli import build_model

    torch.manual_seed(3)
    resnet18 = dict(ResNet(18).state_dict(), **{"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    weights = tmp_path / "resnet18-f37072fd.pth"
    torch.save(resnet18, weights)
    base = ["dataset.dataset_type=synthetic", "model.model=stcn", "model.image_size=64", "model.stcn.key_backbone=18"]
    config = load_config(None, [*base, f"model.stcn.key_resnet_weights={weights}",
                                f"model.stcn.value_resnet_weights={weights}"])
    model = build_model(config.model, config.dataset, verbose=False)
    key_net, value_net = model.key_encoder.backbone.state_dict(), model.value_encoder.backbone.state_dict()
    torch.testing.assert_close(key_net["layer3.1.conv2.weight"], resnet18["layer3.1.conv2.weight"])
    torch.testing.assert_close(value_net["conv1.weight"][:, :3], resnet18["conv1.weight"])
    assert not value_net["conv1.weight"][:, 3:].any()  # the mask channels start at zero

    with pytest.raises(UserInputError, match=r"resnet18-f37072fd\.pth: ResNet weights lack .* \(wrong depth\?\)"):
        config = load_config(None, [*base, "model.stcn.key_backbone=50", f"model.stcn.key_resnet_weights={weights}"])
        build_model(config.model, config.dataset, verbose=False)
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(UserInputError, match=r"notes\.pth: not a readable PyTorch state dict"):
        config = load_config(None, [*base, f"model.stcn.value_resnet_weights={tmp_path / 'notes.pth'}"])
        build_model(config.model, config.dataset, verbose=False)
    with pytest.raises(UserInputError, match=r"'model.stcn.key_resnet_weights' .*missing.pth is not a file"):
        load_config(None, [*base, f"model.stcn.key_resnet_weights={tmp_path / 'missing.pth'}"])
