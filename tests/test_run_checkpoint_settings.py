"""A training run's checkpoint carries how the model was built: `predict` and `annotate` rebuild it
from there (preset, image size, memory size, one-mask tracking), and `export` says what the official
predictor then needs."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from sam2_video.annotate.model import build_predictor as build_annotate_predictor
from sam2_video.config import ModelSection, RunConfig, load_config
from sam2_video.errors import UserInputError
from sam2_video.model.run_checkpoint import load_training_checkpoint, stored_run_config
from sam2_video.predict import cli as predict_cli
from sam2_video.predict.masks_io import read_mask_png, write_palette_png
from sam2_video.train import export_cli
from sam2_video.train.cli import build_model
from test_predict_cli import square, write_frames


def write_run_checkpoint(path: Path, **model_settings) -> Path:
    """last.pt of a SAM2 run (random weights) whose stored config has `model_settings`."""
    config = RunConfig(model=ModelSection(config_path="sam2.1_tiny_test", image_size=64, num_maskmem=5,
                                          trainable_modules=["memory_attention"], **model_settings))
    model = build_model(config.model, config.dataset, verbose=False)
    torch.save({"model": model.state_dict(), "config": config.to_dict(), "step": 1}, path)
    return path


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    predict_cli.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("one_mask", [False, True])
def test_predict_and_annotate_rebuild_the_run_from_its_checkpoint(tmp_path: Path, one_mask: bool) -> None:
    one_mask_settings = dict(multimask_output_for_tracking=False, dynamic_multimask_via_stability=False)
    checkpoint = write_run_checkpoint(tmp_path / "last.pt", **(one_mask_settings if one_mask else {}))
    frames = write_frames(tmp_path / "frames", 3)
    write_palette_png(tmp_path / "mask.png", square(10, 10, 16).astype("uint8"))
    args = parse(["--video", str(frames), "--out", str(tmp_path / "out"), "--checkpoint", str(checkpoint),
                  "--mask", str(tmp_path / "mask.png")])
    for predictor in (predict_cli.build_predictor(args),
                      build_annotate_predictor(checkpoint, None, None, torch.device("cpu"))):
        config = predictor.model.config
        assert (config.name, config.image_size, config.num_maskmem) == ("sam2.1_tiny_test", 64, 5)
        assert config.multimask_output_for_tracking is (not one_mask)
        assert config.dynamic_multimask_via_stability is (not one_mask)
    # the file name names no preset and no --config / --image-size is given: the run's settings are used
    assert predict_cli.run(args) == 0
    assert [read_mask_png(p).shape for p in sorted((tmp_path / "out").glob("*.png"))] == [(48, 64)] * 3


def test_predict_refuses_a_run_of_the_other_model_kind(tmp_path: Path) -> None:
    checkpoint = tmp_path / "last.pt"
    torch.save({"model": {}, "config": RunConfig(model=ModelSection(model="stcn")).to_dict()}, checkpoint)
    args = parse(["--video", str(write_frames(tmp_path / "frames", 2)), "--out", str(tmp_path / "out"),
                  "--checkpoint", str(checkpoint), "--mask", str(tmp_path / "mask.png")])
    with pytest.raises(UserInputError, match="a 'stcn' training run; pass --model stcn"):
        predict_cli.build_predictor(args)


def test_export_of_a_one_mask_run_says_what_the_official_predictor_needs(tmp_path: Path, capsys) -> None:
    checkpoint = write_run_checkpoint(tmp_path / "last.pt", multimask_output_for_tracking=False,
                                      dynamic_multimask_via_stability=False)
    args = argparse.Namespace(checkpoint=checkpoint, output=tmp_path / "exported.pt")
    assert export_cli.run(args) == 0
    err = capsys.readouterr().err
    assert "++model.multimask_output_for_tracking=false ++model.dynamic_multimask_via_stability=false" in err
    assert set(torch.load(tmp_path / "exported.pt")) == {"model"}


def test_one_mask_tracking_without_turning_off_the_evaluation_swap_is_refused() -> None:
    with pytest.raises(UserInputError, match="needs 'model.dynamic_multimask_via_stability: false'"):
        load_config(None, ["dataset.dataset_type=synthetic", "model.multimask_output_for_tracking=false"])
    config = load_config(None, ["dataset.dataset_type=synthetic", "model.multimask_output_for_tracking=false",
                                "model.dynamic_multimask_via_stability=false"])
    assert config.model.sam2_overrides()["dynamic_multimask_via_stability"] is False


def test_the_stored_run_config_is_read_without_loading_the_weights_whatever_the_file_format(tmp_path: Path) -> None:
    run = write_run_checkpoint(tmp_path / "last.pt", memory_attention_dropout=0.0)
    assert stored_run_config(run) == load_training_checkpoint(run)["config"]
    assert stored_run_config(run)["model"]["memory_attention_dropout"] == 0.0
    legacy = tmp_path / "legacy.pt"  # torch.save's pre-1.6 format cannot be memory-mapped: read whole
    torch.save(torch.load(run, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    assert stored_run_config(legacy) == stored_run_config(run)
    official = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, official)
    assert stored_run_config(official) is None
    notes = tmp_path / "notes.pt"
    notes.write_text("not a checkpoint")
    with pytest.raises(UserInputError, match="notes.pt: not a PyTorch checkpoint"):
        stored_run_config(notes)
