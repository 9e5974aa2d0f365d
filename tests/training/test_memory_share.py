"""A trial whose frozen features would exceed its share of the node's memory says so in one line, before it
computes anything; one that holds no features is never refused."""

from __future__ import annotations

import pytest

from bench import training as core
from bench.config import TrialConfig
from bench.data import prepare_dataset
from bench.errors import UserError
from bench.utils import memory


def test_a_probe_over_its_share_is_refused_in_one_line() -> None:
    data = prepare_dataset("digits", 16)
    rows_mb = memory.frozen_feature_bytes(len(data.y_train) + len(data.y_test), 1280) / 2**20
    config = TrialConfig(
        backbone="efficientnet_lite0",
        dataset="digits",
        img_size=16,
        steps=1,
        freeze="linear_probe",
        memory_share_mb=rows_mb / 2,
        similarity=False,
    )
    with pytest.raises(UserError) as error:
        core.run_trial(config, data=data)
    message = str(error.value)
    assert "\n" not in message and "more than this trial's share" in message and "train.feature_cache: false" in message
    assert (
        core.run_trial(TrialConfig(**{**config.to_dict(), "memory_share_mb": rows_mb * 4}), data=data).row["status"]
        == "ok"
    )


def test_the_share_splits_a_node_between_its_trials() -> None:
    assert memory.trial_share_bytes(16 * 2**30, node_cpus=8, cpu_per_trial=2) == 4 * 2**30
    assert memory.trial_share_bytes(16 * 2**30, node_cpus=1, cpu_per_trial=4) == 16 * 2**30
    assert 0 < memory.system_memory_bytes() <= 2**50
