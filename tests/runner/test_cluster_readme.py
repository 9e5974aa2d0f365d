"""The README's cluster commands, run as written on this machine: a `ray start --head` with token
authentication, a second node joining with the head's token, the suite submitted as a Ray job, and a driver in
the test's own shell (`RAY_ADDRESS=auto bench run`). Only the head's address, its ports, the suite and the output
folder are put in; so the document cannot drift from what works."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
from conftest import RAY_RECORD, REPO, bench_env, distinct_port, ray_cluster, run_folders, write_suite

from bench.results import store as results

pytestmark = pytest.mark.slow


def readme_cluster_commands() -> list[str]:
    """The command lines of the README's cluster block (comments dropped)."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- cluster-commands[^>]*-->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no cluster-commands block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_readme_cluster_commands_run_as_written(tmp_path: Path) -> None:
    import ray._private.services

    assert not RAY_RECORD.exists(), f"{RAY_RECORD} exists: another `ray start` cluster is recorded on this machine"
    commands = readme_cluster_commands()
    head_ip = ray._private.services.get_node_ip_address()
    gcs_port, dashboard_port = distinct_port(), distinct_port()
    workdir, home, out = tmp_path / "study", tmp_path / "home", tmp_path / "results"
    workdir.mkdir()
    home.mkdir()
    suite = write_suite(workdir, name="my_suite", freeze="[linear_probe]", sizes="data_fraction: [0.05]", steps=4)
    env = bench_env()
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}:{env['PATH']}")  # the token in a home of ours

    def put_in(command: str) -> str:
        for old, new in (
            ("HEAD_IP", head_ip),
            ("6379", str(gcs_port)),
            ("8265", str(dashboard_port)),
            ("/shared/suites/my_suite.yaml", str(suite)),
            ("/shared/results", str(out)),
        ):
            command = command.replace(old, new)
        return command

    ran = []
    with ray_cluster(gcs_port) as cluster:  # on leaving: every process these commands left, and Ray's record
        for command in map(put_in, commands):
            if "ray start" in command:
                # Two nodes of one CPU on one machine: each runs one trial at a time, and each node's agent
                # needs ports of its own (on a real cluster each node has the machine to itself).
                command += f" --num-cpus=1 --dashboard-agent-listen-port={distinct_port()}"
                command += f" --dashboard-agent-grpc-port={distinct_port()} --metrics-export-port={distinct_port()}"
            deadline = time.monotonic() + 90
            while True:
                done = cluster.run(command, cwd=workdir, env=env)
                # Ray's job agent takes seconds to come up after `ray start`; Ray says to try again.
                if "No available agent" not in done.stderr or time.monotonic() > deadline:
                    break
                time.sleep(3)
            ran.append(command)
            assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            if "bench run" in command:
                assert "2 node(s)" in done.stdout + done.stderr, done.stdout[-3000:]
        assert (home / ".ray" / "auth_token").exists()
        # Without the token the head refuses a node, for want of the token: the README's token step is needed.
        refused = cluster.run(
            f"RAY_AUTH_MODE=disabled ray start --address={head_ip}:{gcs_port} --num-cpus=1",
            cwd=workdir,
            env={**env, "HOME": str(tmp_path)},
            timeout=120,
        )
        assert refused.returncode == 1, refused.stdout[-2000:] + refused.stderr[-2000:]
        assert "AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing" in refused.stderr, (
            refused.stderr[-3000:]
        )
    assert not cluster.alive()
    assert sum("bench run" in command for command in ran) == 2  # as a Ray job, and from a shell
    runs = run_folders(out, "my_suite")
    assert len(runs) == 2
    for run_dir in runs:
        table = results.load_runs([run_dir]).trials
        assert len(table) == 2 and set(table["status"]) == {"ok"}
