"""STCN's training loss: bootstrapped cross-entropy over background + objects on frames 1..T-1.

Before `start_warm` steps every pixel counts; from `end_warm` on only the hardest `top_p` of each
clip's pixels do; in between the kept fraction falls linearly from 1 to `top_p` (STCN: 20k, 70k,
0.15 of 150k iterations).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sam2_video.data.batch import BatchedVideoDatapoint
from sam2_video.model.stcn import STCNOutputs
from sam2_video.train.loss import CORE_LOSS_KEY

# STCN's warm-up as fractions of its 150k main-training iterations
STCN_START_WARM_FRACTION = 20_000 / 150_000
STCN_END_WARM_FRACTION = 70_000 / 150_000


class BootstrappedCE:
    """Cross-entropy over the hardest fraction of pixels, the fraction shrinking with the step."""

    def __init__(self, start_warm: int, end_warm: int, top_p: float = 0.15) -> None:
        if not 0 <= start_warm <= end_warm:
            raise ValueError(f"need 0 <= start_warm <= end_warm, got {start_warm}, {end_warm}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.start_warm = start_warm
        self.end_warm = end_warm
        self.top_p = top_p

    def kept_fraction(self, step: int) -> float:
        if step < self.start_warm:
            return 1.0
        if step >= self.end_warm:
            return self.top_p
        return self.top_p + (1 - self.top_p) * (self.end_warm - step) / (self.end_warm - self.start_warm)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, step: int) -> torch.Tensor:
        """logits [B, C, H, W], target [B, H, W] class indices -> mean over clips of each clip's
        mean loss over its hardest pixels."""
        raw = F.cross_entropy(logits, target, reduction="none").flatten(1)  # [B, H*W]
        fraction = self.kept_fraction(step)
        if fraction >= 1.0:
            return raw.mean()
        kept = max(int(raw.shape[1] * fraction), 1)
        return raw.topk(kept, dim=1, sorted=False).values.mean()


class STCNLoss:
    """`loss(outputs, batch) -> {"core_loss", "loss_frame_N"..., "kept_fraction"}` for the trainer.

    `step`, the position in the warm-up schedule, is the trainer's count of optimizer steps done:
    pass `on_step_start=loss.set_step` to the `Trainer`, which restores the count on resume.
    Build it with `STCNLoss.for_total_steps(n)`, n = optimizer steps of the run, to place the
    warm-up where STCN does relative to the length of training.
    """

    def __init__(self, start_warm: int, end_warm: int, top_p: float = 0.15) -> None:
        self.criterion = BootstrappedCE(start_warm, end_warm, top_p)
        self.step = 0

    def set_step(self, step: int) -> None:
        self.step = step

    @classmethod
    def for_total_steps(cls, total_steps: int, top_p: float = 0.15) -> "STCNLoss":
        return cls(round(total_steps * STCN_START_WARM_FRACTION), round(total_steps * STCN_END_WARM_FRACTION), top_p)

    def __call__(self, outputs: STCNOutputs, batch: BatchedVideoDatapoint) -> dict[str, torch.Tensor]:
        slots = outputs.slot_objects
        losses: dict[str, torch.Tensor] = {}
        total = outputs.logits[0].new_zeros(())
        for t, logits in enumerate(outputs.logits, start=1):
            real = ~batch.frame_is_padding[t]  # [B]: a repeated last frame adds no loss
            if not bool(real.any()):
                continue
            target = class_targets(batch.masks[t], slots)
            losses[f"loss_frame_{t}"] = self.criterion(logits[real], target[real], self.step)
            total = total + losses[f"loss_frame_{t}"]
        losses[CORE_LOSS_KEY] = total
        losses["kept_fraction"] = torch.tensor(self.criterion.kept_fraction(self.step))
        return losses


def class_targets(masks: torch.Tensor, slot_objects: torch.Tensor) -> torch.Tensor:
    """Per-pixel class [B, H, W] (0 background, k+1 object slot k) from masks [O, H, W] of one frame
    and slot_objects [B, K] (-1 = empty slot). Where objects overlap, the later slot wins."""
    target = torch.zeros((slot_objects.shape[0], *masks.shape[-2:]), dtype=torch.long, device=masks.device)
    for k in range(slot_objects.shape[1]):
        valid = slot_objects[:, k] >= 0
        obj_masks = masks[slot_objects[:, k].clamp(min=0)].bool() & valid[:, None, None]
        target[obj_masks] = k + 1
    return target
