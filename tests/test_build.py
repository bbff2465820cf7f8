"""build_sam2 / checkpoints: official key names and shapes for every preset, round trips, clear errors."""
from __future__ import annotations

import pytest
import torch

from conftest import require_reference
from sam2_video.errors import UserInputError
from sam2_video.model.build import build_sam2, load_checkpoint, save_checkpoint
from sam2_video.model.presets import sam2_config

OFFICIAL_CONFIGS = {
    f"{version}_hiera_{size}": f"configs/{version}/{version}_hiera_{size}.yaml"
    for version in ("sam2", "sam2.1")
    for size in ("t", "s", "b+", "l")
}


def _reference_model(preset: str, image_size: int) -> torch.nn.Module:
    require_reference()
    from sam2.build_sam import build_sam2 as build_reference

    return build_reference(OFFICIAL_CONFIGS[preset], None, device="cpu",
                           hydra_overrides_extra=[f"++model.image_size={image_size}"])


@pytest.fixture
def skip_weight_init(monkeypatch):
    """Random initialisation dominates building the large presets; shapes do not need it."""
    for name in ("kaiming_uniform_", "uniform_", "normal_", "trunc_normal_", "xavier_uniform_", "zeros_"):
        monkeypatch.setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)


@pytest.mark.parametrize("preset", sorted(OFFICIAL_CONFIGS))
def test_state_dict_keys_and_shapes_match_reference(preset: str, skip_weight_init) -> None:
    reference = {k: tuple(v.shape) for k, v in _reference_model(preset, 256).state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in build_sam2(preset, image_size=256).state_dict().items()}
    assert sorted(set(reference) - set(ours)) == []
    assert sorted(set(ours) - set(reference)) == []
    assert {k: s for k, s in ours.items() if reference[k] != s} == {}


def test_checkpoint_round_trip_with_reference(tmp_path) -> None:
    """An official checkpoint loads into ours, and ours (saved by us) loads strictly into the reference."""
    reference = _reference_model("sam2.1_hiera_t", 256)
    from sam2.build_sam import _load_checkpoint as load_reference_checkpoint

    official = tmp_path / "official.pt"
    torch.save({"model": reference.state_dict()}, official)
    ours = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", checkpoint=official, image_size=256)
    assert not ours.training
    with torch.no_grad():  # change every weight so that the reload below is visible
        for param in ours.parameters():
            param.add_(1.0)
    saved = tmp_path / "ours.pt"
    save_checkpoint(ours, saved)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["official.pt", "ours.pt"]  # no temporary file left
    load_reference_checkpoint(reference, str(saved))  # strict in the official code
    expected = ours.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("spelling", ["sam2.1_hiera_tiny", "configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_t"])
def test_preset_spellings(spelling: str) -> None:
    assert sam2_config(spelling).name == "sam2.1_hiera_t"
    assert build_sam2("sam2.1_tiny_test").config.name == "sam2.1_tiny_test"


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(UserInputError, match="Unknown SAM2 preset 'sam3_hiera_t'") as err:
        build_sam2("sam3_hiera_t")
    for preset in OFFICIAL_CONFIGS:
        assert preset in str(err.value)


def test_missing_checkpoint_file(tmp_path) -> None:
    path = tmp_path / "nothing_here.pt"
    with pytest.raises(UserInputError, match="nothing_here.pt: checkpoint file not found"):
        build_sam2("sam2.1_tiny_test", checkpoint=path)


def test_file_that_is_not_a_checkpoint(tmp_path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights")
    with pytest.raises(UserInputError, match="notes.pt: not a PyTorch checkpoint"):
        build_sam2("sam2.1_tiny_test", checkpoint=text)
    no_model = tmp_path / "optimizer_only.pt"
    torch.save({"optimizer": {}}, no_model)
    with pytest.raises(UserInputError, match="optimizer_only.pt: not a SAM2 checkpoint.*'model'.*optimizer"):
        build_sam2("sam2.1_tiny_test", checkpoint=no_model)


def test_mismatched_checkpoint_names_keys_and_shapes(tmp_path) -> None:
    path = tmp_path / "sam2_v1.pt"  # SAM2 (v1) heads, loaded into a SAM2.1 model
    v1_config = sam2_config("sam2.1_tiny_test", no_obj_embed_spatial=False, add_tpos_enc_to_obj_ptrs=False,
                            proj_tpos_enc_in_obj_ptrs=False, use_signed_tpos_enc_to_obj_ptrs=False)
    save_checkpoint(build_sam2(v1_config), path)
    model = build_sam2("sam2.1_tiny_test")
    with pytest.raises(UserInputError) as err:
        load_checkpoint(model, path)
    message = str(err.value)
    assert "sam2_v1.pt" in message
    assert "missing keys" in message and "no_obj_embed_spatial" in message and "obj_ptr_tpos_proj.weight" in message


    edited = tmp_path / "edited.pt"
    tiny = build_sam2("sam2.1_tiny_test")
    state = tiny.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["no_obj_ptr"]
    state["no_mem_embed"] = torch.zeros(1, 1, 8)
    torch.save({"model": state}, edited)
    with pytest.raises(UserInputError) as err:
        load_checkpoint(tiny, edited)
    message = str(err.value)
    assert message.startswith(f"{edited}: checkpoint does not match model 'sam2.1_tiny_test'")
    assert "1 missing keys: no_obj_ptr;" in message
    assert "1 unexpected keys: extra.weight;" in message
    assert "1 shape mismatches: no_mem_embed (1, 1, 8) vs model (1, 1, 64)" in message
