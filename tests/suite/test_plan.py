"""Tests for bench.suite.plan (``bench validate SUITE --plan``): counts, shard and feature bytes, memory shares."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, bench
from PIL import Image

from bench.cli import main
from bench.data import shards
from bench.data.prepare import prepare_dataset
from bench.suite import load_suite
from bench.suite.plan import SIMILARITY_BATCH, SuitePlan, format_plan, plan_suite
from bench.utils.memory import frozen_feature_bytes

CLASSES, TRAIN, TEST = 3, 10, 4  # per class
SIZE = 32
PIXELS = 3 * SIZE * SIZE
DIM = 1280  # efficientnet_lite0's pooled features
GIB = 2**30


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A small image folder: train/ and test/, three classes of PNGs."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for split, count in (("train", TRAIN), ("test", TEST)):
        for label in range(CLASSES):
            (root / split / f"class{label}").mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"class{label}" / f"{i}.png")
    return root


def write_suite(tmp_path: Path, datasets: str, cpu: float = 1, batch: int = 8) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(f"""
name: plan
backbones: [efficientnet_lite0]
datasets: {datasets}
grid: {{freeze: [linear_probe, full], data_fraction: [0.5, 1.0], seed: [0, 1]}}
train: {{img_size: {SIZE}, steps: 2, batch_size: {batch}, lr: 1.0e-3}}
tune: {{resources_per_trial: {{cpu: {cpu}, gpu: 0}}}}
""")
    return path


def planned(tmp_path: Path, folder: Path, **kwargs) -> SuitePlan:
    suite = load_suite(write_suite(tmp_path, f'["imagefolder:{folder}"]'))
    return plan_suite(suite, cache_dir=tmp_path / "cache", **{"node_memory": 8 * GIB, "node_cpus": 4, **kwargs})


def test_image_folder_counted(tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards, "SHARD_MB", 0.01)  # 3 images a shard at 32 px: several shards per split
    plan = planned(tmp_path, folder)
    (data,) = plan.datasets
    n_train, n_test = CLASSES * TRAIN, CLASSES * TEST
    items = shards.shard_items(SIZE, 0.01)
    assert (data.source, data.images, data.n_train, data.n_test) == ("counted", n_train + n_test, n_train, n_test)
    assert data.shards == math.ceil(n_train / items) + math.ceil(n_test / items) == 14
    assert data.shard_bytes == plan.shard_bytes == (n_train + n_test) * (PIXELS + 8)
    rows = n_train + CLASSES * 1 + n_test  # val: 10% of each class's 10 training images
    (features,) = plan.features
    assert (features.feature_dim, features.rows, features.weights) == (DIM, rows, 1)
    assert features.memory_bytes == features.disk_bytes == plan.feature_bytes == rows * DIM * 4
    assert features.memory_bytes == frozen_feature_bytes(rows, DIM)
    assert features.similarity_bytes == plan.similarity_bytes == n_train * DIM * 4  # the pretrained twin's train rows
    assert not plan.over_share
    text = format_plan(plan)
    assert f"{(n_train + n_test) * (PIXELS + 8):,} bytes" in text and f"{rows * DIM * 4:,} bytes" in text
    assert "counted" in text and "~" not in text  # every figure exact
    assert "every probe of known size fits its share (1 of 1)" in text


def test_prepared_dataset_counts_from_the_cache(tmp_path: Path, folder: Path) -> None:
    prepared = prepare_dataset(f"imagefolder:{folder}", SIZE, cache_dir=tmp_path / "cache")
    (data,) = planned(tmp_path, folder).datasets
    assert (data.source, data.fingerprint) == ("prepared", prepared.fingerprint)
    assert (data.n_train, data.n_test) == (len(prepared.y_train), len(prepared.y_test))
    assert data.exact and data.bytes_exact and data.rows_exact
    on_disk = sum(p.stat().st_size for p in Path(prepared.meta["cache_path"]).glob("*-*.npy"))
    assert data.shard_bytes == on_disk + 8 * data.images


def test_tiny_node_flags_probe_cells(tmp_path: Path, folder: Path) -> None:
    plan = planned(tmp_path, folder, node_memory=2**20, node_cpus=16)  # 64 KiB a trial
    assert [(f.backbone, f.dataset) for f in plan.over_share] == [("efficientnet_lite0", f"imagefolder:{folder}")]
    text = format_plan(plan)
    assert "over share" in text and "refused at run time (1 of 1)" in text


def test_unknown_dataset_is_not_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere"  # on the workers, perhaps: validation passes, the plan cannot count it
    plan = plan_suite(load_suite(write_suite(tmp_path, f'["imagefolder:{missing}", digits]')), cache_dir=None)
    unknown, digits = plan.datasets
    assert (unknown.source, unknown.images) == ("unknown", None) and "does not exist" in unknown.note
    assert (digits.source, digits.images) == ("counted", 1797)
    assert plan.shard_bytes == digits.shard_bytes == 1797 * (PIXELS + 8)
    assert f"unknown: imagefolder:{missing}" in format_plan(plan)


def test_shipped_regimes_plans_from_the_registry(tmp_path: Path) -> None:
    suite = load_suite(REPO / "suites" / "regimes.yaml")
    plan = plan_suite(suite, cache_dir=tmp_path / "cache", node_memory=64 * GIB, node_cpus=16)
    sources = {d.name: (d.source, d.images) for d in plan.datasets}
    assert sources["pcam"] == ("registry", 327_680) and sources["cifar100"] == ("registry", 60_000)
    dims = {f.backbone: f.feature_dim for f in plan.features}
    assert dims["timm:resnet50.a1_in1k"] == 2048 and dims["timm:vit_small_patch16_224.augreg_in21k_ft_in1k"] == 384
    pcam = next(f for f in plan.features if f.backbone == "timm:resnet50.a1_in1k" and f.dataset == "pcam")
    assert pcam.weights == 4  # the pretrained body and the scratch twin's, once per seed
    assert plan.share_bytes == 16 * GIB  # 16 CPUs, 4 per trial
    text = format_plan(plan)
    assert "327,680" in text and "registry" in text


def test_validate_without_plan_is_unchanged(tmp_path: Path, folder: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_suite(tmp_path, f'["imagefolder:{folder}"]')
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: suite 'plan' is valid: 8 trials\n"
    assert main(["validate", str(path), "--plan", "--node-cpus", "0"]) == 2  # one line, no traceback
    assert "--node-cpus: expected a number > 0" in capsys.readouterr().err


def test_cli_plan(tmp_path: Path, folder: Path) -> None:
    path, out = write_suite(tmp_path, f'["imagefolder:{folder}"]'), tmp_path / "plan.json"
    done = bench(
        "validate", path, "--plan", "--cache-dir", tmp_path / "cache", "--node-memory-gb", 0.0001, "--plan-json", out
    )
    assert done.returncode == 0, done.stderr
    images = CLASSES * (TRAIN + TEST)
    assert "suite 'plan' is valid: 8 trials" in done.stdout and f"{images * (PIXELS + 8):,} bytes" in done.stdout
    assert "over share" in done.stdout
    totals = json.loads(out.read_text())["totals"]
    assert totals["shard_bytes"] == images * (PIXELS + 8) and len(totals["over_share"]) == 1


def test_similarity_rows_shared_with_a_probe_at_its_batch(tmp_path: Path, folder: Path) -> None:
    suite = load_suite(write_suite(tmp_path, f'["imagefolder:{folder}"]', batch=SIMILARITY_BATCH["cpu"]))
    plan = plan_suite(suite, cache_dir=None)
    assert plan.similarity_bytes == 0 and plan.feature_bytes > 0  # one file: the probe's training rows


def test_similarity_batch_is_the_feature_pass_batch() -> None:
    from bench.speedups.features import BATCH_SIZE

    assert SIMILARITY_BATCH == BATCH_SIZE  # the plan keeps a copy so that it need not import torch
