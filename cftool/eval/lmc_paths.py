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
side by side), and a prompt as its context plus the weight of the zero-shot head it is mixed with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cftool.data import TaskData
from cftool.encode.zero_shot import HeadFn, zero_shot_head
from cftool.errors import CftoolError
from cftool.eval.compare import ZERO_SHOT, FeatureCache, halves_of
from cftool.io.checkpoint import CheckpointReader, Header, open_checkpoint, save_checkpoint
from cftool.kinds.apply import METHODS, apply_checkpoint
from cftool.kinds.method import zero_shot_class_features
from cftool.kinds.prompt import ZERO_SHOT_WEIGHT, CoOp, zero_shot_weight
from cftool.merge.lora import combined_factors, lora_config, merged_lora_state
from cftool.merge.methods import refuse_scale_overflow
from cftool.merge.stream import refuse_overflow
from cftool.zoo import ZooModel

WEIGHT_KINDS = ("model", "lora")
# The kinds fine-tuning writes, each with a path space; a delta or an expert is a `model` once applied (`delta apply`,
# `decouple --as model`).
PATH_KINDS = tuple(method.kind for method in METHODS.values())


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
    def label(self) -> str:
        return ZERO_SHOT if self.path is None else str(self.path)


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

    @property
    def max_loss(self) -> float:
        return max(self.loss)

    @property
    def barrier(self) -> float:
        """Highest loss above the straight line between the ends' losses (0 when the path is convex)."""
        first, last = self.loss[0], self.loss[-1]
        return max(loss - ((1 - a) * first + a * last) for a, loss in zip(self.alphas, self.loss, strict=True))


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
    if kind in WEIGHT_KINDS:
        return _weights_path(zoo, a, b, tasks, alphas, split, cache)
    unnormalised = kind == "prompt" and _both_plain_prompts(a, b)
    heads = [_head_of(zoo, end, unnormalised) for end in (a, b)]
    curves = []
    for task in tasks:
        features, labels = cache.get(task, split, base_weights=True)
        ends = [head(zoo, task.classnames, task.templates) for head in heads]
        curve = Curve(task.name, task.spec.classes, alphas, [], [])
        for alpha in alphas:
            _score(zoo, curve, features, labels, mix_heads(ends[0], ends[1], alpha, renormalise=kind == "prompt"))
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
    """`eval --path`'s report: the ends, the α grid and each task's (or class half's) curves with their maximum
    loss and loss barrier."""
    start, end, kind = endpoints(a, b, base_sha256, zoo.architecture)
    parts = [half for task in tasks for half in halves_of(task)] if base2new else tasks
    curves = evaluate_path(zoo, start, end, kind, parts, path_alphas(steps), split, cache)
    return {
        "path": {"a": start.label, "b": end.label, "kind": kind},
        "alphas": curves[0].alphas,
        "curves": [
            {
                "task": c.task,
                "classes": c.classes,
                "loss": c.loss,
                "accuracy": c.accuracy,
                "max_loss": c.max_loss,
                "barrier": c.barrier,
            }
            for c in curves
        ],  # fmt: skip
    }


def mix_heads(a: torch.Tensor, b: torch.Tensor, alpha: float, renormalise: bool) -> torch.Tensor:
    """``(1 − α)·a + α·b`` of two [embed_dim, n_classes] heads; columns renormalised for cosine (text) heads."""
    mixed = torch.lerp(a, b, alpha)
    return F.normalize(mixed, dim=0) if renormalise else mixed


def _both_plain_prompts(a: Endpoint, b: Endpoint) -> bool:
    """Both ends are prompt files holding only a context (none mixed with the zero-shot head by `interpolate`)."""
    if a.path is None or b.path is None:
        return False
    for end in (a, b):
        with open_checkpoint(end.path) as ckpt:
            if zero_shot_weight(ckpt):
                return False
    return True


def _head_of(zoo: ZooModel, end: Endpoint, unnormalised_prompt: bool = False) -> HeadFn:
    if end.path is None:
        return zero_shot_head
    with open_checkpoint(end.path) as ckpt:
        if unnormalised_prompt:
            return CoOp.of_checkpoint(zoo, ckpt).unnormalised_head
        return apply_checkpoint(zoo, ckpt)


def _score(zoo: ZooModel, curve: Curve, features: torch.Tensor, labels: torch.Tensor, head: torch.Tensor) -> None:
    logits = zoo.model.logit_scale.exp().item() * features @ head
    curve.loss.append(F.cross_entropy(logits, labels).item() if len(labels) else math.nan)
    curve.accuracy.append((logits.argmax(dim=-1) == labels).float().mean().item() * 100 if len(labels) else math.nan)


def _weights_of(zoo: ZooModel, end: Endpoint, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if end.path is None:
        return base
    with open_checkpoint(end.path) as ckpt:
        return ckpt.load_all() if end.kind == "model" else merged_lora_state(base, ckpt)


def _weights_path(
    zoo: ZooModel,
    a: Endpoint,
    b: Endpoint,
    tasks: list[TaskData],
    alphas: list[float],
    split: str,
    cache: FeatureCache,
) -> list[Curve]:
    base = {name: t.clone() for name, t in zoo.model.state_dict().items()}
    ends = [_weights_of(zoo, end, base) for end in (a, b)]
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


def interpolate_weights(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """Floating-point tensors interpolated in float32 and stored in B's dtype; integer buffers (BatchNorm's step
    counts) taken from B."""
    return {
        name: torch.lerp(a[name].float(), tensor.float(), alpha).to(tensor.dtype)
        if tensor.is_floating_point()
        else tensor
        for name, tensor in b.items()
    }


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
        tensors, extra_config = _interpolated(zoo, kind, readers, alpha)
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


def _interpolated(
    zoo: ZooModel, kind: str, readers: list[CheckpointReader | None], alpha: float
) -> tuple[dict[str, torch.Tensor], dict]:
    weights = (1 - alpha, alpha)
    if kind == "model":
        base = zoo.model.state_dict()
        ends = [r.load_all() if r is not None else base for r in readers]
        return interpolate_weights(ends[0], ends[1], alpha), {}
    if kind == "head":
        return {"head.weight": torch.lerp(*_head_ends(zoo, readers), alpha)}, {}
    if kind == "lora":
        return _interpolated_lora(readers, weights)
    # A prompt: the zero-shot end is a head, not a context, so the point is stored as a mix of the two.
    if all(r is not None for r in readers):
        raise CftoolError(
            "interpolate: a point between two prompts is a mix of two prompts' class features, which no single "
            "prompt holds; evaluate it with `cftool eval --path A B`, or interpolate one prompt with zs"
        )
    index = 0 if readers[0] is not None else 1
    prompt = readers[index]
    previous = zero_shot_weight(prompt)
    # The prompt end already holds a share of the zero-shot head; the new point keeps that proportion.
    prompt_share = weights[index] * (1 - previous)
    return {"ctx": prompt["ctx"]}, {ZERO_SHOT_WEIGHT: 1 - prompt_share}


def _head_ends(zoo: ZooModel, readers: list[CheckpointReader | None]) -> list[torch.Tensor]:
    """Both ends' head weights [n_classes, embed_dim]; the zero-shot end is the zero-shot head of the same classes."""
    known = [r for r in readers if r is not None]
    if len({tuple(r.header.classnames or []) for r in known}) > 1:
        raise CftoolError(f"interpolate: {known[0].path} and {known[1].path} are heads of different classes")
    templates = (known[0].header.config or {}).get("templates")
    if not templates:
        raise CftoolError(
            f"{known[0].path}: records no templates, so its zero-shot head cannot be built; use two heads"
        )
    zero_shot = zero_shot_class_features(zoo, known[0].header.classnames or [], templates)
    return [r["head.weight"].float() if r is not None else zero_shot for r in readers]


def _interpolated_lora(readers: list[CheckpointReader | None], weights: tuple[float, float]) -> tuple[dict, dict]:
    """Exact: ``Σ w_i · s·B_i A_i`` is one LoRA whose factors are the ends' side by side (B_i scaled by w_i), of
    rank r_a + r_b at the same scale s; with the zero-shot model at one end, just the other's B scaled."""
    present = [(r, w) for r, w in zip(readers, weights, strict=True) if r is not None]
    configs = [lora_config(r) for r, _ in present]
    if len({alpha / rank for rank, alpha, _ in configs}) > 1 or len({tuple(t) for _, _, t in configs}) > 1:
        raise CftoolError("interpolate: the two LoRA checkpoints adapt different weights or use different scales")
    tensors = combined_factors(configs[0][2], [(w, r.__getitem__) for r, w in present])
    rank = sum(rank for rank, _, _ in configs)
    scale = configs[0][1] / configs[0][0]
    return tensors, {"rank": rank, "alpha": scale * rank}
