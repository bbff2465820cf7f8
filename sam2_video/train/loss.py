"""The SAM2 training loss: focal + dice on the best of the multimask outputs, IoU-prediction L1
and object-score BCE, summed over frames and over the prediction steps (initial click plus
correction clicks) of each frame. Same numbers as the official `MultiStepMultiMasksAndIous`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

CORE_LOSS_KEY = "core_loss"


@dataclass(frozen=True)
class LossWeights:
    """Weight of each term in `core_loss` (official SAM2.1 fine-tuning values)."""

    mask: float = 20.0  # sigmoid focal loss
    dice: float = 1.0
    iou: float = 1.0  # predicted IoU vs actual IoU
    object_score: float = 1.0  # object present / absent


def focal_loss_per_mask(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Sigmoid focal loss averaged over pixels: logits, targets [N,M,H,W] -> [N,M]."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(2).mean(-1)


def dice_loss_per_mask(logits: Tensor, targets: Tensor) -> Tensor:
    """1 - smoothed Dice of the sigmoid: logits, targets [N,M,H,W] -> [N,M]."""
    prob = logits.sigmoid().flatten(2)
    targets = targets.flatten(2)
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


def iou_prediction_loss(logits: Tensor, targets: Tensor, pred_ious: Tensor, use_l1: bool) -> Tensor:
    """Error of the predicted IoU against the IoU of the thresholded mask: [N,M,H,W], [N,M] -> [N,M]."""
    pred_mask = logits.flatten(2) > 0
    gt_mask = targets.flatten(2) > 0
    intersection = (pred_mask & gt_mask).sum(-1).float()
    union = (pred_mask | gt_mask).sum(-1).float()
    actual_ious = intersection / union.clamp(min=1.0)
    if use_l1:
        return F.l1_loss(pred_ious, actual_ious, reduction="none")
    return F.mse_loss(pred_ious, actual_ious, reduction="none")


class MultiStepMultiMaskLoss(nn.Module):
    """Loss over frames and prediction steps of the training forward's outputs.

    `forward(outputs, targets)`: outputs is a list over T frames of dicts with
    `multistep_pred_multimasks_high_res` (list over steps of [O,M,H,W] logits),
    `multistep_pred_ious` (list of [O,M]) and `multistep_object_score_logits` (list of [O,1]);
    targets [T,O,H,W] bool/float ground truth; `frame_is_padding` [T,O] bool (optional) marks frames
    repeated to fill a short clip, which add nothing to any term. Returns `loss_mask`, `loss_dice`, `loss_iou`,
    `loss_class` and their weighted sum `core_loss` (scalars, already divided by the number of
    objects, averaged over DDP ranks as in the official code).
    """

    def __init__(
        self,
        weights: LossWeights = LossWeights(),
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        supervise_all_iou: bool = True,
        iou_use_l1_loss: bool = True,
    ) -> None:
        super().__init__()
        self.weights = weights
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.supervise_all_iou = supervise_all_iou
        self.iou_use_l1_loss = iou_use_l1_loss

    def forward(
        self, outputs: Sequence[dict], targets: Tensor, frame_is_padding: Tensor | None = None
    ) -> dict[str, Tensor]:
        if len(outputs) != len(targets):
            raise ValueError(f"{len(outputs)} frames of outputs but {len(targets)} frames of targets")
        num_objects = self._num_objects(targets)
        zero = targets.new_zeros((), dtype=torch.float32)
        totals = {"loss_mask": zero, "loss_dice": zero, "loss_iou": zero, "loss_class": zero}
        if frame_is_padding is None:
            frame_is_padding = torch.zeros(targets.shape[:2], dtype=torch.bool, device=targets.device)
        for frame_out, frame_targets, padding in zip(outputs, targets, frame_is_padding):
            if bool(padding.all()):
                continue
            target = frame_targets.unsqueeze(1).float()  # [O,1,H,W]
            real = (~padding).float()[:, None]  # [O,1]
            steps = zip(
                frame_out["multistep_pred_multimasks_high_res"],
                frame_out["multistep_pred_ious"],
                frame_out["multistep_object_score_logits"],
            )
            for mask_logits, pred_ious, object_score_logits in steps:
                step_losses = self._step_losses(
                    mask_logits.float(), target, pred_ious.float(), object_score_logits.float(), num_objects, real
                )
                for key, value in step_losses.items():
                    totals[key] = totals[key] + value
        totals[CORE_LOSS_KEY] = (
            self.weights.mask * totals["loss_mask"]
            + self.weights.dice * totals["loss_dice"]
            + self.weights.iou * totals["loss_iou"]
            + self.weights.object_score * totals["loss_class"]
        )
        return totals

    @staticmethod
    def _num_objects(targets: Tensor) -> float:
        """Objects per batch, averaged over DDP ranks, at least 1."""
        count = torch.tensor(float(targets.shape[1]), device=targets.device)
        world_size = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            world_size = dist.get_world_size()
        return max(count.item() / world_size, 1.0)

    def _step_losses(
        self,
        mask_logits: Tensor,
        target: Tensor,
        pred_ious: Tensor,
        object_score_logits: Tensor,
        num_objects: float,
        real: Tensor,
    ) -> dict[str, Tensor]:
        """Losses of one prediction step: mask_logits [O,M,H,W], target [O,1,H,W], pred_ious [O,M],
        real [O,1] (0 for an object whose clip is padding on this frame)."""
        target = target.expand_as(mask_logits)
        focal = focal_loss_per_mask(mask_logits, target, self.focal_alpha, self.focal_gamma) / num_objects
        dice = dice_loss_per_mask(mask_logits, target) / num_objects
        iou = iou_prediction_loss(mask_logits, target, pred_ious, self.iou_use_l1_loss) / num_objects
        object_present = (target[:, 0] > 0).flatten(1).any(-1, keepdim=True).float()  # [O,1]
        supervised = object_present * real
        object_score = (
            (F.binary_cross_entropy_with_logits(object_score_logits, object_present, reduction="none") * real)
            .mean(1)
            .sum()
            / num_objects
        )
        if mask_logits.shape[1] > 1:  # back-propagate only the best of the multimask outputs
            best = torch.argmin(self.weights.mask * focal + self.weights.dice * dice, dim=-1, keepdim=True)
            iou = iou.mean(-1, keepdim=True) if self.supervise_all_iou else iou.gather(1, best)
            focal, dice = focal.gather(1, best), dice.gather(1, best)
        return {
            "loss_mask": (focal * supervised).sum(),
            "loss_dice": (dice * supervised).sum(),
            "loss_iou": (iou * supervised).sum(),
            "loss_class": object_score,
        }
