"""`python -m sam2_video.image_example`: image mode end to end on a generated image, and its errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from sam2_video.image_example import main


def test_image_example_prints_three_masks_at_the_image_size(capsys: pytest.CaptureFixture) -> None:
    assert main(["--config", "sam2.1_tiny_test", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "image 640x480, one positive click at (320, 240)" in out
    assert "low-res logits (3, 16, 16)" in out  # multimask output at a quarter of the model size
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("mask ")] == ["mask 0", "mask 1", "mask 2"]


def test_image_example_names_a_bad_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", "sam2.1_tiny_test", "--image-size", "64", "--image", str(tmp_path / "notes.jpg")])
    assert exit_info.value.code == 2
    assert "notes.jpg: not a readable image" in capsys.readouterr().err
