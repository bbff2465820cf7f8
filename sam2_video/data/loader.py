"""The training DataLoader: batches of `BatchedVideoDatapoint`s in an epoch-seeded order, sharded over
DDP ranks, where each clip is drawn under its own seed (from the run seed, the epoch and its position),
so its augmentation and prompts are the same with any number of workers and after resuming part-way
through an epoch. A `UserInputError` from a worker reaches the caller as that error with its own
message (torch would re-raise it with the worker's traceback inside the message)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from sam2_video.data.batch import collate_fn as collate_clips
from sam2_video.errors import UserInputError
from sam2_video.rng import capture_rng_state, restore_rng_state, seed_everything


@dataclass
class WorkerUserError:
    """A worker's `UserInputError`, sent to the main process in place of its item and batch."""

    message: str


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields (dataset index, item seed) for this rank: an epoch-seeded order, sharded over ranks,
    optionally starting part-way into the epoch (after `start` items of this rank's share)."""

    def __init__(self, num_items: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.num_items = num_items
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def items_per_rank(self) -> int:
        return math.ceil(self.num_items / self.world_size)

    def __len__(self) -> int:
        return max(self.items_per_rank() - self.start, 0)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_items, generator=generator).tolist()
        else:
            order = list(range(self.num_items))
        total = self.items_per_rank() * self.world_size
        order = (order * math.ceil(total / max(len(order), 1)))[:total]  # pad by repeating, as DistributedSampler
        for position in range(self.rank + self.start * self.world_size, total, self.world_size):
            item_seed = int(np.random.SeedSequence([self.seed, self.epoch, position]).generate_state(1)[0])
            yield order[position], item_seed


class SeededItems(Dataset):
    """Draws item `index` with torch / numpy / random seeded from the item's seed, then puts the
    caller's RNG states back: a clip's augmentation and prompts depend only on (seed, epoch, position)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, item_seed = key
        saved = capture_rng_state(cuda=False)  # clips draw on the CPU generators only
        seed_everything(item_seed, cuda=False)
        try:
            return self.dataset[index]
        except UserInputError as err:
            if torch.utils.data.get_worker_info() is None:
                raise
            return WorkerUserError(str(err))
        finally:
            restore_rng_state(saved)


class CollateOrPassError:
    """`collate_fn` on a batch's items, or the first `WorkerUserError` among them."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, items: list[Any]) -> Any:
        error = next((item for item in items if isinstance(item, WorkerUserError)), None)
        return error if error is not None else self.collate_fn(items)


class UserErrorDataLoader(DataLoader):
    """A DataLoader that raises a worker's `WorkerUserError` as a `UserInputError` with its own message."""

    def __iter__(self) -> Iterator[Any]:
        for batch in super().__iter__():
            if isinstance(batch, WorkerUserError):
                raise UserInputError(batch.message)
            yield batch


def distributed_rank_and_size() -> tuple[int, int]:
    """(rank, world size) of this process under torch.distributed, (0, 1) without it."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    shuffle: bool = True,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    collate_fn: Callable[[list[Any]], Any] = collate_clips,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader whose batches depend only on `seed` and the epoch (`loader.sampler.set_epoch`).

    `rank`/`world_size` default to torch.distributed's when it is initialised (each rank reads its
    own shard; the shards are evened out by repeating clips, as DistributedSampler does). Workers are
    restarted each epoch (not persistent), so dataset attributes changed between epochs, such as an
    STCN sampler's `max_jump`, reach them. `pin_memory` defaults to CUDA being available.
    """
    if (rank is None) != (world_size is None):
        raise ValueError(f"give rank and world_size together, got rank={rank}, world_size={world_size}")
    if rank is None or world_size is None:
        rank, world_size = distributed_rank_and_size()
    return UserErrorDataLoader(
        SeededItems(dataset),
        batch_size=batch_size,
        sampler=ResumableSampler(len(dataset), shuffle, seed, rank, world_size),
        num_workers=num_workers,
        collate_fn=CollateOrPassError(collate_fn),
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        generator=torch.Generator(),  # keeps the loader from drawing on the global RNG
    )
