"""`sam2-video demo` end to end at toy sizes (SAM2 and STCN), and STCN's trained weights through
`sam2-video predict --model stcn`: output layout, report, palettized predictions, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam2_video.cli import main
from sam2_video.config import load_config
from sam2_video.evaluate.davis import evaluate_davis
from sam2_video.predict.masks_io import read_mask_png
from sam2_video.train.metrics_log import read_metrics

TOY = ["--train-videos", "2", "--select-videos", "1", "--val-videos", "2", "--frames", "4", "--epochs", "2",
       "--image-size", "64"]
EVAL_KINDS = ("untrained", "copy_first_mask", "finetuned")


def run_demo(out: Path, model: str) -> dict:
    assert main(["demo", "--out", str(out), "--model", model, *TOY]) == 0
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def stcn_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stcn") / "demo"
    run_demo(out, "stcn")
    return out


@pytest.mark.parametrize("model", ["sam2", "stcn"])
def test_demo_layout_report_and_predictions(model: str, tmp_path: Path, stcn_demo: Path) -> None:
    out = stcn_demo if model == "stcn" else tmp_path / "demo"
    report = run_demo(out, model) if model == "sam2" else json.loads((out / "report.json").read_text())
    assert report["model"] == model
    assert report["train_steps"] == 2  # 2 videos, batch 2, 2 epochs
    assert report["train_seconds"] > 0
    videos = sorted(p.name for p in (out / "data" / "val" / "Annotations").iterdir())
    assert len(videos) == 2 and len(list((out / "data" / "train" / "JPEGImages").iterdir())) == 2
    # the checkpoint is chosen on videos of its own, not on the held-out ones it is scored on
    selection = sorted(p.name for p in (out / "data" / "select" / "JPEGImages").iterdir())
    assert len(selection) == 1
    first_frames = [np.asarray(Image.open(out / "data" / split / "JPEGImages" / selection[0] / "00000.jpg"))
                    for split in ("select", "val")]
    assert not np.array_equal(*first_frames)
    assert load_config(out / "train" / "config.yaml").dataset.val_data_path == str(out / "data" / "select")
    validated = read_metrics(out / "train" / "metrics.jsonl", kind="val")
    assert [row["epoch"] for row in validated] == [2]  # every other epoch
    for kind in EVAL_KINDS:
        for video in videos:
            frames = sorted(p.stem for p in (out / "data" / "val" / "JPEGImages" / video).iterdir())
            predicted = sorted((out / "eval" / kind / video).glob("*.png"))
            assert [p.stem for p in predicted] == frames, (kind, video)
            with Image.open(predicted[0]) as image:
                assert image.mode == "P"
        # the report's figures are the scores of the written predictions
        summary = evaluate_davis(out / "data" / "val" / "Annotations", out / "eval" / kind).summary()
        assert report[f"jf_{kind}"] == pytest.approx(summary["J&F-Mean"])
    # the baseline is the first annotated mask, kept: exact on the first frame
    first = sorted((out / "data" / "val" / "Annotations" / videos[0]).glob("*.png"))[0]
    np.testing.assert_array_equal(read_mask_png(out / "eval" / "copy_first_mask" / videos[0] / first.name),
                                  read_mask_png(first))
    assert (out / "train" / "last.pt").is_file() and (out / "train" / "best.pt").is_file()
    assert (out / "train" / "loss_curve.png").is_file() and any((out / "train" / "tensorboard").iterdir())
    assert report["checkpoint"] == str(out / "train" / "best.pt")
    best = max(validated, key=lambda row: row["J&F"])
    assert report["checkpoint_epoch"] == best["epoch"]


def test_demo_refuses_a_folder_that_is_not_empty(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path), *TOY]) == 2
    assert "folder exists and is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_stcn_checkpoint_predicts_through_the_cli(stcn_demo: Path, tmp_path: Path) -> None:
    video = sorted((stcn_demo / "data" / "val" / "JPEGImages").iterdir())[0]
    annotations = stcn_demo / "data" / "val" / "Annotations" / video.name
    out = tmp_path / "pred"
    argv = ["predict", "--model", "stcn", "--checkpoint", str(stcn_demo / "train" / "last.pt"),
            "--video", str(video), "--annotations", str(annotations), "--out", str(out)]
    assert main(argv) == 0
    # the same tracking as the demo's validation of the same weights
    expected = sorted((stcn_demo / "eval" / "finetuned" / video.name).glob("*.png"))
    assert len(expected) == len(list(video.iterdir()))
    for png in expected:
        np.testing.assert_array_equal(read_mask_png(out / png.name), read_mask_png(png))


def test_stcn_predict_needs_an_stcn_training_checkpoint(stcn_demo: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    video = sorted((stcn_demo / "data" / "val" / "JPEGImages").iterdir())[0]
    first_mask = sorted((stcn_demo / "data" / "val" / "Annotations" / video.name).glob("*.png"))[0]
    exported = tmp_path / "weights.pt"
    assert main(["export", str(stcn_demo / "train" / "last.pt"), str(exported)]) == 2  # export is SAM2's
    assert "not SAM2" in capsys.readouterr().err and not exported.exists()
    torch.save({"model": torch.load(stcn_demo / "train" / "last.pt", weights_only=True)["model"]}, exported)
    truncated = tmp_path / "bad_sizes.pt"
    checkpoint = torch.load(stcn_demo / "train" / "last.pt", weights_only=True)
    checkpoint["config"]["model"]["stcn"]["value_dim"] = 64
    torch.save(checkpoint, truncated)

    def predict(*extra: str) -> str:
        argv = ["predict", "--model", "stcn", "--video", str(video), "--mask", str(first_mask),
                "--out", str(tmp_path / "out"), *extra]
        assert main(argv) == 2
        return capsys.readouterr().err

    assert "STCN has no pretrained weights" in predict()
    assert "--config names a SAM2 preset" in predict("--config", "sam2.1_hiera_t")
    assert "not an STCN training checkpoint" in predict("--checkpoint", str(exported))
    assert "do not fit the STCN its config describes" in predict("--checkpoint", str(truncated))
    assert "multiple of 16" in predict("--checkpoint", str(stcn_demo / "train" / "last.pt"), "--image-size", "70")
    assert not (tmp_path / "out").exists()
