"""Our SAM2 training loss against the official `training.loss_fns.MultiStepMultiMasksAndIous`."""
from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch

from conftest import require_reference
from sam2_video.train.loss import CORE_LOSS_KEY, LossWeights, MultiStepMultiMaskLoss


def _reference_loss_module():
    """Import the official loss. `training.loss_fns` imports `training.trainer` only for the
    constant CORE_LOSS_KEY, and the trainer pulls in tensordict; when that is missing, a stand-in
    `training.trainer` providing the constant is used for the import (the loss code is unchanged)."""
    require_reference()
    try:
        return importlib.import_module("training.loss_fns")
    except ImportError:
        pass
    stand_in = types.ModuleType("training.trainer")
    stand_in.CORE_LOSS_KEY = CORE_LOSS_KEY
    saved = sys.modules.get("training.trainer")
    sys.modules["training.trainer"] = stand_in
    try:
        sys.modules.pop("training.loss_fns", None)
        return importlib.import_module("training.loss_fns")
    finally:
        if saved is None:
            sys.modules.pop("training.trainer", None)
        else:
            sys.modules["training.trainer"] = saved


def _random_outputs(num_frames: int, num_objects: int, size: int, steps_per_frame: list[int]) -> list[dict]:
    """Official training-output format: per frame, lists over prediction steps."""
    outputs = []
    for t in range(num_frames):
        masks, ious, scores = [], [], []
        for step in range(steps_per_frame[t]):
            num_masks = 3 if step == 0 and t == 0 else 1  # multimask on the first click only
            masks.append(torch.randn(num_objects, num_masks, size, size) * 3)
            ious.append(torch.rand(num_objects, num_masks))
            scores.append(torch.randn(num_objects, 1) * 2)
        outputs.append(
            {
                "multistep_pred_multimasks_high_res": masks,
                "multistep_pred_ious": ious,
                "multistep_object_score_logits": scores,
            }
        )
    return outputs


@pytest.mark.parametrize("supervise_all_iou", [True, False])
def test_loss_matches_reference(supervise_all_iou: bool) -> None:
    loss_fns = _reference_loss_module()
    torch.manual_seed(1)
    num_frames, num_objects, size = 4, 3, 32
    outputs = _random_outputs(num_frames, num_objects, size, steps_per_frame=[3, 1, 8, 1])
    targets = torch.rand(num_frames, num_objects, size, size) > 0.6
    targets[1, 2] = False  # an object absent on a frame: its mask losses must vanish
    targets[2, 0] = False
    weights = LossWeights(mask=20.0, dice=1.0, iou=1.0, object_score=1.0)
    reference = loss_fns.MultiStepMultiMasksAndIous(
        weight_dict={"loss_mask": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_class": 1.0},
        supervise_all_iou=supervise_all_iou,
        iou_use_l1_loss=True,
        pred_obj_scores=True,
        focal_gamma_obj_score=0.0,
        focal_alpha_obj_score=-1.0,
    )
    ours = MultiStepMultiMaskLoss(weights, supervise_all_iou=supervise_all_iou, iou_use_l1_loss=True)

    expected = reference(outputs, targets)
    actual = ours(outputs, targets)
    for key in ["loss_mask", "loss_dice", "loss_iou", "loss_class", CORE_LOSS_KEY]:
        torch.testing.assert_close(actual[key], torch.as_tensor(expected[key]).float(), rtol=1e-5, atol=1e-5, msg=key)


def test_loss_gradients_match_reference() -> None:
    loss_fns = _reference_loss_module()
    torch.manual_seed(2)
    outputs = _random_outputs(2, 2, 16, steps_per_frame=[2, 1])
    targets = torch.rand(2, 2, 16, 16) > 0.5
    leaves = [t.requires_grad_() for out in outputs for values in out.values() for t in values]
    reference = loss_fns.MultiStepMultiMasksAndIous(
        weight_dict={"loss_mask": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_class": 1.0},
        supervise_all_iou=True,
        iou_use_l1_loss=True,
        pred_obj_scores=True,
        focal_gamma_obj_score=0.0,
        focal_alpha_obj_score=-1.0,
    )
    expected = torch.autograd.grad(reference(outputs, targets)[CORE_LOSS_KEY], leaves)
    actual = torch.autograd.grad(MultiStepMultiMaskLoss()(outputs, targets)[CORE_LOSS_KEY], leaves)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
