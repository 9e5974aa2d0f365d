"""The `bench` command line as users meet it: real processes, real exit codes, real stderr.

DESIGN.md's contract: bad input exits 2 with one line (a few at most) naming the file, never a traceback,
and nothing is written; `bench validate` prints the trial count; `bench list` shows the registries. Every
malformed suite in tests/bad_suites/ goes through both `bench validate` and `bench run` (forked from one
pre-imported process, see tests/faults/cli_fork.py, so 200 command lines take seconds, not 20 minutes), and
a sample of them through genuine `python -m bench.cli` processes, which must give the same answers.
"""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import BAD_SUITES, REPO, TESTS, bench, bench_env

SHIPPED = sorted((REPO / "suites").glob("*.yaml"))
MAX_STDERR_LINES = 3

# A sample run through genuine `python -m bench.cli` processes: one of each way a suite goes wrong.
# (most fail while parsing, before torch is imported; the last two need the backbone registry: 5-8 s each).
REAL_PROCESS_SAMPLE = [
    "alias_bomb",
    "invalid_utf8",
    "python_object_tag",
    "tabs",
    "top_level_list",
    "empty",
    "duplicate_key",
    "nul_character",
    "unknown_backbone",
    "name_parent_dir",
]


def forked(jobs: list[dict]) -> list[dict]:
    """Run each {"argv", "cwd"} as a `bench` process forked from one pre-imported interpreter."""
    done = subprocess.run(
        [sys.executable, str(TESTS / "faults" / "cli_fork.py")],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        timeout=600,
        env=bench_env(),
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    assert len(results) == len(jobs)
    return results


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def expected_key(path: Path) -> str | None:
    """The key path a corpus file's first-line comment says the message must name: `# ... (key: grid.seed)`."""
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8", "replace")
    found = re.search(r"\(key: ([^)]+)\)$", first)
    return found.group(1) if found else None


def check_refusal(result: dict | subprocess.CompletedProcess, path: Path, what: str) -> None:
    rc = result["rc"] if isinstance(result, dict) else result.returncode
    stderr = result["stderr"] if isinstance(result, dict) else result.stderr
    stdout = result["stdout"] if isinstance(result, dict) else result.stdout
    assert rc == 2, f"{what}: exit {rc}, expected 2\n{stderr[-2000:]}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= MAX_STDERR_LINES, f"{what}: {len(lines)} stderr lines:\n{stderr[-2000:]}"
    assert str(path) in stderr, f"{what}: the message does not name the file: {stderr!r}"
    assert "Traceback" not in stderr + stdout, what
    key = expected_key(path)
    if key:
        assert key in stderr, f"{what}: the message does not name the key path {key!r}: {stderr!r}"


# ---------------------------------------------------------------------------------------------------------
# The malformed corpus


def test_corpus_is_big_enough_and_covers_the_issues_list() -> None:
    names = {p.stem for p in BAD_SUITES}
    assert len(names) >= 40
    for needed in (
        "alias_bomb",
        "invalid_utf8",
        "python_object_tag",
        "tabs",
        "top_level_list",
        "empty",
        "name_with_slash",
        "name_parent_dir",
        "unknown_backbone",
        "unknown_dataset",
        "epochs_and_steps",
        "missing_name",
        "data_fraction_above_one",
        "freeze_above_one",
        "shots_zero",
        "freeze_empty",
    ):
        assert needed in names, needed


NAMES_OUTSIDE = [
    "../evil",
    "..",
    "sub/../../evil",
    "/tmp/bench-evil",
    "a/b",
    "a\\..\\b",
    ".hidden",
    "~",
    "evil\u2215slash",
    "-rf",
    "e" * 101,
]
BAD_DATASET_NAMES = ["imagefolder:data?group=../../evil", "imagefolder:", "../../etc", "imagefolder:?group=natural"]


def _suite_text(name: str = "ok_name", dataset: str = "digits") -> str:
    return yaml.safe_dump(
        {
            "name": name,
            "backbones": ["efficientnet_lite0"],
            "datasets": [dataset],
            "grid": {"freeze": ["linear_probe"], "data_fraction": [1.0]},
            "train": {"epochs": 1},
        }
    )


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every command line that must be refused, run once as forked `bench` processes (one torch import).

    Returns {"jobs": [(kind, command, suite path, result)], "root": folder holding every suite, cwd and --out}.
    """
    root = tmp_path_factory.mktemp("refusals")
    cwd, outs, suites = root / "cwd", root / "outs", root / "suites"
    for folder in (cwd, outs, suites):
        folder.mkdir()
    cases: list[tuple[str, Path]] = [("corpus", path) for path in BAD_SUITES]
    for index, name in enumerate(NAMES_OUTSIDE):
        path = suites / f"name{index}.yaml"
        path.write_text(_suite_text(name=name))
        cases.append(("suite name", path))
    for index, dataset in enumerate(BAD_DATASET_NAMES):
        path = suites / f"dataset{index}.yaml"
        path.write_text(_suite_text(dataset=dataset))
        cases.append(("dataset name", path))
    jobs, labels = [], []
    for index, (kind, path) in enumerate(cases):
        out = str(outs / f"out{index}")
        for command in (
            ["validate", str(path)],
            ["run", str(path), "--out", out],
            ["run", str(path), "--out", out, "--resume"],
        ):
            if kind == "corpus" and "--resume" in command:
                continue
            jobs.append({"argv": command, "cwd": str(cwd)})
            labels.append((kind, command[0] + (" --resume" if "--resume" in command else ""), path))
    results = forked(jobs)
    return {"jobs": [(*label, result) for label, result in zip(labels, results)], "root": root}


def _check_jobs(refusals: dict, kind: str) -> int:
    checked = 0
    for job_kind, command, path, result in refusals["jobs"]:
        if job_kind != kind:
            continue
        what = f"bench {command} {path.name}"
        assert result["rc"] is not None, f"{what}: still running after 30 s (a hang)"
        check_refusal(result, path, what)
        if command.startswith("run"):
            assert not result["ray_imported"], f"{what}: refused only after importing Ray"
        assert result["seconds"] < 10, f"{what}: took {result['seconds']} s"
        checked += 1
    root = refusals["root"]
    assert tree(root / "outs") == [], "a refused run wrote something under --out"
    assert tree(root / "cwd") == [], "a refused command wrote into the working directory"
    return checked


@pytest.mark.slow
def test_every_malformed_suite_is_refused_by_validate_and_run(refusals: dict) -> None:
    assert _check_jobs(refusals, "corpus") == 2 * len(BAD_SUITES)


@pytest.mark.slow
def test_a_suite_name_cannot_point_outside_the_output_folder(refusals: dict) -> None:
    assert _check_jobs(refusals, "suite name") == 3 * len(NAMES_OUTSIDE)
    for _, _, path, result in refusals["jobs"]:
        if path.name.startswith("name"):
            assert ": name: expected" in result["stderr"], result["stderr"]
    assert not Path("/tmp/bench-evil").exists()


@pytest.mark.slow
def test_a_malformed_dataset_name_is_refused_before_anything_is_written(refusals: dict) -> None:
    assert _check_jobs(refusals, "dataset name") == 3 * len(BAD_DATASET_NAMES)
    for _, _, path, result in refusals["jobs"]:
        if path.name.startswith("dataset"):
            assert ": datasets[0].name: " in result["stderr"], result["stderr"]


@pytest.mark.slow
def test_a_sample_of_the_corpus_through_genuine_processes_answers_the_same(tmp_path: Path, refusals: dict) -> None:
    """`python -m bench.cli` itself, not the fork harness, for one file of each kind; same stderr as forked."""
    forked_stderr = {(command, path): result["stderr"] for _, command, path, result in refusals["jobs"]}
    sample = [TESTS / "bad_suites" / f"{name}.yaml" for name in REAL_PROCESS_SAMPLE]
    jobs = [("validate", path) for path in sample] + [("run", path) for path in sample]
    with ThreadPoolExecutor(max_workers=2) as pool:
        real = list(
            pool.map(
                lambda job: bench(
                    job[0], str(job[1]), *(["--out", str(tmp_path / "out")] if job[0] == "run" else []), cwd=tmp_path
                ),
                jobs,
            )
        )
    for (command, path), genuine in zip(jobs, real):
        check_refusal(genuine, path, f"python -m bench.cli {command} {path.name}")
        assert genuine.stderr == forked_stderr[(command, path)], f"{command} {path.name}: harness differs"
    assert tree(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------
# Good input


def _count_from_yaml(path: Path) -> int:
    """The trial count by design.md's arithmetic, read with plain yaml: an oracle independent of bench.suite.spec."""
    data = yaml.safe_load(path.read_text())
    grid = data["grid"]
    sizes = len(grid.get("data_fraction") or []) + len(grid.get("shots") or [])
    seeds = len(grid.get("seed") or [0])
    cells = math.prod(
        [
            len(data["datasets"]),
            len(data["backbones"]),
            sizes,
            len(grid.get("lr") or [None]),
            len(grid.get("weight_decay") or [None]),
        ]
    )
    search = data.get("search")
    if search is None:
        return cells * len(grid["freeze"]) * seeds
    points = 0
    for freeze in grid["freeze"]:
        strategy = {"linear_probe": "linear_probe", 1: "linear_probe", "full": "full", 0: "full"}.get(freeze, freeze)
        strategy = strategy if strategy in ("linear_probe", "full", "lp_ft") else "partial"
        space = {**search["space"], **search.get("by_strategy", {}).get(strategy, {})}
        assert all(isinstance(values, list) for values in space.values()), "the oracle counts grids only"
        points += math.prod(len(values) for values in space.values())
    if search.get("protocol") == "two_stage" and seeds > 1:
        return cells * (points + len(grid["freeze"]) * (seeds - 1))
    return cells * points * seeds


@pytest.mark.slow
def test_shipped_suites_validate_with_their_trial_count() -> None:
    assert SHIPPED
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda path: bench("validate", str(path), cwd=REPO), SHIPPED))
    for path, result in zip(SHIPPED, results):
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        count, extra = _count_from_yaml(path), _extension_bound_from_yaml(path)
        more = f", and up to {extra} more past the search's edges" if extra else ""
        assert result.stdout.strip() == f"{path}: suite '{path.stem}' is valid: {count} trials{more}"


def _extension_bound_from_yaml(path: Path) -> int:
    """The most trials `search.extend` may add, by design.md's arithmetic: per round, one per cell of the first
    seed and grid of two or more numbers each strategy searches."""
    data = yaml.safe_load(path.read_text())
    search, grid = data.get("search") or {}, data["grid"]
    if not search.get("extend"):
        return 0
    sizes = len(grid.get("data_fraction") or []) + len(grid.get("shots") or [])
    cells = len(data["datasets"]) * len(data["backbones"]) * sizes
    grids = 0
    for freeze in grid["freeze"]:
        strategy = {"linear_probe": "linear_probe", 1: "linear_probe", "full": "full", 0: "full"}.get(freeze, freeze)
        strategy = strategy if strategy in ("linear_probe", "full", "lp_ft") else "partial"
        space = {**search["space"], **search.get("by_strategy", {}).get(strategy, {})}
        grids += sum(
            isinstance(v, list) and len(v) > 1 and all(isinstance(x, (int, float)) for x in v) for v in space.values()
        )
    return cells * grids * search["extend"]


@pytest.mark.slow
def test_list_shows_both_registries_with_offline_availability() -> None:
    datasets = bench("list", "datasets")
    assert datasets.returncode == 0 and datasets.stderr == ""
    rows = {line.split()[0]: line.split()[1:3] for line in datasets.stdout.splitlines() if line.strip()}
    assert rows["digits"] == ["structured", "offline"]
    assert rows["photo_patches"] == ["natural", "offline"]
    assert rows["cifar10"] == ["natural", "download"]
    assert len(rows) >= 15

    backbones = bench("list", "backbones")
    assert backbones.returncode == 0 and "Traceback" not in backbones.stderr
    rows = {line.split()[0]: line.split()[1:3] for line in backbones.stdout.splitlines() if line.strip()}
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        assert rows[name] == ["bundled", "offline"], rows.get(name)

    filtered = bench("list", "datasets", "cifar*")
    assert filtered.returncode == 0
    assert {line.split()[0] for line in filtered.stdout.splitlines()} == {"cifar10", "cifar100"}


def test_output_into_a_closed_pipe_prints_no_traceback() -> None:
    """`bench list datasets | head -1` on a long listing: the reader is gone before bench writes."""
    piped = subprocess.run(
        f"'{sys.executable}' -m bench.cli list datasets | true",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        env=bench_env(),
    )
    assert piped.returncode == 0
    assert "Traceback" not in piped.stderr and "BrokenPipeError" not in piped.stderr, piped.stderr


def test_usage_errors_exit_2_without_a_traceback(tmp_path: Path) -> None:
    for argv in (
        ["frobnicate"],
        ["list", "weights"],
        ["leaderboard"],
        ["validate"],
        ["validate", str(tmp_path / "missing.yaml")],
        ["validate", str(tmp_path)],
    ):
        result = bench(*argv, cwd=tmp_path)
        assert result.returncode == 2, (argv, result.stderr)
        assert "Traceback" not in result.stderr
        assert 1 <= len(result.stderr.strip().splitlines()) <= 3 or result.stderr.startswith("usage:"), argv
    assert tree(tmp_path) == []


@pytest.mark.slow
def test_validate_of_a_bundled_backbone_suite_does_not_import_torch() -> None:
    code = (
        "import sys; from bench.cli import main; rc = main(['validate', 'suites/smoke.yaml']); "
        "print('torch' in sys.modules, 'ray' in sys.modules); sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO, env=bench_env()
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False False"


@pytest.mark.slow
def test_similarity_command_prints_the_table_and_caches_it(tmp_path: Path) -> None:
    suite = tmp_path / "sim.yaml"
    suite.write_text("""
name: sim
backbones: [efficientnet_lite0, {name: efficientnet_lite0, pretrained: false}]
datasets: [digits, "imagefolder:/surely/missing/folder"]
grid: {freeze: [linear_probe], data_fraction: [0.1, 1.0], seed: [0]}
train: {img_size: 32, steps: 3, lr: 1.0e-2}
""")
    cache = tmp_path / "cache"
    first = bench("similarity", str(suite), "--cache-dir", str(cache), "--format", "csv", timeout=600)
    assert first.returncode == 1, first.stderr[-2000:]  # the missing folder is one failed row, the rest is there
    rows = list(csv.DictReader(first.stdout.splitlines()))
    assert [(r["dataset"], r["backbone"]) for r in rows] == [
        ("digits", "efficientnet_lite0"),
        ("imagefolder:/surely/missing/folder", "efficientnet_lite0"),
    ]
    digits, missing = rows
    assert digits["similarity_regime"] == "low" and 0.6 < float(digits["similarity_score"]) < 0.85
    assert math.isfinite(float(digits["transferability"])) and math.isfinite(float(digits["leep"]))
    assert digits["error"] == "" and "does not exist" in missing["error"]
    stored = list((cache / "similarity").glob("*.json"))
    assert len(stored) == 1 and json.loads(stored[0].read_text())["similarity_score"] == pytest.approx(
        float(digits["similarity_score"])
    )
    written = stored[0].stat().st_mtime_ns
    again = bench("similarity", str(suite), "--cache-dir", str(cache), "--format", "csv", timeout=600)
    assert list(csv.DictReader(again.stdout.splitlines()))[0]["similarity_score"] == digits["similarity_score"]
    assert stored[0].stat().st_mtime_ns == written  # read back, not measured again
