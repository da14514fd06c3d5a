"""Fine-tuning and continued training: one training loop, objectives, `finetune` and `continue` end to end."""

from cftool.train.finetune import FinetuneJob, FinetuneResult, finetune, prototypes_path, state_path
from cftool.train.loop import TrainingInterrupted, TrainOptions, train

__all__ = [
    "FinetuneJob",
    "FinetuneResult",
    "TrainOptions",
    "TrainingInterrupted",
    "finetune",
    "prototypes_path",
    "state_path",
    "train",
]
