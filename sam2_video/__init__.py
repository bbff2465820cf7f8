"""sam2-video: fine-tune, run and score SAM2 for video object segmentation.

Data flow: `sam2_video.data` (datasets -> clips -> `BatchedVideoDatapoint`) -> `sam2_video.model`
(the SAM2 core, its training forward `SAM2Model`, the STCN baseline) -> `sam2_video.train` /
`sam2_video.predict` -> `sam2_video.evaluate` (DAVIS J&F).
"""
from sam2_video.model.build import build_sam2, load_checkpoint, save_checkpoint
from sam2_video.model.presets import PRESET_NAMES, SAM2Config, sam2_config
from sam2_video.model.sam2 import SAM2
from sam2_video.model.sam2_train import SAM2Model
from sam2_video.predict.image_predictor import SAM2ImagePredictor
from sam2_video.predict.video_predictor import SAM2VideoPredictor, build_sam2_video_predictor

__all__ = [
    "PRESET_NAMES",
    "SAM2",
    "SAM2Config",
    "SAM2ImagePredictor",
    "SAM2Model",
    "SAM2VideoPredictor",
    "build_sam2",
    "build_sam2_video_predictor",
    "load_checkpoint",
    "sam2_config",
    "save_checkpoint",
]
