"""COCO segmentations (RLE compressed / uncompressed, polygons) decoded with pycocotools, with file-naming errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from sam2_video.errors import UserInputError


def decode_segmentation(segmentation: Any, height: int, width: int, source: str) -> np.ndarray:
    """[H,W] bool from a COCO `segmentation`: {"size", "counts": str|bytes|list} or a list of polygons.

    `source` names the file and annotation for the error raised on anything that does not decode
    to an H x W mask.
    """
    try:
        if isinstance(segmentation, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)) if segmentation else None
            if rle is None:
                return np.zeros((height, width), dtype=bool)
        elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
            rle_height, rle_width = (int(v) for v in segmentation["size"])
            counts = segmentation["counts"]
            if isinstance(counts, list):
                if sum(counts) != rle_height * rle_width:
                    raise ValueError(f"uncompressed counts sum to {sum(counts)}, not {rle_height}x{rle_width}")
                rle = mask_utils.frPyObjects(segmentation, rle_height, rle_width)
            else:
                rle = {"size": [rle_height, rle_width], "counts": counts.encode() if isinstance(counts, str) else counts}
                runs = compressed_run_lengths(rle["counts"])
                if min(runs, default=0) < 0 or sum(runs) != rle_height * rle_width:
                    raise ValueError(f"its runs add up to {sum(runs)} pixels, not the {rle_height}x{rle_width} frame")
        else:
            raise ValueError("expected an RLE dict with 'size' and 'counts' or a list of polygons")
        mask = mask_utils.decode(rle)
    except Exception as err:  # pycocotools raises bare Exception, e.g. for a polygon of fewer than 3 points
        raise UserInputError(f"{source}: invalid segmentation, cannot decode it as COCO RLE or polygons ({err})") from err
    if mask.shape != (height, width):
        raise UserInputError(f"{source}: the segmentation is {mask.shape[1]}x{mask.shape[0]} but the frame is {width}x{height}")
    return mask.astype(bool)


def compressed_run_lengths(counts: bytes) -> list[int]:
    """The run lengths of a compressed COCO RLE string, parsed as pycocotools' `rleFrString` does.

    Only to validate: pycocotools decodes a truncated or corrupt string without complaint, leaving
    the pixels its runs do not reach uninitialised (or writing past the mask when they overshoot).
    """
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position == len(counts):
                raise ValueError("the counts string ends inside a number")
            char = counts[position] - 48
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            position, shift = position + 1, shift + 5
            if not more and char & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def require_keys(record: Any, keys: tuple[str, ...], source: Path | str, what: str) -> None:
    """Raise a UserInputError naming `source` when `record` is not a dict holding every key."""
    missing = [key for key in keys if not isinstance(record, dict) or key not in record]
    if missing:
        raise UserInputError(f"{source}: {what} is missing required key(s) {', '.join(repr(k) for k in missing)}")
