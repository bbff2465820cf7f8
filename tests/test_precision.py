"""`train.precision`: fp16 loss scaling saved and resumed exactly, overflowing steps skipped, clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sam2_video.config import load_config
from sam2_video.errors import UserInputError
from sam2_video.model.run_checkpoint import load_training_checkpoint
from sam2_video.train import precision as precision_module
from sam2_video.train.loss import CORE_LOSS_KEY
from sam2_video.train.precision import MAX_SKIPPED_STEPS_IN_A_ROW, resolve_precision
from sam2_video.train.trainer import NonFiniteLossError

from test_trainer import CrashAtCall, make_trainer, toy_loss


class NanAtCalls:
    """The toy loss, NaN on the given calls (an fp16 overflow stand-in)."""

    def __init__(self, calls: set[int] | None) -> None:
        self.loss, self.nan_calls, self.calls = toy_loss(), calls, 0

    def __call__(self, outputs, batch):
        self.calls += 1
        losses = self.loss(outputs, batch)
        if self.nan_calls is None or self.calls in self.nan_calls:
            losses[CORE_LOSS_KEY] = losses[CORE_LOSS_KEY] * float("nan")
        return losses


def test_fp16_overflowing_step_is_skipped_and_training_goes_on(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, loss_fn=NanAtCalls({3}), precision="fp16", checkpoint_every_steps=2)
    assert trainer.precision.name == "fp16" and trainer.precision.scaler is not None
    result = trainer.fit()
    losses = [row[CORE_LOSS_KEY] for row in result.history]
    assert result.steps == 16 and torch.isnan(torch.tensor(losses[2])) and torch.isfinite(torch.tensor(losses[3:])).all()
    checkpoint = load_training_checkpoint(tmp_path / "last.pt")
    assert checkpoint["scaler"]["scale"] <= 65536.0 / 2  # halved at the NaN step
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


def test_fp16_scaler_state_is_saved_and_resumed_exactly(tmp_path: Path) -> None:
    settings = dict(precision="fp16", checkpoint_every_steps=3)
    full = make_trainer(tmp_path / "full", loss_fn=NanAtCalls({2, 5}), **settings).fit()
    crashing = make_trainer(tmp_path / "resumed", loss_fn=CrashAtCall(NanAtCalls({2, 5}), crash_at=8), **settings)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.fit()  # dies in step 8; last.pt holds step 6, after two skipped steps
    saved = load_training_checkpoint(tmp_path / "resumed" / "last.pt")
    assert saved["steps"] == 6 and saved["scaler"]["scale"] <= 65536.0 / 4
    resumed = make_trainer(tmp_path / "resumed", **settings)  # the loss is finite from here on
    result = resumed.fit(resume=True)
    assert resumed.precision.scaler.get_scale() == full_scale(tmp_path / "full")
    assert [r[CORE_LOSS_KEY] for r in result.history] == [r[CORE_LOSS_KEY] for r in full.history[6:]]
    full_state = load_training_checkpoint(tmp_path / "full" / "last.pt")
    resumed_state = load_training_checkpoint(tmp_path / "resumed" / "last.pt")
    assert resumed_state["scaler"] == full_state["scaler"]
    for name, value in resumed_state["model"].items():
        assert torch.equal(value, full_state["model"][name]), name


def full_scale(out_dir: Path) -> float:
    return load_training_checkpoint(out_dir / "last.pt")["scaler"]["scale"]


def test_fp16_stops_when_every_step_overflows(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, loss_fn=NanAtCalls(None), precision="fp16", num_clips=MAX_SKIPPED_STEPS_IN_A_ROW + 4)
    with pytest.raises(NonFiniteLossError, match=f"after {MAX_SKIPPED_STEPS_IN_A_ROW} skipped fp16 steps in a row"):
        trainer.fit()
    assert trainer.step == MAX_SKIPPED_STEPS_IN_A_ROW - 1


def test_fp32_and_bf16_have_no_scaler_and_stop_on_nan(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, loss_fn=NanAtCalls({2}), precision="auto")
    assert trainer.precision.name == "fp32" and trainer.precision.state_dict() is None  # auto on the CPU
    with pytest.raises(NonFiniteLossError, match="loss is nan at optimizer step 2"):
        trainer.fit()


def test_auto_picks_bf16_or_fp16_by_the_gpu_and_bf16_without_it_suggests_fp16(monkeypatch) -> None:
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert resolve_precision("auto", cuda).name == "fp16"
    with pytest.raises(UserInputError, match="bf16 is not supported natively by Tesla T4.*use train.precision=fp16"):
        resolve_precision("bf16", cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation or True)
    assert precision_module.bf16_is_native(cuda)
    assert resolve_precision("auto", cuda).name == "bf16"
    assert resolve_precision("auto", torch.device("cpu")).name == "fp32"


def test_old_amp_key_says_what_to_write_instead() -> None:
    with pytest.raises(UserInputError, match="'train.amp' was replaced by 'train.precision': write 'precision: auto'"):
        load_config(None, ["dataset.dataset_type=synthetic", "train.amp=true"])
    with pytest.raises(UserInputError, match="expected one of auto, bf16, fp16, fp32"):
        load_config(None, ["dataset.dataset_type=synthetic", "train.precision=fp8"])
