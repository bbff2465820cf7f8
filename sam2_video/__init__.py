"""sam2-video: fine-tune, run and score SAM2 for video object segmentation."""
