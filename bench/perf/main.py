"""``bench perf`` / ``python -m bench.perf``: the same trials the plain way and bench's way, side by side.

Prints wall time, images/s, peak memory, the ratio, the largest metric differences and, for full
fine-tuning, the achieved FLOP/s against the machine's matmul rate. Floors, printed as ``floor`` and ``ok``
and never asserted on timings: linear probe >= 10x, half-frozen >= 1.5x, full fine-tuning >= 0.95x,
``--suite`` >= 3x with the same leaderboard, ``--ray-overhead`` <= 10%. What each side is and how each figure
is measured: docs/performance.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.perf.flops import (
    achieved_gflops,
    depthwise_step_times,
    matmul_gflops,
    matmul_label,
    training_flops_per_image,
)
from bench.perf.suites import compare_ray_overhead, compare_suite, in_process_suite
from bench.perf.trials import (
    COLUMNS,
    Comparison,
    default_trials,
    machine_line,
    plain_child,
    run_optimised,
    run_plain,
    table_rows,
)
from bench.utils.tables import markdown_table

# ---------------------------------------------------------------------------------------------------------
# entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench perf",
        description="plain vs optimised trials: wall time, "
        "images/s, peak memory, ratio and metric differences (floors: docs/performance.md)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny trials (32 px, 3 steps): for tests")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial, both ways (default 1)")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="cache folder of the optimised runs (default: a temporary folder, removed at the end)",
    )
    parser.add_argument("--json", default=None, help="also write the measurements to this JSON file")
    parser.add_argument(
        "--keep",
        default=None,
        metavar="DIR",
        help="with --suite: keep both trial tables "
        "(DIR/bench.parquet, DIR/plain.parquet) and the per-trial differences (DIR/diff.csv)",
    )
    parser.add_argument(
        "--suite",
        default=None,
        metavar="SUITE",
        help="instead: SUITE through `bench run` vs each of its trials as a plain process (floor 3x, same leaderboard)",
    )
    parser.add_argument(
        "--ray-overhead",
        default=None,
        metavar="SUITE",
        help="instead: `bench run --num-cpus 1` vs the same trials in one process (ceiling 10%%)",
    )
    parser.add_argument("--smoke", action="store_true", help="with --suite / --ray-overhead: the suite's smoke variant")
    parser.add_argument(
        "--depthwise",
        action="store_true",
        help="instead: one training step with PyTorch's "
        "depthwise backward and with bench.speedups.depthwise's padded weight gradient (--img-size)",
    )
    parser.add_argument("--img-size", type=int, default=48, help="with --depthwise (default 48)")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="trials",
        choices=("trials", "off", "on", "auto"),
        default=None,
        help="instead: the half-frozen and full trials eager against compiled (train.compile); with --suite: "
        "bench run's train.compile (off, on, auto)",
    )
    parser.add_argument("--workers", type=int, default=2, help="with --suite: trials at a time, both ways (default 2)")
    parser.add_argument(
        "--scale",
        action="store_true",
        help="instead: bench run's dataset preparation against dataset size (own options: bench perf --scale --help)",
    )
    parser.add_argument("--plain-trial", default=None, help=argparse.SUPPRESS)  # the plain child process
    parser.add_argument("--in-process-suite", default=None, help=argparse.SUPPRESS)  # --ray-overhead's child
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--scale" in argv:  # its own options (bench.perf.scale)
        from bench.perf.scale import main as scale

        return scale([arg for arg in argv if arg != "--scale"])
    args = build_parser().parse_args(argv)
    if args.plain_trial is not None:
        return plain_child(args.plain_trial, args.threads)
    if args.in_process_suite is not None:
        return in_process_suite(args.in_process_suite, args.smoke, args.cache_dir, args.threads)
    torch.set_num_threads(args.threads)
    if args.depthwise:
        print(machine_line(args.threads), flush=True)
        print("\n".join(["", *depthwise_step_times(args.img_size)]))
        return 0
    if args.suite or args.ray_overhead:
        return _whole_suites(args)
    if args.compile == "trials":
        return _compiled_trials(args)
    trials = default_trials(quick=args.quick)
    print(machine_line(args.threads), flush=True)
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
    print(machine_line(args.threads).replace("machine:", "at the end:"))
    if args.json:
        Path(args.json).write_text(json.dumps([_as_json(c) for c in comparisons], indent=1, default=str))
    return 0


def _compiled_trials(args: argparse.Namespace) -> int:
    from bench.perf.compiled import compare_compiled

    print(machine_line(args.threads), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as scratch:
        table, notes = compare_compiled(quick=args.quick, threads=args.threads, scratch=Path(scratch))
    print()
    print(table)
    print()
    print("\n".join(notes))
    print(machine_line(args.threads).replace("machine:", "at the end:"))
    return 0


def _whole_suites(args: argparse.Namespace) -> int:
    print(machine_line(args.threads), flush=True)
    tables = []
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as scratch:
        if args.suite:
            print(f"suite {args.suite}: bench run, then one plain process per trial ...", flush=True)
            tables += compare_suite(
                args.suite,
                smoke=args.smoke,
                workers=args.workers,
                threads=args.threads,
                scratch=Path(scratch),
                keep=Path(args.keep) if args.keep else None,
                compile_setting={"trials": "on"}.get(args.compile, args.compile),  # a bare --compile: on
            )
        if args.ray_overhead:
            print(f"ray overhead {args.ray_overhead}: in one process, then bench run --num-cpus 1 ...", flush=True)
            tables += compare_ray_overhead(
                args.ray_overhead, smoke=args.smoke, threads=args.threads, scratch=Path(scratch)
            )
    for table in tables:
        print()
        print(table)
    print()
    print(machine_line(args.threads).replace("machine:", "at the end:"))
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
        notes.append(
            f"{c.trial.name}: {per_image / 1e9:.3f} GFLOP per training image (forward + backward); "
            f"achieved {plain:.1f} GFLOP/s plain, {optimised:.1f} GFLOP/s optimised = "
            f"{100 * plain / peak:.0f}% / {100 * optimised / peak:.0f}% of this machine's "
            f"{matmul_label(device)}, {peak:.1f} GFLOP/s"
        )
    return fractions, notes


def _as_json(c: Comparison) -> dict[str, Any]:
    return {
        "trial": c.trial.name,
        "config": c.trial.config.to_dict(),
        "floor": c.trial.floor,
        "ratio": c.ratio,
        "plain": dataclasses.asdict(c.plain),
        "first": dataclasses.asdict(c.first),
        "optimised": dataclasses.asdict(c.optimised),
        "d_top1": c.metric_difference("metric_top1"),
        "d_nll": c.metric_difference("metric_nll"),
        "meets_floor": c.meets_floor,
    }
