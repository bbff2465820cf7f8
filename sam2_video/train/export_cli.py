"""`sam2-video export CKPT OUT.pt`: the model weights of a training checkpoint, in the official format.

The output is `{"model": state_dict}`, which `sam2_video.model.build.build_sam2(config, OUT.pt)` and the
official `sam2.build_sam.build_sam2(config_file, OUT.pt)` load. For SAM2 runs the weights are first
loaded strictly into a model built from the checkpoint's own config, so a file that would not load
is never written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sam2_video.errors import UserInputError
from sam2_video.io import atomic_path
from sam2_video.train.checkpoint import load_training_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="training checkpoint (last.pt or best.pt)")
    parser.add_argument("output", type=Path, help="where to write the official-format weights (must not exist)")


def _check_loads_into_sam2(state_dict: dict[str, torch.Tensor], model_config: dict, source: Path) -> str:
    """Load `state_dict` strictly into SAM2 built from the run's model config; returns the config name."""
    from sam2_video.model.sam2 import SAM2
    from sam2_video.model.presets import sam2_config

    config = sam2_config(model_config["config_path"], image_size=model_config["image_size"],
                         num_maskmem=model_config["num_maskmem"])
    with torch.device("meta"):
        model = SAM2(config)
    result = model.load_state_dict(state_dict, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise UserInputError(
            f"{source}: its weights do not match {config.name}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return config.name


def export_weights(checkpoint_path: str | Path, output_path: str | Path) -> Path:
    """Write `{"model": state_dict}` of the training checkpoint to `output_path` atomically; never overwrites."""
    checkpoint_path, output_path = Path(checkpoint_path), Path(output_path)
    if output_path.exists():
        raise UserInputError(f"{output_path} already exists; choose another output name (export never overwrites)")
    checkpoint = load_training_checkpoint(checkpoint_path)
    state_dict = {name: tensor.detach().cpu().contiguous() for name, tensor in checkpoint["model"].items()}
    model_config = (checkpoint.get("config") or {}).get("model")
    if model_config is not None and model_config.get("model") == "sam2":
        _check_loads_into_sam2(state_dict, model_config, checkpoint_path)
    with atomic_path(output_path) as tmp:
        torch.save({"model": state_dict}, tmp)
    return output_path


def run(args: argparse.Namespace) -> int:
    output = export_weights(args.checkpoint, args.output)
    print(f"wrote {output}: model weights only, official SAM2 format {{'model': state_dict}}")
    return 0
