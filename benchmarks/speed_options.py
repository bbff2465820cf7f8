"""Which speed options pay on this machine: `torch.compile` and bfloat16 autocast against eager
float32, on the two modules that take the time of video tracking: the image encoder (one frame)
and memory attention (3 objects, each reading 7 frames of spatial memory and 16 object pointers,
as in steady-state tracking), plus one bare 1024x256 by 256x2048 matrix product.

Random weights (speed does not depend on them), inference mode. Each variant runs `--warmup`
untimed calls first (compilation happens there; its time is printed), then the median of
`--repeats` timed calls. Issue 13 asks for `compile=True` only if it gives >= 1.15x, and for
bfloat16 a speed-up of >= 1.5x over float32.

    python benchmarks/speed_options.py --image-size 512 --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from sam2_video.model.build import build_sam2


def timed(call: Callable[[], object], warmup: int, repeats: int) -> tuple[float, float]:
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
    a, b = torch.randn(1024, 256), torch.randn(256, 2048)

    cases: dict[str, tuple[Callable[..., object], tuple, dict]] = {
        "matmul 1024x256 @ 256x2048": (torch.matmul, (a, b), {}),
        "image encoder, 1 frame": (model.image_encoder, (image,), {}),
        f"memory attention, {objects} objects": (
            model.memory_attention, (curr, memory, curr_pos, memory_pos), {"num_obj_ptr_tokens": pointer_tokens}),
    }
    print(f"{args.preset} at {args.image_size}, torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, oneDNN bf16 {torch.ops.mkldnn._is_mkldnn_bf16_supported()}, "
          f"{args.threads} threads, median of {args.repeats} after {args.warmup} warm-up calls")
    print(f"{'module':32} {'float32 ms':>11} {'compiled ms':>12} {'speed-up':>9} {'compile s':>10} "
          f"{'bf16 ms':>9} {'speed-up':>9}")
    with torch.inference_mode():
        for name, (function, call_args, kwargs) in cases.items():
            _, eager = timed(lambda: function(*call_args, **kwargs), args.warmup, args.repeats)
            compiled_function = torch.compile(function)
            compile_s, compiled = timed(lambda: compiled_function(*call_args, **kwargs), args.warmup, args.repeats)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                _, bf16 = timed(lambda: function(*call_args, **kwargs), 1, max(1, args.repeats // 2))
            print(f"{name:32} {eager:11.1f} {compiled:12.1f} {eager / compiled:8.2f}x {compile_s:10.0f} "
                  f"{bf16:9.1f} {eager / bf16:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
