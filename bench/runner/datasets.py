"""A run's datasets on the cluster: prepared as Ray tasks shard by shard, opened by trials on any node.

The driver resolves each dataset and lists its files (``bench.data.prepare.plan_dataset``); it decodes nothing
and holds no pixels. Each shard (``bench.data.shards``) is a Ray task: shards of image files go to any node with
a free CPU, which reads the files where it sees them and otherwise gets their encoded bytes from the driver's
node; shards of other sources (torchvision's, bundled ones, ``hf:``) are decoded on the driver's node, which
has them. A task writes its shard into its node's cache folder. Without a store, shards that land on another node
than the driver's are copied to the driver's node (the dataset's home) one at a time, and the driver publishes the
manifest there; a trial on a node whose cache lacks the dataset copies its files from the home node, one at a
time, into its own cache (``open_dataset``); on a cache every node sees (a shared file system), nothing is
copied. With a store (``--cache-dir s3://...``, ``bench.runner.shard_store``), each task uploads its shard, the
driver uploads the labels and the manifest, and trials copy what their node lacks from the store.

``Preparations`` submits every dataset's tasks at once and collects them in a driver thread, publishing each
dataset as soon as its last shard is in: the runner starts its trials then, while later datasets still decode.
Memory: the driver holds file names and labels; a task or trial one shard on the move at most.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import tempfile
import threading
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
from bench.runner.shard_store import ShardStore, open_store

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


@dataclass(frozen=True)
class _Target:
    """Where a dataset's shards go: its ``partial`` folder on the node that decodes, the home node (the driver's),
    the shard format, and the store every shard is uploaded to (None: shards gather on the home node)."""

    partial: str
    fingerprint: str
    fmt: str
    home: str
    store: ShardStore | None


@ray.remote(num_cpus=1)
def _decode_shard(
    job: shards.ShardJob, files: _Files | None, opened: tuple[Any, ...], target: _Target
) -> shards.ShardRecord:
    """Decode one shard into this node's ``partial`` folder (one thread: Ray runs a task per CPU), then upload it
    to the store if there is one; a shard the store holds already is not decoded again."""
    if target.store is not None:
        found = target.store.record(target.fingerprint, job.name)
        if found is not None and found.matches(job) and found.format == target.fmt:
            found.reused = True
            return found
    img_size = opened[1]
    if files is None:  # not files: open the source here (this is the home node) and take the shard's items
        raw = _raw(*opened)
        window = (raw.train if job.split == "train" else raw.test).window(job.start, job.stop)
    else:
        if files.paths and os.path.isfile(files.paths[0]):
            items: list[str | bytes] = list(files.paths)
        else:  # the image root is not on this node: the encoded bytes come from the home node
            items = list(ray.get(_read_files.options(scheduling_strategy=_on(target.home)).remote(files.paths)))
        window = file_source(items, files.labels, img_size, names=files.paths)
    partial = Path(target.partial)
    record = shards.write_shard(partial, job, window, img_size, node_label(), workers=1, fmt=target.fmt)
    if target.store is not None:
        target.store.put(partial, target.fingerprint, record.file, f"{record.name}.json")  # the record last
    return record


@dataclass
class _Preparation:
    """One dataset on its way: its plan, its sources, its shards submitted and done."""

    key: str
    plan: DatasetPlan
    raw: RawDataset
    started: float
    target: _Target
    pending: dict[Any, shards.ShardJob] = field(default_factory=dict)  # task ref -> job
    records: list[shards.ShardRecord] = field(default_factory=list)
    copies: list[Any] = field(default_factory=list)  # refs of the shard files on their way to the home node
    copied: int = 0  # bytes of the copies finished


class Preparations:
    """The datasets of a stage on their way: planned and submitted at once, in the order given, then collected in a
    driver thread that publishes each dataset as soon as its last shard is in, so that its trials can start while
    later datasets still decode (``ready`` and ``unavailable`` grow as datasets finish; ``done`` once all have).

    A dataset that cannot be had (no files, a bad root, a task's ``UserError``) lands in ``unavailable`` with its
    one-line reason; ``TooFewClasses`` (the suite's own mistake) is raised at planning, or kept in ``error`` when
    only the decoded shards show it.
    """

    def __init__(
        self,
        configs: dict[str, TrialConfig],
        cache: str,
        shard_mb: float = shards.SHARD_MB,
        store: ShardStore | None = None,
    ) -> None:
        self.home = ray.get_runtime_context().get_node_id()
        self.ready: dict[str, shards.ShardSet] = {}
        self.unavailable: dict[str, str] = {}
        self.error: BaseException | None = None
        self._running: list[_Preparation] = []
        self._thread: threading.Thread | None = None
        for key, config in configs.items():
            try:
                plan = plan_dataset(
                    config.dataset, config.img_size, config.dataset_root, config.download, cache, config.shard_format
                )
                label = f"bench: dataset {config.dataset} at {config.img_size} px: prepared before"
                if plan.cached:
                    self.ready[key] = _shard_set(plan, self.home)
                    print(f"{label} ({plan.final})", flush=True)
                    continue
                if store is not None and (meta := store.manifest(plan.fingerprint)) is not None:
                    self.ready[key] = shards.ShardSet(plan.fingerprint, meta, store=store.uri)
                    print(f"{label} ({store.folder(plan.fingerprint).uri})", flush=True)
                    continue
                assert plan.partial is not None
                target = _Target(str(plan.partial), plan.fingerprint, plan.shard_format, self.home, store)
                started = time.perf_counter()
                opened = (config.dataset, config.img_size, config.dataset_root, config.download, config.plugins)
                self._running.append(_submit(key, plan, plan.load(), started, target, shard_mb, opened))
            except TooFewClasses:
                raise  # the suite's own mistake, found only now: one line and exit 2, as at validation
            except UserError as error:
                self.unavailable[key] = str(error)

    @property
    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def start(self) -> Preparations:
        """Collect in a driver thread (Ray's driver API is thread-safe); returns at once."""
        if self._running:
            self._thread = threading.Thread(target=self._collect_all, name="bench-datasets", daemon=True)
            self._thread.start()
        return self

    def wait(self) -> None:
        """Until every dataset is published or unavailable; re-raises what stopped the thread."""
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise self.error

    def __getstate__(self) -> dict[str, Any]:
        """A copy holds what is ready or unavailable, not the thread (Tune pickles its Tuner, with the searcher
        and stopper that refer to this, for a restore of its own that bench does not use)."""
        return {**self.__dict__, "_thread": None, "_running": []}

    def _collect_all(self) -> None:
        try:
            home_label = ray.get(_label_of.options(scheduling_strategy=_on(self.home)).remote())
            owner = {ref: preparation for preparation in self._running for ref in preparation.pending}
            while owner:
                (ref,), _ = ray.wait(list(owner), num_returns=1)
                preparation = owner.pop(ref)
                if preparation.key in self.unavailable:
                    continue  # an earlier shard of it failed: the rest is not wanted
                try:
                    _take(preparation, ref, home_label)
                    if not preparation.pending:
                        self.ready[preparation.key] = _publish(preparation)
                except TooFewClasses as error:
                    self.error = error
                    return
                except UserError as error:
                    self.unavailable[preparation.key] = str(error)
                    for other in preparation.pending:
                        ray.cancel(other)
        except BaseException as error:  # the driver lost the cluster: the stage ends with what it has
            self.error = error


def _submit(
    key: str,
    plan: DatasetPlan,
    raw: RawDataset,
    started: float,
    target: _Target,
    shard_mb: float,
    opened: tuple[Any, ...],
) -> _Preparation:
    """One task per shard; ``opened``: how a task on the home node opens the source (``_raw``'s arguments)."""
    preparation = _Preparation(key, plan, raw, started, target)
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
            files, options = None, {"scheduling_strategy": _on(target.home)}
        ref = _decode_shard.options(**options).remote(job, files, opened, target)
        preparation.pending[ref] = job
    return preparation


def _take(preparation: _Preparation, ref: Any, home_label: str) -> None:
    """A finished shard task: its record kept, its files sent to the home node when decoded elsewhere (without
    a store: with one, the task uploaded them)."""
    plan = preparation.plan
    assert plan.partial is not None
    preparation.pending.pop(ref)
    try:
        record: shards.ShardRecord = ray.get(ref)
    except ray.exceptions.RayTaskError as error:  # the user's mistake or a failed upload, found in a task: one line
        if isinstance(error.cause, (UserError, OSError)):
            raise error.cause from None
        raise
    preparation.records.append(record)
    home = preparation.target.home
    if (
        preparation.target.store is None
        and record.node != home_label
        and not shards.read_record(plan.partial, record.name)
    ):
        node_id = _node_id(record.node)
        for name in (record.file, f"{record.name}.json"):
            path = str(plan.partial / name)
            blob = _read_file.options(scheduling_strategy=_on(node_id)).remote(path)
            preparation.copies.append(_store_file.options(scheduling_strategy=_on(home)).remote(path, blob))
            del blob
        while len(preparation.copies) > COPIES_IN_FLIGHT:  # bounded memory: wait for the oldest
            preparation.copied += ray.get(preparation.copies.pop(0))


def _publish(preparation: _Preparation) -> shards.ShardSet:
    """Every shard of a dataset is in: wait for its copies, publish the manifest (into the store too: the labels,
    then the manifest), say so in one line."""
    plan, store = preparation.plan, preparation.target.store
    copied = preparation.copied + sum(ray.get(preparation.copies))
    seconds = time.perf_counter() - preparation.started
    finish(plan, preparation.raw, preparation.records, seconds)
    shard_set = _shard_set(plan, preparation.target.home)
    if store is not None:
        assert plan.final is not None
        store.put(plan.final, plan.fingerprint, "y_train.npy", "y_test.npy", shards.MANIFEST)
        shard_set = dataclasses.replace(shard_set, store=store.uri)
    _report(plan, preparation.records, seconds, copied, store)
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


def _report(
    plan: DatasetPlan, records: list[shards.ShardRecord], seconds: float, copied: int, store: ShardStore | None
) -> None:
    images = sum(r.stop - r.start for r in records)
    made = [r for r in records if not r.reused]
    by_node = Counter(r.node for r in made)
    nodes = ", ".join(f"{node} {count}" for node, count in sorted(by_node.items())) or "none"
    reused = f", {len(records) - len(made)} reused" if len(made) < len(records) else ""
    moved = f", {copied / 2**20:.1f} MiB copied to the driver's node" if copied else ""
    if store is not None:
        moved = f", in {store.folder(plan.fingerprint).uri}"
    print(
        f"bench: dataset {plan.name} at {plan.img_size} px: {images} images in {len(records)} shards, "
        f"{seconds:.1f} s ({images / max(seconds, 1e-9):.0f} images/s); shards decoded by node: {nodes}{reused}{moved}",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------------------
# trial side

_OPENED: dict[tuple[str, str], PreparedDataset] = {}


def dataset_ref(shard_set: shards.ShardSet) -> dict[str, Any]:
    """What a trial's config carries to find a published dataset: its fingerprint, and the store or the node that
    holds it whole."""
    return {"fingerprint": shard_set.fingerprint, "home": shard_set.home, "store": shard_set.store}


def open_dataset(ref: dict[str, Any], config: TrialConfig) -> tuple[PreparedDataset, int]:
    """The published dataset ``ref`` (``dataset_ref``) in this node's cache folder (``config.cache_dir``), its
    manifest and missing shards first copied, one file at a time, from the store or else the home node; opened
    once per process. Also returns the bytes this call copied."""
    assert config.cache_dir is not None
    fingerprint, home, uri = ref["fingerprint"], ref.get("home"), ref.get("store")
    folder = Path(config.cache_dir) / "datasets" / fingerprint

    def fetch(name: str, path: Path) -> int:
        decoded_here = folder.with_name(f"{fingerprint}.partial") / name
        if decoded_here.is_file():  # a shard this node decoded for a store: moved in, not downloaded
            os.replace(decoded_here, path)
            return 0
        if uri is not None:
            return open_store(uri).get(fingerprint, name, path)
        if home is None:
            raise UserError(f"prepared dataset '{folder}' is incomplete and no node holds it whole")
        blob = ray.get(_read_file.options(scheduling_strategy=_on(home)).remote(str(folder / name)))
        path.write_bytes(blob)
        return len(blob)

    if (folder / shards.MANIFEST).is_file():
        meta = shards.load_manifest(folder)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            fetch(shards.MANIFEST, Path(scratch) / shards.MANIFEST)
            meta = shards.load_manifest(Path(scratch))
    shard_set = shards.ShardSet(fingerprint, meta, home=home, store=uri)
    copied = shards.copy_in(folder, shard_set, fetch) if shards.missing_files(folder, shard_set) else 0
    key = (fingerprint, config.cache_dir)
    if key not in _OPENED:
        group = meta.get("group") or dataset_group(config.dataset)
        _OPENED[key] = load_prepared(folder, config.dataset, group)
    return _OPENED[key], copied
