"""Trials of a dataset start when its shards are published, not when every dataset of the run is.

A suite of two datasets: `digits` (bundled, prepared in a second) and `gated`, a plug-in dataset whose training
images cannot be read until the test creates a gate file. `digits`' trials must run to their rows while `gated` is
still being prepared; only then does the test open the gate, and `gated`'s trials run after it. A runner that
waited for every dataset before starting Tune would never write a `digits` row: the test fails after its wait.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import bench_env, kill_session, run_rows, start_bench, wait_until

pytestmark = pytest.mark.slow

PLUGIN = '''
"""A dataset whose training images wait for a gate file: a dataset slow to prepare, on cue."""
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.data import DatasetEntry, add_dataset
from bench.data.decode import Source
from bench.data.sources import RawDataset

GATE = Path({gate!r})


def _image(label, index):
    rng = np.random.default_rng(index)
    image = rng.integers(0, 60, size=(16, 16, 3), dtype=np.uint8)
    image[4 * label : 4 * label + 4] = 255  # a bright band where the class says
    return Image.fromarray(image)


def _train_item(index):
    deadline = time.monotonic() + 600
    while not GATE.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return _image(index % 4, index), index % 4


def load(request):
    train = Source(48, _train_item, lambda i: f"gated/train/{{i}}")
    test = Source(16, lambda i: (_image(i % 4, 1000 + i), i % 4), lambda i: f"gated/test/{{i}}")
    return RawDataset(classes=["a", "b", "c", "d"], train=train, test=test)


add_dataset(DatasetEntry("gated", "structured", "waits for a gate", "test", "none", True, load))
'''


def test_trials_of_a_published_dataset_run_while_another_still_prepares(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    (tmp_path / "gated_data.py").write_text(PLUGIN.format(gate=str(gate)))
    suite = tmp_path / "stream.yaml"
    suite.write_text("""
name: stream
plugins: [gated_data]
backbones: [efficientnet_lite0]
datasets: [digits, gated]
grid:
  freeze: [linear_probe]
  data_fraction: [1.0]
  seed: [0, 1]
train: {img_size: 32, steps: 2, batch_size: 16, lr: 1.0e-3}
tune:
  resources_per_trial: {cpu: 1, gpu: 0}
""")
    out, log = tmp_path / "out", tmp_path / "run.log"
    env = bench_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    # Three CPUs: the gated training shard holds one while it waits; digits' trials get the other two.
    command = ["run", suite, "--out", out, "--num-cpus", "3"]
    driver = start_bench(*command, log=log, env=env)
    try:
        wait_until(lambda: (run_rows(out, "stream")["dataset"] == "digits").sum() >= 2, 240, driver)
        rows = run_rows(out, "stream")
        digits = rows[rows["dataset"] == "digits"]
        assert len(digits) == 2, f"no digits row while gated was still preparing:\n{log.read_text()}"
        published = list(out.glob(".cache/datasets/*/meta.json"))
        names = {json.loads(p.read_text())["name"] for p in published}
        assert names == {"digits"}, names  # gated is not published yet, and it cannot be: the gate is shut
        assert (digits["status"] == "ok").all(), digits[["status", "error"]]
        gate_opened = pd.Timestamp.now(tz="UTC")
        gate.touch()
        assert driver.wait(timeout=300) == 0, log.read_text()
    finally:
        gate.touch()
        kill_session(driver.pid)  # whatever is left of the run and its Ray
    rows = run_rows(out, "stream")
    assert len(rows) == 4 and (rows["status"] == "ok").all(), rows[["dataset", "status", "error"]]
    gated = rows[rows["dataset"] == "gated"]
    assert len(gated) == 2
    started = pd.to_datetime(gated["started_at"], utc=True)
    assert (started >= gate_opened).all(), (started, gate_opened)
    finished_digits = pd.to_datetime(rows.loc[rows["dataset"] == "digits", "finished_at"], utc=True)
    assert (finished_digits < gate_opened).all()
    text = log.read_text()
    assert text.index("dataset gated at 32 px: 64 images") > text.index("digits freeze=linear_probe"), text
