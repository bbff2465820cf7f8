"""Does `torch.compile` pay on this machine? Eager against compiled, on the two modules that take
the time of video tracking: the image encoder (one frame) and memory attention (3 objects, each
reading 7 frames of spatial memory and 16 object pointers, as in steady-state tracking).

Random weights (speed does not depend on them), float32, inference mode. Each variant runs
`--warmup` untimed calls first (compilation happens there; its time is printed), then the median
of `--repeats` timed calls. Issue 13 asks for `compile=True` only if it gives >= 1.15x.

    python benchmarks/compile_speedup.py --image-size 512 --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from sam2_video.model.build import build_sam2


def median_ms(call: Callable[[], object], warmup: int, repeats: int) -> tuple[float, float]:
    """(seconds of the warm-up calls, median milliseconds of the timed calls)."""
    start = time.perf_counter()
    for _ in range(warmup):
        call()
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return warmup_s, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sam2.1_hiera_t")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_sam2(args.preset, image_size=args.image_size)

    side = args.image_size // 16
    objects, memories, pointer_tokens = 3, 7, 16 * (model.hidden_dim // model.mem_dim)
    image = torch.randn(1, 3, args.image_size, args.image_size)
    curr = torch.randn(side * side, 1, model.hidden_dim).expand(-1, objects, -1)
    curr_pos = torch.randn(side * side, 1, model.hidden_dim).expand(-1, objects, -1)
    memory = torch.randn(memories * side * side + pointer_tokens, objects, model.mem_dim)
    memory_pos = torch.randn_like(memory)

    cases = {
        "image encoder, 1 frame": (model.image_encoder, (image,), {}),
        f"memory attention, {objects} objects": (
            model.memory_attention, (curr, memory, curr_pos, memory_pos), {"num_obj_ptr_tokens": pointer_tokens}),
    }
    print(f"{args.preset} at {args.image_size}, torch {torch.__version__}, {args.threads} threads, "
          f"median of {args.repeats} after {args.warmup} warm-up calls")
    print(f"{'module':32} {'eager ms':>9} {'compiled ms':>12} {'speed-up':>9} {'compile warm-up s':>18}")
    with torch.inference_mode():
        for name, (module, call_args, kwargs) in cases.items():
            _, eager = median_ms(lambda: module(*call_args, **kwargs), args.warmup, args.repeats)
            compiled_module = torch.compile(module)
            warmup_s, compiled = median_ms(lambda: compiled_module(*call_args, **kwargs), args.warmup, args.repeats)
            print(f"{name:32} {eager:9.0f} {compiled:12.0f} {eager / compiled:8.2f}x {warmup_s:18.0f}", flush=True)


if __name__ == "__main__":
    main()
