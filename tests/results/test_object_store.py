"""Run folders in object storage: `bench run --out s3://...`, resume, the lease lock, and reading URIs back.

A real S3 server on 127.0.0.1 (moto's `ThreadedMotoServer`, with request signing checked: a wrong secret is
refused as by AWS), started once for this module. `bench` gets its credentials and endpoint the way a user gives
them: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` in the environment, or the URI's query
(`?endpoint_override=127.0.0.1:PORT&scheme=http`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from conftest import assert_rows_kept, bench, kill_driver, ok_rows, one_line_error, start_bench, wait_until, write_suite
from s3_server import BUCKET, S3, s3_server

from bench.errors import UserError
from bench.results import remote
from bench.results.store import EPOCHS_FILE, TRIALS_FILE, load_runs


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with s3_server() as server:
        yield server


@pytest.fixture
def user_env(s3: S3, monkeypatch: pytest.MonkeyPatch) -> S3:
    """This process's environment as the user's (for `load_runs` called in-process)."""
    for name, value in s3.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return s3


# ---------------------------------------------------------------------------------------------------------
# fast: the lock, and bad input before anything runs


def test_the_lease_lock_refuses_a_second_writer_and_ignores_an_expired_lease(user_env: S3):
    run = remote.resolve(f"s3://{BUCKET}/locks/tiny/20000101T000000Z")
    with remote.LeaseLock(run, lease_s=30):
        with pytest.raises(UserError, match="in use by another bench run"):
            remote.LeaseLock(run, lease_s=30).__enter__()
        assert len(user_env.objects("locks")) == 1  # the refused writer took its lock object away again
    assert user_env.objects("locks") == {}  # released
    with remote.LeaseLock(run, lease_s=2) as alive:
        time.sleep(3.5)  # longer than the lease: only the lock's own refreshing keeps the folder taken
        alive.check()
        with pytest.raises(UserError, match="in use by another bench run"):
            remote.LeaseLock(run, lease_s=2).__enter__()
        assert list(user_env.objects("locks")) == [alive.object.path]
    assert user_env.objects("locks") == {}
    dead = remote.LeaseLock(run, lease_s=2)  # a writer that dies without releasing: its object stays
    dead._put()
    with pytest.raises(UserError, match="in use"):
        remote.LeaseLock(run, lease_s=2).__enter__()
    time.sleep(3.5)  # the dead writer's lease runs out (the store's clock has whole seconds)
    with remote.LeaseLock(run, lease_s=2) as lock:
        assert list(user_env.objects("locks")) == [lock.object.path]  # the expired object was cleared away


def test_missing_bucket_and_wrong_credentials_are_one_line_exit_2_and_nothing_is_lost(s3: S3, tmp_path):
    suite = write_suite(tmp_path, freeze="[linear_probe]", sizes="data_fraction: [0.05]", seeds="[0]")
    before = s3.objects()
    missing = bench("run", suite, "--out", "s3://no-such-bucket/results", cwd=tmp_path, env=s3.env(), timeout=120)
    assert missing.returncode == 2
    assert "bucket 'no-such-bucket' does not exist" in one_line_error(missing.stderr)
    wrong = bench(
        "run", suite, "--out", f"s3://{BUCKET}/results", cwd=tmp_path, env=s3.env(AWS_SECRET_ACCESS_KEY="wrong")
    )
    assert wrong.returncode == 2
    assert "ACCESS_DENIED" in one_line_error(wrong.stderr) and "check the credentials" in wrong.stderr
    unknown = bench("run", suite, "--out", f"s3://{BUCKET}/results?bogus=1", cwd=tmp_path, env=s3.env())
    assert unknown.returncode == 2 and "bogus" in one_line_error(unknown.stderr)
    refused = bench("leaderboard", f"s3://{BUCKET}/results", env=s3.env(AWS_SECRET_ACCESS_KEY="wrong"))
    assert refused.returncode == 2 and "ACCESS_DENIED" in one_line_error(refused.stderr)
    assert s3.objects() == before  # nothing written, nothing removed
    assert not (tmp_path / ".bench_cache").exists()  # nothing ran


# ---------------------------------------------------------------------------------------------------------
# slow: bench run on Ray into the store


@pytest.mark.slow
def test_run_into_s3_then_load_runs_leaderboard_and_report_read_it_back(user_env: S3, tmp_path):
    s3 = user_env
    suite = write_suite(tmp_path, freeze="[linear_probe]", seeds="[0, 1]")  # 4 trials
    done = bench("run", suite, "--out", f"s3://{BUCKET}/run", "--num-cpus", "2", cwd=tmp_path, env=s3.env())
    assert done.returncode == 0, done.stderr[-2000:]
    objects = s3.objects("run")
    (trials_key,) = [k for k in objects if k.endswith(TRIALS_FILE)]
    run_uri = "s3://" + trials_key.rsplit("/", 1)[0]
    assert f"run folder: {run_uri}" in done.stdout and "| digits |" in done.stdout  # the leaderboard, read back
    assert {k.rsplit("/", 1)[1] for k in objects} == {TRIALS_FILE, EPOCHS_FILE, "suite.yaml", "env.json"}  # no lock
    assert (tmp_path / ".bench_cache").is_dir()  # the caches stay local

    table = s3.read(trials_key.removeprefix(f"{BUCKET}/"))
    assert len(table) == 4 and set(table["status"]) == {"ok"} and table["trial_id"].is_unique

    data = load_runs(f"s3://{BUCKET}/run")
    assert data.run_dirs == [run_uri] and set(data.trials["run_dir"]) == {run_uri}
    assert sorted(data.trials["trial_id"]) == sorted(table["trial_id"]) and not data.problems
    assert set(data.epochs["trial_id"]) == set(table["trial_id"]) and data.suites[run_uri]["name"] == "tiny"

    # The endpoint in the URI's query instead of AWS_ENDPOINT_URL.
    query = f"?endpoint_override=127.0.0.1:{s3.port}&scheme=http"
    board = bench("leaderboard", f"s3://{BUCKET}/run{query}", env=s3.env(AWS_ENDPOINT_URL="http://127.0.0.1:9"))
    assert board.returncode == 0 and "| digits |" in board.stdout, board.stderr[-2000:]
    report = bench("report", f"s3://{BUCKET}/run", cwd=tmp_path, env=s3.env())
    assert report.returncode == 0, report.stderr[-2000:]
    html = (tmp_path / "bench-report" / "report.html").read_text()
    assert run_uri in html and "efficientnet_lite0" in html


@pytest.mark.slow
def test_second_run_refused_then_kill_minus_nine_and_resume_keeps_every_uploaded_row(s3: S3, tmp_path):
    suite = write_suite(tmp_path, concurrent=1, steps=6)  # 8 trials, one at a time
    out = f"s3://{BUCKET}/killed"
    env = s3.env(BENCH_LOCK_LEASE_S="6")  # a dead driver's lock is ignored after 6 s (default 60 s)
    log = tmp_path / "driver.log"
    driver = start_bench("run", suite, "--out", out, "--num-cpus", "1", log=log, cwd=tmp_path, env=env)
    try:
        uploaded = wait_until(lambda: any(k.endswith(TRIALS_FILE) for k in s3.objects("killed")), 300, driver)
        assert uploaded and driver.poll() is None, log.read_text()[-2000:]
        refused = bench("run", suite, "--out", out, "--resume", "--num-cpus", "1", cwd=tmp_path, env=env)
        assert refused.returncode == 2 and "in use by another bench run" in one_line_error(refused.stderr)
    finally:
        kill_driver(driver)  # and the local Ray it started
    (trials_key,) = [k.removeprefix(f"{BUCKET}/") for k in s3.objects("killed") if k.endswith(TRIALS_FILE)]
    before = s3.read(trials_key)
    assert 1 <= len(before) < 8, log.read_text()[-2000:]
    ok_before = ok_rows(before)

    time.sleep(7)  # the killed driver's lease runs out
    resumed = bench("run", suite, "--out", out, "--resume", "--num-cpus", "2", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{len(before)} already done" in resumed.stdout
    after = s3.read(trials_key)
    assert len(after) == 8 and after["trial_id"].is_unique and set(after["status"]) == {"ok"}
    assert_rows_kept(ok_before, after)  # no ok row rewritten: same finished_at, same metrics
    assert not [k for k in s3.objects("killed") if "/.leases/" in k]  # the stale lock was cleared, ours released


@pytest.mark.slow
def test_credentials_revoked_mid_run_stop_it_with_exit_3_keeping_the_uploaded_rows(s3: S3, tmp_path):
    key, secret = s3.new_user("revoked")
    suite = write_suite(tmp_path, concurrent=1, steps=6)  # 8 trials, one at a time
    env = s3.env(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret)
    log = tmp_path / "driver.log"
    driver = start_bench(
        "run", suite, "--out", f"s3://{BUCKET}/revoked", "--num-cpus", "1", log=log, cwd=tmp_path, env=env
    )
    try:
        uploaded_any = wait_until(lambda: any(k.endswith(TRIALS_FILE) for k in s3.objects("revoked")), 300, driver)
        assert uploaded_any and driver.poll() is None, log.read_text()[-2000:]
        (trials_key,) = [k.removeprefix(f"{BUCKET}/") for k in s3.objects("revoked") if k.endswith(TRIALS_FILE)]
        s3.iam.delete_access_key(UserName="revoked", AccessKeyId=key)  # the store refuses the driver from now on
        uploaded = s3.read(trials_key)
        driver.wait(timeout=300)
    finally:
        kill_driver(driver)  # what is left of it, and its local Ray
    output = log.read_text()
    assert driver.returncode == 3, output[-2000:]
    errors = [line for line in output.splitlines() if line.startswith("bench: error: ")]
    assert len(errors) == 1 and "s3://" in errors[0] and "Traceback" not in output, output[-2000:]
    kept = s3.read(trials_key)
    assert len(kept) < 8 and set(uploaded["trial_id"]) <= set(kept["trial_id"])  # rows uploaded before: kept
