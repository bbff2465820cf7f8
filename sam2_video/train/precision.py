"""The numeric precision of a training step: autocast dtype and, for fp16, the loss scaler.

Why a policy: the official trainer forces bf16 autocast, which GPUs before Ampere (T4, V100) do
not have natively (emulated at a fraction of the speed, or failing). fp16 runs there, but small
gradients underflow in fp16, so the loss is multiplied by a scale before backward
(`torch.amp.GradScaler`) and the gradients divided by it before clipping and the optimizer step; a
step whose gradients overflowed (inf / NaN) is skipped and the scale halved. bf16 has fp32's
exponent range and needs no scaler. The CPU runs fp32 unless told otherwise.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch

from sam2_video.errors import UserInputError

# The scaler halves its scale at every skipped step; this many skips in a row (from 65536 down to
# below 1/16) means the overflow comes from the model or the data, not from the scale, and training
# stops as it does in bf16 / fp32.
MAX_SKIPPED_STEPS_IN_A_ROW = 20
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def bf16_is_native(device: torch.device) -> bool:
    """Whether `device` runs bf16 natively (CUDA: compute capability 8.0+; the CPU: always, if slowly)."""
    if device.type != "cuda":
        return True
    return torch.cuda.is_bf16_supported(including_emulation=False)


class Precision:
    """`autocast()`, `backward(loss)` and `step(optimizer)` for one of bf16, fp16 (with a GradScaler)
    or fp32 on `device`; `state_dict()` is the scaler's state for `last.pt` (None without one)."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name = name
        self.device = device
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
        self.skipped_in_a_row = 0

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=DTYPES[self.name], enabled=self.name != "fp32")

    @property
    def handles_non_finite(self) -> bool:
        """fp16: a NaN / inf loss or gradient is an overflow the scaler answers by skipping the step."""
        return self.scaler is not None

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the scale (before clipping them)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """The optimizer step; False when the scaler skipped it because the gradients overflowed."""
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()  # host sync: a skipped step shows as a lowered scale
        self.scaler.step(optimizer)
        self.scaler.update()
        applied = self.scaler.get_scale() >= scale
        self.skipped_in_a_row = 0 if applied else self.skipped_in_a_row + 1
        return applied

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore the scaler (a checkpoint without one, e.g. from bf16, starts a fresh scale)."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def resolve_precision(setting: str, device: torch.device) -> Precision:
    """`train.precision` (auto | bf16 | fp16 | fp32) on `device`; bf16 where the GPU lacks it raises."""
    if setting == "auto":
        if device.type != "cuda":
            return Precision("fp32", device)
        return Precision("bf16" if bf16_is_native(device) else "fp16", device)
    if setting == "bf16" and not bf16_is_native(device):
        raise UserInputError(
            f"train.precision: bf16 is not supported natively by {torch.cuda.get_device_name(device)} "
            f"({device}; bf16 needs compute capability 8.0 or newer); use train.precision=fp16 "
            "(autocast with loss scaling) or auto"
        )
    return Precision(setting, device)
