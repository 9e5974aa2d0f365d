"""One trial both ways: *plain*, its own fresh process with no cache (what a careful user writes with timm),
and *optimised*, bench's way in this process with a dataset cache and the frozen-feature and prefix caches
(run twice: ``first`` on cold caches, ``opt`` warm). Both train through the core's own loop, so their metrics
can be compared exactly and the ratio is what bench adds around that loop (docs/performance.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.config import TrialConfig

ROW_MARKER = "BENCH_PERF_ROW "  # the plain child's one line of output that the parent reads


@dataclass(frozen=True)
class PerfTrial:
    """One line of the table: a trial, the speed-up floor it is held to, and its top-1 tolerance."""

    name: str
    config: TrialConfig
    floor: float  # plain / optimised wall time, at least
    top1_tolerance: float  # points


@dataclass
class Measurement:
    wall_seconds: float
    peak_memory_mb: float
    row: dict[str, Any]

    @property
    def images_seen(self) -> float:
        row = self.row
        if not row.get("images_per_second") or not row.get("train_seconds"):
            return 0.0
        return row["images_per_second"] * row["train_seconds"]

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.wall_seconds if self.wall_seconds > 0 else 0.0


@dataclass
class Comparison:
    trial: PerfTrial
    plain: Measurement
    first: Measurement
    optimised: Measurement

    @property
    def ratio(self) -> float:
        return self.plain.wall_seconds / self.optimised.wall_seconds

    def metric_difference(self, metric: str) -> float:
        plain = self.plain.row[metric]
        others = [self.first.row[metric], self.optimised.row[metric]]
        if plain is None or any(value is None for value in others):
            return math.inf
        return max(abs(value - plain) for value in others)

    @property
    def meets_floor(self) -> bool:
        return self.ratio >= self.trial.floor and self.metric_difference("metric_top1") <= self.trial.top1_tolerance

    @property
    def path(self) -> str:
        """Which path the optimised row took, from the columns the core writes."""
        return str(self.optimised.row.get("frozen_prefix") or "-")


# ---------------------------------------------------------------------------------------------------------
# the trials


def default_trials(*, quick: bool) -> list[PerfTrial]:
    """Linear probe at full data (digits, photo_patches), half-frozen and full fine-tuning, efficientnet_lite0
    with its bundled ImageNet weights. ``quick``: 32 px, a few steps, digits only. The probe is the stepped one
    (``probe_solver="sgd"``): these trials measure the training path (cached features against the plain loop);
    the solved probe's cost is measured by scripts/probe_bench.py."""
    if quick:
        base = TrialConfig(
            backbone="efficientnet_lite0",
            dataset="digits",
            img_size=32,
            epochs=None,
            steps=3,
            batch_size=32,
            lr=1e-3,
            eval_every=100,
            probe_solver="sgd",
        )
        return [
            PerfTrial("linear_probe digits 32px", dataclasses.replace(base, freeze="linear_probe", lr=1e-2), 10.0, 0.5),
            PerfTrial("half-frozen digits 32px", dataclasses.replace(base, freeze=0.5), 1.5, 1.0),
            PerfTrial("full digits 32px", dataclasses.replace(base, freeze="full"), 0.95, 0.5),
        ]
    base = TrialConfig(
        backbone="efficientnet_lite0",
        dataset="digits",
        img_size=64,
        batch_size=64,
        lr=1e-3,
        eval_every=100,
        probe_solver="sgd",
    )  # validation only at the end: the measured work is training
    return [
        PerfTrial(
            "linear_probe digits 64px", dataclasses.replace(base, freeze="linear_probe", lr=1e-2, epochs=10), 10.0, 0.5
        ),
        PerfTrial(
            "linear_probe photo_patches 64px",
            dataclasses.replace(base, dataset="photo_patches", freeze="linear_probe", lr=1e-2, epochs=10),
            10.0,
            0.5,
        ),
        PerfTrial("half-frozen digits 64px", dataclasses.replace(base, freeze=0.5, epochs=3), 1.5, 1.0),
        PerfTrial("full digits 64px", dataclasses.replace(base, freeze="full", epochs=2), 0.95, 0.5),
    ]


# ---------------------------------------------------------------------------------------------------------
# plain: a fresh process per trial


def run_plain(config: TrialConfig, *, threads: int) -> Measurement:
    # A hand-written timm loop trains and evaluates; it does not score the dataset's similarity to ImageNet
    # (bench does, once per backbone and dataset: that cost is in the optimised ``first`` column).
    # Nor does it fold BatchNorm into the convolutions for evaluation (``bench.speedups.fold``).
    plain = dataclasses.replace(config, feature_cache=False, fold_batchnorm=False, cache_dir=None, similarity=False)
    return run_child(plain, threads=threads)


def run_child(config: TrialConfig, *, threads: int) -> Measurement:
    """``config`` run by ``run_trial`` in a fresh process of its own: its wall time (start-up included) and row."""
    command = [
        sys.executable,
        "-m",
        "bench.perf",
        "--plain-trial",
        json.dumps(config.to_dict()),
        "--threads",
        str(threads),
    ]
    tic = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - tic
    rows = [line[len(ROW_MARKER) :] for line in finished.stdout.splitlines() if line.startswith(ROW_MARKER)]
    if finished.returncode != 0 or not rows:
        raise RuntimeError(
            f"plain trial process failed (exit {finished.returncode}): {finished.stderr.strip()[-2000:]}"
        )
    row = json.loads(rows[-1])
    return Measurement(wall_seconds=wall, peak_memory_mb=row["peak_memory_mb"], row=row)


def plain_child(config_json: str, threads: int) -> int:
    """The plain trial's own process: decode, build, train every layer every step, report the row."""
    torch.set_num_threads(threads)
    from bench import training

    row = training.run_trial(TrialConfig.from_dict(json.loads(config_json))).row
    print(ROW_MARKER + json.dumps(row, default=str), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------------
# optimised: bench's way, in this process


def run_optimised(config: TrialConfig, *, cache_dir: Path) -> tuple[Measurement, Measurement]:
    """(first run on empty caches, second run with the caches warm), both in this process."""
    from bench import training
    from bench.speedups import features

    features.clear_memory_cache()  # and a fresh cache folder per trial: the first run is cold
    training.clear_similarity_cache()
    optimised = dataclasses.replace(config, feature_cache=True, cache_dir=str(cache_dir))
    runs = []
    for _ in range(2):
        tic = time.perf_counter()
        row = training.run_trial(optimised).row  # resets the peak itself, as in the plain process
        runs.append(Measurement(time.perf_counter() - tic, peak_memory_mb=row["peak_memory_mb"], row=row))
    return runs[0], runs[1]


# ---------------------------------------------------------------------------------------------------------
# the table

COLUMNS = (
    "trial",
    "plain_s",
    "first_s",
    "opt_s",
    "ratio",
    "floor",
    "img/s plain",
    "img/s opt",
    "peak_MB plain",
    "peak_MB opt",
    "d_top1",
    "d_nll",
    "FLOP/s of peak",
    "path",
    "ok",
)


def table_rows(comparisons: Sequence[Comparison], flop_fraction: dict[str, str]) -> list[list[str]]:
    rows = []
    for c in comparisons:
        rows.append(
            [
                c.trial.name,
                f"{c.plain.wall_seconds:.1f}",
                f"{c.first.wall_seconds:.1f}",
                f"{c.optimised.wall_seconds:.2f}",
                f"{c.ratio:.2f}",
                f"{c.trial.floor:g}",
                f"{c.plain.images_per_second:.0f}",
                f"{c.optimised.images_per_second:.0f}",
                f"{c.plain.peak_memory_mb:.0f}",
                f"{c.optimised.peak_memory_mb:.0f}",
                f"{c.metric_difference('metric_top1'):.2f}",
                f"{c.metric_difference('metric_nll'):.4f}",
                flop_fraction.get(c.trial.name, "-"),
                c.path,
                "yes" if c.meets_floor else "NO",
            ]
        )
    return rows


def machine_line(threads: int) -> str:
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    card = f", trials on {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"machine: {platform.node()}, {os.cpu_count()} cpus{card}, torch {torch.__version__}, {threads} torch "
        f"thread(s) per trial, load average {load}"
    )
