"""scripts/gpu_check.py, the prepared GPU run of issue 6, checked on this machine with --quick (the same code
paths on the CPU) so that a GPU session never spends its few minutes on a broken script."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

from bench.utils.tables import parse_table

SCRIPT = REPO / "scripts" / "gpu_check.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=900,
        check=False,
    )


def test_without_a_gpu_it_says_so_in_one_line_and_exits_2():
    finished = _run()
    assert finished.returncode == 2
    assert finished.stderr.strip() == "gpu_check: no CUDA device here; run with --quick to check the script on the CPU"


def test_a_wrong_table_list_is_one_line_and_exit_2():
    finished = _run("--quick", "--tables", "4,6")
    assert finished.returncode == 2
    assert finished.stderr.strip() == "gpu_check: --tables '4,6': expected numbers from 1 to 5, comma-separated"


@pytest.mark.slow
def test_quick_run_prints_the_first_four_tables():
    finished = _run("--quick", "--tables", "1,2,3,4")
    assert finished.returncode == 0, finished.stderr[-2000:]
    out = finished.stdout
    throughput = parse_table(out.split("1. training throughput")[1].split("2. batch_size")[0])
    assert [row["loop"].split(" ")[0] for row in throughput] == ["timm", "bench", "bench"]
    assert all(float(row["images/s"].replace(",", "")) > 0 for row in throughput)
    (auto,) = parse_table(out.split("2. batch_size: auto")[1].split("3. small trials")[0])
    assert auto["search"] == "auto 64 (cpu)" and auto["oom halvings"] == "0"
    costs = parse_table(out.split("3. small trials")[1].split("4. packed")[0])
    assert [row["path"] for row in costs] == ["none", "none", "none", "prefix", "features"]
    assert all(float(row["wall s"]) >= float(row["train loop s"]) >= 0 and float(row["wall s"]) > 0 for row in costs)
    packing = parse_table(out.split("4. packed")[1])
    assert [row["trials"] for row in packing] == ["one at a time", "two at a time"]
    assert all(row["trials ok"] == "12/12" and row["same leaderboard"] == "yes" for row in packing)


@pytest.mark.slow
def test_quick_compiled_table_runs_every_row():
    finished = _run("--quick", "--tables", "5")
    assert finished.returncode == 0, finished.stderr[-2000:]
    out = finished.stdout
    steps = parse_table(out.split("5. compiled steps (train.compile)")[1].split("bench compiled / timm")[0])
    assert [row["compiled"] for row in steps] == ["inductor", "inductor", "inductor"]  # no card: inductor
    assert all(float(row["compiled images/s"].replace(",", "")) > 0 for row in steps)
    assert float(out.split("bench compiled / timm compiled at the throughput size: ")[1].split()[0]) > 0
    packing = parse_table(out.split("5b. packed")[1])
    assert [(row["trials"], row["compile"]) for row in packing] == [
        ("one at a time", "off"),
        ("two at a time", "off"),
        ("one at a time", "on"),
        ("two at a time", "on"),
    ]
    assert all(row["trials ok"] == "12/12" for row in packing)
    assert [float(row["compile s (trials' sum)"]) > 0 for row in packing] == [False, False, True, True]


@pytest.mark.slow
def test_skip_packing_needs_no_ray_and_tables_run_in_the_order_asked():
    # Tables 1 to 3 on a machine with torch and timm but no Ray (the GPU image): Ray is made unimportable.
    # --tables 3,4,1: table 3 first, the packing table dropped by --skip-packing, table 2 not asked for.
    finished = subprocess.run(
        [
            sys.executable,
            "-c",
            "import runpy, sys; sys.modules['ray'] = sys.modules['pydantic'] = None; "
            "sys.argv = ['gpu_check', '--quick', '--skip-packing', '--tables', '3,4,1']; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""},
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    out = finished.stdout
    assert "4. packed" not in out and "2. batch_size" not in out
    assert 0 < out.index("3. small trials") < out.index("1. training throughput")
