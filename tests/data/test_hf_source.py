"""The ``hf:`` dataset source, the two-class rule and dataset display names.

The Hugging Face datasets are written by the tests themselves (``save_to_disk`` of real blood-cell images from
/work/shared/data, or small class folders for the imagefolder builder); nothing is downloaded: a Hub id that
is not cached is refused offline.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, REPO, bench, bench_env, make_row, require, require_module, write_run, write_suite
from PIL import Image

from bench.config import TrialConfig
from bench.data import TooFewClasses, check_dataset_name, dataset_fingerprint, display_name, prepare_dataset
from bench.data.decode import resize_center_crop
from bench.data.names import parse_dataset_name, with_options
from bench.data.splits import HELDOUT_SPLIT_SEED, HELDOUT_TEST_FRACTION
from bench.errors import UserError
from bench.results.schema import trial_row
from bench.results.store import load_runs

try:
    import datasets
except ImportError:  # the autouse fixture below says so: a skip here, a failure under CI
    datasets = None


@pytest.fixture(scope="module", autouse=True)
def _datasets_installed() -> None:
    require_module("datasets")


PBC = DATA / "pbc_blood_cells"
CLASSES = ["basophil", "eosinophil", "lymphocyte"]


def _cell_images(per_class: int) -> dict[str, list[Path]]:
    require(PBC.is_dir(), f"test images not found at {PBC} (BENCH_DATA={DATA})")
    return {c: sorted((PBC / c).iterdir())[:per_class] for c in CLASSES}


def _table(files: dict[str, list[Path]], offset: int = 0) -> dict[str, list]:
    rows = [(Image.open(f).convert("RGB"), i, c) for i, c in enumerate(CLASSES) for f in files[c]]
    return {
        "picture": [r[0] for r in rows],
        "cell": [r[1] for r in rows],
        "cell_name": [r[2] for r in rows],
        "coarse": [r[1] % 2 for r in rows],
        "id": list(range(offset, offset + len(rows))),
    }


def _features() -> datasets.Features:
    return datasets.Features(
        {
            "id": datasets.Value("int64"),
            "picture": datasets.Image(),
            "cell": datasets.ClassLabel(names=CLASSES),
            "cell_name": datasets.Value("string"),
            "coarse": datasets.ClassLabel(names=["even", "odd"]),
        }
    )


def save_cells(folder: Path, *, train: int = 8, test: int | None = 3) -> Path:
    """A DatasetDict (train, and test unless None) of real blood-cell images written with save_to_disk."""
    files = _cell_images(train + (test or 0))
    train_files = {c: f[:train] for c, f in files.items()}
    parts = {"train": datasets.Dataset.from_dict(_table(train_files), features=_features())}
    if test is not None:
        test_files = {c: f[train:] for c, f in files.items()}
        parts["test"] = datasets.Dataset.from_dict(_table(test_files, offset=1000), features=_features())
    datasets.DatasetDict(parts).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_cells(tmp_path_factory.mktemp("hf") / "cells_hf")


# ---------------------------------------------------------------------------------------------------------
# load_from_disk folders


def test_a_saved_dataset_dict_keeps_its_splits_labels_and_class_names(cells: Path) -> None:
    data = prepare_dataset(f"hf:{cells}", 32)
    assert data.classes == CLASSES
    assert data.x_train.shape == (24, 3, 32, 32) and data.x_test.shape == (9, 3, 32, 32)
    assert data.y_train.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert data.y_test.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert data.meta["split"] == "official" and data.meta["hf_train_splits"] == ["train"]
    assert (data.meta["image_column"], data.meta["label_column"]) == ("picture", "cell")  # first Image, ClassLabel
    # the pixels are the file's pixels, decoded as every other source decodes them
    first = Image.open(sorted((PBC / "basophil").iterdir())[0]).convert("RGB")
    assert np.array_equal(data.x_train[0], resize_center_crop(first, 32))


def test_columns_and_splits_are_options_and_part_of_the_data_key(cells: Path) -> None:
    by_name = prepare_dataset(f"hf:{cells}?label_column=cell_name", 32)
    assert by_name.classes == sorted(CLASSES)  # a string column: its sorted values are the classes
    coarse = prepare_dataset(f"hf:{cells}?label_column=coarse", 32)
    assert coarse.classes == ["even", "odd"] and set(coarse.y_train.tolist()) == {0, 1}
    assert coarse.fingerprint != prepare_dataset(f"hf:{cells}", 32).fingerprint
    # train on both splits, hold a seeded quarter out: the note every dataset without a test split carries
    merged = prepare_dataset(f"hf:{cells}?train_split=train%2Btest", 32)
    assert merged.meta["split"] == "seeded held-out test split"
    assert merged.meta["test_fraction"] == HELDOUT_TEST_FRACTION and merged.meta["split_seed"] == HELDOUT_SPLIT_SEED
    assert len(merged.y_train) + len(merged.y_test) == 33
    # display options change neither the data nor its fingerprint
    assert dataset_fingerprint(f"hf:{cells}?display_name=cells&group=specialized", 32) == dataset_fingerprint(
        f"hf:{cells}", 32
    )
    for option, message in [
        ("label_column=nope", "label_column 'nope' is not a column"),
        ("image_column=cell", "image_column 'cell' is not an Image feature"),
        ("test_split=validation", "test_split 'validation' is not a split"),
        ("label_column=id&image_column=picture&train_split=train&test_split=train", "both train and test"),
        ("colour=red", "unknown option 'colour'"),
    ]:
        with pytest.raises(UserError, match=message):
            prepare_dataset(f"hf:{cells}?{option}", 32)


def test_a_single_dataset_gets_the_seeded_held_out_split(tmp_path: Path) -> None:
    files = _cell_images(8)
    datasets.Dataset.from_dict(_table(files), features=_features()).save_to_disk(str(tmp_path / "one"))
    data = prepare_dataset(f"hf:{tmp_path / 'one'}", 16)
    assert data.meta["split"] == "seeded held-out test split"
    assert len(data.y_train) == 18 and len(data.y_test) == 6  # a quarter of each class


def test_the_fingerprint_follows_the_files(tmp_path: Path) -> None:
    folder = save_cells(tmp_path / "cells", train=4, test=2)
    cache = tmp_path / "cache"
    first = prepare_dataset(f"hf:{folder}", 16, cache_dir=cache)
    assert dataset_fingerprint(f"hf:{folder}", 16) == first.fingerprint  # nothing changed: same key
    again = prepare_dataset(f"hf:{folder}", 16, cache_dir=cache)
    assert again.fingerprint == first.fingerprint and again.meta["cache_path"] == first.meta["cache_path"]
    # the same folder, rewritten with one image fewer: a new key, prepared again
    shutil.rmtree(folder)
    save_cells(folder, train=3, test=2)
    changed = prepare_dataset(f"hf:{folder}", 16, cache_dir=cache)
    assert changed.fingerprint != first.fingerprint and len(changed.y_train) == 9
    # a file touched (same bytes, new mtime) also counts: the digest is of the files, not of a claim
    arrow = next(folder.glob("train/*.arrow"))
    os.utime(arrow, ns=(arrow.stat().st_atime_ns, arrow.stat().st_mtime_ns + 10**9))
    assert dataset_fingerprint(f"hf:{folder}", 16) != changed.fingerprint


def test_a_relative_folder_is_taken_from_root(cells: Path) -> None:
    assert prepare_dataset(f"hf:./{cells.name}", 16, root=str(cells.parent)).classes == CLASSES


# ---------------------------------------------------------------------------------------------------------
# the imagefolder builder and Hub ids


def test_the_imagefolder_builder_reads_class_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    files = _cell_images(4)
    for name in ("eosinophil", "basophil"):
        (tmp_path / "folder" / name).mkdir(parents=True)
        for f in files[name]:
            shutil.copy(f, tmp_path / "folder" / name / f.name)
    data = prepare_dataset(f"hf:imagefolder:{tmp_path / 'folder'}", 16)
    assert data.classes == ["basophil", "eosinophil"]
    assert len(data.y_train) + len(data.y_test) == 8 and data.meta["split"] == "seeded held-out test split"
    assert display_name(f"hf:imagefolder:{tmp_path / 'folder'}") == "folder"


def test_a_hub_id_is_never_downloaded_unless_asked(tmp_path: Path) -> None:
    import huggingface_hub.constants

    before = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    name = "hf:bench-tests/surely-not-cached"
    with pytest.raises(UserError, match="not-cached.*set download: true to fetch it"):
        prepare_dataset(name, 16, root=str(tmp_path / "hub-cache"))
    assert before == (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    assert display_name(name) == "surely-not-cached"
    assert "revision" in parse_dataset_name(f"{name}?revision=abc").data_options()


def test_a_missing_datasets_package_is_one_line_and_exit_2(tmp_path: Path, cells: Path) -> None:
    suite = write_suite(tmp_path, datasets=f'["hf:{cells}"]')
    code = "import sys; sys.modules['datasets'] = None; from bench.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, "validate", str(suite)], capture_output=True, text=True, env=bench_env(), cwd=REPO
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert "needs its package: pip install 'bench[hf]'" in done.stderr


# ---------------------------------------------------------------------------------------------------------
# suites: options as keys, validation, a trial


def test_suite_keys_fold_into_the_name_and_bad_columns_stop_validation(tmp_path: Path, cells: Path) -> None:
    good = write_suite(
        tmp_path, name="good", datasets=f'[{{name: "hf:{cells}", label_column: coarse, display_name: cells}}]'
    )
    done = bench("validate", good)
    assert done.returncode == 0, done.stderr
    from bench.suite.suite import load_suite

    suite = load_suite(good)
    assert {t.dataset for t in suite.trials()} == {f"hf:{cells}?display_name=cells&label_column=coarse"}
    bad = write_suite(tmp_path, name="bad", datasets=f'[{{name: "hf:{cells}", label_column: fine_label}}]')
    done = bench("validate", bad)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "label_column 'fine_label' is not a column (columns: picture, cell, cell_name, coarse, id)" in done.stderr


def test_a_trial_runs_on_a_saved_dataset(cells: Path, tmp_path: Path) -> None:
    from bench import training as core

    config = TrialConfig(
        backbone="efficientnet_lite0",
        dataset=f"hf:{cells}?display_name=cells",
        img_size=32,
        steps=3,
        epochs=None,
        batch_size=8,
        freeze="linear_probe",
        similarity=False,
        cache_dir=str(tmp_path / "cache"),
    )
    row = core.run_trial(config).row
    assert row["status"] == "ok" and row["n_classes"] == 3 and row["n_test"] == 9
    assert row["dataset"] == config.dataset and row["dataset_name"] == "cells"
    assert row["dataset_group"] == "natural" and 0 <= row["metric_top1"] <= 100


# ---------------------------------------------------------------------------------------------------------
# fewer than two classes


def test_one_class_folder_is_refused_at_validation(tmp_path: Path) -> None:
    files = _cell_images(3)
    (tmp_path / "cells" / "basophil").mkdir(parents=True)
    for f in files["basophil"]:
        shutil.copy(f, tmp_path / "cells" / "basophil")
    suite = write_suite(tmp_path, datasets=f'["imagefolder:{tmp_path / "cells"}"]')
    done = bench("validate", suite)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "1 class (basophil); a benchmark needs at least 2" in done.stderr
    with pytest.raises(UserError, match="1 class"):  # and when prepared directly
        prepare_dataset(f"imagefolder:{tmp_path / 'cells'}", 16)


def test_one_class_hf_dataset_is_refused_at_validation(tmp_path: Path, cells: Path) -> None:
    one = datasets.load_from_disk(str(cells)).filter(lambda row: row["cell"] == 0)
    one = one.cast_column("cell", datasets.ClassLabel(names=["basophil"]))
    one.save_to_disk(str(tmp_path / "one"))
    suite = write_suite(tmp_path, datasets=f'["hf:{tmp_path / "one"}"]')
    done = bench("validate", suite)
    assert done.returncode == 2 and "1 class (basophil)" in done.stderr


def test_a_second_class_without_readable_images_is_refused_when_prepared(tmp_path: Path) -> None:
    files = _cell_images(3)
    for name in ("basophil", "eosinophil"):
        (tmp_path / "cells" / name).mkdir(parents=True)
    for f in files["basophil"]:
        shutil.copy(f, tmp_path / "cells" / "basophil")
    (tmp_path / "cells" / "eosinophil" / "broken.jpg").write_bytes(b"not a jpeg")
    name = f"imagefolder:{tmp_path / 'cells'}"
    suite = write_suite(tmp_path, datasets=f'["{name}"]')
    assert bench("validate", suite).returncode == 0  # two class folders: validation cannot tell
    with pytest.warns(UserWarning), pytest.raises(TooFewClasses, match=r"1 class \(basophil\); a benchmark needs"):
        prepare_dataset(name, 16)
    # Through `bench run` (real local Ray): one line and exit 2, as at validation; no row is written.
    done = bench("run", suite, "--out", tmp_path / "out", "--num-cpus", "1", timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("bench: error: ")]
    assert len(errors) == 1 and "1 class (basophil)" in errors[0] and "Traceback" not in done.stderr
    assert not list((tmp_path / "out").rglob("trials.parquet"))


# ---------------------------------------------------------------------------------------------------------
# display names


def test_display_names_default_and_override() -> None:
    assert display_name("cifar10") == "cifar10"
    assert display_name("imagefolder:/data/x/pbc_blood_cells?group=specialized") == "pbc_blood_cells"
    assert display_name("imagefolder:/data/x/pbc_blood_cells/?group=specialized&display_name=cells") == "cells"
    assert display_name("hf:uoft-cs/cifar100?label_column=fine_label") == "cifar100"
    assert display_name("hf:/data/saved/cells_hf") == "cells_hf"
    assert display_name("digits?display_name=digits8") == "digits8"
    assert display_name("myplugin:thing") == "myplugin:thing"  # unknown forms never raise
    check_dataset_name("digits?display_name=digits8")
    assert with_options("imagefolder:/a?group=specialized", {}) == "imagefolder:/a?group=specialized"
    assert with_options("hf:x/y", {"train_split": "train+validation"}) == "hf:x/y?train_split=train+validation"
    row = trial_row(
        TrialConfig(backbone="b", dataset=f"imagefolder:{PBC}?group=specialized"),
        run_id="r",
        status="failed",
        error="x",
        started_at="",
    )
    assert row["dataset"].startswith("imagefolder:/") and row["dataset_name"] == "pbc_blood_cells"


def test_a_display_name_is_not_part_of_the_trial_id() -> None:
    plain = TrialConfig(backbone="b", dataset=f"imagefolder:{PBC}?group=specialized")
    named = dataclasses.replace(plain, dataset=f"imagefolder:{PBC}?group=specialized&display_name=cells")
    assert named.trial_id == plain.trial_id and named.cell_id == plain.cell_id
    assert dataclasses.replace(plain, dataset=f"imagefolder:{PBC}").trial_id != plain.trial_id  # group: as before


def test_two_datasets_with_one_display_name_are_refused(tmp_path: Path, cells: Path) -> None:
    suite = write_suite(
        tmp_path, datasets=f'["imagefolder:{PBC}", {{name: "hf:{cells}", display_name: pbc_blood_cells}}]'
    )
    done = bench("validate", suite)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "datasets[0] and datasets[1] are both displayed as 'pbc_blood_cells'" in done.stderr


def test_an_old_table_without_dataset_name_still_loads(tmp_path: Path) -> None:
    rows = [make_row(dataset=f"imagefolder:{PBC}?group=specialized", seed=s) for s in (0, 1)]
    run = write_run(tmp_path / "old", rows)
    table = pd.read_parquet(run / "trials.parquet")
    assert "dataset_name" not in table  # as written before the column existed
    data = load_runs([run])
    assert data.trials["dataset_name"].tolist() == ["pbc_blood_cells", "pbc_blood_cells"]
    assert not [p for p in data.problems if "dataset_name" in p]
