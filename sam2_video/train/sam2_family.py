"""SAM2, the product: the official training forward and multi-step loss, J&F with its video predictor."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sam2_video.config import DataSection, ModelSection, TrainSection, recipe_prompt_probabilities
from sam2_video.data import ClipDataset, SAM2ClipSampler
from sam2_video.model.presets import SAM2Config, sam2_config
from sam2_video.model.sam2_train import SAM2Model
from sam2_video.train.loss import LossWeights, MultiStepMultiMaskLoss
from sam2_video.train.trainer import LossFn, Validator
from sam2_video.train.validate import validate_sam2

# ModelSection fields handed to SAM2Model as training-recipe options when set
RECIPE_FIELDS = (
    "prob_to_use_pt_input_for_train",
    "prob_to_use_box_input_for_train",
    "num_init_cond_frames_for_train",
    "num_frames_to_correct_for_train",
    "num_correction_pt_per_frame",
    "prob_to_sample_from_gt_for_train",
)


@dataclass(frozen=True)
class SAM2Family:
    model: ModelSection

    def sam2_config(self) -> SAM2Config:
        """The architecture the run trains (its preset at its image and memory size)."""
        return sam2_config(self.model.config_path, image_size=self.model.image_size, **self.model.sam2_overrides())

    def build_model(self, data: DataSection, verbose: bool) -> SAM2Model:
        recipe = recipe_prompt_probabilities(data.prompt_types)
        recipe.update({name: getattr(self.model, name) for name in RECIPE_FIELDS
                       if getattr(self.model, name) is not None})
        return SAM2Model(
            checkpoint_path=self.model.checkpoint_path,
            config_path=self.model.config_path,
            trainable_modules=self.model.trainable_modules,
            device="cpu",
            image_size=self.model.image_size,
            feature_cache_frames=self.model.feature_cache_frames,
            explicit_prompts=data.explicit_prompts,
            verbose=verbose,
            **self.model.sam2_overrides(),
            **recipe,
        )

    def clip_sampler(self, data: DataSection) -> SAM2ClipSampler:
        return SAM2ClipSampler(num_frames=data.video_clip_length, max_num_objects=data.max_num_objects)

    def build_loss(self, train: TrainSection, total_steps: int) -> LossFn:
        loss = MultiStepMultiMaskLoss(
            LossWeights(train.loss_mask_weight, train.loss_dice_weight, train.loss_iou_weight, train.loss_class_weight),
            focal_alpha=train.focal_alpha,
            focal_gamma=train.focal_gamma,
            supervise_all_iou=train.supervise_all_iou,
            iou_use_l1_loss=train.iou_use_l1_loss,
        )
        return lambda outputs, batch: loss(outputs, batch.masks, batch.object_frame_is_padding)

    def trainer_hooks(self, dataset: ClipDataset, loss: LossFn, epochs: int) -> dict[str, Callable[[int], None]]:
        return {}

    def build_validator(self, val_root: str) -> Validator:
        image_size = self.model.image_size
        return lambda model, out_dir=None: validate_sam2(model, val_root, image_size, out_dir=out_dir)
