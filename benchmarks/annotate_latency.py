"""Latency of `sam2-video annotate`: a click -> its mask back from the server, over real HTTP.

For each model (random weights) the server runs in this process on a local port; a click is a POST
/api/click plus the GET of the frame's mask PNG the page then loads. "cached frame": more clicks on a
frame whose image embedding the predictor holds (the last frame it ran the image encoder on);
"new frame": the first click on a frame not encoded yet (runs the image encoder). Median of --repeats.

    python benchmarks/annotate_latency.py                      # sam2.1_hiera_t at 1024 and 512, tiny preset
    python benchmarks/annotate_latency.py --models sam2.1_hiera_t:1024 --repeats 9
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from sam2_video.annotate.cli import open_app, serving

DAVIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016_val_subset" / "JPEGImages" / "blackswan"


def make_video(folder: Path, num_frames: int) -> Path:
    """The first frames of DAVIS blackswan (854x480) when ../shared/data has it, else generated 854x480 frames."""
    folder.mkdir(parents=True)
    real = sorted(DAVIS.glob("*.jpg"))[:num_frames] if DAVIS.is_dir() else []
    for t in range(num_frames):
        if t < len(real):
            shutil.copyfile(real[t], folder / real[t].name)
        else:
            rng = np.random.default_rng(t)
            Image.fromarray(rng.integers(0, 255, (480, 854, 3), dtype=np.uint8)).save(folder / f"{t:05d}.jpg")
    return folder


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return (time.perf_counter() - start) * 1000


def measure(preset: str, image_size: int, video: Path, out: Path, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    args = argparse.Namespace(video=video, out=out, checkpoint=None, config=preset, image_size=image_size, device="cpu")
    app = open_app(args)
    with serving(app) as url, httpx.Client(base_url=url, timeout=600) as client:
        client.post("/api/objects", json={})

        def click(frame: int, k: int) -> None:
            response = client.post("/api/click", json={"frame": frame, "obj_id": 1, "x": 300.0 + 20 * k,
                                                       "y": 200.0 + 10 * k, "label": 1})
            response.raise_for_status()
            client.get(f"/api/masks/{frame}.png").raise_for_status()

        click(0, 0)  # frame 0 was encoded when the video was opened
        cached = [timed(lambda k=k: click(0, k)) for k in range(1, repeats + 1)]
        new = [timed(lambda frame=frame: click(frame, 0)) for frame in range(1, repeats + 1)]
        png = [timed(lambda: client.get("/api/masks/0.png").raise_for_status()) for _ in range(repeats)]
    return {"cached": statistics.median(cached), "new": statistics.median(new), "png": statistics.median(png)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sam2.1_hiera_t:1024", "sam2.1_hiera_t:512", "sam2.1_tiny_test:128"],
                        help="PRESET:IMAGE_SIZE pairs")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "blackswan", args.repeats + 1)
        for spec in args.models:
            preset, size = spec.split(":")
            result = measure(preset, int(size), video, Path(tmp) / f"out_{preset}_{size}", args.repeats)
            rows.append((preset, size, result))
            print(f"done {spec}: {result}", flush=True)
    print(f"\nclick -> mask over HTTP, {args.threads} threads, video 854x480, median of {args.repeats} (ms):")
    print("| model | image size | click, cached frame | first click on a new frame | mask PNG GET alone |")
    print("|---|---|---|---|---|")
    for preset, size, result in rows:
        print(f"| {preset} | {size} | {result['cached']:.0f} | {result['new']:.0f} | {result['png']:.1f} |")


if __name__ == "__main__":
    main()
