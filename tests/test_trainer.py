"""Trainer behaviour on a tiny stand-in tracker: exact resume, kill safety, NaN stop, best.pt, parameter groups."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from sam2_video.config import TrainSection
from sam2_video.model.run_checkpoint import load_training_checkpoint
from sam2_video.train.loss import CORE_LOSS_KEY, MultiStepMultiMaskLoss
from sam2_video.train.metrics_log import read_metrics
from sam2_video.train.optim import build_param_groups, warmup_cosine_factor
from sam2_video.rng import seed_everything
from sam2_video.train.trainer import NonFiniteLossError, Trainer

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


@dataclass
class ToyBatch:
    """images [T,B,3,H,W], masks [T,B,H,W] (one object per clip), video_names B strings."""

    images: torch.Tensor
    masks: torch.Tensor
    video_names: list[str]

    def to(self, device, non_blocking: bool = False) -> "ToyBatch":
        return ToyBatch(self.images.to(device), self.masks.to(device), self.video_names)


class ToyClips(Dataset):
    """Random clips drawn from the global RNG (as augmentation would be): 3 frames of 16x16."""

    def __init__(self, num_clips: int) -> None:
        self.num_clips = num_clips

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> dict:
        images = torch.rand(3, 3, 16, 16)
        masks = images[:, 0] + 0.2 * torch.randn(3, 16, 16) > 0.5
        return {"images": images, "masks": masks, "video_name": f"clip{index:02d}"}


def collate_toy(items: list[dict]) -> ToyBatch:
    return ToyBatch(
        images=torch.stack([item["images"] for item in items], dim=1),
        masks=torch.stack([item["masks"] for item in items], dim=1),
        video_names=[item["video_name"] for item in items],
    )


class ToyTracker(nn.Module):
    """Per-frame conv net with dropout, emitting the official training-output format (3 masks, 1 step)."""

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.dropout = nn.Dropout2d(0.2)
        self.mask_head = nn.Conv2d(8, 3, 1)
        self.iou_head = nn.Linear(8, 3)
        self.score_head = nn.Linear(8, 1)

    def forward(self, batch: ToyBatch) -> list[dict]:
        outputs = []
        for frame in batch.images:
            features = self.dropout(self.image_encoder(frame))
            pooled = features.mean((2, 3))
            outputs.append(
                {
                    "multistep_pred_multimasks_high_res": [self.mask_head(features)],
                    "multistep_pred_ious": [self.iou_head(pooled).sigmoid()],
                    "multistep_object_score_logits": [self.score_head(pooled)],
                }
            )
        return outputs


def toy_loss():
    loss = MultiStepMultiMaskLoss()
    return lambda outputs, batch: loss(outputs, batch.masks)


def toy_settings(out_dir: Path, **overrides) -> TrainSection:
    base = TrainSection(
        out_dir=str(out_dir), epochs=2, lr=3e-3, image_encoder_lr=1e-3, warmup_steps=2, device="cpu", seed=3
    )
    return replace(base, **overrides)


def make_trainer(
    out_dir: Path, loss_fn=None, num_clips: int = 8, validate=None, num_workers: int = 0, **overrides
) -> Trainer:
    seed_everything(123)
    return Trainer(
        ToyTracker(),
        loss_fn or toy_loss(),
        ToyClips(num_clips),
        toy_settings(out_dir, **overrides),
        batch_size=1,
        num_workers=num_workers,
        collate_fn=collate_toy,
        validate=validate,
        run_config={"note": "toy"},
    )


class CrashAtCall:
    """Loss wrapper that raises on its n-th call, standing in for a crash mid-training."""

    def __init__(self, loss_fn, crash_at: int) -> None:
        self.loss_fn, self.crash_at, self.calls = loss_fn, crash_at, 0

    def __call__(self, outputs, batch):
        self.calls += 1
        if self.calls == self.crash_at:
            raise RuntimeError("simulated crash")
        return self.loss_fn(outputs, batch)


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path: Path) -> None:
    # 8 clips, batch 1, accumulation 2 -> 4 steps per epoch, 8 steps; last.pt every 3 steps and per epoch
    settings = dict(grad_accumulation=2, checkpoint_every_steps=3)
    full = make_trainer(tmp_path / "full", **settings).fit()

    crashing = make_trainer(tmp_path / "resumed", loss_fn=CrashAtCall(toy_loss(), crash_at=13), **settings)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.fit()  # dies during step 7: the last checkpoint is step 6, in the middle of epoch 1
    assert load_training_checkpoint(tmp_path / "resumed" / "last.pt")["steps"] == 6
    resumed_trainer = make_trainer(tmp_path / "resumed", **settings)
    resumed = resumed_trainer.fit(resume=True)

    assert [r[CORE_LOSS_KEY] for r in resumed.history] == [r[CORE_LOSS_KEY] for r in full.history[6:]]
    assert resumed.steps == full.steps == 8
    full_state = load_training_checkpoint(tmp_path / "full" / "last.pt")["model"]
    for name, value in load_training_checkpoint(tmp_path / "resumed" / "last.pt")["model"].items():
        assert torch.equal(value, full_state[name]), name
    logged_steps = [r["step"] for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl", "train")]
    assert logged_steps == list(range(1, 9))  # what the crashed run logged after step 6 was dropped
    assert (tmp_path / "resumed" / "loss_curve.png").stat().st_size > 0


class LevelledClips(ToyClips):
    """Toy clips whose video names carry the dataset's `level`, an attribute set between epochs."""

    level = 0

    def __getitem__(self, index: int) -> dict:
        return {**super().__getitem__(index), "video_name": f"level{self.level}"}


def test_epoch_and_step_hooks_reach_the_loader_workers_and_resume(tmp_path: Path) -> None:
    clips = LevelledClips(4)
    seen: list[tuple[int, list[str]]] = []  # (step hook value, video names of the batch)
    hook_steps: list[int] = []
    loss = toy_loss()

    def recording_loss(outputs, batch):
        seen.append((hook_steps[-1], batch.video_names))
        return loss(outputs, batch)

    def make(loss_fn):
        seed_everything(123)
        return Trainer(ToyTracker(), loss_fn, clips, toy_settings(tmp_path, epochs=3, grad_accumulation=2, checkpoint_every_steps=1),
                       batch_size=1, num_workers=2, collate_fn=collate_toy,
                       on_epoch_start=lambda epoch: setattr(clips, "level", 10 * epoch),
                       on_step_start=hook_steps.append)

    with pytest.raises(RuntimeError, match="simulated crash"):
        make(CrashAtCall(recording_loss, crash_at=7)).fit()  # 2 steps per epoch: dies in the 4th step
    make(recording_loss).fit(resume=True)  # from last.pt after 3 steps, in the middle of epoch 1
    # each optimizer step's two batches see the count of steps before it, and the epoch's level
    assert seen == [(step, [f"level{10 * (step // 2)}"]) for step in [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]]


def test_clips_do_not_depend_on_the_number_of_loader_workers(tmp_path: Path) -> None:
    in_process = make_trainer(tmp_path / "w0", num_clips=4, epochs=1).fit()
    with_workers = make_trainer(tmp_path / "w2", num_clips=4, num_workers=2, epochs=1).fit()
    assert [r[CORE_LOSS_KEY] for r in with_workers.history] == [r[CORE_LOSS_KEY] for r in in_process.history]


def test_checkpoint_holds_the_documented_keys(tmp_path: Path) -> None:
    make_trainer(tmp_path, num_clips=2, epochs=1).fit()
    checkpoint = load_training_checkpoint(tmp_path / "last.pt")
    for key in ["model", "optimizer", "scheduler", "epoch", "batches_in_epoch", "steps", "loss", "time_elapsed",
                "best_meter_values", "config", "rng"]:
        assert key in checkpoint, key
    assert checkpoint["epoch"] == 1 and checkpoint["steps"] == 2
    assert checkpoint["config"] == {"note": "toy"}


def test_nan_loss_stops_with_step_and_videos_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    loss = toy_loss()
    calls = {"n": 0}

    def loss_turning_nan(outputs, batch):
        calls["n"] += 1
        losses = loss(outputs, batch)
        if calls["n"] == 3:
            losses[CORE_LOSS_KEY] = losses[CORE_LOSS_KEY] * float("nan")
        return losses

    trainer = make_trainer(tmp_path, loss_fn=loss_turning_nan, checkpoint_every_steps=1)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit()
    message = str(err.value)
    assert "nan at optimizer step 3" in message
    assert "clip" in message and f"{tmp_path / 'last.pt'} now holds step 1" in message
    # step 3 ran on step 2's weights, so that checkpoint is suspect: set aside, step 1's is resumed from
    assert err.value.step == 3 and err.value.resume_step == 1
    assert load_training_checkpoint(tmp_path / "diverged.pt")["steps"] == 2
    checkpoint = load_training_checkpoint(tmp_path / "last.pt")
    assert checkpoint["steps"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


def test_best_checkpoint_follows_the_highest_jf(tmp_path: Path) -> None:
    scores = iter([50.0, 70.0, 60.0])
    trainer = make_trainer(tmp_path, num_clips=2, epochs=3, validate=lambda model: {"J&F": next(scores)})
    result = trainer.fit()
    best = load_training_checkpoint(tmp_path / "best.pt")
    assert best["best_meter_values"]["J&F"] == 70.0 and best["steps"] == 4
    assert result.best_meter_values["J&F"] == 70.0
    assert [r["J&F"] for r in read_metrics(tmp_path / "metrics.jsonl", "val")] == [50.0, 70.0, 60.0]


def test_validation_every_n_steps_logs_at_those_steps(tmp_path: Path) -> None:
    scores = iter([10.0, 30.0, 20.0])
    trainer = make_trainer(tmp_path, num_clips=6, epochs=1, val_every_epochs=0, val_every_steps=2,
                           validate=lambda model: {"J&F": next(scores)})
    trainer.fit()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl", "val")] == [2, 4, 6]
    assert load_training_checkpoint(tmp_path / "best.pt")["steps"] == 4


def test_the_last_epoch_is_validated_and_can_be_the_best_checkpoint(tmp_path: Path) -> None:
    # every other epoch over 3 epochs: epoch 2 by the schedule, epoch 3 because it is the last
    scores = iter([50.0, 70.0])
    trainer = make_trainer(tmp_path / "epochs", num_clips=2, epochs=3, val_every_epochs=2,
                           validate=lambda model: {"J&F": next(scores)})
    assert trainer.fit().best_meter_values["epoch"] == 3
    assert [r["epoch"] for r in read_metrics(tmp_path / "epochs" / "metrics.jsonl", "val")] == [2, 3]
    assert load_training_checkpoint(tmp_path / "epochs" / "best.pt")["steps"] == 6
    # a step schedule that already validated the last step is not repeated after the epoch
    trainer = make_trainer(tmp_path / "steps", num_clips=4, epochs=1, val_every_epochs=0, val_every_steps=2,
                           validate=lambda model: {"J&F": 1.0})
    trainer.fit()
    assert [r["step"] for r in read_metrics(tmp_path / "steps" / "metrics.jsonl", "val")] == [2, 4]


def test_parameter_groups_and_schedule() -> None:
    model = nn.Module()
    model.image_encoder = nn.Module()
    model.image_encoder.trunk = nn.Module()
    model.image_encoder.trunk.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
    model.image_encoder.trunk.pos_embed = nn.Parameter(torch.zeros(1, 4, 2, 2))
    model.memory_encoder = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    model.frozen = nn.Linear(4, 4).requires_grad_(False)
    groups = build_param_groups(model, lr=1e-4, image_encoder_lr=1e-5, weight_decay=0.1, layer_decay=0.5)
    by_name = {name: g for g in groups for name in g["param_names"]}
    assert "frozen.weight" not in by_name
    assert by_name["memory_encoder.0.weight"]["lr"] == 1e-4 and by_name["memory_encoder.0.weight"]["weight_decay"] == 0.1
    assert by_name["memory_encoder.0.bias"]["weight_decay"] == 0.0
    assert by_name["memory_encoder.1.weight"]["weight_decay"] == 0.0  # LayerNorm
    assert by_name["image_encoder.trunk.pos_embed"]["weight_decay"] == 0.0
    # layer decay: last block at 0.5^1, first block at 0.5^3, embeddings at 0.5^4 of the image-encoder lr
    assert by_name["image_encoder.trunk.blocks.2.weight"]["lr"] == pytest.approx(1e-5 * 0.5)
    assert by_name["image_encoder.trunk.blocks.0.weight"]["lr"] == pytest.approx(1e-5 * 0.5**3)
    assert by_name["image_encoder.trunk.pos_embed"]["lr"] == pytest.approx(1e-5 * 0.5**4)
    factors = [warmup_cosine_factor(s, total_steps=12, warmup_steps=2, final_ratio=0.1) for s in range(13)]
    assert factors[:2] == [0.5, 1.0] and factors[12] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))


KILL_SCRIPT = """
import io, sys, time
from pathlib import Path
import torch
from test_trainer import make_trainer

out_dir, marker = Path(sys.argv[1]), Path(sys.argv[2])
real_save = torch.save
writes = []

def save_slowly_after_the_first(obj, path):
    writes.append(path)
    if len(writes) == 1:
        return real_save(obj, path)
    buffer = io.BytesIO()
    real_save(obj, buffer)
    data = buffer.getvalue()
    with open(path, "wb") as handle:  # half the bytes, then the process is killed
        handle.write(data[: len(data) // 2])
        handle.flush()
    marker.write_text(str(path))
    time.sleep(120)

torch.save = save_slowly_after_the_first
make_trainer(out_dir, checkpoint_every_steps=1).fit()
"""


def test_sigkill_during_checkpoint_write_keeps_previous_last_pt(tmp_path: Path) -> None:
    script = tmp_path / "train_then_get_killed.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT))
    marker = tmp_path / "writing"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run"), str(marker)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            if process.poll() is not None:
                pytest.fail(f"training exited early:\n{process.stdout.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("the second checkpoint write never started")
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    half_written = Path(marker.read_text())
    assert half_written.exists() and half_written != tmp_path / "run" / "last.pt"
    checkpoint = load_training_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint["steps"] == 1
    resumed = make_trainer(tmp_path / "run", checkpoint_every_steps=1).fit(resume=True)
    assert resumed.steps == 16


def test_export_writes_official_weights_that_both_builders_load(tmp_path: Path) -> None:
    from conftest import require_reference
    from sam2_video.model.build import build_sam2 as our_build_sam2
    from sam2_video.model.presets import sam2_config
    from sam2_video.model.sam2 import SAM2
    from sam2_video.train.checkpoint import save_checkpoint
    from sam2_video.train.export_cli import export_weights

    require_reference()
    from sam2.build_sam import build_sam2 as official_build_sam2

    model = SAM2(sam2_config("sam2.1_hiera_t", image_size=512))
    run_config = {"model": {"model": "sam2", "config_path": "sam2.1_hiera_t", "image_size": 512, "num_maskmem": 7}}
    save_checkpoint({"model": model.state_dict(), "optimizer": {}, "steps": 3, "config": run_config}, tmp_path / "last.pt")

    exported = export_weights(tmp_path / "last.pt", tmp_path / "weights.pt")
    assert list(torch.load(exported, weights_only=True)) == ["model"]
    ours = our_build_sam2("sam2.1_hiera_t", exported, image_size=512)
    official = official_build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", str(exported), device="cpu")
    official_state = official.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(official_state[name], value), name
        assert torch.equal(ours.state_dict()[name], value), name
    with pytest.raises(Exception, match="already exists"):
        export_weights(tmp_path / "last.pt", exported)


def test_train_entry_point_resumes_sam2_exactly(tmp_path: Path) -> None:
    """Tiny SAM2 with the official training forward on synthetic clips: 2 epochs in one go versus
    1 epoch, then --resume for the second (warm-up covers all steps, so the schedule is the same)."""
    from sam2_video.config import load_config
    from sam2_video.train.cli import train

    def config(out_dir: Path, epochs: int):
        return load_config(REPO_ROOT / "configs" / "demo.yaml", [
            f"train.out_dir={out_dir}", f"train.epochs={epochs}", "dataset.synthetic_videos=2",
            "dataset.num_workers=0", "dataset.batch_size=2", "dataset.video_clip_length=3", "model.image_size=64",
            "model.num_correction_pt_per_frame=2",
            "model.trainable_modules=[memory_attention,memory_encoder,sam_mask_decoder]",
        ])

    train(config(tmp_path / "full", epochs=2))
    train(config(tmp_path / "resumed", epochs=1))
    train(config(tmp_path / "resumed", epochs=2), resume=True)
    full = read_metrics(tmp_path / "full" / "metrics.jsonl", "train")
    resumed = read_metrics(tmp_path / "resumed" / "metrics.jsonl", "train")
    assert [r["step"] for r in resumed] == [1, 2]
    assert [r[CORE_LOSS_KEY] for r in resumed] == [r[CORE_LOSS_KEY] for r in full]
    assert (tmp_path / "resumed" / "config.yaml").exists()
