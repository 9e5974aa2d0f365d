"""Which Ray a run uses: an address that cannot be reached is one line within seconds, and without an address
bench starts its own Ray, even where a `ray start` cluster died and left its record on the machine."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from conftest import (
    RAY_RECORD,
    bench,
    bench_env,
    distinct_port,
    free_port,
    one_line_error,
    ray_cluster,
    run_folder,
    write_suite,
)

from bench.results import store as results

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")


def test_an_address_with_nothing_listening_is_one_line_and_exit_2(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, freeze="[linear_probe]", sizes="data_fraction: [0.05]", seeds="[0]")
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = bench("run", str(suite), "--out", str(tmp_path / "out"), "--address", address, timeout=120)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert one_line_error(done.stderr).startswith(f"bench: error: cannot reach the Ray cluster at {address}")
    assert time.monotonic() - started < 60


@pytest.fixture
def dead_cluster_record():
    """A `ray start --head` cluster killed with -9 (no `ray stop`): Ray's record of it stays on the machine."""
    assert not RAY_RECORD.exists(), f"{RAY_RECORD} exists before the test: another cluster is recorded on this machine"
    port = distinct_port()
    with ray_cluster(port) as cluster:  # on leaving: the record forgotten, not `ray stop` (it ends every Ray)
        started = cluster.run(
            f"{RAY} start --head --port={port} --num-cpus=1 --include-dashboard=false", env=bench_env()
        )
        assert started.returncode == 0, started.stderr[-2000:]
        assert cluster.alive(), "no process of the started cluster was found"
        cluster.kill()
        assert not cluster.alive()
        assert RAY_RECORD.exists() and RAY_RECORD.read_text().strip().endswith(f":{port}")
        yield port


def test_a_dead_recorded_cluster_is_never_joined_without_an_address(tmp_path: Path, dead_cluster_record) -> None:
    suite = write_suite(tmp_path, freeze="[linear_probe]", sizes="data_fraction: [0.05]", seeds="[0]")
    done = bench("run", str(suite), "--out", str(tmp_path / "out"), "--num-cpus", "1", timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "bench: ray local: 1 node(s)" in done.stdout
    assert len(results.load_runs([run_folder(tmp_path / "out", "tiny")]).trials) == 1
    # Asked for explicitly, the recorded cluster is tried, and refused in one line.
    asked = bench("run", str(suite), "--out", str(tmp_path / "out2"), "--address", "auto", timeout=120)
    assert asked.returncode == 2, asked.stderr[-2000:]
    line = one_line_error(asked.stderr)
    assert f":{dead_cluster_record}" in line and "cannot reach" in line, line
