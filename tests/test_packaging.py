"""Packaging: the wheel built from this checkout holds bench and its shipped suites, and once installed into a fresh
venv it runs `bench --version`, `bench validate` and `bench run --smoke` from a folder outside the repository.

The wheel is built from a copy of the checkout's sources (pyproject.toml, README.md, bench/, suites/), so a stale
``build/`` folder cannot leak into it and two test runs do not share one. The fresh venv reaches the heavy
dependencies (torch, Ray, ...) through a ``.pth`` line naming this interpreter's site-packages: a plain path line
does not run that folder's own ``.pth`` files, so the editable bench installed there stays out of sight, and
every test checks that the ``bench`` it ran is the wheel's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from conftest import DATA, REPO

from bench.results.store import TRIALS_FILE

SUITES = sorted((REPO / "suites").glob("*.yaml"))


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kwargs.pop("timeout", 300), **kwargs)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel of a copy of this checkout, and the build's log (``pip wheel -v``)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "bench", src / "bench", symlinks=True, ignore=skip)  # keeps shipped_suites -> ../suites
    shutil.copytree(REPO / "suites", src / "suites", ignore=skip)
    dist = tmp_path_factory.mktemp("dist")
    # No build isolation: this venv's setuptools (constraints.txt) builds it, offline and in seconds.
    cmd = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)]
    done = _run(cmd)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    wheels = sorted(dist.glob("bench-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0], done.stdout + done.stderr


def test_wheel_holds_the_package_and_every_shipped_suite(built: tuple[Path, str]) -> None:
    wheel, log = built
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        shipped = {name: archive.read(name) for name in names if name.startswith("bench/shipped_suites/")}
        metadata = Parser().parsestr(archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())

    # Every suite of suites/ is in the wheel, byte for byte, and nothing else is shipped there.
    assert SUITES, "suites/ holds no suite"
    assert shipped == {f"bench/shipped_suites/{p.name}": p.read_bytes() for p in SUITES}
    # Every module of the package (a subpackage added later and missed by the build would fail here).
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "bench").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules <= names, sorted(modules - names)
    assert {n.split("/")[0] for n in names} == {
        "bench",
        wheel.name.split("-")[0] + "-" + metadata["Version"] + ".dist-info",
    }

    # The metadata a cluster image's pip reads: ranges, not pins; an SPDX license; the Python range.
    import bench

    assert metadata["Version"] == bench.__version__
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Requires-Python"] == ">=3.11"
    requires = metadata.get_all("Requires-Dist")
    assert not [r for r in requires if "==" in r.split(";")[0]], requires  # `extra == "x"` markers aside
    assert {"torch>=2.4", "torchvision>=0.19"} <= {r.replace(" ", "") for r in requires}
    extras = set(metadata.get_all("Provides-Extra"))
    assert {"mlflow", "wandb", "tensorboard", "cluster", "dev"} <= extras
    # No Python warning from the build, deprecations above all: setuptools says "BuildBackendWarning: `project.license`
    # as a TOML table is deprecated" for the old license table (its "warning: build_py: ..." notes are not warnings).
    warned = [line for line in log.splitlines() if "Warning:" in line or "deprecat" in line.lower()]
    assert not warned, warned


@pytest.fixture(scope="module")
def venv(built: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed (``--no-deps``); its other dependencies come from this interpreter's
    site-packages through one ``.pth`` line."""
    root = tmp_path_factory.mktemp("venv")
    done = _run([sys.executable, "-m", "venv", "--without-pip", str(root)])
    assert done.returncode == 0, done.stderr
    python = root / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(purelib, "bench_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", str(built[0])])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root


def _env(venv: Path) -> dict[str, str]:
    """A user's shell in the fresh venv: its bin/ first, no PYTHONPATH to the checkout, no Ray address."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("RAY_")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["BENCH_DATA"] = str(DATA)  # as CI sets it: shipped suites name their data by ${BENCH_DATA}
    return env


def test_installed_wheel_answers_version_list_and_validate(venv: Path, tmp_path: Path) -> None:
    env = _env(venv)
    bench = str(venv / "bin" / "bench")
    where = _run([str(venv / "bin" / "python"), "-c", "import bench; print(bench.__file__)"], cwd=tmp_path, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where  # the wheel's bench, not the checkout's

    version = _run([bench, "--version"], cwd=tmp_path, env=env)
    assert version.returncode == 0, version.stderr
    first, stack = version.stdout.strip().splitlines()
    assert first.startswith("bench 0.") and str(venv) in first and "Python 3." in first, first
    assert stack.startswith("torch 2.") and ", torchvision 0." in stack and ", timm 1." in stack, stack
    assert ", ray 2." in stack and "not installed" not in stack, stack

    listed = _run([bench, "list", "suites"], cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    paths = dict(line.split(maxsplit=1) for line in listed.stdout.splitlines() if not line.startswith(" "))
    assert set(paths) == {p.stem for p in SUITES}, listed.stdout
    smoke = Path(paths["smoke"])
    assert smoke.is_relative_to(venv) and smoke.parent.name == "shipped_suites", smoke

    for suite, trials in ((smoke, "72 trials"), (smoke.with_name("regimes_cpu.yaml"), "216 trials")):
        checked = _run([bench, "validate", str(suite)], cwd=tmp_path, env=env)
        assert checked.returncode == 0 and trials in checked.stdout, checked.stdout + checked.stderr


@pytest.mark.slow
def test_installed_wheel_runs_the_default_suite_outside_the_repository(venv: Path, tmp_path: Path) -> None:
    """`bench run --smoke` with no suite: the shipped smoke suite (12 trials, about 90 s on 2 cores)."""
    done = _run(
        [str(venv / "bin" / "bench"), "run", "--smoke", "--out", "results"], cwd=tmp_path, env=_env(venv), timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "bench: 12 ok, 0 diverged, 0 failed" in done.stdout, done.stdout[-3000:]
    run_dirs = list((tmp_path / "results" / "smoke").iterdir())
    assert len(run_dirs) == 1 and (run_dirs[0] / TRIALS_FILE).is_file(), run_dirs
    assert not (REPO / "results" / "smoke" / run_dirs[0].name).exists()  # written where the user stood


def test_version_reads_metadata_without_importing_torch_or_ray() -> None:
    code = (
        "import sys\nfrom bench.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit as done:\n"
        "    assert done.code in (0, None), done.code\nprint('torch' in sys.modules, 'ray' in sys.modules)"
    )
    done = _run([sys.executable, "-c", code], cwd=REPO)
    assert done.returncode == 0, done.stderr
    *text, imported = done.stdout.strip().splitlines()
    assert imported == "False False", done.stdout
    assert text[0].startswith("bench ") and text[1].startswith("torch "), text
