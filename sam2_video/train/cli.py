"""`sam2-video train --config FILE.yaml [section.key=value ...] [--resume [--allow-changes]]`.

Builds the clip dataset, the model (SAM2 with the official training forward, or STCN), its loss and
the J&F validator from the run config, then runs the `Trainer`. Before anything is written, rank 0
checks `train.out_dir` (a writable folder, locked against a second `train`, no earlier run unless
resuming, the resumed config compatible with the checkpoint's). Under `torchrun` every process
runs this; the process group is set up here (NCCL on GPUs, gloo on CPUs).
"""
from __future__ import annotations

import argparse
import gc
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn

from sam2_video.config import CHECKPOINTABLE_MODULES, DataSection, ModelSection, RunConfig, load_config
from sam2_video.data import (
    ClipDataset,
    ClipTransform,
    COCOVideoDataset,
    SAVJsonDataset,
    PromptGenerator,
    SyntheticVideoDataset,
    VideoDataset,
    VOSFolderDataset,
    collate_fn,
)
from sam2_video.data.loader import distributed_rank_and_size
from sam2_video.errors import UserInputError
from sam2_video.io import atomic_path, check_output_folder
from sam2_video.model.run_checkpoint import load_training_checkpoint
from sam2_video.rng import seed_everything
from sam2_video.train.family import model_family
from sam2_video.train.resume_check import check_resume_config
from sam2_video.train.run_lock import RunLock, remove_partial_writes
from sam2_video.train.trainer import (
    LossFn,
    NonFiniteLossError,
    Trainer,
    TrainResult,
    Validator,
    optimizer_steps_per_epoch,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run config YAML (sections model:, dataset:, train:)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override config values, e.g. train.lr=1e-5 dataset.batch_size=2")
    parser.add_argument("--resume", action="store_true", help="continue from train.out_dir/last.pt exactly")
    parser.add_argument("--allow-changes", action="store_true",
                        help="with --resume: accept data and schedule changes (data paths, learning rates, ...) "
                             "against the checkpoint's config; model changes are never accepted")
    parser.add_argument("--break-stale-lock", action="store_true",
                        help="clear the lock a train process that is no longer running left in train.out_dir")


def build_train_dataset(config: RunConfig) -> ClipDataset:
    """The training clips of `config.dataset`, sampled and augmented for `config.model`'s recipe.

    `data_path` is, per `dataset_type`: vos, the DAVIS-layout folder; coco, the COCO-video JSON
    (images under `image_root`, default the JSON's folder); sav, the frames folder (masklets in
    `annotations_path`); video, the folder of frame folders (objects generated on the frames).
    """
    data, model = config.dataset, config.model
    common: dict[str, Any] = dict(
        clip_sampler=model_family(model).clip_sampler(data),
        transform=ClipTransform.sam2_training(model.image_size) if data.augment else ClipTransform(model.image_size),
        prompt_generator=PromptGenerator(
            prompt_types=data.prompt_types,
            num_of_pos_points=data.num_of_pos_points,
            include_center=data.include_center_point,
            num_of_neg_points=data.num_of_neg_points,
        ),
    )
    if data.dataset_type == "synthetic":
        return SyntheticVideoDataset(
            data.synthetic_videos, num_frames=data.synthetic_frames, image_size=model.image_size,
            seed=config.train.seed, num_objects=tuple(data.synthetic_objects), **common,
        )
    if data.dataset_type == "vos":
        return VOSFolderDataset(data.data_path, prompts_dir=data.prompts_dir, ignore_ids=data.ignore_ids,
                                video_list=data.video_list, **common)
    if data.dataset_type == "coco":
        return COCOVideoDataset(data.data_path, image_root=data.image_root, **common)
    if data.dataset_type == "sav":
        return SAVJsonDataset(data.data_path, data.annotations_path, annotation_kind=data.sav_annotation_kind,
                              video_list=data.video_list, **common)
    return VideoDataset(data.data_path, video_list=data.video_list, **common)


def build_model(model_section: ModelSection, data: DataSection, verbose: bool) -> nn.Module:
    """SAM2Model (official training forward, selective training) or STCN, on the CPU."""
    return model_family(model_section).build_model(data, verbose)


def build_loss(config: RunConfig, total_steps: int) -> LossFn:
    """`loss(outputs, batch)` of the model's recipe over `total_steps` optimizer steps."""
    return model_family(config.model).build_loss(config.train, total_steps)


def build_validator(config: RunConfig) -> Validator | None:
    """J&F on `dataset.val_data_path` (DAVIS layout) with the video predictor; None without held-out data.

    The validator is `validate(model, out_dir=None) -> {"J&F", "J", "F"}`; predictions go to
    `out_dir/<video>/<frame>.png` when given (the trainer passes only the model).
    """
    val_root = config.dataset.val_data_path
    return None if val_root is None else model_family(config.model).build_validator(val_root)


def _init_distributed() -> bool:
    """Join the `torchrun` process group when WORLD_SIZE > 1; returns whether this call created it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def build_trainer(config: RunConfig, validate: Validator | None = None) -> Trainer:
    """Dataset, model, loss, validator and the recipe's schedules wired into a `Trainer`.

    `validate` replaces the validator built from `dataset.val_data_path`.
    """
    rank, world_size = distributed_rank_and_size()
    seed_everything(config.train.seed)  # identical initial weights on every rank
    family = model_family(config.model)
    dataset = build_train_dataset(config)
    model = family.build_model(config.dataset, verbose=rank == 0)
    checkpointing = config.train.activation_checkpointing
    if checkpointing:
        model.set_activation_checkpointing(CHECKPOINTABLE_MODULES if checkpointing is True else checkpointing)
    steps = config.train.epochs * optimizer_steps_per_epoch(
        len(dataset), config.dataset.batch_size, config.train.grad_accumulation, world_size
    )
    loss = family.build_loss(config.train, steps)
    return Trainer(
        model,
        loss,
        dataset,
        config.train,
        batch_size=config.dataset.batch_size,
        num_workers=config.dataset.num_workers,
        shuffle=config.dataset.shuffle,
        collate_fn=collate_fn,
        validate=validate if validate is not None else build_validator(config),
        run_config=config.to_dict(),
        **family.trainer_hooks(dataset, loss, config.train.epochs),
    )


def prepare_run_folder(config: RunConfig, lock: RunLock, resume: bool, allow_changes: bool) -> dict[str, Any] | None:
    """Rank 0's checks before anything is written to `train.out_dir`; takes `lock`, then removes
    partial writes of a killed run. Returns the loaded `last.pt` when resuming."""
    out_dir = Path(config.train.out_dir)
    check_output_folder(out_dir, "train.out_dir")
    lock.acquire()
    checkpoint = None
    if resume:
        last = out_dir / "last.pt"
        if not last.is_file():
            raise UserInputError(f"{last}: no checkpoint to resume from (train without --resume first)")
        checkpoint = load_training_checkpoint(last)
        changes = check_resume_config(checkpoint.get("config"), config.to_dict(), str(last), allow_changes)
        if changes:
            print("resuming with a changed config:\n" + "\n".join(changes))
    else:
        for name in ("last.pt", "last_good.pt"):
            if (out_dir / name).exists():
                raise UserInputError(f"{out_dir / name} exists from an earlier run; continue it with --resume, "
                                     "or choose another train.out_dir (nothing was written)")
    removed = remove_partial_writes(out_dir)
    if removed:
        print(f"removed {len(removed)} partial file(s) an interrupted write left in {out_dir}: "
              + ", ".join(path.name for path in removed))
    return checkpoint


def train(
    config: RunConfig,
    resume: bool = False,
    validate: Validator | None = None,
    allow_changes: bool = False,
    break_stale_lock: bool = False,
) -> TrainResult:
    """Fine-tune as `config` says (the Python entry point behind `sam2-video train`).

    `validate` replaces the validator built from `dataset.val_data_path`; `allow_changes` and
    `break_stale_lock` are the command's `--allow-changes` and `--break-stale-lock`.
    """
    rank, world_size = distributed_rank_and_size()
    lock = RunLock(config.train.out_dir, break_stale=break_stale_lock)
    try:
        checkpoint, failure = None, None
        if rank == 0:
            try:
                checkpoint = prepare_run_folder(config, lock, resume, allow_changes)
            except UserInputError as err:
                failure = str(err)
        if world_size > 1:  # every rank stops when rank 0 refuses the folder
            shared = [failure]
            dist.broadcast_object_list(shared, src=0)
            failure = shared[0]
        if failure is not None:
            raise UserInputError(failure)
        trainer = build_trainer(config, validate)
        if trainer.is_main:
            with atomic_path(Path(config.train.out_dir) / "config.yaml") as tmp:
                tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return trainer.fit(resume=resume, checkpoint=checkpoint)
    finally:
        lock.release()


def lower_lr_command(args: argparse.Namespace, config: RunConfig, resume_step: int | None) -> str:
    """The command line that retries with 10x lower learning rates, from `last.pt` when it holds a step."""
    lr_keys = ("train.lr", "train.image_encoder_lr")
    kept = [override for override in args.overrides if override.split("=", 1)[0].strip() not in lr_keys]
    argv = ["sam2-video", "train"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        argv = ["torchrun", f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', '1')}", "-m", "sam2_video.cli", "train"]
    argv += ["--config", args.config, *kept,
             f"train.lr={config.train.lr / 10!r}", f"train.image_encoder_lr={config.train.image_encoder_lr / 10!r}"]
    if resume_step is not None:
        argv += ["--resume", "--allow-changes"]
    return shlex.join(argv)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    created_group = _init_distributed()
    rank = distributed_rank_and_size()[0]
    try:
        result = train(config, resume=args.resume, allow_changes=args.allow_changes,
                       break_stale_lock=args.break_stale_lock)
    except NonFiniteLossError as err:
        retry = (f"continue from step {err.resume_step}" if err.resume_step is not None
                 else "start again (check those videos' masks too)")
        print(f"sam2-video train: error: {err}.\nTo {retry} with 10x lower learning rates, run:\n"
              f"  {lower_lr_command(args, config, err.resume_step)}", file=sys.stderr)
        return 1
    finally:
        if created_group:
            # The DDP wrapper keeps the gloo process group alive; matplotlib's frames put the trainer in a
            # reference cycle, so free it now: freed at interpreter exit, gloo's threads abort the process.
            gc.collect()
            dist.destroy_process_group()
    if rank == 0:
        best = result.best_meter_values
        best_text = f", best J&F {best['J&F']:.2f} at step {int(best['step'])}" if "J&F" in best else ""
        print(
            f"trained {result.steps} steps ({result.epochs} epochs) in {result.seconds:.0f} s, "
            f"final loss {result.last_loss.get('core_loss', float('nan')):.4f}{best_text}; "
            f"checkpoints and logs in {result.out_dir}"
        )
    return 0
