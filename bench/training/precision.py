"""The arithmetic bench computes in, decided in one place: bf16 autocast on CUDA (weights, optimiser state and
the loss stay fp32), fp32 elsewhere. Training, evaluation, frozen features and the result row's ``precision``
column all ask here."""

from __future__ import annotations

import torch


def uses_bf16(device: torch.device) -> bool:
    return device.type == "cuda"


def autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device))


def name(device: torch.device) -> str:
    """The row's ``precision`` column."""
    return "bf16 autocast" if uses_bf16(device) else "fp32"
