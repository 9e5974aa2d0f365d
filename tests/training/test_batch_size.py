"""`train.batch_size: auto`: the power-of-two search, the suite value, and the row of an auto trial."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from bench import training as core
from bench.config import TrialConfig
from bench.suite import load_suite
from bench.training.batch_size import BatchSearch, largest_power_of_two, search


def card(fits_up_to: int):
    """A card that fits ``fits_up_to`` images; records every size asked."""
    asked: list[int] = []

    def fits(size: int) -> bool:
        asked.append(size)
        return size <= fits_up_to

    return fits, asked


def test_doubles_until_the_card_is_full() -> None:
    fits, asked = card(300)
    found = search(fits, start=16, cap=1024)
    assert found == BatchSearch(
        256, ((16, True), (32, True), (64, True), (128, True), (256, True), (512, False)), "memory"
    )
    assert asked == [16, 32, 64, 128, 256, 512]  # each size probed once
    assert found.describe() == "auto 256 (memory; tried 16 32 64 128 256 512x)"


def test_stops_at_the_cap_or_the_training_set() -> None:
    fits, asked = card(10_000)
    assert search(fits, start=16, cap=1024).batch_size == 1024 and asked[-1] == 1024
    found = search(card(10_000)[0], start=16, cap=100, cap_name="training set")
    assert (found.batch_size, found.stopped_by) == (64, "training set")  # powers of two only, never past the cap
    assert search(card(10_000)[0], start=16, cap=5).batch_size == 4  # a training set smaller than the start


def test_halves_when_the_start_does_not_fit() -> None:
    fits, asked = card(5)
    found = search(fits, start=16, cap=1024)
    assert (found.batch_size, found.stopped_by) == (4, "memory") and asked == [16, 8, 4]
    with pytest.raises(MemoryError):
        search(card(0)[0], start=16)


def test_largest_power_of_two() -> None:
    assert [largest_power_of_two(n) for n in (0, 1, 2, 3, 64, 100, 1024, 1025)] == [1, 1, 2, 2, 64, 64, 1024, 1024]


def test_auto_on_cpu_is_64_and_changes_nothing_else() -> None:
    """On CPU ``auto`` means 64 images: the same numbers as a fixed 64, recorded as auto."""
    torch.set_num_threads(2)
    base = TrialConfig(
        backbone="efficientnet_lite0",
        dataset="digits",
        img_size=32,
        epochs=None,
        steps=4,
        data_fraction=0.3,
        freeze=0.5,
        lr=1e-3,
        similarity=False,
    )
    auto = core.run_trial(dataclasses.replace(base, batch_size="auto")).row
    fixed = core.run_trial(dataclasses.replace(base, batch_size=64)).row
    assert auto["batch_size_used"] == 64 and auto["batch_size_search"] == "auto 64 (cpu)"
    assert auto["hp_batch_size"] is None and fixed["hp_batch_size"] == 64 and fixed["batch_size_search"] is None
    assert auto["trial_id"] != fixed["trial_id"]
    assert auto["metric_top1"] == fixed["metric_top1"] and auto["metric_nll"] == fixed["metric_nll"]
    small = core.run_trial(dataclasses.replace(base, batch_size="auto", shots=5, data_fraction=None)).row
    assert small["n_train"] == 50 and small["batch_size_used"] == 32  # capped by the training set


def test_suite_accepts_auto_and_passes_the_gpu_share(tmp_path: Path) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "auto",
                "backbones": ["efficientnet_lite0"],
                "datasets": ["digits"],
                "grid": {"freeze": ["full"], "data_fraction": [1.0]},
                "train": {"epochs": 1, "batch_size": "auto"},
                "tune": {"resources_per_trial": {"cpu": 1, "gpu": 0.25}},
            }
        )
    )
    (trial,) = load_suite(path).trials()
    assert trial.batch_size == "auto" and trial.fixed_batch_size is None and trial.gpu_share == 0.25
    whole = dataclasses.replace(trial, gpu_share=1.0)
    assert whole.trial_id == trial.trial_id  # where a trial runs is not what it computes
