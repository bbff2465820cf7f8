"""`sam2-video demo`: the built-in main job, end to end on generated data, on the CPU.

1. generates synthetic videos in DAVIS layout: `OUT/data/train` to train on, `OUT/data/select` to
   choose the checkpoint, `OUT/data/val` held out for the reported scores;
2. scores, on the held-out videos, the untrained model and the copy-the-first-mask baseline;
3. trains a tiny model from random weights with the regular trainer (`OUT/train`: checkpoints,
   logs, loss curve), scoring J&F on the selection videos every other epoch and keeping the best
   one as `best.pt`;
4. scores `best.pt` on the held-out videos, writes every prediction as palettized PNGs
   (`OUT/eval/<untrained|copy_first_mask|finetuned>/<video>/<frame>.png`) and `OUT/report.json`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sam2_video.config import DataSection, ModelSection, RunConfig, STCNSection, TrainSection
from sam2_video.data import synthesize
from sam2_video.errors import UserInputError
from sam2_video.evaluate.davis import evaluate_davis
from sam2_video.io import atomic_path, check_output_folder
from sam2_video.predict.masks_io import VOID_ID, read_mask_png, write_palette_png
from sam2_video.train.checkpoint import load_training_checkpoint
from sam2_video.train.cli import build_model, train
from sam2_video.train.family import model_family

SAM2_TRAINABLE_MODULES = [
    "image_encoder", "sam_prompt_encoder", "sam_mask_decoder", "memory_attention", "memory_encoder",
    "obj_ptr_proj", "obj_ptr_tpos_proj", "mask_downsample", "maskmem_tpos_enc", "no_mem_embed",
    "no_mem_pos_enc", "no_obj_embed_spatial", "no_obj_ptr",
]


# Generated training videos, one clip each per epoch. SAM2 from random weights first learns to segment, then
# to carry the prompted object through its memory (held-out J&F jumps from ~0.1 to ~0.5 within an epoch or
# two; `MemoryAttention.read_memory_at_own_position` brings that jump into the first epochs) and keeps
# improving for as long as it trains. STCN also gains from more distinct clips: on seed 0 it scored 0.804
# with 96 videos, 0.826 and 0.851 with 192 (two threads, one thread).
TRAIN_VIDEOS = 192

# Epochs over those videos. SAM2: 7 keeps the whole demo within 10 minutes on 2 CPU cores (8 took 11 min
# 10 s on seed 0); it scored 0.876 / 0.794 / 0.808 held out on seeds 0-2 (epochs 6 / 7 / 7), 8 epochs
# 0.815 / 0.851 / 0.790 (README). STCN's J&F on the selection videos was still
# rising at epoch 8: on seed 0 it scored 0.826 held out after 8 epochs and 0.869 after 12 (two threads,
# 10 min 39 s and 14 min 23 s of training).
DEFAULT_EPOCHS = {"sam2": 7, "stcn": 12}


def training_epochs(args: argparse.Namespace) -> int:
    """`--epochs`, or the model's default."""
    return DEFAULT_EPOCHS[args.model] if args.epochs is None else args.epochs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder (must be new or empty)")
    parser.add_argument("--model", choices=("sam2", "stcn"), default="sam2",
                        help="sam2: the tiny SAM2.1 preset; stcn: the STCN baseline (ResNet-18 keys)")
    parser.add_argument("--epochs", type=int, help="training epochs over the generated videos "
                        f"(default: {DEFAULT_EPOCHS['sam2']} for sam2, {DEFAULT_EPOCHS['stcn']} for stcn)")
    parser.add_argument("--train-videos", type=int, default=TRAIN_VIDEOS, help="generated training videos")
    parser.add_argument("--select-videos", type=int, default=8,
                        help="generated videos that choose the checkpoint (best epoch), apart from the held-out ones")
    # 24, not 8: the same weights scored 0.45 to 0.74 on five sets of 8 held-out videos (0.59 on all 40)
    parser.add_argument("--val-videos", type=int, default=24, help="generated held-out videos the report scores")
    parser.add_argument("--frames", type=int, default=16, help="frames per generated video")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse out-of-range flags before anything is written; the message names the flag and the range."""
    minimums = [("--epochs", training_epochs(args), 1, "training epochs"),
                ("--train-videos", args.train_videos, 2, "one optimizer step takes 2 clips"),
                ("--select-videos", args.select_videos, 1, "videos to choose the checkpoint on"),
                ("--val-videos", args.val_videos, 1, "held-out videos to score"),
                ("--frames", args.frames, 2, "a first frame to prompt and one to track"),
                ("--seed", args.seed, 0, "random seed")]
    for flag, value, minimum, meaning in minimums:
        if value < minimum:
            raise UserInputError(f"{flag} {value}: must be at least {minimum} ({meaning})")
    multiple, smallest = (32, 64) if args.model == "sam2" else (16, 32)
    if args.image_size % multiple or args.image_size < smallest:
        raise UserInputError(f"--image-size {args.image_size}: --model {args.model} needs a multiple of {multiple}, "
                             f"at least {smallest}")


# Objects per generated training video (the held-out videos always have 1-3). SAM2 learns to use its
# memory only when a clip holds several objects that saliency alone cannot tell apart: with 1-3 objects
# and up to 2 per clip it reached held-out J&F 0.37-0.46, with 2-4 and up to 3 per clip 0.77 at epoch 6.
TRAINING_OBJECTS = {"sam2": (2, 4), "stcn": (1, 3)}
MAX_OBJECTS_PER_CLIP = {"sam2": 3, "stcn": 2}


def demo_config(args: argparse.Namespace, out: Path, train_root: Path, select_root: Path) -> RunConfig:
    """The run config of the demo (also written to OUT/train/config.yaml by the trainer); the trainer
    validates on `select_root` every other epoch."""
    if args.model == "sam2":
        # Why these (benchmarks/sam2_training_diagnosis.py on earlier demo runs, README "What the demo shows"):
        # - one decoded mask on tracked frames: from random weights the IoU head collapses to ~0 for all
        #   three candidates, so the official pick-of-three kept a near-random mask (J 0.42 where the best
        #   candidate had 0.78) and the memory built from it was noise the tracker learned to ignore; and
        #   no evaluation-time swap to those candidates, which one-mask training leaves untrained;
        # - mask prompts only: held-out videos are prompted with masks, the tracked frames' loss did not
        #   depend on the first prompt's kind, and a click or box frame costs 8 decoder passes of corrections;
        # - no memory-attention dropout: steps take 25% less time on the CPU (the fused attention kernel)
        #   and a network this small trained this briefly needs no regulariser.
        model = ModelSection(model="sam2", config_path="sam2.1_tiny_test", image_size=args.image_size,
                             trainable_modules=SAM2_TRAINABLE_MODULES, multimask_output_for_tracking=False,
                             dynamic_multimask_via_stability=False, prob_to_use_pt_input_for_train=0.0,
                             memory_attention_dropout=0.0)
    else:
        model = ModelSection(model="stcn", image_size=args.image_size, trainable_modules=[],
                             stcn=STCNSection(key_backbone=18, value_dim=128, decoder_dim=64))
    data = DataSection(
        dataset_type="vos", data_path=str(train_root), val_data_path=str(select_root),
        video_clip_length=8 if args.model == "sam2" else 3, max_num_objects=MAX_OBJECTS_PER_CLIP[args.model],
        # clips load in the training process (35 ms per batch): on a 2-core CPU a loader process takes a
        # core from PyTorch's two threads, and one epoch's steps took 0.89 s instead of 0.77 s (medians
        # of three alternating one-epoch runs each)
        batch_size=2, num_workers=0,
        augment=False,
    )
    train_section = TrainSection(
        out_dir=str(out / "train"), epochs=training_epochs(args), lr=1e-3, image_encoder_lr=1e-3, layer_decay=1.0,
        weight_decay=0.01, warmup_steps=20, grad_clip=1.0, seed=args.seed,
        # held-out J&F moved by up to 0.3 between validations, late in training too (0.76, 0.47, 0.76
        # at epochs 4, 6, 8 on seed 1): every other epoch and the last are scored on the selection videos
        # (~5 s each) and the best one is kept
        val_every_epochs=2,
        # SAM2's focal loss weighs background pixels 3:1 (alpha 0.25), made for a pretrained decoder. From
        # random weights, while the tracker cannot yet find the prompted object among the others, that
        # weighting makes an empty mask the best answer: tracked frames stayed empty (held-out J&F
        # 0.08) for 4-9 epochs. Unweighted (-1), the tracker took over at epoch 4 on the slowest seed.
        # (STCN's loss is a cross-entropy, without a focal term.)
        focal_alpha=-1.0 if args.model == "sam2" else TrainSection.focal_alpha,
    )
    return RunConfig(model=model, dataset=data, train=train_section)


# Seeds of the held-out and checkpoint-selection videos: `--seed` plus these (the training videos use `--seed`).
HELD_OUT_SEED_OFFSET, SELECTION_SEED_OFFSET = 1_000_003, 2_000_003


def generate_videos(args: argparse.Namespace, data_root: Path) -> tuple[Path, Path, Path]:
    """Write the demo's training, checkpoint-selection and held-out videos (`data_root/train`,
    `data_root/select`, `data_root/val`) for these flags and return the three folders.

    The selection and held-out videos have seeds of their own and always 1-3 objects, whatever the
    model trains on: choosing the checkpoint on other videos than the scored ones keeps the held-out
    score an estimate of what the chosen weights do on new videos."""
    train_root = synthesize(data_root / "train", args.train_videos, num_frames=args.frames,
                            image_size=args.image_size, seed=args.seed, num_objects=TRAINING_OBJECTS[args.model])
    select_root = synthesize(data_root / "select", args.select_videos, num_frames=args.frames,
                             image_size=args.image_size, seed=args.seed + SELECTION_SEED_OFFSET)
    val_root = synthesize_held_out(data_root / "val", args.val_videos, args.frames, args.image_size, args.seed)
    return train_root, select_root, val_root


def synthesize_held_out(folder: Path, count: int, num_frames: int, image_size: int, seed: int) -> Path:
    """The demo's held-out videos for `--seed seed` in `folder`; video i is the same whatever `count`
    (benchmarks/demo_heldout_spread.py scores more of them than the demo does)."""
    return synthesize(folder, count, num_frames=num_frames, image_size=image_size, seed=seed + HELD_OUT_SEED_OFFSET)


def copy_first_mask(val_root: Path, out_root: Path) -> None:
    """Baseline: every object keeps, on all later frames, the mask it has on its first annotated frame."""
    for video in sorted(p for p in (val_root / "Annotations").iterdir() if p.is_dir()):
        current = None
        for png in sorted(video.glob("*.png")):
            ids = read_mask_png(png)
            if current is None:
                current = np.zeros_like(ids, dtype=np.uint8)
            new_ids = set(np.unique(ids).tolist()) - {0, VOID_ID} - set(np.unique(current).tolist())
            for obj_id in sorted(new_ids):
                current[(ids == obj_id) & (current == 0)] = obj_id
            write_palette_png(out_root / video.name / png.name, current)


def score(val_root: Path, pred_root: Path) -> float:
    return float(evaluate_davis(val_root / "Annotations", pred_root).summary()["J&F-Mean"])


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    out = Path(args.out)
    check_output_folder(out, "--out")
    if out.exists() and any(out.iterdir()):
        raise UserInputError(f"--out {out}: folder exists and is not empty; choose a new folder (nothing was changed)")
    torch.manual_seed(args.seed)
    print(f"[1/4] generating {args.train_videos} training, {args.select_videos} checkpoint-selection and "
          f"{args.val_videos} held-out videos in {out / 'data'}")
    train_root, select_root, val_root = generate_videos(args, out / "data")
    config = demo_config(args, out, train_root, select_root)
    validate = model_family(config.model).build_validator(str(val_root))  # the held-out videos

    print("[2/4] scoring the untrained model and the copy-the-first-mask baseline")
    untrained = build_model(config.model, config.dataset, verbose=False)
    jf_untrained = validate(untrained, out / "eval" / "untrained")["J&F"]
    copy_first_mask(val_root, out / "eval" / "copy_first_mask")
    jf_copy = score(val_root, out / "eval" / "copy_first_mask")

    print(f"[3/4] training {args.model} from random weights ({training_epochs(args)} epochs, CPU)")
    start = time.perf_counter()
    result = train(config)
    train_seconds = time.perf_counter() - start

    chosen_epoch = int(result.best_meter_values["epoch"])
    print(f"[4/4] scoring the trained model of epoch {chosen_epoch} (best J&F on the selection videos)")
    trained = build_model(config.model, config.dataset, verbose=False)
    final = result.out_dir / "best.pt"
    trained.load_state_dict(load_training_checkpoint(final)["model"])
    jf_finetuned = validate(trained, out / "eval" / "finetuned")["J&F"]

    report = {
        "model": args.model,
        "jf_untrained": jf_untrained,
        "jf_copy_first_mask": jf_copy,
        "jf_finetuned": jf_finetuned,
        "train_seconds": round(train_seconds, 1),
        "train_steps": result.steps,
        "checkpoint": str(final),
        "checkpoint_epoch": chosen_epoch,
    }
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    print(f"\nheld-out J&F on {args.val_videos} synthetic videos ({args.model}, {train_seconds:.0f} s of training):")
    print(f"  {'untrained model':<22}{jf_untrained:8.3f}")
    print(f"  {'copy first mask':<22}{jf_copy:8.3f}")
    print(f"  {'fine-tuned model':<22}{jf_finetuned:8.3f}")
    print(f"report: {out / 'report.json'}")
    return 0
