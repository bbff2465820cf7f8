"""Synthetic videos with known ground truth: textured shapes moving over textured backgrounds.

Each object has a saturated colour and a stripe or checker texture that moves with it; backgrounds
are muted low-frequency textures that pan slowly. Objects move slowly or fast (bouncing off the
frame edges), rotate, occlude each other in a fixed depth order, and some leave or enter the frame
mid-video. The ground truth is the visible part of each object (ids 1..N, 0 background), exactly
as a DAVIS annotation. Everything is a function of the seed.
"""
from __future__ import annotations

import colorsys
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sam2_video.data.clip_dataset import ClipDataset, Objects
from sam2_video.data.prompts import PromptGenerator
from sam2_video.data.readers import split_ids
from sam2_video.data.sampling import ClipSampler
from sam2_video.data.transforms import ClipTransform
from sam2_video.errors import UserInputError
from sam2_video.io import atomic_path

SHAPES = ("ellipse", "rectangle", "triangle", "star")


def davis_palette() -> np.ndarray:
    """[256,3] uint8: the DAVIS / PASCAL VOC palette (id 1 red, 2 green, 3 yellow, ...)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        label, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((label >> 0) & 1) << (7 - bit)
            green |= ((label >> 1) & 1) << (7 - bit)
            blue |= ((label >> 2) & 1) << (7 - bit)
            label >>= 3
        palette[index] = (red, green, blue)
    return palette


@dataclass
class ObjectTrack:
    """One object's appearance and motion: position (x, y) and angle at frame t are p0 + t * velocity."""

    shape: str
    radius: float
    aspect: float
    color: np.ndarray  # [3] float in [0, 1]
    texture: str  # "stripes" or "checker"
    texture_period: float
    position: np.ndarray  # [2] at frame 0
    velocity: np.ndarray  # [2] pixels per frame
    angle: float
    angular_velocity: float
    bounces: bool

    def pose(self, t: int, width: int, height: int) -> tuple[np.ndarray, float]:
        """Centre (x, y) and angle at frame t; bouncing objects reflect off the frame edges."""
        position = self.position + t * self.velocity
        if self.bounces:
            limits = np.array([width - 1.0, height - 1.0])
            period = 2 * limits
            folded = np.mod(position, period)
            position = np.where(folded > limits, period - folded, folded)
        return position, self.angle + t * self.angular_velocity

    def outline(self, t: int, width: int, height: int) -> list[tuple[float, float]]:
        """Polygon vertices (x, y) of the shape at frame t."""
        (cx, cy), angle = self.pose(t, width, height)
        if self.shape == "ellipse":
            theta = np.linspace(0, 2 * np.pi, 40, endpoint=False)
            local = np.stack([np.cos(theta), np.sin(theta) * self.aspect], -1)
        elif self.shape == "rectangle":
            local = np.array([[-1, -self.aspect], [1, -self.aspect], [1, self.aspect], [-1, self.aspect]], dtype=float)
        elif self.shape == "triangle":
            theta = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) - np.pi / 2
            local = np.stack([np.cos(theta), np.sin(theta)], -1)
        else:
            theta = np.linspace(0, 2 * np.pi, 10, endpoint=False)
            reach = np.where(np.arange(10) % 2 == 0, 1.0, 0.5)
            local = np.stack([np.cos(theta) * reach, np.sin(theta) * reach], -1)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        points = local * self.radius @ rotation.T + np.array([cx, cy])
        return [tuple(p) for p in points]

    def pattern(self, t: int, width: int, height: int, rows: slice, cols: slice) -> np.ndarray:
        """[h,w,3] float: the object's textured colour (moving with it) on the frame crop rows x cols."""
        (cx, cy), angle = self.pose(t, width, height)
        ys, xs = np.mgrid[rows, cols].astype(np.float32)
        u = (xs - cx) * np.cos(angle) + (ys - cy) * np.sin(angle)
        v = -(xs - cx) * np.sin(angle) + (ys - cy) * np.cos(angle)
        if self.texture == "stripes":
            shade = 0.5 + 0.5 * np.sin(2 * np.pi * u / self.texture_period)
        else:
            shade = ((np.floor(u / self.texture_period) + np.floor(v / self.texture_period)) % 2).astype(np.float32)
        return self.color * (0.65 + 0.35 * shade[..., None])


def _background(rng: np.random.Generator, num_frames: int, height: int, width: int) -> np.ndarray:
    """[T,H,W,3] float: smooth muted noise plus faint stripes, panning a little each frame."""
    pan = rng.uniform(-0.6, 0.6, size=2)
    margin = int(np.ceil(np.abs(pan).max() * num_frames)) + 1
    big_h, big_w = height + 2 * margin, width + 2 * margin
    coarse = rng.uniform(0, 1, size=(rng.integers(3, 7), rng.integers(3, 7), 3))
    smooth = np.asarray(
        Image.fromarray((coarse * 255).astype(np.uint8)).resize((big_w, big_h), Image.BICUBIC), dtype=np.float32
    ) / 255
    gray = smooth.mean(-1, keepdims=True)
    tint = rng.uniform(0.35, 0.65, size=3)
    muted = 0.5 * tint + 0.35 * gray + 0.15 * (smooth - gray)
    ys, xs = np.mgrid[0:big_h, 0:big_w]
    angle = rng.uniform(0, np.pi)
    stripes = np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / rng.uniform(6, 20))
    canvas = np.clip(muted + 0.06 * stripes[..., None], 0, 1)
    frames = np.empty((num_frames, height, width, 3), dtype=np.float32)
    for t in range(num_frames):
        dx, dy = np.round(margin + pan * t).astype(int)
        frames[t] = canvas[dy : dy + height, dx : dx + width]
    return frames


def _distance_to_edge(point: np.ndarray, heading: np.ndarray, frame_size: np.ndarray) -> float:
    """Distance from `point` along unit `heading` to the frame border."""
    limits = np.where(heading > 0, frame_size - point, -point)
    with np.errstate(divide="ignore"):
        steps = np.where(np.abs(heading) > 1e-9, limits / heading, np.inf)
    return float(steps.min())


def random_tracks(
    rng: np.random.Generator, num_objects: int, num_frames: int, height: int, width: int
) -> list[ObjectTrack]:
    """Objects with distinct hues; the first is visible at frame 0, later ones may leave or enter mid-video."""
    size = min(height, width)
    hues = (rng.uniform() + np.arange(num_objects) / num_objects) % 1.0
    tracks = []
    for index in range(num_objects):
        radius = size * rng.uniform(0.1, 0.2)
        fast = rng.uniform() < 0.5
        speed = size * (rng.uniform(0.035, 0.07) if fast else rng.uniform(0.015, 0.03))
        direction = rng.uniform(0, 2 * np.pi)
        velocity = speed * np.array([np.cos(direction), np.sin(direction)])
        motion = "bounce" if index == 0 else rng.choice(["bounce", "leave", "enter"], p=[0.5, 0.25, 0.25])
        frame_size = np.array([width, height], dtype=float)
        inner = frame_size - 2 * radius
        position = radius + rng.uniform(0, 1, size=2) * np.maximum(inner, 1)
        if motion != "bounce":
            middle = frame_size * rng.uniform(0.3, 0.7, size=2)
            heading = velocity / speed
            if motion == "enter":
                # hidden at frame 0, its edge reaches the frame at a frame in [1, T/2]
                entry = rng.integers(1, max(2, num_frames // 2 + 1))
                position = middle - heading * (_distance_to_edge(middle, -heading, frame_size) + radius + speed * entry)
            else:
                # starts inside, completely out of the frame by a frame in [T/2, T-1]
                exit_frame = rng.integers(max(1, num_frames // 2), max(2, num_frames))
                speed = max(speed, (_distance_to_edge(middle, heading, frame_size) + radius) / exit_frame)
                velocity = speed * heading
                position = middle
        tracks.append(
            ObjectTrack(
                shape=str(rng.choice(SHAPES)),
                radius=radius,
                aspect=rng.uniform(0.5, 1.0),
                color=np.array(colorsys.hsv_to_rgb(hues[index], rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0))),
                texture=str(rng.choice(["stripes", "checker"])),
                texture_period=rng.uniform(3, 8),
                position=position,
                velocity=velocity,
                angle=rng.uniform(0, 2 * np.pi),
                angular_velocity=rng.uniform(-0.08, 0.08),
                bounces=motion == "bounce",
            )
        )
    return tracks


def composite(background: np.ndarray, tracks: list[ObjectTrack]) -> tuple[np.ndarray, np.ndarray]:
    """Draw tracks (first = farthest) over background [T,H,W,3] float.

    Returns frames [T,H,W,3] uint8 and ids [T,H,W] uint8 (object i+1 where it is visible, else 0).
    """
    num_frames, height, width, _ = background.shape
    frames = background.copy()
    ids = np.zeros((num_frames, height, width), dtype=np.uint8)
    for t in range(num_frames):
        for index, track in enumerate(tracks):
            canvas = Image.new("L", (width, height), 0)
            ImageDraw.Draw(canvas).polygon(track.outline(t, width, height), fill=1)
            inside = np.asarray(canvas, dtype=bool)
            rows, cols = np.nonzero(inside.any(1))[0], np.nonzero(inside.any(0))[0]
            if len(rows) == 0:
                continue
            crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            inside_crop = inside[crop]
            frames[t][crop][inside_crop] = track.pattern(t, width, height, *crop)[inside_crop]
            ids[t][crop][inside_crop] = index + 1
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8), ids


def render_video(
    seed: int | np.random.SeedSequence,
    num_frames: int,
    image_size: int | tuple[int, int] = 128,
    num_objects: tuple[int, int] = (1, 3),
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic video: frames [T,H,W,3] uint8 and ids [T,H,W] uint8, a pure function of the seed."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    rng = np.random.default_rng(seed)
    count = int(rng.integers(num_objects[0], num_objects[1] + 1))
    tracks = random_tracks(rng, count, num_frames, height, width)
    return composite(_background(rng, num_frames, height, width), tracks)


def synthesize(
    out_dir: str | os.PathLike,
    num_videos: int,
    num_frames: int = 16,
    image_size: int | tuple[int, int] = 128,
    seed: int = 0,
    num_objects: tuple[int, int] = (1, 3),
) -> Path:
    """Write `num_videos` synthetic videos in the DAVIS layout and return `out_dir`.

    out_dir/JPEGImages/<video>/00000.jpg and out_dir/Annotations/<video>/00000.png (palettized with the
    DAVIS palette, values = object ids). Video i is `render_video((seed, i), ...)`. Refuses to write
    into a folder that already holds a video of the same name.
    """
    out_dir = Path(out_dir)
    palette = davis_palette().flatten().tolist()
    for index in range(num_videos):
        name = f"synthetic_{index:04d}"
        image_dir, mask_dir = out_dir / "JPEGImages" / name, out_dir / "Annotations" / name
        if image_dir.exists() or mask_dir.exists():
            raise UserInputError(f"{image_dir} already exists; synthesize writes only new video folders, choose another out_dir")
        frames, ids = render_video(np.random.SeedSequence([seed, index]), num_frames, image_size, num_objects)
        for t in range(num_frames):
            with atomic_path(image_dir / f"{t:05d}.jpg") as tmp:
                Image.fromarray(frames[t]).save(tmp, format="JPEG", quality=95)
            mask = Image.fromarray(ids[t], mode="P")
            mask.putpalette(palette)
            with atomic_path(mask_dir / f"{t:05d}.png") as tmp:
                mask.save(tmp, format="PNG")
    return out_dir


class SyntheticVideoDataset(ClipDataset):
    """`num_videos` synthetic videos generated in memory (video i = `render_video((seed, i), ...)`),
    the same videos `synthesize` writes. `transform` defaults to a plain resize to `image_size`;
    `video_cache_size` rendered videos are kept per worker. Other arguments: see `ClipDataset`."""

    def __init__(
        self,
        num_videos: int,
        num_frames: int = 16,
        image_size: int = 128,
        seed: int = 0,
        num_objects: tuple[int, int] = (1, 3),
        clip_sampler: ClipSampler | None = None,
        transform: ClipTransform | None = None,
        prompt_generator: PromptGenerator | None = None,
        prompt_frames: int | None = 1,
        video_cache_size: int = 32,
    ):
        super().__init__(clip_sampler, transform or ClipTransform(image_size), prompt_generator, prompt_frames, mask_cache_size=0)
        if num_videos < 1 or num_frames < 1:
            raise ValueError("num_videos and num_frames must be >= 1")
        self.num_videos = num_videos
        self.num_frames = num_frames
        self.image_size = image_size
        self.seed = seed
        self.num_objects = num_objects
        self.video_cache_size = video_cache_size
        self._videos: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def video(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """frames [T,H,W,3] uint8 and ids [T,H,W] uint8 of video `index` (cached)."""
        if index not in self._videos:
            seed = np.random.SeedSequence([self.seed, index])
            self._videos[index] = render_video(seed, self.num_frames, self.image_size, self.num_objects)
            while len(self._videos) > self.video_cache_size:
                self._videos.popitem(last=False)
        self._videos.move_to_end(index)
        return self._videos[index]

    def __len__(self) -> int:
        return self.num_videos

    def video_name(self, index: int) -> str:
        return f"synthetic_{index:04d}"

    def frame_names(self, index: int) -> list[str]:
        return [f"{t:05d}" for t in range(self.num_frames)]

    def annotated_frames(self, index: int) -> list[int]:
        return list(range(self.num_frames))

    def read_image(self, index: int, frame: int) -> np.ndarray:
        return self.video(index)[0][frame]

    def read_objects(self, index: int, frame: int) -> Objects:
        return split_ids(self.video(index)[1][frame])
