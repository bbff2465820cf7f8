"""Frames repeated to fill a short clip (`frame_is_padding`) take no part in training: changing
their content changes neither the loss nor any gradient, for SAM2 and STCN."""
from __future__ import annotations

import pytest
import torch

from sam2_video.config import ModelSection, RunConfig, STCNSection
from sam2_video.data.batch import VideoClip, collate_fn
from sam2_video.model.sam2_train import SAM2Model
from sam2_video.train.cli import build_loss, build_model

SIZE = 64


def _clip(name: str, num_frames: int, seed: int) -> VideoClip:
    """A clip with two moving squares (objects 1, 2), both visible on every frame."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(num_frames, 3, SIZE, SIZE, generator=generator)
    masks = torch.zeros(num_frames, 2, SIZE, SIZE, dtype=torch.bool)
    for t in range(num_frames):
        masks[t, 0, 8 + 2 * t : 28 + 2 * t, 10:30] = True
        masks[t, 1, 36:56, 30 + 2 * t : 50 + 2 * t] = True
    return VideoClip(images=images, masks=masks, object_ids=torch.tensor([1, 2]), video_name=name,
                     frame_names=[f"{t:05d}" for t in range(num_frames)])


def _loss_and_gradients(model: torch.nn.Module, loss_fn, batch, seed: int) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same simulated prompts in every call
    losses = loss_fn(model(batch), batch)
    losses["core_loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(losses["core_loss"].detach()), grads


def _scramble(batch, frames: slice, video: int):
    """The batch with the images and masks of `video`'s frames `frames` replaced by noise."""
    generator = torch.Generator().manual_seed(123)
    batch.img_batch[frames, video] = torch.randn(batch.img_batch[frames, video].shape, generator=generator)
    objects = batch.obj_to_frame_idx[0, :, 1] == video
    noise = torch.rand(batch.masks[frames][:, objects].shape, generator=generator) > 0.5
    masks = batch.masks[frames]
    masks[:, objects] = noise
    batch.masks[frames] = masks
    return batch


@pytest.mark.parametrize("kind", ["sam2", "stcn"])
def test_padded_frames_change_neither_loss_nor_gradients(kind: str) -> None:
    if kind == "sam2":
        section = ModelSection(model="sam2", config_path="sam2.1_tiny_test", image_size=SIZE,
                               trainable_modules=["image_encoder", "sam_prompt_encoder", "sam_mask_decoder",
                                                  "memory_attention", "memory_encoder", "obj_ptr_proj"])
        clips = [_clip("long", 6, 0), _clip("short", 3, 1)]  # the short clip's frames 3..5 are padding
    else:
        section = ModelSection(model="stcn", image_size=SIZE, trainable_modules=[],
                               stcn=STCNSection(key_backbone=18, value_dim=32, decoder_dim=32))
        clips = [_clip("long", 3, 0), _clip("short", 2, 1)]  # the short clip's frame 2 is padding
    config = RunConfig(model=section)
    torch.manual_seed(0)
    model = build_model(config.model, config.dataset, verbose=False)
    if isinstance(model, SAM2Model):
        # all three simulated prompt kinds and several conditioning frames, over a few seeds below
        assert model.recipe.num_init_cond_frames_for_train > 1
    model.train()
    if kind == "stcn":
        # BatchNorm's batch statistics mix every image of a batch (real or not) by design; they are
        # frozen here so that the test sees only what the loss and the memory do with padded frames
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
    loss_fn = build_loss(config, total_steps=10)
    padded = slice(clips[1].images.shape[0], clips[0].images.shape[0])
    for seed in range(4):
        batch = collate_fn(clips)
        assert bool(batch.frame_is_padding[padded, 1].all()) and not bool(batch.frame_is_padding[:, 0].any())
        loss, grads = _loss_and_gradients(model, loss_fn, batch, seed)
        loss_scrambled, grads_scrambled = _loss_and_gradients(model, loss_fn, _scramble(collate_fn(clips), padded, 1), seed)
        assert loss_scrambled == pytest.approx(loss, rel=1e-6, abs=1e-7)
        assert grads.keys() == grads_scrambled.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grads_scrambled[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    # the same change to real frames does change the loss: the comparison above can fail
    real_changed = _scramble(collate_fn(clips), slice(1, padded.start), 1)
    loss_real_changed, _ = _loss_and_gradients(model, loss_fn, real_changed, 0)
    loss, _ = _loss_and_gradients(model, loss_fn, collate_fn(clips), 0)
    assert abs(loss_real_changed - loss) > 1e-4
