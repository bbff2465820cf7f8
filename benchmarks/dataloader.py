"""Clips per second through the data layer: read, sample, augment (SAM2 training recipe), prompt, collate.

Data: the real DAVIS frames (854x480 JPEG) of the two 3-object sequences (kite-surf,
paragliding-launch) with the OSVOS palettized masks from ../shared/data, read two ways: as a DAVIS
folder (`VOSFolderDataset`, PNG masks) and as a COCO video JSON with compressed RLE
(`COCOVideoDataset`), written to a temporary folder. Each configuration loads `--clips` clips of 8
frames with 3 objects (batch size 1) in ONE epoch, so each worker's mask cache (`--cache-size`
frames, or 0 = off) can serve repeated frames. Without ../shared/data it falls back to 2 synthetic
854x480 videos with 3 objects. On a shared machine, the CPU seconds per clip (0 workers) are the
steadier figure.

    python benchmarks/dataloader.py [--sizes 512 1024 --workers 0 2 --clips 24 --cache-size 256]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import Subset

from sam2_video.data import (
    COCOVideoDataset,
    ClipTransform,
    PromptGenerator,
    SAM2ClipSampler,
    VOSFolderDataset,
    build_dataloader,
    synthesize,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SEQUENCES = ("kite-surf", "paragliding-launch")


def davis_layout(workdir: Path) -> Path:
    """A DAVIS folder of 3-object videos: symlinks to the shared data, or synthetic videos."""
    root = workdir / "davis"
    frames, masks = SHARED / "davis2016_val_subset" / "JPEGImages", SHARED / "davis2017_val_osvos_predictions"
    if frames.is_dir() and masks.is_dir():
        for sequence in SEQUENCES:
            for folder, source in (("JPEGImages", frames), ("Annotations", masks)):
                (root / folder).mkdir(parents=True, exist_ok=True)
                (root / folder / sequence).symlink_to(source / sequence)
        return root
    print(f"{SHARED} not found: using synthetic 854x480 videos")
    return synthesize(root, num_videos=2, num_frames=50, image_size=(480, 854), num_objects=(3, 3))


def coco_json(davis: Path, workdir: Path) -> Path:
    """The same videos as one COCO video JSON with compressed RLE per object and frame."""
    images, annotations = [], []
    for video_id, video in enumerate(sorted(p.name for p in (davis / "JPEGImages").iterdir())):
        for order, frame in enumerate(sorted((davis / "JPEGImages" / video).iterdir())):
            ids = np.asarray(Image.open(davis / "Annotations" / video / f"{frame.stem}.png"))
            image_id = len(images) + 1
            images.append({"id": image_id, "video_id": video_id, "order_in_video": order, "path": str(frame.resolve()),
                           "width": ids.shape[1], "height": ids.shape[0]})
            for object_id in (i for i in np.unique(ids) if i not in (0, 255)):
                rle = mask_utils.encode(np.asfortranarray(ids == object_id).astype(np.uint8))
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "object_id": int(object_id),
                                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    path = workdir / "coco.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def clips_per_second(dataset, num_clips: int, num_workers: int) -> tuple[float, float | None]:
    """(clips/s wall-clock, CPU seconds per clip in this process or None with workers) over `num_clips`
    clips of the 2 videos in one epoch; the first batch per worker (start-up, cold cache) is not timed."""
    epoch = Subset(dataset, [i % len(dataset) for i in range(num_clips + max(1, num_workers))])
    loader = build_dataloader(epoch, batch_size=1, num_workers=num_workers, seed=0)
    iterator = iter(loader)
    for _ in range(max(1, num_workers)):
        next(iterator)
    start, cpu_start = time.perf_counter(), time.process_time()
    count = sum(batch.num_videos for batch in iterator)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return count / wall, (cpu / count if num_workers == 0 else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--cache-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the main process")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        davis = davis_layout(workdir)
        coco = coco_json(davis, workdir)
        print(f"{'dataset':8} {'size':>5} {'workers':>7} {'cache':>6} {'clips/s':>8} {'cpu s/clip':>10}")
        for size in args.sizes:
            common = dict(
                clip_sampler=SAM2ClipSampler(num_frames=8, max_num_objects=3),
                transform=ClipTransform.sam2_training(size),
                prompt_generator=PromptGenerator(("point", "bbox"), (1, 3), include_center=True, num_of_neg_points=1),
            )
            for workers in args.workers:
                for cache in (0, args.cache_size):
                    for name, dataset in (
                        ("davis", VOSFolderDataset(davis, mask_cache_size=cache, **common)),
                        ("coco", COCOVideoDataset(coco, mask_cache_size=cache, **common)),
                    ):
                        rate, cpu = clips_per_second(dataset, args.clips, workers)
                        cpu_text = f"{cpu:>10.2f}" if cpu is not None else f"{'-':>10}"
                        print(f"{name:8} {size:>5} {workers:>7} {cache:>6} {rate:>8.2f} {cpu_text}", flush=True)


if __name__ == "__main__":
    main()
