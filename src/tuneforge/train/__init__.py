"""The training stage: a prepared dataset in, a servable, self-describing adapter directory out."""

from tuneforge.train._preflight import MemoryEstimate, Preflight
from tuneforge.train._progress import ProgressFn, TrainProgress
from tuneforge.train._train import TrainResult, train

__all__ = [
    "MemoryEstimate",
    "Preflight",
    "ProgressFn",
    "TrainProgress",
    "TrainResult",
    "train",
]
