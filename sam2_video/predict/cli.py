"""`sam2-video predict`: segment a frame folder or .mp4 from masks or clicks, write DAVIS PNGs.

Prompts come from a first-frame mask PNG (`--mask`), an annotation folder (`--annotations`) or a JSON
list of clicks and boxes (`--prompts`); `sam2_video.predict.tracking` describes them. Objects are tracked
forward from their first prompt; on earlier frames they have no mask. The output is one palettized PNG
per frame (DAVIS palette, named like the input frame) where each pixel holds the id of the object with
the highest logit, if that logit is > 0.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from sam2_video.device import resolve_device
from sam2_video.errors import UserInputError
from sam2_video.io import check_not_inside_inputs, check_output_file, check_output_folder
from sam2_video.model.presets import PRESET_NAMES, sam2_config
from sam2_video.predict.frames import list_frame_files
from sam2_video.predict.masks_io import read_mask_png, write_overlay_video, write_palette_png
from sam2_video.predict.tracking import (
    Prompt,
    VideoPredictor,
    check_prompts,
    click_prompts_from_json,
    frames_to_track,
    mask_prompts_from_annotations,
    mask_prompts_from_png,
    track_video,
)

DEFAULT_FPS = 24.0

# ------------------------------------------------------------------ video files

def frame_names_of(video_path: Path, num_frames: int) -> list[str]:
    """Output names: the frame files' names for a folder, 00000, 00001, ... for a video file."""
    if video_path.is_dir():
        return [p.stem for p in list_frame_files(video_path)]
    return [f"{t:05d}" for t in range(num_frames)]


def iter_rgb_frames(video_path: Path) -> Iterator[np.ndarray]:
    """The video's frames as RGB uint8 `[H, W, 3]` at their own size."""
    if video_path.is_dir():
        for path in list_frame_files(video_path):
            with Image.open(path) as image:
                yield np.asarray(image.convert("RGB"))
        return
    import av

    with av.open(str(video_path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def video_fps(video_path: Path) -> float:
    """Frame rate of a video file; DEFAULT_FPS for a frame folder or a file that does not say."""
    if video_path.is_dir():
        return DEFAULT_FPS
    import av

    with av.open(str(video_path)) as container:
        rate = container.streams.video[0].average_rate
    return float(rate) if rate else DEFAULT_FPS


# ------------------------------------------------------------------ command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--video", required=True, type=Path, help="a folder of JPEG/PNG frames or an .mp4 file")
    parser.add_argument("--out", required=True, type=Path, help="folder for the palettized mask PNGs")
    parser.add_argument("--model", choices=("sam2", "stcn"), default="sam2")
    parser.add_argument("--config", help="SAM2 preset, e.g. sam2.1_hiera_t (default: from the checkpoint's file name)")
    parser.add_argument("--checkpoint", type=Path, help="sam2: an official SAM2/SAM2.1 checkpoint or an exported "
                        "one (without it the weights are random); stcn: last.pt or best.pt of an STCN training run")
    parser.add_argument("--image-size", type=int, help="model input size (default: the preset's; stcn: the trained one)")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--mask", type=Path, help="first-frame mask PNG (palette ids, or 0/255 for one object)")
    prompt.add_argument("--annotations", type=Path,
                        help="folder of mask PNGs named like the frames; each object is prompted on the first "
                        "frame where it appears (DAVIS semi-supervised protocol)")
    prompt.add_argument("--prompts", type=Path, help='JSON list of clicks/boxes: [{"frame": 0, "obj_id": 1, '
                        '"points": [[x, y]], "labels": [1]}, {"frame": 0, "obj_id": 2, "box": [x0, y0, x1, y1]}]')
    parser.add_argument("--overlay", type=Path, help="also write an .mp4 of the masks drawn over the frames")
    parser.add_argument("--overwrite", action="store_true", help="replace existing PNGs / overlay in the outputs")
    parser.add_argument("--device", default="cpu", help="torch device: auto, cpu, cuda, cuda:N or mps")


def _sam2_preset(args: argparse.Namespace) -> str:
    """--config, or else the preset the checkpoint's file name spells (sam2.1_hiera_tiny.pt -> sam2.1_hiera_t)."""
    if args.config is not None:
        return args.config
    if args.checkpoint is None:
        raise UserInputError("give --checkpoint FILE (official SAM2/SAM2.1 weights) or --config PRESET")
    try:
        sam2_config(args.checkpoint.name)
    except ValueError:
        raise UserInputError(
            f"--checkpoint {args.checkpoint}: without --config the SAM2 preset is taken from the checkpoint's file "
            f"name, and {args.checkpoint.name!r} names none; pass --config PRESET (one of {', '.join(PRESET_NAMES)})"
        ) from None
    return args.checkpoint.name


def build_predictor(args: argparse.Namespace) -> VideoPredictor:
    """The SAM2 or STCN video predictor the arguments ask for."""
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise UserInputError(f"checkpoint not found: {args.checkpoint}")
    device = resolve_device(args.device, "--device")
    if args.model == "stcn":
        from sam2_video.predict.stcn_predictor import build_stcn_video_predictor

        if args.config is not None:
            raise UserInputError("--config names a SAM2 preset; --model stcn takes its sizes from --checkpoint")
        return build_stcn_video_predictor(checkpoint=args.checkpoint, device=device, image_size=args.image_size)
    from sam2_video.predict.video_predictor import build_sam2_video_predictor

    config = _sam2_preset(args)
    if args.checkpoint is None:
        print(f"warning: no --checkpoint: {config} gets random weights, so the masks will be meaningless "
              "(give official SAM2/SAM2.1 weights with --checkpoint)", file=sys.stderr)
    try:
        return build_sam2_video_predictor(config, checkpoint=args.checkpoint, device=device,
                                          image_size=args.image_size)
    except ValueError as err:
        if isinstance(err, UserInputError):
            raise
        raise UserInputError(str(err)) from None


def _check_output_locations(args: argparse.Namespace) -> None:
    """--out is a folder and --overlay a file name that can be written, neither of them in an input."""
    inputs = {"--video": args.video, "--annotations": args.annotations}
    check_not_inside_inputs(args.out, "--out", inputs)
    check_output_folder(args.out, "--out")
    if args.overlay is not None:
        if args.overlay.suffix.lower() != ".mp4":
            raise UserInputError(f"--overlay {args.overlay}: the overlay video must be an .mp4 file")
        check_not_inside_inputs(args.overlay, "--overlay", inputs)
        check_output_file(args.overlay, "--overlay", args.overwrite)


def _check_masks_free(out_paths: Sequence[Path], overwrite: bool) -> None:
    """Refuse to replace existing mask PNGs unless --overwrite."""
    taken = [p for p in out_paths if p.exists()]
    if taken and not overwrite:
        raise UserInputError(
            f"{len(taken)} output file(s) already exist, e.g. {taken[0]}; nothing was written. "
            "Choose another --out or pass --overwrite"
        )


def run(args: argparse.Namespace) -> int:
    video_path: Path = args.video
    _check_output_locations(args)
    if args.model == "stcn" and args.prompts is not None:
        raise UserInputError("--model stcn is prompted by masks only: use --mask or --annotations, not --prompts")
    if args.mask is not None:
        prompts: list[Prompt] = mask_prompts_from_png(args.mask)
    elif args.prompts is not None:
        prompts = click_prompts_from_json(args.prompts)
    predictor = build_predictor(args)
    state = predictor.init_state(str(video_path))
    num_frames = state["num_frames"]
    frame_names = frame_names_of(video_path, num_frames)
    if args.annotations is not None:
        frame_size = (state["video_height"], state["video_width"])
        prompts = mask_prompts_from_annotations(args.annotations, frame_names, frame_size, video_path)
    check_prompts(prompts, state, video_path, frame_names)
    out_paths = [args.out / f"{name}.png" for name in frame_names]
    _check_masks_free(out_paths, args.overwrite)

    together = args.model == "stcn"
    written = 0
    try:
        with tqdm(total=frames_to_track(prompts, num_frames, together), desc="predict", unit="frame") as progress:
            for frame_idx, ids in track_video(predictor, state, prompts, together, on_frame_tracked=progress.update):
                write_palette_png(out_paths[frame_idx], ids)
                written += 1
    except OSError as err:
        raise _after_writing(err, f"{written} of {num_frames} masks were written to {args.out}") from None
    print(f"wrote {num_frames} masks to {args.out}")
    if args.overlay is not None:
        masks = (read_mask_png(path) for path in out_paths)
        try:
            write_overlay_video(iter_rgb_frames(video_path), masks, args.overlay, fps=video_fps(video_path))
        except OSError as err:
            raise _after_writing(err, f"the {num_frames} masks in {args.out} were written, the overlay "
                                 f"{args.overlay} was not") from None
        print(f"wrote {args.overlay}")
    return 0


def _after_writing(err: OSError, written: str) -> UserInputError:
    """An OSError met after some outputs were written, as one message that says which ones."""
    where = f"{err.filename}: " if err.filename is not None else ""
    return UserInputError(f"{where}{err.strerror or err}; {written}")
