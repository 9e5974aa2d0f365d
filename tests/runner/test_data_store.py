"""Prepared datasets in object storage: `bench run --cache-dir s3://...` on a real S3 server on 127.0.0.1.

A first run decodes a dataset and uploads every shard, its record, the labels and, last, the manifest; a run with
a fresh local cache (another `--out`) decodes nothing and copies the shards from the store into its node's cache,
with the same metrics; a store that lost its manifest and one shard's record (a preparation that died part way)
has the other shard reused and only that one decoded again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import bench, read_rows, run_folder, write_suite
from s3_server import BUCKET, s3_server


def test_a_store_cache_is_for_bench_run_only(tmp_path: Path) -> None:
    suite = write_suite(tmp_path)
    for command, name in (([suite, "--plan"], "validate --plan"), ([suite], "similarity")):
        done = bench(name.split()[0], *command, "--cache-dir", "s3://bucket/cache?secret_key=hidden")
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == (
            f"bench: error: --cache-dir s3://bucket/cache: bench {name} needs a local folder (a URI is for bench run)"
        )


@pytest.mark.slow
def test_shards_go_to_the_store_and_a_fresh_cache_reads_them_back(tmp_path: Path) -> None:
    suite = write_suite(
        tmp_path, name="store", freeze="[linear_probe, full]", sizes="data_fraction: [1.0]", seeds="[0]", steps=2
    )
    uri = f"s3://{BUCKET}/cache"
    with s3_server() as s3:
        env = s3.env()
        first = _run(suite, tmp_path / "a", uri, env)
        objects = s3.objects("cache/datasets")
        (manifest_key,) = [key for key in objects if key.endswith("/meta.json")]
        folder = manifest_key.rsplit("/", 1)[0]
        with s3.fs().open_input_stream(manifest_key) as stream:
            manifest = json.loads(stream.read())
        shard_files = [s for split in ("train", "test") for s in manifest["shards"][split]]
        for shard in shard_files:  # every shard whole, with its record
            assert objects[f"{folder}/{shard['file']}"] == shard["nbytes"]
            assert f"{folder}/{shard['name']}.json" in objects
        assert {f"{folder}/y_train.npy", f"{folder}/y_test.npy"} <= set(objects)
        assert "shards decoded by node: " in first.stdout and f"in s3://{folder}" in first.stdout

        second = _run(suite, tmp_path / "b", uri, env)  # a fresh local cache: everything comes from the store
        assert f"prepared before (s3://{folder})" in second.stdout, second.stdout
        rows_a, rows_b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
        assert rows_a["dataset_copied_mb"].sum() == 0  # decoded on this node: nothing to copy
        shard_bytes = (
            sum(s["nbytes"] for s in shard_files) + objects[f"{folder}/y_train.npy"] + objects[f"{folder}/y_test.npy"]
        )
        assert rows_b["dataset_copied_mb"].sum() * 2**20 == pytest.approx(shard_bytes)
        metrics = ["trial_id", "metric_top1", "metric_macro_f1", "metric_nll", "metric_val_top1"]
        pd.testing.assert_frame_equal(rows_a[metrics], rows_b[metrics])
        local_a = tmp_path / "a" / ".cache" / "datasets" / manifest["fingerprint"]
        local_b = tmp_path / "b" / ".cache" / "datasets" / manifest["fingerprint"]
        for shard in shard_files:
            assert np.array_equal(np.load(local_a / shard["file"]), np.load(local_b / shard["file"]))

        # A preparation that died after uploading the test shard: no manifest, the train shard's record gone.
        for name in ("meta.json", "train-00000.json"):
            s3.fs().delete_file(f"{folder}/{name}")
        third = _run(suite, tmp_path / "c", uri, env)
        assert f"in {len(shard_files)} shards" in third.stdout and f"{len(shard_files) - 1} reused" in third.stdout
        assert f"{folder}/meta.json" in s3.objects("cache/datasets")
        rows_c = _rows(tmp_path / "c")
        pd.testing.assert_frame_equal(rows_a[metrics], rows_c[metrics])

        missing = bench("run", suite, "--out", tmp_path / "d", "--cache-dir", "s3://no-such-bucket/cache", env=env)
        assert missing.returncode == 2 and "no-such-bucket" in missing.stderr, missing.stderr
        assert "Traceback" not in missing.stderr and not (tmp_path / "d").exists()


def _run(suite: Path, out: Path, uri: str, env: dict[str, str]):
    done = bench("run", suite, "--out", out, "--cache-dir", uri, "--num-cpus", "2", env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _rows(out: Path) -> pd.DataFrame:
    return read_rows(run_folder(out, "store")).sort_values("trial_id").reset_index(drop=True)
