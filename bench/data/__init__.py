"""Datasets: the registry of named datasets, their one-off preparation, and the canonical splits."""

from bench.data.names import HF_PREFIX, IMAGEFOLDER_PREFIX, display_name
from bench.data.prepare import PreparedDataset, dataset_fingerprint, folder_digest, prepare_dataset
from bench.data.registry import (
    DATASETS,
    GROUPS,
    MIN_CLASSES,
    DatasetEntry,
    TooFewClasses,
    add_dataset,
    check_dataset_name,
    check_dataset_source,
    dataset_group,
    entry_as_dict,
    list_datasets,
)
from bench.data.splits import HELDOUT_SPLIT_SEED, HELDOUT_TEST_FRACTION, split_train_val, stratified_subset

__all__ = [
    "DATASETS",
    "GROUPS",
    "HELDOUT_SPLIT_SEED",
    "HELDOUT_TEST_FRACTION",
    "HF_PREFIX",
    "IMAGEFOLDER_PREFIX",
    "MIN_CLASSES",
    "DatasetEntry",
    "PreparedDataset",
    "TooFewClasses",
    "add_dataset",
    "check_dataset_name",
    "check_dataset_source",
    "dataset_fingerprint",
    "dataset_group",
    "display_name",
    "entry_as_dict",
    "folder_digest",
    "list_datasets",
    "prepare_dataset",
    "split_train_val",
    "stratified_subset",
]
