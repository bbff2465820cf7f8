"""Turning a device name from the command line or a config into a `torch.device` this machine has."""
from __future__ import annotations

import os

import torch

from sam2_video.errors import UserInputError


def available_devices() -> list[str]:
    """cpu, then cuda:0..N-1 and mps where this machine and torch build have them."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(name: str, option: str) -> torch.device:
    """`auto` -> this process's GPU (LOCAL_RANK under torchrun) when CUDA is available, else the CPU;
    cpu, cuda, cuda:N and mps when present. Anything else raises a UserInputError naming `option`
    (e.g. "--device") and the devices that exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    available = available_devices()
    try:
        device = torch.device(name)
    except RuntimeError:  # not a device name torch knows
        device = None
    if device is not None and (device.type == "cpu" or str(device) in available
                               or str(device) == "cuda" and torch.cuda.is_available()):
        return device
    raise UserInputError(f"{option} {name!r}: no such device here; available: auto, {', '.join(available)}")


def slow_bfloat16_warning(device: torch.device) -> str | None:
    """A warning when bfloat16 compute on `device` is emulated: CPUs without bf16 matrix units
    (AVX-512 BF16 / AMX; oneDNN reports which) run a bf16 matmul ~100x slower than a float32 one,
    which made tracking 5x slower on this project's AVX2 CPU. None where bf16 is fast."""
    if device.type != "cpu" or torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    return (f"warning: --dtype bfloat16 on this CPU ({torch.backends.cpu.get_cpu_capability()}, no bfloat16 "
            "matrix units) is emulated and several times slower than float32; use float32 here, "
            "bfloat16 on a GPU or a CPU with AVX-512 BF16 / AMX")
