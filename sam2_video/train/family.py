"""The seam between the training path and the model it trains.

What differs between SAM2 (the product) and the STCN baseline (model, loss, clip sampling,
trainer hooks, validation) sits behind `ModelFamily`; `model_family` picks one from the typed
config, so the code around it has no per-model branches.
"""
from __future__ import annotations

from typing import Callable, Protocol

from torch import nn

from sam2_video.config import DataSection, ModelSection, TrainSection
from sam2_video.data import ClipDataset
from sam2_video.data.sampling import ClipSampler
from sam2_video.train.sam2_family import SAM2Family
from sam2_video.train.stcn_family import STCNFamily
from sam2_video.train.trainer import LossFn, Validator


class ModelFamily(Protocol):
    def build_model(self, data: DataSection, verbose: bool) -> nn.Module:
        """The model on the CPU, with the starting weights its section names."""

    def clip_sampler(self, data: DataSection) -> ClipSampler:
        """How the training clips are drawn from a video."""

    def build_loss(self, train: TrainSection, total_steps: int) -> LossFn:
        """`loss(outputs, batch)`; `total_steps` optimizer steps in the whole run."""

    def trainer_hooks(self, dataset: ClipDataset, loss: LossFn, epochs: int) -> dict[str, Callable[[int], None]]:
        """`Trainer` keywords `on_epoch_start` / `on_step_start` for the schedules the recipe has."""

    def build_validator(self, val_root: str) -> Validator:
        """J&F on the held-out videos of `val_root` with the family's video predictor."""


def model_family(model: ModelSection) -> ModelFamily:
    """The family of `model.model` (checked by `load_config`)."""
    return STCNFamily(model) if model.model == "stcn" else SAM2Family(model)
