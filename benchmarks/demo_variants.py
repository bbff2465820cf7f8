"""Train the demo's model with some settings changed and print its J&F after every epoch: how the
settings of `sam2-video demo` (`sam2_video/demo.py`, `configs/demo.yaml`) were chosen.

    python benchmarks/demo_variants.py --seed 2                          # the demo's own settings
    python benchmarks/demo_variants.py --seed 2 train.focal_alpha=0.25   # the official focal weighting
    python benchmarks/demo_variants.py --seed 2 --train-videos 96 --epochs 16 model.memory_attention_dropout=0.1

The seed's videos are generated as the demo does (kept under --data for the next variant), the
demo's run config gets the `section.key=value` overrides (checked like `sam2-video train`'s), and the
run scores every epoch on the selection videos (which choose `best.pt`, as in the demo) and on the
held-out ones. The last lines are the held-out J&F of the final weights and of `best.pt`, the demo's
figure. Each line also goes to --results (JSON lines). One run takes 5-10 CPU minutes.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from sam2_video.config import load_config
from sam2_video.demo import add_arguments, check_arguments, demo_config, generate_videos
from sam2_video.errors import UserInputError
from sam2_video.train.checkpoint import load_training_checkpoint
from sam2_video.train.cli import build_model, train
from sam2_video.train.family import model_family
from sam2_video.train.metrics_log import read_metrics


def videos(args: argparse.Namespace, data: Path) -> tuple[Path, Path, Path]:
    """The demo's training, selection and held-out folders for these flags, generated once."""
    root = data / (f"{args.model}_seed{args.seed}_{args.train_videos}x{args.frames}_{args.select_videos}_"
                   f"{args.val_videos}_{args.image_size}px")
    if not (root / "complete").exists():
        generate_videos(args, root)
        (root / "complete").write_text("")
    return root / "train", root / "select", root / "val"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "sam2_video_demo_data")
    parser.add_argument("--results", type=Path, default=Path("demo_variants.jsonl"))
    parser.add_argument("overrides", nargs="*", help="section.key=value settings on top of the demo's")
    args = parser.parse_args()
    try:
        check_arguments(args)
    except UserInputError as err:
        parser.error(str(err))
    train_root, select_root, val_root = videos(args, args.data)
    with tempfile.TemporaryDirectory(prefix="demo_variant_") as tmp:
        out = Path(tmp)
        base = demo_config(args, out, train_root, select_root)
        (out / "base.yaml").write_text(yaml.safe_dump(base.to_dict()))
        try:
            config = load_config(out / "base.yaml", [*args.overrides, "train.val_every_epochs=1"])
        except UserInputError as err:
            parser.error(str(err))
        family = model_family(config.model)
        select, held_out = family.build_validator(str(select_root)), family.build_validator(str(val_root))

        def validate(model: torch.nn.Module) -> dict[str, float]:
            # "J&F" (the selection videos) chooses best.pt
            return {"J&F": select(model)["J&F"], "held-out J&F": held_out(model)["J&F"]}

        torch.manual_seed(args.seed)
        start = time.perf_counter()
        result = train(config, validate=validate)
        seconds = time.perf_counter() - start
        rows = read_metrics(result.out_dir / "metrics.jsonl", kind="val")
        model = build_model(config.model, config.dataset, verbose=False)
        final = {}
        for name in ("last", "best"):
            model.load_state_dict(load_training_checkpoint(result.out_dir / f"{name}.pt")["model"])
            final[name] = held_out(model)["J&F"]
    per_epoch = {key: [round(row[key], 3) for row in rows] for key in ("J&F", "held-out J&F")}
    line = dict(model=args.model, seed=args.seed, train_videos=args.train_videos, epochs=config.train.epochs,
                overrides=args.overrides, jf_selection_per_epoch=per_epoch["J&F"],
                jf_per_epoch=per_epoch["held-out J&F"], jf_final=round(final["last"], 3),
                jf_best_pt=round(final["best"], 3), steps=result.steps, train_seconds=round(seconds))
    print(f"selection J&F per epoch: {' '.join(f'{v:.3f}' for v in per_epoch['J&F'])}")
    print(f"held-out J&F per epoch:  {' '.join(f'{v:.3f}' for v in per_epoch['held-out J&F'])}")
    print(f"held-out J&F of the final weights: {final['last']:.3f}, of best.pt (the demo's figure): "
          f"{final['best']:.3f} ({result.steps} steps, {seconds:.0f} s)")
    with args.results.open("a") as results:
        results.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
