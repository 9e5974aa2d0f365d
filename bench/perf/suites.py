"""Whole suites: ``bench run`` against one plain process per trial (same leaderboard), and ``bench run
--num-cpus 1`` against the same trials in one process (Ray's overhead)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bench.perf.trials import run_plain
from bench.utils.tables import markdown_table

if TYPE_CHECKING:
    import pandas as pd

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
    finished = subprocess.run(command + (["--smoke"] if smoke else []), capture_output=True, text=True, check=False)
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
    merged = a[keys + ["rank", "mean"]].merge(
        b[keys + ["rank", "mean"]], on=keys, how="outer", suffixes=("_a", "_b"), indicator=True
    )
    same = bool((merged["_merge"] == "both").all() and (merged["rank_a"] == merged["rank_b"]).all())
    return same, float((merged["mean_a"] - merged["mean_b"]).abs().max())


def with_compile(suite_path: str, setting: str, folder: Path) -> str:
    """A copy of the suite file with ``train.compile: <setting>`` (in ``folder``; same name, same trials)."""
    import yaml

    from bench.suite.reading import load_yaml

    data = load_yaml(Path(suite_path))
    data.setdefault("train", {})["compile"] = setting
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / f"{Path(suite_path).stem}-compile-{setting}.yaml"
    copy.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(copy)


def compare_suite(
    suite_path: str,
    *,
    smoke: bool,
    workers: int,
    threads: int,
    scratch: Path,
    keep: Path | None = None,
    compile_setting: str | None = None,
) -> list[str]:
    """The whole suite through `bench run` against each of its trials as its own plain process (``workers``
    at a time, as Ray runs ``workers`` trials at a time on ``workers`` CPUs). Floor: ratio >= 3, same
    leaderboard. ``compile_setting``: also `bench run` with ``train.compile`` set so, against the same plain runs."""
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd

    from bench.suite import load_suite

    trials = load_suite(suite_path, smoke=smoke).trials()
    runs = {"bench run": suite_path}
    if compile_setting is not None:
        runs[f"bench run, compile {compile_setting}"] = with_compile(suite_path, compile_setting, scratch / "suites")
    measured = {}
    for index, (label, path) in enumerate(runs.items()):
        print(f"{label} ...", flush=True)
        measured[label] = _bench_run(path, smoke=smoke, out=scratch / f"suite-run{index}", num_cpus=workers)
    print(f"{len(trials)} plain processes ...", flush=True)
    tic = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        plain = list(pool.map(lambda config: run_plain(config, threads=threads), trials))
    plain_wall = time.perf_counter() - tic
    plain_table = pd.DataFrame([m.row for m in plain])
    rows = []
    for index, (label, (bench_wall, bench_table)) in enumerate(measured.items()):
        joined = bench_table.merge(plain_table, on="trial_id", suffixes=("_bench", "_plain"))
        d_top1 = float((joined["metric_top1_bench"] - joined["metric_top1_plain"]).abs().max())
        if keep is not None:
            _keep_tables(keep / str(index) if index else keep, bench_table, plain_table, joined)
        same, d_mean = leaderboard_difference(bench_table, plain_table)
        ratio = plain_wall / bench_wall
        compile_s = bench_table["compile_seconds"].sum() if "compile_seconds" in bench_table else 0.0
        rows.append(
            [
                f"suite {Path(suite_path).name}{' --smoke' if smoke else ''} ({len(trials)} trials), {label}",
                f"{plain_wall:.0f}",
                f"{bench_wall:.0f}",
                f"{compile_s:.0f}",
                f"{ratio:.2f}",
                "3",
                f"{len(joined)}/{len(trials)}",
                f"{d_top1:.2f}",
                "yes" if same else "NO",
                f"{d_mean:.2f}",
                "yes" if ratio >= 3 and same else "NO",
            ]
        )
    header = (
        "run",
        "plain processes_s",
        "bench run_s",
        "compile_s (trials' sum)",
        "ratio",
        "floor",
        "trials matched",
        "d_top1 max",
        "same leaderboard",
        "d_mean top1",
        "ok",
    )
    return [markdown_table(header, rows)]


def _keep_tables(folder: Path, bench_table: pd.DataFrame, plain_table: pd.DataFrame, joined: pd.DataFrame) -> None:
    """Both trial tables and, per trial, the two top-1s and their difference, largest first."""
    folder.mkdir(parents=True, exist_ok=True)
    bench_table.to_parquet(folder / "bench.parquet")
    plain_table.astype({c: str for c in plain_table.columns if plain_table[c].dtype == object}).to_parquet(
        folder / "plain.parquet"
    )
    columns = [
        "trial_id",
        "dataset_bench",
        "backbone_bench",
        "pretrained_bench",
        "freeze_bench",
        "data_fraction_bench",
        "seed_bench",
        "frozen_prefix_bench",
        "metric_top1_bench",
        "metric_top1_plain",
    ]
    diff = joined[[c for c in columns if c in joined.columns]].copy()
    diff["d_top1"] = joined["metric_top1_bench"] - joined["metric_top1_plain"]
    diff.sort_values("d_top1", key=abs, ascending=False).to_csv(folder / "diff.csv", index=False)


def in_process_suite(suite_path: str, smoke: bool, cache_dir: str, threads: int) -> int:
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
    command = [
        sys.executable,
        "-m",
        "bench.perf",
        "--in-process-suite",
        suite_path,
        "--threads",
        str(threads),
        "--cache-dir",
        str(scratch / "in-process-cache"),
    ] + (["--smoke"] if smoke else [])
    tic = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    in_process = time.perf_counter() - tic
    if finished.returncode != 0:
        raise RuntimeError(f"in-process suite failed: {finished.stderr.strip()[-2000:]}")
    ray_wall, table = _bench_run(suite_path, smoke=smoke, out=scratch / "ray-run", num_cpus=1)
    overhead = ray_wall / in_process - 1
    row = [
        f"ray overhead {Path(suite_path).name}{' --smoke' if smoke else ''} ({n_trials} trials)",
        f"{in_process:.0f}",
        f"{ray_wall:.0f}",
        f"{100 * overhead:.0f}%",
        "10%",
        f"{int((table['status'] == 'ok').sum()) if len(table) else 0}/{n_trials}",
        "yes" if overhead <= 0.10 else "NO",
    ]
    header = ("run", "in-process_s", "bench run --num-cpus 1_s", "overhead", "ceiling", "ok rows", "ok")
    return [markdown_table(header, [row])]
