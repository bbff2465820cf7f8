"""Issue 14, data and config cases: each bad input gives one message naming the culprit (no traceback)."""
from __future__ import annotations

from pathlib import Path

import pytest

from sam2_video.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_train(capsys, config: Path, *overrides: str) -> tuple[int, str]:
    """`sam2-video train --config CONFIG OVERRIDES...`: exit status and stdout + stderr."""
    status = main(["train", "--config", str(config), *overrides])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_unknown_override_key_is_blamed_on_the_command_line(capsys) -> None:  # case 20b
    status, output = run_train(capsys, REPO_ROOT / "configs" / "demo.yaml", "train.lrr=1")
    assert status == 2 and "Traceback" not in output
    assert "command-line override 'train.lrr=1': unknown key 'train.lrr'; did you mean 'train.lr'?" in output
    assert "demo.yaml" not in output
