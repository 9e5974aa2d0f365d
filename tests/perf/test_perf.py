"""`python -m bench.perf`: its table parses, plain and optimised runs agree on the metrics, and its FLOP count
is right for grouped convolutions. No timing is asserted: the machine is shared."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from bench.perf import compiled, flops, main, trials
from bench.utils.tables import markdown_table, parse_table


def test_markdown_table_round_trips():
    rows = [["a trial", "1.0", "yes"], ["another", "22.5", "NO"]]
    text = "before\n" + markdown_table(("trial", "plain_s", "ok"), rows) + "\nafter\n"
    assert parse_table(text) == [
        {"trial": "a trial", "plain_s": "1.0", "ok": "yes"},
        {"trial": "another", "plain_s": "22.5", "ok": "NO"},
    ]
    assert parse_table("no table here") == []


def test_training_flops_count_grouped_convolution_gradients_once_per_group():
    torch.set_num_threads(1)
    channels, size, batch = 8, 6, 2
    depthwise = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False), nn.Flatten())
    inputs = torch.randn(batch, channels, size, size, requires_grad=True)
    forward = 2 * batch * size * size * channels * 9  # one multiply-add per weight per output position
    # backward: the input gradient and the weight gradient, each one forward's worth
    assert flops.count_training_flops(depthwise, inputs) == 3 * forward
    frozen_input = inputs.detach()  # no input gradient needed: forward + weight gradient
    assert flops.count_training_flops(depthwise, frozen_input) == 2 * forward


def test_matmul_rate_is_positive_and_finite():
    torch.set_num_threads(1)
    rate = flops.matmul_gflops(size=256, repeats=2)
    assert 0.01 < rate < 1e6


def _perf(*args: str) -> subprocess.CompletedProcess:
    """``python -m bench.perf ARGS`` in a fresh process, asserted to succeed."""
    finished = subprocess.run(
        [sys.executable, "-m", "bench.perf", *args], capture_output=True, text=True, timeout=900, check=False
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished


@pytest.mark.slow
def test_quick_run_prints_a_table_where_plain_and_optimised_metrics_agree(tmp_path):
    out = tmp_path / "perf.json"
    finished = _perf("--quick", "--json", str(out), "--cache-dir", str(tmp_path / "cache"))
    rows = parse_table(finished.stdout)
    assert [row["trial"] for row in rows] == [t.name for t in trials.default_trials(quick=True)]
    assert set(rows[0]) == set(trials.COLUMNS)
    for row in rows:
        assert float(row["plain_s"]) > 0 and float(row["opt_s"]) > 0 and float(row["ratio"]) > 0
        assert float(row["d_top1"]) <= 0.5, row
        assert float(row["d_nll"]) <= 1e-3, row
        assert float(row["peak_MB plain"]) > 0 and float(row["peak_MB opt"]) > 0
    assert rows[0]["path"] == "features"  # the linear probe trained on cached features
    assert next(row for row in rows if row["trial"].startswith("half"))["path"] == "prefix"
    full = next(row for row in rows if row["trial"].startswith("full"))
    assert full["FLOP/s of peak"].endswith("%")
    assert "GFLOP per training image" in finished.stdout and "load average" in finished.stdout
    measured = json.loads(out.read_text())
    assert [m["trial"] for m in measured] == [row["trial"] for row in rows]
    for m, row in zip(measured, rows):
        assert f"{m['ratio']:.2f}" == row["ratio"]
        assert m["plain"]["row"]["feature_cache"] is False  # plain means plain
        assert m["plain"]["row"]["trial_id"] == m["optimised"]["row"]["trial_id"]  # the same trial both ways


def test_depthwise_prints_a_step_with_either_backward_and_their_gradients_agree(capsys):
    assert main.main(["--depthwise", "--img-size", "32"]) == 0
    (row,) = parse_table(capsys.readouterr().out)
    assert row["training step"].startswith("efficientnet_lite0 32 px, 32 images")
    assert float(row["pytorch backward_s"]) > 0 and float(row["padded weight grad_s"]) > 0
    assert row["layers padded"] == "11"  # the depthwise layers whose kernel is larger than their map at 32 px
    assert 0 < float(row["max grad diff"]) < 1e-4  # another summation order, not another gradient


@pytest.mark.slow
def test_compile_quick_prints_eager_against_compiled_rows():
    finished = _perf("--compile", "--quick")
    rows = parse_table(finished.stdout)
    assert [row["trial"] for row in rows] == ["half-frozen digits 32px", "full digits 32px"]
    assert set(rows[0]) == set(compiled.COLUMNS)
    for row in rows:
        assert float(row["eager train_s"]) > 0 and float(row["compiled train_s"]) > 0
        assert float(row["compile_s cold"]) > 0 and float(row["compile_s same worker"]) == 0.0  # graph reused
        assert float(row["d_nll"]) < 0.05, row
    assert (
        rows[1]["FLOP/s of peak eager / compiled"].endswith("%") and rows[0]["FLOP/s of peak eager / compiled"] == "-"
    )


def test_break_even_counts_trials_or_says_never():
    assert compiled.break_even(2.0, 1.0, 2.5) == "3"
    assert compiled.break_even(1.0, 1.2, 0.1) == "never"
