"""`sam2-video` command line: demo, train, export, predict, evaluate, annotate.

Each sub-command lives next to the code it drives and exposes `add_arguments(parser)` and
`run(args) -> int`; this file only wires them together.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from sam2_video.errors import UserInputError

# sub-command -> (module, one-line help)
COMMANDS = {
    "demo": ("sam2_video.demo", "generate synthetic videos, fine-tune a tiny model, report J&F before/after"),
    "train": ("sam2_video.train.cli", "fine-tune from a YAML config: sam2-video train --config FILE [key=value ...]"),
    "export": ("sam2_video.train.export_cli", "write a training checkpoint's model in the official SAM2 format"),
    "predict": ("sam2_video.predict.cli", "segment a frame folder or .mp4 from first-frame masks or clicks"),
    "evaluate": ("sam2_video.evaluate.cli", "DAVIS J&F of predicted masks against ground truth"),
    "annotate": ("sam2_video.annotate.cli", "a local browser page to click, propagate, correct and export masks"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam2-video", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `train --config X --resume key=value`: overrides given after a flag are still overrides
    if extra and hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C: what was written is complete (atomic writes); no traceback
        print(f"sam2-video {args.command}: interrupted", file=sys.stderr)
        return 130
    except UserInputError as err:
        message = str(err)
    except OSError as err:  # the system refused: a missing or read-only path, a folder for a file, disk full...
        if err.filename is None and err.errno is None and not isinstance(err, FileNotFoundError):
            raise  # no path and no system error number: a bug, keep its traceback
        message = _describe_os_error(err)
    print(f"sam2-video {args.command}: error: {message}", file=sys.stderr)
    return 2


def _describe_os_error(err: OSError) -> str:
    """`path: reason` (`source -> target: reason` for a rename), or the reason alone without a path."""
    if err.filename is None:
        return err.strerror or str(err)
    path = str(err.filename) if err.filename2 is None else f"{err.filename} -> {err.filename2}"
    return f"{path}: {err.strerror}"


if __name__ == "__main__":
    sys.exit(main())
