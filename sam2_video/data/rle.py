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
        else:
            raise ValueError("expected an RLE dict with 'size' and 'counts' or a list of polygons")
        mask = mask_utils.decode(rle)
        if isinstance(rle, dict) and mask_utils.encode(mask)["counts"] != rle["counts"]:
            # pycocotools decodes truncated or corrupt strings without complaint (into uninitialised pixels)
            raise ValueError(f"its runs do not cover the {rle_height}x{rle_width} frame exactly")
    except Exception as err:  # pycocotools raises bare Exception, e.g. for a polygon of fewer than 3 points
        raise UserInputError(f"{source}: invalid segmentation, cannot decode it as COCO RLE or polygons ({err})") from err
    if mask.shape != (height, width):
        raise UserInputError(f"{source}: the segmentation is {mask.shape[1]}x{mask.shape[0]} but the frame is {width}x{height}")
    return mask.astype(bool)


def require_keys(record: Any, keys: tuple[str, ...], source: Path | str, what: str) -> None:
    """Raise a UserInputError naming `source` when `record` is not a dict holding every key."""
    missing = [key for key in keys if not isinstance(record, dict) or key not in record]
    if missing:
        raise UserInputError(f"{source}: {what} is missing required key(s) {', '.join(repr(k) for k in missing)}")
