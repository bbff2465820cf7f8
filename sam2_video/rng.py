"""Random number generators: seed them all, and capture / restore their states (as tensors and plain
values, so a training checkpoint that holds them loads with `torch.load(weights_only=True)`)."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, cuda: bool = True) -> None:
    """Seed torch (CPU, and CUDA unless `cuda=False`), numpy and python's `random`."""
    if cuda:
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def capture_rng_state(cuda: bool = True) -> dict[str, Any]:
    """Every global RNG the training step may draw from (CUDA's left out with `cuda=False`, as data
    loading must: reading it initialises CUDA, which a forked DataLoader worker cannot do)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if cuda and torch.cuda.is_available() else [],
        "numpy": _numpy_state_to_tensors(np.random.get_state()),
        "python": random.getstate(),
    }


def _numpy_state_to_tensors(state: tuple) -> dict[str, Any]:
    """numpy's MT19937 state as tensors and numbers, so checkpoints load with `weights_only=True`."""
    _, keys, position, has_gauss, cached_gaussian = state
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    random.setstate(state["python"])
