"""Training logs: one JSON object per line (`metrics.jsonl`), TensorBoard scalars, a loss-curve PNG.

Each JSONL record has `kind` ("train" or "val"), `step` (optimizer steps done), `epoch` (train:
the epoch the step belongs to, from 0; val: epochs completed), and the scalars: train records the
loss terms (`core_loss`, ...), `lr`, `grad_norm` (before clipping) and `seconds`; val records the
validator's metrics (e.g. `J&F`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sam2_video.io import atomic_path


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


def plot_loss_curve(jsonl_path: str | Path, png_path: str | Path) -> None:
    """Training loss (and validation J&F where logged) against optimizer steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = read_metrics(jsonl_path, "train")
    val = [r for r in read_metrics(jsonl_path, "val") if "J&F" in r]
    fig, loss_axis = plt.subplots(figsize=(7, 4))
    loss_axis.plot([r["step"] for r in train], [r["core_loss"] for r in train], color="tab:blue", label="training loss")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("training loss")
    loss_axis.set_yscale("log")
    if val:
        jf_axis = loss_axis.twinx()
        jf_axis.plot([r["step"] for r in val], [r["J&F"] for r in val], "o-", color="tab:orange", label="validation J&F")
        jf_axis.set_ylabel("validation J&F")
    fig.legend(loc="upper right")
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
