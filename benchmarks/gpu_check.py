"""The checks that need a CUDA GPU, in one command (under 8 minutes on one recent GPU):

(a) parity with the official SAM2 1.1.0 under bf16 autocast, as users run it
    (`torch.autocast("cuda", dtype=torch.bfloat16)`): the same random weights (heads scaled so no
    threshold sits on float noise, as in the CPU parity tests) on a generated 3-object video;
    image mode = the first-frame outputs of a click, a box and a mask prompt (and, when the official
    `SAM2ImagePredictor` imports, i.e. torchvision is installed, that predictor against ours),
    video mode = every propagated frame. Reported: agreement of the thresholded masks (logit > 0)
    and the largest logit difference. bf16 is not bit-exact, so agreement, not equality, is the measure.
(b) one training step (`benchmarks/train_memory.py`'s rows, bf16 autocast) at 1024 px, 8 frames,
    3 objects: the default and the full trainable set, with and without activation checkpointing,
    against the official `SAM2Train`: `torch.cuda.max_memory_allocated` and seconds per step.
(c) video predictor frames/s against the official predictor (3 objects, bf16 autocast). The
    official `vos_optimized=True` is not used: its torch.compile warm-up alone takes minutes.

Needs sam2==1.1.0, hydra-core, iopath, and for (b) tensordict (see train_memory.py).

    python benchmarks/gpu_check.py [--preset sam2.1_hiera_t --train-preset b+ --skip-training]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
sys.path.insert(0, str(BENCHMARKS.parent / "tests"))

AUTOCAST = dict(device_type="cuda", dtype=torch.bfloat16)


def build_predictors(preset: str, image_size: int, folder: Path, device: torch.device):
    """(official video predictor, ours) with the same random weights, as the CPU parity tests build them."""
    from sam2.build_sam import build_sam2_video_predictor as build_official

    from sam2_video.predict.video_predictor import build_sam2_video_predictor

    torch.manual_seed(0)
    version = preset.split("_hiera_")[0]
    official = build_official(f"configs/{version}/{preset}.yaml", None, device=str(device),
                              hydra_overrides_extra=[f"++model.image_size={image_size}"])
    with torch.no_grad():
        official.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 5.0
        for mlp in official.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight *= 20.0
            mlp.layers[-1].bias *= 20.0
    official.fill_hole_area = 0
    checkpoint = folder / "weights.pt"
    torch.save({"model": official.state_dict()}, checkpoint)
    ours = build_sam2_video_predictor(preset, checkpoint=str(checkpoint), device=device, image_size=image_size,
                                      fill_hole_area=0)
    return official, ours


def prompt_steps(masks):
    from test_video_predictor_vs_reference import bounding_box, centre_click

    return [("points", dict(frame_idx=0, obj_id=1, points=centre_click(masks[0][0]), labels=[1])),
            ("box", dict(frame_idx=0, obj_id=2, box=bounding_box(masks[0][1]))),
            ("mask", dict(frame_idx=0, obj_id=3, mask=masks[0][2])),
            ("propagate", {})]


def compare(ours, official) -> tuple[float, float]:
    """(lowest fraction of pixels whose thresholded masks agree, largest logit difference)."""
    worst, diff = 1.0, 0.0
    for (_, _, _, mask), (_, _, _, expected) in zip(ours, official):
        mask, expected = mask.float().cpu(), expected.float().cpu()
        worst = min(worst, ((mask > 0) == (expected > 0)).float().mean().item())
        diff = max(diff, (mask - expected).abs().max().item())
    return worst, diff


def parity(preset: str, image_size: int, folder: Path, masks, device: torch.device) -> None:
    from test_video_predictor_vs_reference import run_session

    official, ours = build_predictors(preset, image_size, folder, device)
    steps = prompt_steps(masks)
    with torch.inference_mode(), torch.autocast(**AUTOCAST):
        expected = run_session(official, folder / "video", steps)
        got = run_session(ours, folder / "video", steps)
    if [o[:3] for o in got] != [o[:3] for o in expected]:
        print(f"  MISMATCH: outputs differ in frames/objects: {[o[:3] for o in got]} vs {[o[:3] for o in expected]}")
        return
    prompts = [i for i, o in enumerate(got) if o[0] != "propagate"]
    tracked = [i for i, o in enumerate(got) if o[0] == "propagate"]
    for name, rows in (("image (first-frame prompts)", prompts), ("video (propagated frames)", tracked)):
        agreement, diff = compare([got[i] for i in rows], [expected[i] for i in rows])
        print(f"  {name:<30} {len(rows):>3} outputs  mask agreement >= {agreement:.4%}  max logit diff {diff:.3g}")
    image_predictor_parity(official, ours, folder)


def image_predictor_parity(official, ours, folder: Path) -> None:
    try:
        from sam2.sam2_image_predictor import SAM2ImagePredictor as OfficialImagePredictor
    except ImportError as err:
        print(f"  image predictor: official SAM2ImagePredictor not importable ({err}); first-frame rows above only")
        return
    from PIL import Image

    from sam2_video.predict.image_predictor import SAM2ImagePredictor

    image = np.array(Image.open(sorted((folder / "video").iterdir())[0]).convert("RGB"))
    height, width = image.shape[:2]
    cases = {"click": dict(point_coords=np.array([[0.25 * width, 0.5 * height]]), point_labels=np.array([1])),
             "box": dict(box=np.array([0.55 * width, 0.15 * height, 0.85 * width, 0.45 * height]))}
    results = {}
    for name, predictor in (("official", OfficialImagePredictor(official)), ("ours", SAM2ImagePredictor(ours.model))):
        with torch.inference_mode(), torch.autocast(**AUTOCAST):
            predictor.set_image(image)
            results[name] = [predictor.predict(**case, multimask_output=True, return_logits=True)[0]
                             for case in cases.values()]
    for name, got, expected in zip(cases, results["ours"], results["official"]):
        agreement = ((np.asarray(got) > 0) == (np.asarray(expected) > 0)).mean()
        print(f"  image predictor, {name:<15}         mask agreement {agreement:.4%}")


def predictor_speed(preset: str, image_size: int, folder: Path, masks, device: torch.device) -> None:
    from test_video_predictor_vs_reference import run_session

    official, ours = build_predictors(preset, image_size, folder, device)
    steps = prompt_steps(masks)
    frames = len(list((folder / "video").iterdir()))
    for name, predictor in (("official", official), ("ours", ours)):
        with torch.inference_mode(), torch.autocast(**AUTOCAST):
            run_session(predictor, folder / "video", steps)  # warm-up: CUDA kernels, caches
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            run_session(predictor, folder / "video", steps)
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        print(f"  {name:<10} {frames / seconds:>7.1f} frames/s  ({frames} frames, 3 objects, {image_size} px, "
              "init_state + prompts + propagation)")


def training(preset: str, frames: int, device: torch.device) -> None:
    from train_memory import run_row

    print(f"  {'trainable':<10}{'implementation':<16}{'max allocated GiB':>18}{'s/step':>9}")
    for trainable in ("default", "all"):
        for implementation in ("ours", "ours+ckpt", "official"):
            try:
                result = run_row(preset, 1024, trainable, implementation, frames, 3, device, steps=2)
            except torch.OutOfMemoryError:
                result = "out of memory"
            torch.cuda.empty_cache()
            if isinstance(result, str):
                print(f"  {trainable:<10}{implementation:<16}{result}")
            else:
                print(f"  {trainable:<10}{implementation:<16}{result.peak_bytes / 2**30:>18.2f}{result.wall_s:>9.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="sam2.1_hiera_t", help="preset for the parity and speed checks")
    parser.add_argument("--train-preset", default="b+", help="t, s, b+ or l for the training rows")
    parser.add_argument("--train-frames", type=int, default=8)
    parser.add_argument("--video-frames", type=int, default=30, help="frames of the generated video for (c)")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a machine with an "
              "NVIDIA GPU and a CUDA build of PyTorch. The CPU checks are the test suite and benchmarks/*.py.")
        return 2
    device = torch.device("cuda")
    from test_video_predictor_vs_reference import write_shapes_video

    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
          f"bf16 native: {torch.cuda.is_bf16_supported(including_emulation=False)}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "video").mkdir()
        masks = write_shapes_video(folder / "video", 6)
        for size in (1024, 512):
            print(f"(a) parity vs official, {args.preset} at {size} px, 6 frames, bf16 autocast")
            parity(args.preset, size, folder, masks, device)
        if not args.skip_training:
            print(f"(b) one training step, sam2.1_hiera_{args.train_preset} at 1024 px, {args.train_frames} frames, "
                  "3 objects, bf16 autocast")
            training(args.train_preset, args.train_frames, device)
        long_video = folder / "long"
        long_video.mkdir()
        long_masks = write_shapes_video(long_video, args.video_frames)
        (folder / "video").rename(folder / "short")
        long_video.rename(folder / "video")
        print(f"(c) video predictor speed, {args.preset}, bf16 autocast")
        predictor_speed(args.preset, 1024, folder, long_masks, device)
    print(f"gpu_check done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
