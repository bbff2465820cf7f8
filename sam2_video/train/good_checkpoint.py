"""The checkpoint to fall back to when training diverges.

`last.pt` is always the newest checkpoint, so an interrupted run resumes exactly. It is confirmed
once its weights are finite and the optimizer step after it (the first to use them) had a finite
loss at most `EXPLOSION_FACTOR` times the median of the recent steady step losses. The newest
confirmed checkpoint is kept as `last_good.pt`, a hard link (no extra disk while both name one file).
When a NaN / inf stops training, `roll_back` moves an unconfirmed `last.pt` to `diverged.pt` and puts
the confirmed one back as `last.pt`, so `--resume` continues from weights that trained steadily.
"""
from __future__ import annotations

import os
import statistics
from collections import deque
from pathlib import Path
from typing import Any

import torch

EXPLOSION_FACTOR = 10.0
RECENT_STEPS = 20


def _link(source: Path, target: Path) -> None:
    """Make `target` name the file `source` names, replacing `target` atomically."""
    tmp = target.with_name(f".{target.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    os.link(source, tmp)
    os.replace(tmp, target)


def _checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["steps"])


class GoodCheckpoint:
    """Tracks whether `out_dir/last.pt` is confirmed; rank 0 only."""

    def __init__(self, out_dir: Path) -> None:
        self.last = out_dir / "last.pt"
        self.good = out_dir / "last_good.pt"
        self.diverged = out_dir / "diverged.pt"
        self.pending: int | None = None  # step of an unconfirmed last.pt
        self.pending_finite = False
        self.recent: deque[float] = deque(maxlen=RECENT_STEPS)

    def resumed(self, step: int) -> None:
        """A resumed `last.pt` is unconfirmed unless it is `last_good.pt`."""
        if not (self.good.exists() and os.path.samefile(self.last, self.good)):
            self.pending, self.pending_finite = step, True

    def saved(self, step: int, model_state: dict[str, Any]) -> None:
        """`last.pt` now holds `step`."""
        self.pending = step
        self.pending_finite = all(torch.isfinite(v).all() for v in model_state.values() if v.is_floating_point())

    def observe(self, step: int, loss: float) -> None:
        """Optimizer step `step` finished with a finite `loss`: confirm `last.pt` if the step was steady."""
        steady = not self.recent or loss <= EXPLOSION_FACTOR * statistics.median(self.recent)
        if steady:
            self.recent.append(loss)
        if self.pending == step - 1 and steady and self.pending_finite:  # the first step on its weights
            _link(self.last, self.good)
            self.pending = None

    def roll_back(self) -> tuple[int | None, str]:
        """After a NaN / inf stop: (step `last.pt` now holds or None, what was done)."""
        if self.pending is None:
            if not self.last.exists():
                return None, "no checkpoint had been written yet"
            return _checkpoint_step(self.last), f"{self.last} is the last checkpoint that trained steadily"
        os.replace(self.last, self.diverged)
        moved = f"the newest checkpoint (step {self.pending}), possibly already diverging, was moved to {self.diverged}"
        if not self.good.exists():
            return None, f"{moved}; no earlier checkpoint had trained steadily"
        _link(self.good, self.last)
        step = _checkpoint_step(self.last)
        return step, f"{self.last} now holds step {step}, the last checkpoint that trained steadily; {moved}"
