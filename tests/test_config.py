"""Run config: seed 002's blocks load as written; bad keys, values and paths give one actionable error."""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from sam2_video.config import RunConfig, load_config, recipe_prompt_probabilities
from sam2_video.errors import UserInputError
from sam2_video.train.cli import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED_002_VIDEO = """
dataset:
  dataset_type: "video"
  data_path: "{data}"
  image_size: [512, 512]
  video_clip_length: 5
  batch_size: 1
  num_workers: 16
  shuffle: True
  prompt_types: ["point"]
  num_of_pos_points: 1
  include_center_point: True
model:
  checkpoint_path: "{checkpoint}"
  config_path: "configs/sam2.1_hiera_t.yaml"
  trainable_modules: ["memory_attention", "memory_encoder"]
  image_size: 512
  num_maskmem: 7
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_seed_002_blocks_load_as_written(tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    (tmp_path / "sam2.pt").write_bytes(b"")
    path = write(tmp_path, SEED_002_VIDEO.format(data=tmp_path / "videos", checkpoint=tmp_path / "sam2.pt"))
    config = load_config(path)
    assert config.dataset.dataset_type == "video" and config.dataset.image_size == [512, 512]
    assert config.dataset.include_center_point is True and config.dataset.num_workers == 16
    assert config.model.trainable_modules == ["memory_attention", "memory_encoder"]
    assert config.model.num_maskmem == 7 and config.train.grad_clip == 0.1


def test_overrides_are_typed_and_the_resolved_config_round_trips(tmp_path: Path) -> None:
    config = load_config(None, ["dataset.dataset_type=synthetic", "train.lr=1e-5", "model.image_size=256",
                                "dataset.image_size=256", "model.trainable_modules=[sam_mask_decoder]"])
    assert config.train.lr == 1e-5 and isinstance(config.train.lr, float)
    assert config.dataset.image_size == [256, 256]
    assert config.model.trainable_modules == ["sam_mask_decoder"]
    saved = tmp_path / "resolved.yaml"
    saved.write_text(yaml.safe_dump(config.to_dict()))
    assert load_config(saved) == config


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["dataset.batchsize=2"], "unknown key 'dataset.batchsize'; did you mean 'dataset.batch_size'"),
        (["train.learning_rate=1e-4"], "unknown key 'train.learning_rate'"),
        (["modle.image_size=256"], "did you mean 'model'"),
        (["train.epochs=ten"], "'train.epochs' must be int, got 'ten'"),
        (["dataset.dataset_type=davis"], "expected one of video, coco, vos, sav, synthetic"),
        (["dataset.dataset_type=vos", "dataset.data_path=/no/such/folder"], "'dataset.data_path' /no/such/folder does not exist"),
        (["model.image_size=256", "dataset.image_size=[512,512]"], "differs from 'model.image_size' 256"),
        (["model.model=stcn", "model.image_size=100"], "multiple of 16 (at least 32) for stcn, got 100"),
        (["model.model=stcn", "model.stcn.key_backbone=34"], "'model.stcn.key_backbone' must be 18 or 50, got 34"),
        (["model.model=stcn", "model.stcn.max_objects=2", "dataset.max_num_objects=3"],
         "'dataset.max_num_objects' 3 exceeds 'model.stcn.max_objects' 2"),
        (["dataset.dataset_type=coco", f"dataset.data_path={REPO_ROOT / 'configs'}"], "is a folder; expected a COCO-video JSON"),
        (["model.feature_cache_frames=64"], "needs 'dataset.augment: false'"),
        (["dataset.sav_annotation_kind=automatic"], "expected one of manual, auto"),
        (["dataset.video_list=videos.txt"], "'dataset.video_list' applies to dataset_type vos, sav and video"),
        (["model.memory_attention_dropout=1.5"], "'model.memory_attention_dropout' must be in [0, 1), got 1.5"),
    ],
)
def test_bad_config_names_the_problem(overrides: list[str], expected: str) -> None:
    with pytest.raises(UserInputError) as err:
        load_config(None, ["dataset.dataset_type=synthetic", *overrides])
    assert expected in str(err.value)


def test_unknown_key_in_file_names_the_file_and_closest_key(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  grad_clipping: 1.0\ndataset:\n  dataset_type: synthetic\n")
    with pytest.raises(UserInputError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "did you mean 'train.grad_clip'" in str(err.value)


@pytest.mark.parametrize("name", ["demo.yaml", "davis.yaml", "coco.yaml", "bcss_explicit_prompts.yaml", "stcn_davis.yaml"])
def test_shipped_configs_have_only_valid_keys(name: str) -> None:
    raw = yaml.safe_load((REPO_ROOT / "configs" / name).read_text())
    valid = RunConfig().to_dict()
    for section, values in raw.items():
        assert section in valid, section
        assert set(values) <= set(valid[section]), set(values) - set(valid[section])


def test_demo_config_loads() -> None:
    config = load_config(REPO_ROOT / "configs" / "demo.yaml")
    assert config.model.config_path == "sam2.1_tiny_test" and config.dataset.dataset_type == "synthetic"


@pytest.mark.parametrize(("setting", "expected"), [([], 0.1), (["model.memory_attention_dropout=0"], 0.0)])
def test_memory_attention_dropout_reaches_the_model(setting: list[str], expected: float) -> None:
    config = load_config(None, ["dataset.dataset_type=synthetic", "model.config_path=sam2.1_tiny_test",
                                "model.image_size=64", *setting])
    model = build_model(config.model, config.dataset, verbose=False)
    dropouts = {m.p for m in model.memory_attention.modules() if isinstance(m, torch.nn.Dropout)}
    assert dropouts == {expected}


def test_cli_reports_a_trainable_module_that_matches_nothing(capsys) -> None:
    from sam2_video.train import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--config", str(REPO_ROOT / "configs" / "demo.yaml"), "dataset.synthetic_videos=2",
                              "model.trainable_modules=[memory_attenton]"])
    with pytest.raises(UserInputError) as err:
        cli.run(args)
    assert "'memory_attenton' matches no module" in str(err.value) and "memory_attention" in str(err.value)


@pytest.mark.parametrize(("prompt_types", "expected"), [
    (["point"], {"prob_to_use_pt_input_for_train": 1.0, "prob_to_use_box_input_for_train": 0.0}),
    (["bbox"], {"prob_to_use_pt_input_for_train": 1.0, "prob_to_use_box_input_for_train": 1.0}),
    (["mask"], {"prob_to_use_pt_input_for_train": 0.0}),
    (["point", "bbox"], {"prob_to_use_pt_input_for_train": 1.0}),
    (["point", "mask"], {"prob_to_use_box_input_for_train": 0.0}),
    (["mask", "bbox", "point"], {}),
])
def test_prompt_types_choose_the_recipes_first_prompts(prompt_types: list[str], expected: dict) -> None:
    assert recipe_prompt_probabilities(prompt_types) == expected


def test_seed_002_point_prompts_reach_the_training_recipe() -> None:
    from sam2_video.train.cli import build_model

    config = load_config(None, ["dataset.dataset_type=synthetic", "model.config_path=sam2.1_tiny_test",
                                "model.image_size=64", "dataset.prompt_types=[point]"])
    recipe = build_model(config.model, config.dataset, verbose=False).recipe
    assert recipe.prob_to_use_pt_input_for_train == 1.0 and recipe.prob_to_use_box_input_for_train == 0.0
    with pytest.raises(UserInputError, match=r"'model.prob_to_use_box_input_for_train' 0.5 contradicts "
                                             r"'dataset.prompt_types' \['point'\], which needs 0.0"):
        load_config(None, ["dataset.dataset_type=synthetic", "dataset.prompt_types=[point]",
                           "model.prob_to_use_box_input_for_train=0.5"])


def test_old_flat_stcn_key_names_its_replacement() -> None:
    with pytest.raises(UserInputError, match=r"command-line override 'model.stcn_value_dim=64': 'model.stcn_value_dim' "
                                             r"was replaced by 'model.stcn.value_dim'"):
        load_config(None, ["dataset.dataset_type=synthetic", "model.model=stcn", "model.stcn_value_dim=64"])


def test_checkpoint_of_an_older_run_with_flat_stcn_keys_still_loads(tmp_path: Path) -> None:
    import torch

    from sam2_video.model.run_checkpoint import load_training_checkpoint
    from sam2_video.model.stcn import STCN, STCNConfig
    from sam2_video.predict.stcn_predictor import build_stcn_video_predictor
    from sam2_video.train.resume_check import check_resume_config

    new = load_config(None, ["dataset.dataset_type=synthetic", "dataset.max_num_objects=3", "model.model=stcn",
                             "model.image_size=64", "model.stcn.key_backbone=18", "model.stcn.value_dim=32",
                             "model.stcn.decoder_dim=32", "model.stcn.max_objects=3", "model.stcn.mem_every=2"]).to_dict()
    flat = {key: value for key, value in new["model"].items() if key != "stcn"}
    flat.update({f"stcn_{key}": value for key, value in new["model"]["stcn"].items()})
    model = STCN(STCNConfig(image_size=64, key_backbone=18, value_dim=32, decoder_dim=32, max_objects=3))
    path = tmp_path / "last.pt"
    torch.save({"model": model.state_dict(), "config": {**new, "model": flat}}, path)

    predictor = build_stcn_video_predictor(path)
    assert predictor.config == model.config and predictor.mem_every == 2
    stored = load_training_checkpoint(path)["config"]
    assert stored == new
    assert check_resume_config(stored, new, str(path), allow_changes=False) == []
    wider = {**new, "model": {**new["model"], "stcn": {**new["model"]["stcn"], "value_dim": 64}}}
    with pytest.raises(UserInputError, match=r"model.stcn.value_dim: 32 -> 64  \(model change\)"):
        check_resume_config(stored, wider, str(path), allow_changes=True)
