"""Memory, measured: the peak of a whole run on this machine, and the peak of one trial in its process.

A run's peak (``PeakMemory``, printed by ``bench run``): the proportional set size (PSS, from
``/proc/<pid>/smaps_rollup``) of the driver and every process it started (a local Ray's GCS, raylet and workers),
sampled in a background thread. PSS counts a page shared by several processes (Ray's object store in
``/dev/shm``, torch's shared libraries) once in the sum, where RSS would count it in every worker. Linux only;
elsewhere the sampler reports nothing. A trial's peak (``peak_memory_mb`` on CPU) is its process's peak RSS, reset
at the trial's start, so a Ray worker that runs trial after trial reports each one's own peak.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import os
import threading
import time
from pathlib import Path

PROC = Path("/proc")


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks) of every process alive now, from /proc."""
    found = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
        except OSError:
            continue  # the process ended while we looked
        found[int(entry.name)] = (int(fields[1]), int(fields[19]))
    return found


def children_map(table: dict[int, tuple[int, int]] | None = None) -> dict[int, list[int]]:
    """pid -> its child pids, of ``table`` (default: ``process_table()``)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in (process_table() if table is None else table).items():
        children.setdefault(ppid, []).append(pid)
    return children


def _pss_bytes(pid: int) -> int:
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def tree_pss_bytes(root: int | None = None) -> int:
    """PSS of ``root`` (default: this process) and all its descendants, in bytes; 0 where /proc is missing."""
    if not PROC.is_dir():
        return 0
    root = os.getpid() if root is None else root
    children, total, stack = children_map(), 0, [root]
    while stack:
        pid = stack.pop()
        total += _pss_bytes(pid)
        stack.extend(children.get(pid, []))
    return total


class PeakMemory:
    """``with PeakMemory() as peak: ...`` then ``peak.gib``: the largest sampled tree PSS while inside.

    Samples every ``interval_s`` seconds, or less often where a sample is dear: reading PSS makes the kernel
    walk every page table of the tree, and the sampler never takes more than ``max_cpu_share`` (default 2%) of
    one core from the trials it measures. A run's memory is mostly a plateau of long-lived workers, so sparse
    samples find its peak; each trial's own peak is measured apart, exactly (``peak_rss_mb``).
    """

    def __init__(self, interval_s: float = 1.0, max_cpu_share: float = 0.02) -> None:
        self.interval_s = interval_s
        self.max_cpu_share = max_cpu_share
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="bench-peak-memory", daemon=True)

    def _sample(self) -> None:
        while True:
            cpu = time.thread_time()
            self.peak_bytes = max(self.peak_bytes, tree_pss_bytes())
            cost = time.thread_time() - cpu
            if self._stop.wait(max(self.interval_s, cost / self.max_cpu_share)):
                return

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, tree_pss_bytes())

    @property
    def gib(self) -> float:
        return self.peak_bytes / 2**30


# ---------------------------------------------------------------------------------------------------------
# one process


def reset_peak_rss() -> bool:
    """Start a new peak: Linux resets the peak resident set size (VmHWM) to the current one. False elsewhere."""
    try:
        with open(PROC / "self" / "clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size of this process since the last `reset_peak_rss` (else since it started), MiB."""
    try:
        for line in (PROC / "self" / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB; macOS bytes


@functools.cache
def freeze_imported_objects() -> None:
    """The first call moves every object alive now (in a worker that has imported torch, timm and scikit-learn:
    about half a million functions, types and dicts) out of the garbage collector's sight for good. They live as
    long as the process anyway; without this every full collection walks all of them (once per trial in
    ``release_freed_memory`` and again in the automatic ones). ``gc.freeze`` is CPython's tool for exactly this.
    Later calls do nothing."""
    gc.collect()
    gc.freeze()


def release_freed_memory() -> None:
    """Hand memory freed by the last trial back to the OS. glibc keeps freed heap in per-thread arenas, and a
    Ray worker runs each trial in a new thread: without this a reused worker's footprint climbs trial by
    trial."""
    gc.collect()  # the trial's reference cycles (cheap after freeze_imported_objects)
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ---------------------------------------------------------------------------------------------------------
# a trial's share of a node, and what grows with its dataset

FEATURE_BYTES = 4  # float32 frozen-feature rows


def system_memory_bytes() -> int:
    """This machine's memory, or its cgroup's limit when that is lower (a container, a scheduler's job)."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limits = []
    for path in (
        Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
        Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # v1 (the process's own group is mounted there)
    ):
        with contextlib.suppress(OSError, ValueError):
            limits.append(int(path.read_text().strip()))
    return min([physical, *limits])


def trial_share_bytes(node_memory: int, node_cpus: float, cpu_per_trial: float) -> int:
    """What one trial may use of a node: its memory split between the trials its CPUs run at once."""
    trials = max(1.0, node_cpus / max(cpu_per_trial, 1e-9))
    return int(node_memory / trials)


def frozen_feature_bytes(rows: int, feature_dim: int) -> int:
    """A linear probe's frozen features held in memory: one float32 row per image it trains or evaluates on."""
    return rows * feature_dim * FEATURE_BYTES
