"""Public face of the embedded toy world (`toyworld`) and its eleven tasks (`toytasks`)."""

from cftool.data.toytasks import HELDOUT_TASK, TOY_TASKS, ToyTask, heldout_examples
from cftool.data.toyworld import IMAGE_SIZE, pretraining_example

__all__ = ["HELDOUT_TASK", "IMAGE_SIZE", "TOY_TASKS", "ToyTask", "heldout_examples", "pretraining_example"]
