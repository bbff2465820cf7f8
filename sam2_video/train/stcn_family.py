"""The STCN baseline: its main-training recipe (max_jump curriculum, bootstrapped CE with warm-up)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from sam2_video.config import DataSection, ModelSection, TrainSection
from sam2_video.data import ClipDataset, STCNClipSampler, stcn_max_jump
from sam2_video.errors import UserInputError
from sam2_video.model.stcn import STCN, STCNConfig
from sam2_video.train.stcn_loss import STCNLoss
from sam2_video.train.trainer import Validator
from sam2_video.train.validate import validate_stcn


@dataclass(frozen=True)
class STCNFamily:
    model: ModelSection

    def build_model(self, data: DataSection, verbose: bool) -> STCN:
        settings = self.model.stcn
        stcn = STCN(STCNConfig.from_section(settings, self.model.image_size))
        for path, load in [
            (settings.key_resnet_weights, lambda weights: stcn.load_backbone_weights(key_resnet=weights)),
            (settings.value_resnet_weights, lambda weights: stcn.load_backbone_weights(value_resnet18=weights)),
        ]:
            if path is not None:
                _load_resnet_weights(path, load)
        return stcn

    def clip_sampler(self, data: DataSection) -> STCNClipSampler:
        return STCNClipSampler(num_frames=data.video_clip_length, max_num_objects=data.max_num_objects)

    def build_loss(self, train: TrainSection, total_steps: int) -> STCNLoss:
        """Bootstrapped CE, its warm-up placed over `total_steps` (`trainer_hooks` moves it along)."""
        return STCNLoss.for_total_steps(total_steps)

    def trainer_hooks(self, dataset: ClipDataset, loss: STCNLoss, epochs: int) -> dict[str, Callable[[int], None]]:
        """The max_jump curriculum per epoch, the loss's warm-up per step."""
        sampler = dataset.clip_sampler

        def set_max_jump(epoch: int) -> None:
            sampler.max_jump = stcn_max_jump(epoch / epochs)

        return dict(on_epoch_start=set_max_jump, on_step_start=loss.set_step)

    def build_validator(self, val_root: str) -> Validator:
        mem_every = self.model.stcn.mem_every
        return lambda model, out_dir=None: validate_stcn(model, val_root, mem_every=mem_every, out_dir=out_dir)


def _load_resnet_weights(path: str, load: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """torch.load a torchvision ResNet state dict and `load` it; errors name the file."""
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several kinds for files that are not state dicts
        raise UserInputError(f"{path}: not a readable PyTorch state dict ({err})") from None
    if isinstance(weights, dict) and "state_dict" in weights:
        weights = weights["state_dict"]
    if not isinstance(weights, dict):
        raise UserInputError(f"{path}: expected a torchvision ResNet state dict, found {type(weights).__name__}")
    try:
        load(weights)
    except ValueError as err:
        raise UserInputError(f"{path}: {err}") from None
