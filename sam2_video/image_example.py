"""Image-mode example: segment an object in one image from a click and print the masks' statistics.

    python -m sam2_video.image_example [--config sam2.1_hiera_t] [--checkpoint FILE.pt] [--image FILE.jpg]

Without --checkpoint the weights are random (nothing can be downloaded here), so the masks only
show that the pipeline runs end to end; without --image a generated image is used.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sam2_video.errors import UserInputError
from sam2_video.model.build import build_sam2
from sam2_video.predict.image_predictor import SAM2ImagePredictor


def generated_image(height: int = 480, width: int = 640) -> np.ndarray:
    """A smooth background with a red disc and a green rectangle, RGB uint8 [H, W, 3]."""
    yy, xx = np.mgrid[:height, :width]
    image = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 90)], axis=-1)
    image[(yy - height // 2) ** 2 + (xx - width // 2) ** 2 < (height // 5) ** 2] = (220, 40, 40)
    image[height // 5: height * 2 // 5, width * 2 // 3: width * 9 // 10] = (30, 200, 60)
    return image.astype(np.uint8)


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except FileNotFoundError:
        raise UserInputError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError) as err:
        raise UserInputError(f"{path}: not a readable image ({err})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="sam2.1_hiera_t", help="preset name or official config path")
    parser.add_argument("--checkpoint", type=Path, help="official-format checkpoint (default: random weights)")
    parser.add_argument("--image-size", type=int, default=512, help="model input size (official 1024)")
    parser.add_argument("--image", type=Path, help="RGB image (default: a generated 480x640 image)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)

    import torch

    torch.manual_seed(args.seed)
    try:
        image = _read_image(args.image) if args.image else generated_image()
        model = build_sam2(args.config, checkpoint=args.checkpoint, image_size=args.image_size)
    except UserInputError as err:
        parser.exit(2, f"error: {err}\n")
    predictor = SAM2ImagePredictor(model)
    height, width = image.shape[:2]
    click = np.array([[width // 2, height // 2]])

    start = time.perf_counter()
    predictor.set_image(image)
    embed_seconds = time.perf_counter() - start
    start = time.perf_counter()
    masks, ious, low_res = predictor.predict(point_coords=click, point_labels=np.array([1]))
    predict_seconds = time.perf_counter() - start

    weights = args.checkpoint or f"random (seed {args.seed})"
    print(f"model {model.config.name} at image_size {model.image_size}, weights: {weights}")
    print(f"image {width}x{height}, one positive click at ({click[0, 0]}, {click[0, 1]})")
    print(f"set_image {embed_seconds:.2f} s, predict {predict_seconds:.3f} s")
    print(f"low-res logits {tuple(low_res.shape)}, range [{low_res.min():.2f}, {low_res.max():.2f}]")
    for index, (mask, iou) in enumerate(zip(masks, ious)):
        print(f"mask {index}: {mask.mean() * 100:5.1f}% of the image, predicted IoU {iou:.3f}, "
              f"contains the click: {bool(mask[click[0, 1], click[0, 0]])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
