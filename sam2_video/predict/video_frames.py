"""Video frames read on demand: a frame folder or a video file, indexed like the tensor [T, 3, S, S].

`open_video_frames(path, S)` returns a `VideoFrames`: `frames[i]` is the normalised float32
[3, S, S] that `load_video_frames` gives for frame i (same reader, bit-identical), `frames[a:b]`
is [n, 3, S, S], `len(frames)` the frame count. Only a bounded LRU cache of resized uint8 frames
is kept (S*S*3 bytes each: 3 MiB at 1024 px, 192 KiB at 256 px), and a background thread reads the
frames that follow the last access, in its direction (forward or reverse), so that a model slower
than the decoder never waits for a frame.

Opening is cheap: a folder is listed and its first frame's header read (the other frames' size is
checked when they are read); a video file's packets are scanned without decoding pixels (0.1 s for
4800 frames). A frame that cannot be read raises `UserInputError` naming its index and file when it
is reached; a truncated video file is reported when it is opened.

Random access in video files seeks. The packet scan gives each frame's presentation timestamp (its
index is the timestamp's rank, so irregular timestamps and B-frames are exact) and the keyframes;
frame i is read by seeking to the last keyframe at or before it and decoding forward to it, while
reads that continue from the decoder's position never seek. Files whose timestamps do not order the
frames (B-frames in .avi, missing or repeated timestamps) are numbered as decoded, as a full decode
does, and read backwards by decoding from the start. The other option, a uint8 copy of the
video on disk, needs a full decode before the first random access (a prompt on frame 3000 waits
for 3000 decodes) and S*S*3 bytes of disk per frame (14 GiB for 4800 frames at 1024 px); a seek
costs at most one group of pictures of decoding, and reverse reading decodes each group once per
`prefetch // 2` frames it keeps.
"""
from __future__ import annotations

import bisect
import operator
import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NoReturn, Protocol

import av
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from sam2_video.errors import UserInputError
from sam2_video.predict.frames import VIDEO_EXTENSIONS, frames_to_input, list_frame_files, resize_frame

DEFAULT_CACHE_SIZE = 64
DEFAULT_PREFETCH = 16


class FrameSource(Protocol):
    """Decodes original-size frames of one video; not thread-safe."""

    path: Path
    names: list[str]
    height: int
    width: int

    def decode(self, start: int, stop: int,
               interrupted: Callable[[], bool] = lambda: False) -> Iterator[tuple[int, Image.Image]]:
        """(index, RGB image) of frames start..stop-1, in order; ends early once `interrupted()`
        is true (checked after each frame decoded, also the frames before `start`)."""

    def reopen(self) -> FrameSource:
        """An independent source of the same video (its own decoder position)."""

    def close(self) -> None: ...


class FolderSource:
    """A folder of .jpg/.jpeg/.png frames (order of `list_frame_files`)."""

    def __init__(self, folder: Path, paths: list[Path] | None = None):
        self.path = folder
        self._paths = paths if paths is not None else list_frame_files(folder)
        self.names = [p.stem for p in self._paths]
        try:
            with Image.open(self._paths[0]) as image:  # header only
                self.width, self.height = image.size
        except (UnidentifiedImageError, OSError) as err:
            raise UserInputError(f"{self._paths[0]}: cannot read the image of frame 0 ({err})") from err

    def decode(self, start: int, stop: int,
               interrupted: Callable[[], bool] = lambda: False) -> Iterator[tuple[int, Image.Image]]:
        for index in range(start, stop):
            if interrupted():
                return
            path = self._paths[index]
            try:
                with Image.open(path) as image:
                    rgb = image.convert("RGB")
            except (UnidentifiedImageError, OSError) as err:
                raise UserInputError(f"{path}: cannot read the image of frame {index} ({err})") from err
            if rgb.size != (self.width, self.height):
                raise UserInputError(
                    f"{path}: frame size {rgb.size[0]}x{rgb.size[1]} differs from {self.width}x{self.height} "
                    f"of {self._paths[0].name} (frame {index}; all frames of a video must have the same size)"
                )
            yield index, rgb

    def reopen(self) -> FolderSource:
        return FolderSource(self.path, self._paths)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class VideoIndex:
    """What the packet scan of a video file found: the frame count, each frame's presentation
    timestamp (sorted; None when the timestamps do not order the frames, e.g. B-frames in .avi:
    frames are then numbered as decoded and every seek decodes from the start), and the keyframes'
    frame indices with the timestamps to seek to them."""

    num_frames: int
    pts: list[int] | None
    key_indices: list[int]
    key_seek: list[int]


class VideoFileSource:
    """A video file decoded with PyAV, indexed by a packet scan (see the module docstring)."""

    def __init__(self, path: Path, index: VideoIndex | None = None):
        self.path = path
        try:
            self._container = av.open(str(path))
        except av.FFmpegError as err:
            raise UserInputError(f"{path}: cannot open the video: {err.strerror} (truncated, or not a video?)") from err
        if not self._container.streams.video:
            self._container.close()
            raise UserInputError(f"{path}: the file has no video stream")
        self._stream = self._container.streams.video[0]
        self.width, self.height = self._stream.codec_context.width, self._stream.codec_context.height
        self.index = index if index is not None else self._scan()
        self.names = [f"{i:05d}" for i in range(self.index.num_frames)]
        self._pts_index = None if self.index.pts is None else {pts: i for i, pts in enumerate(self.index.pts)}
        self._frames: Iterator[av.VideoFrame] | None = None  # the decoder; yields frame self._next first
        self._next = 0
        self._from_start = False  # the decoder started at the beginning of the file (not at a seek)

    def _scan(self) -> VideoIndex:
        """Read every packet of the stream (no decoding); checks that the file is complete."""
        pts: list[int | None] = []
        keys: list[tuple[int, int]] = []
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                if packet.is_corrupt:
                    self._fail(f"frame {len(pts)} is incomplete (truncated file?)")
                if packet.is_keyframe and packet.pts is not None:
                    keys.append((packet.pts, packet.dts if packet.dts is not None else packet.pts))
                pts.append(packet.pts)
        except av.FFmpegError as err:
            self._fail(f"cannot read frame {len(pts)}: {err.strerror}")
        if self._stream.frames > len(pts):
            self._fail(f"the file lists {self._stream.frames} frames but holds only {len(pts)} (truncated file?)")
        if not pts:
            self._fail("the video has no frames")
        if None in pts or len(set(pts)) != len(pts):
            return VideoIndex(len(pts), None, [], [])
        pts.sort()
        keys.sort()
        return VideoIndex(len(pts), pts, [bisect.bisect_left(pts, p) for p, _ in keys], [seek for _, seek in keys])

    def _fail(self, message: str) -> NoReturn:
        self._container.close()
        raise UserInputError(f"{self.path}: {message}")

    def decode(self, start: int, stop: int,
               interrupted: Callable[[], bool] = lambda: False) -> Iterator[tuple[int, Image.Image]]:
        keys = self.index.key_indices if self._pts_index is not None else []
        key = bisect.bisect_right(keys, start) - 1  # last keyframe at or before start (-1: the file's start)
        continues = self._frames is not None and self._next <= start
        if not (continues and (key < 0 or keys[key] <= self._next)):
            self._seek(key)
        while self._next < stop and not interrupted():
            frame = self._decode_next()
            index = self._next if self._pts_index is None else self._pts_index.get(frame.pts)
            if index != self._next:
                if not self._from_start and index is not None and index < self._next:
                    continue  # frames of the previous group shown after the keyframe sought (open GOP)
                if self._from_start:  # the timestamps do not give the order: number frames as decoded
                    self._pts_index = None
                self._seek(-1)
                continue
            self._next = index + 1
            if index >= start:
                yield index, frame.to_image()

    def _seek(self, key: int) -> None:
        """Position the decoder at keyframe number `key` (-1: reopen at the start)."""
        self._from_start = key < 0
        if key < 0:
            self._container.close()
            self._container = av.open(str(self.path))
            self._stream = self._container.streams.video[0]
            self._next = 0
        else:
            self._container.seek(self.index.key_seek[key], backward=True, any_frame=False, stream=self._stream)
            self._next = self.index.key_indices[key]
        self._frames = self._container.decode(self._stream)

    def _decode_next(self) -> av.VideoFrame:
        try:
            return next(self._frames)
        except StopIteration:
            self._frames = None  # the next read seeks
            raise UserInputError(f"{self.path}: the video ends before frame {self._next} "
                                 f"of {self.index.num_frames} (truncated file?)") from None
        except av.FFmpegError as err:
            self._frames = None
            raise UserInputError(f"{self.path}: cannot decode frame {self._next}: {err.strerror}") from err

    def reopen(self) -> VideoFileSource:
        index = self.index if self._pts_index is not None else VideoIndex(self.index.num_frames, None, [], [])
        return VideoFileSource(self.path, index)

    def close(self) -> None:
        self._container.close()


class _Prefetcher:
    """A daemon thread that reads the frames after the last access into the cache.

    It holds the frames object weakly, so that a `VideoFrames` nobody closes is still collected
    (its finaliser stops the thread).
    """

    def __init__(self, frames: VideoFrames, window: int):
        self._fill = weakref.WeakMethod(frames._prefetch)
        self._num_frames, self._window = len(frames), window
        self._wake = threading.Condition()
        self._wanted: range | None = None  # the latest request, not yet taken up
        self._current = range(0)  # the request being read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="video-frames-prefetch", daemon=True)
        self._thread.start()

    def want(self, index: int, step: int) -> None:
        """The `window` frames after `index` in direction `step` (+1 or -1), nearest first."""
        wanted = range(index + step, min(max(index + step * (self._window + 1), -1), self._num_frames), step)
        if wanted:  # empty at the end of the video
            with self._wake:
                self._wanted = wanted
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._wanted is None and not self._stop.is_set():
                    self._wake.wait()
                if self._stop.is_set():
                    return
                self._current, self._wanted = self._wanted, None
            fill = self._fill()
            if fill is None:
                return
            try:
                fill(self._current, self._interrupted)
            except UserInputError:
                pass  # a frame that cannot be read: the caller gets the error when it reaches that frame
            del fill

    def _interrupted(self) -> bool:
        """close() was called, or a request for other frames came in (a jump: requests that overlap
        the current one wait for it, as restarting would decode the same frames again)."""
        wanted, current = self._wanted, self._current
        if self._stop.is_set():
            return True
        return wanted is not None and (max(wanted) < min(current) or min(wanted) > max(current))

    def close(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()


class VideoFrames:
    """The frames of one video, resized and normalised on access; see the module docstring.

    `frames[i]` -> float32 [3, S, S] on `device`, `frames[a:b]` -> [n, 3, S, S]; `len(frames)`;
    `height`, `width` (the video's own size), `names` (frame names without extension); `close()` or
    `with` to stop the prefetch thread and release the file (also done when it is collected).
    """

    def __init__(self, source: FrameSource, image_size: int, device: torch.device | str = "cpu",
                 cache_size: int = DEFAULT_CACHE_SIZE, prefetch: int = DEFAULT_PREFETCH):
        if not 0 <= prefetch < cache_size:
            raise ValueError(f"need 0 <= prefetch < cache_size, got prefetch={prefetch}, cache_size={cache_size}")
        self._source = source
        self.path, self.names, self.height, self.width = source.path, source.names, source.height, source.width
        self.image_size, self.device = image_size, torch.device(device)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()  # frame index -> uint8 [S, S, 3], LRU first
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()
        self._source_lock = threading.Lock()  # the source is not thread-safe
        self._last, self._step = -1, 1  # last index read and the direction of reading
        self._prefetcher = _Prefetcher(self, prefetch) if prefetch else None
        self._finalizer = weakref.finalize(self, VideoFrames._release, self._prefetcher, source)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key: int | slice) -> torch.Tensor:
        """Frame `key` [3, S, S] or frames `key` [n, 3, S, S], float32 on `device`."""
        size = self.image_size
        if isinstance(key, slice):
            indices = range(*key.indices(len(self)))
            images = torch.empty(len(indices), 3, size, size, dtype=torch.float32)
            for k, index in enumerate(indices):
                images[k] = frames_to_input(self._resized(index))
            return images.to(self.device)
        index = operator.index(key)
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame {index} is out of range: {self.path} has {len(self)} frames")
        return frames_to_input(self._resized(index % len(self))).to(self.device)

    @property
    def cached_indices(self) -> list[int]:
        """Indices of the frames in the cache, least recently used first (at most `cache_size`)."""
        with self._cache_lock:
            return list(self._cache)

    def iter_rgb(self) -> Iterator[np.ndarray]:
        """The original-size frames, RGB uint8 [H, W, 3], in order, from a reader of their own."""
        source = self._source.reopen()
        try:
            for _, rgb in source.decode(0, len(self)):
                yield np.asarray(rgb)
        finally:
            source.close()

    def _resized(self, index: int) -> np.ndarray:
        """Frame `index` as uint8 [S, S, 3], from the cache or read now; then prefetch from there."""
        resized = self._cached(index)
        if resized is None:
            with self._source_lock:
                resized = self._cached(index)
                if resized is None:
                    [(_, rgb)] = self._source.decode(index, index + 1)
                    resized = resize_frame(rgb, self.image_size)
                    self._store(index, resized)
        if self._prefetcher is not None:
            if index != self._last:
                self._step = 1 if index > self._last else -1
            self._last = index
            self._prefetcher.want(index, self._step)
        return resized

    def _prefetch(self, wanted: range, interrupted: Callable[[], bool]) -> None:
        """Read the missing frames of `wanted` (nearest first) into the cache, unless the nearest is
        cached and fewer than half are missing (reading backwards decodes from a keyframe each time)."""
        with self._cache_lock:
            missing = {i for i in wanted if i not in self._cache}
        if not missing or (wanted[0] not in missing and len(missing) < len(wanted) // 2):
            return
        with self._source_lock:
            for index, rgb in self._source.decode(min(missing), max(missing) + 1, interrupted):
                if index in missing and self._cached(index) is None:
                    self._store(index, resize_frame(rgb, self.image_size))

    def _cached(self, index: int) -> np.ndarray | None:
        with self._cache_lock:
            resized = self._cache.get(index)
            if resized is not None:
                self._cache.move_to_end(index)
            return resized

    def _store(self, index: int, resized: np.ndarray) -> None:
        with self._cache_lock:
            self._cache[index] = resized
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    @staticmethod
    def _release(prefetcher: _Prefetcher | None, source: FrameSource) -> None:
        if prefetcher is not None:
            prefetcher.close()
        source.close()

    def close(self) -> None:
        """Stop the prefetch thread and close the file (idempotent)."""
        self._finalizer()

    def __enter__(self) -> VideoFrames:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_video_frames(video_path: str | os.PathLike, image_size: int, device: torch.device | str = "cpu",
                      cache_size: int = DEFAULT_CACHE_SIZE, prefetch: int = DEFAULT_PREFETCH) -> VideoFrames:
    """Open a folder of .jpg/.jpeg/.png frames (see `list_frame_files`) or a .mp4/.avi/.mov/.mkv file
    (frames named "00000", "00001", ...) for reading on demand at image_size x image_size.

    `cache_size`: resized frames kept (uint8, S*S*3 bytes each); `prefetch`: frames read ahead of
    the last access in a background thread (0: none, every frame is read when asked for).
    """
    path = Path(video_path)
    if not path.exists():
        raise UserInputError(f"{path}: video not found (expected a folder of frames or a video file)")
    if path.is_dir():
        source: FrameSource = FolderSource(path)
    elif path.suffix.lower() in VIDEO_EXTENSIONS:
        source = VideoFileSource(path)
    else:
        raise UserInputError(
            f"{path}: not a video (expected a folder of frames or a {'/'.join(VIDEO_EXTENSIONS)} file)"
        )
    return VideoFrames(source, image_size, device, cache_size, prefetch)
