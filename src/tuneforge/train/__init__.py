"""The training stage: a prepared dataset in, a servable, self-describing adapter directory out."""

from tuneforge.train._preflight import MemoryEstimate, Preflight
from tuneforge.train._progress import ProgressFn, TrainProgress
from tuneforge.train._train import TrainResult, train
from tuneforge.train.merge import MergeResult, merge_adapter
from tuneforge.train.tune import TrialRow, TuneResult, tune

__all__ = [
    "MemoryEstimate",
    "MergeResult",
    "Preflight",
    "ProgressFn",
    "TrainProgress",
    "TrainResult",
    "TrialRow",
    "TuneResult",
    "merge_adapter",
    "train",
    "tune",
]
