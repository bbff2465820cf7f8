"""Issue 14: bad output locations, devices and checkpoints end in one message naming the culprit, exit
status 2, no traceback, and leave the user's files as they were."""
from __future__ import annotations

import errno
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam2_video.cli import main
from sam2_video.evaluate import cli as evaluate_cli
from sam2_video.model.build import build_sam2
from sam2_video.model.presets import sam2_config
from sam2_video.model.sam2 import SAM2
from sam2_video.predict import cli as predict_cli
from sam2_video.predict.masks_io import read_mask_png, write_palette_png

SIZE = (48, 64)
TINY = ["--config", "sam2.1_tiny_test", "--image-size", "64"]
READ_ONLY = Path("/sys/sam2_video_test")  # even root gets PermissionError making anything here


def hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots` (files or folders), to show that nothing was touched."""
    files = [p for root in roots for p in ([root] if root.is_file() else sorted(root.rglob("*")))]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


def failing(argv: list[str], capsys, *culprits: str) -> str:
    """Run the CLI, expect exit status 2 and one error naming every culprit; return stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"sam2-video {argv[0]}: error:" in err
    for culprit in culprits:
        assert culprit in err, (culprit, err)
    return err


@pytest.fixture
def clip(tmp_path: Path) -> dict[str, Path]:
    """A 3-frame video folder, its DAVIS annotations and a first-frame mask in a third folder."""
    rng = np.random.default_rng(0)
    frames, annotations = tmp_path / "JPEGImages" / "clip", tmp_path / "Annotations" / "clip"
    frames.mkdir(parents=True)
    mask = np.zeros(SIZE, dtype=np.uint8)
    mask[8:24, 8:24] = 1
    for t in range(3):
        Image.fromarray(rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8)).save(frames / f"{t:05d}.jpg")
        write_palette_png(annotations / f"{t:05d}.png", mask)
    write_palette_png(tmp_path / "prompts" / "first.png", mask)
    return {"video": frames, "annotations": annotations, "mask": tmp_path / "prompts" / "first.png"}


@pytest.fixture
def read_only() -> Path:
    try:
        (READ_ONLY / "probe").mkdir(parents=True)
    except PermissionError:
        return READ_ONLY
    pytest.skip(f"{READ_ONLY} is writable on this machine")


# ---- case 1: evaluate --csv never replaces a file without --overwrite

def test_evaluate_csv_refuses_an_existing_file_unless_overwrite(tmp_path: Path, capsys):
    ids = np.zeros(SIZE, dtype=np.uint8)
    ids[5:20, 5:20] = 1
    for folder in ("gt", "pred"):
        for t in range(3):
            write_palette_png(tmp_path / folder / "seq" / f"{t:05d}.png", ids)
    scores = tmp_path / "scores.csv"
    scores.write_text("my own notes\n")
    before = hashes(tmp_path)
    argv = ["evaluate", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--csv", str(scores)]
    failing(argv, capsys, f"--csv {scores}", "--overwrite")
    assert hashes(tmp_path) == before
    assert main(argv + ["--overwrite"]) == 0
    assert scores.read_text().startswith("level,")


# ---- case 2: outputs never go into an input folder, whatever the flags

@pytest.mark.parametrize("where", ["video", "video/sub", "annotations"])
def test_predict_out_inside_an_input_folder_is_refused(clip: dict[str, Path], tmp_path: Path, capsys, where: str):
    key, _, sub = where.partition("/")
    out = clip[key] / sub if sub else clip[key]
    before = hashes(tmp_path)
    argv = ["predict", "--video", str(clip["video"]), "--annotations", str(clip["annotations"]),
            "--out", str(out), "--overwrite", *TINY]
    failing(argv, capsys, f"--out {out}", f"--{key} {clip[key]}")
    assert hashes(tmp_path) == before and not (clip["video"] / "sub").exists()


def test_predict_overlay_inside_an_input_folder_is_refused(clip: dict[str, Path], tmp_path: Path, capsys):
    overlay = clip["video"] / "overlay.mp4"
    before = hashes(tmp_path)
    argv = ["predict", "--video", str(clip["video"]), "--mask", str(clip["mask"]), "--out", str(tmp_path / "out"),
            "--overlay", str(overlay), "--overwrite", *TINY]
    failing(argv, capsys, f"--overlay {overlay}", f"--video {clip['video']}")
    assert hashes(tmp_path) == before and not (tmp_path / "out").exists()


# ---- case 9 (and the --mask folder is no input folder): random weights are announced

def test_predict_without_checkpoint_warns_and_may_write_beside_the_mask(clip: dict[str, Path], capsys):
    out = clip["mask"].parent / "pred"
    argv = ["predict", "--video", str(clip["video"]), "--mask", str(clip["mask"]), "--out", str(out), *TINY]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: no --checkpoint" in err and "meaningless" in err
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png"]


# ---- case 10: export writes SAM2 weights only

def test_export_refuses_weights_that_are_not_sam2(tmp_path: Path, capsys):
    conv = tmp_path / "conv.pt"
    torch.save({"model": {"conv.weight": torch.zeros(4, 3, 3, 3)}}, conv)
    err = failing(["export", str(conv), str(tmp_path / "out.pt")], capsys, str(conv), "not a SAM2 checkpoint",
                  "1 unexpected keys: conv.weight", "missing keys")
    assert "sam2.1_tiny_test: 323 missing keys" in err

    stcn = tmp_path / "last.pt"
    torch.save({"model": {"key_proj.weight": torch.zeros(2)}, "config": {"model": {"model": "stcn"}}}, stcn)
    failing(["export", str(stcn), str(tmp_path / "out.pt")], capsys, str(stcn), "'stcn' training checkpoint, not SAM2")

    tiny = SAM2(sam2_config("sam2.1_tiny_test", image_size=64)).state_dict()
    tiny.pop("no_mem_embed")
    run = {"model": {"model": "sam2", "config_path": "sam2.1_tiny_test", "image_size": 64, "num_maskmem": 7}}
    torch.save({"model": tiny, "config": run}, stcn)
    failing(["export", str(stcn), str(tmp_path / "out.pt")], capsys, "do not match sam2.1_tiny_test",
            "1 missing keys: no_mem_embed")
    assert not (tmp_path / "out.pt").exists()


def test_export_of_official_format_weights_names_no_preset_but_checks_them(tmp_path: Path, capsys):
    model = SAM2(sam2_config("sam2.1_tiny_test", image_size=64))
    torch.save({"model": model.state_dict()}, tmp_path / "tiny.pt")
    assert main(["export", str(tmp_path / "tiny.pt"), str(tmp_path / "out.pt")]) == 0
    loaded = build_sam2("sam2.1_tiny_test", tmp_path / "out.pt", image_size=64)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


# ---- case 11: read-only output locations

def test_read_only_output_locations(read_only: Path, clip: dict[str, Path], tmp_path: Path, capsys):
    out, overlay = read_only / "out", read_only / "overlay.mp4"
    predict = ["predict", "--video", str(clip["video"]), "--mask", str(clip["mask"]), *TINY]
    failing([*predict, "--out", str(out)], capsys, f"--out {out}", "cannot write in /sys")
    failing([*predict, "--out", str(tmp_path / "out"), "--overlay", str(overlay)], capsys, f"--overlay {overlay}")
    assert not (tmp_path / "out").exists()
    failing(["evaluate", "--gt", str(clip["annotations"].parent), "--pred", str(clip["annotations"].parent),
             "--csv", str(read_only / "scores.csv")], capsys, f"--csv {read_only / 'scores.csv'}")
    failing(["export", str(tmp_path / "any.pt"), str(read_only / "w.pt")], capsys, f"OUT {read_only / 'w.pt'}")


def test_a_failure_after_the_masks_says_what_was_written(clip: dict[str, Path], tmp_path: Path, capsys, monkeypatch):
    overlay = tmp_path / "overlay.mp4"

    def disk_full(frames_and_masks, path, fps):
        for _ in frames_and_masks:  # the masks are written as the overlay encodes them; the disk fills at the end
            pass
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(predict_cli, "write_overlay_video", disk_full)
    argv = ["predict", "--video", str(clip["video"]), "--mask", str(clip["mask"]), "--out", str(tmp_path / "out"),
            "--overlay", str(overlay), *TINY]
    failing(argv, capsys, f"{overlay}: No space left on device", f"3 of 3 masks were written to {tmp_path / 'out'}; the overlay {overlay} was not written")
    assert read_mask_png(tmp_path / "out" / "00002.png").shape == SIZE


# ---- case 12: a file where a folder is expected, or the reverse

def test_file_where_a_folder_is_expected_and_the_reverse(clip: dict[str, Path], tmp_path: Path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    predict = ["predict", "--video", str(clip["video"]), "--mask", str(clip["mask"]), *TINY]
    failing([*predict, "--out", str(a_file)], capsys, f"--out {a_file}: is a file, expected a folder")
    failing([*predict, "--out", str(a_file / "masks")], capsys, f"{a_file} is a file, so no folder")
    (tmp_path / "folder.mp4").mkdir()
    failing([*predict, "--out", str(tmp_path / "o"), "--overlay", str(tmp_path / "folder.mp4")], capsys,
            f"--overlay {tmp_path / 'folder.mp4'}: is a folder")
    gt = str(clip["annotations"].parent)
    failing(["evaluate", "--gt", gt, "--pred", gt, "--csv", str(tmp_path)], capsys, f"--csv {tmp_path}: is a folder")
    failing(["evaluate", "--gt", gt, "--pred", gt, "--csv", str(a_file / "s.csv")], capsys, f"{a_file} is a file")
    failing(["export", str(a_file), str(tmp_path)], capsys, f"OUT {tmp_path}: is a folder")
    assert a_file.read_text() == "mine" and not (tmp_path / "o").exists()


# ---- case 13: a file that is not a checkpoint

def test_export_of_a_file_that_is_not_a_checkpoint(tmp_path: Path):
    text = tmp_path / "not_a_checkpoint.pt"
    text.write_text("a text file")  # torch.load fails with IndexError: pop from empty list
    result = subprocess.run([sys.executable, "-m", "sam2_video.cli", "export", str(text), str(tmp_path / "o.pt")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{text}: not a PyTorch checkpoint" in result.stderr
    assert not (tmp_path / "o.pt").exists()


# ---- case 14: devices that do not exist

@pytest.mark.parametrize("device", [f"cuda:{torch.cuda.device_count()}", "gpu"])
def test_predict_device_that_does_not_exist(clip: dict[str, Path], tmp_path: Path, capsys, device: str):
    argv = ["predict", "--video", str(clip["video"]), "--mask", str(clip["mask"]), "--out", str(tmp_path / "o"),
            "--device", device, *TINY]
    err = failing(argv, capsys, f"--device {device!r}", "available: auto, cpu")
    if torch.cuda.is_available():
        assert "cuda:0" in err
    assert not (tmp_path / "o").exists()


def test_resolve_device_names_the_option():
    from sam2_video.device import resolve_device

    assert resolve_device("cpu", "train.device") == torch.device("cpu")
    assert resolve_device("auto", "train.device").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(Exception, match=r"train\.device 'tpu'"):
        resolve_device("tpu", "train.device")


# ---- case 17: the preset is taken from the checkpoint's file name

def test_predict_checkpoint_name_that_names_no_preset(clip: dict[str, Path], tmp_path: Path, capsys):
    weights = tmp_path / "my_weights.pt"
    torch.save({"model": {}}, weights)
    argv = ["predict", "--video", str(clip["video"]), "--mask", str(clip["mask"]), "--out", str(tmp_path / "o"),
            "--checkpoint", str(weights)]
    failing(argv, capsys, str(weights), "taken from the checkpoint's file name", "--config", "sam2.1_hiera_t")


# ---- main: any OSError from the system becomes one line; a bare OSError keeps its traceback; Ctrl-C says so

@pytest.mark.parametrize("error, message", [
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/data/gt/seq/00000.png"), "/data/gt/seq/00000.png: Is a directory"),
    (PermissionError(errno.EACCES, "Permission denied", "/a/.x.tmp", None, "/a/x.csv"), "/a/.x.tmp -> /a/x.csv: Permission denied"),
    (OSError(errno.ENOSPC, "No space left on device"), "error: No space left on device"),
    (OSError("cannot write mode RGBA as JPEG"), None),
])
def test_main_reports_system_errors_in_one_line(tmp_path: Path, capsys, monkeypatch, error, message):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(evaluate_cli, "evaluate_davis", fail)
    argv = ["evaluate", "--gt", str(tmp_path), "--pred", str(tmp_path)]
    if message is None:
        with pytest.raises(type(error)):
            main(argv)
    else:
        failing(argv, capsys, message)


def test_ctrl_c_exits_130_without_a_traceback(tmp_path: Path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_cli, "evaluate_davis", interrupted)
    assert main(["evaluate", "--gt", str(tmp_path), "--pred", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "sam2-video evaluate: interrupted" in err and "Traceback" not in err
