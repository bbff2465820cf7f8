"""Activation checkpointing (`train.activation_checkpointing`): same gradients and losses, less memory kept."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from sam2_video.config import CHECKPOINTABLE_MODULES, load_config
from sam2_video.errors import UserInputError
from sam2_video.model import layers
from sam2_video.model.run_checkpoint import load_training_checkpoint
from sam2_video.model.sam2_train import SAM2Model
from sam2_video.train.cli import build_trainer
from sam2_video.train.loss import MultiStepMultiMaskLoss
from sam2_video.train.memory import LiveTensorMemory

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from train_step import our_batch, synthetic_clip  # noqa: E402


@pytest.fixture(scope="module")
def tiny_everything_trainable() -> SAM2Model:
    torch.manual_seed(0)
    model = SAM2Model(config_path="sam2.1_hiera_t", image_size=128, verbose=False)
    model.configure_for_training(sorted({name.split(".")[0] for name, _ in model.named_parameters()}))
    return model.train()


def _checkpoint_calls(monkeypatch) -> list[str]:
    """Records the class of the module each checkpointed call belongs to."""
    calls = []
    real = layers.checkpoint

    def counting(function, *args, **kwargs):
        calls.append(type(getattr(function, "__self__", function)).__name__)
        assert kwargs["use_reentrant"] is False
        return real(function, *args, **kwargs)

    monkeypatch.setattr(layers, "checkpoint", counting)
    return calls


def _step(model: SAM2Model, batch, checkpointing: bool):
    """Gradients, loss and the tensor bytes kept for backward after the forward pass."""
    model.set_activation_checkpointing(CHECKPOINTABLE_MODULES if checkpointing else ())
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # same prompts and dropout masks on both runs
    with LiveTensorMemory() as memory:
        loss = MultiStepMultiMaskLoss()(model(batch), batch.masks)["core_loss"]
        kept_for_backward = memory.current
        loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return grads, loss.item(), kept_for_backward, torch.rand(3)


def test_gradients_with_checkpointing_equal_those_without(tiny_everything_trainable, monkeypatch) -> None:
    model = tiny_everything_trainable
    assert model.memory_attention.layers[0].dropout1.p > 0  # dropout on: the recomputation must replay it
    images, masks = synthetic_clip(frames=2, objects=2, size=128)
    batch = our_batch(images, masks)
    plain, plain_loss, plain_kept, plain_rng = _step(model, batch, checkpointing=False)
    calls = _checkpoint_calls(monkeypatch)
    checkpointed, loss, kept, rng = _step(model, batch, checkpointing=True)
    # every Hiera block (12), 4 memory-attention layers, memory encoder, decoder and prompt encoder ran checkpointed
    assert len(calls) >= len(model.image_encoder.trunk.blocks) + len(model.memory_attention.layers) + 3
    assert loss == plain_loss
    assert checkpointed.keys() == plain.keys() and len(plain) > 400  # nearly all 470 tensors get gradients
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in plain.values()))
    worst = max((checkpointed[name] - plain[name]).abs().max() for name in plain)
    assert worst <= 1e-6 * norm
    assert torch.equal(rng, plain_rng)  # the recomputation leaves the global RNG where it was
    # at 128 px the outputs and the memory bank are a large share of what stays; at 1024 px see
    # benchmarks/train_memory.py
    assert kept < 0.7 * plain_kept


def test_no_recomputation_without_autograd_or_trainable_modules(monkeypatch) -> None:
    torch.manual_seed(0)
    model = SAM2Model(config_path="sam2.1_tiny_test", image_size=64, verbose=False,
                      activation_checkpointing=CHECKPOINTABLE_MODULES)
    calls = _checkpoint_calls(monkeypatch)
    batch = our_batch(*synthetic_clip(frames=2, objects=1, size=64))
    with torch.no_grad():
        model(batch)
    assert calls == []  # inference (and validation) never recompute
    model.train()(batch)
    # default trainable set (memory modules): the frozen image encoder runs without autograd, so its
    # blocks do not recompute; the modules gradients flow through to the memory modules do (the prompt
    # encoder too when a correction round feeds it a predicted mask)
    assert {"MemoryAttentionLayer", "MemoryEncoder", "MaskDecoder"} <= set(calls)
    assert "MultiScaleBlock" not in calls


def _losses(tmp_path: Path, checkpointing: bool) -> list[float]:
    config = load_config(None, [
        "dataset.dataset_type=synthetic", "dataset.synthetic_videos=3", "dataset.synthetic_frames=2",
        "dataset.video_clip_length=2", "dataset.max_num_objects=1", "dataset.num_workers=0", "dataset.augment=false",
        "model.config_path=sam2.1_hiera_t", "model.image_size=64",
        "model.trainable_modules=[image_encoder,memory_attention,memory_encoder,sam_mask_decoder,sam_prompt_encoder]",
        "train.epochs=1", "train.val_every_epochs=0", "train.device=cpu", "train.lr=1e-3", "train.image_encoder_lr=1e-3",
        f"train.out_dir={tmp_path / str(checkpointing)}", f"train.activation_checkpointing={str(checkpointing).lower()}",
    ])
    trainer = build_trainer(config)
    assert trainer.module.image_encoder.trunk.blocks[0].checkpoint_activations is checkpointing
    return [row["core_loss"] for row in trainer.fit().history]


def test_three_training_steps_give_identical_losses(tmp_path: Path) -> None:
    plain = _losses(tmp_path, checkpointing=False)
    assert len(plain) == 3
    assert _losses(tmp_path, checkpointing=True) == plain


def test_unknown_module_names_the_valid_ones() -> None:
    with pytest.raises(UserInputError, match="image_encoder, memory_attention, memory_encoder, sam_mask_decoder"):
        load_config(None, ["dataset.dataset_type=synthetic", "train.activation_checkpointing=[hiera]"])
    model = SAM2Model(config_path="sam2.1_tiny_test", image_size=64, verbose=False)
    with pytest.raises(UserInputError, match="'hiera' cannot be checkpointed; valid names: image_encoder"):
        model.set_activation_checkpointing(["hiera"])
    with pytest.raises(UserInputError, match="applies to model sam2 only"):
        load_config(None, ["dataset.dataset_type=synthetic", "model.model=stcn", "train.activation_checkpointing=true"])


def test_out_of_memory_stops_with_advice_and_keeps_the_last_checkpoint(tmp_path: Path, monkeypatch, capsys) -> None:
    """A step that runs out of device memory (simulated on the CPU through the model's forward) ends
    `sam2-video train` with what to change, not a traceback, and last.pt keeps the last finished step."""
    from sam2_video.cli import main

    real_forward, calls = SAM2Model.forward, []

    def forward_running_out_of_memory(self, batch):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(self, batch)

    monkeypatch.setattr(SAM2Model, "forward", forward_running_out_of_memory)
    out_dir = tmp_path / "run"
    code = main(["train", "--config", str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"),
                 f"train.out_dir={out_dir}", "train.epochs=1", "train.checkpoint_every_steps=1", "train.val_every_epochs=0",
                 "dataset.synthetic_videos=4", "dataset.batch_size=1", "dataset.num_workers=0", "model.image_size=64"])
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error
    assert "sam2-video train: error: out of CPU memory at optimizer step 3" in error
    assert f"{out_dir / 'last.pt'} (step 2) is kept" in error
    for advice in ("model.image_size", "dataset.video_clip_length", "model.trainable_modules",
                   "train.activation_checkpointing: true"):
        assert advice in error
    assert load_training_checkpoint(out_dir / "last.pt")["steps"] == 2
