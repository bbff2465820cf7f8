"""Propagation in a background thread, with progress for the page and a cancel that stops it between frames."""
from __future__ import annotations

import threading
import traceback

from sam2_video.annotate.session import AnnotationSession, Busy
from sam2_video.errors import UserInputError

DIRECTIONS = {"forward": (False,), "backward": (True,), "both": (False, True)}


class Propagation:
    """Runs `session.propagate` over one or both directions from a start frame while holding the
    session's lock (edits get `Busy` meanwhile); `status()` is what the page polls."""

    def __init__(self, session: AnnotationSession):
        self.session = session
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self.direction = ""
        self.done = self.total = 0
        self.message = ""  # why the last propagation stopped early, if it did

    def start(self, start: int, direction: str) -> None:
        """Begin propagating from frame `start` in `direction` (forward, backward or both)."""
        session = self.session
        if direction not in DIRECTIONS:
            raise UserInputError(f"direction {direction!r}: expected one of {', '.join(DIRECTIONS)}")
        if session.busy:  # before the lock, which the running propagation holds
            raise Busy("a propagation is already running")
        with session.lock:
            if session.busy:
                raise Busy("a propagation is already running")
            session.check_frame(start)
            if not session.state["obj_ids"]:
                raise UserInputError("nothing to propagate: click on an object first")
            reverses = DIRECTIONS[direction]
            self.direction, self.done, self.message = direction, 0, ""
            self.total = sum(start + 1 if reverse else session.num_frames - start for reverse in reverses)
            self._cancel.clear()
            session.busy = True
            self._thread = threading.Thread(target=self._run, args=(start, reverses), daemon=True,
                                            name="annotate-propagation")
            self._thread.start()

    def _run(self, start: int, reverses: tuple[bool, ...]) -> None:
        session = self.session
        with session.lock:
            try:
                for reverse in reverses:
                    for _ in session.propagate(start, reverse):
                        self.done += 1
                        if self._cancel.is_set():
                            self.message = f"cancelled after {self.done} of {self.total} frames"
                            return
            except Exception as err:  # the page shows it; the server keeps running
                self.message = f"propagation failed: {err}"
                if not isinstance(err, UserInputError):
                    traceback.print_exc()
            finally:
                session.busy = False

    def cancel(self, timeout: float = 120.0) -> None:
        """Stop after the frame being tracked; returns once the thread has ended."""
        self._cancel.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self) -> dict:
        running = self.session.busy
        if running:
            text = f"propagating {self.direction}: {self.done}/{self.total} frames"
        else:
            text = "ready"
        return {"running": running, "text": text, "done": self.done, "total": self.total,
                "direction": self.direction, "message": self.message}
