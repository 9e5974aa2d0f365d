"""bench.results.store: the run folder's Parquet tables, written atomically and read forgivingly."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_row, write_run

from bench.errors import UserError
from bench.results import store as results
from bench.results.schema import EPOCH_COLUMNS, SCHEMA_VERSION, TRIAL_COLUMNS
from bench.results.store import (
    TRIAL_TYPES,
    load_runs,
    read_table,
    replace_epochs,
    upsert_trials,
)


def test_contract_columns_match_design_order() -> None:
    design = (
        "schema_version, suite, run_id, trial_id, status, error, backbone, pretrained, weights, dataset, "
        "dataset_group, n_classes, similarity_score, transferability, similarity_regime, freeze, "
        "frozen_param_fraction, trainable_params, total_params, data_fraction, shots, n_train, data_regime, seed, "
        "hp_lr, hp_epochs, hp_steps, hp_batch_size, hp_optimizer, hp_img_size, hp_augment, metric_top1, "
        "metric_macro_f1, metric_nll, metric_val_top1, train_seconds, images_per_second, peak_memory_mb, "
        "device, node, torch_version, timm_version, ray_version, started_at, finished_at"
    )
    assert list(TRIAL_COLUMNS) == design.split(", ")
    assert list(EPOCH_COLUMNS)[:3] == ["schema_version", "run_id", "trial_id"]


def test_upsert_writes_contract_schema_and_keeps_extras(tmp_path: Path) -> None:
    path = tmp_path / "trials.parquet"
    row = make_row(cuda_device_name="H100", freeze_groups=["stem", "blocks.0"])
    del row["similarity_score"]  # a missing contract column is filled with null
    written = upsert_trials(path, [row])
    assert written == [row["trial_id"]]

    table = pq.read_table(path)
    assert table.column_names[: len(TRIAL_COLUMNS)] == list(TRIAL_COLUMNS)
    for name, type_ in TRIAL_TYPES.items():
        assert table.schema.field(name).type == type_, name
    back = table.to_pylist()[0]
    assert back["schema_version"] == SCHEMA_VERSION
    assert back["similarity_score"] is None
    assert back["cuda_device_name"] == "H100"
    assert back["freeze_groups"] == ["stem", "blocks.0"]
    assert back["feature_cache"] is True and back["strategy"] == "linear_probe"
    assert back["metric_top1"] == pytest.approx(80.0)


def test_named_freeze_and_datetimes_are_normalised(tmp_path: Path) -> None:
    path = tmp_path / "trials.parquet"
    row = make_row(
        freeze="lp_ft", finished_at=dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    )
    del row["strategy"]
    upsert_trials(path, [row])
    back = pq.read_table(path).to_pylist()[0]
    assert back["freeze"] == 0.0 and back["strategy"] == "lp_ft"
    assert back["finished_at"] == "2025-03-01T10:00:00+00:00"


def test_ok_row_is_never_replaced_but_failed_one_is(tmp_path: Path) -> None:
    path = tmp_path / "trials.parquet"
    ok = make_row(trial_id="t-ok", metric_top1=0.9)
    failed = make_row(trial_id="t-bad", status="failed", error="CUDA OOM", metric_top1=None)
    upsert_trials(path, [ok, failed])

    rerun_ok = make_row(trial_id="t-ok", metric_top1=0.1, finished_at="2030-01-01T00:00:00+00:00")
    rerun_bad = make_row(trial_id="t-bad", metric_top1=0.7)
    assert upsert_trials(path, [rerun_ok, rerun_bad]) == ["t-bad"]
    assert upsert_trials(path, [rerun_ok]) == []

    rows = {r["trial_id"]: r for r in pq.read_table(path).to_pylist()}
    assert len(rows) == 2
    assert rows["t-ok"] == {**rows["t-ok"], "metric_top1": 0.9, "finished_at": ok["finished_at"]}
    assert rows["t-bad"]["status"] == "ok" and rows["t-bad"]["metric_top1"] == 0.7


def test_failed_row_replaces_failed_row_and_batch_prefers_ok(tmp_path: Path) -> None:
    path = tmp_path / "trials.parquet"
    upsert_trials(path, [make_row(trial_id="t", status="failed", error="first")])
    upsert_trials(path, [make_row(trial_id="t", status="diverged", error="second")])
    assert pq.read_table(path).to_pylist()[0]["error"] == "second"

    other = tmp_path / "b.parquet"
    upsert_trials(other, [make_row(trial_id="u", metric_top1=0.5), make_row(trial_id="u", status="failed")])
    (back,) = pq.read_table(other).to_pylist()
    assert back["status"] == "ok" and back["metric_top1"] == 0.5


def test_extra_column_type_conflict_is_kept_as_text(tmp_path: Path) -> None:
    path = tmp_path / "trials.parquet"
    upsert_trials(path, [make_row(trial_id="a", cuda_capability=9)])
    upsert_trials(path, [make_row(trial_id="b", cuda_capability="9.0", new_extra=1.5)])
    upsert_trials(path, [make_row(trial_id="c", n_val=7.5)])  # int -> float widening
    rows = {r["trial_id"]: r for r in pq.read_table(path).to_pylist()}
    assert rows["a"]["cuda_capability"] == "9" and rows["b"]["cuda_capability"] == "9.0"
    assert rows["a"]["new_extra"] is None and rows["b"]["new_extra"] == 1.5
    assert rows["a"]["n_val"] == 100 and rows["c"]["n_val"] == 7.5


def test_bad_contract_value_is_refused_without_touching_the_file(tmp_path: Path) -> None:
    path = tmp_path / "trials.parquet"
    upsert_trials(path, [make_row(trial_id="a")])
    before = path.read_bytes()
    with pytest.raises(ValueError, match="n_classes"):
        upsert_trials(path, [make_row(trial_id="b", n_classes="ten")])
    with pytest.raises(ValueError, match="trial_id"):
        upsert_trials(path, [make_row(trial_id="")])
    assert path.read_bytes() == before


def test_write_interrupted_midway_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "trials.parquet"
    upsert_trials(path, [make_row(trial_id="a")])
    before = path.read_bytes()

    def dies_midway(table: pa.Table, where, **kwargs) -> None:
        where.write(b"PAR1 partial")
        raise OSError("node lost")

    monkeypatch.setattr(results.pq, "write_table", dies_midway)
    with pytest.raises(OSError, match="node lost"):
        upsert_trials(path, [make_row(trial_id="b")])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["trials.parquet"]


def test_upsert_stays_fast_with_20000_rows(tmp_path: Path) -> None:
    path = tmp_path / "trials.parquet"
    base = make_row()
    upsert_trials(path, [{**base, "trial_id": f"t{i:05d}", "seed": i} for i in range(20_000)])
    start = time.perf_counter()
    for i in range(5):
        upsert_trials(path, [make_row(trial_id=f"new{i}")])
    per_call = (time.perf_counter() - start) / 5
    assert pq.read_metadata(path).num_rows == 20_005
    assert per_call < 0.5, f"{per_call:.3f} s per upsert"


def test_concurrent_upserts_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "trials.parquet"
    threads = [threading.Thread(target=upsert_trials, args=(path, [make_row(trial_id=f"t{i}")])) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(pq.read_table(path)["trial_id"].to_pylist()) == [f"t{i}" for i in range(8)]


def test_replace_epochs_replaces_only_that_trial(tmp_path: Path) -> None:
    path = tmp_path / "epochs.parquet"
    replace_epochs(path, "a", [{"run_id": "r", "epoch": e, "val_top1": 0.1 * e} for e in (1, 2, 3)])
    replace_epochs(path, "b", [{"run_id": "r", "epoch": 1, "val_top1": 0.5}])
    replace_epochs(path, "a", [{"run_id": "r", "epoch": 1, "val_top1": 0.9, "phase": "probe"}])
    table = pq.read_table(path)
    assert table.column_names == list(EPOCH_COLUMNS)
    rows = sorted((r["trial_id"], r["epoch"], r["val_top1"]) for r in table.to_pylist())
    assert rows == [("a", 1, 0.9), ("b", 1, 0.5)]
    with pytest.raises(ValueError, match="trial"):
        replace_epochs(path, "a", [{"trial_id": "b", "epoch": 1}])


def test_read_table_errors_are_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "trials.parquet"
    upsert_trials(path, [make_row()])
    assert read_table(path, required=["trial_id"]).shape[0] == 1
    with pytest.raises(UserError, match=r"trials.parquet: missing column 'nope'") as missing:
        read_table(path, required=["trial_id", "nope"])
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match=r"trials.parquet: not a readable Parquet file \(") as bad:
        read_table(path)
    for exc in (missing.value, bad.value):
        assert "\n" not in str(exc) and str(path) in str(exc)


def test_load_runs_merges_without_double_counting(tmp_path: Path) -> None:
    shared_failed = make_row(trial_id="shared", status="failed", error="OOM", metric_top1=None, run_id="a")
    shared_ok = make_row(trial_id="shared", metric_top1=0.7, run_id="b", finished_at="2025-01-01T00:00:00+00:00")
    both_old = make_row(trial_id="both", metric_top1=0.5, run_id="a", finished_at="2025-01-01T00:00:00+00:00")
    both_new = make_row(trial_id="both", metric_top1=0.6, run_id="b", finished_at="2025-02-01T00:00:00+00:00")
    write_run(tmp_path / "out" / "s1" / "a", [shared_failed, both_old, make_row(trial_id="only-a", run_id="a")])
    write_run(tmp_path / "out" / "s2" / "b", [shared_ok, both_new])

    data = load_runs([tmp_path / "out", tmp_path / "out" / "s1" / "a"])  # the same run given twice
    assert data.problems == []
    assert len(data.run_dirs) == 2
    assert sorted(data.trials["trial_id"]) == ["both", "only-a", "shared"]
    by_id = data.trials.set_index("trial_id")
    assert by_id.loc["shared", "status"] == "ok" and by_id.loc["shared", "metric_top1"] == 0.7
    assert by_id.loc["both", "metric_top1"] == 0.6 and by_id.loc["both", "run_id"] == "b"
    assert by_id.loc["only-a", "run_dir"] == str(tmp_path / "out" / "s1" / "a")
    # Curves follow the chosen rows: two epochs per trial, from the winning run.
    assert len(data.epochs) == 6
    assert set(data.epochs[data.epochs["trial_id"] == "both"]["run_id"]) == {"b"}
    assert data.suites[str(tmp_path / "out" / "s1" / "a")]["name"] == "handmade"
    assert data.envs[str(tmp_path / "out" / "s2" / "b")]["git_sha"] == "deadbeef"


def test_load_runs_reports_bad_folders_and_loads_the_rest(tmp_path: Path) -> None:
    good = write_run(tmp_path / "good", [make_row(trial_id="g1"), make_row(trial_id="g2")])
    truncated = write_run(tmp_path / "truncated", [make_row(trial_id="t1")])
    data_bytes = (truncated / "trials.parquet").read_bytes()
    (truncated / "trials.parquet").write_bytes(data_bytes[: len(data_bytes) // 2])
    no_metric = write_run(tmp_path / "no_metric", [make_row(trial_id="m1")], epochs=False)
    pq.write_table(
        pq.read_table(no_metric / "trials.parquet").drop_columns(["metric_top1"]), no_metric / "trials.parquet"
    )
    no_node = write_run(tmp_path / "no_node", [make_row(trial_id="n1")])
    pq.write_table(pq.read_table(no_node / "trials.parquet").drop_columns(["node"]), no_node / "trials.parquet")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "suite.yaml").write_text("name: empty\n")
    zero_rows = write_run(tmp_path / "zero", [make_row(trial_id="z")])
    pq.write_table(pq.read_table(zero_rows / "trials.parquet").slice(0, 0), zero_rows / "trials.parquet")

    data = load_runs([tmp_path])
    assert sorted(data.trials["trial_id"]) == ["g1", "g2", "n1"]
    assert data.trials.loc[data.trials["trial_id"] == "n1", "node"].isna().all()
    problems = "\n".join(data.problems)
    assert len(data.problems) == 5, problems
    assert f"{truncated / 'trials.parquet'}: not a readable Parquet file" in problems
    assert f"{no_metric / 'trials.parquet'}: missing column 'metric_top1'" in problems
    assert f"{no_node / 'trials.parquet'}: missing column 'node' (read as empty)" in problems
    assert f"{empty / 'trials.parquet'}: missing (empty run" in problems
    assert f"{zero_rows / 'trials.parquet'}: empty run (no trial rows)" in problems
    assert all("\n" not in line for line in data.problems)
    assert good in data.run_dirs


def test_load_runs_with_nothing_readable_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such run folder"):
        load_runs([tmp_path / "absent"])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "trials.parquet").write_bytes(b"not parquet")
    with pytest.raises(UserError, match=r"no readable trial rows .*not a readable Parquet file"):
        load_runs([tmp_path])


def test_a_named_strategy_is_stored_with_its_depth_or_none(tmp_path: Path) -> None:
    """Registered depths become numbers; a strategy that is not a depth, or whose plug-in this process has not
    imported, keeps its name in `strategy` and an empty `freeze`."""
    path = tmp_path / "trials.parquet"
    rows = [
        make_row(trial_id="a", strategy="linear_probe", freeze="linear_probe"),
        make_row(trial_id="b", strategy="bitfit", freeze="bitfit"),
        make_row(trial_id="c", strategy="some_plugins_strategy", freeze="some_plugins_strategy"),
        make_row(trial_id="d", strategy="partial", freeze="0.25"),
    ]
    results.upsert_trials(path, rows)
    back = results.read_table(path).set_index("trial_id")
    assert back.loc["a", "freeze"] == 1.0 and back.loc["d", "freeze"] == 0.25
    assert back.loc[["b", "c"], "freeze"].isna().all()
    assert list(back.loc[["b", "c"], "strategy"]) == ["bitfit", "some_plugins_strategy"]
