"""`python -m bench.perf` (`bench perf`): the same trials the plain way and bench's way, side by side.

Why: every speed-up in bench (prepared datasets, frozen features computed once, frozen prefixes computed once)
claims to change nothing but the time. This command shows both halves of that claim on this machine, in one
run that anyone can repeat: wall time, throughput and peak memory of each trial done both ways, the ratio,
and the largest difference in the metrics.

What it measures, per trial:

- plain: what a careful user writes by hand with timm. Each trial is its own fresh Python process (start-up
  and imports included) that loads and decodes its data (no cache folder), builds the model and pushes every
  image through every layer at every step: ``bench.training.trial.run_trial`` with ``feature_cache=False,
  fold_batchnorm=False, cache_dir=None, similarity=False`` (a hand-written loop evaluates the model as it
  trains it, BatchNorm layers and all, and does not score similarity to ImageNet). Wall time
  is measured around the process. Its training loop is the core's, kernel choices included (channels_last,
  ``bench.speedups.depthwise``'s padded weight gradient on a CPU), so both ways train through the same arithmetic and
  the metrics can be compared exactly: the ratio is what bench adds around that loop.
- optimised: bench's way, in this process: ``run_trial`` with a dataset cache folder and the frozen
  feature / prefix caches on (``feature_cache=True``), so whatever the core does today. Each trial runs twice
  on fresh caches: ``first`` pays the one-off work (decode and store the dataset, the frozen forward pass
  over the whole dataset, the similarity scores) that a suite pays once per (backbone, dataset, image
  size); ``opt`` is the same trial again, caches warm: what each further trial of a suite costs.
  ``ratio = plain / opt``.
- peak memory, both ways: the row's ``peak_memory_mb``, measured by the core from the trial's start: the
  process's peak RSS on the CPU (reset through /proc/self/clear_refs), torch's peak allocation on a CUDA card.
- images/s: training images seen (steps x batch) per second of the trial's whole wall time.
- d_top1 / d_nll: the largest absolute difference of test top-1 (points) and test NLL between the plain run
  and either optimised run of the same trial (same config, same seed).
- full fine-tuning also prints its achieved FLOP/s (training FLOPs per image, counted with
  ``torch.utils.flop_counter.FlopCounterMode`` on one batch, forward and backward, times the images trained,
  over the training-loop seconds) as a fraction of this machine's matrix-multiply rate in the dtype the
  trials compute in, measured with torch (best of several): fp32 on 2048 x 2048 matrices with the same thread
  count on the CPU; bf16 on 8192 x 8192 on a CUDA card, where the core trains under bf16 autocast.

Floors it is held to (issue 6; printed in the table as ``floor`` and ``ok``, never asserted on timings):

- linear probe at full data: ratio >= 10, top-1 within 0.5 point;
- half-frozen: ratio >= 1.5, top-1 within 1 point (noise of a seed on these test sets is larger);
- full fine-tuning: ratio >= 0.95 (no slower than the plain loop), top-1 within 0.5 point.
- ``--suite SUITE [--smoke]``: the whole suite through ``bench run`` (a fresh process, as a user types it)
  against each of its trials as its own plain process, ``--workers`` at a time as Ray runs them: ratio >= 3
  (issue 6 holds ``suites/regimes_cpu.yaml`` to it) and the same leaderboard (same rank in every cell);
- ``--ray-overhead SUITE [--smoke]``: ``bench run --num-cpus 1`` against the same trials called one after
  another in one fresh process; both pay start-up and imports, the difference is Ray: at most 10% (issue 6
  holds ``suites/smoke.yaml`` to it).

The ``path`` column says which path the optimised row took (the row's ``frozen_prefix``: ``features``,
``prefix``, ``none`` or ``plain (<why>)``).

``--quick`` (tiny images, a few steps) is for the test; the default takes a few minutes on two busy CPU
cores. The machine's load average at start and end is printed with the table: timings on a shared machine
are only as good as that.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bench.training import precision
from bench.config import TrialConfig

if TYPE_CHECKING:
    import pandas as pd

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
    with its bundled ImageNet weights. ``quick``: 32 px, a few steps, digits only."""
    if quick:
        base = TrialConfig(backbone="efficientnet_lite0", dataset="digits", img_size=32, epochs=None, steps=3,
                           batch_size=32, lr=1e-3, eval_every=100)
        return [
            PerfTrial("linear_probe digits 32px", dataclasses.replace(base, freeze="linear_probe", lr=1e-2), 10.0,
                      0.5),
            PerfTrial("half-frozen digits 32px", dataclasses.replace(base, freeze=0.5), 1.5, 1.0),
            PerfTrial("full digits 32px", dataclasses.replace(base, freeze="full"), 0.95, 0.5),
        ]
    base = TrialConfig(backbone="efficientnet_lite0", dataset="digits", img_size=64, batch_size=64, lr=1e-3,
                       eval_every=100)  # validation only at the end: the measured work is training
    return [
        PerfTrial("linear_probe digits 64px", dataclasses.replace(base, freeze="linear_probe", lr=1e-2, epochs=10),
                  10.0, 0.5),
        PerfTrial("linear_probe photo_patches 64px",
                  dataclasses.replace(base, dataset="photo_patches", freeze="linear_probe", lr=1e-2, epochs=10),
                  10.0, 0.5),
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
    command = [sys.executable, "-m", "bench.perf", "--plain-trial", json.dumps(plain.to_dict()),
               "--threads", str(threads)]
    tic = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - tic
    rows = [line[len(ROW_MARKER):] for line in finished.stdout.splitlines() if line.startswith(ROW_MARKER)]
    if finished.returncode != 0 or not rows:
        raise RuntimeError(f"plain trial process failed (exit {finished.returncode}): "
                           f"{finished.stderr.strip()[-2000:]}")
    row = json.loads(rows[-1])
    return Measurement(wall_seconds=wall, peak_memory_mb=row["peak_memory_mb"], row=row)


def _plain_child(config_json: str, threads: int) -> int:
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
# FLOPs

def _matmul_shape(device: torch.device) -> tuple[int, torch.dtype]:
    """The reference product's side and dtype: what the trials compute in (bench.training.precision)."""
    return (8192, torch.bfloat16) if precision.uses_bf16(device) else (2048, torch.float32)


def matmul_gflops(device: torch.device | None = None, *, size: int | None = None, repeats: int = 5) -> float:
    """This machine's matrix-multiply rate in the dtype its trials compute in (best of ``repeats``): fp32 on
    2048 x 2048 matrices with torch's current thread count on the CPU; bf16 on 8192 x 8192 on CUDA, where
    the core trains under bf16 autocast."""
    device = device or torch.device("cpu")
    default_size, dtype = _matmul_shape(device)
    size = size or default_size
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device, dtype) for _ in range(2))
    a @ b  # warm-up: thread pool, allocator, cuBLAS heuristics
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tic = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - tic)
    return 2 * size**3 / best / 1e9


def depthwise_step_times(img_size: int = 48, batch: int = 32, steps: int = 5,
                         backbone: str = "efficientnet_lite0") -> list[str]:
    """One training step of ``backbone`` (all layers trainable, channels_last, AdamW, this process's threads)
    with PyTorch's own depthwise backward and with ``bench.speedups.depthwise``'s padded weight gradient, alternated
    three times, best of each; and the largest relative difference of the weight gradients after one step from
    the same weights: (table rows)."""
    import copy

    from bench import training
    from bench.speedups import depthwise
    from bench.models.build import build_backbone

    torch.manual_seed(0)
    built = build_backbone(backbone, 10, pretrained=False)
    model = nn.Sequential(built.body, built.head).to(memory_format=torch.channels_last).train()
    images = torch.randn(batch, 3, img_size, img_size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))

    def gradients(net: nn.Module, kernels: depthwise.padded_weight_grad | None) -> dict[str, torch.Tensor]:
        net.zero_grad()
        training.training_loss(net, images, labels, torch.device("cpu"), kernels=kernels).backward()
        return {name: p.grad.clone() for name, p in net.named_parameters()}

    kernels = depthwise.padded_weight_grad()
    plain, padded = gradients(copy.deepcopy(model), None), gradients(copy.deepcopy(model), kernels)
    worst = max(float((padded[n] - plain[n]).abs().max() / plain[n].abs().max().clamp_min(1e-30)) for n in plain)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step_seconds(mode: depthwise.padded_weight_grad | None) -> float:
        best = math.inf
        for index in range(steps + 1):
            tic = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            training.training_loss(model, images, labels, torch.device("cpu"), kernels=mode).backward()
            optimizer.step()
            if index:  # the first step warms up
                best = min(best, time.perf_counter() - tic)
        return best

    times: dict[str, float] = {"pytorch": math.inf, "padded": math.inf}
    for _ in range(3):
        times["pytorch"] = min(times["pytorch"], step_seconds(None))
        times["padded"] = min(times["padded"], step_seconds(depthwise.padded_weight_grad()))
    return [markdown_table(
        ("training step", "pytorch backward_s", "padded weight grad_s", "ratio", "layers padded", "max grad diff"),
        [[f"{backbone} {img_size} px, {batch} images, {torch.get_num_threads()} thread(s)",
          f"{times['pytorch']:.3f}", f"{times['padded']:.3f}", f"{times['pytorch'] / times['padded']:.2f}",
          str(kernels.used), f"{worst:.1e}"]])]


def matmul_label(device: torch.device) -> str:
    size, dtype = _matmul_shape(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} thread(s)"
    return f"{'bf16' if dtype == torch.bfloat16 else 'fp32'} matmul rate ({size}x{size}, {where})"


def _conv_backward_flops(grad_out_shape: list[int], x_shape: list[int], w_shape: list[int], _bias: Any,
                         _stride: Any, _padding: Any, _dilation: Any, transposed: bool, _output_padding: Any,
                         _groups: Any, output_mask: list[bool], out_shape: Any, **kwargs: Any) -> int:
    """Convolution backward: the input gradient and the weight gradient each cost one forward convolution.

    torch's own formula counts the weight gradient of a grouped convolution as if it were ungrouped (about 40x
    too many FLOPs for efficientnet_lite0's depthwise convolutions); this one follows the groups.
    """
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_training_flops(model: nn.Module, inputs: torch.Tensor) -> int:
    """FLOPs of one forward and backward pass of ``model`` on ``inputs`` (grouped convolutions counted right)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False,
                              custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})
    with counter:
        model(inputs).float().logsumexp(1).mean().backward()
    return counter.get_total_flops()


def training_flops_per_image(config: TrialConfig, n_classes: int) -> float:
    """Forward + backward FLOPs of one training batch of the fully trainable model, per image."""
    from bench.models.build import TransferModel, build_backbone

    backbone = build_backbone(config.backbone, n_classes, pretrained=False)
    model = TransferModel(backbone.body, backbone.head).train()
    images = torch.randn(config.batch_size, 3, config.img_size, config.img_size)
    return count_training_flops(model, images) / config.batch_size


def achieved_gflops(measurement: Measurement, flops_per_image: float) -> float:
    seconds = measurement.row.get("train_seconds") or 0.0
    return flops_per_image * measurement.images_seen / seconds / 1e9 if seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------------------
# the table

COLUMNS = ("trial", "plain_s", "first_s", "opt_s", "ratio", "floor", "img/s plain", "img/s opt", "peak_MB plain",
           "peak_MB opt", "d_top1", "d_nll", "FLOP/s of peak", "path", "ok")


def table_rows(comparisons: Sequence[Comparison], flop_fraction: dict[str, str]) -> list[list[str]]:
    rows = []
    for c in comparisons:
        rows.append([c.trial.name, f"{c.plain.wall_seconds:.1f}", f"{c.first.wall_seconds:.1f}",
                     f"{c.optimised.wall_seconds:.2f}", f"{c.ratio:.2f}", f"{c.trial.floor:g}",
                     f"{c.plain.images_per_second:.0f}", f"{c.optimised.images_per_second:.0f}",
                     f"{c.plain.peak_memory_mb:.0f}", f"{c.optimised.peak_memory_mb:.0f}",
                     f"{c.metric_difference('metric_top1'):.2f}", f"{c.metric_difference('metric_nll'):.4f}",
                     flop_fraction.get(c.trial.name, "-"), c.path, "yes" if c.meets_floor else "NO"])
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["| " + " | ".join(str(cell).ljust(width) for cell, width in zip(line, widths)) + " |"
             for line in (header, *rows)]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def parse_table(text: str) -> list[dict[str, str]]:
    """The rows of the first markdown table in ``text`` as dicts (for tests and scripts)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    if len(lines) < 2:
        return []
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def _machine_line(threads: int) -> str:
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    card = f", trials on {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"machine: {platform.node()}, {os.cpu_count()} cpus{card}, torch {torch.__version__}, {threads} torch "
            f"thread(s) per trial, load average {load}")


# ---------------------------------------------------------------------------------------------------------
# whole suites: `bench run` against a plain process per trial, and Ray against in-process calls

def _bench_run(suite_path: str, *, smoke: bool, out: Path, num_cpus: int) -> tuple[float, pd.DataFrame]:
    """`bench run` as a user types it (a fresh process: start-up, Ray, dataset sharing, caches); its wall
    time and its trials table."""
    import pandas as pd

    from bench.results import store as results
    from bench.runner import run_dir as runs
    from bench.suite import load_suite

    command = [sys.executable, "-m", "bench.cli", "run", suite_path, "--out", str(out), "--num-cpus", str(num_cpus)]
    tic = time.perf_counter()
    finished = subprocess.run(command + (["--smoke"] if smoke else []), capture_output=True, text=True,
                              check=False)
    wall = time.perf_counter() - tic
    if finished.returncode not in (0, 1):
        raise RuntimeError(f"bench run failed (exit {finished.returncode}): {finished.stderr.strip()[-2000:]}")
    run_dir = runs.latest_run(out, load_suite(suite_path, smoke=smoke).name)
    table = results.read_table(run_dir / results.TRIALS_FILE) if run_dir else pd.DataFrame()
    return wall, table


def leaderboard_difference(left: pd.DataFrame, right: pd.DataFrame) -> tuple[bool, float]:
    """(same ranking in every cell, largest difference of a cell's mean top-1) between two trial tables."""
    from bench.results.leaderboard import leaderboard

    keys = ["dataset", "data", "entry"]
    a, b = leaderboard(left), leaderboard(right)
    if a.empty or b.empty:
        return a.empty and b.empty, 0.0
    merged = a[keys + ["rank", "mean"]].merge(b[keys + ["rank", "mean"]], on=keys, how="outer",
                                              suffixes=("_a", "_b"), indicator=True)
    same = bool((merged["_merge"] == "both").all() and (merged["rank_a"] == merged["rank_b"]).all())
    return same, float((merged["mean_a"] - merged["mean_b"]).abs().max())


def compare_suite(suite_path: str, *, smoke: bool, workers: int, threads: int, scratch: Path,
                  keep: Path | None = None) -> list[str]:
    """The whole suite through `bench run` against each of its trials as its own plain process (``workers``
    at a time, as Ray runs ``workers`` trials at a time on ``workers`` CPUs). Floor: ratio >= 3, same
    leaderboard."""
    import pandas as pd
    from concurrent.futures import ThreadPoolExecutor

    from bench.suite import load_suite

    trials = load_suite(suite_path, smoke=smoke).trials()
    bench_wall, bench_table = _bench_run(suite_path, smoke=smoke, out=scratch / "suite-run", num_cpus=workers)
    tic = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        plain = list(pool.map(lambda config: run_plain(config, threads=threads), trials))
    plain_wall = time.perf_counter() - tic
    plain_table = pd.DataFrame([m.row for m in plain])
    joined = bench_table.merge(plain_table, on="trial_id", suffixes=("_bench", "_plain"))
    d_top1 = float((joined["metric_top1_bench"] - joined["metric_top1_plain"]).abs().max())
    if keep is not None:
        _keep_tables(keep, bench_table, plain_table, joined)
    same, d_mean = leaderboard_difference(bench_table, plain_table)
    ratio = plain_wall / bench_wall
    row = [f"suite {Path(suite_path).name}{' --smoke' if smoke else ''} ({len(trials)} trials)",
           f"{plain_wall:.0f}", f"{bench_wall:.0f}", f"{ratio:.2f}", "3", f"{len(joined)}/{len(trials)}",
           f"{d_top1:.2f}", "yes" if same else "NO", f"{d_mean:.2f}", "yes" if ratio >= 3 and same else "NO"]
    header = ("run", "plain processes_s", "bench run_s", "ratio", "floor", "trials matched", "d_top1 max",
              "same leaderboard", "d_mean top1", "ok")
    return [markdown_table(header, [row])]


def _keep_tables(folder: Path, bench_table: pd.DataFrame, plain_table: pd.DataFrame, joined: pd.DataFrame) -> None:
    """Both trial tables and, per trial, the two top-1s and their difference, largest first."""
    folder.mkdir(parents=True, exist_ok=True)
    bench_table.to_parquet(folder / "bench.parquet")
    plain_table.astype({c: str for c in plain_table.columns if plain_table[c].dtype == object}).to_parquet(
        folder / "plain.parquet")
    columns = ["trial_id", "dataset_bench", "backbone_bench", "pretrained_bench", "freeze_bench",
               "data_fraction_bench", "seed_bench", "frozen_prefix_bench", "metric_top1_bench", "metric_top1_plain"]
    diff = joined[[c for c in columns if c in joined.columns]].copy()
    diff["d_top1"] = joined["metric_top1_bench"] - joined["metric_top1_plain"]
    diff.sort_values("d_top1", key=abs, ascending=False).to_csv(folder / "diff.csv", index=False)


def _in_process_suite(suite_path: str, smoke: bool, cache_dir: str, threads: int) -> int:
    """The child of ``--ray-overhead``: the suite's trials called one after another in this process, the way
    a Ray worker calls them (same cache folder rules), and nothing else."""
    torch.set_num_threads(threads)
    from bench import training
    from bench.suite import load_suite

    for config in load_suite(suite_path, smoke=smoke).trials():
        training.run_trial(dataclasses.replace(config, cache_dir=cache_dir))
    return 0


def compare_ray_overhead(suite_path: str, *, smoke: bool, threads: int, scratch: Path) -> list[str]:
    """`bench run --num-cpus 1` (Ray, one trial at a time) against the same trials called in one fresh
    process, one at a time. Both pay interpreter start-up and imports; the difference is Ray. Floor: <= 10%."""
    from bench.suite import load_suite

    n_trials = load_suite(suite_path, smoke=smoke).trial_count()
    command = [sys.executable, "-m", "bench.perf", "--in-process-suite", suite_path, "--threads", str(threads),
               "--cache-dir", str(scratch / "in-process-cache")] + (["--smoke"] if smoke else [])
    tic = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    in_process = time.perf_counter() - tic
    if finished.returncode != 0:
        raise RuntimeError(f"in-process suite failed: {finished.stderr.strip()[-2000:]}")
    ray_wall, table = _bench_run(suite_path, smoke=smoke, out=scratch / "ray-run", num_cpus=1)
    overhead = ray_wall / in_process - 1
    row = [f"ray overhead {Path(suite_path).name}{' --smoke' if smoke else ''} ({n_trials} trials)",
           f"{in_process:.0f}", f"{ray_wall:.0f}", f"{100 * overhead:.0f}%", "10%",
           f"{int((table['status'] == 'ok').sum()) if len(table) else 0}/{n_trials}",
           "yes" if overhead <= 0.10 else "NO"]
    header = ("run", "in-process_s", "bench run --num-cpus 1_s", "overhead", "ceiling", "ok rows", "ok")
    return [markdown_table(header, [row])]


# ---------------------------------------------------------------------------------------------------------
# entry point

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench perf", description="plain vs optimised trials: wall time, "
                                     "images/s, peak memory, ratio and metric differences (floors: issue 6)")
    parser.add_argument("--quick", action="store_true", help="tiny trials (32 px, 3 steps): for tests")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial, both ways (default 1)")
    parser.add_argument("--cache-dir", default=None, help="cache folder of the optimised runs "
                        "(default: a temporary folder, removed at the end)")
    parser.add_argument("--json", default=None, help="also write the measurements to this JSON file")
    parser.add_argument("--keep", default=None, metavar="DIR", help="with --suite: keep both trial tables "
                        "(DIR/bench.parquet, DIR/plain.parquet) and the per-trial differences (DIR/diff.csv)")
    parser.add_argument("--suite", default=None, metavar="SUITE", help="instead: SUITE through `bench run` vs "
                        "each of its trials as a plain process (floor 3x, same leaderboard)")
    parser.add_argument("--ray-overhead", default=None, metavar="SUITE", help="instead: `bench run --num-cpus 1` "
                        "vs the same trials in one process (ceiling 10%%)")
    parser.add_argument("--smoke", action="store_true", help="with --suite / --ray-overhead: the suite's smoke "
                        "variant")
    parser.add_argument("--depthwise", action="store_true", help="instead: one training step with PyTorch's "
                        "depthwise backward and with bench.speedups.depthwise's padded weight gradient (--img-size)")
    parser.add_argument("--img-size", type=int, default=48, help="with --depthwise (default 48)")
    parser.add_argument("--workers", type=int, default=2, help="with --suite: trials at a time, both ways "
                        "(default 2)")
    parser.add_argument("--plain-trial", default=None, help=argparse.SUPPRESS)  # the plain child process
    parser.add_argument("--in-process-suite", default=None, help=argparse.SUPPRESS)  # --ray-overhead's child
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.plain_trial is not None:
        return _plain_child(args.plain_trial, args.threads)
    if args.in_process_suite is not None:
        return _in_process_suite(args.in_process_suite, args.smoke, args.cache_dir, args.threads)
    torch.set_num_threads(args.threads)
    if args.depthwise:
        print(_machine_line(args.threads), flush=True)
        print("\n".join(["", *depthwise_step_times(args.img_size)]))
        return 0
    if args.suite or args.ray_overhead:
        return _whole_suites(args)
    trials = default_trials(quick=args.quick)
    print(_machine_line(args.threads), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as scratch:
        root = Path(args.cache_dir) if args.cache_dir else Path(scratch)
        comparisons = []
        for index, trial in enumerate(trials):
            print(f"[{index + 1}/{len(trials)}] {trial.name}: plain process ...", flush=True)
            plain = run_plain(trial.config, threads=args.threads)
            print(f"[{index + 1}/{len(trials)}] {trial.name}: optimised, in process ...", flush=True)
            first, optimised = run_optimised(trial.config, cache_dir=root / f"trial{index}")
            comparisons.append(Comparison(trial, plain, first, optimised))
    flop_fraction, notes = _flop_notes(comparisons)
    print()
    print(markdown_table(COLUMNS, table_rows(comparisons, flop_fraction)))
    print()
    for note in notes:
        print(note)
    print(_machine_line(args.threads).replace("machine:", "at the end:"))
    if args.json:
        Path(args.json).write_text(json.dumps([_as_json(c) for c in comparisons], indent=1, default=str))
    return 0


def _whole_suites(args: argparse.Namespace) -> int:
    print(_machine_line(args.threads), flush=True)
    tables = []
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as scratch:
        if args.suite:
            print(f"suite {args.suite}: bench run, then one plain process per trial ...", flush=True)
            tables += compare_suite(args.suite, smoke=args.smoke, workers=args.workers, threads=args.threads,
                                    scratch=Path(scratch), keep=Path(args.keep) if args.keep else None)
        if args.ray_overhead:
            print(f"ray overhead {args.ray_overhead}: in one process, then bench run --num-cpus 1 ...", flush=True)
            tables += compare_ray_overhead(args.ray_overhead, smoke=args.smoke, threads=args.threads,
                                           scratch=Path(scratch))
    for table in tables:
        print()
        print(table)
    print()
    print(_machine_line(args.threads).replace("machine:", "at the end:"))
    return 0


def _flop_notes(comparisons: Sequence[Comparison]) -> tuple[dict[str, str], list[str]]:
    full = [c for c in comparisons if c.trial.config.strategy == "full"]
    if not full:
        return {}, []
    from bench.training import resolve_device

    device = resolve_device(full[0].trial.config.device)
    peak = matmul_gflops(device)
    fractions, notes = {}, []
    for c in full:
        per_image = training_flops_per_image(c.trial.config, c.plain.row["n_classes"])
        plain, optimised = achieved_gflops(c.plain, per_image), achieved_gflops(c.optimised, per_image)
        fractions[c.trial.name] = f"{100 * optimised / peak:.0f}%"
        notes.append(f"{c.trial.name}: {per_image / 1e9:.3f} GFLOP per training image (forward + backward); "
                     f"achieved {plain:.1f} GFLOP/s plain, {optimised:.1f} GFLOP/s optimised = "
                     f"{100 * plain / peak:.0f}% / {100 * optimised / peak:.0f}% of this machine's "
                     f"{matmul_label(device)}, {peak:.1f} GFLOP/s")
    return fractions, notes


def _as_json(c: Comparison) -> dict[str, Any]:
    return {"trial": c.trial.name, "config": c.trial.config.to_dict(), "floor": c.trial.floor,
            "ratio": c.ratio, "plain": dataclasses.asdict(c.plain), "first": dataclasses.asdict(c.first),
            "optimised": dataclasses.asdict(c.optimised), "d_top1": c.metric_difference("metric_top1"),
            "d_nll": c.metric_difference("metric_nll"), "meets_floor": c.meets_floor}


if __name__ == "__main__":
    sys.exit(main())
