"""DataLoader set-up: batching with `collate_fn`, worker processes, pinned memory, reproducible seeds."""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sam2_video.data.batch import collate_fn


def seed_worker(worker_id: int) -> None:
    """Seed numpy and `random` in a worker from torch's per-worker seed (base seed + worker id)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader of `BatchedVideoDatapoint`s whose order and clips depend only on `seed` (for a fixed
    `num_workers`): the shuffling generator and the workers' seeds derive from it. With `num_workers=0`
    the clips use torch's global RNG, so seed it (`torch.manual_seed`) as well. When torch.distributed
    is initialised each rank reads its own shard through a `DistributedSampler`; call
    `loader.sampler.set_epoch(epoch)` every epoch then. `pin_memory` defaults to CUDA being available.
    Workers are restarted each epoch (not persistent), so dataset attributes changed between epochs,
    such as an STCN sampler's `max_jump` from `stcn_max_jump`, reach them.
    """
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if dist.is_available() and dist.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        shuffle = False
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        worker_init_fn=seed_worker,
        generator=generator,
    )
