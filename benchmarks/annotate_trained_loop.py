"""The loop on a trained model: `sam2-video demo`, then `sam2-video annotate` on each held-out demo video
with `--checkpoint OUT/train/last.pt` (and, for comparison, with the untrained model): one click on
ground-truth object 1 on frame 0 (its pixel farthest from its border), propagate forward, export, and
J&F of the exported masks against that object's ground truth (`sam2_video.evaluate`).

    python benchmarks/annotate_trained_loop.py --out /tmp/loop      # about 6 min on a 2-core CPU
    python benchmarks/annotate_trained_loop.py --out /tmp/loop --demo runs/demo   # reuse a finished demo
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx
import numpy as np
import torch
import yaml
from scipy import ndimage

from sam2_video.annotate.cli import open_app, serving
from sam2_video.cli import main as cli
from sam2_video.evaluate.davis import evaluate_davis
from sam2_video.predict.masks_io import read_mask_png, write_palette_png


def click_propagate_export(video: Path, out: Path, checkpoint: Path | None, image_size: int,
                           point: tuple[float, float]) -> Path:
    """One positive click for object 1 on frame 0, forward propagation, export; returns DIR/Annotations."""
    torch.manual_seed(0)
    args = argparse.Namespace(video=video, out=out, checkpoint=checkpoint, device="cpu",
                              image_size=None if checkpoint else image_size,
                              config=None if checkpoint else "sam2.1_tiny_test")
    with serving(open_app(args)) as url, httpx.Client(base_url=url, timeout=600) as client:
        client.post("/api/objects", json={}).raise_for_status()
        client.post("/api/click", json={"frame": 0, "obj_id": 1, "x": point[0], "y": point[1], "label": 1}).raise_for_status()
        client.post("/api/propagate", json={"frame": 0, "direction": "forward"}).raise_for_status()
        while client.get("/api/status").json()["running"]:
            time.sleep(0.05)
        client.post("/api/export", json={}).raise_for_status()
    return out / "Annotations"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="new folder for the demo and the sessions")
    parser.add_argument("--demo", type=Path, help="use this finished `sam2-video demo` output instead of running one")
    parser.add_argument("--demo-args", default="--train-videos 48 --val-videos 2 --frames 8 --epochs 8 --image-size 128",
                        help="arguments of sam2-video demo")
    args = parser.parse_args()
    demo = args.demo or args.out / "demo"
    if args.demo is None:
        assert cli(["demo", "--out", str(demo), *args.demo_args.split()]) == 0
    image_size = yaml.safe_load((demo / "train" / "config.yaml").read_text())["model"]["image_size"]
    val = demo / "data" / "val"
    rows = []
    for name in sorted(p.name for p in (val / "JPEGImages").iterdir()):
        ground_truth = sorted((val / "Annotations" / name).glob("*.png"))
        first = read_mask_png(ground_truth[0]) == 1
        depth = ndimage.distance_transform_edt(first)
        y, x = np.unravel_index(np.argmax(depth), depth.shape)
        gt = args.out / "gt_object1"
        for png in ground_truth:
            write_palette_png(gt / name / png.name, (read_mask_png(png) == 1).astype(np.uint8))
        scores = {}
        for kind, checkpoint in [("untrained", None), ("trained", demo / "train" / "last.pt")]:
            annotations = click_propagate_export(val / "JPEGImages" / name, args.out / f"{kind}_{name}", checkpoint,
                                                 image_size, (float(x), float(y)))
            scores[kind] = evaluate_davis(gt, annotations, sequences=[name]).summary()["J&F-Mean"]
        rows.append((name, scores))
    print("\nJ&F of the exported masks, one click on object 1 of frame 0 (held-out demo videos):")
    print("| video | untrained | trained (last.pt) |\n|---|---|---|")
    for name, scores in rows:
        print(f"| {name} | {scores['untrained']:.3f} | {scores['trained']:.3f} |")
    means = {kind: np.mean([scores[kind] for _, scores in rows]) for kind in ("untrained", "trained")}
    print(f"| mean | {means['untrained']:.3f} | {means['trained']:.3f} |")


if __name__ == "__main__":
    main()
