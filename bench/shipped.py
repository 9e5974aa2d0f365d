"""The suites that ship with bench: the repository's top-level ``suites/`` folder, installed as package data.

``bench/shipped_suites`` is a link to ``../suites`` (the one copy of the YAML files). setuptools packs the files it
points at into the wheel as ``bench/shipped_suites/*.yaml`` (pyproject.toml, ``[tool.setuptools.package-data]``),
and an editable install reads them in place through the link, so :func:`suites_dir` answers for a checkout, an
editable install and an installed wheel alike. bench is never imported from a zip, so every answer is a real path.

A shipped suite may name data by ``${BENCH_DATA:-../shared/data}``: with ``BENCH_DATA`` set to an absolute folder
it runs from any working directory; its default is relative to the working directory (a checkout's root).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

FOLDER = "shipped_suites"
DEFAULT_NAME = "smoke"


@dataclass(frozen=True)
class ShippedSuite:
    name: str  # the file's stem, e.g. "smoke"
    path: Path
    description: str  # the suite's description: field ("" when it has none or cannot be read)


def suites_dir() -> Path:
    """The folder of the shipped suite files (``bench/shipped_suites`` inside the installed package)."""
    return Path(str(resources.files("bench").joinpath(FOLDER)))


def default_suite() -> Path:
    """The suite ``bench run`` runs when given none: the shipped ``smoke.yaml``."""
    return suites_dir() / f"{DEFAULT_NAME}.yaml"


def shipped_suites() -> list[ShippedSuite]:
    """Every shipped suite, by name. Reads each file's ``description:`` only; validating is `bench validate`'s."""
    import yaml

    found = []
    for path in sorted(suites_dir().glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            data = None
        description = data.get("description", "") if isinstance(data, dict) else ""
        found.append(ShippedSuite(path.stem, path, str(description or "")))
    return found
