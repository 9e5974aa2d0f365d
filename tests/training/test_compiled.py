"""Compiled steps (``train.compile``): the same trial as the eager path up to float rounding, one graph per
shape for a worker's life, and inductor's code cache on disk reused by another process."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from bench import training as core
from bench.config import TrialConfig
from bench.models import TransferModel, build_backbone
from bench.suite import load_suite
from bench.training import compiled
from bench.training.loop import training_loss

# Full fine-tuning, 12 images a class of digits at 32 px: four steps an epoch, the fourth a short batch of 24.
BASE = TrialConfig(
    backbone="efficientnet_lite0",
    dataset="digits",
    img_size=32,
    steps=6,
    batch_size=32,
    optimizer="sgd",
    lr=1e-2,
    freeze="full",
    shots=12,
    data_fraction=None,
    similarity=False,
)


def test_settings_resolve_to_modes_per_device() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compiled.resolve("off", cpu) == compiled.resolve("off", cuda) == "eager"
    assert compiled.resolve("on", cpu) == "inductor"
    assert compiled.resolve("on", cuda) == "cudagraphs"
    assert compiled.resolve("auto", cpu) == compiled.AUTO["cpu"] == "eager"  # measured not to pay on a CPU
    with pytest.raises(ValueError, match="not one of"):
        compiled.resolve("max-autotune", cpu)


def test_suite_setting_reaches_every_trial_and_leaves_trial_ids_alone(tmp_path: Path) -> None:
    text = (REPO / "suites" / "smoke.yaml").read_text()
    assert "compile" not in text
    suite = tmp_path / "compiled.yaml"
    suite.write_text(text.replace("train:\n", "train:\n  compile: on\n", 1))
    plain, on = load_suite(REPO / "suites" / "smoke.yaml").trials(), load_suite(suite).trials()
    assert {t.compile for t in plain} == {"auto"} and {t.compile for t in on} == {"on"}
    assert [t.trial_id for t in plain] == [t.trial_id for t in on]  # how a trial runs, not what it computes


@pytest.fixture(scope="module")
def trials(tmp_path_factory: pytest.TempPathFactory) -> dict[str, core.TrialResult]:
    cache = tmp_path_factory.mktemp("cache")
    torch.set_num_threads(2)
    base = dataclasses.replace(BASE, cache_dir=str(cache))
    # A linear probe on the plain path: the frozen body (eval mode) inside the compiled graph, the head trained.
    probe = dataclasses.replace(base, freeze="linear_probe", feature_cache=False, lr=0.1, probe_solver="sgd")
    runs = {
        "eager": core.run_trial(dataclasses.replace(base, compile="off")),
        # The same function through another eager float path: PyTorch's own depthwise weight gradient.
        "eager_other": core.run_trial(dataclasses.replace(base, compile="off", padded_depthwise_grad=False)),
        "compiled": core.run_trial(dataclasses.replace(base, compile="on")),
        "again": core.run_trial(dataclasses.replace(base, compile="on", seed=1)),
        "probe_eager": core.run_trial(dataclasses.replace(probe, compile="off")),
        "probe_compiled": core.run_trial(dataclasses.replace(probe, compile="on")),
    }
    runs["cache"] = cache
    return runs


def _curve(result: core.TrialResult) -> list[float]:
    return [result.row["metric_nll"]] + [e[k] for e in result.epochs for k in ("train_loss", "val_nll")]


@pytest.mark.slow
def test_compiled_full_fine_tuning_is_as_close_to_eager_as_another_eager_float_path(trials) -> None:
    """Full fine-tuning of a BatchNorm network on 120 images amplifies rounding: two eager paths of the same
    function (bench's padded depthwise weight gradient and PyTorch's) drift apart by 0.005-1.3% over six steps
    (the same eager path twice: bit for bit). The compiled step rounds every layer its own way (as close to
    float64 as eager: the gradient test below). Measured on 2 CPU threads, its drift from eager was 0.4 to 2.6
    times the other eager path's, point by point (0.01-0.7%); the bound is twice the largest of those ratios. A
    compiled training loss 5% off (its gradient too) exceeds it, at 4-6 times, where ten times let it pass."""
    eager, done = trials["eager"].row, trials["compiled"].row
    assert eager["status"] == done["status"] == "ok"
    assert (eager["compiled"], done["compiled"]) == ("eager", "inductor")
    assert eager["compile_seconds"] == 0.0 and eager["compiled_steps"] == 0
    # Six steps (3 + short + 2): the short batch runs eager, no graph for its size.
    assert done["n_train"] == 120 and done["compiled_steps"] == 5
    assert done["compile_seconds"] > 0 and done["train_seconds"] > 0
    eager_curve, other_curve, compiled_curve = (_curve(trials[k]) for k in ("eager", "eager_other", "compiled"))
    for a, other, c in zip(eager_curve, other_curve, compiled_curve, strict=True):
        # 1e-4 relative: a floor for a point where the two eager paths happen to agree closely.
        assert abs(c - a) <= max(5 * abs(other - a), 1e-4 * abs(a)), (a, other, c)


@pytest.mark.slow
def test_compiled_linear_probe_gives_the_eager_metrics_up_to_float_rounding(trials) -> None:
    eager, done = trials["probe_eager"], trials["probe_compiled"]
    assert done.row["compiled"] == "inductor" and done.row["compiled_steps"] == 5
    assert done.row["frozen_prefix"] == eager.row["frozen_prefix"] == "plain (feature_cache off)"
    assert abs(eager.row["metric_top1"] - done.row["metric_top1"]) <= 100 / eager.row["n_test"] + 1e-9
    assert _curve(done) == pytest.approx(_curve(eager), rel=1e-4)


@pytest.mark.slow
def test_a_second_trial_of_the_same_shape_reuses_the_graph(trials) -> None:
    again = trials["again"].row
    assert again["status"] == "ok" and again["compiled"] == "inductor"
    assert again["compiled_steps"] == 5 and again["compile_seconds"] == 0.0


@pytest.mark.slow
def test_compiled_gradients_are_as_close_to_float64_as_the_eager_ones(trials) -> None:
    """One training step's gradients against the same step in float64: the compiled step is as exact as the
    eager one (fp32 BatchNorm backward on small images is itself only good to about a percent here)."""
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", 10, pretrained=True, head_seed=0)
    model = TransferModel(backbone.body, backbone.head).train()
    images, labels = torch.randn(BASE.batch_size, 3, 32, 32), torch.randint(0, 10, (BASE.batch_size,))
    cpu = torch.device("cpu")

    def gradients(loss_fn, dtype: torch.dtype) -> torch.Tensor:
        net = copy.deepcopy(model).to(dtype=dtype, memory_format=torch.channels_last)
        loss_fn(net, images.to(dtype).contiguous(memory_format=torch.channels_last), labels, cpu).backward()
        return torch.cat([p.grad.flatten().double() for p in net.parameters()])

    exact = gradients(training_loss, torch.float64)
    steps = core.phase_steps(dataclasses.replace(BASE, compile="on"), cpu, BASE.batch_size)

    def compiled_loss(net, inputs, targets, device):
        loss, _ = steps.loss(net, inputs, targets, device, 0.0, None)
        return loss

    def error(g: torch.Tensor) -> float:
        return ((g - exact).norm() / exact.norm()).item()

    eager, graph = error(gradients(training_loss, torch.float32)), error(gradients(compiled_loss, torch.float32))
    assert steps.loss.compiles(images)
    assert graph < 1.5 * eager + 1e-4, (graph, eager)


@pytest.mark.slow
def test_another_process_loads_the_generated_code_from_the_cache_folder(trials) -> None:
    inductor = Path(trials["cache"]) / "inductor"
    assert any(inductor.rglob("*.py")), "no generated code in the run's cache folder"
    script = (
        "import dataclasses, json, sys, torch\n"
        "from torch._dynamo.utils import counters\n"
        "from bench import training as core\n"
        "from bench.config import TrialConfig\n"
        "config = TrialConfig.from_dict(json.loads(sys.argv[1]))\n"
        "row = core.run_trial(config).row\n"
        "print(json.dumps({'status': row['status'], 'compiled_steps': row['compiled_steps'],"
        " 'hits': counters['inductor']['fxgraph_cache_hit'], 'misses': counters['inductor']['fxgraph_cache_miss']}))\n"
    )
    config = dataclasses.replace(BASE, compile="on", cache_dir=str(trials["cache"]), seed=2)
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(config.to_dict())], capture_output=True, text=True, check=True
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["status"] == "ok" and seen["compiled_steps"] == 5
    assert seen["hits"] >= 2 and seen["misses"] == 0  # forward and backward graphs, and the evaluation's
