"""Run `bench run` inside a memory cgroup whose limit is below the dataset's decoded size (Linux, as root).

    python scripts/under_memory_limit.py --limit-gb 3 -- bench run suite.yaml --out /tmp/out

The command and every process it starts (its local Ray) are in the cgroup: the kernel kills them if their
memory passes the limit, page cache included (clean pages of memory-mapped shards are dropped first). Prints the
command's exit code, its wall time and the cgroup's peak usage. cgroup v2 (`memory.max`, `memory.peak`) or v1
(`memory.limit_in_bytes`, `memory.max_usage_in_bytes`); swap is left off (this machine has none).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

V2 = Path("/sys/fs/cgroup/cgroup.controllers")
V1 = Path("/sys/fs/cgroup/memory")


def make_group(name: str, limit: int) -> tuple[Path, str]:
    """A fresh cgroup with ``limit`` bytes; returns its folder and the name of its peak-usage file."""
    if V2.exists():
        group = Path("/sys/fs/cgroup") / name
        group.mkdir(exist_ok=True)
        (group / "memory.max").write_text(str(limit))
        return group, "memory.peak"
    group = V1 / name
    group.mkdir(exist_ok=True)
    (group / "memory.limit_in_bytes").write_text(str(limit))
    return group, "memory.max_usage_in_bytes"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-gb", type=float, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    group, peak_file = make_group(f"bench-limit-{os.getpid()}", int(args.limit_gb * 2**30))
    started = time.monotonic()

    def join() -> None:  # in the child, before exec: it and everything it starts are in the group
        (group / "cgroup.procs").write_text(str(os.getpid()))

    try:
        code = subprocess.run(command, preexec_fn=join).returncode  # noqa: PLW1509 - only writes one file
    finally:
        seconds = time.monotonic() - started
        peak = int((group / peak_file).read_text())
        for _ in range(50):  # the group can be removed once its processes are gone
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.2)
    print(
        f"under_memory_limit: exit {code}, {seconds:.0f} s, limit {args.limit_gb:g} GiB, "
        f"peak {peak / 2**30:.2f} GiB (page cache included)",
        flush=True,
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
