"""Kill -9 of the driver while its dataset is being prepared, then `bench run --resume`: the shards already
written are reused, none is decoded twice, and no partial shard is ever read (the published dataset is the
in-memory decode bit for bit)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, bench, kill_driver, require, start_bench, wait_until, write_suite

from bench.data import prepare_dataset

pytestmark = pytest.mark.slow

BLOOD = DATA / "pbc_blood_cells"  # 2,417 JPEGs of 360 x 363 px: seconds of decoding on 2 cores


def test_driver_killed_while_preparing_then_resume_reuses_whole_shards(tmp_path: Path, monkeypatch) -> None:
    require(BLOOD.is_dir(), f"the blood-cell images are not at {BLOOD}")
    monkeypatch.setenv("BENCH_SHARD_MB", "0.2")  # 7 images a shard at 96 px: hundreds of shards
    name = f"imagefolder:{BLOOD}"
    suite = write_suite(
        tmp_path,
        name="cells",
        datasets=f"['{name}']",
        freeze="[linear_probe]",
        sizes="data_fraction: [0.05]",
        seeds="[0]",
        steps=2,
    )
    suite.write_text(suite.read_text().replace("img_size: 32", "img_size: 96"))
    out, log = tmp_path / "out", tmp_path / "first.log"
    driver = start_bench("run", suite, "--out", out, "--num-cpus", "2", log=log)
    try:
        thirty = wait_until(lambda: any(len(list(p.glob("*.json"))) >= 30 for p in _partial(out)), 300, driver)
        assert thirty and driver.poll() is None, log.read_text()
    finally:
        kill_driver(driver)  # the driver alone first, as a crash would; then its local Ray, so nothing writes on
    (folder,) = _partial(out)
    assert not list(folder.parent.glob("*/meta.json")), "the dataset was published before the kill"
    whole_before = {p.stem for p in folder.glob("*.json")}
    assert len(whole_before) >= 30

    resumed = bench("run", suite, "--out", out, "--resume", "--num-cpus", "2", timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    line = next(li for li in resumed.stdout.splitlines() if li.startswith(f"bench: dataset {name}"))
    found = re.search(r"(\d+) reused", line)
    reused = int(found.group(1)) if found else 0
    assert reused >= len(whole_before), line
    published = next(out.glob("**/datasets/*/meta.json")).parent
    meta = json.loads((published / "meta.json").read_text())
    assert meta["shards_reused"] == reused
    assert not [p.name for p in published.iterdir() if p.name.startswith(".")]  # no temporary left
    fresh = prepare_dataset(name, 96)  # in memory, no shards: what every shard must hold
    for split in ("train", "test"):
        parts = [np.load(published / f"{s['name']}.npy") for s in meta["shards"][split]]
        assert np.array_equal(np.concatenate(parts), fresh.x_train[:] if split == "train" else fresh.x_test[:])


def _partial(out: Path) -> list[Path]:
    """The folders of preparations under way below ``out``."""
    return list(out.glob("**/datasets/*.partial"))
