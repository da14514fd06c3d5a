"""`eval` as one library call: which protocol answers a request (MTIL's matrix over sessions, a linear path between
two checkpoints, or the comparison table of checkpoints over tasks), run with the progress the caller shows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cftool.data import TaskData
from cftool.eval.compare import ZERO_SHOT, FeatureCache, compare
from cftool.eval.lmc_paths import path_report
from cftool.eval.mtil import MtilOptions, mtil_report
from cftool.options import EVAL_BATCH_SIZE, EVAL_SPLIT, PATH_STEPS, WORKERS
from cftool.zoo import ZooModel

# ``begin(description, total)`` starts a progress task and returns its ``advance(n=1)``.
Begin = Callable[[str, int | None], Callable[..., None]]


@dataclass(frozen=True)
class Evaluation:
    """What `eval` was asked: the columns (``zs``, checkpoint files, patterns, folders) on the tasks, or a path
    between two checkpoints, or continual sessions."""

    columns: tuple[str, ...]
    tasks: list[TaskData]
    split: str = EVAL_SPLIT
    base2new: bool = False
    path: tuple[str, str] | None = None
    steps: int = PATH_STEPS
    sessions: tuple[str, ...] = ()
    mtil: MtilOptions | None = None
    cells_folder: Path | None = None  # where measured MTIL cells are kept
    features_folder: Path | None = None  # where the base's image features are kept
    batch_size: int = EVAL_BATCH_SIZE
    workers: int = WORKERS

    @property
    def names_files(self) -> bool:
        """Whether checkpoint files are evaluated, which are paired with the base by its hash (0.5 s on ViT-B/16):
        the zero-shot model alone needs none."""
        return self.path is not None or any(column != ZERO_SHOT for column in self.columns)


def evaluate(zoo: ZooModel, evaluation: Evaluation, begin: Begin) -> dict[str, Any]:
    """The report of the protocol the request names."""
    if evaluation.sessions:
        return mtil_report(
            zoo,
            list(evaluation.columns),
            list(evaluation.sessions),
            evaluation.tasks,
            evaluation.split,
            evaluation.mtil or MtilOptions(),
            evaluation.cells_folder,
            begin,
        )
    # Taken before any checkpoint replaces the base's weights.
    base_sha256 = zoo.weights_sha256 if evaluation.names_files else None
    cache = FeatureCache(
        zoo, evaluation.batch_size, evaluation.workers, begin("encode images", None), evaluation.features_folder
    )
    tasks, base2new, split = evaluation.tasks, evaluation.base2new, evaluation.split
    if evaluation.path is not None:
        return path_report(zoo, *evaluation.path, tasks, base2new, evaluation.steps, split, cache, base_sha256)
    return compare(zoo, list(evaluation.columns) or [ZERO_SHOT], tasks, base2new, split, cache, base_sha256)
