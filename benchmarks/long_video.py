"""Long videos: peak memory and speed of `sam2-video predict` against the official SAM2VideoPredictor
as the video grows (issue 9, "Flat memory").

For each N it writes an .mp4 of N frames (640x360, two moving shapes, H.264 via PyAV) and a JSON
prompt file (a click on the disc, a box around the rectangle, both on frame 0), then runs, each in
a subprocess of its own so that its peak RSS (`ru_maxrss` from `os.wait4`) is its own:
- ours: `python -m sam2_video.cli predict --video N.mp4 --config PRESET --checkpoint W --image-size S
  --prompts P.json --out D` (frames/s: tqdm's average over the tracking loop, PNG writing included);
- the official `SAM2VideoPredictor` (sam2==1.1.0) with `offload_video_to_cpu=True` and
  `offload_state_to_cpu=True` on the same frames as a JPEG folder (its CPU loader reads JPEG only),
  the same prompts and the same per-frame work (masks merged and written as PNG).
Both get the same random weights (the official model built with seed 0 and the refharness tweaks
of predict_vs_reference.py, saved as an official checkpoint). Then it times opening the longest mp4:
`open_video_frames` (the lazy reader) and our `init_state`, with the RSS each adds above the model.
Last, on the shortest video, it compares our streaming pass (`propagate_in_video(...,
release_old_outputs=True)`, what `predict` runs) with the full-state pass that keeps every output,
in one process, alternating, same prompts. It prints one table and the slopes (least squares, MiB/frame).

    python benchmarks/long_video.py --frames 300 1200 4800 --official-frames 300 1200
    python benchmarks/long_video.py --frames 60 120 --official-frames 60 120     # quick check
Needs the reference: pip install --no-deps sam2==1.1.0 hydra-core iopath
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 360, 640
TEN_MINUTES_AT_30_FPS = 18000


# ------------------------------------------------------------------ inputs

def shapes(t: int) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
    """Frame t's disc (centre x, centre y, radius) and rectangle (x0, y0, x1, y1), in pixels."""
    phase = 2 * np.pi * t / 150
    disc = (320 + 200 * np.sin(phase), 180 + 90 * np.cos(1.3 * phase), 45.0)
    x, y = 320 - 220 * np.cos(0.7 * phase), 180 + 100 * np.sin(phase)
    return disc, (x - 60, y - 40, x + 60, y + 40)


def render(t: int, background: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """RGB uint8 [HEIGHT, WIDTH, 3] of frame t."""
    (cx, cy, radius), (x0, y0, x1, y1) = shapes(t)
    frame = background.copy()
    frame[(xx - cx) ** 2 + (yy - cy) ** 2 < radius**2] = (220, 40, 40)
    frame[(xx > x0) & (xx < x1) & (yy > y0) & (yy < y1)] = (40, 200, 60)
    return frame


def write_inputs(folder: Path, num_frames: int, jpeg_folder: bool) -> tuple[Path, Path, Path | None]:
    """N.mp4, N.json (the prompts) and, for the official predictor, a folder N/ of the same frames as JPEG."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    background = np.stack([90 + 60 * np.sin(xx / 53) * np.cos(yy / 71), 110 + 50 * np.cos(xx / 37 + yy / 91),
                           100 + 70 * xx / WIDTH], axis=-1).astype(np.uint8)
    video, prompts = folder / f"{num_frames}.mp4", folder / f"{num_frames}.json"
    jpegs = folder / str(num_frames) if jpeg_folder else None
    if jpegs is not None:
        jpegs.mkdir()
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for t in range(num_frames):
            frame = render(t, background, yy, xx)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            if jpegs is not None:
                Image.fromarray(frame).save(jpegs / f"{t:05d}.jpg", quality=95)
        container.mux(stream.encode())
    (cx, cy, _), box = shapes(0)
    prompts.write_text(json.dumps([{"frame": 0, "obj_id": 1, "points": [[cx, cy]], "labels": [1]},
                                   {"frame": 0, "obj_id": 2, "box": [round(v) for v in box]}]))
    return video, prompts, jpegs


# ------------------------------------------------------------------ measuring a subprocess

def run_measured(command: list[str], threads: int) -> tuple[str, float]:
    """Run `command`; returns (its stdout + stderr, its peak RSS in MiB). Raises if it fails."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TQDM_SMOOTHING="0", TQDM_MININTERVAL="5")
    env.pop("TQDM_DISABLE", None)  # set by predict_vs_reference.py on import; ours' rate comes from tqdm
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{output[-3000:]}")
    return output, usage.ru_maxrss / 1024


def tqdm_rate(output: str) -> float:
    """Frames/s from the last tqdm line (with TQDM_SMOOTHING=0 the average of the whole loop)."""
    value, unit = re.findall(r"([\d.]+)(frame/s|s/frame)\]", output)[-1]
    return float(value) if unit == "frame/s" else 1 / float(value)


def last_json(output: str) -> dict:
    return json.loads([line for line in output.splitlines() if line.startswith("{")][-1])


# ------------------------------------------------------------------ the children

def add_json_prompts(predictor, state, prompts: Path) -> None:
    """Give the prompts of `write_inputs`' JSON to a predictor with the official API (ours or the official)."""
    for prompt in json.loads(prompts.read_text()):
        predictor.add_new_points_or_box(state, prompt["frame"], prompt["obj_id"], points=prompt.get("points"),
                                        labels=prompt.get("labels"), box=prompt.get("box"))


def child_official(args: argparse.Namespace) -> None:
    """Track with the official predictor as `sam2-video predict` does; print {"fps": ...}."""
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    from sam2_video.predict.masks_io import write_palette_png

    version = args.preset.split("_hiera_")[0]
    predictor = build_sam2_video_predictor(f"configs/{version}/{args.preset}.yaml", str(args.weights), device="cpu",
                                           hydra_overrides_extra=[f"++model.image_size={args.image_size}"])
    predictor.fill_hole_area = 0  # as predict_vs_reference.py: the official code skips it on the CPU anyway
    args.out.mkdir()
    with torch.inference_mode():
        state = predictor.init_state(str(args.video), offload_video_to_cpu=True, offload_state_to_cpu=True)
        add_json_prompts(predictor, state, args.prompts)
        start, count = time.perf_counter(), 0
        for frame_idx, obj_ids, logits in predictor.propagate_in_video(state):
            scores = logits[:, 0].float().numpy()
            ids = np.where(scores.max(0) > 0, np.asarray(obj_ids, dtype=np.uint8)[scores.argmax(0)], 0)
            write_palette_png(args.out / f"{frame_idx:05d}.png", ids.astype(np.uint8))
            count += 1
    print(json.dumps({"fps": count / (time.perf_counter() - start)}))


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def child_open(args: argparse.Namespace) -> None:
    """Time `open_video_frames` and our `init_state` on args.video; print their seconds and RSS added."""
    import torch

    from sam2_video.predict.video_frames import open_video_frames
    from sam2_video.predict.video_predictor import build_sam2_video_predictor

    predictor = build_sam2_video_predictor(args.preset, checkpoint=args.weights, image_size=args.image_size)
    before = _rss_mib()
    start = time.perf_counter()
    with open_video_frames(args.video, args.image_size) as frames:
        frames[0]
        open_s, open_mib = time.perf_counter() - start, _rss_mib() - before
    before = _rss_mib()
    start = time.perf_counter()
    with torch.inference_mode():
        predictor.init_state(str(args.video))
    print(json.dumps({"open_s": open_s, "open_mib": open_mib,
                      "init_s": time.perf_counter() - start, "init_mib": _rss_mib() - before}))


def child_streaming(args: argparse.Namespace) -> None:
    """Frames/s of our full-state and streaming passes over args.video, alternating; print the medians."""
    import torch

    from sam2_video.predict.video_predictor import build_sam2_video_predictor

    predictor = build_sam2_video_predictor(args.preset, checkpoint=args.weights, image_size=args.image_size)
    rates: dict[str, list[float]] = {"full": [], "streaming": []}
    with torch.inference_mode():
        state = predictor.init_state(str(args.video))
        add_json_prompts(predictor, state, args.prompts)
        for _ in predictor.propagate_in_video(state, max_frame_num_to_track=10):  # warm-up, not timed
            pass
        for _ in range(args.repeats):
            for mode in rates:
                predictor.reset_state(state)
                add_json_prompts(predictor, state, args.prompts)
                start, count = time.perf_counter(), 0
                for _ in predictor.propagate_in_video(state, release_old_outputs=mode == "streaming"):
                    count += 1
                rates[mode].append(count / (time.perf_counter() - start))
    print(json.dumps({mode: float(np.median(values)) for mode, values in rates.items()}))


# ------------------------------------------------------------------ main

def slope(frames: list[int], mib: list[float]) -> float:
    return float(np.polyfit(frames, mib, 1)[0]) if len(frames) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[300, 1200, 4800], help="video lengths for ours")
    parser.add_argument("--official-frames", type=int, nargs="*", default=[300, 1200],
                        help="video lengths for the official predictor (none: skip it)")
    parser.add_argument("--preset", default="sam2.1_hiera_t")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each run")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each pass in the streaming check")
    parser.add_argument("--child", choices=("official", "open", "streaming"), help=argparse.SUPPRESS)
    for hidden in ("--video", "--prompts", "--weights", "--out"):
        parser.add_argument(hidden, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        {"official": child_official, "open": child_open, "streaming": child_streaming}[args.child](args)
        return

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from predict_vs_reference import build_official

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.manual_seed(0)
        weights = folder / "weights.pt"
        torch.save({"model": build_official(args.preset, args.image_size, "cpu").state_dict()}, weights)
        lengths = sorted(set(args.frames) | set(args.official_frames))
        inputs = {}
        for n in lengths:
            start = time.perf_counter()
            inputs[n] = write_inputs(folder, n, jpeg_folder=n in args.official_frames)
            print(f"wrote {n} frames in {time.perf_counter() - start:.1f} s", flush=True)
        child = [sys.executable, str(Path(__file__).resolve()), "--preset", args.preset,
                 "--image-size", str(args.image_size), "--weights", str(weights)]
        ours, official = {}, {}
        for n in lengths:
            video, prompts, jpegs = inputs[n]
            if n in args.frames:
                output, peak = run_measured(
                    [sys.executable, "-m", "sam2_video.cli", "predict", "--video", str(video), "--config", args.preset,
                     "--checkpoint", str(weights), "--image-size", str(args.image_size), "--prompts", str(prompts),
                     "--out", str(folder / f"ours_{n}")], args.threads)
                ours[n] = peak, tqdm_rate(output)
                print(f"ours     {n:6d} frames: peak {peak:7.0f} MiB, {ours[n][1]:.2f} frames/s", flush=True)
            if n in args.official_frames:
                output, peak = run_measured(child + ["--child", "official", "--video", str(jpegs), "--prompts",
                                                     str(prompts), "--out", str(folder / f"official_{n}")],
                                            args.threads)
                official[n] = peak, last_json(output)["fps"]
                print(f"official {n:6d} frames: peak {peak:7.0f} MiB, {official[n][1]:.2f} frames/s", flush=True)
        longest = max(lengths)
        output, _ = run_measured(child + ["--child", "open", "--video", str(inputs[longest][0])], args.threads)
        opened = last_json(output)
        shortest = min(lengths)
        output, _ = run_measured(child + ["--child", "streaming", "--repeats", str(args.repeats), "--video",
                                          str(inputs[shortest][0]), "--prompts", str(inputs[shortest][1])],
                                 args.threads)
        passes = last_json(output)

    print(f"\n{args.preset} at {args.image_size} px, 2 objects, {WIDTH}x{HEIGHT} mp4, random weights, "
          f"{args.threads} threads; peak RSS of the whole process")
    print("     N  ours peak MiB  official peak MiB  ours frames/s  official frames/s")
    for n in lengths:
        cells = [f"{ours[n][0]:13.0f}" if n in ours else f"{'-':>13}",
                 f"{official[n][0]:17.0f}" if n in official else f"{'-':>17}",
                 f"{ours[n][1]:13.2f}" if n in ours else f"{'-':>13}",
                 f"{official[n][1]:17.2f}" if n in official else f"{'-':>17}"]
        print(f"{n:6d}  " + "  ".join(cells))
    ours_slope = slope(sorted(ours), [ours[n][0] for n in sorted(ours)])
    official_slope = slope(sorted(official), [official[n][0] for n in sorted(official)])
    print(f"slope: ours {ours_slope:.3f} MiB/frame, official {official_slope:.3f} MiB/frame")
    if ours:
        print(f"ours: peak at {max(ours)} frames / peak at {min(ours)} frames = "
              f"{ours[max(ours)][0] / ours[min(ours)][0]:.2f} (goal <= 1.1)")
    if official:
        # per-frame tensors (frames, memory features, masks) grow with the pixel count: x(1024/S)^2 at 1024 px
        at_1024 = official_slope * (1024 / args.image_size) ** 2
        print(f"official at 1024 px: ~{at_1024:.1f} MiB/frame, ~{at_1024 * TEN_MINUTES_AT_30_FPS / 1024:.0f} GiB "
              f"for a 10-minute 30 fps video ({TEN_MINUTES_AT_30_FPS} frames; scaled by pixel count)")
    print(f"open {longest} frames: open_video_frames {opened['open_s']:.2f} s (+{opened['open_mib']:.0f} MiB), "
          f"init_state {opened['init_s']:.2f} s (+{opened['init_mib']:.0f} MiB above the model)")
    print(f"{shortest} frames, median of {args.repeats} alternating runs: full-state {passes['full']:.2f} frames/s, "
          f"streaming {passes['streaming']:.2f} frames/s ({passes['streaming'] / passes['full'] - 1:+.1%}; "
          f"goal within 5%)")


if __name__ == "__main__":
    main()
