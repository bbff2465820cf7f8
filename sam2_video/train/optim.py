"""AdamW parameter groups and the learning-rate schedule of the SAM2 fine-tuning recipe."""
from __future__ import annotations

import math
import re
from collections import defaultdict

import torch
from torch import nn

IMAGE_ENCODER_PREFIX = "image_encoder."
TRUNK_BLOCK = re.compile(r"image_encoder\.trunk\.blocks\.(\d+)\.")
# learned embeddings and tokens (official SAM2 parameter names)
NO_DECAY_NAME_PARTS = ("pos_embed", "no_obj_ptr", "no_mem_embed", "no_mem_pos_enc", "no_obj_embed", "mask_tokens", "iou_token", "obj_score_token")


def _strip_wrappers(name: str) -> str:
    """Drop DDP / wrapper prefixes so `module.image_encoder.x` and `model.image_encoder.x` both match."""
    index = name.find(IMAGE_ENCODER_PREFIX)
    return name[index:] if index >= 0 else name


def _is_no_weight_decay(name: str, param: nn.Parameter, norm_param_names: set[str]) -> bool:
    """Biases, normalisation weights and embeddings / learned tokens get no weight decay."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or leaf == "bias" or name in norm_param_names or any(p in name for p in NO_DECAY_NAME_PARTS)


def _trunk_layer_scale(name: str, num_blocks: int, layer_decay: float) -> float:
    """Official layer decay inside the Hiera trunk: block i gets decay^(num_blocks - i), embeddings decay^(num_blocks+1)."""
    match = TRUNK_BLOCK.search(name)
    if match is not None:
        layer_id = int(match.group(1)) + 1
    elif "pos_embed" in name or "patch_embed" in name:
        layer_id = 0
    else:
        layer_id = num_blocks + 1
    return layer_decay ** (num_blocks + 1 - layer_id)


def build_param_groups(
    model: nn.Module, lr: float, image_encoder_lr: float, weight_decay: float, layer_decay: float = 1.0
) -> list[dict]:
    """AdamW groups over the trainable parameters of `model`.

    Parameters under `image_encoder` use `image_encoder_lr` (times the layer-decay scale inside
    `image_encoder.trunk`), the others `lr`; biases, norms and embeddings get weight decay 0.
    Each group carries `base_lr` (its lr before the schedule) and `param_names`.
    """
    norm_param_names = {
        f"{module_name}.{param_name}" if module_name else param_name
        for module_name, module in model.named_modules()
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d, nn.Embedding))
        or "norm" in type(module).__name__.lower()
        for param_name, _ in module.named_parameters(recurse=False)
    }
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    block_ids = [int(m.group(1)) for name, _ in trainable if (m := TRUNK_BLOCK.search(_strip_wrappers(name)))]
    all_block_ids = [int(m.group(1)) for name, _ in model.named_parameters() if (m := TRUNK_BLOCK.search(name))]
    num_blocks = max(all_block_ids + block_ids, default=-1) + 1

    groups: dict[tuple[float, float], dict] = defaultdict(lambda: {"params": [], "param_names": []})
    for name, param in trainable:
        short = _strip_wrappers(name)
        if short.startswith(IMAGE_ENCODER_PREFIX):
            group_lr = image_encoder_lr
            if short.startswith(IMAGE_ENCODER_PREFIX + "trunk.") and layer_decay != 1.0:
                group_lr *= _trunk_layer_scale(short, num_blocks, layer_decay)
        else:
            group_lr = lr
        group_wd = 0.0 if _is_no_weight_decay(name, param, norm_param_names) else weight_decay
        group = groups[(group_lr, group_wd)]
        group["params"].append(param)
        group["param_names"].append(name)
    return [
        {"params": g["params"], "param_names": g["param_names"], "lr": lr_, "base_lr": lr_, "weight_decay": wd}
        for (lr_, wd), g in sorted(groups.items(), key=lambda item: item[0])
    ]


def build_optimizer(
    model: nn.Module, lr: float, image_encoder_lr: float, weight_decay: float, layer_decay: float = 1.0
) -> torch.optim.AdamW:
    groups = build_param_groups(model, lr, image_encoder_lr, weight_decay, layer_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters; check model.trainable_modules")
    return torch.optim.AdamW(groups)


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, final_ratio: float) -> float:
    """lr multiplier at optimizer step `step`: linear warm-up to 1, then cosine down to `final_ratio`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, final_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-optimizer-step schedule applied to every group's `base_lr`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, total_steps, warmup_steps, final_ratio)
    )
