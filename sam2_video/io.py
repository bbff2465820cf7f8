"""Writing outputs safely: atomic file writes (outputs appear whole or not at all) and the checks made
before a command writes anything (the location is writable, of the right kind, and not an input folder)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from sam2_video.errors import UserInputError


def _default_file_mode() -> int:
    """0o666 minus the process umask: the mode `open(path, "w")` would have given the file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`.

    On error the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _default_file_mode())
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    return path


def _check_can_write_in(folder: Path, option: str, path: Path) -> None:
    """`folder` can be made (no file in the way) and written, tried with a nameless temporary file in its
    nearest existing ancestor (permission bits say nothing for root or on read-only or virtual file systems)."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise UserInputError(f"{option} {path}: {existing} is a file, so no folder can be made under it")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UserInputError(f"{option} {path}: cannot write in {existing} ({err.strerror})") from None


def check_output_folder(path: str | os.PathLike, option: str) -> None:
    """Refuse `path` as an output folder before anything is written: it is a file, lies under a file,
    or cannot be made or written. The message names `option` (e.g. "--out") and the path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserInputError(f"{option} {path}: is a file, expected a folder")
    _check_can_write_in(path, option, path)


def check_output_file(path: str | os.PathLike, option: str, overwrite: bool = False) -> None:
    """Refuse `path` as an output file before anything is written: it is a folder, it exists and
    `overwrite` is false, or its folder cannot be made or written."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{option} {path}: is a folder, expected a file name")
    if path.exists() and not overwrite:
        raise UserInputError(f"{option} {path}: the file exists; nothing was written (choose another name "
                             "or pass --overwrite)")
    _check_can_write_in(path.parent, option, path)


def check_not_inside_inputs(output: str | os.PathLike, option: str, inputs: dict[str, str | os.PathLike | None]) -> None:
    """Refuse an output that is one of the `inputs` ({option: path}) or lies inside an input folder,
    whatever the other flags say: writing there would replace the user's own files."""
    out = Path(os.path.realpath(output))
    for input_option, input_path in inputs.items():
        if input_path is None or not Path(input_path).exists():
            continue
        given = Path(os.path.realpath(input_path))
        if out == given or (given.is_dir() and given in out.parents):
            raise UserInputError(f"{option} {output} would write into {input_option} {input_path}: outputs never "
                                 "replace inputs, whatever the flags; choose another location")
