"""Fine-tuning: the methods (CoOp prompts, linear head, LoRA, full), one shared training loop, objectives, prototypes."""

from cftool.train.adapters import ADAPTERS, apply_checkpoint
from cftool.train.finetune import FinetuneJob, FinetuneResult, finetune, prototypes_path, state_path
from cftool.train.loop import TrainingInterrupted, TrainOptions, train
from cftool.train.methods import METHODS, Method, build_method
from cftool.train.prototypes import class_prototypes

__all__ = [
    "ADAPTERS",
    "METHODS",
    "FinetuneJob",
    "FinetuneResult",
    "Method",
    "TrainOptions",
    "TrainingInterrupted",
    "apply_checkpoint",
    "build_method",
    "class_prototypes",
    "finetune",
    "prototypes_path",
    "state_path",
    "train",
]
