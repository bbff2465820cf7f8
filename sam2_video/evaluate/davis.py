"""DAVIS J&F: region similarity J and boundary F-measure, as the official davis2017-evaluation tool.

Definitions (davis2017/metrics.py, utils.py, evaluation.py of davisvideochallenge/davis2017-evaluation):

- J: IoU of an object's predicted and ground-truth binary masks, void pixels excluded; 1 when both are empty.
- F: boundary F-measure. A boundary map is the mask's one-pixel contour (`boundary_map`, "seg2bmap");
  a boundary pixel matches when it lies within `ceil(bound_th * image diagonal)` pixels (a disk) of the
  other mask's boundary. Precision and recall are matched fractions, F = 2PR / (P + R).
- Per object over the scored frames: Mean, Recall (fraction of frames > 0.5) and Decay (mean of the
  first quarter minus mean of the last quarter, 4 overlapping bins as the official code).
- Semi-supervised protocol: the first and the last annotated frame of a sequence are not scored.
  A sequence's score and the dataset's score average over objects.

Differences from the official tool, all on inputs it cannot handle: the objects are the ids present in
any ground-truth frame (the official tool takes 1..max id of the first frame); a predicted id that is
not an object of the ground truth is ignored with a warning (the official tool exits); a grayscale
0/255 mask is object 1 (the official tool reads it as id 255, which it zeroes); void pixels (255) are
excluded from the scores (the official tool zeroes them before its void test, so it scores them as
background); Decay bins use int indices (the official uint8 indices wrap past 256 frames).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.spatial import cKDTree

from sam2_video.errors import UserInputError
from sam2_video.predict.masks_io import VOID_ID, read_mask_png

BOUND_TH = 0.008
RECALL_THRESHOLD = 0.5
DECAY_BINS = 4


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """J for one frame: IoU of bool masks `[H, W]` over the non-void pixels; 1.0 when the union is empty."""
    valid = np.ones_like(gt, dtype=bool) if void is None else ~void
    union = np.count_nonzero((gt | pred) & valid)
    if union == 0:
        return 1.0
    return np.count_nonzero(gt & pred & valid) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary `[H, W]` bool of a bool mask (seg2bmap): pixels that differ from their
    right, lower or lower-right neighbour; the last row compares only rightwards, the last column only
    downwards, and the bottom-right pixel is never a boundary."""
    right = np.zeros_like(mask)
    down = np.zeros_like(mask)
    down_right = np.zeros_like(mask)
    right[:, :-1] = mask[:, 1:]
    down[:-1, :] = mask[1:, :]
    down_right[:-1, :-1] = mask[1:, 1:]
    boundary = (mask ^ right) | (mask ^ down) | (mask ^ down_right)
    boundary[-1, :] = mask[-1, :] ^ right[-1, :]
    boundary[:, -1] = mask[:, -1] ^ down[:, -1]
    boundary[-1, -1] = False
    return boundary


def boundary_tolerance(height: int, width: int, bound_th: float = BOUND_TH) -> float:
    """Match radius in pixels: `bound_th` itself when >= 1, else ceil(bound_th * image diagonal)."""
    return bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(height, width))


def _count_within(points: np.ndarray, targets: np.ndarray, radius: float) -> int:
    """Number of True pixels of `points` `[H, W]` within Euclidean `radius` of a True pixel of `targets`.

    Equals `sum(points * dilate(targets, disk(radius)))` with the disk {dy^2 + dx^2 <= radius^2}:
    a nearest-neighbour query gives each point's exact distance to the nearest target pixel.
    """
    distance, _ = cKDTree(np.argwhere(targets)).query(np.argwhere(points), distance_upper_bound=radius + 1)
    return int(np.count_nonzero(distance <= radius))


def boundary_f_measure(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = BOUND_TH
) -> float:
    """F for one frame from bool masks `[H, W]`; void pixels are removed from both masks first."""
    radius = boundary_tolerance(*gt.shape, bound_th=bound_th)
    if void is not None:
        gt, pred = gt & ~void, pred & ~void
    gt_boundary, pred_boundary = boundary_map(gt), boundary_map(pred)
    n_gt, n_pred = np.count_nonzero(gt_boundary), np.count_nonzero(pred_boundary)
    if n_gt == 0 or n_pred == 0:
        # official cases: both empty -> P = R = 1; only one empty -> one of P, R is 0 and F = 0
        return 1.0 if n_gt == n_pred else 0.0
    precision = _count_within(pred_boundary, gt_boundary, radius) / n_pred
    recall = _count_within(gt_boundary, pred_boundary, radius) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def frame_statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """(Mean, Recall, Decay) of per-frame scores `[T]`, NaN-tolerant, as the official `db_statistics`."""
    per_frame = np.asarray(per_frame, dtype=np.float64)
    mean = float(np.nanmean(per_frame))
    recall = float(np.nanmean(per_frame > RECALL_THRESHOLD))
    edges = (np.round(np.linspace(1, len(per_frame), DECAY_BINS + 1) + 1e-10) - 1).astype(np.int64)
    first_bin = per_frame[edges[0] : edges[1] + 1]
    last_bin = per_frame[edges[DECAY_BINS - 1] : edges[DECAY_BINS] + 1]
    decay = float(np.nanmean(first_bin) - np.nanmean(last_bin))
    return mean, recall, decay


@dataclass(frozen=True)
class ObjectScore:
    """Scores of one object of one sequence; `j_per_frame`/`f_per_frame` `[T]` over the scored frames."""

    sequence: str
    obj_id: int
    frames: tuple[str, ...]
    j_per_frame: np.ndarray
    f_per_frame: np.ndarray

    @property
    def j(self) -> tuple[float, float, float]:
        """(Mean, Recall, Decay) of J."""
        return frame_statistics(self.j_per_frame)

    @property
    def f(self) -> tuple[float, float, float]:
        """(Mean, Recall, Decay) of F."""
        return frame_statistics(self.f_per_frame)

    @property
    def jf_mean(self) -> float:
        return (self.j[0] + self.f[0]) / 2


@dataclass(frozen=True)
class SequenceScore:
    """A sequence's J and F means, averaged over its objects."""

    sequence: str
    objects: tuple[ObjectScore, ...]

    @property
    def j_mean(self) -> float:
        return float(np.mean([obj.j[0] for obj in self.objects]))

    @property
    def f_mean(self) -> float:
        return float(np.mean([obj.f[0] for obj in self.objects]))

    @property
    def jf_mean(self) -> float:
        return (self.j_mean + self.f_mean) / 2


SUMMARY_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


@dataclass
class DavisResult:
    """Per-object and per-sequence scores; dataset figures average over all objects, as the official tool."""

    sequences: list[SequenceScore]
    warnings: list[str] = field(default_factory=list)

    @property
    def objects(self) -> list[ObjectScore]:
        return [obj for seq in self.sequences for obj in seq.objects]

    def summary(self) -> dict[str, float]:
        """Dataset scores keyed by the official column names (J&F-Mean, J-Mean, ..., F-Decay)."""
        j_stats = np.array([obj.j for obj in self.objects])
        f_stats = np.array([obj.f for obj in self.objects])
        j_mean, j_recall, j_decay = j_stats.mean(axis=0)
        f_mean, f_recall, f_decay = f_stats.mean(axis=0)
        values = ((j_mean + f_mean) / 2, j_mean, j_recall, j_decay, f_mean, f_recall, f_decay)
        return {name: float(value) for name, value in zip(SUMMARY_COLUMNS, values)}

    def rows(self) -> list[dict[str, str | int | float]]:
        """Table rows: one per object, one per sequence (object "all"), one for the dataset (sequence "ALL").

        `frames` is the number of scored frames (for the dataset row: summed over objects).
        """
        rows: list[dict[str, str | int | float]] = []
        for seq in self.sequences:
            for obj in seq.objects:
                rows.append(_row("object", seq.sequence, obj.obj_id, len(obj.frames), (obj.jf_mean, *obj.j, *obj.f)))
            stats = np.array([obj.j + obj.f for obj in seq.objects]).mean(axis=0)
            rows.append(_row("sequence", seq.sequence, "all", len(seq.objects[0].frames), (seq.jf_mean, *stats)))
        frames = sum(len(obj.frames) for obj in self.objects)
        rows.append(_row("dataset", "ALL", "all", frames, tuple(self.summary().values())))
        return rows

    def format_table(self) -> str:
        """A plain-text table of all rows."""
        header = ("level", "sequence", "object", "frames", *SUMMARY_COLUMNS)
        lines = [header] + [
            tuple(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()) for row in self.rows()
        ]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)


def _row(level: str, sequence: str, obj: int | str, frames: int, values: Sequence[float]) -> dict:
    row: dict[str, str | int | float] = {"level": level, "sequence": sequence, "object": obj, "frames": frames}
    row.update({name: float(v) for name, v in zip(SUMMARY_COLUMNS, values)})
    return row


def present_ids(ids: np.ndarray) -> set[int]:
    """The distinct values of a non-negative id map `[H, W]`."""
    return set(np.flatnonzero(np.bincount(ids.ravel())).tolist())


def score_frame(gt_ids: np.ndarray, pred_ids: np.ndarray, obj_ids: Sequence[int], bound_th: float = BOUND_TH):
    """(J, F) per object for one frame's id maps `[H, W]`; returns two lists aligned with `obj_ids`."""
    void = gt_ids == VOID_ID
    j_values, f_values = [], []
    for obj_id in obj_ids:
        gt_mask, pred_mask = gt_ids == obj_id, pred_ids == obj_id
        j_values.append(region_similarity(gt_mask, pred_mask, void))
        f_values.append(boundary_f_measure(gt_mask, pred_mask, void, bound_th))
    return j_values, f_values


def _sequence_folders(root: Path, what: str) -> dict[str, Path]:
    """Sequence name -> folder of PNGs: the sub-folders of `root`, or `root` itself when it holds PNGs."""
    if not root.is_dir():
        raise UserInputError(f"{what} folder not found: {root}")
    for davis_layout in (root / "Annotations" / "480p", root / "Annotations"):
        if davis_layout.is_dir():
            root = davis_layout
            break
    if any(root.glob("*.png")):
        return {root.name: root}
    folders = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and any(p.glob("*.png"))}
    if not folders:
        raise UserInputError(f"{what} folder {root} holds no PNG masks (expected <sequence>/<frame>.png)")
    return folders


def _read_pair(gt_file: Path, pred_file: Path) -> tuple[np.ndarray, np.ndarray]:
    if not pred_file.is_file():
        raise UserInputError(f"missing prediction {pred_file} for ground-truth frame {gt_file}")
    gt_ids, pred_ids = read_mask_png(gt_file), read_mask_png(pred_file)
    if gt_ids.shape != pred_ids.shape:
        raise UserInputError(
            f"prediction {pred_file} is {pred_ids.shape[1]}x{pred_ids.shape[0]} but ground truth "
            f"{gt_file} is {gt_ids.shape[1]}x{gt_ids.shape[0]} (width x height)"
        )
    return gt_ids, pred_ids


def evaluate_sequence(
    name: str, gt_folder: Path, pred_folder: Path, bound_th: float = BOUND_TH
) -> tuple[list[ObjectScore], list[int]]:
    """Score one sequence: its objects (ids in any ground-truth frame) over all frames but the first and last.

    Returns the object scores and the predicted ids that are not ground-truth objects.
    """
    gt_files = sorted(gt_folder.glob("*.png"))
    if len(gt_files) < 3:
        raise UserInputError(
            f"{gt_folder}: {len(gt_files)} annotated frames; the DAVIS protocol needs at least 3 "
            "(the first and the last are not scored)"
        )
    obj_ids = sorted(set().union(*(present_ids(read_mask_png(f)) for f in gt_files)) - {0, VOID_ID})
    scored = gt_files[1:-1]
    j_table, f_table, predicted = [], [], set()
    for gt_file in scored:
        gt_ids, pred_ids = _read_pair(gt_file, pred_folder / gt_file.name)
        j_values, f_values = score_frame(gt_ids, pred_ids, obj_ids, bound_th)
        j_table.append(j_values)
        f_table.append(f_values)
        predicted.update(present_ids(pred_ids))
    frames = tuple(f.stem for f in scored)
    j_table, f_table = np.array(j_table).reshape(len(scored), -1), np.array(f_table).reshape(len(scored), -1)
    objects = [ObjectScore(name, obj_id, frames, j_table[:, k], f_table[:, k]) for k, obj_id in enumerate(obj_ids)]
    return objects, sorted(predicted - {0, VOID_ID} - set(obj_ids))


def evaluate_davis(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    sequences: Sequence[str] | None = None,
    bound_th: float = BOUND_TH,
) -> DavisResult:
    """Score predicted masks against ground truth with the DAVIS 2017 semi-supervised protocol.

    `gt_dir`: `<sequence>/<frame>.png` (or a DAVIS root with `Annotations/[480p/]`, or one sequence folder);
    `pred_dir`: the same layout with the same frame names. `sequences`: names to score (default: all
    sequences of `gt_dir`). Every scored ground-truth frame needs a prediction of the same size.
    """
    gt_root, pred_root = Path(gt_dir), Path(pred_dir)
    gt_folders = _sequence_folders(gt_root, "ground-truth")
    pred_folders = _sequence_folders(pred_root, "prediction")
    if len(gt_folders) == 1 and len(pred_folders) == 1:
        pred_folders = {next(iter(gt_folders)): next(iter(pred_folders.values()))}
    result = DavisResult(sequences=[])
    for name in list(gt_folders) if sequences is None else sequences:
        if name not in gt_folders:
            raise UserInputError(f"sequence {name!r} has no ground-truth masks in {gt_root}")
        if name not in pred_folders:
            raise UserInputError(f"sequence {name!r} has no predictions: expected PNGs in {pred_root / name}")
        objects, extra_ids = evaluate_sequence(name, gt_folders[name], pred_folders[name], bound_th)
        if not objects:
            result.warnings.append(f"sequence {name!r}: no object in its ground truth; skipped")
            continue
        if extra_ids:
            result.warnings.append(f"sequence {name!r}: predicted ids {extra_ids} are not ground-truth objects; ignored")
        result.sequences.append(SequenceScore(name, tuple(objects)))
    if not result.sequences:
        raise UserInputError(f"nothing to score: no sequence of {gt_root} has a ground-truth object")
    return result
