"""The Starlette app of `sam2-video annotate`: the page (static/), frames as JPEG, masks as palettized
PNG and a small JSON API. Files are only ever named by frame index, so nothing outside VIDEO and DIR
can be reached; a request path with `..`, a backslash or an encoded slash is refused (400) before
routing. Bodies are validated: a bad request gets 4xx with {"error": message}, the server keeps running.

    GET  /api/session                 video size, objects, prompts, frames with masks
    GET  /api/status?since=V          propagation progress and the frames whose mask changed after V
    GET  /api/frames/{i}.jpg          frame i
    GET  /api/masks/{i}.png           object ids of frame i (404: no mask yet)
    POST /api/objects {name?}         add an object        PATCH/DELETE /api/objects/{id} {name?, hidden?}
    POST /api/click {frame, obj_id, x, y, label}           POST /api/box {frame, obj_id, box}
    POST /api/undo                    POST /api/clear {frame, obj_id}
    POST /api/propagate {frame, direction}                 POST /api/cancel
    POST /api/export
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from sam2_video.annotate.export import export_session
from sam2_video.annotate.frames import FrameJPEGs
from sam2_video.annotate.propagation import Propagation
from sam2_video.annotate.session import AnnotationSession, Busy, NotFound
from sam2_video.annotate.store import Action
from sam2_video.errors import UserInputError

STATIC = Path(__file__).parent / "static"
NO_STORE = {"Cache-Control": "no-store"}
JSON_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}


class PathGuard:
    """ASGI middleware: 400 for request paths that try to leave the app's namespace."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path", b"").decode("latin-1").split("?")[0] or scope["path"]
            decoded = unquote(unquote(raw))
            if ".." in decoded.split("/") or "\\" in decoded or "\x00" in decoded or "%2f" in raw.lower() \
                    or "//" in decoded:
                response = JSONResponse({"error": f"request path {raw!r} is refused: it names a location outside "
                                                  "the page's files (.., an encoded slash or a backslash)"}, 400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)


async def _body(request: Request, fields: dict[str, type | tuple[type, ...]], optional: tuple[str, ...] = ()) -> dict:
    """The request's JSON object with exactly `fields` (those in `optional` may be missing), typed."""
    try:
        body = json.loads(await request.body() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"{request.url.path}: the body is not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise UserInputError(f"{request.url.path}: expected a JSON object with {', '.join(fields) or 'no fields'}")
    unknown = set(body) - set(fields)
    if unknown:
        raise UserInputError(f"{request.url.path}: unknown fields {sorted(unknown)} (expected {', '.join(fields)})")
    for name, kind in fields.items():
        if name not in body:
            if name in optional:
                continue
            raise UserInputError(f"{request.url.path}: missing field {name!r}")
        value, kinds = body[name], kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            expected = JSON_NAMES[float] if float in kinds else " or ".join(JSON_NAMES[k] for k in kinds)
            raise UserInputError(f"{request.url.path}: {name} must be {expected}, got {value!r}")
    return body


def create_app(session: AnnotationSession, frames: FrameJPEGs, video: Path, out: Path) -> Starlette:
    """The app serving one session (see the module docstring)."""
    propagation = Propagation(session)
    number = (float, int)

    def frame_index(request: Request) -> int:
        frame = request.path_params["frame"]
        if not 0 <= frame < session.num_frames:
            raise NotFound(f"frame {frame} is out of range: the video has {session.num_frames} frames")
        return frame

    def endpoint(handler: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                result = await handler(request)
            except NotFound as err:
                return _error(404, str(err))
            except Busy as err:
                return _error(409, str(err))
            except UserInputError as err:
                return _error(400, str(err))
            return result if isinstance(result, Response) else JSONResponse(result, headers=NO_STORE)
        return wrapped

    def since(request: Request, default: int = 0) -> int:
        value = request.query_params.get("since", str(default))
        if not value.isdigit():
            raise UserInputError(f"since={value!r}: expected a version number")
        return int(value)

    async def edited(request: Request, edit: Callable[..., Any], *args: Any) -> dict:
        """Run an edit; it returns the new version and the frames whose masks changed after ?since=
        (default: those the edit changed)."""
        before = session.version
        result = await run_in_threadpool(edit, *args)
        extra = {"frame": result.frame, "obj_id": result.obj_id} if isinstance(result, Action) else {}
        return {**extra, "version": session.version, "changed": session.changed_since(since(request, before))}

    async def get_session(request: Request) -> dict:
        return {**await run_in_threadpool(session.snapshot), "status": propagation.status()}

    async def get_status(request: Request) -> dict:
        return {**propagation.status(), "version": session.version, "changed": session.changed_since(since(request))}

    async def get_frame(request: Request) -> Response:
        jpeg = await run_in_threadpool(frames.jpeg, frame_index(request))
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    async def get_mask(request: Request) -> Response:
        frame = frame_index(request)
        if frame not in session.frame_versions:
            raise NotFound(f"frame {frame} has no mask yet")
        return FileResponse(session.store.mask_path(frame), media_type="image/png", headers=NO_STORE)

    async def add_object(request: Request) -> dict:
        body = await _body(request, {"name": str}, optional=("name",))
        info = await run_in_threadpool(session.add_object, body.get("name"))
        return vars(info)

    async def update_object(request: Request) -> dict:
        body = await _body(request, {"name": str, "hidden": bool}, optional=("name", "hidden"))
        info = await run_in_threadpool(session.update_object, request.path_params["obj_id"], body.get("name"),
                                       body.get("hidden"))
        return vars(info)

    async def delete_object(request: Request) -> dict:
        return await edited(request, session.delete_object, request.path_params["obj_id"])

    async def click(request: Request) -> dict:
        body = await _body(request, {"frame": int, "obj_id": int, "x": number, "y": number, "label": int})
        if body["label"] not in (0, 1):
            raise UserInputError(f"label must be 1 (object) or 0 (background), got {body['label']}")
        return await edited(request, session.click, body["frame"], body["obj_id"], float(body["x"]),
                            float(body["y"]), body["label"])

    async def box(request: Request) -> dict:
        body = await _body(request, {"frame": int, "obj_id": int, "box": list})
        corners = body["box"]
        if len(corners) != 4 or not all(isinstance(v, number) and not isinstance(v, bool) for v in corners) \
                or corners[0] >= corners[2] or corners[1] >= corners[3]:
            raise UserInputError(f"box must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1, got {corners!r}")
        return await edited(request, session.box, body["frame"], body["obj_id"], tuple(float(v) for v in corners))

    async def undo(request: Request) -> dict:
        await _body(request, {})
        return await edited(request, session.undo)

    async def clear(request: Request) -> dict:
        body = await _body(request, {"frame": int, "obj_id": int})
        return await edited(request, session.clear, body["frame"], body["obj_id"])

    async def propagate(request: Request) -> JSONResponse:
        body = await _body(request, {"frame": int, "direction": str})
        await run_in_threadpool(propagation.start, body["frame"], body["direction"])
        return JSONResponse(propagation.status(), 202)

    async def cancel(request: Request) -> dict:
        await run_in_threadpool(propagation.cancel)
        return propagation.status()

    async def export(request: Request) -> dict:
        await _body(request, {})
        if session.busy:
            raise Busy("a propagation is running: export when it has ended")
        return await run_in_threadpool(export_session, session, video, out, frames.names)

    async def index(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=NO_STORE)

    routes = [
        Route("/", index),
        Route("/api/session", endpoint(get_session)),
        Route("/api/status", endpoint(get_status)),
        Route("/api/frames/{frame:int}.jpg", endpoint(get_frame)),
        Route("/api/masks/{frame:int}.png", endpoint(get_mask)),
        Route("/api/objects", endpoint(add_object), methods=["POST"]),
        Route("/api/objects/{obj_id:int}", endpoint(update_object), methods=["PATCH"]),
        Route("/api/objects/{obj_id:int}", endpoint(delete_object), methods=["DELETE"]),
        Route("/api/click", endpoint(click), methods=["POST"]),
        Route("/api/box", endpoint(box), methods=["POST"]),
        Route("/api/undo", endpoint(undo), methods=["POST"]),
        Route("/api/clear", endpoint(clear), methods=["POST"]),
        Route("/api/propagate", endpoint(propagate), methods=["POST"]),
        Route("/api/cancel", endpoint(cancel), methods=["POST"]),
        Route("/api/export", endpoint(export), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(PathGuard)
    app.state.propagation = propagation
    return app
