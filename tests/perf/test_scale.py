"""`bench perf --scale`: synthetic image folders (hard links into one deterministic pool), the /proc tree sampler,
and one quick end to end run through a real `bench run`. No timing is asserted: the machine is shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.perf import scale
from bench.utils.tables import parse_table


def test_link_folders_are_hard_links_to_a_deterministic_pool(tmp_path):
    pool = tmp_path / "pool"
    written, _ = scale.make_pool(pool, per_class=4, processes=2)
    assert written == 40
    assert scale.make_pool(pool, per_class=4, processes=2)[0] == 0  # complete: nothing rewritten
    again, _ = scale.make_pool(tmp_path / "again", per_class=4, processes=1)
    assert again == 40
    for label in range(scale.CLASSES):
        name = scale.class_name(label)
        assert sorted(os.listdir(pool / name)) == [scale.file_name(i) for i in range(4)]
        for i in range(4):  # content is a function of (class, index) only: same bytes from another pool
            file = scale.file_name(i)
            assert (pool / name / file).read_bytes() == (tmp_path / "again" / name / file).read_bytes()
    assert (pool / "class0" / scale.file_name(0)).read_bytes() != (pool / "class0" / scale.file_name(1)).read_bytes()
    assert (pool / "class0" / scale.file_name(0)).read_bytes() != (pool / "class1" / scale.file_name(0)).read_bytes()

    folder = scale.link_folder(pool, tmp_path / "images-20", per_class=2)
    assert sorted(os.listdir(folder)) == [scale.class_name(label) for label in range(scale.CLASSES)]
    for label in range(scale.CLASSES):
        name = scale.class_name(label)
        assert sorted(os.listdir(folder / name)) == [scale.file_name(0), scale.file_name(1)]  # the first N/10
        for file in os.listdir(folder / name):
            assert os.path.samefile(folder / name / file, pool / name / file)
    marker = os.stat(folder / "class0").st_ino
    assert scale.link_folder(pool, folder, per_class=2) == folder
    assert os.stat(folder / "class0").st_ino == marker  # already right: kept, not rebuilt
    scale.link_folder(pool, folder, per_class=3)  # another size: rebuilt
    assert len(os.listdir(folder / "class9")) == 3


def test_sampler_counts_a_grandchild_and_keeps_the_driver_apart():
    # The driver holds ~50 MiB private memory; a grandchild (a worker started by a child) ~300 MiB.
    grandchild = "import time; b = bytearray(300 * 2**20); time.sleep(1.5)"
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}])"
    driver = textwrap.dedent(f"""
        import subprocess, sys
        a = bytearray(50 * 2**20)
        subprocess.run([sys.executable, '-c', {child!r}])
    """)
    process = subprocess.Popen([sys.executable, "-c", driver])
    with scale.TreeSampler(process.pid, interval_s=0.05) as sampler:
        assert process.wait(timeout=60) == 0
    peaks = sampler.peaks
    assert 50 * 2**20 <= peaks.driver < 250 * 2**20
    assert peaks.largest >= 300 * 2**20 and peaks.others >= peaks.largest
    assert peaks.processes >= 3 and peaks.samples > 3


def test_prepared_figures_are_found_in_any_cache_layout(tmp_path):
    nested = tmp_path / "datasets" / "abc" / "train"
    nested.mkdir(parents=True)
    (nested / "meta.json").write_text(json.dumps({"prepare_seconds": 2.5, "n_train": 30, "n_test": 10}))
    (tmp_path / "datasets" / "meta.json").write_text(json.dumps({"other": 1}))  # no prepare_seconds: ignored
    assert scale.read_prepared(tmp_path) == (2.5, 30, 10)
    assert scale.read_prepared(tmp_path / "missing") is None
    assert scale.folder_bytes(tmp_path / "datasets") > 0


@pytest.mark.slow
def test_quick_scale_runs_bench_per_size_and_reports_every_figure(tmp_path):
    out = tmp_path / "scale.json"
    finished = subprocess.run(
        [sys.executable, "-m", "bench.perf", "--scale", "--quick", "--work-dir", str(tmp_path), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    rows = parse_table(finished.stdout)
    assert [row["images"] for row in rows] == [str(size) for size in scale.QUICK_SIZES]
    assert set(rows[0]) == set(scale.COLUMNS)
    for row in rows:
        assert row["status"] == "ok", row
        assert float(row["prepare_s"]) > 0 and float(row["images_per_s"]) > 0
        assert float(row["disk_GB"]) > 0 and float(row["driver_peak_GiB"]) > 0
        assert float(row["workers_peak_GiB"]) >= float(row["largest_worker_GiB"]) > 0
    assert "machine:" in finished.stdout and "cpus" in finished.stdout
    measured = json.loads(out.read_text())
    assert measured["img_size"] == scale.QUICK_IMG_SIZE and measured["generated_images"] == max(scale.QUICK_SIZES)
    for size, figures in zip(scale.QUICK_SIZES, measured["sizes"]):
        assert figures["images"] == size and figures["status"] == "ok"
        assert figures["n_train"] + figures["n_test"] == size
        assert figures["prepare_s"] > 0 and figures["disk_bytes"] > 0 and figures["wall_s"] > 0
        assert figures["memory"]["driver"] > 0 and figures["memory"]["processes"] > 1
        assert figures["trial_s"] is not None and figures["trial_s"] >= 0
        assert figures["bench_source"] == str(Path(scale.__file__).resolve().parents[1] / "cli.py")  # this checkout
    for size in scale.QUICK_SIZES:  # folders of links into the one pool, kept in --work-dir
        assert len(os.listdir(tmp_path / f"images-{size}" / "class0")) == size // scale.CLASSES
