"""Peak memory and seconds of one SAM2 training step: our `SAM2Model` with and without activation
checkpointing, and the official `SAM2Train` on the same batch, weights and trainable set.

A step is forward + loss + backward + AdamW step (fresh optimizer, so its moments are created
inside the step) on one synthetic clip (`--frames` frames, `--objects` objects, batch 1) with a
mask prompt on frame 0, the only conditioning frame. Trainable sets: `default` =
memory attention + memory encoder (the config default), `all` = every parameter. Dropout and
drop-path are off on both sides, as in `train_step.py` (with dropout, PyTorch's CPU attention
materialises every attention matrix).

Peak memory: on a GPU `torch.cuda.max_memory_allocated` (parameters, batch and everything the
step allocates); on the CPU the same quantity counted by `LiveTensorMemory` (bytes of live tensor
storages; parameters and batch included), since the process's resident size cannot separate the
step's tensors from the rest. On a GPU both sides run under bf16 autocast, as the official trainer
does; on the CPU in fp32. The official rows need `sam2==1.1.0`, hydra-core, iopath and
`pip install --no-deps tensordict==0.15.3` + cloudpickle pyvers pandas; without them they are
skipped with the reason.

    python benchmarks/train_memory.py --presets t --sizes 512 --trainable all   # a subset in minutes
    python benchmarks/train_memory.py   # every preset (t, s, b+, l) at 512 and 1024 px: hours on a CPU
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import NO_DROPOUT_OVERRIDES, WORKLOADS, our_batch, reference_batch, synthetic_clip  # noqa: E402

from sam2_video.model.presets import sam2_config  # noqa: E402
from sam2_video.model.sam2_train import CHECKPOINTABLE_MODULES, DEFAULT_TRAINABLE_MODULES, SAM2Model  # noqa: E402
from sam2_video.train.loss import MultiStepMultiMaskLoss  # noqa: E402
from sam2_video.train.memory import LiveTensorMemory  # noqa: E402

PRESETS = ("t", "s", "b+", "l")
IMPLEMENTATIONS = ("ours", "ours+ckpt", "official")
# a mask on frame 0 as the only conditioning frame: the same prompts, hence the same loss, on both sides
WORKLOAD = dict(WORKLOADS["mask"], num_init_cond_frames_for_train=1, num_frames_to_correct_for_train=1)


@dataclass
class StepMeasurement:
    peak_bytes: int
    wall_s: float
    cpu_s: float
    loss: float


def measure_step(model: torch.nn.Module, step_loss: Callable[[], torch.Tensor], device: torch.device,
                 existing: tuple = (), steps: int = 1) -> StepMeasurement:
    """Peak memory and time of forward + loss + backward + AdamW step + zero_grad (fresh optimizer).

    `existing`: tensors alive before the step that the CPU count should include (the batch); on
    CUDA every allocation is counted anyway. `steps` > 1: the peak over all of them, the time of the
    last (the first pays one-off costs, e.g. CUDA kernel selection).
    """
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        counter = None
    else:
        counter = LiveTensorMemory()
        counter.add_existing([list(model.parameters()), list(model.buffers()), list(existing)])
    for _ in range(steps):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        with counter if counter is not None else torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_loss()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = float(loss.detach())  # host sync: the step is done when its loss is on the host
        wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    peak = counter.peak if counter is not None else torch.cuda.max_memory_allocated(device)
    return StepMeasurement(peak, wall, cpu, loss_value)


def trainable_names(model: torch.nn.Module, trainable: str) -> list[str]:
    if trainable == "default":
        return list(DEFAULT_TRAINABLE_MODULES)
    return sorted({name.split(".")[0] for name, _ in model.named_parameters()})


def build_ours(preset: str, image_size: int, trainable: str, checkpointing: bool, device: torch.device) -> SAM2Model:
    torch.manual_seed(0)
    model = SAM2Model(config_path=f"sam2.1_hiera_{preset}", image_size=image_size, dropout=0.0, verbose=False,
                      device=device, **WORKLOAD)
    model.configure_for_training(trainable_names(model, trainable))
    model.set_activation_checkpointing(CHECKPOINTABLE_MODULES if checkpointing else ())
    return model.train()


def reference_overrides(preset: str, image_size: int) -> list[str]:
    """Hydra overrides that turn the official b+ MOSE fine-tuning config into `preset` at `image_size`."""
    trunk = sam2_config(f"sam2.1_hiera_{preset}").trunk
    prefix = "++trainer.model.image_encoder"

    def as_list(values) -> str:
        return "[" + ",".join(str(v) for v in values) + "]"

    return [
        f"{prefix}.trunk.embed_dim={trunk.embed_dim}", f"{prefix}.trunk.num_heads={trunk.num_heads}",
        f"{prefix}.trunk.stages={as_list(trunk.stages)}",
        f"{prefix}.trunk.global_att_blocks={as_list(trunk.global_att_blocks)}",
        f"{prefix}.trunk.window_pos_embed_bkg_spatial_size={as_list(trunk.window_pos_embed_bkg_spatial_size)}",
        f"{prefix}.trunk.window_spec={as_list(trunk.window_spec)}",
        f"{prefix}.neck.backbone_channel_list={as_list(trunk.backbone_channel_list)}",
        *NO_DROPOUT_OVERRIDES, f"scratch.resolution={image_size}",
    ]


def build_official(preset: str, image_size: int, state_dict: dict, trainable: list[str], device: torch.device):
    """(official SAM2Train, its loss, "") or (None, None, the reason it cannot be built)."""
    try:
        import sam2  # noqa: F401  (registers the config module with hydra)
        from hydra import compose
        from hydra.utils import instantiate
        from omegaconf import OmegaConf
        from training.utils.train_utils import register_omegaconf_resolvers
    except ImportError as err:
        return None, None, (f"official skipped ({err}); needs sam2==1.1.0, hydra-core, iopath and "
                            "pip install --no-deps tensordict==0.15.3 + cloudpickle pyvers pandas")
    try:
        register_omegaconf_resolvers()
    except ValueError:
        pass  # already registered
    cfg = compose(config_name="configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml",
                  overrides=reference_overrides(preset, image_size))
    OmegaConf.resolve(cfg.trainer.model)
    model = instantiate(cfg.trainer.model, _recursive_=True)
    model.load_state_dict(state_dict, strict=True)
    for key, value in WORKLOAD.items():
        setattr(model, key, value)
    for name, param in model.named_parameters():
        param.requires_grad_(name.split(".")[0] in trainable)
    return model.to(device).train(), instantiate(cfg.trainer.loss.all), ""


def run_row(preset: str, image_size: int, trainable: str, implementation: str, frames: int, objects: int,
            device: torch.device, steps: int = 1) -> StepMeasurement | str:
    """One table row: the step's measurement, or the reason it could not run."""
    images, masks = synthetic_clip(frames, objects, image_size)
    model = build_ours(preset, image_size, trainable, implementation == "ours+ckpt", device)
    if implementation != "official":
        batch = our_batch(images, masks).to(device)
        loss_fn = MultiStepMultiMaskLoss()
        return measure_step(model, lambda: loss_fn(model(batch), batch.masks)["core_loss"], device,
                            existing=(batch.img_batch, batch.masks), steps=steps)
    names = trainable_names(model, trainable)
    state_dict = {key: value.cpu() for key, value in model.state_dict().items()}
    del model
    reference, reference_loss, reason = build_official(preset, image_size, state_dict, names, device)
    if reference is None:
        return reason
    ref_batch = reference_batch(images, masks).to(device)
    return measure_step(reference, lambda: reference_loss(reference(ref_batch), ref_batch.masks)["core_loss"],
                        device, existing=(ref_batch.img_batch, ref_batch.masks), steps=steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated of t, s, b+, l")
    parser.add_argument("--sizes", default="512,1024", help="image sizes in px, comma-separated")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--trainable", default="default,all", help="default (memory modules) and/or all")
    parser.add_argument("--rows", default=",".join(IMPLEMENTATIONS), help="of ours, ours+ckpt, official")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (CPU runs only)")
    parser.add_argument("--steps", type=int, default=1, help="steps per row: peak over all, time of the last")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    how = ("torch.cuda.max_memory_allocated, bf16 autocast" if device.type == "cuda"
           else f"live tensor bytes (LiveTensorMemory), fp32, {args.threads} threads")
    print(f"one training step, {args.frames} frames, {args.objects} objects, batch 1, mask prompt; "
          f"peak = {how}")
    print(f"{'preset':<8}{'px':>6}  {'trainable':<10}{'implementation':<16}{'peak GiB':>10}{'wall s':>9}"
          f"{'CPU s':>9}{'loss':>10}", flush=True)
    rows = []
    for preset in args.presets.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            for trainable in args.trainable.split(","):
                for implementation in args.rows.split(","):
                    try:
                        result = run_row(preset, size, trainable, implementation, args.frames, args.objects, device,
                                         args.steps)
                    except torch.OutOfMemoryError:
                        result = "out of memory"
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    head = f"{preset:<8}{size:>6}  {trainable:<10}{implementation:<16}"
                    if isinstance(result, str):
                        print(f"{head}{result}", flush=True)
                        rows.append(dict(preset=preset, size=size, trainable=trainable, impl=implementation,
                                         skipped=result))
                        continue
                    print(f"{head}{result.peak_bytes / 2**30:>10.2f}{result.wall_s:>9.1f}{result.cpu_s:>9.1f}"
                          f"{result.loss:>10.4f}", flush=True)
                    rows.append(dict(preset=preset, size=size, trainable=trainable, impl=implementation,
                                     peak_bytes=result.peak_bytes, wall_s=result.wall_s, cpu_s=result.cpu_s,
                                     loss=result.loss))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
