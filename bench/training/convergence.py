"""Convergence, measured: whether a trial's validation curve levelled off, early stopping on a plateau, and the
weights of the best evaluation.

``converged`` is the row's rule, a pure function of the validation curve. ``Plateau`` ends a phase after
``patience`` evaluations without a gain (``train.early_stop``). ``BestWeights`` keeps a copy of the weights of
the best evaluation so far, on the trial's device, and puts them back before the test evaluation
(``train.keep_best``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

CONVERGENCE_WINDOW = 3  # the last evaluations the rule looks at
CONVERGENCE_TOLERANCE = 1.0  # validation top-1 points they may spread over


def converged(val_top1: Sequence[float], *, stopped_on_plateau: bool = False) -> bool:
    """Whether a validation curve (top-1 in percent, one value per evaluation, in order) has converged.

    True when the trial ended on a validation plateau (``stopped_on_plateau``), or when its last
    ``CONVERGENCE_WINDOW`` evaluations lie within ``CONVERGENCE_TOLERANCE`` points of each other (max - min)
    and none of the last ``CONVERGENCE_WINDOW - 1`` is a new best (above every evaluation before it): the curve
    is flat and no longer rising. False with fewer than ``CONVERGENCE_WINDOW`` evaluations. Raises ValueError
    for a value that is not a finite number."""
    values = [float(v) for v in val_top1]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"validation top-1 values must be finite numbers, got {values}")
    if stopped_on_plateau:
        return True
    if len(values) < CONVERGENCE_WINDOW:
        return False
    window = values[-CONVERGENCE_WINDOW:]
    flat = max(window) - min(window) <= CONVERGENCE_TOLERANCE
    best_before = max(values[: len(values) - CONVERGENCE_WINDOW + 1])
    return flat and max(values[len(values) - CONVERGENCE_WINDOW + 1 :]) <= best_before


@dataclass
class Plateau:
    """Early stopping of one phase: it ends once ``patience`` evaluations in a row brought no validation top-1
    more than ``min_delta`` points above the phase's best so far (the first evaluation always counts as a gain).
    Raises ValueError for a ``patience`` below 1 or a negative ``min_delta``."""

    patience: int
    min_delta: float = 0.0
    best: float = -math.inf
    without_gain: int = 0

    def __post_init__(self) -> None:
        if self.patience < 1 or self.min_delta < 0:
            raise ValueError(
                f"early stop needs patience >= 1 and min_delta >= 0, got {self.patience}, {self.min_delta}"
            )

    def reached(self, top1: float | None) -> bool:
        """Take the next evaluation's ``top1`` (None: no validation split, never a plateau); whether the phase
        ends here."""
        if top1 is None:
            return False
        if top1 > self.best + self.min_delta:
            self.best, self.without_gain = top1, 0
        else:
            self.without_gain += 1
        return self.without_gain >= self.patience


class BestWeights:
    """A copy of the weights (parameters and buffers) of the trial's best validation evaluation so far, kept on
    the tensors' own device.

    Only what a phase trains is copied: ``watch`` each phase's trained model before the phase runs (the head
    alone on the cached-features path, the unfrozen part and the head on the prefix path, the whole model on the
    plain one). A tensor no phase watched was never trained, so it still holds the best evaluation's value. A
    tensor first watched after the best was copied is copied at once: no phase had trained it since."""

    def __init__(self) -> None:
        self._live: dict[int, torch.Tensor] = {}  # id -> the model's own tensor
        self._copy: dict[int, torch.Tensor] = {}
        self.evaluation: int | None = None  # 1-based index of the kept evaluation among the trial's evaluations
        self.top1 = -math.inf

    @torch.no_grad()
    def watch(self, model: nn.Module) -> None:
        """Cover the tensors ``model`` holds (call before training it)."""
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            if id(tensor) not in self._live:
                self._live[id(tensor)] = tensor
                if self.evaluation is not None:
                    self._copy[id(tensor)] = tensor.detach().clone()

    @torch.no_grad()
    def offer(self, top1: float | None, evaluation: int) -> None:
        """Keep the watched weights as they are now when ``top1`` beats the best kept so far (the earlier
        evaluation wins a tie); ``evaluation``: its 1-based index among the trial's evaluations."""
        if top1 is None or top1 <= self.top1:
            return
        for key, tensor in self._live.items():
            if key in self._copy:
                self._copy[key].copy_(tensor)
            else:
                self._copy[key] = tensor.detach().clone()
        self.top1, self.evaluation = top1, evaluation

    @torch.no_grad()
    def restore(self) -> None:
        """Put the kept weights back into the model's tensors. Raises ValueError when nothing was kept."""
        if self.evaluation is None:
            raise ValueError("no evaluation was kept: nothing to restore")
        for key, tensor in self._live.items():
            tensor.copy_(self._copy[key])
