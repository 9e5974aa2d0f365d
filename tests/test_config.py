"""A trial's identity: `trial_id` and `cell_id` are published in every results table and recognise a trial in
a rerun or a resume, so they are pinned here to literal values, in this process and in a fresh one."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from bench.config import TrialConfig

BASE = TrialConfig(backbone="efficientnet_lite0", dataset="digits")
CONFIGS = {
    "defaults": BASE,
    "partial_shots": dataclasses.replace(
        BASE, freeze=0.5, shots=5, data_fraction=None, epochs=None, steps=20, batch_size=16
    ),
    "lp_ft_probe_lr": dataclasses.replace(BASE, freeze="lp_ft", lr=1e-3, probe_lr=1e-2),
    "eval_every_steps": dataclasses.replace(BASE, eval_every_steps=3),
    "jpeg": dataclasses.replace(BASE, shard_format="jpeg"),
    "placement": dataclasses.replace(
        BASE,
        plugins=("a.b",),
        cache_dir="/tmp/x",
        device="cpu",
        suite="s",
        compile="off",
        gpu_share=0.5,
        memory_share_mb=100.0,
    ),
}
# (trial_id, cell_id), as published by the runs made before these ids were pinned.
PINNED = {
    "defaults": ("dbd4454d6fd2dd16", "ce2b81319accd68a"),
    "partial_shots": ("ace32d470126dd0b", "803256bf557ecdd5"),
    "lp_ft_probe_lr": ("6250fe44adefc4a5", "8f14a2d188767bf0"),
    "eval_every_steps": ("70360022dfc27fb2", "ae246bdd64ed1754"),
    "jpeg": ("45c0e467fe728d63", "50f86812a17f990e"),
    "placement": ("dbd4454d6fd2dd16", "ce2b81319accd68a"),  # where a trial runs is not what it computes
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_trial_and_cell_ids_are_the_published_ones(name):
    config = CONFIGS[name]
    assert (config.trial_id, config.cell_id) == PINNED[name]


def test_a_fresh_process_computes_the_same_ids_from_the_serialised_config():
    """No process state (hash seeds, import order, a plug-in's registrations) enters an id; ``to_dict`` and
    ``from_dict`` carry a config across processes (as the runner ships trials to workers) without changing it."""
    script = (
        "import json, sys\n"
        "from bench.config import TrialConfig\n"
        "configs = {k: TrialConfig.from_dict(v) for k, v in json.load(sys.stdin).items()}\n"
        "print(json.dumps({k: [c.trial_id, c.cell_id] for k, c in configs.items()}))\n"
    )
    sent = json.dumps({name: config.to_dict() for name, config in CONFIGS.items()})
    done = subprocess.run(
        [sys.executable, "-c", script], input=sent, capture_output=True, text=True, check=True, timeout=120
    )
    fresh = {name: tuple(ids) for name, ids in json.loads(done.stdout).items()}
    assert fresh == {name: (c.trial_id, c.cell_id) for name, c in CONFIGS.items()} == PINNED
