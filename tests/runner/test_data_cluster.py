"""A real two-node Ray cluster on this machine where the worker node has its own cache folder and no access to
the image root: its trials run, and preparation ran on both nodes (rows and logs say which node decoded which
shard).

The worker node is started in a mount namespace of its own (``unshare --mount``) with an empty tmpfs over the
image root and another over the cache folder: its processes see the same paths as the head's, but an empty
image root (so its shard tasks must get the encoded bytes from the driver's node) and a cache of their own (so
its trials must copy the shards in). A probe pinned to each node checks that before the run, so the test cannot
pass on shared access. The mounts go when the namespace's last process ends.

A second run on the same cluster keeps the prepared data in object storage (a real S3 server on 127.0.0.1,
`--cache-dir s3://...`) with a local cache that each node has for itself: every shard reaches the store from the
node that decoded it, nothing is copied between nodes, and each node's trials download what their node lacks.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import (
    CIFAR,
    RAY_RECORD,
    Sessions,
    bench,
    bench_env,
    distinct_port,
    ray_cluster,
    require,
    run_folder,
    write_suite,
)
from s3_server import BUCKET, s3_server

from bench.results import store as results

pytestmark = pytest.mark.slow

CLASSES = ("airplane", "cat", "ship")
PER_CLASS = {"train": 30, "test": 10}
SHARD_MB = "0.03"  # 10 images of 32 px a shard: 90 + 30 images in 9 + 3 shards
SHARDS = 12

# Run by a Ray driver of its own (not this pytest process): on each of the cluster's nodes, a task pinned there
# says which node it is and what it sees under the image root and the cache folder.
PROBE = textwrap.dedent("""
    import json, os, sys
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    address, root, cache = sys.argv[1:4]

    @ray.remote(num_cpus=0)
    def look(root, cache):
        def files(folder):
            return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "label": f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}",
            "root_files": len(files(root)),
            "cache_files": files(cache),
        }

    ray.init(address=address, log_to_driver=False)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    seen = []
    for node in nodes:
        where = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        found = ray.get(look.options(scheduling_strategy=where).remote(root, cache), timeout=120)
        found["head"] = "node:__internal_head__" in node.get("Resources", {})
        seen.append(found)
    print("PROBE " + json.dumps(seen))
""")


def image_folder(root: Path) -> Path:
    """train/ and test/ class folders of CIFAR-10 JPEGs (different images in each split)."""
    for split, count in PER_CLASS.items():
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            offset = 0 if split == "train" else 200
            for index, path in enumerate(sorted((CIFAR / "train" / name).glob("*.jpg"))[offset : offset + count]):
                shutil.copy(path, folder / f"{index:04d}.jpg")
    return root


def run(sessions: Sessions, command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    done = sessions.run(command, env=env, cwd=cwd, timeout=300)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def node_ports() -> str:
    """Ports of a node's own (two nodes on one machine cannot share them; a real cluster's nodes can)."""
    return (
        f" --num-cpus=1 --dashboard-agent-listen-port={distinct_port()}"
        f" --dashboard-agent-grpc-port={distinct_port()} --metrics-export-port={distinct_port()}"
    )


def probe(address: str, root: Path, cache: Path, env: dict[str, str], cwd: Path) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, address, str(root), str(cache)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("PROBE "))
    return json.loads(line.removeprefix("PROBE "))


def test_a_worker_node_without_the_images_or_the_cache_decodes_shards_and_runs_trials(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        _two_node_runs(tmp_path, stack)


def _two_node_runs(tmp_path: Path, stack: contextlib.ExitStack) -> None:
    import ray._private.services

    require(CIFAR.is_dir(), f"needs the shared CIFAR-10 images at {CIFAR} (BENCH_DATA)")
    require(shutil.which("unshare") is not None, "needs unshare (util-linux) for the worker node's mount namespace")
    probe_ns = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True, timeout=60
    )
    require(probe_ns.returncode == 0, f"needs mount namespaces (root): {probe_ns.stderr.strip()[:200]}")
    assert not RAY_RECORD.exists(), f"{RAY_RECORD} exists: another `ray start` cluster is recorded on this machine"

    s3 = stack.enter_context(s3_server())
    root = image_folder(tmp_path / "images")
    cache, home, out, workdir = tmp_path / "cache", tmp_path / "home", tmp_path / "results", tmp_path / "study"
    for folder in (cache, home, workdir):
        folder.mkdir()
    (cache / "head-only.txt").write_text("the head's cache folder\n")  # the worker node must not see it
    suite = write_suite(
        workdir,
        name="data_cluster",
        datasets=f"['imagefolder:{root}']",
        freeze="[linear_probe, full]",
        sizes="data_fraction: [1.0]",
        seeds="[0, 1, 2]",
        steps=3,
    )
    head_ip = ray._private.services.get_node_ip_address()
    gcs_port = distinct_port()
    address = f"{head_ip}:{gcs_port}"
    env = bench_env()
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}:{env['PATH']}")  # the token in a home of ours
    env.update({k: v for k, v in s3.env().items() if k.startswith("AWS_")})  # every node's, as a user sets them

    with ray_cluster(gcs_port) as cluster:  # on leaving: both nodes' processes, and Ray's record
        run(cluster, "ray get-auth-token --generate > /dev/null", env, workdir)
        token = (home / ".ray" / "auth_token").read_text().strip()
        env["RAY_AUTH_MODE"] = "token"  # a driver given an address (not `auto`) reads the token only then
        run(
            cluster,
            f"ray start --head --node-ip-address={head_ip} --port={gcs_port} --include-dashboard=false"
            f" --ray-client-server-port={distinct_port()}" + node_ports(),
            env,
            workdir,
        )
        # The worker node: its own mount namespace, an empty image root and an empty cache folder of its own.
        worker = (
            f"mount -t tmpfs tmpfs {root} && mount -t tmpfs tmpfs {cache}"
            f" && RAY_AUTH_TOKEN={token} ray start --address={address}" + node_ports()
        )
        run(cluster, f"unshare --mount --propagation private bash -c '{worker}'", env, workdir)

        seen = probe(address, root, cache, env, workdir)
        assert len(seen) == 2, seen
        (head_node,) = [n for n in seen if n["head"]]
        (worker_node,) = [n for n in seen if not n["head"]]
        n_images = sum(PER_CLASS.values()) * len(CLASSES)
        assert head_node["root_files"] == n_images and head_node["cache_files"] == ["head-only.txt"], head_node
        assert worker_node["root_files"] == 0 and worker_node["cache_files"] == [], worker_node  # truly apart

        started = time.monotonic()
        done = bench(
            "run", suite, "--address", address, "--out", out, "--cache-dir", cache,
            cwd=workdir, env={**env, "BENCH_SHARD_MB": SHARD_MB}, timeout=900,
        )  # fmt: skip
        seconds = time.monotonic() - started
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-5000:]
        assert "2 node(s)" in output, output[-3000:]

        # The store run: its local cache under the folder the worker has its own tmpfs over, so each node's
        # cache is its own; the shards go to and come from the store.
        stored = bench(
            "run", suite, "--address", address, "--out", cache / "stored", "--cache-dir", f"s3://{BUCKET}/cache",
            cwd=workdir, env={**env, "BENCH_SHARD_MB": SHARD_MB}, timeout=900,
        )  # fmt: skip
        assert stored.returncode == 0, (stored.stdout + stored.stderr)[-5000:]
    assert not cluster.alive()  # the worker's processes too: its namespace is a mount one, not a PID one
    assert str(tmp_path) not in Path("/proc/mounts").read_text()  # the worker's mounts never showed out here

    # The driver's line: every shard decoded, by both nodes.
    line = next((x for x in output.splitlines() if x.startswith(f"bench: dataset imagefolder:{root} at 32 px")), "")
    assert f"{n_images} images in {SHARDS} shards" in line, output[-3000:]
    by_node = dict(
        (label, int(count))
        for label, count in re.findall(r"(\S+/[0-9a-f]{8}) (\d+)", line.partition("shards decoded by node:")[2])
    )
    assert set(by_node) == {head_node["label"], worker_node["label"]}, line
    assert sum(by_node.values()) == SHARDS, line
    assert "copied to the driver's node" in line, line  # the worker's shards came home

    # The manifest, published in the head's cache (the driver's node): which node decoded which shard.
    (manifest,) = cache.glob("datasets/*/meta.json")
    meta = json.loads(manifest.read_text())
    assert set(meta["decoded_by"].values()) == {head_node["label"], worker_node["label"]}, meta["decoded_by"]
    assert len(meta["decoded_by"]) == SHARDS
    for name in meta["decoded_by"]:  # every shard, the worker's too, is whole on the head
        assert (manifest.parent / f"{name}.npy").is_file() and (manifest.parent / f"{name}.json").is_file()
    assert not list(cache.glob("datasets/*.partial"))

    # The rows: every trial ok, on both nodes; the worker's copied the shards into its own cache first.
    run_dir = run_folder(out, "data_cluster")
    table = results.load_runs([run_dir]).trials
    assert len(table) == 6 and set(table["status"]) == {"ok"}, table[["status", "error"]]
    assert (table["dataset_shards"] == SHARDS).all()
    for decoded_by in table["dataset_decoded_by"]:
        assert head_node["label"] in decoded_by and worker_node["label"] in decoded_by, decoded_by
    assert "ray_node_id" in table.columns, sorted(table.columns)
    assert set(table["ray_node_id"]) == {head_node["node_id"], worker_node["node_id"]}, table["ray_node_id"]
    on_head = table[table["ray_node_id"] == head_node["node_id"]]
    on_worker = table[table["ray_node_id"] == worker_node["node_id"]]
    assert (on_head["dataset_copied_mb"] == 0).all(), on_head["dataset_copied_mb"]  # the head has every shard
    assert (on_worker["dataset_copied_mb"] > 0).sum() == 1, on_worker["dataset_copied_mb"]  # once per node
    print(f"bench run: {seconds:.0f} s; {line}")

    # The store run: decoded on both nodes, every shard and its record in the store, nothing copied between nodes.
    line = next(x for x in stored.stdout.splitlines() if x.startswith(f"bench: dataset imagefolder:{root} at 32 px"))
    assert f"{n_images} images in {SHARDS} shards" in line and f"in s3://{BUCKET}/cache/datasets/" in line, line
    assert "copied to the driver's node" not in line, line
    by_node = dict(re.findall(r"(\S+/[0-9a-f]{8}) (\d+)", line.partition("shards decoded by node:")[2]))
    assert set(by_node) == {head_node["label"], worker_node["label"]}, line
    objects = s3.objects("cache/datasets")
    assert sum(key.endswith(".npy") and "/y_" not in key for key in objects) == SHARDS, sorted(objects)
    assert sum(key.endswith("/meta.json") for key in objects) == 1
    stored_dir = run_folder(cache / "stored", "data_cluster")
    stored_table = results.load_runs([stored_dir]).trials
    assert len(stored_table) == 6 and set(stored_table["status"]) == {"ok"}, stored_table[["status", "error"]]
    assert set(stored_table["ray_node_id"]) == {head_node["node_id"], worker_node["node_id"]}
    for node in (head_node, worker_node):  # each node lacked the other's shards: one trial of it downloaded them
        copied = stored_table.loc[stored_table["ray_node_id"] == node["node_id"], "dataset_copied_mb"]
        assert (copied > 0).sum() == 1, (node["label"], copied)
    metrics = ["trial_id", "metric_top1", "metric_nll"]
    by_id = table.sort_values("trial_id").reset_index(drop=True)[metrics]
    pd.testing.assert_frame_equal(by_id, stored_table.sort_values("trial_id").reset_index(drop=True)[metrics])
    print(f"store run: {line}")
