"""Issue 11 part 4, curves people can read: the loss-curve figure (one panel per loss term, raw + EMA,
validation J&F on a 0-1 second axis) and plain progress lines instead of a tqdm bar when not on a terminal."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from sam2_video.train import progress as progress_module
from sam2_video.train.metrics_log import ema, ema_alpha, loss_curve_figure, plot_loss_curve, read_metrics
from sam2_video.train.progress import StepProgress, format_duration
from test_trainer import make_trainer

LINE = re.compile(
    r"^step (\d+)/(\d+) epoch (\d+) loss (\d+\.\d{4}) \(ema ([\d.e+-]+)\) lr (\d\.\de[+-]\d\d) "
    r"([\d.e+-]+) s/step eta (\d+s|\d+m\d\ds|\d+h\d\dm)$"
)
SAM2_TERMS = ["core_loss", "loss_mask", "loss_dice", "loss_iou", "loss_class"]


def progress_lines(text: str) -> list[re.Match]:
    return [match for match in map(LINE.match, text.splitlines()) if match]


def test_a_training_run_off_a_terminal_prints_plain_progress_lines(tmp_path: Path, capsys) -> None:
    # toy tracker, 8 clips x 2 epochs = 16 steps: fewer than 30, so one line per step
    make_trainer(tmp_path, num_clips=8, epochs=2).fit()
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    lines = progress_lines(captured.out)
    assert [int(m[1]) for m in lines] == list(range(1, 17)) and {m[2] for m in lines} == {"16"}
    assert [int(m[3]) for m in lines] == [0] * 8 + [1] * 8
    assert lines[-1][8] == "0s"  # nothing left
    records = read_metrics(tmp_path / "metrics.jsonl", "train")
    assert [float(m[4]) for m in lines] == pytest.approx([r["core_loss"] for r in records], abs=1e-4)
    assert [float(m[6]) for m in lines] == pytest.approx([r["lr"] for r in records], rel=0.05)
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_longer_run_prints_about_thirty_lines(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(progress_module, "MAX_SECONDS_BETWEEN_LINES", math.inf)  # a loaded machine adds no line
    make_trainer(tmp_path, num_clips=31, epochs=2).fit()  # 62 steps: every 3rd, plus the first and the last
    lines = progress_lines(capsys.readouterr().out)
    assert [int(m[1]) for m in lines] == [1, *range(3, 62, 3), 62]


def test_slow_steps_print_at_least_every_thirty_seconds(monkeypatch, capsys) -> None:
    clock = iter([0.0, 5.0, 40.0, 50.0])  # start, then after steps 2, 3, 4
    monkeypatch.setattr(progress_module, "perf_counter", lambda: next(clock))
    progress = StepProgress(total=1000, initial=1, interactive=False)  # resumed after step 1; every 34th
    for step in (2, 3, 4):
        progress.update(step, 0, 1.0, 1e-3)
    lines = progress_lines(capsys.readouterr().out)
    assert [int(m[1]) for m in lines] == [2, 3]  # the first step of this run, then 35 s after it
    assert lines[1][7] == "20" and lines[1][8] == "5h32m"  # 40 s for 2 steps; 997 steps left


def test_on_a_terminal_the_tqdm_bar_counts_the_steps(capsys) -> None:
    progress = StepProgress(total=10, initial=4, interactive=True)
    progress.update(5, 1, 2.5, 1e-4)
    progress.update(6, 1, 2.0, 1e-4)
    assert progress.bar.n == 6
    progress.close()
    captured = capsys.readouterr()
    assert "6/10" in captured.err and not progress_lines(captured.out)


def test_ema_is_bias_corrected_and_skips_non_finite_values() -> None:
    assert ema([5.0, 5.0, 5.0], 0.9) == pytest.approx([5.0, 5.0, 5.0])
    smoothed = ema([math.nan, 2.0, math.inf, 4.0], 0.5)
    assert math.isnan(smoothed[0]) and smoothed[1:] == pytest.approx([2.0, 2.0, (0.25 * 2 + 0.5 * 4) / 0.75])
    assert [ema_alpha(n) for n in (5, 200, 400, 1000, 10_000)] == pytest.approx([0.9, 0.9, 0.95, 0.98, 0.98])
    assert format_duration(45) == "45s" and format_duration(250) == "4m10s" and format_duration(7500) == "2h05m"


def sam2_records(steps: int = 60) -> tuple[list[dict], list[float]]:
    records = []
    for step in range(1, steps + 1):
        hard = step % 2 == 0  # bimodal batches, as in the demo
        terms = {"loss_mask": 0.5 / step**0.5 * (4 if hard else 1), "loss_dice": 0.9 - step / 100,
                 "loss_iou": 0.1, "loss_class": 0.02 + 0.01 * hard}
        terms["core_loss"] = 20 * terms["loss_mask"] + terms["loss_dice"] + terms["loss_iou"] + terms["loss_class"]
        records.append({"kind": "train", "step": step, "epoch": (step - 1) // 20, **terms,
                        "lr": 1e-3, "grad_norm": 3.0, "seconds": 0.5})
    jf = [0.31, 0.52, 0.74]
    records += [{"kind": "val", "step": 20 * (i + 1), "epoch": i + 1, "J&F": v, "J": v, "F": v}
                for i, v in enumerate(jf)]
    return records, jf


def test_figure_has_one_panel_per_loss_term_and_jf_on_a_second_axis() -> None:
    records, jf = sam2_records()
    fig = loss_curve_figure(records)
    jf_axes = [axis for axis in fig.axes if axis.get_ylabel() == "validation J&F"]
    panels = [axis for axis in fig.axes if axis not in jf_axes]
    assert [axis.get_title(loc="left") for axis in panels] == SAM2_TERMS and len(jf_axes) == 1
    for axis, term in zip(panels, SAM2_TERMS):
        raw, smoothed = axis.get_lines()
        values = [r[term] for r in records if r["kind"] == "train"]
        assert list(raw.get_ydata()) == pytest.approx(values)
        if axis.get_yscale() == "log":  # smoothed over log values
            assert list(smoothed.get_ydata()) == pytest.approx([math.exp(v) for v in ema(list(map(math.log, values)),
                                                                                          ema_alpha(60))])
        else:
            assert list(smoothed.get_ydata()) == pytest.approx(ema(values, ema_alpha(60)))
        assert raw.get_alpha() < 0.5 and raw.get_linewidth() < smoothed.get_linewidth()
    assert [axis.get_yscale() for axis in panels] == ["log", "log", "linear", "linear", "linear"]  # >10x: log
    (jf_line,) = jf_axes[0].get_lines()
    assert jf_axes[0].get_ylim() == (0, 1)
    assert list(jf_line.get_ydata()) == jf and list(jf_line.get_xdata()) == [20, 40, 60]
    assert jf_line.get_marker() == "o"
    assert jf_axes[0].bbox.bounds == panels[0].bbox.bounds  # twin of the core-loss panel


def test_figure_panels_follow_the_records_keys_for_stcn() -> None:
    records = [{"kind": "train", "step": s, "epoch": 0, "loss_frame_1": 1.0 / s, "loss_frame_2": 2.0 / s,
                "core_loss": 3.0 / s, "kept_fraction": 1.0, "lr": 1e-4, "grad_norm": 1.0, "seconds": 0.1}
               for s in range(1, 11)]
    fig = loss_curve_figure(records)  # no validation: no second axis
    assert [axis.get_title(loc="left") for axis in fig.axes] == ["core_loss", "loss_frame_1", "loss_frame_2",
                                                                  "kept_fraction"]


def test_plot_loss_curve_writes_the_figure_as_a_png(tmp_path: Path) -> None:
    import matplotlib.image

    records, _ = sam2_records()
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    plot_loss_curve(jsonl, tmp_path / "loss_curve.png")
    height, width, _ = matplotlib.image.imread(tmp_path / "loss_curve.png").shape
    assert width == 1100 and height > 600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss_curve.png", "metrics.jsonl"]  # no temporary left


def test_logged_steps_carry_gradient_norms_per_module_that_add_up_to_the_total(tmp_path: Path) -> None:
    make_trainer(tmp_path, num_clips=4, epochs=1).fit()
    records = read_metrics(tmp_path / "metrics.jsonl", "train")
    for record in records:
        per_module = {k: v for k, v in record.items() if k.startswith("grad_norm/")}
        assert per_module, "every logged step names the modules its gradients reached"
        assert math.sqrt(sum(v * v for v in per_module.values())) == pytest.approx(record["grad_norm"], rel=1e-4)
    figure = loss_curve_figure(read_metrics(tmp_path / "metrics.jsonl"))
    assert not any(ax.get_title().startswith("grad_norm") for ax in figure.axes)  # not loss terms
