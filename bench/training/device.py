"""Where a trial runs: the device, its name in the result row, its peak memory, and out-of-memory errors."""

from __future__ import annotations

import platform

import torch

from bench.utils import memory


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA where there is a card, else the CPU. A CUDA device always carries its index (Ray sets
    CUDA_VISIBLE_DEVICES, so it is the trial's own card): some torch.cuda calls refuse a bare ``cuda``."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's "can't allocate memory" RuntimeError."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "allocate memory" in str(error)
    )


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated by torch on the device. CPU: peak resident set size of this process since the
    trial started (``bench.utils.memory``)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return memory.peak_rss_mb()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
