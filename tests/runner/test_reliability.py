"""Issue 7: untrusted input refused, faults survived, no finished row ever lost.

Every fault here is injected for real: a pickle that would run code, corrupt and odd images on disk, a loss
that overflows, `kill -9` of the driver at random moments, a disk that fills up mid-run (a small tmpfs), two
`bench run` processes on one run folder, truncated and foreign Parquet files. Runs are real `bench` processes
on a real local Ray, and every check reads the Parquet files back. Suites are tiny (32 px digits or a dozen
CIFAR-10 JPEGs, a few optimiser steps) so the time goes into the faults, not the training.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import (
    CIFAR,
    assert_rows_kept,
    bench,
    kill_session,
    make_row,
    ok_rows,
    one_line_error,
    read_rows,
    require,
    run_folder,
    run_folders,
    run_rows,
    start_bench,
    wait_until,
    write_run,
    write_suite,
)
from PIL import Image

from bench.results import store as results

FAULT_SEED = int(os.environ.get("BENCH_FAULT_SEED", "7"))  # random kill moments: reproducible, changeable


# ---------------------------------------------------------------------------------------------------------
# helpers (the style of tests/runner/test_tune.py: tiny suites at 32 px, a few steps)


def suite_trial_ids(path: Path) -> set[str]:
    from bench.suite import load_suite

    return {trial.trial_id for trial in load_suite(path).trials()}


# ---------------------------------------------------------------------------------------------------------
# 2. Untrusted content


class _Payload:
    """Unpickling this creates `marker`: what a malicious weights file would do with worse code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_files(folder: Path, marker: Path) -> list[Path]:
    import torch

    state = {"conv.weight": torch.zeros(2, 2), "evil": _Payload(marker)}
    zipped = folder / "evil.pt"
    torch.save(state, zipped)  # torch's zip format, pickle inside
    legacy = folder / "evil.pth"
    with open(legacy, "wb") as handle:
        pickle.dump(state, handle)  # a bare pickle, the pre-1.6 format
    renamed = folder / "evil.safetensors"
    shutil.copy(zipped, renamed)  # a pickle pretending to be safetensors
    return [zipped, legacy, renamed]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_weights_that_would_run_code_are_refused_and_never_run(tmp_path: Path) -> None:
    import torch

    from bench.config import TrialConfig
    from bench.errors import UserError
    from bench.training import run_trial

    torch.set_num_threads(1)
    # The payload is live: unpickled the unsafe way, it creates its marker (else this test could not fail).
    proof, proof_files = tmp_path / "proof", tmp_path / "proof_files"
    proof_files.mkdir()
    with open(_malicious_files(proof_files, proof)[1], "rb") as handle:
        pickle.load(handle)
    assert proof.exists()

    marker = tmp_path / "PWNED"
    for path in _malicious_files(tmp_path, marker):
        config = TrialConfig(
            backbone="efficientnet_lite0",
            dataset="digits",
            weights=str(path),
            img_size=32,
            epochs=None,
            steps=1,
            batch_size=16,
            data_fraction=0.05,
        )
        with pytest.raises(UserError) as caught:
            run_trial(config)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)
        assert not marker.exists(), f"unpickling {path.name} ran code"


def test_run_folders_never_leave_the_output_folder(tmp_path: Path) -> None:
    """The last line of defence behind suite-name validation (bench.runner.run_dir.suite_folder)."""
    from bench.errors import UserError
    from bench.runner import run_dir as runs

    out = tmp_path / "out"
    for name in ("..", "../evil", "a/../../evil", str(tmp_path / "elsewhere"), "/"):
        with pytest.raises(UserError):
            runs.create_run_dir(out, name)
    assert list(tmp_path.iterdir()) == []
    assert runs.create_run_dir(out, "fine").parent == (out / "fine").resolve()


# ---------------------------------------------------------------------------------------------------------
# 3. Data faults


def _jpeg(source: Path, target: Path, mode: str | None = None) -> None:
    image = Image.open(source)
    (image.convert(mode) if mode else image).save(target, quality=95)


def faulty_image_folder(root: Path) -> Path:
    """train/ + test/ class folders from CIFAR-10 JPEGs, with every kind of bad file among good ones.

    train/airplane: 8 RGB JPEGs, one grayscale JPEG, one RGBA PNG (left half transparent), and three broken
    files (a truncated JPEG, random bytes, zero bytes) -> 10 readable. train/automobile: 10 RGB.
    train/bird: 2 RGB (fewer than the 5 shots asked). train/cat: no image at all (only a text file).
    """
    source = {name: sorted((CIFAR / "train" / name).glob("*.jpg")) for name in ("airplane", "automobile", "bird")}
    for split, counts in (
        ("train", {"airplane": 8, "automobile": 10, "bird": 2}),
        ("test", {"airplane": 3, "automobile": 3, "bird": 3}),
    ):
        for name, count in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            offset = 0 if split == "train" else 20
            for index, path in enumerate(source[name][offset : offset + count]):
                shutil.copy(path, folder / f"{index:04d}.jpg")
    airplane = root / "train" / "airplane"
    extra = sorted((CIFAR / "train" / "airplane").glob("*.jpg"))[40:43]
    _jpeg(extra[0], airplane / "gray.jpg", "L")
    rgba = Image.open(extra[1]).convert("RGBA")
    alpha = np.full((rgba.height, rgba.width), 255, dtype=np.uint8)
    alpha[:, : rgba.width // 2] = 0
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(airplane / "rgba.png")
    whole = extra[2].read_bytes()
    (airplane / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (airplane / "garbage.jpg").write_bytes(random.Random(0).randbytes(2000))
    (airplane / "zero.jpg").write_bytes(b"")
    (root / "train" / "cat").mkdir()
    (root / "train" / "cat" / "README.txt").write_text("no images yet\n")
    return root


BROKEN_FILES = ("garbage.jpg", "truncated.jpg", "zero.jpg")


def needs_cifar() -> None:
    """Go on where the shared CIFAR-10 images are; else skip, or fail under CI=true (conftest.require)."""
    __tracebackhide__ = True

    require(CIFAR.is_dir(), f"needs the shared CIFAR-10 images at {CIFAR} (BENCH_DATA)")


def test_imagefolder_faults_have_their_documented_handling(tmp_path: Path) -> None:
    from bench.data import prepare_dataset

    needs_cifar()
    root = faulty_image_folder(tmp_path / "faulty")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = prepare_dataset(f"imagefolder:{root}", 32)
    messages = [str(w.message) for w in caught]
    assert any("'cat'" in m and "no images" in m for m in messages), messages  # empty class: skipped, warned
    skipped = next(m for m in messages if "unreadable" in m)
    assert all(name in skipped for name in BROKEN_FILES), skipped  # broken files: skipped, named
    assert data.classes == ["airplane", "automobile", "bird"]
    assert np.bincount(data.y_train).tolist() == [10, 10, 2]
    assert np.bincount(data.y_test).tolist() == [3, 3, 3]
    assert data.meta["skipped_images"] == 3
    assert data.x_train.shape == (22, 3, 32, 32) and data.x_train.dtype == np.uint8
    # Sorted airplane files: 0000..0007, (garbage), gray, rgba, (truncated), (zero) -> gray is 8, rgba is 9.
    gray, rgba = np.asarray(data.x_train[8]), np.asarray(data.x_train[9])
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all() and gray.std() > 0
    assert (rgba[:, :, :15] == 255).all()  # transparent half composited onto white
    assert rgba[:, :, 17:].std() > 0  # the opaque half is the photo


@pytest.mark.slow
def test_data_faults_fail_or_degrade_per_trial_and_the_run_goes_on(tmp_path: Path) -> None:
    """A faulty image folder still trains (documented handling); a missing root fails its own trials (exit 1).

    The faulty folder is named through a path with '..' in it, and the run's working directory is inside
    tmp_path: nothing may be written anywhere but under --out.
    """
    needs_cifar()
    faulty = faulty_image_folder(tmp_path / "data" / "faulty")
    (tmp_path / "data" / "sub").mkdir()
    via_dotdot = tmp_path / "data" / "sub" / ".." / "faulty"
    missing = tmp_path / "data" / "nowhere"
    suite = write_suite(
        tmp_path,
        name="datafaults",
        concurrent=1,
        datasets=f"['imagefolder:{via_dotdot}', 'imagefolder:{missing}']",
        sizes="shots: [5]",
        seeds="[0]",
    )
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = {p for p in tmp_path.rglob("*")}
    done = bench("run", suite, "--out", tmp_path / "out", "--num-cpus", "2", cwd=cwd)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    written = {p for p in tmp_path.rglob("*")} - before
    outside = sorted(str(p) for p in written if not p.is_relative_to(tmp_path / "out"))
    assert outside == [], f"written outside --out: {outside[:5]}"

    folder = run_folder(tmp_path / "out", "datafaults")
    table = read_rows(folder)
    expected = suite_trial_ids(suite)
    per_dataset = len(expected) // 2  # the suite's two datasets have the same grid
    assert len(table) == len(expected) and table["trial_id"].is_unique
    assert set(table["trial_id"]) == expected
    failed = table[table["dataset"] == f"imagefolder:{missing}"]
    assert set(failed["status"]) == {"failed"} and len(failed) == per_dataset
    assert failed["error"].str.contains("does not exist").all() and failed["error"].str.contains(str(missing)).all()
    good = table[table["dataset"] == f"imagefolder:{via_dotdot}"]
    assert set(good["status"]) == {"ok"} and len(good) == per_dataset, good[["status", "error"]]
    assert (good["n_classes"] == 3).all()  # the empty class folder is not a class
    # Shots: a val image per class first (10% of 10 -> 1; of 2 -> 1), then min(5, what is left): 5 + 5 + 1.
    assert (good["n_train"] == 11).all()
    assert good["metric_top1"].between(0, 100).all()
    assert "'cat'" in done.stderr and all(name in done.stderr for name in BROKEN_FILES)
    assert faulty.is_dir()


# ---------------------------------------------------------------------------------------------------------
# 4. Training faults and 5c. two runs on one folder (one Ray session serves both, to keep the file fast)


@pytest.fixture(scope="module")
def explode_race(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two `bench run --resume` processes started together on one run folder of a suite whose lr 1e12 trial
    (SGD, full fine-tune) must diverge beside an lr 1e-3 trial that must not."""
    root = tmp_path_factory.mktemp("explode")
    suite = write_suite(
        root,
        name="explode",
        concurrent=1,
        freeze="[full]",
        sizes="data_fraction: [0.1]",
        seeds="[0]",
        extra_grid="  lr: [1.0e12, 1.0e-3]",
        optimizer="sgd",
    )
    folder = root / "out" / "explode" / "20000101T000000Z"
    folder.mkdir(parents=True)
    logs = [root / f"driver{i}.log" for i in range(2)]
    drivers = [start_bench("run", suite, "--out", root / "out", "--resume", "--num-cpus", "1", log=log) for log in logs]
    try:
        for driver in drivers:
            driver.wait(timeout=500)
    finally:
        for driver in drivers:
            kill_session(driver.pid)
    return {
        "suite": suite,
        "folder": folder,
        "codes": [d.returncode for d in drivers],
        "logs": [log.read_text() for log in logs],
    }


@pytest.mark.slow
def test_two_concurrent_resumes_on_one_run_folder_one_is_refused(explode_race: dict) -> None:
    codes, logs = explode_race["codes"], explode_race["logs"]
    assert sorted(codes) == [0, 2], logs
    loser = logs[codes.index(2)]
    line = one_line_error(loser)
    assert "in use by another bench run" in line and str(explode_race["folder"]) in line, line
    table = read_rows(explode_race["folder"])
    assert len(table) == 2 and set(table["trial_id"]) == suite_trial_ids(explode_race["suite"])


@pytest.mark.slow
def test_an_exploding_loss_gives_a_diverged_row_and_the_run_still_succeeds(explode_race: dict) -> None:
    assert 0 in explode_race["codes"], explode_race["logs"]
    winner = explode_race["logs"][explode_race["codes"].index(0)]
    assert "1 ok, 1 diverged, 0 failed" in winner and "Traceback" not in winner, winner[-2000:]
    table = read_rows(explode_race["folder"]).set_index("hp_lr")
    exploded, sane = table.loc[1e12], table.loc[1e-3]
    assert exploded["status"] == "diverged" and "non-finite loss" in exploded["error"]
    assert pd.isna(exploded["metric_top1"])
    assert sane["status"] == "ok" and 0 <= sane["metric_top1"] <= 100


# ---------------------------------------------------------------------------------------------------------
# 5a. kill -9 of the driver at random moments, again and again


@pytest.mark.slow
def test_driver_killed_at_random_moments_then_resume_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(FAULT_SEED)
    suite = write_suite(tmp_path, name="killed", concurrent=1, seeds="[0, 1, 2]")  # 12 trials, one at a time
    expected = suite_trial_ids(suite)
    out = tmp_path / "out"
    kept = pd.DataFrame()
    kills, modes = 0, ["before first row", "after a row", "any time", "after a row", "any time", "after a row"]
    for round_index, mode in enumerate(modes):
        if kills >= 3:
            break
        args = ["run", suite, "--out", out, "--num-cpus", "1"] + (["--resume"] if round_index else [])
        rows_at_start = len(run_rows(out, "killed"))
        driver = start_bench(*args, log=tmp_path / f"round{round_index}.log")
        try:
            if round_index == 0:  # the first kill may land before Ray is up, or before any row
                assert wait_until(lambda: bool(run_folders(out, "killed")), 120, driver)
                delay = rng.uniform(0, 8)
            elif mode == "after a row":
                wait_until(lambda start=rows_at_start: len(run_rows(out, "killed")) > start, 240, driver)
                delay = rng.uniform(0, 1.5)
            else:
                delay = rng.uniform(2, 12)
            time.sleep(delay)
            alive = driver.poll() is None
        finally:
            kill_session(driver.pid)
            driver.wait()
        if alive:
            kills += 1
        else:
            log = (tmp_path / f"round{round_index}.log").read_text()
            assert driver.returncode == 0, log[-2000:]
        folder = run_folder(out, "killed")
        table = read_rows(folder)  # readable after every kill
        if (folder / results.EPOCHS_FILE).exists():
            pq.read_table(folder / results.EPOCHS_FILE)
        assert table["trial_id"].is_unique and set(table["trial_id"]) <= expected
        if not kept.empty:
            assert_rows_kept(kept, table)
        kept = ok_rows(table)
        if not alive:
            break
    assert kills >= 3, f"only {kills} kill(s) landed while the driver was running"
    assert len(kept) < len(expected), "every trial finished before the last kill: the test proved nothing"

    resumed = bench("run", suite, "--out", out, "--resume", "--num-cpus", "2")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"{len(kept)} already done" in resumed.stdout
    folder = run_folder(out, "killed")
    final = read_rows(folder)
    assert len(final) == len(expected) and set(final["trial_id"]) == expected
    assert set(final["status"]) == {"ok"}
    assert_rows_kept(kept, final)


# ---------------------------------------------------------------------------------------------------------
# 5b. the disk fills up


def _mount_tmpfs(folder: Path, size: str) -> None:

    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    # Needs root (CI runs as root): elsewhere a skip, under CI=true a failure (conftest.require).
    require(mounted.returncode == 0, f"cannot mount a tmpfs here: {mounted.stderr.strip()}")


def _unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fill(folder: Path) -> None:
    """Write a ballast file until the file system says it is full."""
    chunk = b"\0" * 65536
    with open(folder / "ballast", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(chunk)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    try:
        with open(folder / "ballast2", "wb", buffering=0) as handle:
            while True:
                handle.write(b"\0" * 512)
    except OSError as error:
        assert error.errno == errno.ENOSPC


@pytest.fixture(scope="module")
def disk_full(tmp_path_factory: pytest.TempPathFactory):
    """A run whose --out is a 2 MiB tmpfs, filled to the last byte once the first rows are written."""
    root = tmp_path_factory.mktemp("diskfull")
    small = root / "small"
    _mount_tmpfs(small, "2m")
    driver = None
    try:
        suite = write_suite(root, name="full", concurrent=1)  # 8 trials, one at a time
        driver = start_bench(
            "run", suite, "--out", small, "--cache-dir", root / "cache", "--num-cpus", "1", log=root / "full.log"
        )
        assert wait_until(lambda: len(run_rows(small, "full")) >= 1, 300, driver), (root / "full.log").read_text()[
            -2000:
        ]
        running_when_filled = driver.poll() is None
        _fill(small)
        folder = run_folder(small, "full")
        kept = ok_rows(read_rows(folder))
        driver.wait(timeout=300)
        log = (root / "full.log").read_text()
        after = read_rows(folder)  # must still be readable
        leftovers = sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))
        big = root / "big"
        shutil.copytree(small, big, ignore=shutil.ignore_patterns("ballast*"))
        resumed = bench("run", suite, "--out", big, "--resume", "--cache-dir", root / "cache", "--num-cpus", "2")
        yield {
            "suite": suite,
            "rc": driver.returncode,
            "log": log,
            "kept": kept,
            "after": after,
            "leftovers": leftovers,
            "running_when_filled": running_when_filled,
            "resumed": resumed,
            "big": big,
        }
    finally:
        if driver is not None:
            kill_session(driver.pid)
        _unmount(small)


@pytest.mark.slow
def test_a_full_disk_keeps_every_finished_row_and_resume_completes(disk_full: dict) -> None:
    assert disk_full["running_when_filled"], "the run ended before the disk filled: nothing was tested"
    assert disk_full["rc"] != 0, "writes failed, yet the run reported success"
    assert len(disk_full["kept"]) >= 1
    after = disk_full["after"]
    assert after["trial_id"].is_unique
    assert_rows_kept(disk_full["kept"], after)
    assert disk_full["leftovers"] == [], "a failed write left its temporary file behind"

    resumed = disk_full["resumed"]
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    folder = run_folder(disk_full["big"], "full")
    final = read_rows(folder)
    expected = suite_trial_ids(disk_full["suite"])
    assert len(final) == len(expected) and set(final["trial_id"]) == expected and set(final["status"]) == {"ok"}
    assert_rows_kept(ok_rows(after), final)


@pytest.mark.slow
def test_a_full_disk_is_reported_in_one_line(disk_full: dict) -> None:
    log = disk_full["log"]
    assert "Traceback" not in log, log[-3000:]
    assert len([line for line in log.splitlines() if "No space left on device" in line]) == 1, log[-3000:]
    assert disk_full["rc"] == 3  # 1 would say "the run finished", 2 "bad input, nothing ran"


@pytest.mark.slow
def test_an_output_folder_on_a_full_disk_is_one_line_and_no_traceback(tmp_path: Path) -> None:
    small = tmp_path / "small"
    _mount_tmpfs(small, "64k")
    try:
        _fill(small)
        suite = write_suite(tmp_path, name="nospace", concurrent=1)
        done = bench("run", suite, "--out", small, "--num-cpus", "1", timeout=300)
    finally:
        _unmount(small)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "No space left on device" in one_line_error(done.stderr)


# ---------------------------------------------------------------------------------------------------------
# 6. results faults


def _good_rows(run_id: str) -> list[dict]:

    return [
        make_row(run_id=run_id, backbone=backbone, seed=seed, metric_top1=70.0 + 5 * index + seed)
        for index, backbone in enumerate(["efficientnet_lite0", "efficientnet_lite1"])
        for seed in (0, 1)
    ]


def _break(path: Path, how: str) -> None:
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "foreign":
        pq.write_table(pa.table({"city": ["Oslo", "Lima"], "population": [709_000, 10_000_000]}), path)
    else:
        raise ValueError(how)


@pytest.fixture(scope="module", params=["truncated", "foreign"])
def broken_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:

    root = tmp_path_factory.mktemp(f"results_{request.param}")
    good = write_run(root / "good", _good_rows("run-good"))
    bad = write_run(root / "bad", [make_row(run_id="run-bad", backbone="efficientnet_lite2", metric_top1=99.0)])
    _break(bad / results.TRIALS_FILE, request.param)
    with pytest.raises((pa.ArrowException, OSError, KeyError)):  # truncated: unreadable; foreign: no trial_id
        pq.read_table(bad / results.TRIALS_FILE).column("trial_id")  # the fault is real
    board = bench("leaderboard", good, bad)
    report = bench("report", good, bad)
    return {"good": good, "bad": bad, "board": board, "report": report}


@pytest.mark.slow
def test_leaderboard_skips_a_bad_parquet_file_and_names_it(broken_runs: dict) -> None:
    board = broken_runs["board"]
    assert board.returncode == 0, board.stderr
    assert "efficientnet_lite1" in board.stdout and "efficientnet_lite0" in board.stdout
    assert "efficientnet_lite2" not in board.stdout
    assert str(broken_runs["bad"] / results.TRIALS_FILE) in one_line_error(board.stderr, prefix="")


@pytest.mark.slow
def test_report_skips_a_bad_parquet_file_and_lists_it(broken_runs: dict) -> None:
    report = broken_runs["report"]
    assert report.returncode == 0, report.stderr
    assert "Traceback" not in report.stdout + report.stderr
    text = (broken_runs["good"] / "report" / "report.md").read_text()
    assert "efficientnet_lite1" in text and str(broken_runs["bad"] / results.TRIALS_FILE) in text


@pytest.mark.slow
def test_report_names_a_bad_parquet_file_on_stderr(broken_runs: dict) -> None:
    assert str(broken_runs["bad"] / results.TRIALS_FILE) in one_line_error(broken_runs["report"].stderr, prefix="")
