"""``bench perf --compile``: a trial eager and compiled (``train.compile``), side by side.

Per trial, in this process: eager with warm caches; compiled on an empty inductor cache (``cold``: dynamo
traces, inductor generates and builds the code); compiled again (``same worker``: a Tune actor's next trial of
the same shape, which reuses the graph). Then compiled in a fresh process on the filled cache (``new worker``:
code loaded from ``<cache_dir>/inductor``). Training seconds leave compile seconds out, so the table shows the
step-time gain and the one-off cost apart, and the trials of one shape a worker must run before compiling pays.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from bench.config import TrialConfig
from bench.perf.flops import matmul_gflops, matmul_label, training_flops_per_image
from bench.perf.trials import PerfTrial, default_trials, run_child
from bench.utils.tables import markdown_table

COLUMNS = (
    "trial",
    "eager train_s",
    "compiled train_s",
    "step speed-up",
    "compile_s cold",
    "compile_s new worker",
    "compile_s same worker",
    "trials to break even",
    "d_top1",
    "d_nll",
    "FLOP/s of peak eager / compiled",  # full fine-tuning only
)


def compile_trials(*, quick: bool) -> list[PerfTrial]:
    """The half-frozen and full fine-tuning trials of ``bench perf`` (a linear probe trains a linear head on
    cached features: nothing to compile)."""
    return [t for t in default_trials(quick=quick) if t.config.strategy in ("partial", "full")]


def _in_process(config: TrialConfig) -> dict:
    from bench import training

    tic = time.perf_counter()
    row = training.run_trial(config).row
    row["wall_seconds"] = time.perf_counter() - tic
    return row


def break_even(eager_train: float, compiled_train: float, compile_seconds: float) -> str:
    """Trials of one shape a worker runs before compiling them once (from the disk cache) has paid."""
    gain = eager_train - compiled_train
    return "never" if gain <= 0 else str(math.ceil(compile_seconds / gain))


def compare_compiled(*, quick: bool, threads: int, scratch: Path) -> tuple[str, list[str]]:
    """The markdown table and a note per trial on FLOP/s."""
    import torch

    device = torch.device("cpu")
    peak = matmul_gflops(device)
    rows, notes = [], []
    for index, trial in enumerate(compile_trials(quick=quick)):
        cache = scratch / f"compile{index}"
        base = dataclasses.replace(trial.config, cache_dir=str(cache), similarity=False)
        eager_config, compiled_config = (dataclasses.replace(base, compile=c) for c in ("off", "on"))
        print(f"[{index + 1}] {trial.name}: eager, compiled cold, compiled again, compiled in a new process ...")
        _in_process(eager_config)  # dataset and prefix caches warm, as in a suite
        eager = _in_process(eager_config)
        cold = _in_process(compiled_config)
        same = _in_process(compiled_config)
        fresh = run_child(compiled_config, threads=threads).row
        full = trial.config.strategy == "full"
        per_image = training_flops_per_image(trial.config, eager["n_classes"])
        gflops = [per_image * r["images_per_second"] / 1e9 for r in (eager, same)]
        rows.append(
            [
                trial.name,
                f"{eager['train_seconds']:.2f}",
                f"{same['train_seconds']:.2f}",
                f"{eager['train_seconds'] / same['train_seconds']:.2f}",
                f"{cold['compile_seconds']:.1f}",
                f"{fresh['compile_seconds']:.1f}",
                f"{same['compile_seconds']:.1f}",
                break_even(eager["train_seconds"], same["train_seconds"], fresh["compile_seconds"]),
                f"{abs(eager['metric_top1'] - same['metric_top1']):.2f}",
                f"{abs(eager['metric_nll'] - same['metric_nll']):.4f}",
                f"{100 * gflops[0] / peak:.0f}% / {100 * gflops[1] / peak:.0f}%" if full else "-",
            ]
        )
        if not full:  # the frozen prefix's outputs are cached: the FLOPs of the whole model are not what ran
            continue
        notes.append(
            f"{trial.name}: {per_image / 1e9:.3f} GFLOP per training image; {gflops[0]:.1f} GFLOP/s eager, "
            f"{gflops[1]:.1f} compiled, of this machine's {matmul_label(device)}, {peak:.1f} GFLOP/s; "
            f"{same['compiled_steps']}/{same['hp_total_steps']} steps through the graph"
        )
    return markdown_table(COLUMNS, rows), notes
