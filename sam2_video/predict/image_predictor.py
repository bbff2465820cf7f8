"""Promptable segmentation of single images, with the official `SAM2ImagePredictor` call shapes.

Unlike the official predictor (1024 only), any model image_size works: feature sizes come from the model.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sam2_video.errors import UserInputError
from sam2_video.model.sam2 import SAM2
from sam2_video.predict.frames import preprocess_image

LOW_RES_LOGIT_LIMIT = 32.0  # returned low-res logits are clamped to +-32, as in the official predictor
BOX_CORNER_LABELS = (2, 3)  # prompt-encoder labels of a box's top-left and bottom-right corners


class ImagePrediction(NamedTuple):
    """Torch outputs of `SAM2ImagePredictor.predict_torch` (B prompts, M = 3 with multimask, else 1)."""

    masks: torch.Tensor  # [B, M, H, W] logits (or bool masks) at the original image size
    iou_predictions: torch.Tensor  # [B, M]
    low_res_masks: torch.Tensor  # [B, M, S/4, S/4] logits, clamped to +-32
    object_score_logits: torch.Tensor  # [B, 1] > 0: object present


class SAM2ImagePredictor:
    """Compute an image's embedding once with `set_image`, then `predict` masks for prompts."""

    def __init__(self, model: SAM2, mask_threshold: float = 0.0) -> None:
        self.model = model
        self.mask_threshold = mask_threshold
        self._features: dict[str, torch.Tensor | list[torch.Tensor]] | None = None
        self._orig_hw: tuple[int, int] | None = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def is_image_set(self) -> bool:
        return self._features is not None

    def reset_predictor(self) -> None:
        self._features = None
        self._orig_hw = None

    @torch.no_grad()
    def set_image(self, image: np.ndarray | Image.Image) -> None:
        """Compute the embedding of an RGB uint8 image [H, W, 3] (or a PIL image, as the official predictor)."""
        if isinstance(image, Image.Image):
            image = np.array(image.convert("RGB"))
        if not isinstance(image, np.ndarray):
            raise UserInputError(f"set_image expects a NumPy RGB uint8 array [H, W, 3], got {type(image).__name__}")
        model = self.model
        x = preprocess_image(image, model.image_size).to(self.device)
        backbone_out = model.forward_image(x)
        _, vision_feats, _, feat_sizes = model.prepare_backbone_features(backbone_out)
        vision_feats[-1] = vision_feats[-1] + model.no_mem_embed  # image mode: "no memory" frame
        feats = [tokens.permute(1, 2, 0).reshape(1, -1, *size) for tokens, size in zip(vision_feats, feat_sizes)]
        self._features = {"image_embed": feats[-1], "high_res_feats": feats[:-1]}
        self._orig_hw = (image.shape[0], image.shape[1])

    def get_image_embedding(self) -> torch.Tensor:
        """The stride-16 image embedding [1, C, S/16, S/16] of the current image."""
        self._require_image()
        return self._features["image_embed"]

    def _require_image(self) -> None:
        if self._features is None:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for the prompts on the current image, as NumPy arrays.

        point_coords [P, 2] (x, y) pixels of the original image (or [0, 1] with normalize_coords=False),
        point_labels [P] (1 foreground, 0 background), box [4] x0, y0, x1, y1, mask_input [1, S/4, S/4]
        logits (e.g. a previous low_res_masks entry). A batch of B prompts: [B, P, 2], [B, P], [B, 4].
        Returns (masks [M, H, W] bool or logits, iou_predictions [M], low_res_masks [M, S/4, S/4]),
        with a leading B dimension for batched prompts; M = 3 with multimask_output, else 1.
        """
        self._require_image()
        coords, labels, boxes, masks = self._prepare_prompts(point_coords, point_labels, box, mask_input,
                                                             normalize_coords)
        out = self.predict_torch(coords, labels, boxes, masks, multimask_output, return_logits)
        return tuple(t.squeeze(0).float().cpu().numpy() for t in out[:3])

    def _prepare_prompts(
        self,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
        normalize_coords: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """NumPy prompts -> tensors in model-input pixels: coords [B,P,2], labels [B,P], boxes [B,2,2], masks [B,1,h,w]."""
        height, width = self._orig_hw
        scale = torch.tensor([1.0 / width, 1.0 / height]) if normalize_coords else torch.ones(2)
        scale = scale * self.model.image_size
        coords = labels = boxes = masks = None
        if point_coords is not None:
            if point_labels is None:
                raise UserInputError("point_labels must be given with point_coords (1 foreground, 0 background)")
            coords = torch.as_tensor(np.asarray(point_coords), dtype=torch.float)
            labels = torch.as_tensor(np.asarray(point_labels), dtype=torch.int)
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None]
            if coords.ndim != 3 or coords.shape[-1] != 2:
                raise UserInputError(f"point_coords must have shape [P, 2] or [B, P, 2], got {tuple(coords.shape)}")
            if tuple(labels.shape) != tuple(coords.shape[:2]):
                raise UserInputError(
                    f"point_labels must have one label per point: {coords.shape[1]} points per prompt but "
                    f"point_labels has shape {tuple(labels.shape[1:]) if labels.ndim == 2 else tuple(labels.shape)}"
                )
            coords = (coords * scale).to(self.device)
            labels = labels.to(self.device)
        elif point_labels is not None:
            raise UserInputError("point_labels given without point_coords")
        if box is not None:
            boxes = torch.as_tensor(np.asarray(box), dtype=torch.float)
            if boxes.shape[-1] != 4 or boxes.ndim > 2:
                raise UserInputError(f"box must have shape [4] or [B, 4] (x0, y0, x1, y1), got {tuple(boxes.shape)}")
            boxes = (boxes.reshape(-1, 2, 2) * scale).to(self.device)
        if mask_input is not None:
            masks = torch.as_tensor(np.asarray(mask_input), dtype=torch.float)
            if masks.ndim == 3:
                masks = masks[None]
            expected = self.model.sam_prompt_encoder.mask_input_size
            if masks.ndim != 4 or masks.shape[1] != 1 or tuple(masks.shape[-2:]) != tuple(expected):
                raise UserInputError(
                    f"mask_input must have shape [1, {expected[0]}, {expected[1]}] (low-res logits), "
                    f"got {tuple(masks.shape)}"
                )
            masks = masks.to(self.device)
        return coords, labels, boxes, masks

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> ImagePrediction:
        """Prompts already in model-input pixels: point_coords [B,P,2], point_labels [B,P], boxes [B,2,2]
        (or [B,4]), mask_input [B,1,S/4,S/4]. Box corners go before the points, as in the official code."""
        self._require_image()
        points = (point_coords, point_labels) if point_coords is not None else None
        if boxes is not None:
            box_coords = boxes.reshape(-1, 2, 2)
            box_labels = torch.tensor([BOX_CORNER_LABELS], dtype=torch.int, device=boxes.device)
            box_labels = box_labels.repeat(box_coords.size(0), 1)
            if points is not None:
                points = (torch.cat([box_coords, points[0]], dim=1), torch.cat([box_labels, points[1]], dim=1))
            else:
                points = (box_coords, box_labels)
        prompt_encoder = self.model.sam_prompt_encoder
        sparse, dense = prompt_encoder(points=points, boxes=None, masks=mask_input)
        low_res_masks, iou_predictions, _, object_score_logits = self.model.sam_mask_decoder(
            image_embeddings=self._features["image_embed"],
            image_pe=prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=points is not None and points[0].shape[0] > 1,
            high_res_features=self._features["high_res_feats"],
        )
        masks = F.interpolate(low_res_masks.float(), self._orig_hw, mode="bilinear", align_corners=False)
        if not return_logits:
            masks = masks > self.mask_threshold
        low_res_masks = torch.clamp(low_res_masks, -LOW_RES_LOGIT_LIMIT, LOW_RES_LOGIT_LIMIT)
        return ImagePrediction(masks, iou_predictions, low_res_masks, object_score_logits)
