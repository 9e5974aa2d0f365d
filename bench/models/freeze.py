"""Freeze depth, uniform across architectures.

A backbone's parameters are ordered into groups from input to output: stem -> blocks -> pre-logits. timm models
describe that order themselves (``group_matcher``, the same mechanism timm uses for layer-wise LR decay); for
others (torchvision) a prefix rule stands in: a group is a top-level child, or ``<child>.<index>`` for the
blocks of a Sequential / ModuleList, taken in registration order.

``freeze = f`` freezes the first ``round(f * n_groups)`` groups: 0 trains everything, 1 trains only the new
head (linear probe / feature extraction). Frozen modules are kept in eval mode during training, so frozen
BatchNorm layers neither update their running statistics nor normalise with batch statistics, and dropout /
drop-path in frozen blocks is off: the frozen part is a fixed function of its input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from timm.models import group_parameters
from torch import nn

_INDEXED = re.compile(r"^(.*?[._]\d+)(?:\.|$)")  # "layer1.0.conv1.weight" -> "layer1.0"


@dataclass(frozen=True)
class FreezePlan:
    """What was frozen: the numbers every result row records."""

    n_groups: int
    n_frozen_groups: int
    frozen_params: int  # parameter count (elements), backbone only
    backbone_params: int

    @property
    def frozen_param_fraction(self) -> float:
        return self.frozen_params / self.backbone_params if self.backbone_params else 0.0


def parameter_groups(body: nn.Module) -> list[list[str]]:
    """The body's parameter names in groups, ordered input -> output."""
    names = [name for name, _ in body.named_parameters()]
    matcher = getattr(body, "group_matcher", None)
    if callable(matcher):
        try:
            grouped = group_parameters(body, matcher(coarse=False))
        except (NotImplementedError, AttributeError):
            grouped = None
        if grouped:
            groups = [list(group) for _, group in sorted(grouped.items())]
            if sorted(n for g in groups for n in g) == sorted(names):
                return groups
    return _prefix_groups(names)


def _prefix_groups(names: list[str]) -> list[list[str]]:
    """Fallback ordering: contiguous runs of the same block prefix, in registration order."""
    groups: list[list[str]] = []
    previous = None
    for name in names:
        match = _INDEXED.match(name)
        key = match.group(1) if match else name.split(".", 1)[0]
        if key != previous:
            groups.append([])
            previous = key
        groups[-1].append(name)
    return groups


def apply_freeze(body: nn.Module, fraction: float) -> FreezePlan:
    """Set ``requires_grad`` on the body's parameters for a freeze depth in [0, 1]."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"freeze fraction must be in [0, 1], got {fraction}")
    groups = parameter_groups(body)
    frozen_names = {name for group in groups[: round(fraction * len(groups))] for name in group}
    for name, param in body.named_parameters():
        param.requires_grad_(name not in frozen_names)
    return freeze_plan(body, groups)


def freeze_plan(body: nn.Module, groups: list[list[str]] | None = None) -> FreezePlan:
    """The plan of a body as its ``requires_grad`` flags stand (whoever set them: a freeze depth, a strategy):
    the leading groups (``groups``, default ``parameter_groups(body)``) with nothing trainable, and element
    counts."""
    groups = parameter_groups(body) if groups is None else groups
    params = dict(body.named_parameters())
    trains = [any(params[name].requires_grad for name in group) for group in groups]
    n_frozen = trains.index(True) if True in trains else len(groups)
    frozen = sum(p.numel() for p in params.values() if not p.requires_grad)
    total = sum(p.numel() for p in params.values())
    return FreezePlan(n_groups=len(groups), n_frozen_groups=n_frozen, frozen_params=frozen, backbone_params=total)


def frozen_modules(model: nn.Module) -> Iterator[nn.Module]:
    """The largest submodules whose parameters are all frozen (modules without parameters are skipped,
    except inside a frozen parent, where they freeze with it)."""
    params = list(model.parameters(recurse=True))
    if params and not any(p.requires_grad for p in params):
        yield model
        return
    for child in model.children():
        yield from frozen_modules(child)


def set_train_mode(model: nn.Module, frozen: Iterable[nn.Module] | None = None) -> None:
    """``model.train()``, then frozen parts back to eval (BatchNorm statistics and dropout stay fixed).
    ``frozen``: ``list(frozen_modules(model))`` when the caller holds it (a training loop, once per phase)."""
    model.train()
    for module in frozen_modules(model) if frozen is None else frozen:
        module.eval()
