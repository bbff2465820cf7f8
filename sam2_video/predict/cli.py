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
from tqdm import tqdm

from sam2_video.config import MODEL_KINDS, stored_model_section
from sam2_video.device import resolve_device, slow_bfloat16_warning
from sam2_video.errors import UserInputError
from sam2_video.io import check_not_inside_inputs, check_output_file, check_output_folder
from sam2_video.model.presets import PRESET_NAMES, sam2_config
from sam2_video.model.run_checkpoint import stored_run_config
from sam2_video.predict.masks_io import write_overlay_video, write_palette_png
from sam2_video.predict.tracking import (
    Prompt,
    VideoPredictor,
    check_prompts,
    click_prompts_from_json,
    frames_to_track,
    mask_prompts_from_annotations,
    mask_prompts_from_png,
    object_id_map,
    track_video,
)
from sam2_video.predict.video_frames import open_video_frames

DEFAULT_FPS = 24.0

# ------------------------------------------------------------------ video sources

def is_live_source(video: str) -> bool:
    """A URL (rtsp://, http://, ...) or a capture device (/dev/video0): read as a stream, frame after frame."""
    return "://" in video or video.startswith("/dev/")


def live_frames(video: str) -> Iterator[np.ndarray]:
    """RGB uint8 `[H, W, 3]` frames of a stream or device that PyAV (FFmpeg) can open, as they arrive."""
    import av

    try:
        container = av.open(video)
    except av.FFmpegError as err:
        raise UserInputError(f"--video {video}: cannot open the stream ({err})") from None
    with container:
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
    parser.add_argument("--video", required=True, help="a folder of JPEG/PNG frames, a video file (.mp4/.avi/.mov/"
                        ".mkv), or a live source PyAV can open (rtsp://..., /dev/video0), tracked as it streams")
    parser.add_argument("--out", required=True, type=Path, help="folder for the palettized mask PNGs")
    parser.add_argument("--model", choices=MODEL_KINDS, default="sam2")
    parser.add_argument("--config", help="SAM2 preset, e.g. sam2.1_hiera_t (default: the training run's, or the one "
                        "the checkpoint's file name spells)")
    parser.add_argument("--checkpoint", type=Path, help="sam2: an official SAM2/SAM2.1 checkpoint, an exported one or a "
                        "training run's last.pt/best.pt (built as the run was); without it the weights are random; "
                        "stcn: last.pt or best.pt of an STCN training run")
    parser.add_argument("--image-size", type=int, help="model input size (default: the training run's, else the preset's)")
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
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="sam2: bfloat16 runs the model under bf16 autocast, for GPUs and CPUs with bf16 units "
                        "(masks agree with float32 on about 99%% of the pixels; emulated on other CPUs: 5x slower)")


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
        if args.dtype != "float32":
            raise UserInputError("--dtype applies to --model sam2; STCN runs in float32 (leave --dtype out)")
        return build_stcn_video_predictor(checkpoint=args.checkpoint, device=device, image_size=args.image_size)
    from sam2_video.predict.video_predictor import build_sam2_video_predictor

    run = None
    if args.checkpoint is not None:  # a training run's last.pt / best.pt says how it was built
        run = stored_model_section(stored_run_config(args.checkpoint),
                                   f"--checkpoint {args.checkpoint}")
    if run is not None and run.model != args.model:
        raise UserInputError(f"--checkpoint {args.checkpoint}: a {run.model!r} training run; pass --model {run.model}")
    config = args.config or run.config_path if run is not None else _sam2_preset(args)
    image_size = args.image_size if args.image_size is not None or run is None else run.image_size
    overrides = {} if run is None else run.sam2_overrides()
    if args.checkpoint is None:
        print(f"warning: no --checkpoint: {config} gets random weights, so the masks will be meaningless "
              "(give official SAM2/SAM2.1 weights with --checkpoint)", file=sys.stderr)
    if args.dtype == "bfloat16" and (warning := slow_bfloat16_warning(device)) is not None:
        print(warning, file=sys.stderr)
    try:
        return build_sam2_video_predictor(config, checkpoint=args.checkpoint, device=device,
                                          image_size=image_size, dtype=args.dtype, **overrides)
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
    _check_output_locations(args)
    if args.model == "stcn" and args.prompts is not None:
        raise UserInputError("--model stcn is prompted by masks only: use --mask or --annotations, not --prompts")
    if args.mask is not None:
        prompts: list[Prompt] = mask_prompts_from_png(args.mask)
    elif args.prompts is not None:
        prompts = click_prompts_from_json(args.prompts)
    if is_live_source(args.video):
        return _run_live(args, prompts)
    video_path = Path(args.video)
    predictor = build_predictor(args)
    state = predictor.init_state(str(video_path))
    num_frames = state["num_frames"]
    # names, and the original-size frames for the overlay, from a reader of their own (never all in memory)
    with open_video_frames(video_path, image_size=16, prefetch=0) as video:  # no model input read from it
        frame_names = video.names
        if args.annotations is not None:
            frame_size = (state["video_height"], state["video_width"])
            prompts = mask_prompts_from_annotations(args.annotations, frame_names, frame_size, video_path)
        check_prompts(prompts, state, video_path, frame_names)
        out_paths = [args.out / f"{name}.png" for name in frame_names]
        _check_masks_free(out_paths, args.overwrite)
        together = args.model == "stcn"
        with tqdm(total=frames_to_track(prompts, num_frames, together), desc="predict", unit="frame") as progress:
            tracked = track_video(predictor, state, prompts, together, on_frame_tracked=progress.update)
            rgb_frames = video.iter_rgb() if args.overlay is not None else iter(lambda: None, 0)
            outputs = ((out_paths[t], ids, rgb) for (t, ids), rgb in zip(tracked, rgb_frames))
            written = _write_outputs(outputs, args, video_fps(video_path), num_frames)
    print(f"wrote {written} masks to {args.out}" + (f" and {args.overlay}" if args.overlay is not None else ""))
    return 0


def _run_live(args: argparse.Namespace, prompts: list[Prompt]) -> int:
    """Track a stream or capture device until it ends (Ctrl-C stops it; the masks written stay complete)."""
    if args.model == "stcn" or args.annotations is not None:
        raise UserInputError(f"--video {args.video}: a live source is tracked by SAM2 from --mask or --prompts")
    predictor = build_predictor(args)
    current: list[np.ndarray] = []  # the frame being tracked: for its size and the overlay (one frame held)

    def remembered(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for rgb in frames:
            current[:] = [rgb]
            yield rgb

    def outputs() -> Iterator[tuple[Path, np.ndarray, np.ndarray]]:
        with tqdm(desc="predict", unit="frame") as progress:
            for frame_idx, obj_ids, logits in predictor.track_stream(remembered(live_frames(args.video)), prompts):
                progress.update()
                rgb = current[0]
                yield args.out / f"{frame_idx:05d}.png", object_id_map(obj_ids, logits, *rgb.shape[:2]), rgb

    written = _write_outputs(outputs(), args, DEFAULT_FPS, None)
    print(f"wrote {written} masks to {args.out}" + (f" and {args.overlay}" if args.overlay is not None else ""))
    return 0


def _write_outputs(outputs: Iterator[tuple[Path, np.ndarray, np.ndarray | None]], args: argparse.Namespace,
                   fps: float, num_frames: int | None) -> int:
    """Write each tracked `(png path, ids [H, W], RGB frame [H, W, 3])` as it comes (each PNG atomically) and,
    with --overlay, encode the overlay video on the fly; returns the number of masks written. An error or
    Ctrl-C leaves the masks written so far complete on disk, and the message says how many there are."""
    written = 0

    def written_masks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        nonlocal written
        for path, ids, rgb in outputs:
            write_palette_png(path, ids)
            written += 1
            yield rgb, ids

    def done() -> str:
        total = f" of {num_frames}" if num_frames is not None else ""
        overlay = f"; the overlay {args.overlay} was not written" if args.overlay is not None else ""
        return f"{written}{total} masks were written to {args.out}{overlay}"

    try:
        if args.overlay is None:
            for _ in written_masks():
                pass
        else:
            write_overlay_video(written_masks(), args.overlay, fps=fps)
    except OSError as err:
        raise _after_writing(err, done()) from None
    except UserInputError as err:  # e.g. an unreadable frame in the middle of the video
        raise UserInputError(f"{err}; {done()}") from None
    except KeyboardInterrupt:
        print(f"interrupted: {done()}", file=sys.stderr)
        raise
    return written


def _after_writing(err: OSError, written: str) -> UserInputError:
    """An OSError met after some outputs were written, as one message that says which ones."""
    where = f"{err.filename}: " if err.filename is not None else ""
    return UserInputError(f"{where}{err.strerror or err}; {written}")
