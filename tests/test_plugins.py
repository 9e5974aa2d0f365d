"""Plug-ins: the example plug-in installed as a real package (entry points) adds a backbone, a dataset and a
strategy that `bench run` uses on local Ray with two workers; a suite's `plugins:` modules; broken plug-ins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, bench, bench_env, one_line_error

EXAMPLE = REPO / "examples" / "bench-example-plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The example plug-in pip-installed into a folder of its own, put on PYTHONPATH (the driver's and so
    its local Ray workers'): found through its entry points, as a `pip install` into the environment is."""
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / "plugin"
    subprocess.run(["cp", "-r", str(EXAMPLE), str(source)], check=True)  # the build writes into its source
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    assert (target / "bench_example_plugin").is_dir() and list(target.glob("bench_example_plugin-*.dist-info"))
    env = bench_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), env.get("PYTHONPATH")) if p)
    return env


def test_bench_list_names_where_each_entry_comes_from(installed) -> None:
    for what, name in (("backbones", "tiny_convnet"), ("datasets", "glyphs"), ("strategies", "first_block")):
        done = bench("list", what, env=installed)
        assert done.returncode == 0, done.stderr
        (line,) = [line for line in done.stdout.splitlines() if line.startswith(name + " ")]
        assert "bench_example_plugin" in line
    builtin = bench("list", "strategies", "bitfit", env=installed).stdout
    assert builtin.split()[:4] == ["bitfit", "depth", "-", "bench"]


@pytest.mark.slow
def test_installed_plugin_runs_in_bench_run_on_two_workers(installed, tmp_path: Path) -> None:
    suite = EXAMPLE / "suite.yaml"
    validated = bench("validate", suite, env=installed)
    assert validated.returncode == 0, validated.stderr
    assert "plug-ins imported (their code ran, and runs in every worker): bench_example_plugin" in validated.stdout
    done = bench("run", suite, "--out", tmp_path, "--num-cpus", "2", env=installed, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (trials,) = tmp_path.rglob("trials.parquet")
    rows = pd.read_parquet(trials)
    assert len(rows) == 12 and set(rows["status"]) == {"ok"}
    assert set(rows["backbone"]) == {"tiny_convnet", "efficientnet_lite0"}
    assert set(rows["dataset"]) == {"glyphs", "digits"}
    assert set(rows["strategy"]) == {"first_block", "bitfit", "full"}
    first = rows[(rows["strategy"] == "first_block") & (rows["backbone"] == "tiny_convnet")]
    assert (first["trainable_params"] < first["total_params"]).all() and first["freeze"].isna().all()
    glyphs = rows[rows["dataset"] == "glyphs"]
    assert (glyphs["n_classes"] == 4).all() and (glyphs["n_test"] == 80).all()


def _suite(tmp_path: Path, plugins: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(
        f"name: p\nplugins: {plugins}\nbackbones: [efficientnet_lite0]\ndatasets: [digits]\n"
        "grid: {freeze: [head_bias], data_fraction: [1.0]}\ntrain: {steps: 1}\n"
    )
    return path


def _module(tmp_path: Path, name: str, text: str) -> dict[str, str]:
    (tmp_path / f"{name}.py").write_text(text)
    env = bench_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
    return env


STRATEGY = (
    "from bench.models.strategies import STRATEGIES, Strategy\n"
    "from bench.models.peft import apply_bitfit\n"
    "STRATEGIES.add('head_bias', Strategy('biases', apply=apply_bitfit))\n"
)


def test_a_suite_names_a_plugin_module(tmp_path: Path) -> None:
    env = _module(tmp_path, "my_strategies", STRATEGY)
    done = bench("validate", _suite(tmp_path, "[my_strategies]"), env=env)
    assert done.returncode == 0, done.stderr
    assert "plug-ins imported (their code ran, and runs in every worker): my_strategies" in done.stdout
    missing = bench("validate", _suite(tmp_path, "[]"), env=env)  # not named, not installed: unknown strategy
    assert missing.returncode == 2 and "head_bias" in missing.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("import no_such_module_here\n", "plug-in 'broken' failed to import: ModuleNotFoundError: No module named"),
        ("1 +\n", "plug-in 'broken' failed to import: SyntaxError"),
        (
            "from bench.models.strategies import STRATEGIES, Strategy\nSTRATEGIES.add('bitfit', Strategy('again'))\n",
            "plug-in 'broken' registers strategy 'bitfit', already registered by bench",
        ),
    ],
    ids=["import_error", "syntax_error", "name_taken"],
)
def test_a_broken_plugin_is_one_line_and_exit_2(tmp_path: Path, text: str, message: str) -> None:
    env = _module(tmp_path, "broken", text)
    suite = _suite(tmp_path, "[broken]")
    for command in (("validate", suite), ("run", suite, "--out", tmp_path / "out")):
        done = bench(*command, env=env)
        assert done.returncode == 2, (command, done.stderr)
        one_line_error(done.stderr, prefix=f"bench: error: {suite}: plugins: {message}")
    assert not (tmp_path / "out").exists()
