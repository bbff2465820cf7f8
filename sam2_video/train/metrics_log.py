"""Training logs: one JSON object per line (`metrics.jsonl`), TensorBoard scalars, a loss-curve PNG.

Each JSONL record has `kind` ("train" or "val"), `step` (optimizer steps done), `epoch` (train:
the epoch the step belongs to, from 0; val: epochs completed), and the scalars: train records the
loss terms (`core_loss`, ...), `lr`, `grad_norm` (before clipping), `grad_norm/<module>` per
top-level module on logged steps, and `seconds`; val records the
validator's metrics (e.g. `J&F`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sam2_video.io import atomic_path
from sam2_video.train.loss import CORE_LOSS_KEY


class MetricsLog:
    """Append-only JSONL log mirrored to TensorBoard, under `out_dir`."""

    def __init__(self, out_dir: str | Path, resume_from_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.out_dir / "metrics.jsonl"
        if resume_from_step is None:
            if self.jsonl_path.exists():
                self.jsonl_path.unlink()
        else:
            self._drop_records_after(resume_from_step)
        self.writer = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"), purge_step=resume_from_step)

    def _drop_records_after(self, step: int) -> None:
        """On resume, forget what an interrupted run logged after its last checkpoint."""
        records = [r for r in read_metrics(self.jsonl_path) if r["step"] <= step]
        with atomic_path(self.jsonl_path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records))

    def log(self, kind: str, step: int, epoch: int, values: dict[str, float]) -> None:
        record = {"kind": kind, "step": step, "epoch": epoch, **values}
        with open(self.jsonl_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        for name, value in values.items():
            self.writer.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        self.writer.close()


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Records of a `metrics.jsonl` file (all, or only those of one `kind`)."""
    path = Path(path)
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]


# Train-record keys that are not loss terms (they get no panel in the loss-curve figure).
NOT_LOSS_TERMS = ("kind", "step", "epoch", "lr", "grad_norm", "seconds")
PANEL_COLORS = ("tab:blue", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def ema_alpha(num_points: int) -> float:
    """EMA decay for a curve of `num_points` values: an averaging window of 1 / (1 - alpha) = ~5% of
    the run (num_points / 20), kept within 10..50 points (alpha 0.9..0.98). A window that is a fixed
    share of the run shows the trend at the same resolution in short and long runs; below 10 points
    the batch-to-batch noise (e.g. the alternating easy and hard clips) still shows, above 50 a short
    run's real turns would be smoothed away."""
    return min(max(1.0 - 20.0 / max(num_points, 1), 0.9), 0.98)


def ema(values: list[float], alpha: float) -> list[float]:
    """Bias-corrected exponential moving average (as Adam's moments: no pull towards the zero start);
    non-finite values are skipped (the average carries on), NaN until the first finite one."""
    smoothed, average, seen = [], 0.0, 0
    for value in values:
        if math.isfinite(value):
            average = alpha * average + (1.0 - alpha) * value
            seen += 1
        smoothed.append(average / (1.0 - alpha**seen) if seen else math.nan)
    return smoothed


def loss_curve_figure(records: list[dict[str, Any]]):
    """The training-curve figure of `metrics.jsonl` records (a matplotlib Figure, Agg canvas).

    One panel per loss term the "train" records carry (every numeric key but lr, grad_norm,
    seconds; `core_loss` first, on the full-width top panel): the raw per-step value as a faint thin
    line, its bias-corrected EMA (alpha from `ema_alpha`) drawn over it; log y (and the EMA taken
    over log values) where the term's values are positive and span more than a decade. Validation
    J&F (the "val" records' `J&F`), one marker per evaluation, is on the right-hand axis (0-1) of
    the `core_loss` panel. x: optimizer steps.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val" and "J&F" in r]
    terms: list[str] = []
    for record in train:
        terms += [key for key, value in record.items() if key not in NOT_LOSS_TERMS
                  and not key.startswith("grad_norm/") and key not in terms
                  and isinstance(value, (int, float)) and not isinstance(value, bool)]
    terms = sorted(terms, key=lambda key: key != CORE_LOSS_KEY) or [CORE_LOSS_KEY]  # stable: core first
    rows = 1 + math.ceil((len(terms) - 1) / 2)
    fig = Figure(figsize=(11, 3.4 + 2.6 * (rows - 1)))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, 2)
    alpha = ema_alpha(len(train))
    core_axis = None
    for index, term in enumerate(terms):
        cell = grid[0, :] if index == 0 else grid[1 + (index - 1) // 2, (index - 1) % 2]
        axis = fig.add_subplot(cell, sharex=core_axis)
        core_axis = core_axis or axis
        points = [(r["step"], float(r[term])) for r in train if term in r]
        steps, values = [s for s, _ in points], [v for _, v in points]
        color = PANEL_COLORS[index % len(PANEL_COLORS)]
        finite = [v for v in values if math.isfinite(v)]
        log_y = bool(finite) and min(finite) > 0 and max(finite) > 10 * min(finite)
        # on a log axis the EMA runs over log values (a geometric mean): an arithmetic one would trail
        # far above a loss that drops by decades, and sit above the middle of a bimodal band
        smoothed = [math.exp(v) for v in ema([math.log(v) for v in values], alpha)] if log_y else ema(values, alpha)
        axis.plot(steps, values, color=color, linewidth=0.7, alpha=0.3, label="raw (per step)")
        axis.plot(steps, smoothed, color=color, linewidth=1.8, label=f"EMA (alpha {alpha:.2f})")
        if log_y:
            axis.set_yscale("log")
        axis.set_title(term, fontsize=10, loc="left")
        if index >= len(terms) - 2:  # the panels with none below them
            axis.set_xlabel("optimizer step")
        axis.grid(True, alpha=0.3)
    core_axis.set_xlabel("optimizer step")
    handles, labels = core_axis.get_legend_handles_labels()
    if val:
        jf = [float(r["J&F"]) for r in val]
        jf_axis = core_axis.twinx()
        jf_axis.plot([r["step"] for r in val], jf, "o-", color="tab:orange", linewidth=1.5, markersize=5,
                     label=f"validation J&F (last {jf[-1]:.3f}, best {max(jf):.3f})")
        jf_axis.set_ylim(0, 100 if max(jf) > 1 else 1)  # J&F is a fraction; a percent-scale validator keeps its points
        jf_axis.set_ylabel("validation J&F", color="tab:orange")
        jf_axis.tick_params(axis="y", colors="tab:orange")
        more_handles, more_labels = jf_axis.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    core_axis.legend(handles, labels, loc="upper right", fontsize=8, framealpha=0.8)
    if not train:
        core_axis.text(0.5, 0.5, "no training steps logged", ha="center", va="center", transform=core_axis.transAxes)
    fig.tight_layout()
    return fig


def plot_loss_curve(jsonl_path: str | Path, png_path: str | Path) -> None:
    """Write `loss_curve_figure` of a `metrics.jsonl` file as a PNG (atomically)."""
    fig = loss_curve_figure(read_metrics(jsonl_path))
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
