"""The GPU half of issue 6 in one prepared run: throughput against timm's training benchmark loop, the
``batch_size: auto`` search on a real card, and packed against one-at-a-time trials.

    .venv/bin/python scripts/gpu_check.py                  # a CUDA machine: about 9 minutes on one H200
    .venv/bin/python scripts/gpu_check.py --quick          # tiny sizes, any machine: checks the script itself
    .venv/bin/python scripts/gpu_check.py --tables 4,1,3,2 # the packing table first (short device minutes)
    .venv/bin/python -m bench.perf                         # the per-trial plain-vs-optimised table, separately

Prints four markdown tables (and the device line):

1. throughput: timm's ``benchmark.py --bench train`` loop, rewritten here because benchmark.py is not part of
   the timm wheel (``create_model``, timm's AdamW, bf16 autocast, channels_last, one synthetic batch reused,
   warm-up steps untimed, ``torch.cuda.synchronize`` around the timed steps) against bench's own training
   loop (``run_trial``, full fine-tuning, the same model, batch and image size, real images): training images
   per second each, and the ratio. bench's figure is the row's ``images_per_second`` (training loop only,
   evaluation excluded), for the first trial of the process (which pays CUDA's first use of every kernel)
   and for a second, warm one (the figure comparable with timm's).
2. ``batch_size: auto``: what the search picks for efficientnet_lite0 at 224 px, and that a trial at that
   size trains without running out of memory (``oom_halvings`` = 0).
3. small trials one after another (64 px, random weights): wall time, training-loop time and the rest, for a
   first trial, the same again, and trials with new tensor shapes (another data fraction, freeze 0.5, a linear
   probe): whether CUDA's first use of new kernels, not the training, dominates a small trial.
4. packing: the smoke suite (``--smoke``: 12 trials, 64 px, 2 epochs) through ``bench run`` with
   ``resources_per_trial: {gpu: 1}`` (one trial per card) and ``{gpu: 0.25}`` (four per card, each held to a
   quarter of the memory): wall time, and whether both give the same leaderboard.
5. compiled steps (``train.compile``): a small trial's (64 px, batch 64) step time eager against compiled
   (CUDA graphs on a card; target 3x), bench's warm compiled loop against timm's benchmark loop with
   ``torch.compile`` (target 1.0), and the smoke suite packed and one per card, eager against compiled
   (the compiled runs share one cache folder, so the second loads the first's generated code).

Tables 1 to 3 train from random weights (the speed is the same) and need only torch, timm and
scikit-learn, so ``--skip-packing`` runs them where Ray is not installed. On a machine without CUDA only
``--quick`` makes sense: the same code paths on the CPU (packing becomes one against two trials at a time),
so a broken script is found before a GPU session spends its minutes on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
import yaml
from timm.optim import create_optimizer_v2

from bench import training
from bench.config import TrialConfig
from bench.perf.suites import leaderboard_difference
from bench.results import store as results
from bench.runner import run_dir as runs
from bench.utils.tables import markdown_table

ROOT = Path(__file__).resolve().parent.parent


def timm_train_throughput(
    model_name: str, *, batch_size: int, img_size: int, steps: int, device: torch.device, compiled: bool = False
) -> float:
    """Images per second of timm's benchmark training loop: synthetic batch, AdamW, bf16, channels_last;
    ``compiled``: the model through ``torch.compile`` (benchmark.py's ``--torchcompile``, inductor)."""
    model = timm.create_model(model_name, num_classes=10).to(device).to(memory_format=torch.channels_last)
    model.train()
    net = torch.compile(model) if compiled else model
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=1e-4)
    inputs = torch.randn(batch_size, 3, img_size, img_size, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch_size,), device=device)

    def step() -> None:  # as benchmark.py's TrainBenchmarkRunner: loss inside autocast, no .item() per step
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(net(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(max(2, steps // 5)):  # warm-up: cuDNN autotuning, allocator
        step()
    _synchronize(device)
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return steps * batch_size / (time.perf_counter() - tic)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput_table(*, dataset: str, batch_size: int, img_size: int, steps: int, device: torch.device) -> str:
    timm_rate = timm_train_throughput(
        "efficientnet_lite0", batch_size=batch_size, img_size=img_size, steps=steps, device=device
    )
    config = TrialConfig(
        backbone="efficientnet_lite0",
        dataset=dataset,
        freeze="full",
        pretrained=False,
        img_size=img_size,
        epochs=None,
        steps=steps,
        batch_size=batch_size,
        eval_every=10**6,
        similarity=False,
        device=device.type,
    )
    # The first trial of a process pays CUDA's first use of each kernel (module loading, cuDNN's runtime-compiled
    # kernels: about 9 s on an H200); timm's loop leaves its warm-up steps out of the timing, so bench's
    # comparable figure is a second trial of the same shapes in the same process. Both are printed.
    cold = training.run_trial(config).row["images_per_second"]
    warm = training.run_trial(config).row["images_per_second"]
    header = ("loop", "model", "batch", "img px", "steps", "images/s", "bench / timm")
    rows = [
        (
            "timm benchmark loop (synthetic batch, warm)",
            "efficientnet_lite0",
            batch_size,
            img_size,
            steps,
            f"{timm_rate:,.0f}",
            "1.00",
        ),
        (
            f"bench run_trial, full fine-tuning ({dataset}), first in process",
            "efficientnet_lite0",
            batch_size,
            img_size,
            steps,
            f"{cold:,.0f}",
            f"{cold / timm_rate:.2f}",
        ),
        (
            f"bench run_trial, full fine-tuning ({dataset}), warm",
            "efficientnet_lite0",
            batch_size,
            img_size,
            steps,
            f"{warm:,.0f}",
            f"{warm / timm_rate:.2f}",
        ),
    ]
    return markdown_table(header, rows)


def auto_batch_table(*, dataset: str, img_size: int, steps: int, device: torch.device) -> str:
    config = TrialConfig(
        backbone="efficientnet_lite0",
        dataset=dataset,
        freeze="full",
        pretrained=False,
        img_size=img_size,
        epochs=None,
        steps=steps,
        batch_size="auto",
        similarity=False,
        device=device.type,
    )
    row = training.run_trial(config).row
    header = ("model", "img px", "device", "search", "batch used", "oom halvings", "images/s", "peak MB")
    rows = [
        (
            "efficientnet_lite0",
            img_size,
            row["device"],
            row["batch_size_search"],
            row["batch_size_used"],
            row["oom_halvings"],
            f"{row['images_per_second']:,.0f}",
            f"{row['peak_memory_mb']:,.0f}",
        )
    ]
    return markdown_table(header, rows)


def trial_cost_table(*, dataset: str, img_size: int, steps: int, device: torch.device) -> str:
    """Small trials one after another in this (already warm) process: what each costs beyond its training
    loop, and whether a trial with new tensor shapes (another last-batch size, other trainable layers) pays
    CUDA's first-use cost again where a repeat of the same trial does not."""
    base = TrialConfig(
        backbone="efficientnet_lite0",
        dataset=dataset,
        freeze="full",
        pretrained=False,
        img_size=img_size,
        epochs=None,
        steps=steps,
        batch_size=64,
        similarity=False,
        device=device.type,
    )
    trials = [
        ("full, first", base),
        ("full, the same again", base),
        ("full, data_fraction 0.5 (new last batch)", dataclasses.replace(base, data_fraction=0.5)),
        ("freeze 0.5 (new trainable layers)", dataclasses.replace(base, freeze=0.5)),
        ("linear_probe", dataclasses.replace(base, freeze="linear_probe", lr=1e-2, probe_solver="sgd")),  # stepped
    ]
    rows = []
    for label, config in trials:
        tic = time.perf_counter()
        row = training.run_trial(config).row
        wall = time.perf_counter() - tic
        rows.append(
            (
                label,
                row["hp_total_steps"],
                f"{wall:.2f}",
                f"{row['train_seconds']:.2f}",
                f"{wall - row['train_seconds']:.2f}",
                row["frozen_prefix"],
            )
        )
    return markdown_table(("trial", "steps", "wall s", "train loop s", "rest s", "path"), rows)


def _suite_variant(
    source: Path, folder: Path, name: str, resources: dict[str, float], concurrent: int, train: dict[str, Any]
) -> Path:
    spec = yaml.safe_load(source.read_text())
    spec["name"] = f"{spec['name']}_{name}"
    spec["tune"] = {**spec.get("tune", {}), "resources_per_trial": resources, "max_concurrent_trials": concurrent}
    spec["train"] = {**spec.get("train", {}), **train}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _bench_run(suite: Path, out: Path, smoke: bool, cache_dir: Path | None = None) -> tuple[float, Any]:
    command = [sys.executable, "-m", "bench.cli", "run", str(suite), "--out", str(out)] + (["--smoke"] if smoke else [])
    command += ["--cache-dir", str(cache_dir)] if cache_dir else []
    tic = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - tic
    if finished.returncode != 0:
        raise SystemExit(
            f"gpu_check: bench run {suite.name} failed (exit {finished.returncode}): {finished.stderr.strip()[-1500:]}"
        )
    run_dir = runs.latest_run(out, yaml.safe_load(suite.read_text())["name"])
    return wall, results.read_table(run_dir / results.TRIALS_FILE)


def packing_table(
    *, device: torch.device, quick: bool, scratch: Path, compile_settings: tuple[str, ...] = ("off",)
) -> str:
    """The smoke suite one trial per card against four per card (one against two at a time without a card),
    for each of ``compile_settings``; speed-ups against the first row. Compiled runs share a cache folder."""
    source = ROOT / "suites" / "smoke.yaml"
    train = {"img_size": 32, "epochs": 1} if quick else {"img_size": 64, "epochs": 2}
    if device.type == "cuda":
        variants = [("one per card", {"cpu": 2, "gpu": 1}, 4), ("four per card", {"cpu": 2, "gpu": 0.25}, 4)]
    else:  # the same code path without a card: one against two trials at a time
        variants = [("one at a time", {"cpu": 1, "gpu": 0}, 1), ("two at a time", {"cpu": 1, "gpu": 0}, 2)]
    measured = []
    for setting in compile_settings:
        for label, resources, concurrent in variants:
            name = f"{label.replace(' ', '_')}_compile_{setting}"
            suite = _suite_variant(source, scratch, name, resources, concurrent, {**train, "compile": setting})
            cache = scratch / f"cache_compile_{setting}"
            wall, table = _bench_run(suite, scratch / "out", smoke=True, cache_dir=cache)
            print(f"  {label}, compile {setting}: {len(table)} trials in {wall:.0f} s", flush=True)
            measured.append((label, setting, resources, wall, table))
    base_wall, base_table = measured[0][3], measured[0][4]
    header = (
        "trials",
        "compile",
        "resources_per_trial",
        "trials ok",
        "bench run s",
        "compile s (trials' sum)",
        "speed-up",
        "same leaderboard",
        "d_mean top1",
    )
    rows = []
    for label, setting, resources, wall, table in measured:
        same, d_mean = leaderboard_difference(base_table, table)
        rows.append(
            (
                label,
                setting,
                str(resources),
                f"{int((table['status'] == 'ok').sum())}/{len(table)}",
                f"{wall:.0f}",
                f"{table['compile_seconds'].sum():.0f}",
                f"{base_wall / wall:.2f}",
                "yes" if same else "NO",
                f"{d_mean:.2f}",
            )
        )
    return markdown_table(header, rows)


def compiled_step_table(*, dataset: str, batch_size: int, img_size: int, steps: int, device: torch.device) -> str:
    """A small trial's step time eager against compiled (warm: a second trial of the same shapes), and the
    warm compiled loop at the throughput size against timm's benchmark loop with torch.compile."""
    small = TrialConfig(
        backbone="efficientnet_lite0",
        dataset=dataset,
        freeze="full",
        pretrained=False,
        img_size=32 if img_size < 64 else 64,
        epochs=None,
        steps=steps,
        batch_size=min(batch_size, 64),
        eval_every=10**6,
        similarity=False,
        device=device.type,
    )
    large = dataclasses.replace(small, img_size=img_size, batch_size=batch_size)
    rows = []
    for label, config in (("small trial", small), ("throughput size", large)):
        measured = {}
        for setting in ("off", "on"):
            trial = dataclasses.replace(config, compile=setting)
            training.run_trial(trial)  # the first of a process pays CUDA's first use and the compile
            measured[setting] = training.run_trial(trial).row
        eager, done = measured["off"], measured["on"]
        step = {k: r["train_seconds"] / r["hp_total_steps"] for k, r in measured.items()}  # a mean step
        rows.append(
            (
                f"{label} ({config.img_size} px, batch {config.batch_size})",
                done["compiled"],
                f"{1000 * step['off']:.1f}",
                f"{1000 * step['on']:.1f}",
                f"{step['off'] / step['on']:.2f}",
                f"{eager['images_per_second']:,.0f}",
                f"{done['images_per_second']:,.0f}",
            )
        )
    timm_rate = timm_train_throughput(
        "efficientnet_lite0", batch_size=batch_size, img_size=img_size, steps=steps, device=device, compiled=True
    )
    rows.append(
        (
            f"timm benchmark loop, torch.compile ({img_size} px, batch {batch_size})",
            "inductor",
            "-",
            f"{1000 * batch_size / timm_rate:.1f}",
            "-",
            "-",
            f"{timm_rate:,.0f}",
        )
    )
    header = (
        "trial",
        "compiled",
        "eager ms/step",
        "compiled ms/step",
        "speed-up",
        "eager images/s",
        "compiled images/s",
    )
    return (
        markdown_table(header, rows)
        + "\n\nbench compiled / timm compiled at the throughput size: "
        + (f"{measured['on']['images_per_second'] / timm_rate:.2f}")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, on any machine")
    parser.add_argument(
        "--dataset",
        default="digits",
        help="dataset of the throughput and auto-batch trials (default digits: ships with scikit-learn)",
    )
    parser.add_argument(
        "--skip-packing",
        action="store_true",
        help="tables 1 to 3 only (they need neither Ray "
        "nor pydantic nor the weights packages: torch, timm and scikit-learn are enough)",
    )
    parser.add_argument(
        "--tables",
        default="1,2,3,4,5",
        help="which tables, in this order (default 1,2,3,4,5; "
        "5,4,1,3,2 measures the compiled steps and the packing first when the device minutes are short)",
    )
    args = parser.parse_args(argv)
    try:
        tables = [int(t) for t in args.tables.split(",")]
    except ValueError:
        tables = []
    if not tables or any(t not in (1, 2, 3, 4, 5) for t in tables):
        print(f"gpu_check: --tables {args.tables!r}: expected numbers from 1 to 5, comma-separated", file=sys.stderr)
        return 2
    if args.skip_packing:
        tables = [t for t in tables if t != 4]  # table 5's packing rows need Ray too: it prints its step rows only
    device = training.resolve_device("auto")
    if device.type != "cuda" and not args.quick:
        print("gpu_check: no CUDA device here; run with --quick to check the script on the CPU", file=sys.stderr)
        return 2
    print(f"device: {training.device_name(device)}; torch {torch.__version__}, timm {timm.__version__}", flush=True)
    size, steps, batch = (32, 4, 16) if args.quick else (224, 60, 256)
    for table in tables:
        if table == 1:
            print("\n1. training throughput\n")
            print(
                throughput_table(dataset=args.dataset, batch_size=batch, img_size=size, steps=steps, device=device),
                flush=True,
            )
        elif table == 2:
            print("\n2. batch_size: auto\n")
            print(auto_batch_table(dataset=args.dataset, img_size=size, steps=steps, device=device), flush=True)
        elif table == 3:
            small = 32 if args.quick else 64
            print(f"\n3. small trials one after another ({small} px)\n")
            print(trial_cost_table(dataset=args.dataset, img_size=small, steps=steps, device=device), flush=True)
        elif table == 4:
            print("\n4. packed against one-at-a-time trials (suites/smoke.yaml)\n")
            with tempfile.TemporaryDirectory(prefix="bench-gpu-check-") as scratch:
                os.environ.setdefault("BENCH_DATA", str(ROOT.parent / "shared" / "data"))
                print(packing_table(device=device, quick=args.quick, scratch=Path(scratch)), flush=True)
        else:
            print("\n5. compiled steps (train.compile)\n")
            print(
                compiled_step_table(dataset=args.dataset, batch_size=batch, img_size=size, steps=steps, device=device),
                flush=True,
            )
            if not args.skip_packing:
                print("\n5b. packed against one-at-a-time trials, eager against compiled\n")
                with tempfile.TemporaryDirectory(prefix="bench-gpu-check-") as scratch:
                    os.environ.setdefault("BENCH_DATA", str(ROOT.parent / "shared" / "data"))
                    table5 = packing_table(
                        device=device, quick=args.quick, scratch=Path(scratch), compile_settings=("off", "on")
                    )
                    print(table5, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
