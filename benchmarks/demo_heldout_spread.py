"""How much a demo's held-out J&F depends on which videos are held out: score a finished
`sam2-video demo` run's `best.pt` on more held-out videos, generated as the demo generates its own
(video i is the same as the demo's `data/val` video i), and print J&F per set of 8 and on all.

    python benchmarks/demo_heldout_spread.py runs/demo --videos 40

The copy-the-first-mask baseline is scored on the same videos. Generated videos go to --data
(kept for the next call); predictions to a temporary folder. One call takes about a second per video.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

from sam2_video.config import load_config
from sam2_video.demo import copy_first_mask, synthesize_held_out
from sam2_video.evaluate.davis import DavisResult, evaluate_davis
from sam2_video.train.checkpoint import load_training_checkpoint
from sam2_video.train.cli import build_model
from sam2_video.train.family import model_family

SET_SIZE = 8


def held_out_videos(demo: Path, count: int, seed: int, data: Path) -> Path:
    """`count` held-out videos of the demo's kind (frames and size as its `data/val`), generated once."""
    first = sorted((demo / "data" / "val" / "JPEGImages").iterdir())[0]
    frames = sorted(first.iterdir())
    with Image.open(frames[0]) as image:
        size = image.height
    root = data / f"seed{seed}_{count}x{len(frames)}_{size}px"
    if not (root / "complete").exists():
        synthesize_held_out(root, count, len(frames), size, seed)
        (root / "complete").write_text("")
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="output folder of a finished `sam2-video demo`")
    parser.add_argument("--videos", type=int, default=40, help="held-out videos to generate and score")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "sam2_video_heldout_spread")
    args = parser.parse_args()
    run_config = args.demo / "train" / "config.yaml"
    if not run_config.is_file() or not (args.demo / "train" / "best.pt").is_file():
        parser.error(f"{args.demo}: not a finished `sam2-video demo` folder (no train/config.yaml or train/best.pt)")
    config = load_config(run_config)
    root = held_out_videos(args.demo, args.videos, config.train.seed, args.data)
    model = build_model(config.model, config.dataset, verbose=False)
    model.load_state_dict(load_training_checkpoint(args.demo / "train" / "best.pt")["model"])
    with tempfile.TemporaryDirectory(prefix="heldout_spread_") as tmp:
        predictions, copies = Path(tmp) / "best", Path(tmp) / "copy"
        model_family(config.model).build_validator(str(root))(model, predictions)
        copy_first_mask(root, copies)
        for label, folder in (("best.pt", predictions), ("copy first mask", copies)):
            result = evaluate_davis(root / "Annotations", folder)  # scored once; sets are slices of its videos
            videos = sorted(result.sequences, key=lambda seq: seq.sequence)
            sets = [DavisResult(videos[i : i + SET_SIZE]).summary()["J&F-Mean"]
                    for i in range(0, len(videos), SET_SIZE)]
            print(f"{label:<16} J&F on all {len(videos)} videos {result.summary()['J&F-Mean']:.3f}; per set of "
                  f"{SET_SIZE}: {' '.join(f'{v:.3f}' for v in sets)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
