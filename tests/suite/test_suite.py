"""Tests for bench.suite.spec: shipped suites validate, the grid expands as DESIGN.md says, bad input is one line."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml
from conftest import BAD_SUITES, REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.config import TrialConfig
from bench.errors import UserError
from bench.suite import Suite, deep_merge, load_suite

SHIPPED = sorted((REPO / "suites").glob("*.yaml"))
UNSET = "BENCH_TEST_SURELY_UNSET_VAR"  # the bad corpus refers to it

MINIMAL = {
    "name": "mini",
    "backbones": ["efficientnet_lite0"],
    "datasets": ["digits"],
    "grid": {"freeze": ["linear_probe"], "data_fraction": [1.0]},
    "train": {"epochs": 1},
}


def write_suite(tmp_path: Path, data: dict | str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def suite_from(tmp_path: Path, overrides: dict, *, smoke: bool = False) -> Suite:
    return load_suite(write_suite(tmp_path, deep_merge(MINIMAL, overrides)), smoke=smoke)


def user_error(path: Path, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        load_suite(path, **kwargs)
    return str(caught.value)


# ---------------------------------------------------------------------------------------------------------
# Every shipped suite (torchtune-style: configs are data, all validated without running)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_suite_validates(path: Path) -> None:
    suite = load_suite(path)
    trials = suite.trials()
    confirm, _ = suite.confirm_trials({t.trial_id: 0.0 for t in trials})  # a two-stage search's second stage
    assert suite.trial_count() == len(trials) + len(confirm) and trials
    assert path.read_text().startswith("#"), "a suite opens with a comment giving the command to run it"
    if "smoke" in suite.resolved:
        smoke = load_suite(path, smoke=True)
        assert 0 < smoke.trial_count() <= suite.trial_count()


def test_smoke_suite_is_designs_example() -> None:
    suite = load_suite(REPO / "suites" / "smoke.yaml")
    assert "bench run suites/smoke.yaml" in (REPO / "suites" / "smoke.yaml").read_text().splitlines()[1]
    assert suite.name == "smoke"
    # 2 datasets x 2 backbones x 3 freeze x 2 data fractions x 3 seeds
    assert suite.trial_count() == 72
    assert {(t.backbone, t.pretrained) for t in suite.trials()} == {
        ("efficientnet_lite0", True),
        ("efficientnet_lite0", False),
    }
    assert {t.freeze: t.lr for t in suite.trials()} == {"linear_probe": 1e-2, 0.5: 1e-3, "full": 1e-3}
    assert suite.tune.max_concurrent_trials == 2
    assert suite.tune.resources_per_trial.cpu == 1.0 and suite.tune.resources_per_trial.gpu == 0.0
    assert suite.analysis.data_regimes.limited == 10 and suite.analysis.data_regimes.sufficient == 100
    smoke = load_suite(REPO / "suites" / "smoke.yaml", smoke=True)
    assert smoke.trial_count() == 12 and {t.data_fraction for t in smoke.trials()} == {0.1}


# ---------------------------------------------------------------------------------------------------------
# Expansion


def test_trial_order_and_fields(tmp_path: Path) -> None:
    suite = suite_from(
        tmp_path,
        {
            "datasets": ["digits", "photo_patches"],
            "backbones": ["efficientnet_lite0", {"name": "efficientnet_lite1", "pretrained": False}],
            "grid": {"freeze": ["full", 1], "data_fraction": [0.5], "shots": [2, 4], "seed": [3, 1]},
            "train": {"epochs": None, "steps": 7, "img_size": 32, "augment": "flip", "optimizer": "sgd"},
        },
    )
    trials = suite.trials()
    assert len(trials) == suite.trial_count() == 2 * 2 * 2 * 3 * 2
    first = trials[0]
    assert (first.dataset, first.backbone, first.freeze, first.data_fraction, first.shots, first.seed) == (
        "digits",
        "efficientnet_lite0",
        "full",
        0.5,
        None,
        3,
    )
    # innermost axis first: seed, then data size (fractions, then shots), freeze, backbone, dataset
    assert [t.seed for t in trials[:2]] == [3, 1]
    assert [(t.data_fraction, t.shots) for t in trials[:6:2]] == [(0.5, None), (None, 2), (None, 4)]
    assert [t.freeze for t in trials[:12:6]] == ["full", 1.0]
    assert isinstance(trials[6].freeze, float)  # `1` in YAML is the float freeze depth 1.0
    assert [t.backbone for t in trials[:24:12]] == ["efficientnet_lite0", "efficientnet_lite1"]
    assert trials[12].pretrained is False
    assert [t.dataset for t in trials[::24]] == ["digits", "photo_patches"]
    assert all(t.steps == 7 and t.epochs is None and t.img_size == 32 and t.suite == "mini" for t in trials)
    assert first == TrialConfig(
        backbone="efficientnet_lite0",
        dataset="digits",
        freeze="full",
        data_fraction=0.5,
        shots=None,
        seed=3,
        img_size=32,
        epochs=None,
        steps=7,
        optimizer="sgd",
        augment="flip",
        suite="mini",
    )


def test_trial_count_matches_trials_with_sweeps(tmp_path: Path) -> None:
    suite = suite_from(
        tmp_path,
        {
            "grid": {
                "freeze": ["linear_probe", "lp_ft", 0.25],
                "shots": [1, 5],
                "seed": [0, 1, 2],
                "lr": [1e-3, 1e-2],
                "weight_decay": [0.0, 0.05],
            }
        },
    )
    trials = suite.trials()
    assert suite.trial_count() == len(trials) == 3 * 3 * 3 * 2 * 2
    assert {(t.lr, t.weight_decay) for t in trials} == {(a, b) for a in (1e-3, 1e-2) for b in (0.0, 0.05)}


def test_trial_ids_stable_and_unique(tmp_path: Path) -> None:
    overrides = {
        "backbones": ["efficientnet_lite0", {"name": "efficientnet_lite0", "pretrained": False}],
        "grid": {
            "freeze": ["linear_probe", "full", "lp_ft", 0.5],
            "data_fraction": [0.1, 1.0],
            "shots": [1, 10],
            "seed": [0, 1],
        },
    }
    ids = [t.trial_id for t in suite_from(tmp_path, overrides).trials()]
    assert len(set(ids)) == len(ids) == 2 * 4 * 4 * 2
    assert ids == [t.trial_id for t in suite_from(tmp_path, overrides).trials()]
    # The suite's name is placement, not identity: the same trial in another suite has the same id.
    assert ids == [t.trial_id for t in suite_from(tmp_path, {**overrides, "name": "other"}).trials()]


def test_trial_count_is_instant_for_a_large_grid(tmp_path: Path) -> None:
    backbones = [{"name": f"efficientnet_lite{i}", "pretrained": p} for i in range(3) for p in (True, False)]
    freeze = ["linear_probe", "full", "lp_ft"] + [round(0.1 * i, 1) for i in range(1, 9)]
    suite = suite_from(
        tmp_path,
        {
            "backbones": backbones,
            "datasets": ["digits", "photo_patches"],
            "grid": {
                "freeze": freeze,
                "data_fraction": [0.01, 0.05, 0.1, 0.5, 1.0],
                "shots": [1, 2, 5, 10, 20],
                "seed": list(range(20)),
            },
        },
    )
    start = time.perf_counter()
    count = suite.trial_count()
    assert time.perf_counter() - start < 0.01
    assert count == 6 * 2 * 11 * 10 * 20 == 26_400


# ---------------------------------------------------------------------------------------------------------
# Learning rates


def test_lr_mapping_per_strategy(tmp_path: Path) -> None:
    suite = suite_from(
        tmp_path,
        {
            "grid": {"freeze": ["linear_probe", "full", "lp_ft", 0.5]},
            "train": {"lr": {"linear_probe": 0.1, "partial": 0.02, "default": 0.003}},
        },
    )
    by_freeze = {t.freeze: (t.lr, t.probe_lr) for t in suite.trials()}
    assert by_freeze == {"linear_probe": (0.1, None), "full": (0.003, None), "lp_ft": (0.003, 0.1), 0.5: (0.02, None)}


def test_lr_number_and_lp_ft_probe_lr(tmp_path: Path) -> None:
    path = write_suite(
        tmp_path, yaml.safe_dump(deep_merge(MINIMAL, {"grid": {"freeze": ["lp_ft"]}})) + "  lr: 3e-4\n"
    )  # YAML 1.2 exponent notation, which PyYAML alone reads as a string
    (trial,) = load_suite(path).trials()
    assert trial.lr == trial.probe_lr == 3e-4
    assert load_suite(path).resolved["train"]["lr"] == 3e-4


def test_lr_mapping_needs_default_only_for_uncovered_strategies(tmp_path: Path) -> None:
    covered = suite_from(tmp_path, {"grid": {"freeze": ["linear_probe"]}, "train": {"lr": {"linear_probe": 0.5}}})
    assert covered.trials()[0].lr == 0.5
    message = user_error(
        write_suite(
            tmp_path,
            deep_merge(MINIMAL, {"grid": {"freeze": ["linear_probe", 0.3]}, "train": {"lr": {"linear_probe": 0.5}}}),
        )
    )
    assert "train.lr:" in message and "partial" in message


def test_grid_sweeps_override_train(tmp_path: Path) -> None:
    suite = suite_from(
        tmp_path,
        {
            "grid": {"freeze": ["lp_ft", "full"], "lr": [0.2, 0.4], "weight_decay": [0.0]},
            "train": {"lr": {"linear_probe": 0.05}, "weight_decay": 0.3},
        },
    )  # no default needed with a sweep
    got = {(t.freeze, t.lr, t.probe_lr, t.weight_decay) for t in suite.trials()}
    assert got == {
        ("lp_ft", 0.2, 0.05, 0.0),
        ("lp_ft", 0.4, 0.05, 0.0),
        ("full", 0.2, None, 0.0),
        ("full", 0.4, None, 0.0),
    }


# ---------------------------------------------------------------------------------------------------------
# Smoke merge and the resolved dict


def test_smoke_merge_dicts_merge_lists_replace(tmp_path: Path) -> None:
    data = deep_merge(
        MINIMAL,
        {
            "backbones": ["efficientnet_lite0", "efficientnet_lite1"],
            "grid": {"data_fraction": [0.1, 1.0], "seed": [0, 1]},
            "train": {"batch_size": 16, "img_size": 48},
            "smoke": {
                "backbones": ["efficientnet_lite1"],
                "train": {"epochs": None, "steps": 3},
                "grid": {"data_fraction": None, "shots": [2]},
            },
        },
    )
    path = write_suite(tmp_path, data)
    full, smoke = load_suite(path), load_suite(path, smoke=True)
    assert full.trial_count() == 2 * 2 * 2 and smoke.trial_count() == 1 * 1 * 2
    trial = smoke.trials()[0]
    assert (trial.backbone, trial.steps, trial.epochs, trial.shots, trial.data_fraction) == (
        "efficientnet_lite1",
        3,
        None,
        2,
        None,
    )
    assert (trial.batch_size, trial.img_size) == (16, 48)  # untouched keys of a merged mapping survive
    assert "smoke" in full.resolved and "smoke" not in smoke.resolved


def test_resolved_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_WEIGHTS_DIR", str(tmp_path))
    path = write_suite(
        tmp_path,
        deep_merge(
            MINIMAL,
            {
                "backbones": [{"name": "efficientnet_lite0", "weights": "${BENCH_WEIGHTS_DIR}/w.pth"}],
                "grid": {"freeze": ["lp_ft", 0.5]},
                "train": {"lr": {"linear_probe": 0.1, "default": 0.01}},
                "smoke": {"grid": {"seed": [5]}},
            },
        ),
    )
    for smoke in (False, True):
        suite = load_suite(path, smoke=smoke)
        assert suite.resolved["backbones"][0]["weights"] == f"{tmp_path}/w.pth"
        monkeypatch.delenv("BENCH_WEIGHTS_DIR")  # the saved suite no longer needs the variable
        again = load_suite(write_suite(tmp_path, suite.resolved, "resolved.yaml"))  # smoke already applied
        monkeypatch.setenv("BENCH_WEIGHTS_DIR", str(tmp_path))
        assert [t.trial_id for t in again.trials()] == [t.trial_id for t in suite.trials()]
        assert again.resolved == suite.resolved


def test_smoke_flag_needs_a_smoke_block(tmp_path: Path) -> None:
    message = user_error(write_suite(tmp_path, MINIMAL), smoke=True)
    assert message.startswith(f"{tmp_path / 'suite.yaml'}: smoke:")


def test_smoke_block_is_validated_without_the_flag(tmp_path: Path) -> None:
    path = write_suite(tmp_path, deep_merge(MINIMAL, {"smoke": {"train": {"img_size": 4}}}))
    assert "smoke.train.img_size:" in user_error(path)


# ---------------------------------------------------------------------------------------------------------
# ${VAR} expansion


def test_env_expansion_in_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_DATA", "/data/sets")
    monkeypatch.setenv("BENCH_EMPTY", "")
    monkeypatch.delenv(UNSET, raising=False)
    suite = suite_from(
        tmp_path,
        {
            "backbones": [{"name": "efficientnet_lite0", "weights": f"${{{UNSET}:-/w}}/lite0.pth"}],
            "datasets": [
                {"name": "digits", "root": "${BENCH_DATA}/digits"},
                {"name": "photo_patches", "root": "${BENCH_EMPTY:-/fallback}"},
            ],
        },
    )
    trials = suite.trials()
    assert trials[0].weights == "/w/lite0.pth"
    assert [t.dataset_root for t in trials] == ["/data/sets/digits", "/fallback"]
    assert suite.resolved["datasets"][0]["root"] == "/data/sets/digits"
    # Only path-valued strings are expanded.
    assert suite_from(tmp_path, {"description": f"${{{UNSET}}}"}).description == f"${{{UNSET}}}"


def test_unset_variable_names_key_and_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UNSET, raising=False)
    path = write_suite(
        tmp_path, deep_merge(MINIMAL, {"datasets": ["digits", {"name": "photo_patches", "root": f"${{{UNSET}}}/x"}]})
    )
    message = user_error(path)
    assert message.startswith(f"{path}: datasets[1].root:") and UNSET in message


# ---------------------------------------------------------------------------------------------------------
# Bad input: the malformed corpus and files that are not suite files


def _expectation(path: Path) -> tuple[str, str] | None:
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8", "replace")
    found = re.search(r"\((key|line): ([^)]+)\)$", first)
    return (found.group(1), found.group(2)) if found else None


def test_bad_corpus_is_large_and_commented() -> None:
    assert len(BAD_SUITES) >= 45
    for path in BAD_SUITES:
        if path.stat().st_size:  # the empty file cannot carry a comment
            assert path.read_bytes().startswith(b"# "), path.name


@pytest.mark.parametrize("path", BAD_SUITES, ids=[p.stem for p in BAD_SUITES])
def test_bad_suite_is_refused_in_one_line(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UNSET, raising=False)
    start = time.perf_counter()
    message = user_error(path)
    assert time.perf_counter() - start < 2.0
    assert "\n" not in message and path.name in message
    expected = _expectation(path)
    if expected and expected[0] == "key":
        assert message.startswith(f"{path}: {expected[1]}:") or message.startswith(f"{path}: {expected[1]} ("), message
    elif expected:
        assert message.startswith(f"{path}:{expected[1]}:"), message


def test_not_a_suite_file(tmp_path: Path) -> None:
    assert "no such suite file" in user_error(tmp_path / "missing.yaml")
    assert "is a directory" in user_error(tmp_path)
    huge = tmp_path / "huge.yaml"
    huge.write_text("# padding\n" * 120_000)
    assert huge.stat().st_size > 1 << 20
    assert "larger than 1 MiB" in user_error(huge)


# ---------------------------------------------------------------------------------------------------------
# Property: whatever the text, load_suite answers with a Suite or a UserError, quickly


@pytest.fixture(scope="module", autouse=True)
def _warm_imports() -> None:
    load_suite(REPO / "suites" / "smoke.yaml")  # imports the backbone and dataset registries once


_TOKENS = [*"ab01.-_:,[]{}&*!|>#'\"?%~ \t\n", "\n  ", "- ", ": ", "name", "grid", "freeze", "!!python/", "1e5"]
_yamlish = st.lists(st.sampled_from(_TOKENS), max_size=80).map("".join) | st.text(max_size=200)
_leaf = st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12)
_keys = st.sampled_from(
    [
        "name",
        "backbones",
        "datasets",
        "grid",
        "train",
        "freeze",
        "data_fraction",
        "shots",
        "seed",
        "epochs",
        "steps",
        "lr",
        "tune",
        "smoke",
        "default",
        "x",
    ]
) | st.text(max_size=6)
_nested = st.recursive(
    _leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=5), max_leaves=25
)


def _only_user_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "random.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    for smoke in (False, True):
        try:
            load_suite(path, smoke=smoke)
        except UserError as error:
            assert "\n" not in str(error)


_SETTINGS = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(text=_yamlish)
def test_random_text_only_raises_user_error(tmp_path: Path, text: str) -> None:
    _only_user_errors(tmp_path, text)


@_SETTINGS
@given(data=st.dictionaries(_keys, _nested, max_size=6))
def test_random_mappings_only_raise_user_error(tmp_path: Path, data: dict) -> None:
    _only_user_errors(tmp_path, yaml.safe_dump(data))


@_SETTINGS
@given(section=st.sampled_from(["grid", "train", "tune", "smoke", "backbones", "datasets"]), value=_nested, key=_keys)
def test_random_changes_to_a_valid_suite_only_raise_user_error(
    tmp_path: Path, section: str, value: object, key: str
) -> None:
    data = deep_merge(MINIMAL, {"smoke": {"grid": {"seed": [1]}}})
    data[section] = {**data[section], key: value} if isinstance(data.get(section), dict) else [value]
    _only_user_errors(tmp_path, yaml.safe_dump(data))


def test_schedule_order_spreads_groups_and_keeps_every_trial(tmp_path: Path) -> None:
    """Trials started side by side belong to different (backbone, dataset) groups and datasets, so two workers
    do not compute the same one-off work at once; the order is a permutation of the suite's trials."""
    from bench.runner.tune import schedule_order

    suite = suite_from(
        tmp_path,
        {
            "datasets": ["digits", "photo_patches"],
            "backbones": ["efficientnet_lite0", {"name": "efficientnet_lite0", "pretrained": False}],
            "grid": {"freeze": ["linear_probe", 0.5], "data_fraction": [0.1, 1.0], "seed": [0, 1]},
        },
    )
    trials = suite.trials()
    ordered = schedule_order(trials)
    assert sorted(t.trial_id for t in ordered) == sorted(t.trial_id for t in trials)
    assert all(a.dataset != b.dataset for a, b in zip(ordered, ordered[1:]))
    assert [(t.pretrained, t.dataset) for t in ordered[:4]] == [
        (True, "digits"),
        (True, "photo_patches"),
        (False, "digits"),
        (False, "photo_patches"),
    ]
    first_of_group = ordered[:4]
    assert all(t.freeze == "linear_probe" and t.data_fraction == 0.1 and t.seed == 0 for t in first_of_group)


def test_padded_depthwise_grad_is_a_train_switch_that_keeps_the_trial_ids(tmp_path: Path) -> None:
    default, stock = suite_from(tmp_path, {}), suite_from(tmp_path, {"train": {"padded_depthwise_grad": False}})
    assert [t.padded_depthwise_grad for t in default.trials()] == [True]
    assert [t.padded_depthwise_grad for t in stock.trials()] == [False]
    # how a gradient is summed, not what the trial computes: the same trial, as with fold_batchnorm
    assert [t.trial_id for t in default.trials()] == [t.trial_id for t in stock.trials()]
