"""Parameter-efficient transfer: train a small, chosen part of the body (the new head always trains).

Each ``apply_*`` takes a body (timm model without classifier, or torchvision), sets ``requires_grad`` so that
only the method's parameters train, and returns a ``bench.models.freeze.FreezePlan``:

- ``apply_bitfit``: BitFit (Ben Zaken, Ravfogel and Goldberg, "BitFit: Simple Parameter-efficient Fine-tuning
  for Transformer-based Masked Language-models", ACL 2022): every bias trains (a parameter named ``bias`` or
  ``*.bias``). In a BatchNorm CNN whose convolutions have no bias, that is the norm layers' biases.
- ``apply_norm``: norm-only tuning: the affine parameters (weight and bias) of every normalisation layer
  train: BatchNorm / InstanceNorm (``_NormBase``), LayerNorm, GroupNorm, RMSNorm, and timm's norm layers (its
  ``BatchNormAct2d``, ``LayerNorm2d``, ``GroupNorm1`` ... subclass those; its ``RmsNorm*`` / ``SimpleNorm*`` are
  listed). timm's EvoNorm and FilterResponseNorm (norm + activation in one) are not counted as norm layers.
- ``apply_lora``: LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022), in a few
  lines of our own: every ``nn.Linear`` of the body (in a ViT: ``qkv``, ``proj``, ``fc1``, ``fc2`` of each block)
  and every 1x1 ``nn.Conv2d`` with ``groups == 1`` (the point-wise convolutions of a CNN) becomes
  ``base(x) + (alpha / rank) * up(down(x))``, ``base`` the frozen original, ``down`` kaiming-uniform and ``up``
  zero, so the body computes exactly its original function until the first step. Only ``down`` and ``up``
  train; everything else is frozen. Linear layers inside ``nn.MultiheadAttention`` (torchvision's ViT) are left
  alone: that module reads their weights directly and never calls them.

The plan: ``n_groups`` is the number of ``parameter_groups(body)`` after the change (LoRA keeps timm's
grouping: a wrapped layer's parameters are ``<layer>.base.weight``, ``<layer>.down.weight``,
``<layer>.up.weight``, under the same prefix), ``n_frozen_groups`` the number of *leading* (input-side) groups
without any trainable parameter, which the prefix cache (``bench.speedups.prefix``) may compute once;
``frozen_params`` the frozen elements of the body and ``backbone_params`` all of them, adapters included.
Random numbers come from torch's global RNG (seeded by the trial before).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import timm.layers
import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from bench.models.freeze import FreezePlan, freeze_plan

NORM_TYPES: tuple[type[nn.Module], ...] = (
    _NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    *(
        getattr(timm.layers, name)
        for name in ("RmsNorm", "RmsNorm2d", "RmsNormFp32", "RmsNorm2dFp32", "SimpleNorm", "SimpleNorm2d")
        if hasattr(timm.layers, name)
    ),
)


class LoRA(nn.Module):
    """``base(x) + scale * up(down(x))``: a frozen Linear or 1x1 Conv2d with a trainable low-rank update."""

    def __init__(self, base: nn.Linear | nn.Conv2d, rank: int, alpha: float) -> None:
        super().__init__()
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.base = base
        if isinstance(base, nn.Linear):
            self.down: nn.Module = nn.Linear(base.in_features, rank, bias=False, **like)
            self.up: nn.Module = nn.Linear(rank, base.out_features, bias=False, **like)
        else:  # a 1x1 convolution: the same update per pixel, at the base's stride and padding
            self.down = nn.Conv2d(
                base.in_channels, rank, 1, stride=base.stride, padding=base.padding, bias=False, **like
            )
            self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False, **like)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))  # as the LoRA reference code and `peft`
        nn.init.zeros_(self.up.weight)
        self.scale = alpha / rank
        base.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.up(self.down(x))


def _is_lora_target(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1


def _train_only(body: nn.Module, trains: Callable[[str, nn.Parameter], bool]) -> FreezePlan:
    """Set ``requires_grad`` by ``trains(name, param)`` and describe the result as a plan."""
    for name, param in body.named_parameters():
        param.requires_grad_(trains(name, param))
    return freeze_plan(body)


def trainable_summary(body: nn.Module) -> dict[str, int]:
    """Element counts: ``trainable``, ``frozen`` and ``total``, and ``tensors_trainable`` (parameter tensors)."""
    params = list(body.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    return {
        "trainable": trainable,
        "frozen": total - trainable,
        "total": total,
        "tensors_trainable": sum(1 for p in params if p.requires_grad),
    }


def apply_bitfit(body: nn.Module) -> FreezePlan:
    """BitFit: only bias terms train."""
    return _train_only(body, lambda name, _: name == "bias" or name.endswith(".bias"))


def apply_norm(body: nn.Module) -> FreezePlan:
    """Only the affine parameters of normalisation layers train."""
    norm_params = {
        id(param)
        for module in body.modules()
        if isinstance(module, NORM_TYPES)
        for param in module.parameters(recurse=False)
    }
    return _train_only(body, lambda _, param: id(param) in norm_params)


def apply_lora(body: nn.Module, rank: int = 8, alpha: float | None = None) -> FreezePlan:
    """LoRA of rank ``rank`` (scale ``alpha / rank``, 1 by default) on every Linear and 1x1 Conv2d; the rest frozen."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    alpha = float(rank if alpha is None else alpha)
    body.requires_grad_(False)
    skip = {id(m) for mha in body.modules() if isinstance(mha, nn.MultiheadAttention) for m in mha.modules()}
    targets = [
        (name, module)
        for name, module in body.named_modules()
        if name and _is_lora_target(module) and id(module) not in skip
    ]  # listed first: replacing while iterating named_modules would visit the wrappers too
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = body.get_submodule(parent_name) if parent_name else body
        setattr(parent, child, LoRA(module, rank, alpha))
    return freeze_plan(body)
