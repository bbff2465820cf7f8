"""`sam2-video evaluate --gt DIR --pred DIR [--csv FILE]`: DAVIS J&F of predicted masks."""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from sam2_video.evaluate.davis import evaluate_davis
from sam2_video.io import atomic_path, check_output_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, type=Path,
                        help="ground-truth masks: <sequence>/<frame>.png (a DAVIS root with Annotations/ works too)")
    parser.add_argument("--pred", required=True, type=Path,
                        help="predicted masks in the same layout and with the same frame names")
    parser.add_argument("--sequences", nargs="+", metavar="NAME", help="score only these sequences")
    parser.add_argument("--csv", type=Path, help="also write the per-object, per-sequence and dataset rows here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --csv file")


def run(args: argparse.Namespace) -> int:
    if args.csv is not None:
        check_output_file(args.csv, "--csv", args.overwrite)
    result = evaluate_davis(args.gt, args.pred, sequences=args.sequences)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(result.format_table())
    if args.csv is not None:
        rows = result.rows()
        with atomic_path(args.csv) as tmp:
            with open(tmp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        print(f"wrote {args.csv}")
    return 0
