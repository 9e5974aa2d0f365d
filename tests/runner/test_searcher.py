"""The runner's searcher without Ray running: it hands Tune a stage's trials in the order given (the runner's
``schedule_order``), each once its dataset is published, None while none left has its dataset, FINISHED at the
end, and the failed rows of trials whose dataset cannot be had, written through the real row writer.

The datasets are a stand-in for ``Preparations`` (what its collector thread publishes, set by the test)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from bench.config import TrialConfig
from bench.data.shards import ShardSet
from bench.results import store as results
from bench.runner.driver import RowWriter, RunSummary, WhenReady, dataset_key
from bench.runner.tune import schedule_order

BASE = TrialConfig(backbone="efficientnet_lite0", dataset="digits", freeze="linear_probe")


@dataclass
class _Datasets:
    """What ``Preparations`` shows the searcher: datasets published (``ready``), datasets that cannot be had
    (``unavailable``), and whether its collector has finished (``done``)."""

    ready: dict[str, ShardSet] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    error: BaseException | None = None
    done: bool = False

    def publish(self, config: TrialConfig) -> ShardSet:
        shard_set = ShardSet(f"fp-{config.dataset}", meta={}, home="node-1")
        self.ready[dataset_key(config)] = shard_set
        return shard_set


def _trials() -> list[TrialConfig]:
    """Two backbones x two datasets x two seeds, in schedule order."""
    backbones = [BASE, dataclasses.replace(BASE, pretrained=False)]
    grid = [
        dataclasses.replace(b, dataset=d, seed=s)
        for b in backbones
        for d in ("digits", "photo_patches")
        for s in (0, 1)
    ]
    return schedule_order(grid)


def _searcher(tmp_path: Path, trials: list[TrialConfig], datasets: _Datasets) -> WhenReady:
    summary = RunSummary(run_dir=tmp_path, total=len(trials), skipped=0)
    return WhenReady(trials, datasets, RowWriter(tmp_path, "run-1", summary, pending=len(trials)))


def _drain(searcher: WhenReady) -> list[dict[str, Any]]:
    """Suggestions until the searcher has none to give now (None) or ever (FINISHED)."""
    handed: list[dict[str, Any]] = []
    while isinstance(suggestion := searcher.suggest(f"tune-{len(handed)}"), dict):
        handed.append(suggestion)
    return handed


def test_trials_start_in_the_order_given_each_once_its_dataset_is_published(tmp_path: Path) -> None:
    trials = _trials()
    digits = [t for t in trials if t.dataset == "digits"]
    patches = [t for t in trials if t.dataset == "photo_patches"]
    datasets = _Datasets()
    searcher = _searcher(tmp_path, trials, datasets)

    assert searcher.suggest("tune-0") is None  # nothing published yet: Tune asks again
    shard_set = datasets.publish(digits[0])
    handed = _drain(searcher)
    assert [TrialConfig.from_dict(s["trial"]) for s in handed] == digits  # in the order given, patches held back
    assert all(s["data"] == {"fingerprint": shard_set.fingerprint, "home": "node-1", "store": None} for s in handed)
    assert searcher.suggest("tune-9") is None  # photo_patches still decodes
    datasets.publish(patches[0])
    assert [TrialConfig.from_dict(s["trial"]) for s in _drain(searcher)] == patches
    assert searcher.suggest("tune-10") == Searcher.FINISHED
    assert not (tmp_path / results.TRIALS_FILE).exists()  # no row: rows are the workers' and the writer's


def test_a_dataset_that_cannot_be_had_gives_its_trials_failed_rows_and_the_rest_run(tmp_path: Path, capsys) -> None:
    trials = _trials()
    patches = [t for t in trials if t.dataset == "photo_patches"]
    datasets = _Datasets()
    searcher = _searcher(tmp_path, trials, datasets)
    datasets.unavailable[dataset_key(patches[0])] = "dataset photo_patches: no images under /nowhere"

    assert searcher.suggest("tune-0") is None  # digits still decodes
    table = results.read_table(tmp_path / results.TRIALS_FILE)
    assert sorted(table["trial_id"]) == sorted(t.trial_id for t in patches)
    assert set(table["status"]) == {"failed"}
    assert set(table["error"]) == {"dataset photo_patches: no images under /nowhere"}
    assert searcher.writer.summary.failed == len(patches)
    line = f"bench: dataset photo_patches: no images under /nowhere -> {len(patches)} trial(s) failed\n"
    assert capsys.readouterr().out == line

    datasets.publish(BASE)
    assert [TrialConfig.from_dict(s["trial"]).dataset for s in _drain(searcher)] == ["digits"] * 4
    assert searcher.suggest("tune-5") == Searcher.FINISHED
    assert len(results.read_table(tmp_path / results.TRIALS_FILE)) == len(patches)  # each failed row once


def test_datasets_done_with_trials_left_finish_the_stage(tmp_path: Path) -> None:
    """A preparation that stopped on an error (``Preparations.error``) is done with datasets unpublished: the
    searcher finishes rather than wait for them; their trials get no row (the error ends the run)."""
    trials = _trials()
    datasets = _Datasets()
    searcher = _searcher(tmp_path, trials, datasets)
    datasets.publish(BASE)
    datasets.done, datasets.error = True, RuntimeError("the driver lost the cluster")
    assert len(_drain(searcher)) == 4  # what is published still runs
    assert searcher.suggest("tune-4") == Searcher.FINISHED
    assert [t.dataset for t in searcher.queue] == ["photo_patches"] * 4
