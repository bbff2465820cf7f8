"""Seconds per SAM2 training step: our `SAM2Model` with and without the feature cache, and the
official `SAM2Train` on the same batch, weights, frozen modules and prompt workload.

A step is zero_grad + forward + loss + backward + AdamW step on one synthetic batch (1 clip,
`--frames` frames, `--objects` objects, `--image-size` px). Trainable (`--trainable`): memory attention and memory
encoder by default; everything else frozen on both sides. Memory-attention dropout is off on
both sides: with dropout, PyTorch's CPU attention materialises every attention matrix (over 13 GB
at the default sizes). Workloads (fixed, so both
implementations do the same work): `mask` = a mask prompt on frame 0, the other frames tracked;
`clicks` = a click on frame 0 plus 7 correction clicks there, the other frames tracked.

The reference needs `sam2==1.1.0`, hydra-core, iopath and `pip install --no-deps tensordict==0.15.3`
plus cloudpickle, pyvers, pandas (not project dependencies); without them it is skipped with a message.

    python benchmarks/train_step.py [--image-size 512 --frames 8 --objects 3 --steps 2 --threads 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch

from sam2_video.data.batch import BatchedVideoDatapoint
from sam2_video.model.sam2_train import SAM2Model
from sam2_video.train.loss import MultiStepMultiMaskLoss

WORKLOADS = {
    "mask": dict(prob_to_use_pt_input_for_train=0.0),
    "clicks": dict(prob_to_use_pt_input_for_train=1.0, prob_to_use_box_input_for_train=0.0,
                   num_init_cond_frames_for_train=1, num_frames_to_correct_for_train=1,
                   num_correction_pt_per_frame=7, prob_to_sample_from_gt_for_train=0.0),
}
HIERA_T_OVERRIDES = [
    "trainer.model.image_encoder.trunk.embed_dim=96",
    "trainer.model.image_encoder.trunk.num_heads=1",
    "++trainer.model.image_encoder.trunk.stages=[1,2,7,2]",
    "++trainer.model.image_encoder.trunk.global_att_blocks=[5,7,9]",
    "++trainer.model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[7,7]",
    "trainer.model.image_encoder.neck.backbone_channel_list=[768,384,192,96]",
]
NO_DROPOUT_OVERRIDES = [
    "trainer.model.image_encoder.trunk.drop_path_rate=0.0",
    "trainer.model.memory_attention.layer.dropout=0.0",
    "trainer.model.memory_attention.layer.self_attention.dropout=0.0",
    "trainer.model.memory_attention.layer.cross_attention.dropout=0.0",
]


def synthetic_clip(frames: int, objects: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [T,1,3,S,S] (noise) and masks [T,O,S,S] (moving boxes)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(frames, 1, 3, size, size, generator=generator)
    masks = torch.zeros(frames, objects, size, size, dtype=torch.bool)
    for t in range(frames):
        for o in range(objects):
            y0, x0 = size // 8 + 10 * t + o * size // 4, size // 8 + 8 * t + o * size // 5
            masks[t, o, y0:y0 + size // 4, x0:x0 + size // 5] = True
    return images, masks


def our_batch(images: torch.Tensor, masks: torch.Tensor) -> BatchedVideoDatapoint:
    frames, objects, size = masks.shape[0], masks.shape[1], masks.shape[-1]
    return BatchedVideoDatapoint(
        img_batch=images,
        obj_to_frame_idx=torch.stack([torch.tensor([[t, 0]] * objects, dtype=torch.int32) for t in range(frames)]),
        masks=masks,
        point_coords=torch.zeros(frames, objects, 0, 2),
        point_labels=torch.zeros(frames, objects, 0, dtype=torch.int32),
        boxes=torch.zeros(frames, objects, 4),
        box_valid=torch.zeros(frames, objects, dtype=torch.bool),
        mask_prompts=torch.zeros(frames, objects, size, size, dtype=torch.bool),
        mask_prompt_valid=torch.zeros(frames, objects, dtype=torch.bool),
        object_ids=torch.arange(objects),
        frame_is_padding=torch.zeros(frames, 1, dtype=torch.bool),
        video_names=["synthetic"],
        frame_names=[[f"{t:05d}" for t in range(frames)]],
    )


def time_steps(model: torch.nn.Module, step_loss: Callable[[], torch.Tensor], steps: int) -> dict[str, list[float]]:
    """Wall-clock and process CPU seconds of `steps` training steps after one warm-up step.

    CPU seconds (all threads) are the steadier figure on a machine shared with other jobs.
    """
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    wall, cpu = [], []
    for i in range(steps + 1):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss = step_loss()
        loss.backward()
        optimizer.step()
        if i > 0:
            wall.append(time.perf_counter() - start_wall)
            cpu.append(time.process_time() - start_cpu)
    return {"wall_s": wall, "cpu_s": cpu}


def build_reference(image_size: int, state_dict: dict, workload: dict, trainable: list[str]):
    """Official SAM2Train (MOSE fine-tuning config at hiera_t sizes) and its loss, or a reason it can't be built."""
    try:
        import sam2  # noqa: F401  (registers the config module with hydra)
        from hydra import compose
        from hydra.utils import instantiate
        from omegaconf import OmegaConf
        from training.utils.train_utils import register_omegaconf_resolvers
    except ImportError as err:
        return None, None, (f"reference skipped ({err}); needs sam2==1.1.0, hydra-core, iopath and "
                            "pip install --no-deps tensordict==0.15.3 + cloudpickle pyvers pandas")
    try:
        register_omegaconf_resolvers()
    except ValueError:
        pass  # already registered
    cfg = compose(config_name="configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml",
                  overrides=HIERA_T_OVERRIDES + NO_DROPOUT_OVERRIDES + [f"scratch.resolution={image_size}"])
    OmegaConf.resolve(cfg.trainer.model)
    model = instantiate(cfg.trainer.model, _recursive_=True)
    model.load_state_dict(state_dict, strict=True)
    for key, value in workload.items():
        setattr(model, key, value)
    for name, param in model.named_parameters():
        param.requires_grad_(name.split(".")[0] in trainable)
    return model.train(), instantiate(cfg.trainer.loss.all), ""


def reference_batch(images: torch.Tensor, masks: torch.Tensor):
    from training.utils.data_utils import BatchedVideoDatapoint as RefBatch, BatchedVideoMetaData

    frames, objects, size = masks.shape[0], masks.shape[1], masks.shape[-1]
    return RefBatch(
        img_batch=images,
        obj_to_frame_idx=torch.stack([torch.tensor([[t, 0]] * objects, dtype=torch.int) for t in range(frames)]),
        masks=masks,
        metadata=BatchedVideoMetaData(
            unique_objects_identifier=torch.tensor([[[0, o, t] for o in range(objects)] for t in range(frames)]),
            frame_orig_size=torch.tensor([[[size, size]] * objects] * frames)),
        dict_key="all", batch_size=[frames])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="sam2.1_hiera_t")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per row (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workloads", default="mask,clicks")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--trainable", default="memory_attention,memory_encoder",
                        help="top-level modules to train, comma-separated (e.g. add sam_mask_decoder)")
    args = parser.parse_args()
    trainable = args.trainable.split(",")
    torch.set_num_threads(args.threads)

    print(f"{args.config} at {args.image_size}px, {args.frames} frames, {args.objects} objects, batch 1, "
          f"trainable {'+'.join(trainable)}, {args.threads} threads, median of {args.steps} steps after 1 warm-up")
    print(f"{'workload':<10}{'implementation':<24}{'wall s/step':>12}{'CPU s/step':>12}", flush=True)

    rows: list[dict] = []

    def report(row: dict) -> None:
        rows.append(row)
        print(f"{row['workload']:<10}{row['impl']:<24}{statistics.median(row['wall_s']):>12.2f}"
              f"{statistics.median(row['cpu_s']):>12.2f}", flush=True)

    images, masks = synthetic_clip(args.frames, args.objects, args.image_size)
    batch = our_batch(images, masks)
    loss_fn = MultiStepMultiMaskLoss()
    for workload in args.workloads.split(","):
        options = WORKLOADS[workload]
        torch.manual_seed(0)
        for cache_frames in (0, args.frames):
            model = SAM2Model(config_path=args.config, image_size=args.image_size, trainable_modules=trainable,
                              feature_cache_frames=cache_frames, dropout=0.0, verbose=False, **options).train()
            times = time_steps(model, lambda: loss_fn(model(batch), batch.masks)["core_loss"], args.steps)
            report({"workload": workload, "impl": "ours, feature cache" if cache_frames else "ours", **times})
            state_dict = model.state_dict()
        if args.no_reference:
            continue
        reference, reference_loss, reason = build_reference(args.image_size, state_dict, options, trainable)
        if reference is None:
            print(reason)
            continue
        ref_batch = reference_batch(images, masks)
        times = time_steps(reference, lambda: reference_loss(reference(ref_batch), ref_batch.masks)["core_loss"], args.steps)
        report({"workload": workload, "impl": "official SAM2Train", **times})

    print(json.dumps(rows))


if __name__ == "__main__":
    main()
