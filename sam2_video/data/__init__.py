"""Data layer: videos on disk (or generated) -> augmented, prompted clips -> batches for the models.

Interim API (engineer D; construct datasets with plain keyword arguments, no registry):

    collate_fn(clips: list[VideoClip]) -> BatchedVideoDatapoint
    PromptGenerator(prompt_types=("point",), num_of_pos_points: int | (min, max) = 1, include_center=False,
                    num_of_neg_points=0, negatives_near_object=True, box_jitter=0.0)
        (mask [H,W] bool, generator: torch.Generator) -> ObjectPrompt
    synthesize(out_dir, num_videos, num_frames=16, image_size=128, seed=0, num_objects=(1, 3)) -> Path
        writes out_dir/JPEGImages/synthetic_NNNN/00000.jpg + out_dir/Annotations/synthetic_NNNN/00000.png
    SyntheticVideoDataset(num_videos, num_frames=16, image_size=128, seed=0, num_objects=(1, 3),
                          clip_sampler=None, transform=None, prompt_generator=None, prompt_frames=1)
    VOSFolderDataset(root, clip_sampler=None, transform=None, prompt_generator=None, prompt_frames=1,
                     image_folder="JPEGImages", mask_folder="Annotations", video_list=None, ignore_ids=(),
                     prompts_dir=None, mask_cache_size=64)
    COCOVideoDataset(json_path, image_root=None, clip_sampler=None, transform=None, prompt_generator=None,
                     prompt_frames=1, mask_cache_size=64)
    SAVJsonDataset(frames_root, annotations_root, annotation_kind="manual", ann_every=4, clip_sampler=None,
                   transform=None, prompt_generator=None, prompt_frames=1, video_list=None, mask_cache_size=64)
    VideoDataset(data_path, num_objects=(1, 3), clip_sampler=None, transform=None, prompt_generator=None,
                 prompt_frames=1, video_list=None)
    build_dataloader(dataset, batch_size, num_workers=0, shuffle=True, seed=0, drop_last=False, pin_memory=None)
    SAM2ClipSampler(num_frames=8, max_num_objects=3, reverse_prob=0.0, allow_padding=True)
    STCNClipSampler(num_frames=3, max_jump=5, max_num_objects=2, reverse_prob=0.5, allow_padding=True)
    ClipTransform(image_size, ...) / ClipTransform.sam2_training(image_size)

Every dataset item is a `VideoClip` (images [T,3,S,S] normalised, masks [T,N,S,S] bool, prompts on the
first `prompt_frames` frames). Loading runs best in DataLoader workers (torch uses one thread there).
"""
from sam2_video.data.bare_frames import VideoDataset
from sam2_video.data.batch import BatchedVideoDatapoint, ObjectPrompt, VideoClip, collate_fn
from sam2_video.data.clip_dataset import ClipDataset
from sam2_video.data.coco import COCOVideoDataset
from sam2_video.data.loader import build_dataloader
from sam2_video.data.prompts import PromptGenerator
from sam2_video.data.sav import SAVJsonDataset, read_sav_annotation
from sam2_video.data.sampling import SAM2ClipSampler, STCNClipSampler, stcn_max_jump
from sam2_video.data.synthetic import SyntheticVideoDataset, davis_palette, render_video, synthesize
from sam2_video.data.transforms import ClipTransform
from sam2_video.data.vos_folder import VOSFolderDataset

__all__ = [
    "BatchedVideoDatapoint",
    "COCOVideoDataset",
    "SAVJsonDataset",
    "VideoDataset",
    "build_dataloader",
    "read_sav_annotation",
    "ClipDataset",
    "ClipTransform",
    "ObjectPrompt",
    "PromptGenerator",
    "SAM2ClipSampler",
    "STCNClipSampler",
    "SyntheticVideoDataset",
    "VOSFolderDataset",
    "VideoClip",
    "collate_fn",
    "davis_palette",
    "render_video",
    "stcn_max_jump",
    "synthesize",
]
