"""Reading frames and mask files, with errors that name the file and say what was expected."""
from __future__ import annotations

from pathlib import Path
import os
from typing import Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

from sam2_video.errors import UserInputError

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
VOID_ID = 255


def list_frames(folder: Path) -> list[Path]:
    """Frame files (.jpg/.jpeg/.png) of a video folder, sorted by name; an error if there are none."""
    if not folder.is_dir():
        raise UserInputError(f"{folder}: video folder not found")
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith("."))
    if not frames:
        raise UserInputError(f"{folder}: empty video folder, expected frames named like 00000.jpg or 00000.png")
    return frames


def read_frame(path: Path) -> np.ndarray:
    """[H,W,3] uint8 RGB."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise UserInputError(f"{path}: cannot read the frame as an image ({err})") from err


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except FileNotFoundError:
        raise UserInputError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError) as err:
        raise UserInputError(f"{path}: cannot read the file as an image ({err})") from err


def read_id_map(path: Path, ignore_ids: Iterable[int] = ()) -> np.ndarray:
    """[H,W] int32 object ids (0 = background) from a mask PNG.

    Palettized (mode P): pixel values are object ids, 255 (void) is ignored. Grayscale with only
    {0, 255}: one object, id 1. Other grayscale / 16-bit maps: every non-zero value is an object
    (class-id label maps, e.g. BCSS). RGB masks are accepted only when they are gray or black/white.
    Ids in `ignore_ids` become background.
    """
    try:
        with Image.open(path) as image:
            mode = image.mode
            values = np.asarray(image)
    except (UnidentifiedImageError, OSError) as err:
        raise UserInputError(f"{path}: cannot read the mask as an image ({err})") from err
    if mode in ("RGB", "RGBA"):
        rgb = values[..., :3]
        if not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
            raise UserInputError(
                f"{path}: RGB colour mask; expected a palettized PNG (pixel value = object id, as DAVIS), "
                f"a grayscale label map, or a black/white mask"
            )
        values, mode = rgb[..., 0], "L"
    if mode == "1":
        return values.astype(np.int32)
    ids = values.astype(np.int32)
    if mode == "P":
        ids[ids == VOID_ID] = 0
    elif mode == "L" and np.isin(ids, (0, 255)).all():
        ids = (ids == 255).astype(np.int32)
    for ignored in ignore_ids:
        ids[ids == ignored] = 0
    return ids


def dropped_values(path: Path, ignore_ids: Iterable[int] = ()) -> list[int]:
    """Non-zero pixel values of a mask PNG that `read_id_map` turns into background: 255 (void) in a
    palettized mask, and `ignore_ids`. Decodes the pixels; meant for explaining an empty mask."""
    with Image.open(path) as image:
        mode, values = image.mode, np.unique(np.asarray(image))
    dropped = set(int(v) for v in values) & set(ignore_ids)
    if mode == "P" and VOID_ID in values:
        dropped.add(VOID_ID)
    return sorted(dropped - {0})


def split_ids(ids: np.ndarray) -> dict[int, np.ndarray]:
    """{object id: [H,W] bool} for every non-zero id of an id map."""
    present = np.nonzero(np.bincount(ids.ravel()))[0]
    return {int(i): ids == i for i in present if i != 0}


def read_video_list(path: str | os.PathLike) -> list[str]:
    """Video names from a text file, one per line (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: video list not found")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
