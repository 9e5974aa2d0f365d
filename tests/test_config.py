"""A trial's identity: `trial_id` and `cell_id` are published in every results table and recognise a trial in
a rerun or a resume, so they are pinned here to literal values, in this process and in a fresh one."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from bench.config import IDENTITY, IDENTITY_WHEN_SET, PLACEMENT, SEARCHABLE, TrialConfig, field_roles

BASE = TrialConfig(backbone="efficientnet_lite0", dataset="digits")
CONFIGS = {
    "defaults": BASE,
    "partial_shots": dataclasses.replace(
        BASE, freeze=0.5, shots=5, data_fraction=None, epochs=None, steps=20, batch_size=16
    ),
    "lp_ft_probe_lr": dataclasses.replace(BASE, freeze="lp_ft", lr=1e-3, probe_lr=1e-2),
    "eval_every_steps": dataclasses.replace(BASE, eval_every_steps=3),
    "jpeg": dataclasses.replace(BASE, shard_format="jpeg"),
    "stepped_probe": dataclasses.replace(BASE, probe_solver="sgd"),
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
# (trial_id, cell_id), as published by the runs made before these ids were pinned. A linear probe is solved by
# default since the convex probe (train.probe.solver lbfgs): a new computation, so new ids for the default probe
# (defaults, eval_every_steps, jpeg, placement); the stepped probe keeps the id the default probe had.
PINNED = {
    "defaults": ("2dce0ea92265ebfa", "fee19df868f6aec3"),
    "stepped_probe": ("dbd4454d6fd2dd16", "ce2b81319accd68a"),
    "partial_shots": ("ace32d470126dd0b", "803256bf557ecdd5"),
    "lp_ft_probe_lr": ("6250fe44adefc4a5", "8f14a2d188767bf0"),
    "eval_every_steps": ("feaacb219921c1b0", "e4178de8858edc3d"),
    "jpeg": ("7f2c90123de952b3", "5bd7b4bc21b4f581"),
    "placement": ("2dce0ea92265ebfa", "fee19df868f6aec3"),  # where a trial runs is not what it computes
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


def test_a_field_without_a_role_is_refused():
    """A new field cannot silently join the identity (changing every published id) or leave it."""

    @dataclasses.dataclass(frozen=True)
    class Extended(TrialConfig):
        new_knob: int = 0

    with pytest.raises(TypeError, match=r"\['new_knob'\] declare no role"):
        Extended(backbone="efficientnet_lite0", dataset="digits")
    with pytest.raises(TypeError, match="new_knob"):
        field_roles(Extended)

    @dataclasses.dataclass(frozen=True)
    class Misspelt(TrialConfig):
        new_knob: int = dataclasses.field(default=0, metadata={"role": "identiy"})

    with pytest.raises(TypeError, match="new_knob"):
        Misspelt(backbone="efficientnet_lite0", dataset="digits")


def test_each_role_decides_what_a_new_field_does_to_the_id():
    @dataclasses.dataclass(frozen=True)
    class Extended(TrialConfig):
        where: str = dataclasses.field(default="here", metadata=PLACEMENT)
        later: int = dataclasses.field(default=0, metadata=IDENTITY_WHEN_SET)
        knob: int = dataclasses.field(default=0, metadata=IDENTITY)

    extended = Extended(backbone="efficientnet_lite0", dataset="digits")
    assert dataclasses.replace(extended, where="there").trial_id == extended.trial_id
    assert "later" not in extended.identity() and extended.identity()["knob"] == 0
    assert dataclasses.replace(extended, later=1).trial_id != extended.trial_id
    # a field added `when set`, left at its default, keeps the ids published before it existed
    only_later = {k: v for k, v in extended.identity().items() if k != "knob"}
    assert only_later == BASE.identity()
    assert field_roles(Extended)["where"] == "placement" and field_roles(TrialConfig)["plugins"] == "placement"


def test_searchable_hyperparameters_are_identity_fields_and_leave_the_cell():
    roles = field_roles(TrialConfig)
    assert all(roles[name] == "identity" for name in SEARCHABLE)
    searched = dataclasses.replace(BASE, lr=0.5, probe_lr=0.1, batch_size=8, optimizer="sgd")
    assert searched.cell_id == BASE.cell_id and searched.trial_id != BASE.trial_id
