"""ConDU's inference (docs/design.md §5.3): prototypes -> top-K experts, each run only on its images.

Without a task id, a test image with zero-shot feature ``f`` scores each task of the unified set by
``max_c cos(f, p_{j,c})`` over that task's class prototypes; the K best tasks' experts and the zero-shot model each
give ``100 · norm(img_e) · W_eᵀ``, with ``W_e`` the label space's zero-shot head under expert ``e``'s text tower,
and the prediction is the argmax of their mean. Each expert that some image selects is rebuilt once (through the
adapters registry, decouple's rule) and encodes only the images routed to it, in batches. With a task id, that
task's expert alone answers.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from cftool.data import TaskData
from cftool.encode.zero_shot import LabelSpace, encode_images, zero_shot_head
from cftool.errors import CftoolError
from cftool.io.checkpoint import check_base, open_checkpoint
from cftool.io.header import PROTOTYPES_KIND, PROTOTYPES_TENSOR
from cftool.io.unified import UnifiedSet
from cftool.kinds.apply import BaseState, expert_applied
from cftool.metrics import top1_accuracy
from cftool.options import EVAL_BATCH_SIZE, TOP_K, WORKERS
from cftool.zoo import ZooModel

# The reference scores every member with CLIP's logit scale of 100 (whatever the model's own): the members share
# it, so it changes the mean's scale, never its argmax.
LOGIT_SCALE = 100.0
ZERO_SHOT_MEMBER = "zero-shot"


def routing_scores(features: torch.Tensor, prototypes: Sequence[torch.Tensor]) -> torch.Tensor:
    """[n, tasks]: ``score_j = max_c cos(f, p_{j,c})`` of each image feature against each task's class prototypes
    ([classes_j, dim] each)."""
    images = F.normalize(features.float(), dim=-1)
    per_task = [(images @ F.normalize(p.float(), dim=-1).T).max(dim=1).values for p in prototypes]
    return torch.stack(per_task, dim=1)


def top_tasks(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[n, min(k, tasks)] task indices by descending score; of equal scores, the earlier task (in the unified set's
    order) comes first, so a tie never depends on the sort's implementation."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


@dataclass
class Passes:
    """Images each member encoded, and the expert forward passes (batches) that took: what routing saves."""

    images: dict[str, int] = field(default_factory=dict)
    expert_batches: int = 0

    def counter(self, member: str) -> Callable[[int], None]:
        self.images.setdefault(member, 0)

        def advance(n: int) -> None:
            self.images[member] += n
            if member != ZERO_SHOT_MEMBER:
                self.expert_batches += 1

        return advance

    @property
    def expert_images(self) -> int:
        return sum(n for member, n in self.images.items() if member != ZERO_SHOT_MEMBER)


@dataclass(frozen=True)
class Members:
    """Who answers: the unified set, the routed task indices per image ([n, k]), and whether the zero-shot model
    joins the mean."""

    unified: UnifiedSet
    routed: torch.Tensor
    include_zero_shot: bool = True

    @property
    def count(self) -> int:
        return self.routed.shape[1] + int(self.include_zero_shot)


def _member_logits(
    zoo: ZooModel,
    images: Dataset,
    label_space: LabelSpace,
    batch_size: int,
    workers: int,
    advance: Callable[[int], None],
) -> torch.Tensor:
    features, _ = encode_images(zoo, images, batch_size, workers, advance)
    return LOGIT_SCALE * features @ label_space.head(zoo)


def _zero_shot_share(zoo: ZooModel, members: Members, features: torch.Tensor, label_space: LabelSpace) -> torch.Tensor:
    """[n, classes]: the zero-shot model's logits where it is a member, zeros otherwise (the sum the experts add to)."""
    if not members.include_zero_shot:
        return torch.zeros(len(features), len(label_space))
    return LOGIT_SCALE * features @ label_space.head(zoo)


def route_logits(
    zoo: ZooModel,
    members: Members,
    images: Dataset,
    zero_shot_features: torch.Tensor,
    label_space: LabelSpace,
    base_state: BaseState,
    batch_size: int = 256,
    workers: int = 0,
    passes: Passes | None = None,
) -> torch.Tensor:
    """[n, classes] mean logits of each image's members over ``label_space``. ``zoo`` holds the base weights
    (``base_state``), to which it returns; each routed expert is rebuilt once and encodes only its images."""
    passes = passes if passes is not None else Passes()
    total = _zero_shot_share(zoo, members, zero_shot_features, label_space)
    for index in torch.unique(members.routed).tolist():
        rows = (members.routed == index).any(dim=1).nonzero().squeeze(1)
        task = members.unified.task_names[index]
        with expert_applied(zoo, members.unified, base_state, task):
            subset = Subset(images, rows.tolist())
            total[rows] += _member_logits(zoo, subset, label_space, batch_size, workers, passes.counter(task))
    return total / members.count


def every_expert_route_logits(
    zoo: ZooModel,
    members: Members,
    images: Dataset,
    zero_shot_features: torch.Tensor,
    label_space: LabelSpace,
    base_state: BaseState,
    batch_size: int = 256,
    workers: int = 0,
    passes: Passes | None = None,
) -> torch.Tensor:
    """What ``route_logits`` must equal, the plain way: every expert of the set on every image, then each image's
    members selected and averaged. Tasks + 1 passes over the images; `benchmarks/route_cost.py` compares the two."""
    passes = passes if passes is not None else Passes()
    total = _zero_shot_share(zoo, members, zero_shot_features, label_space)
    for index, task in enumerate(members.unified.task_names):
        with expert_applied(zoo, members.unified, base_state, task):
            logits = _member_logits(zoo, images, label_space, batch_size, workers, passes.counter(task))
        chosen = (members.routed == index).any(dim=1)
        total[chosen] += logits[chosen]
    return total / members.count


def prototype_files(patterns: Sequence[str]) -> list[Path]:
    """The files the `--prototypes` patterns (globs, or plain file names) match, each once, in name order."""
    files = sorted({Path(name) for pattern in patterns for name in glob.glob(pattern)})
    if not files:
        shown = " ".join(repr(p) for p in patterns) or "(none given)"
        raise CftoolError(
            f"--prototypes {shown}: matches no file, so there is nothing to route by; name the TASK.prototypes."
            "safetensors files that finetune writes beside its checkpoints (quote the pattern)"
        )
    return files


@dataclass(frozen=True)
class TaskPrototypes:
    """One task's class prototypes [classes, embed_dim], with what their file records of the fine-tune behind them."""

    path: Path
    prototypes: torch.Tensor
    classnames: list[str] | None
    run: str | None


def read_prototypes(
    files: Sequence[Path], zoo: ZooModel, base_sha256: str, embed_dim: int
) -> dict[str, TaskPrototypes]:
    """Class prototypes by task, from `prototypes` files made for the base in use: [classes, embed_dim] each (NaN or
    Inf refused as they are read: a NaN score would route every image to the same task)."""
    by_task: dict[str, TaskPrototypes] = {}
    for path in files:
        with open_checkpoint(
            path, kind=PROTOTYPES_KIND, base_sha256=base_sha256, base=zoo.spec.canonical, base_arch=zoo.architecture
        ) as ckpt:
            header = ckpt.header
            if header.task is None:
                raise CftoolError(f"{path}: a prototypes file that names no task (cftool.task); re-create it")
            if header.task in by_task:
                raise CftoolError(
                    f"{path}: a second prototypes file of task {header.task!r} (the first: "
                    f"{by_task[header.task].path}); give patterns that match one file per task"
                )
            prototypes = ckpt[PROTOTYPES_TENSOR]
        if prototypes.dim() != 2 or prototypes.shape[1] != embed_dim:
            raise CftoolError(
                f"{path}: expected prototypes [classes, {embed_dim}] for the base {zoo.spec.canonical}, "
                f"found {list(prototypes.shape)}"
            )
        by_task[header.task] = TaskPrototypes(path, prototypes.float(), header.classnames, header.run)
    return by_task


def prototypes_of(unified: UnifiedSet, known: Mapping[str, TaskPrototypes]) -> list[torch.Tensor]:
    """The prototypes of every task of a unified set, in its order; a task without them is refused, and so are
    prototypes of another fine-tune than the task's expert (another run, or other classes): a checkpoint and its
    prototypes are replaced one after the other, and a run killed in between must not pair the new with the old.
    Files that record no run (written before runs were recorded, or imported) are paired by task and classes."""
    missing = [task for task in unified.task_names if task not in known]
    if missing:
        raise CftoolError(
            f"{unified.path}: no prototypes of task(s) {', '.join(missing)} among the --prototypes files (they have "
            f"{', '.join(known) or 'none'}); add the prototypes file finetune wrote for each (a run with "
            "--no-prototypes wrote none: rerun it without)"
        )
    for entry in unified.tasks:
        found = known[entry.task]
        if entry.run is not None and found.run is not None and entry.run != found.run:
            raise CftoolError(
                f"{found.path}: prototypes of another fine-tune of task {entry.task!r} (run {found.run[:12]}) than "
                f"its expert in {unified.path} (run {entry.run[:12]}); give the prototypes file written with that "
                "checkpoint, or rerun finetune to write the pair again"
            )
        n_prototypes = found.prototypes.shape[0]
        if entry.classnames is not None and n_prototypes != len(entry.classnames):
            raise CftoolError(
                f"{unified.path}: task {entry.task!r} has {len(entry.classnames)} classes but its prototypes "
                f"{n_prototypes}; give the prototypes file of the same fine-tune"
            )
        if entry.classnames is not None and found.classnames is not None and entry.classnames != found.classnames:
            raise CftoolError(
                f"{found.path}: prototypes of other classes of task {entry.task!r} than its expert in {unified.path} "
                f"({_first_difference(found.classnames, entry.classnames)}); give the prototypes file of the same "
                "fine-tune"
            )
    return [known[task].prototypes for task in unified.task_names]


def _first_difference(found: Sequence[str], expected: Sequence[str]) -> str:
    if len(found) != len(expected):  # a file whose class names do not count its prototypes
        return f"{len(found)} class names, not {len(expected)}"
    index = next(i for i, (a, b) in enumerate(zip(found, expected, strict=True)) if a != b)
    return f"class {index} is {found[index]!r}, not {expected[index]!r}"


@dataclass
class Routed:
    """Predictions of a unified set on one split: logits, labels, and which tasks' experts answered each image."""

    logits: torch.Tensor
    labels: torch.Tensor
    tasks: list[list[str]]  # per image, the experts whose predictions were averaged (in routing order)
    include_zero_shot: bool
    passes: Passes
    learned: list[str]  # the unified set's tasks

    @property
    def accuracy(self) -> float:
        return top1_accuracy(self.logits, self.labels)

    def routed_to(self, task: str) -> float | None:
        """% of the images whose experts include ``task``'s: the router's hit rate on that task's own images (None
        for a task the set has not learned)."""
        if task not in self.learned:
            return None
        return 100.0 * sum(task in tasks for tasks in self.tasks) / len(self.tasks)


@dataclass(frozen=True)
class RouteOptions:
    top_k: int = TOP_K
    include_zero_shot: bool = True
    batch_size: int = EVAL_BATCH_SIZE
    workers: int = WORKERS

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise CftoolError(f"--top-k must be at least 1 (experts per image), got {self.top_k}")


def route_split(
    zoo: ZooModel,
    unified: UnifiedSet,
    data: TaskData,
    split: str,
    zero_shot_features: torch.Tensor,
    labels: torch.Tensor,
    prototypes: Sequence[torch.Tensor],
    options: RouteOptions,
    base_state: BaseState,
    label_space: LabelSpace | None = None,
) -> Routed:
    """Task-agnostic predictions on ``data``'s ``split``, given the images' zero-shot features, among ``label_space``
    (by default the data's own classes)."""
    label_space = label_space or LabelSpace.own(data)
    routed = top_tasks(routing_scores(zero_shot_features, prototypes), options.top_k)
    members = Members(unified, routed, options.include_zero_shot)
    passes = Passes()
    passes.counter(ZERO_SHOT_MEMBER)(len(labels))  # the zero-shot features are the routing's own
    logits = route_logits(
        zoo,
        members,
        data.split(split, zoo.preprocess),
        zero_shot_features,
        label_space,
        base_state,
        options.batch_size,
        options.workers,
        passes,
    )
    names = unified.task_names
    tasks = [[names[i] for i in row] for row in routed.tolist()]
    return Routed(logits, label_space.labels(labels), tasks, options.include_zero_shot, passes, names)


def expert_split(
    zoo: ZooModel,
    unified: UnifiedSet,
    task: str,
    data: TaskData,
    split: str,
    options: RouteOptions,
    base_state: BaseState,
) -> Routed:
    """With a task id: that task's expert alone on ``data``'s ``split``."""
    passes = Passes()
    with expert_applied(zoo, unified, base_state, task):
        features, labels = encode_images(
            zoo, data.split(split, zoo.preprocess), options.batch_size, options.workers, passes.counter(task)
        )
        logits = LOGIT_SCALE * features @ zero_shot_head(zoo, data.classnames, data.templates)
    return Routed(logits, labels, [[task]] * len(labels), False, passes, unified.task_names)


def predict(
    zoo: ZooModel,
    unified: UnifiedSet,
    data: TaskData,
    split: str,
    options: RouteOptions,
    task: str | None = None,
    prototype_patterns: Sequence[str] = (),
    advance: Callable[[int], None] = lambda n: None,
) -> Routed:
    """`cftool route`: a unified set's predictions on a dataset, by routing (no ``task``) or by one task's expert.
    ``unified`` is open (`open_unified`, its kind and structure checked); here it is checked against ``zoo``'s base."""
    check_base(unified.path, unified.header, zoo.weights_sha256, zoo.spec.canonical, zoo.architecture)
    base_state = BaseState(zoo)
    if task is not None:
        unified.task_index(task)  # an unknown task is refused before any work
        return expert_split(zoo, unified, task, data, split, options, base_state)
    embed_dim = zoo.model.text_projection.shape[-1]
    known = read_prototypes(prototype_files(prototype_patterns), zoo, zoo.weights_sha256, embed_dim)
    prototypes = prototypes_of(unified, known)
    features, labels = encode_images(
        zoo, data.split(split, zoo.preprocess), options.batch_size, options.workers, advance
    )
    return route_split(zoo, unified, data, split, features, labels, prototypes, options, base_state)
