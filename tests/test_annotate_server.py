"""`sam2-video annotate` server without a browser: the HTTP API on a live uvicorn server (tiny preset,
seeded random weights made decisive): prompts, persistence and restart, export, path safety,
malformed requests, concurrent clicks, host warning, checkpoint kinds."""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from sam2_video.annotate.cli import host_warning, open_app, serving
from sam2_video.cli import main
from sam2_video.errors import UserInputError
from sam2_video.model.build import save_checkpoint
from sam2_video.predict.masks_io import read_mask_png
from sam2_video.predict.video_predictor import build_sam2_video_predictor
from conftest import make_decisive

SIZE = (64, 80)  # height, width of the generated video


# ------------------------------------------------------------------ helpers (also used by the browser test)

def decisive_checkpoint(path: Path, image_size: int = 64) -> Path:
    """Seeded random tiny SAM2 whose object scores and mask logits are scaled up, so that masks are
    not all-empty or flickering (../shared/refharness/README.md); saved in the official format."""
    torch.manual_seed(0)
    predictor = build_sam2_video_predictor("sam2.1_tiny_test", image_size=image_size)
    make_decisive(predictor.model)
    save_checkpoint(predictor.model, path)
    return path


def generated_video(folder: Path, num_frames: int = 6) -> Path:
    """PNG frames with a red square moving over noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for t in range(num_frames):
        frame = rng.integers(0, 120, (*SIZE, 3), dtype=np.uint8)
        frame[10:30, 2 * t : 2 * t + 20] = (230, 40, 40)
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    return folder


def annotate_args(video: Path, out: Path, checkpoint: Path | None, image_size: int = 64, **extra) -> argparse.Namespace:
    return argparse.Namespace(video=video, out=out, checkpoint=checkpoint, config="sam2.1_tiny_test",
                              image_size=image_size, device="cpu", **extra)


def wait_ready(client: httpx.Client, since: int = 0, timeout: float = 120) -> dict:
    """Poll /api/status?since= until no propagation runs."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/api/status?since={since}").json()
        if not status["running"]:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return decisive_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pt")


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return generated_video(tmp_path / "clip")


@contextlib.contextmanager
def annotate_client(video: Path, out: Path, checkpoint: Path) -> Iterator[httpx.Client]:
    with serving(open_app(annotate_args(video, out, checkpoint))) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


# ------------------------------------------------------------------ tests

def test_click_propagate_correct_export_and_restart_restores(video: Path, tmp_path: Path, checkpoint: Path):
    out = tmp_path / "out"
    with annotate_client(video, out, checkpoint) as client:
        assert client.post("/api/objects", json={}).json()["obj_id"] == 1
        assert client.post("/api/objects", json={"name": "background thing"}).json()["obj_id"] == 2
        clicked = client.post("/api/click", json={"frame": 0, "obj_id": 1, "x": 20, "y": 20, "label": 1}).json()
        assert list(clicked["changed"]) == ["0"]
        assert client.post("/api/box", json={"frame": 0, "obj_id": 2, "box": [40, 35, 75, 60]}).status_code == 200
        mask = client.get("/api/masks/0.png")
        assert mask.status_code == 200 and mask.headers["content-type"] == "image/png"
        assert client.get("/api/masks/3.png").status_code == 404  # not propagated yet
        assert client.post("/api/propagate", json={"frame": 0, "direction": "forward"}).status_code == 202
        status = wait_ready(client)
        assert status["done"] == status["total"] == 6 and sorted(map(int, status["changed"])) == list(range(6))
        before = {t: read_mask_png(out / "session" / "masks" / f"{t:05d}.png") for t in range(6)}
        versions = status["changed"]
        # a negative click on frame 3 corrects it; propagating from there re-tracks frames 4 and 5 only
        corrected = client.post("/api/click", json={"frame": 3, "obj_id": 1, "x": 20, "y": 50, "label": 0}).json()
        assert list(corrected["changed"]) == ["3"]
        client.post("/api/propagate", json={"frame": 3, "direction": "forward"})
        after = wait_ready(client, since=status["version"])["changed"]
        assert all(after[str(t)] > versions[str(t)] for t in (3, 4, 5)) and all(str(t) not in after for t in (0, 1, 2))
        assert not np.array_equal(read_mask_png(out / "session" / "masks" / "00003.png"), before[3])
        latest = client.get("/api/status").json()["version"]
        assert client.post("/api/propagate", json={"frame": 3, "direction": "backward"}).status_code == 202
        backward = wait_ready(client, since=latest)
        assert sorted(map(int, backward["changed"])) == [0, 1, 2, 3] and backward["total"] == 4
        exported = client.post("/api/export", json={}).json()
        assert exported["annotated_frames"] == 6
        session = client.get("/api/session").json()

    names = [f"{t:05d}" for t in range(6)]
    assert sorted(p.stem for p in (out / "JPEGImages" / "clip").glob("*.jpg")) == names
    assert sorted(p.stem for p in (out / "Annotations" / "clip").glob("*.png")) == names
    for t in range(6):
        with Image.open(out / "Annotations" / "clip" / f"{t:05d}.png") as image:
            assert image.mode == "P"
    coco = json.loads((out / "coco.json").read_text())
    assert [(i["video_id"], i["order_in_video"]) for i in coco["images"]] == [("clip", t) for t in range(6)]
    assert {a["object_id"] for a in coco["annotations"]} <= {1, 2} and coco["annotations"]
    prompts = json.loads((out / "prompts.json").read_text())
    assert {"frame": 0, "obj_id": 2, "box": [40.0, 35.0, 75.0, 60.0]} in prompts
    assert {"frame": 3, "obj_id": 1, "points": [[20.0, 50.0]], "labels": [0]} in prompts

    # a new server on the same VIDEO and DIR has the objects, prompts and masks back
    with annotate_client(video, out, checkpoint) as client:
        restored = client.get("/api/session").json()
        assert restored["objects"] == session["objects"] and restored["actions"] == session["actions"]
        assert sorted(restored["frame_versions"]) == sorted(session["frame_versions"])
        assert client.get("/api/masks/5.png").content == (out / "session" / "masks" / "00005.png").read_bytes()
        # undo the frame-3 click: the session file loses it
        undone = client.post("/api/undo", json={}).json()
        assert (undone["frame"], undone["obj_id"]) == (3, 1)
    saved = json.loads((out / "session" / "session.json").read_text())
    assert len(saved["actions"]) == len(session["actions"]) - 1


def test_path_traversal_is_refused(video: Path, tmp_path: Path, checkpoint: Path):
    (tmp_path / "secret.txt").write_text("TOP-SECRET-CONTENT")
    with annotate_client(video, tmp_path / "out", checkpoint) as client:
        host, port = client.base_url.host, client.base_url.port
        for path in ["/static/../session/session.json", "/static/../../secret.txt", "/static/%2e%2e/%2e%2e/secret.txt",
                     "/static/..%2f..%2fsecret.txt", "/static/%252e%252e/secret.txt", "/api/frames/..%2F0.jpg",
                     "/static//etc/passwd", "/static/..\\..\\secret.txt", f"/static/{tmp_path}/secret.txt",
                     "/api/frames/-1.jpg", "/api/frames/6.jpg", "/api/masks/../../secret.txt"]:
            connection = http.client.HTTPConnection(host, port, timeout=10)
            connection.request("GET", path)  # sent as written: no client-side normalisation of ..
            response = connection.getresponse()
            body = response.read()
            assert response.status in (400, 403, 404), (path, response.status)
            assert b"TOP-SECRET-CONTENT" not in body, path
            connection.close()
        assert client.get("/static/app.js").status_code == 200
        # nothing in the API takes a path: a body naming one is an unknown field
        refused = client.post("/api/export", json={"out": "/tmp/elsewhere"})
        assert refused.status_code == 400 and "unknown fields ['out']" in refused.json()["error"]


@pytest.mark.parametrize("path, body, status, message", [
    ("/api/click", b"{not json", 400, "not valid JSON"),
    ("/api/click", b"[1, 2]", 400, "expected a JSON object"),
    ("/api/click", {"frame": 0, "obj_id": 9, "x": 5, "y": 5, "label": 1}, 404, "object 9 does not exist"),
    ("/api/click", {"frame": 6, "obj_id": 1, "x": 5, "y": 5, "label": 1}, 400, "frame 6 is out of range"),
    ("/api/click", {"frame": -1, "obj_id": 1, "x": 5, "y": 5, "label": 1}, 400, "frame -1 is out of range"),
    ("/api/click", {"frame": 0, "obj_id": 1, "x": 500, "y": 5, "label": 1}, 400, "outside the frame"),
    ("/api/click", {"frame": 0, "obj_id": 1, "x": 5, "y": -2, "label": 1}, 400, "outside the frame"),
    ("/api/click", {"frame": 0, "obj_id": 1, "x": 5, "y": 5, "label": 2}, 400, "label must be 1"),
    ("/api/click", {"frame": "0", "obj_id": 1, "x": 5, "y": 5, "label": 1}, 400, "frame must be"),
    ("/api/click", {"frame": 0, "obj_id": 1, "x": 5, "label": 1}, 400, "missing field 'y'"),
    ("/api/click", {"frame": 0, "obj_id": True, "x": 5, "y": 5, "label": 1}, 400, "obj_id must be"),
    ("/api/box", {"frame": 0, "obj_id": 1, "box": [10, 10, 5, 20]}, 400, "x0 < x1"),
    ("/api/box", {"frame": 0, "obj_id": 1, "box": [0, 0, 900, 20]}, 400, "outside the frame"),
    ("/api/clear", {"frame": 0, "obj_id": 7}, 404, "object 7 does not exist"),
    ("/api/propagate", {"frame": 0, "direction": "sideways"}, 400, "direction 'sideways'"),
    ("/api/propagate", {"frame": 0, "direction": "forward"}, 400, "nothing to propagate"),
    ("/api/undo", {}, 400, "nothing to undo"),
])
def test_malformed_requests_get_4xx_and_the_server_keeps_running(
        video: Path, tmp_path: Path, checkpoint: Path, path: str, body, status: int, message: str):
    with annotate_client(video, tmp_path / "out", checkpoint) as client:
        client.post("/api/objects", json={})
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = client.post(path, content=content, headers={"Content-Type": "application/json"})
        assert response.status_code == status, response.text
        assert message in response.json()["error"]
        assert client.get("/api/status").json()["text"] == "ready"
        assert client.delete("/api/objects/5").status_code == 404
        assert client.post("/api/click", json={"frame": 0, "obj_id": 1, "x": 5, "y": 5, "label": 1}).status_code == 200


def test_concurrent_clicks_from_two_tabs_keep_the_session_file_whole(video: Path, tmp_path: Path, checkpoint: Path):
    out = tmp_path / "out"
    with annotate_client(video, out, checkpoint) as client:
        client.post("/api/objects", json={})
        client.post("/api/objects", json={})
        errors: list[str] = []

        def tab(obj_id: int) -> None:
            with httpx.Client(base_url=str(client.base_url), timeout=60) as own:
                for k in range(8):
                    response = own.post("/api/click", json={"frame": k % 3, "obj_id": obj_id, "x": 5.0 + 7 * k,
                                                            "y": 5.0 + 5 * k, "label": k % 2})
                    if response.status_code != 200:
                        errors.append(response.text)
                    json.loads((out / "session" / "session.json").read_text())  # whole at every moment

        threads = [threading.Thread(target=tab, args=(obj_id,)) for obj_id in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        saved = json.loads((out / "session" / "session.json").read_text())
        assert sorted((a["obj_id"], a["frame"], tuple(a["point"])) for a in saved["actions"]) == sorted(
            (obj_id, k % 3, (5.0 + 7 * k, 5.0 + 5 * k)) for obj_id in (1, 2) for k in range(8))
        assert client.get("/api/session").json()["actions"] == saved["actions"]


def test_edits_during_propagation_are_refused_and_cancel_stops_it(tmp_path: Path, checkpoint: Path):
    video = generated_video(tmp_path / "long", num_frames=40)
    app = open_app(annotate_args(video, tmp_path / "out", checkpoint))
    predictor = app.state.propagation.session.predictor
    track = predictor.propagate_in_video

    def slow_propagation(*args, **kwargs):  # 0.1 s per frame, so that the requests below meet it running
        for result in track(*args, **kwargs):
            time.sleep(0.1)
            yield result

    predictor.propagate_in_video = slow_propagation
    with serving(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        client.post("/api/objects", json={})
        client.post("/api/click", json={"frame": 0, "obj_id": 1, "x": 20, "y": 20, "label": 1})
        assert client.post("/api/propagate", json={"frame": 0, "direction": "both"}).status_code == 202
        busy = client.post("/api/click", json={"frame": 0, "obj_id": 1, "x": 30, "y": 20, "label": 1})
        assert busy.status_code == 409 and "propagation is running" in busy.json()["error"]
        assert client.post("/api/propagate", json={"frame": 0, "direction": "forward"}).status_code == 409
        assert client.post("/api/export", json={}).status_code == 409
        status = client.get("/api/status").json()
        assert status["running"] and status["text"].startswith("propagating both: ")
        stopped = client.post("/api/cancel", json={}).json()
        assert not stopped["running"] and stopped["done"] < 40 and "cancelled" in stopped["message"]
        assert stopped["text"] == "ready"
        assert client.post("/api/click", json={"frame": 0, "obj_id": 1, "x": 30, "y": 20, "label": 1}).status_code == 200


def test_non_local_host_warns():
    assert host_warning("127.0.0.1") is None and host_warning("localhost") is None
    warning = host_warning("0.0.0.0")
    assert warning is not None and "reachable from other machines" in warning


def test_cli_prints_the_warning_and_refuses_an_stcn_run(tmp_path: Path, video: Path, capsys):
    stcn_run = tmp_path / "last.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "config": {"model": {"model": "stcn", "image_size": 64}}}, stcn_run)
    assert main(["annotate", str(video), "--out", str(tmp_path / "out"), "--checkpoint", str(stcn_run),
                 "--host", "0.0.0.0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "warning: --host 0.0.0.0" in err
    assert "a 'stcn' training run; annotate needs SAM2" in err


def test_checkpoint_kinds(tmp_path: Path, video: Path, checkpoint: Path):
    """A SAM2 run's last.pt gives its preset and size; an unknown file name needs --config; random weights warn."""
    from sam2_video.annotate.model import build_predictor

    state = torch.load(checkpoint, weights_only=True)
    run = tmp_path / "last.pt"
    torch.save({**state, "config": {"model": {"model": "sam2", "config_path": "sam2.1_tiny_test", "image_size": 64,
                                              "num_maskmem": 7}}}, run)
    predictor = build_predictor(run, None, None, torch.device("cpu"))
    assert predictor.image_size == 64 and predictor.config.name == build_predictor(
        checkpoint, "sam2.1_tiny_test", 64, torch.device("cpu")).config.name
    with pytest.raises(UserInputError, match="trained at 64 px"):
        build_predictor(run, None, 128, torch.device("cpu"))
    with pytest.raises(UserInputError, match="names no SAM2 preset"):
        build_predictor(checkpoint, None, None, torch.device("cpu"))
    with pytest.raises(UserInputError, match="not a PyTorch checkpoint"):
        (tmp_path / "junk.pt").write_text("junk")
        build_predictor(tmp_path / "junk.pt", "sam2.1_tiny_test", 64, torch.device("cpu"))


def test_dir_of_another_video_is_refused(tmp_path: Path, video: Path, checkpoint: Path):
    out = tmp_path / "out"
    other = generated_video(tmp_path / "other", num_frames=4)
    with annotate_client(video, out, checkpoint) as client:
        client.post("/api/objects", json={})
    with pytest.raises(UserInputError, match="holds the session of"):
        open_app(annotate_args(other, out, checkpoint))


def test_command_serves_on_localhost_and_prints_its_url(tmp_path: Path, video: Path):
    """`sam2-video annotate` as a process: random weights warned about, the URL printed, the page served."""
    process = subprocess.Popen([sys.executable, "-m", "sam2_video.cli", "annotate", str(video), "--out", str(tmp_path / "out"),
                                "--config", "sam2.1_tiny_test", "--image-size", "64", "--device", "cpu", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line
        deadline = time.monotonic() + 60
        while True:
            try:
                page = httpx.get(url.group(0), timeout=5)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert page.status_code == 200 and 'data-testid="frame-canvas"' in page.text
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert "gets random weights" in err
