"""``train.batch_size: auto``: the largest power-of-two batch that fits the trial's share of the card.

A GPU trial that leaves most of its memory empty wastes the card; one that asks for too much dies. With
``auto`` the core probes before training: one forward and backward pass of the trial's model (the plain path,
every trainable layer, bf16 autocast as in training) at 16, 32, 64, ... images, until the peak memory plus the
optimiser's state would pass ``HEADROOM`` of the trial's budget, the card runs out of memory, the cap
(``AUTO_CAP``) or the training set is reached. The budget is the card's memory times the trial's GPU share
(``tune.resources_per_trial.gpu``: with 0.25, four trials pack on one card and each is held to a quarter by
``torch.cuda.set_per_process_memory_fraction``). The probe runs on a model of its own, so the trial's weights,
statistics and random streams are untouched; if training still runs out of memory, the core's halving
(``run_trial``) takes over and is recorded.

The batch size changes what training computes (the steps per epoch, the noise of each step): the row records
``batch_size_used`` and ``batch_size_search`` and leaves ``hp_batch_size`` empty, so an ``auto`` trial is never
mistaken for a fixed-batch one. On CPU there is no card to fill and running out of memory ends the process
rather than raising, so ``auto`` means ``CPU_BATCH`` images (capped by the training set).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

AUTO_START = 16
AUTO_CAP = 1024
CPU_BATCH = 64
HEADROOM = 0.85  # the share of the trial's memory budget the probe may fill (fragmentation, eval buffers)


@dataclass(frozen=True)
class BatchSearch:
    """The chosen batch and how it was chosen: every size tried and whether it fitted."""

    batch_size: int
    tried: tuple[tuple[int, bool], ...]
    stopped_by: str  # "memory", "cap", "training set" or "cpu"

    def describe(self) -> str:
        """The row's ``batch_size_search``: ``auto 256 (memory; tried 16 32 64 128 256 512x)``."""
        tried = " ".join(f"{size}{'' if fitted else 'x'}" for size, fitted in self.tried)
        return f"auto {self.batch_size} ({self.stopped_by}" + (f"; tried {tried})" if tried else ")")


def largest_power_of_two(limit: int) -> int:
    return 1 << (max(1, limit).bit_length() - 1)


def search(fits: Callable[[int], bool], *, start: int = AUTO_START, cap: int = AUTO_CAP,
           cap_name: str = "cap") -> BatchSearch:
    """Double from ``start`` while ``fits(size)`` and the next size is within ``cap`` (rounded down to a power
    of two; ``cap_name`` says what it is); if ``start`` itself does not fit, halve down to 1. Returns the largest
    size that fitted; ``fits`` is called once per size."""
    cap = largest_power_of_two(cap)
    size = min(largest_power_of_two(start), cap)
    tried: list[tuple[int, bool]] = []
    while not _record(tried, size, fits(size)):
        if size == 1:
            raise MemoryError("a batch of one image does not fit in this trial's memory")
        size //= 2
    if len(tried) > 1:  # the start did not fit: the first size that did is the answer
        return BatchSearch(size, tuple(tried), "memory")
    while size * 2 <= cap:
        if not _record(tried, size * 2, fits(size * 2)):
            return BatchSearch(size, tuple(tried), "memory")
        size *= 2
    return BatchSearch(size, tuple(tried), cap_name)


def _record(tried: list[tuple[int, bool]], size: int, fitted: bool) -> bool:
    tried.append((size, fitted))
    return fitted
