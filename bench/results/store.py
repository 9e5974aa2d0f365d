"""The run folder's tables: one Parquet schema, written atomically, read forgivingly.

Writers (``bench.runner.driver.write_rows``): ``upsert_trials``, ``replace_epochs`` write each table via a temp file
in the same folder, fsynced and renamed over the old one, under a lock, so a finished trial is never lost and a
stored ``ok`` row is never replaced. Readers (leaderboard, report, notebooks): ``load_runs`` merges run folders by
``trial_id`` without double counting and turns each unreadable file, missing column or empty run into one line of
``RunData.problems`` instead of a traceback. Columns beyond the contract keep their inferred types; a column whose
type differs between two rows is widened (int -> float) or stored as text. Timestamps are ISO 8601 strings in UTC
and ``freeze`` is the numeric depth (results/README.md). (docs/design.md, "Run folder and tables")
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from bench.errors import UserError
from bench.models.strategies import strategy_depth
from bench.results import remote
from bench.results.schema import (
    EPOCH_COLUMNS,
    ESSENTIAL_EPOCH_COLUMNS,
    ESSENTIAL_TRIAL_COLUMNS,
    SCHEMA_VERSION,
    TRIAL_COLUMNS,
)
from bench.utils.atomic import atomic_write

_STR = pa.string()
# The schema's contract columns with their Arrow types.
TRIAL_TYPES: dict[str, pa.DataType] = {name: pa.type_for_alias(t) for name, t in TRIAL_COLUMNS.items()}
EPOCH_TYPES: dict[str, pa.DataType] = {name: pa.type_for_alias(t) for name, t in EPOCH_COLUMNS.items()}

TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"


# --------------------------------------------------------------------------------------------- writing


def upsert_trials(path: Path, rows: list[dict[str, Any]]) -> list[str]:
    """Add trial rows to `path` (trials.parquet) atomically; return the trial_ids actually written.

    Key = `trial_id`. A new row replaces a stored row of the same trial only when the stored one is not "ok";
    a stored "ok" row is never touched. Within `rows`, an "ok" row beats a failed one and a later row an
    earlier one. Missing contract columns are filled with nulls, `schema_version` with SCHEMA_VERSION.
    """
    if not rows:
        return []
    path = Path(path)
    new = _rows_to_table(_dedupe_batch([_normalise_trial_row(row) for row in rows]), TRIAL_TYPES)
    with _locked(path.parent):
        old = _read_existing(path)
        if old is not None:
            ok_ids = pc.filter(old["trial_id"], pc.equal(old["status"], "ok"))
            new = new.filter(pc.invert(pc.is_in(new["trial_id"], value_set=ok_ids)))
            if new.num_rows == 0:
                return []
            old = old.filter(pc.invert(pc.is_in(old["trial_id"], value_set=new["trial_id"])))
        _atomic_write(new if old is None else _concat(old, new), path)
    return new.column("trial_id").to_pylist()


def replace_epochs(path: Path, trial_id: str, rows: list[dict[str, Any]]) -> None:
    """Replace every row of `trial_id` in `path` (epochs.parquet) by `rows`, atomically.

    Unconditional by design: the writer calls it only for a trial it has just (re-)run and whose row
    `upsert_trials` accepted, so the curve always belongs to the stored trial row. Rows of other trials
    are kept as they are.
    """
    path = Path(path)
    for row in rows:
        if row.get("trial_id", trial_id) != trial_id:
            raise ValueError(f"replace_epochs({trial_id!r}) got a row of trial {row.get('trial_id')!r}")
    new = _rows_to_table([{"schema_version": SCHEMA_VERSION, **row, "trial_id": trial_id} for row in rows], EPOCH_TYPES)
    with _locked(path.parent):
        old = _read_existing(path)
        if old is not None:
            old = old.filter(pc.not_equal(old["trial_id"], trial_id))
            new = _concat(old, new)
        _atomic_write(new, path)


def _normalise_trial_row(row: dict[str, Any]) -> dict[str, Any]:
    if not row.get("trial_id"):
        raise ValueError(f"a trial row needs a non-empty trial_id: {sorted(row)[:8]}...")
    out = {"schema_version": SCHEMA_VERSION, **row, "trial_id": str(row["trial_id"])}
    freeze = out.get("freeze")
    if isinstance(freeze, str):
        try:
            out["freeze"] = float(freeze)
        except ValueError:  # a named strategy: its depth, or null where it is not one (or its plug-in is absent)
            out.setdefault("strategy", freeze)
            out["freeze"] = strategy_depth(freeze)
    for key in ("started_at", "finished_at"):
        out[key] = _iso_utc(out.get(key))
    return out


def _iso_utc(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (int, float)):  # seconds since the epoch
        value = dt.datetime.fromtimestamp(value, tz=dt.UTC)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).isoformat()
    return str(value)


def _dedupe_batch(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    chosen: dict[str, dict[str, Any]] = {}
    for row in rows:
        previous = chosen.get(row["trial_id"])
        if previous is None or previous.get("status") != "ok" or row.get("status") == "ok":
            chosen[row["trial_id"]] = row
    return list(chosen.values())


def _rows_to_table(rows: list[dict[str, Any]], contract: dict[str, pa.DataType]) -> pa.Table:
    """Contract columns with their declared types, in contract order, then extras with inferred types."""
    extras = list(dict.fromkeys(key for row in rows for key in row if key not in contract))
    arrays: dict[str, pa.Array] = {}
    for name, type_ in contract.items():
        values = [row.get(name) for row in rows]
        try:
            arrays[name] = pa.array(values, type=type_, from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise ValueError(f"column {name!r} expects {type_}, got {values[:3]}...: {exc}") from exc
    for name in extras:
        values = [row.get(name) for row in rows]
        try:
            arrays[name] = pa.array(values, from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError):  # mixed types: keep them readable as text
            arrays[name] = pa.array([None if v is None else str(v) for v in values], type=_STR)
    return pa.table(arrays)


def _concat(old: pa.Table, new: pa.Table) -> pa.Table:
    try:
        return pa.concat_tables([old, new], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    # A column holds different, incompatible types in the two tables (an extra column, e.g. "3" vs 3).
    for name in set(old.column_names) & set(new.column_names):
        a, b = old.schema.field(name).type, new.schema.field(name).type
        if a != b and not pa.types.is_null(a) and not pa.types.is_null(b):
            try:
                pa.concat_tables([old.select([name]), new.select([name])], promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                old = _as_text(old, name)
                new = _as_text(new, name)
    return pa.concat_tables([old, new], promote_options="permissive")


def _as_text(table: pa.Table, name: str) -> pa.Table:
    index = table.column_names.index(name)
    values = [None if v is None else str(v) for v in table.column(name).to_pylist()]
    return table.set_column(index, name, pa.array(values, type=_STR))


def _read_existing(path: Path) -> pa.Table | None:
    if not path.exists():
        return None
    try:
        return _read_consistent(path)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path}: not a readable Parquet file ({_short(exc)}); move it aside to continue") from exc


def _read_consistent(path: Path) -> pa.Table:
    """Read a table through one open file handle.

    `pq.read_table(path)` stats the path and opens it again later; a writer's `os.replace` in between makes
    it read the new file with the old file's size (a "truncated" error on a healthy file). One handle pins
    one inode, so a reader sees either the old table or the new one, whole.
    """
    with open(path, "rb") as handle:
        return pq.read_table(handle)


def _atomic_write(table: pa.Table, path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle, compression="zstd")

    atomic_write(path, write, durable=True)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Serialise read-modify-write of the folder's tables between threads and processes of one machine."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# --------------------------------------------------------------------------------------------- reading


def read_table(path: Path, required: Sequence[str] = ()) -> pd.DataFrame:
    """Read one Parquet table; a bad file or a missing `required` column is a one-line UserError."""
    path = Path(path)
    try:
        table = _read_consistent(path)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path}: not a readable Parquet file ({_short(exc)})") from exc
    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise UserError(f"{path}: missing column {', '.join(repr(m) for m in missing)}")
    return table.to_pandas()


@dataclass
class RunData:
    """Everything `load_runs` found: merged tables plus one line per problem it stepped around.

    `trials` has the contract columns (nulls where a file lacked one), any extra columns, `runs` (every run
    folder holding the trial: a trial in several runs is one row, from the best of them), `run_dir` (the
    folder the row was read from) and `dataset_name` on every row (derived from `dataset` for older tables).
    `suites` / `envs` map a run folder (as a string) to its parsed suite.yaml / env.json; env.json's list of
    sessions becomes its first session plus `sessions` (all).
    """

    run_dirs: list[Path | str]  # a run read from a URI is named by its URI (a string)
    trials: pd.DataFrame
    epochs: pd.DataFrame
    suites: dict[str, dict] = field(default_factory=dict)
    envs: dict[str, dict] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def find_run_dirs(path: Path) -> list[Path]:
    """Run folders at or under `path`: folders holding trials.parquet, or suite.yaml/env.json (empty runs)."""
    path = Path(path)
    if (path / TRIALS_FILE).exists():
        return [path]
    markers = {TRIALS_FILE, "suite.yaml", "env.json"}
    found = {p.parent for name in markers for p in path.rglob(name) if p.is_file()}
    # A report/ or other sub-folder inside a run folder is not a run of its own.
    return sorted(d for d in found if not any(parent in found for parent in d.parents))


def load_runs(paths: Sequence[str | Path] | str | Path) -> RunData:
    """Load and merge run folders (or folders of run folders) into one RunData.

    A path may be a URI (``s3://bucket/prefix``, any ``pyarrow.fs`` URI; ``bench.results.remote``): its run
    folders' files are copied to a temporary folder and read from there; they are named by their URIs in
    ``run_dirs``, the ``run_dir`` column, ``suites``, ``envs`` and ``problems``.

    The same trial (same `trial_id`) in several runs counts once: an "ok" row wins over a failed one, and
    among equals the one that finished last. Unreadable files, missing columns and empty runs become lines
    in `problems`; the rest is still loaded. No readable trial row at all is a UserError.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    with tempfile.TemporaryDirectory(prefix="bench-load-") as scratch:
        return _load_runs(paths, Path(scratch))


def _load_runs(paths: Sequence[str | Path], scratch: Path) -> RunData:
    run_dirs: list[Path] = []
    problems: list[str] = []
    names: dict[Path, str] = {}  # local copy -> URI of a remote run folder
    for index, raw in enumerate(paths):
        if remote.is_uri(raw):
            copies = remote.download_runs(str(raw), scratch / str(index))
            if not copies:
                problems.append(f"{raw}: no run folder found (no {TRIALS_FILE} under it)")
            names.update({local: uri for uri, local in copies})
            run_dirs.extend(local for _, local in copies if local not in run_dirs)
            continue
        path = Path(raw)
        if not path.exists():
            raise UserError(f"{path}: no such run folder")
        if not path.is_dir():
            raise UserError(f"{path}: not a folder (give a run folder or a folder of run folders)")
        found = find_run_dirs(path)
        if not found:
            problems.append(f"{path}: no run folder found (no {TRIALS_FILE} under it)")
        run_dirs.extend(d for d in found if d not in run_dirs)

    trial_frames: list[pd.DataFrame] = []
    epoch_frames: list[pd.DataFrame] = []
    suites: dict[str, dict] = {}
    envs: dict[str, dict] = {}
    for run_dir in run_dirs:
        key = names.get(run_dir, str(run_dir))
        suites[key] = _read_mapping(run_dir / "suite.yaml", problems)
        envs[key] = _read_mapping(run_dir / "env.json", problems)
        trials = _read_run_table(run_dir / TRIALS_FILE, TRIAL_TYPES, ESSENTIAL_TRIAL_COLUMNS, problems)
        if trials is None:
            continue
        if trials.empty:
            problems.append(f"{run_dir / TRIALS_FILE}: empty run (no trial rows)")
            continue
        trials["run_dir"] = key
        trials["dataset_name"] = dataset_names(trials)
        trial_frames.append(trials)
        epochs = _read_run_table(run_dir / EPOCHS_FILE, EPOCH_TYPES, ESSENTIAL_EPOCH_COLUMNS, problems)
        if epochs is not None and not epochs.empty:
            epoch_frames.append(epochs)

    for local, uri in sorted(names.items(), key=lambda item: -len(str(item[0]))):  # name objects, not copies
        problems = [problem.replace(str(local), uri) for problem in problems]
    if not trial_frames:
        detail = f"; {problems[0]}" if problems else ""
        raise UserError(f"no readable trial rows in {', '.join(str(p) for p in paths)}{detail}")
    trials = _merge_trials(pd.concat(trial_frames, ignore_index=True))
    if epoch_frames:
        epochs = pd.concat(epoch_frames, ignore_index=True).drop_duplicates()
        epochs = epochs[epochs["trial_id"].isin(trials["trial_id"])]
        # A trial present in several runs keeps the curve of the run its row came from.
        origin = trials.set_index("trial_id")["run_id"]
        if "run_id" in epochs:
            epochs = epochs[epochs["run_id"].isna() | (epochs["run_id"] == epochs["trial_id"].map(origin))]
        epochs = epochs.reset_index(drop=True)
    else:
        epochs = pd.DataFrame({name: pd.Series(dtype=object) for name in EPOCH_COLUMNS})
    return RunData([names.get(d, d) for d in run_dirs], trials, epochs, suites, envs, problems)


def dataset_names(trials: pd.DataFrame) -> pd.Series:
    """Each row's `dataset_name`: as stored, or (tables written before the column, a null) derived from its
    `dataset` string as the writer derives it (`bench.data.names.display_name`)."""
    from bench.data.names import display_name

    derived = trials["dataset"].map(lambda d: display_name(str(d)) if isinstance(d, str) else None)
    if "dataset_name" not in trials:
        return derived
    stored = trials["dataset_name"]
    return stored.where(stored.notna() & (stored.astype(str) != ""), derived)


def _merge_trials(trials: pd.DataFrame) -> pd.DataFrame:
    order = pd.DataFrame(
        {
            "ok": (trials["status"] == "ok").astype(int),
            "finished": pd.to_datetime(trials["finished_at"], utc=True, errors="coerce", format="ISO8601"),
        }
    )
    ranked = order.sort_values(["ok", "finished"], ascending=[False, False], na_position="last", kind="stable")
    merged = trials.loc[ranked.index].drop_duplicates("trial_id", keep="first")
    # Every run folder that holds the trial (a setting both a fixed run and a search ran is in both).
    runs = trials.groupby("trial_id", sort=False)["run_dir"].agg(lambda dirs: tuple(dict.fromkeys(dirs)))
    merged = merged.assign(runs=merged["trial_id"].map(runs))
    return merged.sort_index().reset_index(drop=True)


def _read_run_table(
    path: Path,
    contract: dict[str, pa.DataType],
    essential: Sequence[str],
    problems: list[str],
) -> pd.DataFrame | None:
    if not path.exists():
        detail = " (empty run: no trial finished)" if path.name == TRIALS_FILE else " (no per-epoch curves)"
        problems.append(f"{path}: missing{detail}")
        return None
    try:
        frame = read_table(path, required=essential)
    except UserError as exc:
        problems.append(str(exc))
        return None
    absent = [name for name in contract if name not in frame.columns]
    if absent:
        shown = ", ".join(repr(a) for a in absent[:6]) + (f" and {len(absent) - 6} more" if len(absent) > 6 else "")
        problems.append(f"{path}: missing column {shown} (read as empty)")
        for name in absent:
            frame[name] = pd.Series([None] * len(frame), dtype=object)
    return frame


def _read_mapping(path: Path, problems: list[str]) -> dict:
    if not path.exists():
        return {}
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        problems.append(f"{path}: unreadable ({_short(exc)})")
        return {}
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        # env.json holds one entry per session (a resumed run adds one): the first, plus all of them.
        return {**data[0], "sessions": data}
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        return {}
    return data


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
