"""A run's datasets on the cluster: prepared as Ray tasks shard by shard, opened by trials on any node.

The driver resolves each dataset and lists its files (``bench.data.prepare.plan_dataset``); it decodes nothing
and holds no pixels. Each shard (``bench.data.shards``) is a Ray task: shards of image files go to any node with
a free CPU, which reads the files where it sees them and otherwise gets their encoded bytes from the driver's
node; shards of other sources (torchvision's, bundled ones, ``hf:``) are decoded on the driver's node, which
has them. A task writes its shard into its node's cache folder; shards that land on another node than the
driver's are copied to the driver's node (the dataset's home) one at a time, and the driver publishes the
manifest there. A trial on a node whose cache lacks the dataset copies its shards from the home node, one at a
time, into its own cache (``open_dataset``); on a cache every node sees (a shared file system), nothing is
copied. Memory: the driver holds file names and labels; a task or trial one shard on the move at most.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from bench.config import TrialConfig
from bench.data import PreparedDataset, TooFewClasses, dataset_group, shards
from bench.data.prepare import DatasetPlan, finish, load_prepared, plan_dataset
from bench.data.sources import RawDataset, file_source
from bench.errors import UserError
from bench.plugins import load_plugins

log = logging.getLogger(__name__)

COPIES_IN_FLIGHT = 4  # shard files on their way to the home node at a time (each up to a shard's size)


def node_label() -> str:
    """This Ray node as records and rows name it: its address and the start of its node id (two nodes of one
    machine share the address)."""
    return f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"


def _on(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


@ray.remote(num_cpus=0)
def _read_files(paths: list[str]) -> list[bytes]:
    """The bytes of each file (empty for one that cannot be read: it is then skipped as unreadable)."""
    blobs = []
    for path in paths:
        try:
            with open(path, "rb") as file:
                blobs.append(file.read())
        except OSError:
            blobs.append(b"")
    return blobs


@ray.remote(num_cpus=0)
def _read_file(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


@ray.remote(num_cpus=0)
def _store_file(path: str, blob: bytes) -> int:
    """Write ``blob`` whole to ``path`` on this node (temporary name, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.copy")
    temporary.write_bytes(blob)
    os.replace(temporary, target)
    return len(blob)


@functools.lru_cache(maxsize=2)
def _raw(name: str, img_size: int, root: str | None, download: bool, plugins: tuple[str, ...]) -> RawDataset:
    """A source opened once per worker process (a torchvision dataset object, a bundled array, a plug-in's)."""
    load_plugins(plugins)  # a plug-in's dataset is registered by importing its module, in this worker too
    return plan_dataset(name, img_size, root, download).load()


@dataclass(frozen=True)
class _Files:
    """A shard's image files: their paths and labels."""

    paths: list[str]
    labels: list[int]


@ray.remote(num_cpus=1)
def _decode_shard(
    partial: str, job: shards.ShardJob, files: _Files | None, opened: tuple[Any, ...], home: str, fmt: str
) -> shards.ShardRecord:
    """Decode one shard into this node's ``partial`` folder (one thread: Ray runs a task per CPU)."""
    img_size = opened[1]
    if files is None:  # not files: open the source here (this is the home node) and take the shard's items
        raw = _raw(*opened)
        window = (raw.train if job.split == "train" else raw.test).window(job.start, job.stop)
    else:
        if files.paths and os.path.isfile(files.paths[0]):
            items: list[str | bytes] = list(files.paths)
        else:  # the image root is not on this node: the encoded bytes come from the home node
            items = list(ray.get(_read_files.options(scheduling_strategy=_on(home)).remote(files.paths)))
        window = file_source(items, files.labels, img_size, names=files.paths)
    return shards.write_shard(Path(partial), job, window, img_size, node_label(), workers=1, fmt=fmt)


@dataclass
class _Preparation:
    """One dataset on its way: its plan, its sources, its shards submitted and done."""

    key: str
    plan: DatasetPlan
    raw: RawDataset
    started: float
    pending: dict[Any, shards.ShardJob] = field(default_factory=dict)  # task ref -> job
    records: list[shards.ShardRecord] = field(default_factory=list)
    copies: list[Any] = field(default_factory=list)  # refs of the shard files on their way to the home node
    copied: int = 0  # bytes of the copies finished


def prepare_datasets(
    configs: dict[str, TrialConfig], cache: str, shard_mb: float = shards.SHARD_MB
) -> tuple[dict[str, shards.ShardSet], dict[str, str]]:
    """Prepare every dataset of ``configs`` (one trial config per dataset key) into ``cache`` on the cluster.
    Returns the shard set of each dataset ready, and the one-line reason of each that cannot be had."""
    home = ray.get_runtime_context().get_node_id()
    ready: dict[str, shards.ShardSet] = {}
    unavailable: dict[str, str] = {}
    running: list[_Preparation] = []
    for key, config in configs.items():
        try:
            plan = plan_dataset(
                config.dataset, config.img_size, config.dataset_root, config.download, cache, config.shard_format
            )
            if plan.cached:
                ready[key] = _shard_set(plan, home)
                print(f"bench: dataset {config.dataset} at {config.img_size} px: prepared before ({plan.final})")
                continue
            started = time.perf_counter()
            opened = (config.dataset, config.img_size, config.dataset_root, config.download, config.plugins)
            running.append(_submit(key, plan, plan.load(), started, home, shard_mb, opened))
        except TooFewClasses:
            raise  # the suite's own mistake, found only now: one line and exit 2, as at validation
        except UserError as error:
            unavailable[key] = str(error)
    for preparation in running:
        try:
            ready[preparation.key] = _collect(preparation, home)
        except TooFewClasses:
            raise
        except UserError as error:
            unavailable[preparation.key] = str(error)
    return ready, unavailable


def _submit(
    key: str, plan: DatasetPlan, raw: RawDataset, started: float, home: str, shard_mb: float, opened: tuple[Any, ...]
) -> _Preparation:
    """One task per shard; ``opened``: how a task on the home node opens the source (``_raw``'s arguments)."""
    assert plan.partial is not None
    preparation = _Preparation(key, plan, raw, started)
    sources = {"train": raw.train, "test": raw.test}
    jobs = shards.plan_shards(
        {s: sources[s].length for s in shards.SPLITS}, shards.shard_items(plan.img_size, shard_mb)
    )
    for job in jobs:
        source = sources[job.split]
        if source.files is not None and source.labels is not None:
            files = _Files(list(source.files[job.start : job.stop]), list(source.labels[job.start : job.stop]))
            options: dict[str, Any] = {"scheduling_strategy": "SPREAD"}
        else:
            files, options = None, {"scheduling_strategy": _on(home)}
        ref = _decode_shard.options(**options).remote(str(plan.partial), job, files, opened, home, plan.shard_format)
        preparation.pending[ref] = job
    return preparation


def _collect(preparation: _Preparation, home: str) -> shards.ShardSet:
    """Wait for a dataset's shards, copy those decoded off the home node to it, publish the manifest."""
    plan = preparation.plan
    assert plan.partial is not None
    home_label = ray.get(_label_of.options(scheduling_strategy=_on(home)).remote())
    while preparation.pending:
        done, _ = ray.wait(list(preparation.pending), num_returns=1)
        preparation.pending.pop(done[0])
        try:
            record: shards.ShardRecord = ray.get(done[0])
        except ray.exceptions.RayTaskError as error:  # the user's mistake, found in a task: its one line
            if isinstance(error.cause, UserError):
                raise error.cause from None
            raise
        preparation.records.append(record)
        if record.node != home_label and shards.read_record(plan.partial, record.name) is None:
            node_id = _node_id(record.node)
            for name in (record.file, f"{record.name}.json"):
                path = str(plan.partial / name)
                blob = _read_file.options(scheduling_strategy=_on(node_id)).remote(path)
                preparation.copies.append(_store_file.options(scheduling_strategy=_on(home)).remote(path, blob))
                del blob
            while len(preparation.copies) > COPIES_IN_FLIGHT:  # bounded memory: wait for the oldest
                preparation.copied += ray.get(preparation.copies.pop(0))
    copied = preparation.copied + sum(ray.get(preparation.copies))
    seconds = time.perf_counter() - preparation.started
    finish(plan, preparation.raw, preparation.records, seconds)
    shard_set = _shard_set(plan, home)
    _report(plan, preparation.records, seconds, copied)
    return shard_set


@ray.remote(num_cpus=0)
def _label_of() -> str:
    return node_label()


def _node_id(label: str) -> str:
    """The Ray node id a label names (its first characters)."""
    prefix = label.rpartition("/")[2]
    for node in ray.nodes():
        if node.get("Alive") and node["NodeID"].startswith(prefix):
            return node["NodeID"]
    raise UserError(f"the node that decoded a shard ({label}) left the cluster before it was copied")


def _shard_set(plan: DatasetPlan, home: str) -> shards.ShardSet:
    assert plan.final is not None
    return shards.ShardSet(plan.fingerprint, shards.load_manifest(plan.final), home=home)


def _report(plan: DatasetPlan, records: list[shards.ShardRecord], seconds: float, copied: int) -> None:
    images = sum(r.stop - r.start for r in records)
    made = [r for r in records if not r.reused]
    by_node = Counter(r.node for r in made)
    nodes = ", ".join(f"{node} {count}" for node, count in sorted(by_node.items())) or "none"
    reused = f", {len(records) - len(made)} reused" if len(made) < len(records) else ""
    moved = f", {copied / 2**20:.1f} MiB copied to the driver's node" if copied else ""
    print(
        f"bench: dataset {plan.name} at {plan.img_size} px: {images} images in {len(records)} shards, "
        f"{seconds:.1f} s ({images / max(seconds, 1e-9):.0f} images/s); shards decoded by node: {nodes}{reused}{moved}",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------------------
# trial side

_OPENED: dict[tuple[str, str], PreparedDataset] = {}


def open_dataset(shard_set: shards.ShardSet, config: TrialConfig) -> tuple[PreparedDataset, int]:
    """The dataset in this node's cache folder (``config.cache_dir``), its missing shards first copied from the
    home node one at a time; opened once per process. Also returns the bytes this call copied."""
    assert config.cache_dir is not None
    folder = Path(config.cache_dir) / "datasets" / shard_set.fingerprint
    copied = 0
    if shards.missing_files(folder, shard_set):
        if shard_set.home is None:
            raise UserError(f"prepared dataset '{folder}' is incomplete and no node holds it whole")
        home = _on(shard_set.home)

        def read(name: str) -> bytes:
            return ray.get(_read_file.options(scheduling_strategy=home).remote(str(folder / name)))

        copied = shards.copy_in(folder, shard_set, read)
    key = (shard_set.fingerprint, config.cache_dir)
    if key not in _OPENED:
        group = shard_set.meta.get("group") or dataset_group(config.dataset)
        _OPENED[key] = load_prepared(folder, config.dataset, group)
    return _OPENED[key], copied
