"""DAVIS J&F: agreement with a literal re-implementation of the official davis2017-evaluation code."""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2_video.evaluate import cli as evaluate_cli
from sam2_video.errors import UserInputError
from sam2_video.evaluate.davis import boundary_f_measure, evaluate_davis, frame_statistics, region_similarity
from sam2_video.predict.masks_io import write_palette_png

SINGLE_OBJECT_SEQUENCES = ["blackswan", "car-shadow", "dog", "drift-straight", "libby"]


# ---- the official code (davis2017/metrics.py, utils.py), line by line, with cv2.dilate replaced ----

def official_iou(annotation, segmentation, void_pixels):
    inters = np.sum((segmentation & annotation) & np.logical_not(void_pixels))
    union = np.sum((segmentation | annotation) & np.logical_not(void_pixels))
    return 1 if np.isclose(union, 0) else inters / union


def official_seg2bmap(seg):
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def skimage_disk(radius):
    """skimage.morphology.disk: ones where x^2 + y^2 <= radius^2 on a (2r+1)^2 grid."""
    r = int(radius)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y) <= radius * radius


def dilate(binary, kernel):
    """cv2.dilate with a symmetric kernel and the default border: OR of the image shifted by every kernel offset."""
    h, w = binary.shape
    r = kernel.shape[0] // 2
    padded = np.zeros((h + 2 * r, w + 2 * r), dtype=bool)
    padded[r : r + h, r : r + w] = binary
    out = np.zeros_like(binary)
    for dy, dx in np.argwhere(kernel):
        out |= padded[dy : dy + h, dx : dx + w]
    return out


def official_f_measure(foreground_mask, gt_mask, void_pixels, bound_th=0.008):
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(foreground_mask.shape))
    fg_boundary = official_seg2bmap(foreground_mask * np.logical_not(void_pixels))
    gt_boundary = official_seg2bmap(gt_mask * np.logical_not(void_pixels))
    # (speed only) every pixel that the counts below look at lies in the boundaries' joint bounding box
    rows, cols = np.nonzero(fg_boundary | gt_boundary)
    if rows.size:
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        fg_boundary, gt_boundary = fg_boundary[box], gt_boundary[box]
    fg_dil = dilate(fg_boundary, skimage_disk(bound_pix))
    gt_dil = dilate(gt_boundary, skimage_disk(bound_pix))
    gt_match = gt_boundary * fg_dil
    fg_match = fg_boundary * gt_dil
    n_fg = np.sum(fg_boundary)
    n_gt = np.sum(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(fg_match) / float(n_fg)
        recall = np.sum(gt_match) / float(n_gt)
    return 0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def official_db_statistics(per_frame_values):
    M = np.nanmean(per_frame_values)
    O = np.nanmean(per_frame_values > 0.5)
    ids = np.round(np.linspace(1, len(per_frame_values), 4 + 1) + 1e-10) - 1
    ids = ids.astype(np.uint8)
    D_bins = [per_frame_values[ids[i] : ids[i + 1] + 1] for i in range(0, 4)]
    D = np.nanmean(D_bins[0]) - np.nanmean(D_bins[3])
    return M, O, D


def official_object_scores(gt_frames, pred_frames, obj_id):
    """Per-frame J and F of one object over frames 1..T-2 (semi-supervised protocol) from id maps."""
    j, f = [], []
    for gt, pred in list(zip(gt_frames, pred_frames))[1:-1]:
        void = gt == 255
        j.append(official_iou(gt == obj_id, pred == obj_id, void))
        f.append(official_f_measure(pred == obj_id, gt == obj_id, void))
    return np.array(j), np.array(f)


# ---- real data: OSVOS predictions against the DAVIS 2016 ground truth ----

def test_per_sequence_scores_match_official_definitions(shared_data: Path):
    gt_root = shared_data / "davis2016_val_subset" / "Annotations"
    pred_root = shared_data / "davis2017_val_osvos_predictions"
    if not pred_root.is_dir():
        pytest.skip(f"OSVOS predictions not found at {pred_root}")
    result = evaluate_davis(gt_root, pred_root, sequences=SINGLE_OBJECT_SEQUENCES)
    assert [s.sequence for s in result.sequences] == SINGLE_OBJECT_SEQUENCES
    for seq in result.sequences:
        gt_files = sorted((gt_root / seq.sequence).glob("*.png"))
        gt_frames = [(np.array(Image.open(p)) > 0).astype(np.uint8) for p in gt_files]  # DAVIS 2016: 0/255
        pred_frames = [np.array(Image.open(pred_root / seq.sequence / p.name)) for p in gt_files]
        j_ref, f_ref = official_object_scores(gt_frames, pred_frames, obj_id=1)
        (obj,) = seq.objects
        assert obj.frames == tuple(p.stem for p in gt_files[1:-1])
        np.testing.assert_allclose(obj.j_per_frame, j_ref, atol=1e-9)
        np.testing.assert_allclose(obj.f_per_frame, f_ref, atol=1e-9)
        assert seq.j_mean == pytest.approx(official_db_statistics(j_ref)[0], abs=1e-3)
        assert seq.f_mean == pytest.approx(official_db_statistics(f_ref)[0], abs=1e-3)
        np.testing.assert_allclose(obj.j, official_db_statistics(j_ref), atol=1e-9)
        np.testing.assert_allclose(obj.f, official_db_statistics(f_ref), atol=1e-9)
    summary = result.summary()
    assert summary["J-Mean"] == pytest.approx(np.mean([s.j_mean for s in result.sequences]))
    assert summary["J&F-Mean"] == pytest.approx((summary["J-Mean"] + summary["F-Mean"]) / 2)


# ---- synthetic multi-object sequences with void pixels ----

def _square(shape, top, left, size):
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def _write_sequence(folder: Path, frames: list[np.ndarray]) -> None:
    for t, ids in enumerate(frames):
        write_palette_png(folder / f"{t:05d}.png", ids)


def _multi_object_sequence(rng: np.random.Generator, num_frames: int = 7, shape=(60, 90)):
    gt_frames, pred_frames = [], []
    for t in range(num_frames):
        gt = np.zeros(shape, dtype=np.uint8)
        gt[_square(shape, 5 + t, 5 + 2 * t, 20)] = 1
        gt[_square(shape, 30, 50 - t, 15 + t)] = 2
        gt[:, -3:] = 255
        pred = np.zeros(shape, dtype=np.uint8)
        pred[_square(shape, 6 + t, 4 + 2 * t + t % 3, 19)] = 1
        if t != 3:  # object 2 is lost on one frame
            pred[_square(shape, 31, 49 - t, 15)] = 2
        pred[rng.random(shape) < 0.01] = 1  # scattered false positives
        gt_frames.append(gt)
        pred_frames.append(pred)
    return gt_frames, pred_frames


def test_multi_object_sequence_with_void_matches_official(tmp_path: Path):
    gt_frames, pred_frames = _multi_object_sequence(np.random.default_rng(0))
    _write_sequence(tmp_path / "gt" / "squares", gt_frames)
    _write_sequence(tmp_path / "pred" / "squares", pred_frames)
    result = evaluate_davis(tmp_path / "gt", tmp_path / "pred")
    (seq,) = result.sequences
    assert [o.obj_id for o in seq.objects] == [1, 2]
    for obj in seq.objects:
        j_ref, f_ref = official_object_scores(gt_frames, pred_frames, obj.obj_id)
        np.testing.assert_allclose(obj.j_per_frame, j_ref, atol=1e-12)
        np.testing.assert_allclose(obj.f_per_frame, f_ref, atol=1e-12)
    assert seq.j_mean == pytest.approx(np.mean([o.j[0] for o in seq.objects]))
    assert min(seq.objects[1].j_per_frame) == 0.0  # the lost frame counts


def test_identical_and_empty_masks_score_one():
    mask = _square((40, 50), 10, 12, 15)
    assert region_similarity(mask, mask) == 1.0
    assert boundary_f_measure(mask, mask) == 1.0
    empty = np.zeros_like(mask)
    assert region_similarity(empty, empty) == 1.0
    assert boundary_f_measure(empty, empty) == 1.0
    assert region_similarity(mask, empty) == 0.0
    assert boundary_f_measure(mask, empty) == 0.0


def test_shifted_square_has_known_iou_and_far_shift_has_zero_f():
    gt = _square((100, 100), 20, 20, 10)
    shifted = _square((100, 100), 20, 22, 10)
    assert region_similarity(gt, shifted) == pytest.approx(80 / 120)
    assert boundary_f_measure(gt, shifted) == 1.0  # 2 px shift is within ceil(0.008 * 141.4) = 2 px
    far = _square((100, 100), 20, 60, 10)
    assert boundary_f_measure(gt, far) == 0.0
    assert boundary_f_measure(gt, _square((100, 100), 20, 23, 10)) < 1.0


def test_void_pixels_are_ignored():
    gt = _square((50, 50), 10, 10, 20)
    pred = gt.copy()
    pred[:, 40:] = True  # wrong only inside the void band
    void = np.zeros_like(gt)
    void[:, 38:] = True
    assert region_similarity(gt, pred, void) == 1.0
    assert boundary_f_measure(gt, pred, void) == 1.0
    assert region_similarity(gt, pred) < 1.0


def test_decay_is_first_quarter_minus_last_quarter():
    falling = np.linspace(1.0, 0.2, 21)
    mean, recall, decay = frame_statistics(falling)
    assert decay > 0 and frame_statistics(falling[::-1])[2] == pytest.approx(-decay)
    np.testing.assert_allclose((mean, recall, decay), official_db_statistics(falling))
    # the official bins overlap by one frame: 21 frames -> edges 0, 5, 10, 15, 20
    assert decay == pytest.approx(falling[0:6].mean() - falling[15:21].mean())
    assert recall == pytest.approx(np.mean(falling > 0.5))


def test_grayscale_ground_truth_is_object_one(tmp_path: Path):
    gt = [np.where(_square((30, 40), 5, 5 + t, 10), 255, 0).astype(np.uint8) for t in range(4)]
    for t, frame in enumerate(gt):
        (tmp_path / "gt" / "seq").mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame, mode="L").save(tmp_path / "gt" / "seq" / f"{t:05d}.png")
    _write_sequence(tmp_path / "pred" / "seq", [(g > 0).astype(np.uint8) for g in gt])
    result = evaluate_davis(tmp_path / "gt", tmp_path / "pred")
    assert [o.obj_id for o in result.objects] == [1]
    assert result.summary()["J&F-Mean"] == 1.0


# ---- errors and the CLI ----

def run_evaluate_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    evaluate_cli.add_arguments(parser)
    return evaluate_cli.run(parser.parse_args(argv))


def test_clear_errors(tmp_path: Path):
    gt_frames, pred_frames = _multi_object_sequence(np.random.default_rng(1), num_frames=4)
    _write_sequence(tmp_path / "gt" / "a", gt_frames)
    _write_sequence(tmp_path / "gt" / "b", gt_frames)
    _write_sequence(tmp_path / "pred" / "a", pred_frames)
    with pytest.raises(UserInputError, match="folder not found"):
        evaluate_davis(tmp_path / "missing", tmp_path / "pred")
    with pytest.raises(UserInputError, match=r"sequence 'b' has no predictions"):
        evaluate_davis(tmp_path / "gt", tmp_path / "pred")
    (tmp_path / "pred" / "b").mkdir()
    write_palette_png(tmp_path / "pred" / "b" / "00001.png", np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(UserInputError) as err:
        evaluate_davis(tmp_path / "gt", tmp_path / "pred", sequences=["b"])
    assert str(tmp_path / "pred" / "b" / "00001.png") in str(err.value)
    assert str(tmp_path / "gt" / "b" / "00001.png") in str(err.value)
    write_palette_png(tmp_path / "pred" / "b" / "00001.png", pred_frames[1])
    with pytest.raises(UserInputError, match=r"missing prediction .*00002\.png"):
        evaluate_davis(tmp_path / "gt", tmp_path / "pred", sequences=["b"])


def test_cli_prints_table_and_writes_csv(tmp_path: Path, capsys):
    gt_frames, pred_frames = _multi_object_sequence(np.random.default_rng(2), num_frames=5)
    _write_sequence(tmp_path / "gt" / "squares", gt_frames)
    _write_sequence(tmp_path / "pred" / "squares", pred_frames)
    out_csv = tmp_path / "scores.csv"
    assert run_evaluate_cli(["--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--csv", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    assert "J&F-Mean" in printed and "squares" in printed
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["level"], r["object"]) for r in rows] == [("object", "1"), ("object", "2"), ("sequence", "all"), ("dataset", "all")]
    result = evaluate_davis(tmp_path / "gt", tmp_path / "pred")
    assert float(rows[-1]["J&F-Mean"]) == pytest.approx(result.summary()["J&F-Mean"])
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    with pytest.raises(UserInputError, match="ground-truth folder not found"):
        run_evaluate_cli(["--gt", str(tmp_path / "nope"), "--pred", str(tmp_path / "pred")])


def test_tolerance_uses_image_diagonal():
    # 854x480 (DAVIS 480p): ceil(0.008 * 979.6) = 8 px, the official radius
    gt = _square((480, 854), 100, 100, 200)
    assert boundary_f_measure(gt, _square((480, 854), 100, 108, 200)) == 1.0
    assert boundary_f_measure(gt, _square((480, 854), 100, 109, 200)) < 1.0
    assert math.ceil(0.008 * math.hypot(480, 854)) == 8
