"""`sam2-video export CKPT OUT.pt`: the model weights of a checkpoint, in the official SAM2 format.

The output is `{"model": state_dict}`, which `sam2_video.model.build.build_sam2(config, OUT.pt)` and the
official `sam2.build_sam.build_sam2(config_file, OUT.pt)` load. The weights must fit SAM2 exactly: those of
a training run are checked against a model built from the run's own config, those of a file without one
(an official or exported checkpoint) against every SAM2 preset. STCN runs and other models are refused,
so a file that would not load as SAM2 is never written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from sam2_video.config import ModelSection, stored_model_section
from sam2_video.errors import UserInputError
from sam2_video.io import atomic_path, check_output_file
from sam2_video.model.build import _describe
from sam2_video.model.presets import PRESET_NAMES, SAM2Config, sam2_config
from sam2_video.model.run_checkpoint import load_training_checkpoint
from sam2_video.train.family import model_family
from sam2_video.train.sam2_family import SAM2Family


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", type=Path,
                        help="training checkpoint (last.pt or best.pt of a SAM2 run) or official-format weights")
    parser.add_argument("output", metavar="OUT", type=Path,
                        help="where to write the official-format weights (must not exist)")


def _load(path: Path) -> dict[str, Any]:
    """The checkpoint dict at `path`; a UserInputError naming the file if it is not one."""
    checkpoint = load_training_checkpoint(path)
    model = checkpoint["model"]
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise UserInputError(f"{path}: not a checkpoint: expected a dict whose 'model' entry is a state dict of tensors")
    return checkpoint


def _differences(state_dict: dict[str, torch.Tensor], config: SAM2Config) -> dict[str, list[str]]:
    """How `state_dict` differs from that of SAM2 built with `config`: the non-empty ones of missing keys,
    unexpected keys and shape mismatches."""
    from sam2_video.model.sam2 import SAM2

    with torch.device("meta"):
        expected = SAM2(config).state_dict()
    found = {
        "missing keys": [k for k in expected if k not in state_dict],
        "unexpected keys": [k for k in state_dict if k not in expected],
        "shape mismatches": [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                             if k in state_dict and state_dict[k].shape != v.shape],
    }
    return {what: keys for what, keys in found.items() if keys}


def _summary(differences: dict[str, list[str]]) -> str:
    return "; ".join(f"{len(keys)} {what}: {_describe(keys)}" for what, keys in differences.items())


def _check_sam2_weights(checkpoint: dict[str, Any], source: Path) -> ModelSection | None:
    """Refuse `checkpoint` unless its weights have the keys and shapes of SAM2: of its run's preset for a
    training checkpoint, of some preset otherwise. The message names the mismatch. Returns the run's
    model section (None for official weights)."""
    run = stored_model_section(checkpoint.get("config"), str(source))
    state_dict = checkpoint["model"]
    if run is not None:
        family = model_family(run)
        if not isinstance(family, SAM2Family):
            raise UserInputError(
                f"{source}: a {run.model!r} training checkpoint, not SAM2: export writes official "
                "SAM2 checkpoints only (predict --model stcn takes an STCN run's last.pt or best.pt as it is)"
            )
        sam2 = family.sam2_config()
        differences = _differences(state_dict, sam2)
        if differences:
            raise UserInputError(f"{source}: its weights do not match {sam2.name}, the preset of its run: "
                                 f"{_summary(differences)}")
        return run
    by_preset = {}
    for name in PRESET_NAMES:
        by_preset[name] = _differences(state_dict, sam2_config(name))
        if not by_preset[name]:
            return None
    closest = min(by_preset, key=lambda name: sum(map(len, by_preset[name].values())))
    raise UserInputError(f"{source}: not a SAM2 checkpoint: its weights match no SAM2 preset; against the "
                         f"closest, {closest}: {_summary(by_preset[closest])}")


def export_weights(checkpoint_path: str | Path, output_path: str | Path) -> Path:
    """Write `{"model": state_dict}` of a SAM2 checkpoint to `output_path` atomically; never overwrites."""
    return _export(Path(checkpoint_path), Path(output_path))[0]


def _export(checkpoint_path: Path, output_path: Path) -> tuple[Path, ModelSection | None]:
    """`export_weights`, also returning the run's model section (None for official weights): the
    checkpoint is read once."""
    if output_path.exists() and not output_path.is_dir():
        raise UserInputError(f"{output_path} already exists; choose another output name (export never overwrites)")
    check_output_file(output_path, "OUT")
    checkpoint = _load(checkpoint_path)
    run_section = _check_sam2_weights(checkpoint, checkpoint_path)
    state_dict = {name: tensor.detach().cpu().contiguous() for name, tensor in checkpoint["model"].items()}
    with atomic_path(output_path) as tmp:
        torch.save({"model": state_dict}, tmp)
    return output_path, run_section


def run(args: argparse.Namespace) -> int:
    output, run_section = _export(Path(args.checkpoint), Path(args.output))
    print(f"wrote {output}: model weights only, official SAM2 format {{'model': state_dict}}")
    if run_section is not None and run_section.multimask_output_for_tracking is False:
        print("note: this run tracked with one mask per frame (model.multimask_output_for_tracking: false); give the "
              "official predictor the same, e.g. hydra overrides ++model.multimask_output_for_tracking=false "
              "++model.dynamic_multimask_via_stability=false", file=sys.stderr)
    return 0
