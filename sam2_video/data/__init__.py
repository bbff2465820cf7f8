"""Data layer: videos on disk (or generated) -> sampled, augmented, prompted clips -> batches.

Construct datasets with plain keyword arguments (no registry); every item is a `VideoClip`
(images [T,3,S,S] normalised, masks [T,N,S,S] bool, prompts on the first `prompt_frames` frames):

    VOSFolderDataset(root, clip_sampler=None, transform=None, prompt_generator=None, prompt_frames=1,
                     image_folder="JPEGImages", mask_folder="Annotations", video_list=None, ignore_ids=(),
                     prompts_dir=None, mask_cache_size=64)                DAVIS / YouTube-VOS / BCSS folders
    COCOVideoDataset(json_path, image_root=None, ..., mask_cache_size=64)  seed-002 COCO video JSON
    SAVJsonDataset(frames_root, annotations_root, annotation_kind="manual", ann_every=4, ..., video_list=None)
    VideoDataset(data_path, num_objects=(1, 3), ..., video_list=None)    bare frames + generated objects
    SyntheticVideoDataset(num_videos, num_frames=16, image_size=128, seed=0, num_objects=(1, 3), ...)
    synthesize(out_dir, num_videos, num_frames=16, image_size=128, seed=0, num_objects=(1, 3)) -> Path
        writes out_dir/JPEGImages/synthetic_NNNN/00000.jpg + out_dir/Annotations/synthetic_NNNN/00000.png

    SAM2ClipSampler(num_frames=8, max_num_objects=3, reverse_prob=0.0, allow_padding=True)
    STCNClipSampler(num_frames=3, max_jump=5, max_num_objects=2, reverse_prob=0.5, allow_padding=True)
        with stcn_max_jump(progress) -> int, the max_jump curriculum
    ClipTransform(image_size, ...) (resize + normalise) / ClipTransform.sam2_training(image_size)
    PromptGenerator(prompt_types=("point",), num_of_pos_points=1 | (min, max), include_center=False,
                    num_of_neg_points=0, negatives_near_object=True, box_jitter=0.0)
    collate_fn(clips) -> BatchedVideoDatapoint
    build_dataloader(dataset, batch_size, num_workers=0, shuffle=True, seed=0, rank=None, world_size=None,
                     collate_fn=collate_fn, pin_memory=None): per-clip seeds, the trainer's loader

The folder datasets (vos, coco, sav, video) check every image file's header and size when built
(`file_check`), so a bad file is named before training starts.

Loading runs best in DataLoader workers, where torch uses one thread.
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
