"""DDP smoke test: 2 CPU processes on gloo train the stand-in tracker; ranks stay identical."""
from __future__ import annotations

import gc
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sam2_video.train.metrics_log import read_metrics
from sam2_video.rng import seed_everything
from sam2_video.train.trainer import Trainer
from conftest import REPO_ROOT
from test_trainer import ToyClips, ToyTracker, collate_toy, toy_loss, toy_settings


def _train_on_rank(rank: int, world_size: int, init_file: str, out_dir: str, results_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        seed_everything(100 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
        trainer = Trainer(
            ToyTracker(),
            toy_loss(),
            ToyClips(6),
            toy_settings(Path(out_dir), epochs=1, checkpoint_every_steps=1),
            batch_size=1,
            collate_fn=collate_toy,
        )
        result = trainer.fit()
        params = torch.cat([p.detach().flatten() for p in trainer.module.parameters()])
        gathered = [torch.empty_like(params) for _ in range(world_size)]
        dist.all_gather(gathered, params)
        torch.save({"params": gathered, "steps": result.steps}, Path(results_dir) / f"rank{rank}.pt")
        del trainer
    finally:
        gc.collect()  # free the DDP wrapper (in a reference cycle) before its process group: see train/cli.py
        dist.destroy_process_group()
    # gloo's threads can abort the interpreter's teardown ("terminate called without an active exception",
    # seen once in CI after a passing run); everything this rank had to do is on disk, so skip the teardown.
    os._exit(0)


def test_two_gloo_processes_keep_identical_parameters(tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    mp.spawn(
        _train_on_rank,
        args=(2, str(tmp_path / "init"), str(out_dir), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    rank0 = torch.load(tmp_path / "rank0.pt")
    assert rank0["steps"] == 3  # 6 clips sharded over 2 ranks, batch 1
    assert torch.equal(rank0["params"][0], rank0["params"][1])
    seed_everything(100)
    initial = torch.cat([p.detach().flatten() for p in ToyTracker().parameters()])
    assert not torch.equal(initial, rank0["params"][0])  # it trained
    # only rank 0 wrote logs and checkpoints: one record per optimizer step, not one per rank
    assert [r["step"] for r in read_metrics(out_dir / "metrics.jsonl", "train")] == [1, 2, 3]
    assert torch.load(out_dir / "last.pt")["steps"] == 3


def test_torchrun_trains_sam2_through_the_cli(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 -m sam2_video.cli train` on the CPU (gloo): the real entry point,
    SAM2Model under DDP, sharded synthetic clips, one set of logs and checkpoints, a clean exit."""
    import subprocess
    import sys

    out_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "sam2_video.cli", "train", "--config", str(REPO_ROOT / "configs" / "demo.yaml"),
        f"train.out_dir={out_dir}", "train.epochs=1", "dataset.synthetic_videos=4", "dataset.num_workers=0",
        "dataset.video_clip_length=2", "model.image_size=64", "model.num_correction_pt_per_frame=1",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained 1 steps (1 epochs)" in done.stdout  # 4 clips / 2 ranks / batch 2; printed by rank 0 only
    assert done.stdout.count("trained ") == 1
    assert [r["step"] for r in read_metrics(out_dir / "metrics.jsonl", "train")] == [1]
    assert torch.load(out_dir / "last.pt", weights_only=True)["steps"] == 1
