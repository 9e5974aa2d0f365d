"""Datasets: the registry of named datasets, their one-off preparation, and the canonical splits."""

from bench.data.prepare import PreparedDataset, contents_digest, dataset_fingerprint, prepare_dataset
from bench.data.registry import (
    GROUPS,
    IMAGEFOLDER_PREFIX,
    DatasetEntry,
    check_dataset_name,
    dataset_group,
    entry_as_dict,
    list_datasets,
)
from bench.data.splits import HELDOUT_SPLIT_SEED, HELDOUT_TEST_FRACTION, split_train_val, stratified_subset

__all__ = [
    "GROUPS",
    "HELDOUT_SPLIT_SEED",
    "HELDOUT_TEST_FRACTION",
    "IMAGEFOLDER_PREFIX",
    "DatasetEntry",
    "PreparedDataset",
    "check_dataset_name",
    "contents_digest",
    "dataset_fingerprint",
    "dataset_group",
    "entry_as_dict",
    "list_datasets",
    "prepare_dataset",
    "split_train_val",
    "stratified_subset",
]
