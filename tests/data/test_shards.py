"""Prepared datasets as shards: reading them back, resuming an interrupted preparation, and trials on sharded
data giving the in-memory path's numbers bit for bit."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import training as core
from bench.config import TrialConfig
from bench.data import prepare_dataset, shards
from bench.data.prepare import plan_dataset
from bench.data.shards import ImageRows


def _parts(rng: np.random.Generator, counts: list[int], side: int = 4) -> tuple[list[np.ndarray], np.ndarray]:
    parts = [rng.integers(0, 256, (n, 3, side, side), dtype=np.uint8) for n in counts]
    return parts, np.concatenate(parts)


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 6), min_size=1, max_size=5).filter(lambda c: sum(c) > 0),
    picks=st.lists(st.integers(-40, 40), max_size=12),
    subset=st.booleans(),
)
def test_image_rows_index_like_the_concatenated_array(counts: list[int], picks: list[int], subset: bool) -> None:
    parts, whole = _parts(np.random.default_rng(sum(counts)), counts)
    rows = ImageRows(parts, counts)
    if subset:  # a view through an index, as a trial's training subset is
        order = np.random.default_rng(len(counts)).permutation(len(whole))[: max(1, len(whole) // 2)]
        rows, whole = rows.take(order), whole[order]
    n = len(whole)
    assert len(rows) == n and rows.shape == whole.shape
    valid = [p for p in picks if -n <= p < n]
    assert np.array_equal(rows[np.array(valid, dtype=np.int64)], whole[valid])
    assert np.array_equal(rows[1 : n - 1 : 2], whole[1 : n - 1 : 2])
    assert np.array_equal(rows[:, 0], whole[:, 0])
    assert np.array_equal(rows[whole[:, 0, 0, 0] > 127], whole[whole[:, 0, 0, 0] > 127])
    if valid:
        assert np.array_equal(rows[valid[0]], whole[valid[0]])
    if any(not -n <= p < n for p in picks):
        with pytest.raises(IndexError):
            rows[np.array(picks, dtype=np.int64)]


def test_image_rows_read_shards_lazily_and_pickle_as_paths(tmp_path: Path) -> None:
    parts, whole = _parts(np.random.default_rng(0), [3, 5], side=32)  # 24 KiB of pixels
    for k, part in enumerate(parts):
        np.save(tmp_path / f"p{k}.npy", part)
    rows = ImageRows([tmp_path / "p0.npy", tmp_path / "p1.npy"], [3, 5])
    assert np.array_equal(rows[[7, 0, 4]], whole[[7, 0, 4]])
    pickled = pickle.dumps(rows)
    assert len(pickled) < len(pickle.dumps(whole)) / 10  # the paths and counts, not the pixels
    copy = pickle.loads(pickled)
    assert np.array_equal(copy[:], whole)
    batch = rows[[1, 2]]
    batch[:] = 0  # a copy: the shards are untouched
    assert np.array_equal(rows[:], whole)


def test_shards_concatenate_to_the_whole_split_decode(tmp_path: Path) -> None:
    """Small shards (7 images) hold exactly the in-memory decode, in order; labels and counts agree."""
    whole = prepare_dataset("digits", 16)
    sharded = prepare_dataset("digits", 16, cache_dir=tmp_path, shard_mb=7 * 3 * 16 * 16 / 2**20)
    assert sharded.fingerprint == whole.fingerprint  # sharding does not change what the pixels are
    meta = sharded.meta
    assert [s["count"] for s in meta["shards"]["train"]][:2] == [7, 7]
    assert len(meta["shards"]["train"]) == -(-len(whole.y_train) // 7)
    for split in ("train", "test"):
        x_whole, x_sharded = getattr(whole, f"x_{split}"), getattr(sharded, f"x_{split}")
        assert np.array_equal(x_sharded[:], x_whole[:])
        assert np.array_equal(getattr(sharded, f"y_{split}"), getattr(whole, f"y_{split}"))


def test_an_interrupted_preparation_reuses_its_whole_shards_and_ignores_partial_ones(tmp_path: Path) -> None:
    size = 7 * 3 * 16 * 16 / 2**20
    plan = plan_dataset("digits", 16, cache_dir=tmp_path)
    assert plan.partial is not None
    raw = plan.load()
    jobs = shards.plan_shards({"train": raw.train.length, "test": raw.test.length}, shards.shard_items(16, size))
    for job in jobs[:5]:  # five shards whole, then the process "died": a torn file and a shard without record
        shards.write_shard(plan.partial, job, raw.train.window(job.start, job.stop), 16, "before")
    (plan.partial / ".train-00005-torn.npy").write_bytes(b"\x93NUMPY half")
    (plan.partial / "train-00006.npy").write_bytes(b"\x93NUMPY renamed, record never written")
    (plan.partial / "train-00007.json").write_text("{")
    resumed = prepare_dataset("digits", 16, cache_dir=tmp_path, shard_mb=size)
    assert resumed.meta["shards_reused"] == 5
    assert set(resumed.meta["decoded_by"][f"train-{k:05d}"] for k in range(5)) == {"before"}
    assert resumed.meta["decoded_by"]["train-00006"] != "before"
    fresh = prepare_dataset("digits", 16)
    assert np.array_equal(resumed.x_train[:], fresh.x_train[:]) and np.array_equal(resumed.y_train, fresh.y_train)
    folder = tmp_path / "datasets" / resumed.fingerprint
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # leftovers cleared at publishing
    record = json.loads((folder / "train-00006.json").read_text())
    assert record["count"] == 7 and (folder / "train-00006.npy").stat().st_size == record["nbytes"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "changes",
    [
        {"freeze": "linear_probe"},  # the frozen-feature pass streams over the shards
        {"freeze": 0.5},  # the frozen-prefix pass
        {"freeze": "full", "augment": "crop_flip"},  # images batch by batch through the whole model
    ],
    ids=["probe", "half", "full"],
)
def test_a_trial_on_shards_gives_the_in_memory_numbers_bit_for_bit(tmp_path: Path, changes: dict) -> None:
    config = TrialConfig(
        backbone="efficientnet_lite0", dataset="digits", img_size=32, steps=6, batch_size=16, lr=1e-3, **changes
    )
    in_memory = prepare_dataset("digits", 32)
    sharded = prepare_dataset("digits", 32, cache_dir=tmp_path / "cache", shard_mb=50 * 3 * 32 * 32 / 2**20)
    assert len(sharded.meta["shards"]["train"]) > 20
    rows = []
    for data, cache in ((in_memory, None), (sharded, str(tmp_path / "cache"))):
        result = core.run_trial(dataclasses.replace(config, cache_dir=cache, similarity=False), data=data)
        assert result.row["status"] == "ok", result.row["error"]
        rows.append((result.row, result.epochs))
    (plain, plain_epochs), (shard, shard_epochs) = rows
    for column in ("metric_top1", "metric_macro_f1", "metric_nll", "metric_val_top1"):
        assert plain[column] == shard[column], column
    assert [e["train_loss"] for e in plain_epochs] == [e["train_loss"] for e in shard_epochs]
    assert shard["dataset_shards"] == len(sharded.meta["shards"]["train"]) + len(sharded.meta["shards"]["test"])


def test_jpeg_shards_are_smaller_read_back_close_and_have_their_own_fingerprint(tmp_path: Path) -> None:
    raw = prepare_dataset("photo_patches", 64, cache_dir=tmp_path, shard_mb=0.5)
    jpeg = prepare_dataset("photo_patches", 64, cache_dir=tmp_path, shard_mb=0.5, shard_format="jpeg")
    assert jpeg.fingerprint != raw.fingerprint and jpeg.meta["shard_format"] == "jpeg"
    sizes = {
        name: sum(s["nbytes"] for split in ("train", "test") for s in data.meta["shards"][split])
        for name, data in (("raw", raw), ("jpeg", jpeg))
    }
    assert sizes["jpeg"] < sizes["raw"] / 3
    assert jpeg.x_train.shape == raw.x_train.shape and np.array_equal(jpeg.y_train, raw.y_train)
    picks = np.array([0, 5, len(raw.y_train) - 1, 3])
    error = np.abs(jpeg.x_train[picks].astype(int) - raw.x_train[picks].astype(int)).mean()
    assert 0 < error < 4  # quality 90: lossy, but close
    again = prepare_dataset("photo_patches", 64, cache_dir=tmp_path, shard_format="jpeg")
    assert np.array_equal(again.x_test[:], jpeg.x_test[:])  # a cache hit decodes the same bytes the same way
