"""``bench perf --scale``: how ``bench run``'s dataset preparation scales with the dataset's size.

Per size N (a multiple of 10): a synthetic ``imagefolder:`` of N 256 px JPEGs in 10 classes (hard links into one
pool, generated once), a one-trial suite (one training step, no similarity scoring), and ``<bench> run`` on it
from an empty cache as a subprocess, its process tree sampled every 0.2 s from ``/proc``. Printed per size:
prepare seconds and images/s (the prepared dataset's ``meta.json``), the driver's peak private memory
(``RssAnon``), the peak of the summed ``RssAnon`` of every other process in the tree and of the largest one,
the peak growth of ``/dev/shm`` (Ray's object store), the cache's bytes on disk, the trial's duration and the
run's wall time. ``--bench`` measures another checkout: the command must become the bench process itself
(``python``, or ``env ... python``, which execs), as the driver is the process it starts.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageDraw

from bench.utils import memory
from bench.utils.tables import markdown_table

SIZES = (2000, 8000, 16000, 32000, 64000)
QUICK_SIZES = (200, 400)
QUICK_IMG_SIZE = 64
CLASSES = 10
SOURCE_PX = 256  # side of the generated JPEGs
JPEG_QUALITY = 90
GRAIN = 6.0  # standard deviation of the background's grain, in grey levels
# ~80 MFLOP at 224 px, ~250 images/s on one core: evaluating the test split stays a small share of a run.
# (timm:mobilenetv3_* is faster still; bench sizes its head from head_hidden_size, so it runs too.)
DEFAULT_BACKBONE = "timm:efficientvit_m0"
SAMPLE_S = 0.2
SHM = "/dev/shm"
GIB = 1024**3

COLUMNS = (
    "images",
    "decoded_GB",
    "prepare_s",
    "images_per_s",
    "driver_peak_GiB",
    "workers_peak_GiB",
    "largest_worker_GiB",
    "shm_peak_GiB",
    "disk_GB",
    "trial_s",
    "wall_s",
    "status",
)

# ---------------------------------------------------------------------------------------------------------
# synthetic image folders


def class_name(label: int) -> str:
    return f"class{label}"


def file_name(index: int) -> str:
    return f"{index:06d}.jpg"


@functools.lru_cache(maxsize=CLASSES)
def _gradient(label: int) -> np.ndarray:
    """Class ``label``'s background (uint8 HxWx3): a diagonal blend between two colours fixed by the label, with a
    faint fixed grain so the JPEGs are photo-sized (~15 KB) rather than flat-colour small."""
    rng = np.random.default_rng(1000 + label)
    start, end = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    ramp = np.add.outer(np.arange(SOURCE_PX), np.arange(SOURCE_PX)).astype(np.float32) / (2 * SOURCE_PX - 2)
    grain = rng.normal(0, GRAIN, size=(SOURCE_PX, SOURCE_PX, 1)).astype(np.float32)
    return (start + ramp[..., None] * (end - start) + grain).round().clip(0, 255).astype(np.uint8)


def draw_image(label: int, index: int) -> Image.Image:
    """Image ``index`` of class ``label``: the class gradient plus 3-7 seeded rectangles and ellipses. A function
    of (label, index) only, so a pool can be extended or regenerated to the same bytes."""
    image = Image.fromarray(_gradient(label))
    draw = ImageDraw.Draw(image)
    rng = random.Random(label * 1_000_003 + index)
    for _ in range(rng.randint(3, 7)):
        x0, y0 = rng.randrange(SOURCE_PX - 16), rng.randrange(SOURCE_PX - 16)
        box = (x0, y0, x0 + rng.randint(12, 120), y0 + rng.randint(12, 120))
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=colour)
    return image


def _write_chunk(task: tuple[str, int, int, int]) -> int:
    """Pool task: write images [start, stop) of one class that are missing; returns how many were written."""
    folder, label, start, stop = task
    written = 0
    for index in range(start, stop):
        path = Path(folder) / file_name(index)
        if path.exists():
            continue
        partial = path.with_name(f".{path.name}.part")
        draw_image(label, index).save(partial, format="JPEG", quality=JPEG_QUALITY)
        os.replace(partial, path)  # a killed run leaves no truncated JPEG under a final name
        written += 1
    return written


def make_pool(pool: Path, per_class: int, processes: int = 2) -> tuple[int, float]:
    """Ensure ``pool/<class>/<index>.jpg`` exists for 10 classes x ``per_class`` indices, writing only missing
    files, on ``processes`` processes. Returns (images written, seconds)."""
    started = time.perf_counter()
    tasks = []
    for label in range(CLASSES):
        folder = pool / class_name(label)
        folder.mkdir(parents=True, exist_ok=True)
        tasks += [(str(folder), label, start, min(start + 500, per_class)) for start in range(0, per_class, 500)]
    if processes > 1 and len(tasks) > 1:
        with multiprocessing.get_context("fork").Pool(processes) as workers:
            written = sum(workers.imap_unordered(_write_chunk, tasks))
    else:
        written = sum(map(_write_chunk, tasks))
    return written, time.perf_counter() - started


def link_folder(pool: Path, target: Path, per_class: int) -> Path:
    """``target/<class>/`` as hard links to the first ``per_class`` files of each pool class; rebuilt unless it
    already holds exactly those names. Returns ``target``."""
    classes, wanted = [class_name(label) for label in range(CLASSES)], [file_name(i) for i in range(per_class)]
    try:
        if sorted(os.listdir(target)) == classes and all(sorted(os.listdir(target / c)) == wanted for c in classes):
            return target
    except OSError:
        pass  # missing or half made: rebuilt
    shutil.rmtree(target, ignore_errors=True)
    for name in classes:
        (target / name).mkdir(parents=True)
        for file in wanted:
            os.link(pool / name / file, target / name / file)
    return target


# ---------------------------------------------------------------------------------------------------------
# memory of a process tree, from /proc


def _status_kib(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    """The ``keys`` lines of /proc/<pid>/status in KiB (absent: 0, e.g. for a zombie or a process that ended)."""
    values = dict.fromkeys(keys, 0)
    try:
        with open(memory.PROC / str(pid) / "status") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in values:
                    values[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return values


def shm_used_bytes() -> int:
    """Bytes in use on /dev/shm (total - free): Ray's object store and any other shared memory."""
    stats = os.statvfs(SHM)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


@dataclass
class TreeMemory:
    """Peaks over a process tree while it runs, in bytes. ``driver``: the root's RssAnon. ``others``: the sum of
    RssAnon over every other process in the tree at one sample. ``largest``: one other process's RssAnon.
    ``shm``: /dev/shm in use, less its value at the start (anything else on the machine using /dev/shm meanwhile
    counts too); ``shmem``: the largest RssShmem of one process in the tree, a lower bound of the tree's own.
    ``processes``: distinct processes seen."""

    driver: int = 0
    others: int = 0
    largest: int = 0
    shm: int = 0
    shmem: int = 0
    processes: int = 0
    samples: int = 0


class TreeSampler:
    """``with TreeSampler(pid) as sampler: ...`` then ``sampler.peaks``: samples every ``interval_s`` seconds in a
    thread. The tree is every process whose parent chain reaches ``pid``, plus every process seen in it before
    that is still alive (same pid and start time), so a worker re-parented after its parent ended still counts."""

    def __init__(self, pid: int, interval_s: float = SAMPLE_S) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peaks = TreeMemory()
        self._shm_start = shm_used_bytes()
        self._seen: set[tuple[int, int]] = set()  # (pid, start time)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-scale-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _tree(self) -> list[int]:
        alive = memory.process_table()
        children = memory.children_map(alive)
        roots = [self.pid] + [pid for pid, start in self._seen if alive.get(pid, (0, -1))[1] == start]
        tree, stack = set(), roots
        while stack:
            pid = stack.pop()
            if pid in tree or pid not in alive:
                continue
            tree.add(pid)
            stack.extend(children.get(pid, []))
        self._seen.update((pid, alive[pid][1]) for pid in tree)
        return sorted(tree)

    def sample(self) -> None:
        """One sample: update the peaks."""
        peaks = self.peaks
        others = []
        for pid in self._tree():
            kib = _status_kib(pid, ("RssAnon", "RssShmem"))
            anon = kib["RssAnon"] * 1024
            peaks.shmem = max(peaks.shmem, kib["RssShmem"] * 1024)
            if pid == self.pid:
                peaks.driver = max(peaks.driver, anon)
            else:
                others.append(anon)
        peaks.others = max(peaks.others, sum(others))
        peaks.largest = max([peaks.largest, *others])
        peaks.shm = max(peaks.shm, shm_used_bytes() - self._shm_start)
        peaks.processes = len(self._seen)
        peaks.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)
        self.sample()


# ---------------------------------------------------------------------------------------------------------
# one size


@dataclass
class SizeResult:
    """One row of the table; figures are None where the run did not get far enough to produce them."""

    images: int
    img_size: int
    status: str = "ok"
    error: str = ""
    wall_s: float = 0.0
    prepare_s: float | None = None
    n_train: int | None = None
    n_test: int | None = None
    disk_bytes: int = 0
    trial_s: float | None = None
    train_s: float | None = None
    memory: TreeMemory = field(default_factory=TreeMemory)
    log: str = ""
    bench_source: str = ""  # the cli.py that ran, from the run's env.json: which checkout was measured

    @property
    def decoded_gb(self) -> float:
        return self.images * 3 * self.img_size * self.img_size / 1e9

    @property
    def images_per_s(self) -> float | None:
        if not self.prepare_s or self.n_train is None or self.n_test is None:
            return None
        return (self.n_train + self.n_test) / self.prepare_s

    def cells(self) -> list[str]:
        def num(value: float | None, digits: int) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        m = self.memory
        return [
            str(self.images),
            num(self.decoded_gb, 3),
            num(self.prepare_s, 1),
            num(self.images_per_s, 0),
            num(m.driver / GIB, 2),
            num(m.others / GIB, 2),
            num(m.largest / GIB, 2),
            num(m.shm / GIB, 2),
            num(self.disk_bytes / 1e9, 3),
            num(self.trial_s, 1),
            num(self.wall_s, 1),
            self.status,
        ]

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "decoded_gb": self.decoded_gb, "images_per_s": self.images_per_s}


def suite_yaml(folder: Path, backbone: str, img_size: int) -> str:
    """A one-trial suite on ``imagefolder:<folder>``: full fine-tuning for one step, no similarity scoring."""
    return yaml.safe_dump(
        {
            "name": f"scale-{folder.name}",
            "description": "bench perf --scale: one trial, one step, to time dataset preparation",
            "backbones": [{"name": backbone, "pretrained": False}],
            "datasets": [f"imagefolder:{folder}"],
            "grid": {"freeze": ["full"], "data_fraction": [1.0], "seed": [0]},
            "train": {"img_size": img_size, "steps": 1, "batch_size": 32},
            "analysis": {"similarity": False},
        },
        sort_keys=False,
    )


def default_bench() -> list[str]:
    """This Python on this checkout's bench: ``env PYTHONPATH=<checkout>[:$PYTHONPATH] python -m bench.cli``."""
    checkout = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(part for part in (checkout, os.environ.get("PYTHONPATH", "")) if part)
    return ["env", f"PYTHONPATH={path}", sys.executable, "-m", "bench.cli"]


def bench_env() -> dict[str, str]:
    """This environment less ``RAY_ADDRESS``, so each run starts (and measures) its own local Ray."""
    return {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}


def validate(bench: Sequence[str], suite: Path) -> None:
    """``<bench> validate <suite>`` in the suite's folder; SystemExit with its output unless it succeeds."""
    done = subprocess.run(
        [*bench, "validate", str(suite)], capture_output=True, text=True, env=bench_env(), cwd=suite.parent
    )
    if done.returncode != 0:
        raise SystemExit(f"bench perf --scale: {suite} does not validate:\n{done.stdout}{done.stderr}")


def read_prepared(cache: Path) -> tuple[float, int, int] | None:
    """(prepare seconds, n_train, n_test) summed over every ``meta.json`` under ``cache`` with ``prepare_seconds``
    (any layout); None where there is none."""
    found = None
    for path in sorted(cache.rglob("meta.json")):
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and "prepare_seconds" in meta:
            seconds, train, test = found or (0.0, 0, 0)
            found = (seconds + float(meta["prepare_seconds"]), train + int(meta["n_train"]), test + int(meta["n_test"]))
    return found


def folder_bytes(folder: Path) -> int:
    """Sum of the sizes of the files under ``folder`` (0 where it is missing)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # removed while we looked
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def read_trial(out: Path, result: SizeResult) -> None:
    """Fill the trial's duration and status from the run's ``trials.parquet`` (the newest under ``out``), and the
    bench that ran from the ``env.json`` beside it."""
    import pandas as pd

    tables = sorted(out.rglob("trials.parquet"), key=lambda path: path.stat().st_mtime)
    if not tables:
        result.error = result.error or "no trials.parquet"
        return
    with contextlib.suppress(OSError, ValueError, LookupError, TypeError):
        result.bench_source = json.loads((tables[-1].parent / "env.json").read_text())[-1]["argv"][0]
    row = pd.read_parquet(tables[-1]).iloc[0]
    started, finished = pd.to_datetime(row.get("started_at")), pd.to_datetime(row.get("finished_at"))
    if not (pd.isna(started) or pd.isna(finished)):
        result.trial_s = (finished - started).total_seconds()
    if pd.notna(row.get("train_seconds")):
        result.train_s = float(row["train_seconds"])
    if row.get("status") != "ok":
        result.error = str(row.get("error"))
        if result.status == "ok":  # a failed run's status names its exit code
            result.status = f"trial {row.get('status')}"


def measure_size(bench: Sequence[str], work: Path, pool: Path, images: int, img_size: int, backbone: str) -> SizeResult:
    """One size end to end: folder, suite, validate, ``bench run`` from an empty cache under the sampler, then
    the cache's and run's figures. A failed run is a row with status ``failed (rc=...)``, never an exception."""
    folder = link_folder(pool, work / f"images-{images}", images // CLASSES)
    suite = work / f"suite-{images}.yaml"
    suite.write_text(suite_yaml(folder, backbone, img_size))
    validate(bench, suite)
    cache, out, log = work / f"cache-{images}", work / "runs" / str(images), work / "runs" / f"{images}.log"
    for stale in (cache, out):
        shutil.rmtree(stale, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = SizeResult(images=images, img_size=img_size, log=str(log))
    command = [*bench, "run", str(suite), "--out", str(out), "--cache-dir", str(cache)]
    started = time.perf_counter()
    with log.open("w") as sink:
        # Run from the work folder: `python -m` puts the current folder first on sys.path, so from a checkout it
        # would import that checkout's bench whatever --bench's PYTHONPATH says.
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=bench_env(), cwd=work)
        with TreeSampler(process.pid) as sampler:
            rc = process.wait()
    result.wall_s = time.perf_counter() - started
    result.memory = sampler.peaks
    if rc != 0:
        result.status = f"failed (rc={rc})"
        result.error = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    prepared = read_prepared(cache)
    if prepared is not None:
        result.prepare_s, result.n_train, result.n_test = prepared
    result.disk_bytes = folder_bytes(cache / "datasets")
    read_trial(out, result)
    return result


# ---------------------------------------------------------------------------------------------------------
# the command


def machine_line() -> str:
    pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"machine: {platform.node()}, {os.cpu_count()} cpus, {pages * page / GIB:.1f} GiB memory, "
        f"{shutil.disk_usage(SHM).total / GIB:.1f} GiB /dev/shm, load average {load}"
    )


def _sizes(text: str) -> list[int]:
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or any(size < 20 or size % CLASSES for size in sizes):
        raise argparse.ArgumentTypeError(f"expected multiples of {CLASSES}, at least 20, got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench perf --scale",
        description="bench run's dataset preparation against dataset size: time, memory, shared memory, disk",
    )
    parser.add_argument("--sizes", type=_sizes, default=None, help=f"images per run (default {SIZES})")
    parser.add_argument(
        "--work-dir",
        default=None,
        help="image folders, caches and runs; generated images are kept for the next call "
        "(default: a temporary folder, removed at the end)",
    )
    parser.add_argument(
        "--bench",
        default=None,
        help="command that runs bench, run from --work-dir, e.g. 'env PYTHONPATH=/tmp/before python -m bench.cli' "
        "(default: this Python on this checkout: env PYTHONPATH=<checkout> python -m bench.cli)",
    )
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES} at {QUICK_IMG_SIZE} px: for tests")
    parser.add_argument("--img-size", type=int, default=None, help="train.img_size (default 224; 64 with --quick)")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"default {DEFAULT_BACKBONE}, pretrained: false")
    parser.add_argument("--processes", type=int, default=2, help="processes generating images (default 2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = args.sizes or list(QUICK_SIZES if args.quick else SIZES)
    img_size = args.img_size or (QUICK_IMG_SIZE if args.quick else 224)
    bench = shlex.split(args.bench) if args.bench else default_bench()
    print(machine_line(), flush=True)
    print(f"bench: {shlex.join(bench)}; backbone {args.backbone}; img_size {img_size}; sizes {sizes}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as scratch:
        work = Path(args.work_dir or scratch).resolve()
        pool = work / f"pool-{SOURCE_PX}px"
        written, seconds = make_pool(pool, max(sizes) // CLASSES, processes=args.processes)
        print(f"generated {written} images in {seconds:.1f} s into {pool} ({max(sizes)} wanted)", flush=True)
        results = []
        for index, images in enumerate(sizes):
            print(f"[{index + 1}/{len(sizes)}] {images} images: bench run ...", flush=True)
            result = measure_size(bench, work, pool, images, img_size, args.backbone)
            detail = f"\n{result.error}" if result.error else ""
            print(f"    {result.status}, {result.wall_s:.0f} s, ran {result.bench_source or '?'}{detail}", flush=True)
            results.append(result)
    print()
    print(markdown_table(COLUMNS, [result.cells() for result in results]))
    print()
    print(
        "memory: RssAnon sampled every 0.2 s over the bench process tree (driver; sum and largest of the rest); "
        "shm: /dev/shm in use less its value before the run; disk: bytes under <cache>/datasets"
    )
    print(machine_line().replace("machine:", "at the end:"))
    if args.json:
        figures = {
            "machine": machine_line(),
            "bench": bench,
            "backbone": args.backbone,
            "img_size": img_size,
            "generated_images": written,
            "generation_seconds": seconds,
            "sizes": [result.as_json() for result in results],
        }
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0 if all(result.status == "ok" for result in results) else 1
