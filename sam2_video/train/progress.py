"""Training progress: a tqdm bar on a terminal, periodic plain lines in logs and CI.

tqdm redraws its bar with carriage returns; written to a file or a CI log that is thousands of
updates on one "line". When tqdm's stream (stderr) is not a terminal, `StepProgress` prints
instead, to stdout, lines such as

    step 120/384 epoch 3 loss 2.4103 (ema 2.61) lr 9.1e-04 3.2 s/step eta 4m10s
"""
from __future__ import annotations

import math
import sys
from time import perf_counter
from typing import TextIO

from sam2_video.train.metrics_log import ema_alpha

LINES_PER_RUN = 30  # aim; with the first step's line and the time rule a run prints ~30-45 lines
MAX_SECONDS_BETWEEN_LINES = 30.0


def format_duration(seconds: float) -> str:
    """45s, 4m10s, 2h05m."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(round(seconds), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class StepProgress:
    """Progress of optimizer steps `initial..total`: `update(step, epoch, loss, lr)` after each step, `close()`.

    `interactive` (default: whether stderr, where tqdm draws, is a terminal) chooses the tqdm bar;
    otherwise one line goes to `stream` (default stdout) on the first step, on the last, on every
    `every`-th step and whenever `MAX_SECONDS_BETWEEN_LINES` passed since the previous line.
    `every` defaults to the steps left / `LINES_PER_RUN`, at least 1 (a tiny run prints each step):
    a run of any length then reads in ~30 lines, and slow steps still show within half a minute.
    The loss's EMA is bias-corrected, its decay chosen as the loss-curve figure's (`ema_alpha`).
    """

    def __init__(self, total: int, initial: int = 0, interactive: bool | None = None,
                 stream: TextIO | None = None, every: int | None = None) -> None:
        self.total, self.initial = total, initial
        self.stream = stream
        self.every = every or max(1, math.ceil((total - initial) / LINES_PER_RUN))
        self.alpha = ema_alpha(total)
        self.average, self.seen = 0.0, 0
        self.start = self.last_line = perf_counter()
        if interactive is None:
            interactive = sys.stderr.isatty()
        self.bar = None
        if interactive:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def update(self, step: int, epoch: int, loss: float, lr: float) -> None:
        """Optimizer step `step` (counted from 1) of epoch `epoch` is done, with this loss and learning rate."""
        if math.isfinite(loss):  # an fp16-skipped step's inf does not poison the average
            self.average = self.alpha * self.average + (1.0 - self.alpha) * loss
            self.seen += 1
        smoothed = self.average / (1.0 - self.alpha**self.seen) if self.seen else math.nan
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", ema=f"{smoothed:.3g}", epoch=epoch, refresh=False)
            self.bar.update(step - self.bar.n)
            return
        now = perf_counter()
        if not (step == self.initial + 1 or step >= self.total or step % self.every == 0
                or now - self.last_line >= MAX_SECONDS_BETWEEN_LINES):
            return
        self.last_line = now
        per_step = (now - self.start) / max(step - self.initial, 1)  # includes validation and checkpoints
        print(f"step {step}/{self.total} epoch {epoch} loss {loss:.4f} (ema {smoothed:.3g}) lr {lr:.1e} "
              f"{per_step:.3g} s/step eta {format_duration(per_step * (self.total - step))}",
              file=self.stream or sys.stdout, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
