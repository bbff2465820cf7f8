"""Training checkpoints: atomic writes, restoring the optimizer, and the RNG states for exact resume
(reading one is `sam2_video.model.run_checkpoint`'s, as predict/ reads them too).

A training checkpoint (`last.pt`, `best.pt`) is a dict with keys
`model` (full state dict), `optimizer`, `scheduler`, `epoch` (epochs finished),
`batches_in_epoch` (batches of the current epoch consumed), `steps` (optimizer steps),
`loss` (last logged loss terms), `time_elapsed` (training seconds), `best_meter_values`
(e.g. {"J&F": 71.3, "step": 400}), `config` (the resolved `RunConfig.to_dict()`), `rng`
(per rank: `sam2_video.rng.capture_rng_state()`), `scaler` (the fp16 `GradScaler` state under
`train.precision` fp16, else None: bf16 and fp32 need no loss scaling) and `format`
("sam2_video.train/1"). Everything is tensors and plain Python values, so the file loads with `torch.load(weights_only=True)`
and its `model` entry is the official SAM2 format.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from sam2_video.io import atomic_path
from sam2_video.model.run_checkpoint import load_training_checkpoint  # noqa: F401  (the trainer loads through here)

CHECKPOINT_FORMAT = "sam2_video.train/1"


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write `payload` with torch.save so that `path` is either the old file or the complete new one."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def restore_optimizer(checkpoint: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: LambdaLR) -> None:
    """Load the checkpoint's optimizer moments and schedule position, keeping this run's learning
    rates, weight decay and schedule shape (a resume with other values regroups the parameters).

    Each parameter's state is matched by name through the groups' `param_names`.
    """
    saved = checkpoint["optimizer"]
    by_name = {
        name: saved["state"][index]
        for group in saved["param_groups"]
        for name, index in zip(group["param_names"], group["params"])
        if index in saved["state"]
    }
    current = optimizer.state_dict()
    state = {
        index: by_name[name]
        for group in current["param_groups"]
        for name, index in zip(group["param_names"], group["params"])
        if name in by_name
    }
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
    scheduler.load_state_dict(checkpoint["scheduler"])
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["lr"] = group["initial_lr"] * factor(scheduler.last_epoch)
