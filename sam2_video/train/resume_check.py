"""What may change between a run and its `--resume`.

The resumed run config is compared key by key (`section.key`, `model.stcn.key`) with the `config`
entry of the checkpoint (read through `load_training_checkpoint`, so an older run's is in today's shape). Model changes (preset, sizes, trainable modules, ...) never resume: the weights and
optimizer state belong to the old model. Data and schedule changes (paths, learning rates, loss
weights, ...) need `--allow-changes`. `train.epochs` may grow, and settings that change neither the
weights nor the clips (loader workers, device, logging and validation cadence) are free.
"""
from __future__ import annotations

from typing import Any

from sam2_video.errors import UserInputError

FREE_KEYS = frozenset({
    "dataset.num_workers", "model.feature_cache_frames", "train.out_dir", "train.device", "train.precision",
    "train.activation_checkpointing",
    "train.log_every_steps", "train.val_every_epochs", "train.val_every_steps", "train.checkpoint_every_steps",
})
# model-section keys that set the starting weights or the training recipe, not the network
MODEL_RECIPE_KEYS = frozenset({
    "model.checkpoint_path", "model.stcn.key_resnet_weights", "model.stcn.value_resnet_weights",
    "model.prob_to_use_pt_input_for_train", "model.prob_to_use_box_input_for_train",
    "model.num_init_cond_frames_for_train", "model.num_frames_to_correct_for_train",
    "model.num_correction_pt_per_frame", "model.prob_to_sample_from_gt_for_train", "model.stcn.mem_every",
})


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(`section.key`, old, new) for every value that differs, sub-sections (`model.stcn`) key by key;
    keys the old config lacks are skipped."""
    differences = []
    for key, value in new.items():
        if key not in old:
            continue
        if isinstance(value, dict) and isinstance(old[key], dict):
            differences += config_differences(old[key], value, f"{prefix}{key}.")
        elif old[key] != value:
            differences.append((f"{prefix}{key}", old[key], value))
    return differences


def _kind(key: str, old: Any, new: Any) -> str:
    if key in FREE_KEYS or (key == "train.epochs" and new >= old):
        return "free"
    if key.startswith("model.") and key not in MODEL_RECIPE_KEYS:
        return "model"
    return "data/schedule"


def check_resume_config(old: Any, new: dict[str, Any], checkpoint: str, allow_changes: bool) -> list[str]:
    """Refuse a resume whose config changes the model, or the data/schedule without `allow_changes`;
    returns the lines naming the data/schedule changes that were accepted."""
    if not isinstance(old, dict):
        raise UserInputError(f"{checkpoint}: holds no run config to compare the resumed one with; "
                             "it was not written by `sam2-video train`")
    lines, model_changed, needs_flag = [], False, False
    for key, old_value, new_value in config_differences(old, new):
        kind = _kind(key, old_value, new_value)
        model_changed |= kind == "model"
        needs_flag |= kind == "data/schedule"
        if kind != "free":
            lines.append(f"  {key}: {old_value!r} -> {new_value!r}  ({kind} change)")
    if model_changed or (needs_flag and not allow_changes):
        advice = ("the model cannot change on --resume: its weights and optimizer state belong to the old one; "
                  "train it into a new train.out_dir" if model_changed else
                  "pass --allow-changes to resume with these data/schedule changes")
        raise UserInputError(f"--resume: the config differs from the one {checkpoint} was trained with:\n"
                             + "\n".join(lines) + f"\n{advice} (nothing was written)")
    return lines
