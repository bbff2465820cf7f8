"""Why does a SAM2 fine-tune track well or badly? Diagnosis of a trained run on its held-out videos.

    python benchmarks/sam2_training_diagnosis.py runs/demo          # a `sam2-video demo` output folder
    python benchmarks/sam2_training_diagnosis.py RUN_DIR --val DAVIS_FOLDER   # any SAM2 `train` run

Prints, for the run's `last.pt`:
1. held-out loss per term and per first-prompt kind (mask, box, one click, one click + correction
   clicks), split into prompted frames (all decoder steps) and tracked frames (no prompt);
2. held-out J per frame distance from each object's prompted frame, with the memory as trained and
   with the memory zeroed (memory attention reads zeros: does tracking use the memory at all?), the
   predicted / true area (a tracker that shrinks the mask frame after frame shows it) and the failed
   frames split into objects lost to the background and objects taken over by another object;
3. on tracked frames (mask prompt on the first frame): J of the mask the IoU head chooses against
   the best of the decoder's multimask outputs, and the IoU each output predicts against its real J;
4. gradient norms per module over training (from `metrics.jsonl`, first / middle / last quarter).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import yaml

from sam2_video.config import load_config
from sam2_video.data.batch import collate_fn
from sam2_video.evaluate.davis import region_similarity
from sam2_video.predict.masks_io import read_mask_png
from sam2_video.predict.video_predictor import SAM2VideoPredictor
from sam2_video.train.checkpoint import load_training_checkpoint
from sam2_video.train.cli import build_loss, build_model, build_train_dataset
from sam2_video.train.metrics_log import read_metrics
from sam2_video.train.validate import predict_video

PROMPT_KINDS = {  # TrainingRecipe settings forcing one first-prompt kind on one conditioning frame
    "mask": dict(prob_to_use_pt_input_for_train=0.0),
    "box": dict(prob_to_use_pt_input_for_train=1.0, prob_to_use_box_input_for_train=1.0),
    "click": dict(prob_to_use_pt_input_for_train=1.0, prob_to_use_box_input_for_train=0.0),
    "click+corrections": dict(prob_to_use_pt_input_for_train=1.0, prob_to_use_box_input_for_train=0.0,
                              num_frames_to_correct_for_train=2),
}
DISTANCE_BINS = [(1, 1), (2, 3), (4, 7), (8, 15), (16, 10**9)]


def loss_per_prompt_kind(model, config, val_root: Path, num_batches: int) -> None:
    data = dataclasses.replace(config.dataset, data_path=str(val_root), dataset_type="vos", augment=False)
    dataset = build_train_dataset(dataclasses.replace(config, dataset=data))
    loss_fn = build_loss(config, total_steps=1)
    base = model.recipe
    print(f"\n1. held-out loss per term ({num_batches} batches of {data.batch_size} clips of {data.video_clip_length} frames)")
    print(f"   {'first prompt':<19}{'frames':<10}{'core':>9}{'mask':>9}{'dice':>9}{'iou':>9}{'class':>9}")
    model.train()
    for kind, settings in PROMPT_KINDS.items():
        one_prompted_frame = dict(num_init_cond_frames_for_train=1, rand_init_cond_frames_for_train=False,
                                  num_frames_to_correct_for_train=1, rand_frames_to_correct_for_train=False)
        model.recipe = dataclasses.replace(base, **{**one_prompted_frame, **settings})
        sums: dict[str, defaultdict] = {"prompted": defaultdict(float), "tracked": defaultdict(float)}
        for index in range(num_batches):
            torch.manual_seed(index)
            batch = collate_fn([dataset[(index * data.batch_size + i) % len(dataset)] for i in range(data.batch_size)])
            with torch.no_grad():
                outputs = model(batch)
            for t, out in enumerate(outputs):
                group = "prompted" if t == 0 else "tracked"
                for key, value in loss_fn([out], _one_frame(batch, t)).items():
                    if torch.is_tensor(value) and value.numel() == 1:
                        sums[group][key] += float(value) / num_batches
        for group, terms in sums.items():
            print(f"   {kind:<19}{group:<10}" + "".join(f"{terms[k]:9.3f}" for k in
                  ("core_loss", "loss_mask", "loss_dice", "loss_iou", "loss_class")))
    model.recipe = base


def _one_frame(batch, t: int):
    return dataclasses.replace(batch, masks=batch.masks[t : t + 1],
                               frame_is_padding=batch.frame_is_padding[t : t + 1],
                               obj_to_frame_idx=batch.obj_to_frame_idx[t : t + 1])


@dataclasses.dataclass
class DistanceStats:
    """Per bin of frame distance from an object's prompted frame, over the frames where it is visible:
    J, predicted / true area, and failures (J < FAILED_J) split by who has most of its true pixels."""

    j: list[float] = dataclasses.field(default_factory=list)
    area_ratio: list[float] = dataclasses.field(default_factory=list)
    lost: int = 0  # most of the object's true pixels predicted as background
    taken: int = 0  # most of them predicted as another object (the rest of the failures: masks far too large)


FAILED_J = 0.2


def j_per_distance(model, val_root: Path, zero_memory: bool) -> dict[tuple[int, int], DistanceStats]:
    """`DistanceStats` per bin of frame distance from each object's first annotated (prompted) frame."""
    hook = None
    if zero_memory:
        def zero(module, args, kwargs):
            kwargs["memory"] = torch.zeros_like(kwargs["memory"])
            return args, kwargs
        hook = model.memory_attention.register_forward_pre_hook(zero, with_kwargs=True)
    per_bin: dict[tuple[int, int], DistanceStats] = defaultdict(DistanceStats)
    try:
        model.eval()
        predictor = SAM2VideoPredictor(model)
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            for annotations in sorted(p for p in (val_root / "Annotations").iterdir() if p.is_dir()):
                out = Path(tmp) / annotations.name
                predict_video(predictor, val_root / "JPEGImages" / annotations.name, annotations, out)
                gts = [read_mask_png(p) for p in sorted(annotations.glob("*.png"))]
                preds = [read_mask_png(out / p.name) for p in sorted(annotations.glob("*.png"))]
                for obj in sorted(set(np.unique(np.stack(gts)).tolist()) - {0, 255}):
                    first = next(t for t, gt in enumerate(gts) if (gt == obj).any())
                    for t in range(first + 1, len(gts)):
                        truth = gts[t] == obj
                        if not truth.any():
                            continue
                        stats = next(per_bin[b] for b in DISTANCE_BINS if b[0] <= t - first <= b[1])
                        j = region_similarity(truth, preds[t] == obj)
                        stats.j.append(j)
                        stats.area_ratio.append(float((preds[t] == obj).sum() / truth.sum()))
                        if j < FAILED_J:
                            ids, counts = np.unique(preds[t][truth], return_counts=True)
                            owner = ids[counts.argmax()]
                            stats.lost += int(owner == 0)
                            stats.taken += int(owner not in (0, obj))
    finally:
        if hook is not None:
            hook.remove()
    return dict(per_bin)


def multimask_choice(model, config, val_root: Path) -> None:
    """Is the IoU head choosing well among the multimask outputs of tracked frames?"""
    data = dataclasses.replace(config.dataset, data_path=str(val_root), dataset_type="vos", augment=False)
    dataset = build_train_dataset(dataclasses.replace(config, dataset=data))
    model.eval()  # mask prompt on frame 0, as validation
    chosen, per_output, predicted = [], [], []
    for index in range(len(dataset)):
        torch.manual_seed(index)
        batch = collate_fn([dataset[index]])
        with torch.no_grad():
            outputs = model(batch)
        for t in range(1, batch.num_frames):
            gt = batch.masks[t]
            visible = gt.flatten(1).any(1)
            final = outputs[t]["pred_masks_high_res"][:, 0] > 0
            multi = outputs[t]["multistep_pred_multimasks_high_res"][-1] > 0  # [O,M,H,W]
            chosen += _iou(final, gt)[visible].tolist()
            per_output += _iou(multi, gt[:, None])[visible].tolist()
            predicted += outputs[t]["multistep_pred_ious"][-1][visible].tolist()
    per_output, predicted = np.array(per_output), np.array(predicted)
    print(f"\n3. tracked frames of {len(dataset)} held-out clips: J of the IoU head's choice {np.mean(chosen):.3f}, "
          f"of the best output {per_output.max(1).mean():.3f}")
    print(f"   {'output':<8}{'J':>8}{'predicted IoU':>15}")
    for k in range(per_output.shape[1]):
        print(f"   {k:<8}{per_output[:, k].mean():8.3f}{predicted[:, k].mean():15.3f}")


def _iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return (pred & gt).flatten(-2).sum(-1) / (pred | gt).flatten(-2).sum(-1).clamp(min=1)


def gradient_norms(metrics_path: Path) -> None:
    records = read_metrics(metrics_path, kind="train")
    keys = sorted({k for r in records for k in r if k.startswith("grad_norm/")})
    if not keys:
        print("\n4. gradient norms per module: not in metrics.jsonl (a run from before they were logged)")
        return
    quarter = max(1, len(records) // 4)
    parts = {"first": records[:quarter], "middle": records[len(records) // 2 - quarter // 2:][:quarter],
             "last": records[-quarter:]}
    print(f"\n4. gradient norm per module before clipping (mean over each quarter of {len(records)} steps)")
    print(f"   {'module':<26}" + "".join(f"{name:>10}" for name in parts))
    for key in keys:
        print(f"   {key[len('grad_norm/'):]:<26}" + "".join(
            f"{np.mean([r[key] for r in rs if key in r]):10.4f}" for rs in parts.values()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a demo output folder (OUT) or a train run folder")
    parser.add_argument("--val", type=Path, help="DAVIS-layout held-out videos (default: OUT/data/val)")
    parser.add_argument("--batches", type=int, default=8, help="held-out batches per prompt kind")
    args = parser.parse_args()
    run_dir = args.run / "train" if (args.run / "train" / "last.pt").exists() else args.run
    val_root = args.val or args.run / "data" / "val"
    checkpoint = load_training_checkpoint(run_dir / "last.pt")
    with tempfile.TemporaryDirectory() as tmp:  # the run config as stored in the checkpoint, in today's shape
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(checkpoint["config"]))
        config = load_config(Path(tmp) / "config.yaml")
    model = build_model(config.model, config.dataset, verbose=False)
    model.load_state_dict(checkpoint["model"])
    print(f"run {run_dir}, step {checkpoint.get('step')}, held-out videos {val_root}")
    loss_per_prompt_kind(model, config, val_root, args.batches)
    with_memory = j_per_distance(model, val_root, zero_memory=False)
    without = j_per_distance(model, val_root, zero_memory=True)
    print("\n2. held-out J per frame distance from the prompted frame (frames where the object is visible);")
    print(f"   area: predicted / true area (median); failures (J < {FAILED_J}): true pixels mostly background /")
    print("   mostly another object's")
    print(f"   {'distance':<12}{'frames':>8}{'J memory':>10}{'J zeroed':>10}{'area':>8}{'lost':>7}{'taken':>7}")
    for low, high in DISTANCE_BINS:
        if (low, high) in with_memory:
            label = f"{low}" if low == high else f"{low}-{high}" if high < 10**9 else f"{low}+"
            stats = with_memory[(low, high)]
            print(f"   {label:<12}{len(stats.j):8d}{np.mean(stats.j):10.3f}{np.mean(without[(low, high)].j):10.3f}"
                  f"{np.median(stats.area_ratio):8.2f}{stats.lost:7d}{stats.taken:7d}")
    multimask_choice(model, config, val_root)
    gradient_norms(run_dir / "metrics.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
