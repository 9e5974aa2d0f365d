"""Datasets appear under their display names in what `bench run`, `bench leaderboard` and `bench report` show.

One real run (local Ray, two short trials) on an image folder given by absolute path with a group, and on a
``hf:`` folder with a suite-set display name; the tables keep the full `dataset` string, everything shown to a
reader carries the short names.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import DATA, bench, require, require_module, write_suite

from bench.results.leaderboard import parse_table

pytestmark = pytest.mark.slow

PBC = DATA / "pbc_blood_cells"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(PBC.is_dir(), f"test images not found at {PBC} (BENCH_DATA={DATA})")
    datasets = require_module("datasets")
    root = tmp_path_factory.mktemp("names")
    cells = root / "data" / "pbc_blood_cells"
    for name in ("basophil", "eosinophil", "lymphocyte"):
        (cells / name).mkdir(parents=True)
        for image in sorted((PBC / name).iterdir())[:12]:
            shutil.copy(image, cells / name / image.name)
    saved = datasets.load_dataset("imagefolder", data_dir=str(cells), cache_dir=str(root / "hf-cache"))
    saved.save_to_disk(str(root / "data" / "cells_hf"))
    suite = write_suite(
        root,
        name="names",
        datasets=f'["imagefolder:{cells}?group=specialized", {{name: "hf:{root / "data" / "cells_hf"}", '
        "display_name: cells_saved}]",
        freeze="[linear_probe]",
        sizes="data_fraction: [1.0]",
        seeds="[0]",
        steps=2,
    )
    done = bench("run", suite, "--out", root / "results", "--num-cpus", "2", timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = done.stdout[done.stdout.rindex("| dataset") :]
    assert "pbc_blood_cells" in summary and "cells_saved" in summary and str(cells) not in summary
    (found,) = [p.parent for p in (root / "results" / "names").glob("*/trials.parquet")]
    return found


def test_the_table_keeps_the_dataset_and_adds_its_name(run_dir: Path) -> None:
    table = pd.read_parquet(run_dir / "trials.parquet")
    by_name = dict(zip(table["dataset_name"], table["dataset"]))
    assert set(by_name) == {"pbc_blood_cells", "cells_saved"}
    assert by_name["pbc_blood_cells"].startswith("imagefolder:/")
    assert by_name["pbc_blood_cells"].endswith("/pbc_blood_cells?group=specialized")


def test_the_leaderboard_shows_display_names(run_dir: Path) -> None:
    done = bench("leaderboard", run_dir)
    assert done.returncode == 0, done.stderr
    rows = parse_table(done.stdout.split("## Overall ranking")[0])
    assert {row["dataset"] for row in rows} == {"pbc_blood_cells", "cells_saved"}
    assert "imagefolder:" not in done.stdout and "?group=" not in done.stdout
    csv = bench("leaderboard", run_dir, "--format", "csv").stdout  # the CSV has both columns
    assert "dataset_name" in csv.splitlines()[0] and "imagefolder:/" in csv


def test_the_report_shows_display_names_in_its_tables_and_figures(run_dir: Path, tmp_path: Path) -> None:
    done = bench("report", run_dir, "--out", tmp_path / "report")
    assert done.returncode == 0, done.stderr
    markdown = (tmp_path / "report" / "report.md").read_text()
    html = (tmp_path / "report" / "report.html").read_text()
    body, reproduce = markdown.split("## 7. Suite, environment and failed trials")
    assert "pbc_blood_cells" in body and "cells_saved" in body
    assert "imagefolder:" not in body and "?group=" not in body and "hf:" not in body
    # section 7 says which data each name stands for
    assert re.search(r"\| pbc_blood_cells \| `imagefolder:/\S+/pbc_blood_cells\?group=specialized` \|", reproduce)
    html_body = html.split("7. Suite, environment and failed trials")[0]
    assert "pbc_blood_cells" in html_body and "imagefolder:" not in html_body
