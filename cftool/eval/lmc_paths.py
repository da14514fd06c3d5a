"""Linear paths between two checkpoints of one kind, or between the zero-shot model (``zs``) and a checkpoint.

A point at α is ``(1 − α)·A + α·B`` in the kind's path space, the same space MergeTune's objective uses:

* ``prompt``: class text features (a prompt scores any class names, so a path does too), each point normalised;
  between two prompts the text encoder's unnormalised outputs are interpolated, as MergeTune's path does
  (trainers/kgcoop_coop_LMC.py:512-517, normalised at :405); with the zero-shot model at an end (a mean of unit
  template features, with no unnormalised counterpart) or a prompt mixed with the zero-shot head, unit features;
* ``head``: head weights (the zero-shot end is the zero-shot head, unit rows);
* ``model`` and ``lora``: the weights (a LoRA's merged weights; the zero-shot end is the base).

`eval --path` measures loss and accuracy along a path; `interpolate` writes one point as a checkpoint of the
same kind (WiSE-FT): weights and heads directly, LoRA factors exactly (B scaled, or the factors of both ends
side by side), and a prompt as its context plus the weight of the zero-shot head it is mixed with. Each kind's
method says how (``path_heads`` or ``weights_of``, ``renormalised_path``, ``interpolated``, in ``cftool.kinds``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cftool.data import TaskData
from cftool.encode.zero_shot import zero_shot_head
from cftool.errors import CftoolError
from cftool.eval.compare import ZERO_SHOT, FeatureCache, halves_of, split_label
from cftool.io.checkpoint import CheckpointReader, Header, open_checkpoint, save_checkpoint
from cftool.kinds.apply import TRAINED_KINDS
from cftool.kinds.method import TowerMethod, interpolate_weights
from cftool.merge.precision import refuse_scale_overflow
from cftool.merge.stream import refuse_overflow
from cftool.metrics import loss_barrier
from cftool.zoo import ZooModel

# The kinds fine-tuning writes, each with a path space; a delta or an expert is a `model` once applied (`delta apply`,
# `decouple --as model`).
PATH_KINDS = tuple(TRAINED_KINDS)


def path_alphas(steps: int) -> list[float]:
    if steps < 2:
        raise CftoolError(f"--steps must be at least 2 (the two ends), got {steps}")
    return [round(i / (steps - 1), 6) for i in range(steps)]


@dataclass(frozen=True)
class Endpoint:
    """One end of a path: a checkpoint file, or the zero-shot model (``path`` None)."""

    path: Path | None
    kind: str | None

    @property
    def file(self) -> str | None:
        return None if self.path is None else str(self.path)

    @property
    def label(self) -> str:
        return self.file or ZERO_SHOT


def endpoints(a: str, b: str, base_sha256: str, base_arch: dict | None) -> tuple[Endpoint, Endpoint, str]:
    """The two ends and the path's kind; refuses two zero-shot ends, kinds that differ and kinds with no path."""
    ends = []
    for spec in (a, b):
        if spec == ZERO_SHOT:
            ends.append(Endpoint(None, None))
            continue
        with open_checkpoint(spec, kind=PATH_KINDS, base_sha256=base_sha256, base_arch=base_arch) as ckpt:
            ends.append(Endpoint(Path(spec), ckpt.header.kind))
    kinds = {end.kind for end in ends if end.kind is not None}
    if not kinds:
        raise CftoolError("--path zs zs: both ends are the zero-shot model; name a checkpoint for at least one end")
    if len(kinds) > 1:
        raise CftoolError(
            f"--path {a} {b}: the ends are a {ends[0].kind!r} and a {ends[1].kind!r} checkpoint; a path joins two "
            "checkpoints of the same kind, or the zero-shot model (zs) and a checkpoint"
        )
    return ends[0], ends[1], kinds.pop()


@dataclass
class Curve:
    task: str
    classes: str
    alphas: list[float]
    loss: list[float]
    accuracy: list[float]

    def report(self) -> dict:
        """The curve in `eval --path`'s report, with its maximum loss and its loss barrier (see ``loss_barrier``)."""
        barrier, barrier_alpha = loss_barrier(self.alphas, self.loss)
        return {
            "task": self.task,
            "classes": self.classes,
            "loss": self.loss,
            "accuracy": self.accuracy,
            "max_loss": max(self.loss),
            "barrier": barrier,
            "barrier_alpha": barrier_alpha,
        }


@torch.no_grad()
def evaluate_path(
    zoo: ZooModel,
    a: Endpoint,
    b: Endpoint,
    kind: str,
    tasks: list[TaskData],
    alphas: list[float],
    split: str,
    cache: FeatureCache,
) -> list[Curve]:
    """Loss (cross-entropy at the model's logit scale) and top-1 accuracy at each α, for each task."""
    method = TRAINED_KINDS[kind]
    if method.changes_weights:
        return _weights_path(zoo, method, a, b, tasks, alphas, split, cache)
    with _opened(a, b) as readers:
        heads = method.path_heads(zoo, readers)
    curves = []
    for task in tasks:
        features, labels = cache.get(task, split, base_weights=True)
        ends = [head(zoo, task.classnames, task.templates) for head in heads]
        curve = Curve(task.name, task.spec.classes, alphas, [], [])
        for alpha in alphas:
            _score(zoo, curve, features, labels, mix_heads(ends[0], ends[1], alpha, method.renormalised_path))
        curves.append(curve)
    return curves


def path_report(
    zoo: ZooModel,
    a: str,
    b: str,
    tasks: list[TaskData],
    base2new: bool,
    steps: int,
    split: str,
    cache: FeatureCache,
    base_sha256: str,
) -> dict:
    """`eval --path`'s report: the ends (``LABEL=FILE`` names one by LABEL, as a column of a table), their files
    (None for zs), the α grid and each task's (or class half's) curves with their maximum loss and loss barrier."""
    (label_a, a), (label_b, b) = split_label(a), split_label(b)
    start, end, kind = endpoints(a, b, base_sha256, zoo.architecture)
    parts = [half for task in tasks for half in halves_of(task)] if base2new else tasks
    curves = evaluate_path(zoo, start, end, kind, parts, path_alphas(steps), split, cache)
    return {
        "path": {
            "a": label_a or start.label,
            "b": label_b or end.label,
            "kind": kind,
            "files": {"a": start.file, "b": end.file},
        },
        "alphas": curves[0].alphas,
        "curves": [curve.report() for curve in curves],
    }


def mix_heads(a: torch.Tensor, b: torch.Tensor, alpha: float, renormalise: bool) -> torch.Tensor:
    """``(1 − α)·a + α·b`` of two [embed_dim, n_classes] heads; columns renormalised for cosine (text) heads."""
    mixed = torch.lerp(a, b, alpha)
    return F.normalize(mixed, dim=0) if renormalise else mixed


def _score(zoo: ZooModel, curve: Curve, features: torch.Tensor, labels: torch.Tensor, head: torch.Tensor) -> None:
    logits = zoo.model.logit_scale.exp().item() * features @ head
    curve.loss.append(F.cross_entropy(logits, labels).item() if len(labels) else math.nan)
    curve.accuracy.append((logits.argmax(dim=-1) == labels).float().mean().item() * 100 if len(labels) else math.nan)


@contextmanager
def _opened(*ends: Endpoint) -> Iterator[list[CheckpointReader | None]]:
    """Each end's checkpoint opened for the block (None for the zero-shot model)."""
    with ExitStack() as stack:
        yield [stack.enter_context(open_checkpoint(end.path)) if end.path is not None else None for end in ends]


def _weights_path(
    zoo: ZooModel,
    method: type[TowerMethod],
    a: Endpoint,
    b: Endpoint,
    tasks: list[TaskData],
    alphas: list[float],
    split: str,
    cache: FeatureCache,
) -> list[Curve]:
    base = {name: t.clone() for name, t in zoo.model.state_dict().items()}
    with _opened(a, b) as readers:
        ends = [method.weights_of(base, reader) if reader is not None else base for reader in readers]
    curves = {task.name: Curve(task.name, task.spec.classes, alphas, [], []) for task in tasks}
    try:
        for alpha in alphas:
            zoo.load_state_dict(interpolate_weights(ends[0], ends[1], alpha), f"the path point at α = {alpha}")
            for task in tasks:
                features, labels = cache.get(task, split, base_weights=False)
                _score(zoo, curves[task.name], features, labels, zero_shot_head(zoo, task.classnames, task.templates))
    finally:
        zoo.load_state_dict(base, zoo.spec.canonical)
    return list(curves.values())


def check_alpha(alpha: float, output: Path) -> None:
    """Weights are interpolated in float32, where an α it cannot hold is Inf."""
    if not math.isfinite(alpha):
        raise CftoolError(f"--alpha must be a finite number, got {alpha}")
    refuse_scale_overflow("--alpha", alpha, [torch.float32], output)


def interpolate(zoo: ZooModel, a: str, b: str, alpha: float, output: Path, overwrite: bool) -> Path:
    """Write the point ``(1 − α)·A + α·B`` of the path as a checkpoint of the ends' kind."""
    check_alpha(alpha, output)
    start, end, kind = endpoints(a, b, zoo.weights_sha256, zoo.architecture)
    readers = [open_checkpoint(e.path) if e.path is not None else None for e in (start, end)]
    try:
        template = next(r for r in reversed(readers) if r is not None)
        tensors, extra_config = TRAINED_KINDS[kind].interpolated(zoo, readers, alpha)
        for name, tensor in tensors.items():  # finite ends, far beyond them, can leave float32's range
            refuse_overflow(tensor, output, name, f"use an --alpha closer to [0, 1] than {alpha:g}")
        config = {**(template.header.config or {}), **extra_config, "interpolated": {"a": a, "b": b, "alpha": alpha}}
        header = Header(
            kind=kind,
            base=template.header.base,
            base_sha256=zoo.weights_sha256,
            base_arch=zoo.architecture,
            base_preprocess=zoo.hub_preprocess,
            task=template.header.task,
            classnames=template.header.classnames,
            template=template.header.template,
            method="interpolate",
            config=config,
            run=template.header.run,
        )
        return save_checkpoint(output, tensors, header, overwrite=overwrite)
    finally:
        for reader in readers:
            if reader is not None:
                reader.close()
