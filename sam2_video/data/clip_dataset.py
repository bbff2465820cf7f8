"""The shared path from a video on disk (or generated) to one augmented, prompted `VideoClip`.

A subclass lists its videos and reads one frame's image and objects; `ClipDataset` samples the
clip (`sampling`), augments it (`transforms`), and attaches explicit or generated prompts
(`prompts`). Each item draws one seed from torch's global RNG, so a seeded DataLoader
(`loader.build_dataloader`) or a `torch.manual_seed` makes the clips reproducible.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch.utils.data import Dataset

from sam2_video.data.batch import ObjectPrompt, VideoClip
from sam2_video.data.prompts import PromptGenerator
from sam2_video.data.sampling import ClipSampler, ClipSelection, SAM2ClipSampler
from sam2_video.data.transforms import ClipTransform
from sam2_video.errors import UserInputError

Objects = dict[int, np.ndarray]  # object id -> [H,W] bool


class ClipDataset(Dataset):
    """Base of all datasets: item i is a clip of video i (another video is tried when no object is visible).

    clip_sampler: picks frames and objects (default: SAM2-style, 8 frames, up to 3 objects).
    transform: augmentation + resize + normalisation (default: resize to 512 only).
    prompt_generator: prompts made from the transformed masks (default: one positive click).
    prompt_frames: how many leading frames get generated prompts (None = every frame); explicit
      prompts from the dataset are kept on whatever frame they are given.
    mask_cache_size: decoded frames' objects kept in memory per worker (0 disables the cache).
    """

    def __init__(
        self,
        clip_sampler: ClipSampler | None = None,
        transform: ClipTransform | None = None,
        prompt_generator: PromptGenerator | None = None,
        prompt_frames: int | None = 1,
        mask_cache_size: int = 64,
    ):
        self.clip_sampler = clip_sampler or SAM2ClipSampler()
        self.transform = transform or ClipTransform(512)
        self.prompt_generator = prompt_generator or PromptGenerator()
        self.prompt_frames = prompt_frames
        self.mask_cache_size = mask_cache_size
        self._mask_cache: OrderedDict[tuple[int, int], Objects] = OrderedDict()

    # --- what a subclass provides -------------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    def video_name(self, index: int) -> str:
        raise NotImplementedError

    def frame_names(self, index: int) -> list[str]:
        """Names of all frames of video `index`, in time order."""
        raise NotImplementedError

    def annotated_frames(self, index: int) -> list[int]:
        """Indices into `frame_names` of the frames that have ground truth, in time order."""
        raise NotImplementedError

    def read_image(self, index: int, frame: int) -> np.ndarray:
        """[H,W,3] uint8 RGB of one frame."""
        raise NotImplementedError

    def read_objects(self, index: int, frame: int) -> Objects:
        """The objects annotated on one frame: {object id: [H,W] bool}."""
        raise NotImplementedError

    def read_prompts(self, index: int, frame: int) -> dict[int, ObjectPrompt]:
        """Explicit prompts given by the dataset for one frame, by object id (none by default)."""
        return {}

    def frame_source(self, index: int, frame: int) -> str:
        """Where a frame comes from, for error messages."""
        return f"{self.video_name(index)}/{self.frame_names(index)[frame]}"

    def why_no_object(self, index: int) -> str | None:
        """Why video `index` may show no object although its masks hold labels (e.g. void values), if known."""
        return None

    # --- shared machinery ---------------------------------------------------------------------
    def objects(self, index: int, frame: int) -> Objects:
        """`read_objects` through a bounded LRU cache of decoded masks."""
        key = (index, frame)
        if key in self._mask_cache:
            self._mask_cache.move_to_end(key)
            return self._mask_cache[key]
        objects = self.read_objects(index, frame)
        if self.mask_cache_size > 0:
            self._mask_cache[key] = objects
            while len(self._mask_cache) > self.mask_cache_size:
                self._mask_cache.popitem(last=False)
        return objects

    def visible_objects(self, index: int, frame: int) -> list[int]:
        return sorted(i for i, mask in self.objects(index, frame).items() if mask.any())

    def load_clip(
        self, index: int, selection: ClipSelection, rng: np.random.Generator
    ) -> tuple[np.ndarray, torch.Tensor, list[int]]:
        """images [T,H,W,3] uint8, masks [T,N,H,W] bool for the selected objects, and their ids."""
        images, masks = [], []
        for frame in selection.frame_indices:
            image = self.read_image(index, frame)
            objects = self.objects(index, frame)
            height, width = image.shape[:2]
            if images and images[0].shape != image.shape:
                raise UserInputError(
                    f"{self.frame_source(index, frame)}: the frame is {width}x{height} but "
                    f"{self.frame_source(index, selection.frame_indices[0])} is {images[0].shape[1]}x{images[0].shape[0]}; "
                    f"all frames of a video must have one size"
                )
            frame_masks = []
            for object_id in selection.object_ids:
                mask = objects.get(object_id)
                if mask is None:
                    mask = np.zeros((height, width), dtype=bool)
                elif mask.shape != (height, width):
                    raise UserInputError(
                        f"{self.frame_source(index, frame)}: the frame is {width}x{height} but its mask is "
                        f"{mask.shape[1]}x{mask.shape[0]}; frames and masks must have the same size"
                    )
                frame_masks.append(mask)
            images.append(image)
            masks.append(np.stack(frame_masks) if frame_masks else np.zeros((0, height, width), dtype=bool))
        return np.stack(images), torch.from_numpy(np.stack(masks)), list(selection.object_ids)

    def _select(self, index: int, rng: np.random.Generator) -> tuple[int, ClipSelection]:
        tried = []
        for _ in range(min(10, len(self))):
            selection = self.clip_sampler.sample(
                self.video_name(index), self.annotated_frames(index), lambda f: self.visible_objects(index, f), rng
            )
            if selection is not None:
                return index, selection
            tried.append(index)
            index = int(rng.integers(len(self)))
        tried = list(dict.fromkeys(tried))
        reason = next((r for r in map(self.why_no_object, tried) if r is not None), "are the masks empty?")
        videos = ", ".join(self.video_name(i) for i in tried)
        raise UserInputError(f"no object is visible on the first frame of any sampled clip of {videos}; {reason}")

    def __getitem__(self, index: int) -> VideoClip:
        seed = int(torch.randint(0, 2**62, ()))
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(seed)
        index, selection = self._select(index, rng)
        images, masks, object_ids = self.load_clip(index, selection, rng)
        num_frames = len(selection.frame_indices)
        explicit: list[list[ObjectPrompt | None]] = []
        for t, frame in enumerate(selection.frame_indices):
            given = {} if selection.is_padding[t] else self.read_prompts(index, frame)
            explicit.append([given.get(object_id) for object_id in object_ids])
        orig_size = images.shape[1:3]
        images, masks, prompts = self.transform(images, masks, explicit, generator, self.prompt_generator)
        last_prompted = num_frames if self.prompt_frames is None else min(self.prompt_frames, num_frames)
        for t in range(last_prompted):
            if selection.is_padding[t]:
                continue
            for n in range(len(object_ids)):
                if prompts[t][n] is None and masks[t, n].any():
                    prompts[t][n] = self.prompt_generator(masks[t, n], generator)
        names = self.frame_names(index)
        return VideoClip(
            images=images,
            masks=masks,
            object_ids=torch.tensor(object_ids, dtype=torch.int64),
            video_name=self.video_name(index),
            frame_names=[names[f] for f in selection.frame_indices],
            prompts=prompts,
            is_padding=torch.tensor(selection.is_padding, dtype=torch.bool),
            orig_size=orig_size,
        )
