"""Transfer strategies: the registry of named ways to train a pretrained body, and how a phase applies one.

A grid's ``freeze`` value is a number in [0, 1] (freeze the first groups of the body: ``bench.models.freeze``) or
the name of a registered strategy. The built-in ones register here through the same ``STRATEGIES.add`` as a
plug-in's: ``linear_probe`` (depth 1), ``full`` (depth 0), ``lp_ft`` (Kumar et al. 2022: a linear probe, then
full fine-tuning), and the parameter-efficient ``bitfit``, ``norm`` and ``lora`` (``bench.models.peft``), each
with the new head trained. A strategy's ``depth`` places it on the freeze-depth axis of the report where it is
one (None for the parameter-efficient ones, which train a little of every group); ``probe_first`` gives it an
LP-FT first phase. This module imports no torch until a strategy is applied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.plugins import Registry

if TYPE_CHECKING:
    from torch import nn

    from bench.models.freeze import FreezePlan


@dataclass(frozen=True)
class Strategy:
    """What a named strategy trains. ``apply(body)`` sets ``requires_grad`` on the body's parameters (it may add
    modules, as LoRA does) and returns the plan the row records; None: freeze the body to ``depth``."""

    description: str
    depth: float | None = None  # its place on the freeze-depth axis (0 = everything trains ... 1 = head only)
    apply: Callable[[nn.Module], FreezePlan] | None = None
    probe_first: bool = False  # first half of the steps a linear probe at probe_lr, then this strategy


STRATEGIES: Registry[Strategy] = Registry("strategy")


def strategy_names() -> list[str]:
    return STRATEGIES.names()


def strategy_depth(name: str) -> float | None:
    """The freeze depth a strategy ends at (None: not a depth, or not registered)."""
    entry = STRATEGIES.get(name)
    return None if entry is None else entry.depth


def probes_first(name: str) -> bool:
    """Whether ``name`` (a strategy, or ``partial``) starts with a linear-probe phase, as LP-FT does."""
    entry = STRATEGIES.get(name)
    return entry is not None and entry.probe_first


def holds_frozen_features(strategy: str, *, feature_cache: bool, augment: str) -> bool:
    """Whether a trial of ``strategy`` trains on frozen features it holds in memory: a linear probe, or a
    strategy that probes first, with the feature cache on and no augmentation (``bench.training.phases``)."""
    return (strategy == "linear_probe" or probes_first(strategy)) and feature_cache and augment == "none"


def apply_phase(body: nn.Module, trains: float | str) -> FreezePlan:
    """Set what a phase trains: a freeze depth, or a registered strategy's own choice."""
    from bench.models.freeze import apply_freeze

    if isinstance(trains, str):
        entry = STRATEGIES[trains]
        if entry.apply is not None:
            return entry.apply(body)
        assert entry.depth is not None, f"strategy {trains!r} has neither apply nor depth"
        trains = entry.depth
    return apply_freeze(body, trains)


def _bitfit(body: nn.Module) -> FreezePlan:
    from bench.models.peft import apply_bitfit

    return apply_bitfit(body)


def _norm(body: nn.Module) -> FreezePlan:
    from bench.models.peft import apply_norm

    return apply_norm(body)


def _lora(body: nn.Module) -> FreezePlan:
    from bench.models.peft import apply_lora

    return apply_lora(body)


STRATEGIES.add("linear_probe", Strategy("the new head only, on frozen features (feature extraction)", depth=1.0))
STRATEGIES.add("full", Strategy("every parameter (full fine-tuning)", depth=0.0))
STRATEGIES.add(
    "lp_ft", Strategy("linear probe, then full fine-tuning (Kumar et al. 2022)", depth=0.0, probe_first=True)
)
STRATEGIES.add("bitfit", Strategy("biases only, and the head (BitFit, Ben Zaken et al. 2022)", apply=_bitfit))
STRATEGIES.add("norm", Strategy("normalisation layers' scales and shifts only, and the head", apply=_norm))
STRATEGIES.add(
    "lora",
    Strategy("rank-8 LoRA adapters on linear and 1x1 convolution layers, and the head (Hu et al. 2022)", apply=_lora),
)
