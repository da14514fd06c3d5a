"""The official recipes of the papers cftool reproduces, as named option sets (`cftool finetune --recipe NAME`).

A recipe is a YAML file beside this module: the command it is for, a one-line summary, where each value was read
in the official code, the command's options (keys are its long flag names), and optionally the learning rates the
official scripts give particular datasets (``lr-by-task``). Values given by ``--config`` or on the command line
win over a recipe's; a per-task learning rate applies only where ``--lr`` comes from the recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from cftool.errors import CftoolError

_FIELDS = {"command", "summary", "reference", "options", "lr-by-task"}


@dataclass(frozen=True)
class Recipe:
    name: str
    command: str  # finetune or continue
    summary: str
    reference: str
    options: dict[str, Any]
    lr_by_task: dict[str, float]

    def lr_for(self, task: str) -> float | None:
        """The learning rate the official scripts give ``task`` (a dataset name such as ``Aircraft``), if any."""
        return self.lr_by_task.get(task)


def recipe_names() -> list[str]:
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in resources.files(__name__).iterdir()
        if entry.name.endswith(".yaml")
    )


def load_recipe(name: str) -> Recipe:
    names = recipe_names()
    if name not in names:
        raise CftoolError(f"--recipe {name!r}: no such recipe; choose one of {', '.join(names)}")
    text = resources.files(__name__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or set(data) - _FIELDS or not {"command", "summary", "options"} <= set(data):
        raise ValueError(f"recipe {name}: expected the keys {sorted(_FIELDS)}")  # a packaging bug, not user input
    lr_by_task = data.get("lr-by-task") or {}
    if not all(isinstance(lr, float) and math.isfinite(lr) and lr > 0 for lr in lr_by_task.values()):
        raise ValueError(f"recipe {name}: lr-by-task values must be positive floats")
    return Recipe(name, data["command"], data["summary"], data.get("reference", ""), data["options"], lr_by_task)
