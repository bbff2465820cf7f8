"""Video tracking speed and memory: the official SAM2VideoPredictor against ours, in one run.

Both get the same random weights (with refharness's random-weight tweaks), the same video and
the same prompts (objects 1..3: a click, a box and a mask on frame 0), hole filling off (the
official code skips it on the CPU). Per object count it prints the propagation speed of each
(frames/s, prompted frame included), our speed-up, peak memory during the session (CPU: peak
RSS above the RSS before the session, Linux VmHWM, with glibc's freed memory handed back between
sessions; CUDA: torch.cuda.max_memory_allocated) and
the largest logit difference between the two; then the same for ours with memory features kept
in float32 (`memory_in_bfloat16=False`), the cost of leaving the official bf16 storage.
Each predictor runs one untimed session first, the two take turns going first, and memory is
measured in a second pass of its own (on the CPU it needs allocator settings that slow both down).

    python benchmarks/predict_vs_reference.py --image-size 512 --frames 10 --objects 1 3

`--interactive` times instead the annotate page's common case on a real DAVIS sequence, 3 objects
(clicks on frame 0), as one whole session (init_state included): propagate forward over `--frames`
frames, a correction click on frame 4, propagate again from frame 4, then propagate in reverse
from the last frame. Both predictors make corrections conditioning frames, as the page does
(`add_all_frames_to_correct_as_cond`; by default the propagation from frame 4 would overwrite the
correction). Rows: the official predictor, ours in float32 (its image-feature cache skips
the encoder on frames already seen) and ours with dtype=bfloat16; medians of `--repeats` runs taken
in turns, peak memory per row, max logit difference to the official outputs, and for bf16 the
fraction of mask pixels (logit > 0) agreeing with our float32.

    python benchmarks/predict_vs_reference.py --interactive --image-size 512 --frames 12 --repeats 3
Needs the reference: pip install --no-deps sam2==1.1.0 hydra-core iopath
"""
from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: it reads its defaults then

import argparse
import ctypes
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sam2_video.predict.video_predictor import build_sam2_video_predictor


def make_video(folder: Path, num_frames: int, height: int = 480, width: int = 640) -> list[list[np.ndarray]]:
    """JPEG frames with three moving shapes; returns the shapes' masks masks[t][k] (bool HxW)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack([90 + 60 * np.sin(xx / 53) * np.cos(yy / 71),
                           110 + 50 * np.cos(xx / 37 + yy / 91),
                           100 + 70 * xx / width], axis=-1)
    masks = []
    for t in range(num_frames):
        frame = background.copy()
        disc = (xx - (160 + 12 * t)) ** 2 + (yy - 240) ** 2 < 60**2
        rectangle = (abs(xx - (440 - 9 * t)) < 70) & (abs(yy - (140 + 6 * t)) < 50)
        ellipse = ((xx - 460) / 80) ** 2 + ((yy - (360 - 5 * t)) / 44) ** 2 < 1
        for shape, colour in ((disc, (220, 40, 40)), (rectangle, (40, 200, 60)), (ellipse, (30, 60, 220))):
            frame[shape] = colour
        Image.fromarray(frame.clip(0, 255).astype(np.uint8)).save(folder / f"{t:05d}.jpg", quality=95)
        masks.append([disc, rectangle, ellipse])
    return masks


def build_official(preset: str, image_size: int, device: str, corrections_as_cond: bool = False) -> Any:
    from sam2.build_sam import build_sam2_video_predictor as build_reference

    version = preset.split("_hiera_")[0]
    overrides = [f"++model.image_size={image_size}"]
    if corrections_as_cond:
        overrides.append("++model.add_all_frames_to_correct_as_cond=true")
    predictor = build_reference(f"configs/{version}/{preset}.yaml", None, device=device,
                                hydra_overrides_extra=overrides)
    with torch.no_grad():
        predictor.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 5.0
        for mlp in predictor.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight *= 20.0
            mlp.layers[-1].bias *= 20.0
    predictor.fill_hole_area = 0
    # refharness's exact fp32 cast of the bf16 memory (the official code crashes on a tracked frame
    # without object pointers, facebookresearch/sam2#308: the reverse pass from the last frame has none)
    predictor.memory_attention.register_forward_pre_hook(
        lambda module, args, kwargs: (args, {**kwargs, "memory": kwargs["memory"].float()}), with_kwargs=True)
    return predictor


LIBC = ctypes.CDLL("libc.so.6")
M_MMAP_THRESHOLD = -3


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak(device: str) -> int:
    """Reset the peak-memory counter; returns the current usage to measure the peak against."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    LIBC.malloc_trim(0)  # hand freed heap memory back, so that earlier sessions do not hide this one's
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current RSS
    return _rss_bytes("VmRSS:")


def _peak(device: str) -> int:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _rss_bytes("VmHWM:")


def run_session(predictor: Any, video: Path, masks: list[list[np.ndarray]], num_objects: int,
                device: str) -> tuple[float, int, list[torch.Tensor]]:
    """Prompt `num_objects` objects on frame 0 and propagate. Returns (frames/s of the
    propagation, peak memory above the start in bytes, the yielded masks on the CPU)."""
    base = _reset_peak(device)
    state = predictor.init_state(str(video))
    first = masks[0]
    ys, xs = np.nonzero(first[0])
    predictor.add_new_points_or_box(state, 0, 1, points=[[xs.mean(), ys.mean()]], labels=[1])
    if num_objects >= 2:
        ys, xs = np.nonzero(first[1])
        predictor.add_new_points_or_box(state, 0, 2, box=[xs.min(), ys.min(), xs.max(), ys.max()])
    if num_objects >= 3:
        predictor.add_new_mask(state, 0, 3, first[2])
    outputs = []
    start = time.perf_counter()
    for _, _, video_res_masks in predictor.propagate_in_video(state):
        outputs.append(video_res_masks.cpu())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return len(outputs) / seconds, _peak(device) - base, outputs


def davis_video(folder: Path, davis: Path, sequence: str, num_frames: int) -> list[np.ndarray]:
    """Copy the sequence's first frames to `folder`; returns the object masks of frames 0 and 4."""
    frames = sorted((davis / "JPEGImages" / sequence).glob("*.jpg"))[:num_frames]
    if len(frames) < max(num_frames, 5):
        raise SystemExit(f"{davis / 'JPEGImages' / sequence}: needs {max(num_frames, 5)} frames, found {len(frames)}")
    for frame in frames:
        shutil.copy(frame, folder / frame.name)
    return [np.array(Image.open(davis / "Annotations" / sequence / f"{frames[t].stem}.png")) > 0 for t in (0, 4)]


def interactive_session(predictor: Any, video: Path, masks: list[np.ndarray], num_frames: int,
                        device: str) -> tuple[float, int, list[torch.Tensor]]:
    """Clicks for 3 objects on frame 0 (the annotated object, two background regions), propagate,
    a correction click on frame 4, propagate from 4, propagate in reverse from the last frame.
    Returns (seconds of the whole session, peak memory above the start, every mask it returned)."""
    base = _reset_peak(device)
    start = time.perf_counter()
    state = predictor.init_state(str(video))
    height, width = masks[0].shape
    ys, xs = np.nonzero(masks[0])
    outputs = []
    for obj_id, point in ((1, (xs.mean(), ys.mean())), (2, (width * 0.1, height * 0.1)), (3, (width * 0.9, height * 0.9))):
        outputs.append(predictor.add_new_points_or_box(state, 0, obj_id, points=[point], labels=[1])[2].cpu())
    outputs += [m.cpu() for _, _, m in predictor.propagate_in_video(state, max_frame_num_to_track=num_frames - 1)]
    ys, xs = np.nonzero(masks[1])
    outputs.append(predictor.add_new_points_or_box(state, 4, 1, points=[[xs.mean(), ys.mean()]], labels=[1],
                                                   clear_old_points=False)[2].cpu())
    outputs += [m.cpu() for _, _, m in predictor.propagate_in_video(state, start_frame_idx=4,
                                                                  max_frame_num_to_track=num_frames - 5)]
    outputs += [m.cpu() for _, _, m in predictor.propagate_in_video(state, start_frame_idx=num_frames - 1, reverse=True)]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, _peak(device) - base, outputs


# Frames of the untimed first session of each predictor: the fewest the session has (correction on frame 4)
WARM_UP_FRAMES = 5


def run_interactive(args: argparse.Namespace, official: Any, checkpoint: Path, tmp: str) -> None:
    video = Path(tmp) / "davis"
    video.mkdir()
    masks = davis_video(video, args.davis, args.sequence, args.frames)
    rows = {"official": official}
    for dtype in args.dtypes:
        rows[f"ours {dtype}"] = build_sam2_video_predictor(args.preset, checkpoint=checkpoint, device=args.device,
                                                           image_size=args.image_size, fill_hole_area=0, dtype=dtype,
                                                           add_all_frames_to_correct_as_cond=True)
    print(f"interactive session, DAVIS {args.sequence} {args.frames} frames {masks[0].shape[1]}x{masks[0].shape[0]}, "
          f"{args.preset} at {args.image_size}, 3 objects, {args.device}, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats}")
    seconds: dict[str, list[float]] = {name: [] for name in rows}
    outputs: dict[str, list[torch.Tensor]] = {}
    peak: dict[str, int] = {}
    with torch.inference_mode():
        for predictor in rows.values():  # warm-up: first-call costs do not depend on the session's length
            interactive_session(predictor, video, masks, WARM_UP_FRAMES, args.device)
        names = list(rows)
        for repeat in range(args.repeats):
            for name in names if repeat % 2 == 0 else names[::-1]:
                took, _, outputs[name] = interactive_session(rows[name], video, masks, args.frames, args.device)
                seconds[name].append(took)
        if not args.device.startswith("cuda"):
            LIBC.mallopt(M_MMAP_THRESHOLD, 1 << 20)  # see main(): memory pass with freed tensors handed back
        for name in names:
            peak[name] = interactive_session(rows[name], video, masks, args.frames, args.device)[1]
    official_s = statistics.median(seconds["official"])
    print("row              session s  speed-up  peak MiB  max |logit diff| to official  mask agreement with fp32")
    for name in names:
        median = statistics.median(seconds[name])
        diff = max((a - b).abs().max().item() for a, b in zip(outputs[name], outputs["official"]))
        agree = "-"  # without a float32 row there is nothing to agree with
        if "ours float32" in outputs:
            pairs = zip(outputs[name], outputs["ours float32"])
            agree = f"{np.mean([((a > 0) == (b > 0)).float().mean().item() for a, b in pairs]):.4%}"
        print(f"{name:15}  {median:9.2f}  {official_s / median:7.2f}x  {peak[name] / 2**20:8.0f}  {diff:28.2e}"
              f"  {agree:>24}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sam2.1_hiera_t")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=10, help="synthetic 480x640 frames")
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 3], choices=[1, 2, 3])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--interactive", action="store_true", help="time the interactive session (see above)")
    parser.add_argument("--repeats", type=int, default=3, help="--interactive: timed sessions per row")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"],
                        help="--interactive: our rows (bfloat16 takes 5x float32's time on CPUs without bf16 units)")
    parser.add_argument("--davis", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
                        / "davis2016_val_subset", help="--interactive: DAVIS root (JPEGImages/, Annotations/)")
    parser.add_argument("--sequence", default="blackswan", help="--interactive: DAVIS sequence")
    args = parser.parse_args()

    torch.manual_seed(0)
    official = build_official(args.preset, args.image_size, args.device, corrections_as_cond=args.interactive)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "weights.pt"
        torch.save({"model": official.state_dict()}, checkpoint)
        if args.interactive:
            run_interactive(args, official, checkpoint, tmp)
            return
        ours = build_sam2_video_predictor(args.preset, checkpoint=checkpoint, device=args.device,
                                          image_size=args.image_size, fill_hole_area=0)
        ours_fp32 = build_sam2_video_predictor(args.preset, checkpoint=checkpoint, device=args.device,
                                               image_size=args.image_size, fill_hole_area=0,
                                               memory_in_bfloat16=False)
        video = Path(tmp) / "frames"
        video.mkdir()
        masks = make_video(video, args.frames)

        print(f"{args.preset} at {args.image_size}, {args.frames} frames 480x640, {args.device}, "
              f"torch threads {torch.get_num_threads()}")
        with torch.inference_mode():
            for predictor in (official, ours, ours_fp32):  # warm-up: first-call costs fall on no one
                run_session(predictor, video, masks, 1, args.device)
        rows = [(memory, predictor, num_objects) for memory, predictor in (("bf16", ours), ("fp32", ours_fp32))
                for num_objects in args.objects]
        speed, peak = {}, {}
        for measure in ("speed", "memory"):
            if measure == "memory" and not args.device.startswith("cuda"):
                # memory pass: tensors above 1 MiB get their own mapping, returned to the system when freed
                # (glibc otherwise keeps freed memory in its heap, hiding the next session's use)
                LIBC.mallopt(M_MMAP_THRESHOLD, 1 << 20)
            for row, (memory, predictor, num_objects) in enumerate(rows):
                order = [("official", official), ("ours", predictor)]
                with torch.inference_mode():
                    for name, session_predictor in order if row % 2 == 0 else order[::-1]:
                        fps, peak_bytes, outputs = run_session(session_predictor, video, masks, num_objects, args.device)
                        if measure == "speed":
                            speed[row, name] = fps, outputs
                        else:
                            peak[row, name] = peak_bytes
        print("memory   objects  official fps  ours fps  speed-up  official peak MiB  ours peak MiB  max |logit diff|")
        for row, (memory, _, num_objects) in enumerate(rows):
            (official_fps, expected), (ours_fps, got) = speed[row, "official"], speed[row, "ours"]
            max_diff = max((a - b).abs().max().item() for a, b in zip(got, expected))
            print(f"{memory:>6}  {num_objects:8d}  {official_fps:12.3f}  {ours_fps:8.3f}  {ours_fps / official_fps:7.2f}x"
                  f"  {peak[row, 'official'] / 2**20:17.0f}  {peak[row, 'ours'] / 2**20:13.0f}  {max_diff:16.2e}")

if __name__ == "__main__":
    main()
