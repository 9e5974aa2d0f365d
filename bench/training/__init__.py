"""The shared transfer-learning core: one trial is one function call, ``run_trial(config)``.

Plain PyTorch: no Ray, no Parquet, no command line. ``trial`` runs a trial; ``record`` turns what it measured
into its row; ``loop`` is the one training loop and evaluation; ``phases`` picks the cached path where it is
exact; ``compiled`` runs its forward passes through ``torch.compile``; ``batch_size`` probes a card.
"""

from bench.training.device import device_name, resolve_device
from bench.training.inputs import EVAL_BATCH_SIZE, Augment, Split, select_indices
from bench.training.loop import EpochLosses, FitOutcome, Validation, evaluate, fit, phase_steps, predict, training_loss
from bench.training.phases import Phase, PhaseSetup, ShortBatchRows, phase_setup, plan_phases
from bench.training.record import TrialRecord
from bench.training.similarity import clear_similarity_cache, measure_similarity
from bench.training.trial import TrialResult, load_dataset, run_trial

__all__ = [
    "EVAL_BATCH_SIZE",
    "Augment",
    "EpochLosses",
    "FitOutcome",
    "Phase",
    "PhaseSetup",
    "ShortBatchRows",
    "Split",
    "TrialRecord",
    "TrialResult",
    "Validation",
    "clear_similarity_cache",
    "device_name",
    "evaluate",
    "fit",
    "load_dataset",
    "measure_similarity",
    "phase_setup",
    "phase_steps",
    "plan_phases",
    "predict",
    "resolve_device",
    "run_trial",
    "select_indices",
    "training_loss",
]
