"""`sam2-video annotate VIDEO --out DIR`: serve the annotation page for one video on this machine."""
from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from sam2_video.device import resolve_device
from sam2_video.errors import UserInputError
from sam2_video.io import check_not_inside_inputs, check_output_folder

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", metavar="VIDEO", type=Path, help="a folder of JPEG/PNG frames or a video file")
    parser.add_argument("--out", required=True, type=Path,
                        help="folder for the session (saved as you work) and the exported dataset")
    parser.add_argument("--checkpoint", type=Path, help="official or exported SAM2 weights, or a SAM2 training "
                        "run's last.pt/best.pt (without it the weights are random)")
    parser.add_argument("--config", help="SAM2 preset, e.g. sam2.1_hiera_t (default: the run's, or from the "
                        "checkpoint's file name)")
    parser.add_argument("--image-size", type=int, help="model input size (default: the preset's or the run's)")
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--port", type=int, default=8765, help="port to serve on (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: only this machine can open the page)")


def host_warning(host: str) -> str | None:
    """The warning printed when the page is reachable from other machines."""
    if host in LOCAL_HOSTS:
        return None
    return (f"warning: --host {host}: the page is reachable from other machines, and anyone who can reach it can "
            "read the video and change the annotations; it has no login")


def open_app(args: argparse.Namespace):
    """The Starlette app for the arguments (the model loaded, the session restored from --out)."""
    from sam2_video.annotate.frames import FrameJPEGs
    from sam2_video.annotate.model import build_predictor
    from sam2_video.annotate.server import create_app
    from sam2_video.annotate.session import AnnotationSession
    from sam2_video.annotate.store import Store

    if not args.video.exists():
        raise UserInputError(f"VIDEO {args.video}: not found (expected a folder of frames or a video file)")
    check_not_inside_inputs(args.out, "--out", {"VIDEO": args.video})
    check_output_folder(args.out, "--out")
    device = resolve_device(args.device, "--device")
    predictor = build_predictor(args.checkpoint, args.config, args.image_size, device)
    frames = FrameJPEGs(args.video)
    session = AnnotationSession(predictor, args.video, Store(args.out, frames.names))
    return create_app(session, frames, args.video, args.out)


@contextlib.contextmanager
def serving(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` with uvicorn in a background thread (tests, benchmarks); yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True, name="annotate-server")
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the annotate server did not start on {host}:{port}")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    if args.port == 0:
        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
            probe.bind((args.host, 0))
            args.port = probe.getsockname()[1]
    warning = host_warning(args.host)
    if warning:
        print(warning, file=sys.stderr)
    app = open_app(args)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    server = uvicorn.Server(config)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"annotating {args.video} -> {args.out}; open http://{host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    server.run()
    return 0
