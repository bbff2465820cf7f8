"""A trainer generic over the model: `model(batch) -> outputs`, `loss_fn(outputs, batch) -> {"core_loss": ...}`.

It owns the data order (an epoch-seeded sampler whose items carry their own seeds, so a resumed
run sees the same clips, crops and prompts), AdamW with parameter groups, the warm-up + cosine
schedule, gradient clipping and accumulation, the precision policy (`precision`: bf16, or fp16 with
a loss scaler on GPUs without bf16), DDP under `torchrun`,
validation with `best.pt` kept by the best metric, atomic `last.pt` checkpoints with every
RNG state (rolled back to the last steady one when a NaN stops training, see `good_checkpoint`),
and the logs (`metrics.jsonl`, TensorBoard, `loss_curve.png`).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset

from sam2_video.config import TrainSection
from sam2_video.errors import UserInputError
from sam2_video.data.loader import build_dataloader, distributed_rank_and_size
from sam2_video.device import resolve_device
from sam2_video.rng import capture_rng_state, restore_rng_state, seed_everything
from sam2_video.train.checkpoint import CHECKPOINT_FORMAT, load_training_checkpoint, restore_optimizer, save_checkpoint
from sam2_video.train.good_checkpoint import GoodCheckpoint
from sam2_video.train.loss import CORE_LOSS_KEY
from sam2_video.train.memory import cuda_memory_line, out_of_memory_message
from sam2_video.train.metrics_log import MetricsLog, plot_loss_curve
from sam2_video.train.optim import build_optimizer, build_scheduler
from sam2_video.train.precision import MAX_SKIPPED_STEPS_IN_A_ROW, resolve_precision

LossFn = Callable[[Any, Any], dict[str, Tensor]]
Validator = Callable[[nn.Module], dict[str, float]]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN / infinite loss or gradient; the message names the step and the videos.

    `step`: the optimizer step that failed; `resume_step`: the step `last.pt` holds after the stop
    (None: no checkpoint to resume from).
    """

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step
        self.resume_step: int | None = None


class TrainingOutOfMemoryError(UserInputError):
    """A training step ran out of device memory; the message says what to change."""


def validation_due_after_epoch(settings: TrainSection, epoch: int, step: int) -> bool:
    """Whether epoch `epoch` (1-based, just finished at optimizer step `step`) is validated: every
    `val_every_epochs` epochs and after the last one, unless `val_every_steps` has just validated this step.
    The last epoch is always scored so that `best.pt` can be the final model: with `val_every_epochs: 2`
    and 7 epochs the demo's best.pt was otherwise chosen among epochs 2, 4 and 6, although epoch 7 scored
    higher on the selection videos on seeds 1 and 2 (and held out: 0.794 and 0.808 against 0.747 and 0.765
    for the epochs chosen without it)."""
    just_validated = bool(settings.val_every_steps) and step % settings.val_every_steps == 0
    every = settings.val_every_epochs
    return not just_validated and (epoch == settings.epochs or bool(every) and epoch % every == 0)


def optimizer_steps_per_epoch(num_clips: int, batch_size: int, grad_accumulation: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch: each rank's share of the clips in whole accumulated batches."""
    return (math.ceil(num_clips / world_size) // batch_size) // grad_accumulation


@dataclass
class TrainResult:
    """What `Trainer.fit` did: optimizer steps, epochs finished, last logged losses, best metric."""

    steps: int
    epochs: int
    last_loss: dict[str, float]
    best_meter_values: dict[str, float]
    seconds: float
    out_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Fine-tune `model` on `train_dataset` with the settings of a `TrainSection`.

    model: `model(batch) -> outputs`; its trainable parameters are those with requires_grad.
    loss_fn: `loss_fn(outputs, batch) -> dict` with a scalar `core_loss` (other scalars are logged).
    train_dataset: items combined by `collate_fn` into a batch with `.to(device)` (or a tensor);
    a batch's `video_names` (if present) name the clips in error messages.
    validate: `validate(model) -> {"J&F": ...}` run on rank 0 every `val_every_epochs` /
    `val_every_steps` and after the last epoch; `best.pt` keeps the checkpoint with the highest `best_metric`.
    run_config: the resolved run config, stored in every checkpoint.
    on_epoch_start: called with the epoch index before the epoch's clips are loaded (also when
    resuming part-way into it), e.g. to set a clip sampler's curriculum; loader workers start after it.
    on_step_start: called with the number of optimizer steps done before each step's first forward
    pass, e.g. for a loss whose schedule follows training progress; resumed runs call it with the
    restored count.
    Under `torchrun` (process group initialised) the model is wrapped in DDP, the data sharded,
    and only rank 0 writes logs and checkpoints to `settings.out_dir`.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        train_dataset: Dataset,
        settings: TrainSection,
        *,
        batch_size: int = 1,
        num_workers: int = 0,
        shuffle: bool = True,
        collate_fn: Callable[[list], Any] | None = None,
        validate: Validator | None = None,
        best_metric: str = "J&F",
        run_config: dict[str, Any] | None = None,
        on_epoch_start: Callable[[int], None] | None = None,
        on_step_start: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.loss_fn = loss_fn
        self.validate = validate
        self.best_metric = best_metric
        self.run_config = run_config
        self.on_epoch_start = on_epoch_start
        self.on_step_start = on_step_start
        self.out_dir = Path(settings.out_dir)
        self.rank, self.world_size = distributed_rank_and_size()
        self.is_main = self.rank == 0
        self.device = resolve_device(settings.device, "train.device")
        self.precision = resolve_precision(settings.precision, self.device)

        self.module = model.to(self.device)
        self.model: nn.Module = self.module
        if self.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(
                self.module, device_ids=device_ids, find_unused_parameters=True
            )

        self.loader = build_dataloader(
            train_dataset, batch_size, num_workers, shuffle, settings.seed, self.rank, self.world_size,
            collate_fn=collate_fn, pin_memory=self.device.type == "cuda",
        )
        self.sampler = self.loader.sampler
        self.steps_per_epoch = optimizer_steps_per_epoch(
            len(train_dataset), batch_size, settings.grad_accumulation, self.world_size
        )
        if self.steps_per_epoch == 0:
            need = batch_size * settings.grad_accumulation * self.world_size
            raise UserInputError(
                f"the training set has {len(train_dataset)} clips, fewer than one optimizer step needs "
                f"(batch_size x grad_accumulation x processes = {need})"
            )
        self.batches_per_epoch = self.steps_per_epoch * settings.grad_accumulation
        self.total_steps = self.steps_per_epoch * settings.epochs

        self.optimizer = build_optimizer(
            self.module, settings.lr, settings.image_encoder_lr, settings.weight_decay, settings.layer_decay
        )
        self.scheduler = build_scheduler(
            self.optimizer, self.total_steps, settings.warmup_steps, settings.final_lr_ratio
        )
        self.step = 0
        self.epoch = 0
        self.batches_done = 0  # batches of the current epoch already trained on
        self.time_elapsed = 0.0
        self.last_loss: dict[str, float] = {}
        self.best_meter_values: dict[str, float] = {}
        self.log: MetricsLog | None = None
        self.checkpoints = GoodCheckpoint(self.out_dir) if self.is_main else None

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint payload (see `sam2_video.train.checkpoint`); collective under DDP."""
        rng = [capture_rng_state()]
        if self.world_size > 1:
            rng = [None] * self.world_size
            dist.all_gather_object(rng, capture_rng_state())
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "batches_in_epoch": self.batches_done,
            "steps": self.step,
            "loss": dict(self.last_loss),
            "time_elapsed": self.time_elapsed,
            "best_meter_values": dict(self.best_meter_values),
            "config": self.run_config,
            "rng": rng,
            "scaler": self.precision.state_dict(),
        }

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        """Restore a checkpoint; learning rates, weight decay and schedule are this run's settings."""
        self.module.load_state_dict(checkpoint["model"])
        restore_optimizer(checkpoint, self.optimizer, self.scheduler)
        self.epoch = checkpoint["epoch"]
        self.batches_done = checkpoint["batches_in_epoch"]
        self.step = checkpoint["steps"]
        self.last_loss = checkpoint["loss"]
        self.time_elapsed = checkpoint["time_elapsed"]
        self.best_meter_values = checkpoint["best_meter_values"]
        rng = checkpoint["rng"]
        restore_rng_state(rng[self.rank % len(rng)])
        self.precision.load_state_dict(checkpoint.get("scaler"))

    def _save(self, path: Path) -> None:
        payload = self.state_dict()  # every rank joins the RNG gather
        if self.is_main:
            save_checkpoint(payload, path)
            if path == self.last_path:
                self.checkpoints.saved(self.step, payload["model"])

    # ------------------------------------------------------------------ training
    def fit(self, resume: bool = False, checkpoint: dict[str, Any] | None = None) -> TrainResult:
        """Train for `settings.epochs` epochs (from `out_dir/last.pt` when `resume`; `checkpoint`:
        that file's content when the caller has loaded it already)."""
        if resume:
            if not self.last_path.is_file():
                raise UserInputError(f"{self.last_path}: no checkpoint to resume from (train without --resume first)")
            self.load_state_dict(checkpoint or load_training_checkpoint(self.last_path))
            if self.checkpoints is not None:
                self.checkpoints.resumed(self.step)
        else:
            for path in (self.last_path, self.checkpoints.good if self.checkpoints else None):
                if path is not None and path.exists():
                    raise UserInputError(
                        f"{path} exists from an earlier run; continue it with --resume, or choose another train.out_dir"
                    )
            seed_everything(self.settings.seed + self.rank)
        if self.is_main:
            self.log = MetricsLog(self.out_dir, resume_from_step=self.step if resume else None)
        progress = self._progress_bar()
        history: list[dict[str, float]] = []
        self.model.train()
        self.first_step = self.step
        if self.is_main and self.device.type == "cuda":
            print(f"training on {cuda_memory_line(self.device)} ({self.precision.name})")
        try:
            while self.epoch < self.settings.epochs:
                history.extend(self._train_epoch(progress))
                self.epoch += 1
                self.batches_done = 0
                if self.validate is not None and validation_due_after_epoch(self.settings, self.epoch, self.step):
                    self._run_validation()
                self._save(self.last_path)
        except NonFiniteLossError as err:
            if self.checkpoints is not None:
                err.resume_step, kept = self.checkpoints.roll_back()
                err.args = (f"{err}; {kept}",)
            raise
        except torch.OutOfMemoryError:
            kept = (f"{self.last_path} (step {load_training_checkpoint(self.last_path)['steps']}) is kept"
                    if self.is_main and self.last_path.is_file() else "no checkpoint had been written yet")
            raise TrainingOutOfMemoryError(out_of_memory_message(self.device, self.step + 1, kept)) from None
        finally:
            if progress is not None:
                progress.close()
            if self.log is not None:
                self.log.close()
        if self.is_main:
            plot_loss_curve(self.log.jsonl_path, self.out_dir / "loss_curve.png")
        return TrainResult(
            steps=self.step,
            epochs=self.epoch,
            last_loss=self.last_loss,
            best_meter_values=self.best_meter_values,
            seconds=self.time_elapsed,
            out_dir=self.out_dir,
            history=history,
        )

    def _progress_bar(self):
        """A tqdm bar on a terminal, periodic plain lines in logs / CI; on the main rank only."""
        if not self.is_main:
            return None
        from sam2_video.train.progress import StepProgress

        return StepProgress(total=self.total_steps, initial=self.step)

    def _train_epoch(self, progress) -> list[dict[str, float]]:
        settings = self.settings
        accumulation = settings.grad_accumulation
        if self.on_epoch_start is not None:
            self.on_epoch_start(self.epoch)
        self.sampler.set_epoch(self.epoch, start=self.batches_done * self.loader.batch_size)
        history = []
        step_terms: dict[str, float] = {}
        step_start = time.perf_counter()
        for batch_index, batch in enumerate(self.loader, start=self.batches_done):
            if batch_index >= self.batches_per_epoch:
                break
            if self.on_step_start is not None and batch_index % accumulation == 0:
                self.on_step_start(self.step)
            is_step_end = (batch_index + 1) % accumulation == 0
            terms = self._forward_backward(batch, batch_index, sync_gradients=is_step_end)
            for key, value in terms.items():
                step_terms[key] = step_terms.get(key, 0.0) + value / accumulation
            if not is_step_end:
                continue
            lr = max(group["lr"] for group in self.optimizer.param_groups)  # the rate this step uses
            # per-module norms cost one host sync, so only on steps that are logged
            logged = self.log is not None and (self.step + 1) % settings.log_every_steps == 0
            grad_norm, module_norms = self._optimizer_step(batch, batch_index, per_module=logged)
            if self.step == self.first_step + 1 and self.is_main and self.device.type == "cuda":
                print(f"first step: peak {torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB allocated")
            step_terms = self._mean_over_ranks(step_terms)
            self.batches_done = batch_index + 1
            seconds = time.perf_counter() - step_start
            self.time_elapsed += seconds
            self.last_loss = step_terms
            if self.checkpoints is not None and math.isfinite(step_terms[CORE_LOSS_KEY]):  # fp16 skips non-finite
                self.checkpoints.observe(self.step, step_terms[CORE_LOSS_KEY])
            record = {**step_terms, "lr": lr, "grad_norm": grad_norm, **module_norms, "seconds": seconds}
            history.append(record)
            if self.log is not None and self.step % settings.log_every_steps == 0:
                self.log.log("train", self.step, self.epoch, record)
            if progress is not None:
                progress.update(self.step, self.epoch, step_terms[CORE_LOSS_KEY], lr)
            if self.validate is not None and settings.val_every_steps and self.step % settings.val_every_steps == 0:
                self._run_validation()
            if settings.checkpoint_every_steps and self.step % settings.checkpoint_every_steps == 0:
                self._save(self.last_path)
            step_terms = {}
            step_start = time.perf_counter()
        return history

    def _forward_backward(self, batch: Any, batch_index: int, sync_gradients: bool) -> dict[str, float]:
        batch = batch.to(self.device, non_blocking=True) if hasattr(batch, "to") else batch
        no_sync = self.model.no_sync() if self.world_size > 1 and not sync_gradients else contextlib.nullcontext()
        with no_sync:
            with self.precision.autocast():
                outputs = self.model(batch)
            losses = self.loss_fn(outputs, batch)
            core_loss = losses[CORE_LOSS_KEY]
            if not self.precision.handles_non_finite:  # fp16: the scaler skips the step instead
                self._check_finite(core_loss.detach(), "loss", batch, batch_index)
            if not core_loss.requires_grad:
                # e.g. every frame of a short clip was a conditioning frame, so the trainable memory
                # modules took no part: a zero-gradient step keeps DDP ranks in lockstep
                core_loss = core_loss + sum(p.sum() * 0.0 for p in self.module.parameters() if p.requires_grad)
            self.precision.backward(core_loss / self.settings.grad_accumulation)
        return {key: float(value.detach()) for key, value in losses.items() if torch.is_tensor(value) and value.numel() == 1}

    def _optimizer_step(self, batch: Any, batch_index: int, per_module: bool) -> tuple[float, dict[str, float]]:
        """Clip, step, schedule; returns the total gradient norm before clipping and, with `per_module`,
        `{"grad_norm/<top-level module>": norm}` (which parts of the model the loss actually drives)."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        max_norm = self.settings.grad_clip if self.settings.grad_clip > 0 else float("inf")
        self.precision.unscale(self.optimizer)
        module_norms = _gradient_norms_per_module(self.module) if per_module else {}
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if not self.precision.handles_non_finite:  # fp16: the scaler skips an overflowing step itself
            self._check_finite(grad_norm.detach(), "gradient norm", batch, batch_index)
        if not self.precision.step(self.optimizer) and self.precision.skipped_in_a_row >= MAX_SKIPPED_STEPS_IN_A_ROW:
            what = f"gradient norm (after {MAX_SKIPPED_STEPS_IN_A_ROW} skipped fp16 steps in a row)"
            self._check_finite(grad_norm.detach(), what, batch, batch_index)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return float(grad_norm), module_norms

    def _mean_over_ranks(self, terms: dict[str, float]) -> dict[str, float]:
        """Logged loss terms averaged over DDP ranks (each rank saw different clips)."""
        if self.world_size == 1:
            return terms
        names = sorted(terms)
        values = torch.tensor([terms[name] for name in names], dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return dict(zip(names, (values / self.world_size).tolist()))

    def _check_finite(self, value: Tensor, what: str, batch: Any, batch_index: int) -> None:
        """Stop every rank when any rank sees a NaN / inf (`fit` then rolls `last.pt` back to a good state)."""
        bad = torch.tensor(float(not torch.isfinite(value).all()), device=self.device)
        if self.world_size > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item() == 0:
            return
        names = getattr(batch, "video_names", None)
        raise NonFiniteLossError(
            f"{what} is {value.float().flatten()[0].item()} at optimizer step {self.step + 1} "
            f"(epoch {self.epoch}, batch {batch_index}) on videos {names if names is not None else '(unnamed)'}"
            f" (on rank {self.rank} or another rank); training stopped",
            step=self.step + 1,
        )

    def _run_validation(self) -> None:
        """Validate on rank 0, log the metrics, update `best.pt`; other ranks wait."""
        improved = False
        if self.is_main:
            self.module.eval()
            with torch.no_grad():
                metrics = {key: float(value) for key, value in self.validate(self.module).items()}
            self.module.train()
            if self.best_metric not in metrics:
                raise KeyError(f"the validator returned {sorted(metrics)}, without the best metric {self.best_metric!r}")
            if self.log is not None:
                self.log.log("val", self.step, self.epoch, metrics)
            value = metrics[self.best_metric]
            improved = self.best_metric not in self.best_meter_values or value > self.best_meter_values[self.best_metric]
            if improved:
                self.best_meter_values = {self.best_metric: value, "step": float(self.step), "epoch": float(self.epoch)}
        if self.world_size > 1:
            shared = [self.best_meter_values, improved]
            dist.broadcast_object_list(shared, src=0)
            self.best_meter_values, improved = shared
        if improved:
            self._save(self.best_path)


def _gradient_norms_per_module(model: torch.nn.Module) -> dict[str, float]:
    """L2 norm of the gradients of each top-level submodule / parameter that has any (one host sync)."""
    squares: dict[str, list[Tensor]] = {}
    for name, param in model.named_parameters():
        if param.grad is not None:
            squares.setdefault(name.split(".")[0], []).append(param.grad.detach().float().pow(2).sum())
    if not squares:
        return {}
    norms = torch.stack([torch.stack(parts).sum() for parts in squares.values()]).sqrt().tolist()
    return {f"grad_norm/{name}": norm for name, norm in zip(squares, norms)}
