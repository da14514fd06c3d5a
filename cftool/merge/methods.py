"""The `unify` methods of docs/design.md §5.2, each a pure function over some rows of one tensor's task deltas.

Arithmetic is done in float32 (float64 for float64 deltas) and the result is cast back to the deltas' dtype;
ConDU's unified delta is exactly representable there, since each of its entries is one of the inputs' entries.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from cftool.errors import CftoolError
from cftool.io.header import LORA_KIND
from cftool.merge.precision import check_scale, work_dtype
from cftool.merge.registry import METHODS, Chunk, Merged, MergeMethod, Statistic, TensorPlan, merge_method
from cftool.merge.select import RadixSelect
from cftool.options import CONDU, CONDU_LORA, DARE, DARE_TIES, MEAN, PER_TENSOR_TRIM, TASK_ARITHMETIC, TIES, TRIMS


def _in_work_dtype(chunk: Chunk) -> list[torch.Tensor]:
    work = work_dtype(chunk.deltas[0].dtype)
    return [delta.to(work) for delta in chunk.deltas]


def _sum(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Σ_i tensors[i], added in task order."""
    total = tensors[0].clone()
    for tensor in tensors[1:]:
        total += tensor
    return total


def _plus_or_minus_one(condition: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """+1 where ``condition``, −1 elsewhere (arithmetic: ``torch.where`` with scalars is several times slower)."""
    return condition.to(dtype).mul_(2).sub_(1)


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ values[mask] for float64 ``values``, as a dot product: a product with a bool tensor takes a path several
    times slower. Sums over a tensor's slices are added in float64 too, so slicing does not change the result."""
    return torch.dot(values.reshape(-1), mask.reshape(-1).to(values.dtype))


def _per_task(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([value.to(torch.float64) for value in values])


# ConDU ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CondUOptions:
    pass


def condu_rescalers(sums: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """λ_i = Σ_tensors mean|δ_i| / Σ_tensors mean|M_i ⊙ u|; 0 for a task whose mask is empty everywhere (its expert
    is the base model whatever λ_i is, and the reference's 0/0 or x/0 would make it NaN)."""
    numerator, denominator = sums["mean_abs_delta"], sums["mean_abs_expert"]
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator / safe, torch.zeros_like(numerator)).to(torch.float32)


@merge_method(
    CONDU,
    reference="docs/design.md §5.2; ConDU (Gao, Zhang et al., ICLR 2026) unifies as EMR-Merging does (Huang et al., "
    "NeurIPS 2024, arXiv:2405.17461; github.com/harveyhuang18/EMR_Merging)",
    options=CondUOptions,
    rescalers=condu_rescalers,
)
def condu(chunk: Chunk, options: CondUOptions, statistics: Mapping[str, Any]) -> Merged:
    """ConDU/EMR unify (docs/design.md §5.2): one delta plus a 1-bit mask and a rescaler per task.

    ``s = sign(Σ_i δ_i)`` with a zero sum counted as −1 (as the reference does), ``M_i = (δ_i · s > 0)``,
    ``u = s · max_i |M_i ⊙ δ_i|``; the per-task sums of ``mean|δ_i|`` and ``mean|M_i ⊙ u|`` over tensors give
    ``λ_i`` (``condu_rescalers``).
    """
    deltas = _in_work_dtype(chunk)
    sign = _plus_or_minus_one(_sum(deltas) > 0, deltas[0].dtype)
    masks, magnitude = [], torch.zeros_like(deltas[0])
    for delta in deltas:
        signed = delta * sign  # |δ_i| where δ_i agrees with s, and ≤ 0 where it does not
        masks.append(signed > 0)
        magnitude = torch.maximum(magnitude, signed, out=magnitude)
    numel, magnitude64 = chunk.tensor_numel, magnitude.to(torch.float64)
    return Merged(
        delta=(magnitude * sign).to(chunk.deltas[0].dtype),
        masks=masks,
        sums={
            "mean_abs_delta": _per_task([delta.abs().sum(dtype=torch.float64) / numel for delta in deltas]),
            "mean_abs_expert": _per_task([_masked_sum(magnitude64, mask) / numel for mask in masks]),
        },
    )


# ConDU-LoRA: the same unify, over LoRA factors (ConDU src/main.py:82-85: DeltaModel(pretrained, current) over the
# state dict of the LoRA model, whose only trained tensors are lora_A and lora_B, then unify_delta_models as for full
# weights; src/delta_models.py:86-126). Every factor is a tensor of the model, so sign, masks, the unified maximum
# and the rescalers' two sums run over the factors, and λ_i scales A and B alike.
merge_method(
    CONDU_LORA,
    reference="docs/design.md §5.2 over LoRA factors (§5.4 ConDU-LoRA); github.com/zhangzicong518/ConDU "
    "clip/model_lora.py, src/main.py, src/delta_models.py",
    options=CondUOptions,
    rescalers=condu_rescalers,
    inputs=LORA_KIND,
)(condu)


# TIES ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TiesOptions:
    keep: float = TIES.options["keep"]
    trim: str = TIES.options["trim"]
    scale: float = TIES.options["scale"]

    def __post_init__(self) -> None:
        if not 0 < self.keep <= 1:
            raise CftoolError(f"--keep {self.keep}: the kept fraction must be in (0, 1]")
        if self.trim not in TRIMS:
            raise CftoolError(f"--trim {self.trim!r}: expected one of {', '.join(TRIMS)}")
        check_scale("--lambda", self.scale)


def _key_dtype(plan: list[TensorPlan]) -> torch.dtype:
    """The dtype in which the magnitudes of a whole delta compare exactly (float32 for float16 with bfloat16)."""
    return functools.reduce(torch.promote_types, {tensor.dtype for tensor in plan})


class TrimThresholds(Statistic):
    """TIES's trim thresholds τ: per task over its whole flattened delta (``--trim global``), or per tensor.

    Global: τ_i is the (⌊d·keep⌋ + 1)-th largest |δ_i| over the task's d entries (``kthvalue(d − ⌊d·keep⌋)`` in
    the reference code). Per tensor: the k-th largest |δ_i| of the tensor with k = max(1, ⌊n·keep⌋), mergekit's
    count (it refuses k = 0; the largest entry is kept instead). Entries with |δ_i| ≥ τ_i are kept, ties at the
    threshold included; τ = 0 keeps everything.
    """

    def __init__(self, options: TiesOptions, plan: list[TensorPlan], values: Mapping[str, Any]):
        self.per_tensor = options.trim == PER_TENSOR_TRIM
        self.dtype = _key_dtype(plan)
        self.n_tasks: int | None = None  # known from the first chunk
        total = sum(tensor.numel for tensor in plan)
        if self.per_tensor:
            self.ranks = {tensor.name: max(1, math.floor(tensor.numel * options.keep)) for tensor in plan}
            self.keep_all = {tensor.name for tensor in plan if options.keep >= 1 or tensor.numel == 0}
        else:
            rank = math.floor(total * options.keep) + 1
            self.ranks = {None: rank}
            self.keep_all = {None} if rank > total else set()
        self.select: RadixSelect | None = None

    def _group(self, name: str) -> str | None:
        return name if self.per_tensor else None

    def update(self, chunk: Chunk) -> None:
        if self.n_tasks is None:
            self.n_tasks = len(chunk.deltas)
            ranks = {
                (task, group): rank
                for group, rank in self.ranks.items()
                if group not in self.keep_all
                for task in range(self.n_tasks)
            }
            self.select = RadixSelect(self.dtype, ranks) if ranks else None
        group = self._group(chunk.name)
        if group not in self.keep_all:
            for task, delta in enumerate(chunk.deltas):
                self.select.add((task, group), delta)

    def end_tensor(self, name: str) -> None:
        if self.per_tensor and name not in self.keep_all and self.select is not None:
            for task in range(self.n_tasks or 0):
                self.select.close((task, name))

    def end_pass(self) -> bool:
        if self.select is None:  # every group keeps everything
            return True
        if not self.per_tensor:
            for task in range(self.n_tasks or 0):
                self.select.close((task, None))
        self.select.next_pass()
        return self.select.done

    def value(self) -> Thresholds:
        thresholds = {}
        for group in self.ranks:
            for task in range(self.n_tasks or 0):
                zero = torch.zeros((), dtype=self.dtype)
                thresholds[task, group] = zero if group in self.keep_all else self.select.threshold((task, group))
        return Thresholds(self.per_tensor, thresholds)


@dataclass(frozen=True)
class Thresholds:
    per_tensor: bool
    by_task_and_group: dict[tuple[int, str | None], torch.Tensor]

    def of(self, task: int, name: str) -> torch.Tensor:
        return self.by_task_and_group[task, name if self.per_tensor else None]


def _trimmed(chunk: Chunk, thresholds: Thresholds) -> list[torch.Tensor]:
    """Every task's delta with the entries below its threshold zeroed. ``hardshrink(x, λ)`` keeps |x| > λ in one
    pass: with λ the float just below τ, that is |x| ≥ τ exactly."""
    trimmed = []
    for task, delta in enumerate(chunk.deltas):
        threshold = thresholds.of(task, chunk.name)
        below = float(torch.nextafter(threshold, torch.zeros_like(threshold) - 1))
        kept = torch.nn.functional.hardshrink(delta.to(threshold.dtype), below)
        trimmed.append(kept.to(work_dtype(delta.dtype)))
    return trimmed


class MajoritySign(Statistic):
    """TIES's fallback sign for entries whose trimmed deltas sum to 0: ``sign(Σ_elements sign(Σ_i trimmed δ_i))``
    over the whole model (``resolve_zero_signs(..., "majority")`` in the reference code)."""

    def __init__(self, options: TiesOptions, plan: list[TensorPlan], values: Mapping[str, Any]):
        self.thresholds: Thresholds = values["thresholds"]
        self.total = 0

    def update(self, chunk: Chunk) -> None:
        self.total += int(torch.sign(_sum(_trimmed(chunk, self.thresholds))).sum(dtype=torch.int64))

    def end_pass(self) -> bool:
        return True

    def value(self) -> int:
        return (self.total > 0) - (self.total < 0)


def _disjoint_mean(deltas: list[torch.Tensor], elected: torch.Tensor) -> torch.Tensor:
    """TIES's disjoint mean: the entries that agree with the elected sign ``s``, summed and divided by their count
    (at least 1). They are δ > 0 where s > 0 and δ < 0 elsewhere (s = 0 included, as in the reference code)."""
    # With t = ±1 accordingly, the entries kept are those where t·δ > 0, whose sum is t · Σ relu(t·δ).
    side = _plus_or_minus_one(elected > 0, elected.dtype)
    total, count = torch.zeros_like(side), torch.zeros_like(side)
    for delta in deltas:
        agreeing = (delta * side).clamp_(min=0)
        total += agreeing
        count += agreeing > 0
    return side * total / count.clamp_(min=1)


@merge_method(
    TIES,
    reference="docs/design.md §5.2; TIES-Merging (Yadav et al., NeurIPS 2023, arXiv:2306.01708; "
    "github.com/prateeky2806/ties-merging), as FusionBench implements it",
    options=TiesOptions,
    statistics=(("thresholds", TrimThresholds), ("majority_sign", MajoritySign)),
)
def ties(chunk: Chunk, options: TiesOptions, statistics: Mapping[str, Any]) -> Merged:
    """TIES (docs/design.md §5.2): trim to the largest entries, elect a sign per entry, average those that agree with
    it.

    Trim with ``TrimThresholds``; ``s = sign(Σ_i trimmed δ_i)``, where 0 the model-wide ``MajoritySign`` (which
    may be 0 too); the disjoint mean sums the trimmed entries with ``s > 0 ? δ > 0 : δ < 0`` and divides by their
    count (at least 1); the result is scaled by ``λ``.
    """
    trimmed = _trimmed(chunk, statistics["thresholds"])
    elected = torch.sign(_sum(trimmed))
    elected[elected == 0] = statistics["majority_sign"]
    return Merged(delta=(options.scale * _disjoint_mean(trimmed, elected)).to(chunk.deltas[0].dtype))


# Task arithmetic, DARE, DARE-TIES, mean ------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskArithmeticOptions:
    scale: float = TASK_ARITHMETIC.options["scale"]

    def __post_init__(self) -> None:
        check_scale("--lambda", self.scale)


@merge_method(
    TASK_ARITHMETIC,
    reference="docs/design.md §5.2; task arithmetic (Ilharco et al., ICLR 2023, arXiv:2212.04089); λ = 0.3 is the "
    "value commonly used for 8 or more tasks",
    options=TaskArithmeticOptions,
)
def task_arithmetic(chunk: Chunk, options: TaskArithmeticOptions, statistics: Mapping[str, Any]) -> Merged:
    """Task arithmetic (docs/design.md §5.2): ``λ · Σ_i δ_i``."""
    return Merged(delta=(options.scale * _sum(_in_work_dtype(chunk))).to(chunk.deltas[0].dtype))


@dataclass(frozen=True)
class DareOptions:
    p: float = DARE.options["p"]
    seed: int = DARE.options["seed"]
    scale: float = DARE.options["scale"]

    def __post_init__(self) -> None:
        if not 0 <= self.p < 1:
            raise CftoolError(f"--p {self.p}: the drop rate must be in [0, 1)")
        check_scale("--lambda", self.scale)


_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wellons' "lowbias32"), in int64 arithmetic masked to 32 bits."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def uniform_draws(seed: int, stream: str, first: int, count: int) -> torch.Tensor:
    """``count`` uniform numbers in [0, 1) for elements ``first…`` of a named stream, as a counter-based hash of
    (seed, stream, element index): the same element gets the same draw however the tensor is sliced."""
    seed_key = int(_mix32(torch.tensor(seed & _MASK32)))
    stream_key = zlib.crc32(stream.encode("utf-8"))
    index = torch.arange(first, first + count, dtype=torch.int64) & _MASK32
    bits = _mix32(_mix32(index ^ seed_key) ^ stream_key)
    return (bits >> 8).to(torch.float64) / (1 << 24)


def _dropped_and_rescaled(chunk: Chunk, options: DareOptions) -> list[torch.Tensor]:
    """Every task's delta (in the work dtype) with each entry dropped at rate p and the kept ones rescaled by
    1/(1 − p); the drops are seeded by ``--seed`` and drawn per task and tensor from ``uniform_draws``."""
    rescaled = []
    for task, delta in enumerate(_in_work_dtype(chunk)):
        draws = uniform_draws(options.seed, f"{task}/{chunk.name}", chunk.first_element, delta.numel())
        kept = (draws >= options.p).reshape(delta.shape)
        rescaled.append(delta / (1 - options.p) * kept)
    return rescaled


@merge_method(
    DARE,
    reference="docs/design.md §5.2; DARE (Yu et al., ICML 2024, arXiv:2311.03099), followed by task arithmetic",
    options=DareOptions,
)
def dare(chunk: Chunk, options: DareOptions, statistics: Mapping[str, Any]) -> Merged:
    """DARE (docs/design.md §5.2): drop each entry with rate p, rescale the kept by 1/(1 − p), then task arithmetic."""
    return Merged(delta=(options.scale * _sum(_dropped_and_rescaled(chunk, options))).to(chunk.deltas[0].dtype))


@dataclass(frozen=True)
class DareTiesOptions(DareOptions):
    """DARE's options and their checks, with DARE-TIES's defaults."""

    p: float = DARE_TIES.options["p"]
    seed: int = DARE_TIES.options["seed"]
    scale: float = DARE_TIES.options["scale"]


@merge_method(
    DARE_TIES,
    reference="docs/design.md §5.2; mergekit's dare_ties: DARE (Yu et al., ICML 2024, arXiv:2311.03099), then TIES's "
    "sign election and disjoint mean (Yadav et al., NeurIPS 2023, arXiv:2306.01708) without trimming",
    options=DareTiesOptions,
)
def dare_ties(chunk: Chunk, options: DareTiesOptions, statistics: Mapping[str, Any]) -> Merged:
    """DARE-TIES (docs/design.md §5.2): DARE's drops and rescaling (those of `dare` for the same seed), then TIES's
    sign election and disjoint mean without trimming, scaled by ``λ``.

    ``s = sign(Σ_i δ̂_i)``, a sum of exactly 0 counting as +1 as in mergekit (`ties` takes the model-wide majority
    sign there instead), so no statistic of the whole model is needed.
    """
    rescaled = _dropped_and_rescaled(chunk, options)
    total = _sum(rescaled)
    elected = _plus_or_minus_one(total >= 0, total.dtype)
    return Merged(delta=(options.scale * _disjoint_mean(rescaled, elected)).to(chunk.deltas[0].dtype))


@dataclass(frozen=True)
class MeanOptions:
    pass


@merge_method(MEAN, reference="docs/design.md §5.2: the average of the task deltas (model soup)", options=MeanOptions)
def mean(chunk: Chunk, options: MeanOptions, statistics: Mapping[str, Any]) -> Merged:
    """Mean (docs/design.md §5.2): ``Σ_i δ_i / n``."""
    return Merged(delta=(_sum(_in_work_dtype(chunk)) / len(chunk.deltas)).to(chunk.deltas[0].dtype))


def get_method(name: str) -> MergeMethod:
    """The `unify --method NAME` method; every method above is registered once this module is imported."""
    if name not in METHODS:
        raise CftoolError(f"--method {name!r} is not a merge method; choose one of {', '.join(METHODS)}")
    return METHODS[name]
