"""A demo run's held-out J&F on all frames (the DAVIS convention) and counted only from each object's
first visible frame.

Some held-out objects enter mid-video. On the frames before they appear the ground truth is empty, and
DAVIS scores a frame where both the ground truth and the prediction are empty as J = F = 1. Any method
that leaves the object out until it appears (the copy-the-first-mask baseline, the untrained model)
collects those ones, so its figure depends on how many objects enter late and how late. The second
column leaves those frames out.

    python benchmarks/demo_scores_from_appearance.py runs/demo [more demo output folders]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sam2_video.evaluate.davis import evaluate_davis, present_ids
from sam2_video.predict.masks_io import read_mask_png

METHODS = ("untrained", "copy_first_mask", "finetuned")


def scores(gt_root: Path, pred_root: Path) -> tuple[float, float]:
    """(J&F on all frames, J&F from each object's first visible frame), means over objects."""
    result = evaluate_davis(gt_root, pred_root)
    ids_present = {}  # (sequence, frame) -> object ids in its ground truth, each PNG read once
    from_appearance = []
    for obj in result.objects:
        for frame in obj.frames:
            if (obj.sequence, frame) not in ids_present:
                ids_present[obj.sequence, frame] = present_ids(read_mask_png(gt_root / obj.sequence / f"{frame}.png"))
        visible = [obj.obj_id in ids_present[obj.sequence, frame] for frame in obj.frames]
        first = visible.index(True) if any(visible) else len(visible)
        jf = (np.asarray(obj.j_per_frame) + np.asarray(obj.f_per_frame)) / 2
        if first < len(jf):
            from_appearance.append(float(jf[first:].mean()))
    return float(result.summary()["J&F-Mean"]), float(np.mean(from_appearance))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="`sam2-video demo` output folders")
    args = parser.parse_args()
    print(f"{'run':<24}{'method':<18}{'all frames':>12}{'from appearance':>17}")
    for run in args.runs:
        gt_root = run / "data" / "val" / "Annotations"
        for method in METHODS:
            all_frames, from_appearance = scores(gt_root, run / "eval" / method)
            print(f"{run.name:<24}{method:<18}{all_frames:>12.3f}{from_appearance:>17.3f}")


if __name__ == "__main__":
    main()
