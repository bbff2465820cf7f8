"""Training-step memory: a counter of live tensor memory for the CPU, and the CUDA memory report and
out-of-memory advice of `sam2-video train`.

Why a counter: on the CPU PyTorch keeps no allocator statistics, and the process's resident size
also holds the Python heap, libraries and freed pages the allocator has not returned, so it cannot
tell a training step's activations apart. `LiveTensorMemory` counts the bytes of every tensor
storage an operator creates while it is active and subtracts them when the storage is freed, which
is what `torch.cuda.max_memory_allocated` measures on a GPU (without the caching allocator's
rounding).
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

OUT_OF_MEMORY_ADVICE = (
    "to fit, lower model.image_size (memory grows with its square), dataset.video_clip_length or "
    "dataset.max_num_objects, train fewer model.trainable_modules (a frozen image encoder keeps no "
    "activations), or set train.activation_checkpointing: true (recomputes activations in the backward "
    "pass; about a third more time)"
)


class LiveTensorMemory(TorchDispatchMode):
    """Within `with LiveTensorMemory() as memory:`, `memory.peak` is the most bytes that tensor
    storages created inside the block held at one time, and `memory.current` what they hold now.

    Storages that existed before the block (parameters, the input batch) are not counted; add them
    with `memory.add_existing(tensors)` to count them from the start. Each storage is counted once,
    however many views of it exist, until the storage itself is freed (autograd's saved tensors keep
    it alive as long as the graph does).
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, int] = {}

    def add_existing(self, tensors: Any) -> None:
        """Count the storages of `tensors` (any nested structure) as live from now on."""
        for leaf in tree_leaves(tensors):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)

    def _track(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key = storage._cdata
        size = storage.nbytes()
        previous = self._live.get(key)
        if previous is None:
            weakref.finalize(storage, self._release, key)
        elif previous == size:
            return
        self._live[key] = size
        self.current += size - (previous or 0)
        self.peak = max(self.peak, self.current)

    def _release(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out


def cuda_memory_line(device: torch.device) -> str:
    """'cuda:0 (NVIDIA ...): 38.1 GiB free of 40.0 GiB' for the training start-up message."""
    free, total = torch.cuda.mem_get_info(device)
    return f"{device} ({torch.cuda.get_device_name(device)}): {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB"


def out_of_memory_message(device: torch.device, step: int, kept: str) -> str:
    """What `sam2-video train` says instead of a traceback when a step runs out of device memory."""
    free = ""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        free = f" (peak {peak:.1f} GiB allocated; {cuda_memory_line(device)})"
    return f"out of {device.type.upper()} memory at optimizer step {step}{free}; {kept}; {OUT_OF_MEMORY_ADVICE}"
