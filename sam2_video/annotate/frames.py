"""The video's frames as JPEG for the page, read on demand through the frame reader."""
from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sam2_video.predict.frames import IMAGE_MEAN, IMAGE_STD
from sam2_video.predict.video_frames import open_video_frames

MAX_DISPLAY_SIZE = 1280
JPEG_CACHE_SIZE = 32


class FrameJPEGs:
    """`jpeg(i)`: frame i as JPEG bytes, cached (LRU). The frame reader yields square S x S frames, so
    S is the video's longer side (at most MAX_DISPLAY_SIZE) and the page stretches them back to the
    video's aspect ratio."""

    def __init__(self, video: Path):
        with open_video_frames(video, 32, prefetch=0) as probe:
            self.names, self.height, self.width = probe.names, probe.height, probe.width
        self.size = min(max(self.height, self.width), MAX_DISPLAY_SIZE)
        self._frames = open_video_frames(video, self.size, cache_size=8, prefetch=4)
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.names)

    def jpeg(self, index: int) -> bytes:
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
            normalised = self._frames[index]
            mean = torch.tensor(IMAGE_MEAN)[:, None, None]
            std = torch.tensor(IMAGE_STD)[:, None, None]
            rgb = ((normalised * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(rgb.numpy())).save(buffer, format="JPEG", quality=90)
            self._cache[index] = buffer.getvalue()
            while len(self._cache) > JPEG_CACHE_SIZE:
                self._cache.popitem(last=False)
            return self._cache[index]

    def close(self) -> None:
        self._frames.close()
