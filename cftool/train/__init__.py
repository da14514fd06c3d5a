"""Fine-tuning: the methods (CoOp prompts, linear head, LoRA, full), one shared training loop, prototypes."""

from cftool.train.finetune import FinetuneJob, FinetuneResult, finetune, prototypes_path, state_path
from cftool.train.loop import TrainingInterrupted, TrainOptions, train
from cftool.train.methods import EVAL_KINDS, METHODS, Method, build_method, load_for_eval
from cftool.train.prototypes import class_prototypes

__all__ = [
    "EVAL_KINDS",
    "METHODS",
    "FinetuneJob",
    "FinetuneResult",
    "Method",
    "TrainOptions",
    "TrainingInterrupted",
    "build_method",
    "class_prototypes",
    "finetune",
    "load_for_eval",
    "prototypes_path",
    "state_path",
    "train",
]
