"""The one streaming engine behind `unify` (docs/design.md §4, §5.2).

Inputs are opened lazily and checked against each other from their headers (one base, one set of tensor names,
shapes and dtypes, all deltas). The output's layout is then fixed from those headers, and the engine streams:
tensor by tensor, and a large tensor in row slices, it reads that slice from every input, lets the method merge
it, and writes the result at its place. A method's whole-model statistics take extra streamed passes first.
Memory is a few slices times the number of inputs, never whole models.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from cftool.errors import CftoolError
from cftool.io.bitpack import pack_bits
from cftool.io.checkpoint import CheckpointReader, CheckpointWriter, Header, open_checkpoint, refuse_non_finite
from cftool.io.header import DELTA_KIND, LORA_KIND, UNIFIED_KIND
from cftool.io.outputs import check_outputs
from cftool.io.unified import (
    LORA_KEY,
    RESCALERS,
    TaskEntry,
    UnifiedSet,
    factor_base_name,
    mask_name,
    tasks_metadata,
    unified_layout,
)
from cftool.merge.decouple import expert_rows, factor_space
from cftool.merge.lora import LoRAShape, lora_config
from cftool.merge.precision import refuse_scale_overflow
from cftool.merge.registry import Chunk, MergeMethod
from cftool.merge.stream import (
    DEFAULT_CHUNK_ELEMENTS,
    Layout,
    Progress,
    TensorPlan,
    no_progress,
    plan_tensors,
    refuse_overflow,
    write_part,
)
from cftool.options import CONDU, CONDU_LORA


class TaskInput(ABC):
    """One task's delta, read some rows of one tensor at a time."""

    source: Path  # the file it comes from, for messages
    task: TaskEntry
    base: str
    base_sha256: str
    base_arch: dict | None
    layout: Layout
    lora: LoRAShape | None = None  # the rank, alpha and targets of factor deltas (ConDU-LoRA); None: weight deltas

    @abstractmethod
    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``name`` (the whole tensor if it is 0-d)."""


class LoRAFactorsFile(TaskInput):
    """A `lora` checkpoint's factors as a task delta in factor space (ConDU-LoRA): each factor minus the factors
    ``P`` the set is relative to (none: zero; a continual session on an imported ConDU set: its ``pretrained.pth``'s
    factors), as ConDU's delta of a LoRA model is its state minus ``pretrained.pth``'s (``src/delta_models.py:17-24``).
    """

    def __init__(self, reader: CheckpointReader, factor_base: Mapping[str, torch.Tensor]):
        self.reader, self.factor_base = reader, factor_base
        self.source = reader.path
        header = reader.header
        task = header.task or _stem(reader.path)
        self.task = TaskEntry(task, header.classnames, header.template, header.run)
        self.base, self.base_sha256, self.base_arch = header.base, header.base_sha256, header.base_arch
        rank, alpha, targets = lora_config(reader)
        self.lora = LoRAShape(rank, alpha, tuple(targets))
        self.layout = {name: (torch.float32, reader.tensors[name].shape) for name in self.lora.factor_names()}

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        rows = self.reader.read_rows(name, start, stop).to(torch.float32)
        base = self.factor_base.get(name)
        return rows if base is None else rows - base[start:stop].to(torch.float32)


class DeltaFile(TaskInput):
    def __init__(self, reader: CheckpointReader):
        self.reader = reader
        self.source = reader.path
        header = reader.header
        task = header.task or _stem(reader.path)
        self.task = TaskEntry(task, header.classnames, header.template, header.run)
        self.base, self.base_sha256, self.base_arch = header.base, header.base_sha256, header.base_arch
        self.layout = {name: (info.torch_dtype, info.shape) for name, info in reader.tensors.items()}

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self.reader.read_rows(name, start, stop) if self.layout[name][1] else self.reader[name]


class DecoupledExpert(TaskInput):
    """Task ``index``'s expert ``λ_i · M_i ⊙ u`` rebuilt from a previous unified set (continual sessions)."""

    def __init__(self, unified: UnifiedSet, index: int):
        self.unified, self.index = unified, index
        self.source = unified.path
        self.task = unified.tasks[index]
        self.base, self.base_sha256 = unified.header.base, unified.header.base_sha256
        self.base_arch = unified.header.base_arch
        self.layout = {name: (info.torch_dtype, info.shape) for name, info in unified.delta.items()}
        self.lora = factor_space(unified)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return expert_rows(self.unified, self.index, name, start, stop)


class LoadedDelta(TaskInput):
    """A delta held in memory: the benchmark's fully loaded baseline, and tests."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], task: TaskEntry, base: str = "", base_sha256: str = ""):
        self.tensors = dict(tensors)
        self.source = Path(f"<{task.task}>")
        self.task, self.base, self.base_sha256, self.base_arch = task, base, base_sha256, None
        self.layout = {name: (tensor.dtype, tuple(tensor.shape)) for name, tensor in self.tensors.items()}

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        tensor = self.tensors[name]
        return tensor[start:stop] if tensor.dim() else tensor


def _stem(path: Path) -> str:
    return path.name.split(".")[0] or path.name


def open_deltas(paths: Sequence[Path], stack: ExitStack) -> list[DeltaFile]:
    """Open `delta` files; anything else is refused (one line: which file, what it is, what to do)."""
    inputs = []
    for path in paths:
        reader = stack.enter_context(open_checkpoint(path))
        if reader.header.kind != DELTA_KIND:
            raise CftoolError(
                f"{path}: expected a {DELTA_KIND!r} checkpoint, found {reader.header.kind!r}; "
                "make one with `cftool delta FILE --zs BASE -o DELTA`"
            )
        inputs.append(DeltaFile(reader))
    return inputs


def open_loras(paths: Sequence[Path], stack: ExitStack, factor_base: Mapping[str, torch.Tensor]) -> list[TaskInput]:
    """Open `lora` checkpoints as factor deltas relative to ``factor_base`` (empty: zero); anything else is refused."""
    inputs: list[TaskInput] = []
    for path in paths:
        reader = stack.enter_context(open_checkpoint(path))
        if reader.header.kind != LORA_KIND:
            raise CftoolError(
                f"{path}: --method {CONDU_LORA.name} unifies LoRA factors and expects a {LORA_KIND!r} checkpoint, "
                f"found {reader.header.kind!r}; use --method {CONDU.name} for deltas"
            )
        inputs.append(LoRAFactorsFile(reader, factor_base))
    return inputs


def open_previous(path: Path, stack: ExitStack) -> UnifiedSet:
    reader = stack.enter_context(open_checkpoint(path))
    if reader.header.kind != UNIFIED_KIND:
        raise CftoolError(
            f"{path}: --into needs a unified set (a file from `cftool unify --method condu`), "
            f"found a {reader.header.kind!r} checkpoint"
        )
    return stack.enter_context(UnifiedSet(reader))


def continual_inputs(previous: UnifiedSet, new: list[TaskInput], replace: bool) -> list[TaskInput]:
    """A continual session's inputs: the previous set's experts, then the new deltas; with ``replace``, a new delta
    of a task the set already holds takes that expert's place."""
    inputs: list[TaskInput] = [DecoupledExpert(previous, index) for index in range(len(previous.tasks))]
    for delta in new:
        if delta.task.task in previous.task_names:
            if not replace:
                raise CftoolError(
                    f"{delta.source}: task {delta.task.task!r} is already in {previous.path}; "
                    "pass --replace to replace its expert with this delta"
                )
            inputs[previous.task_index(delta.task.task)] = delta
        else:
            inputs.append(delta)
    return inputs


def _short(digest: str) -> str:
    return digest[:12] if digest else "unknown"


def check_compatible(inputs: Sequence[TaskInput]) -> None:
    """All inputs are deltas of one base with the same tensors (names, shapes, dtypes) and distinct tasks."""
    if not inputs:
        raise CftoolError("no deltas to unify; name delta files (e.g. deltas/*.safetensors)")
    first = inputs[0]
    for name, (dtype, _) in first.layout.items():
        if not dtype.is_floating_point:
            raise CftoolError(f"{first.source}: tensor {name!r} is {dtype}, but a delta holds floating-point tensors")
    seen = {first.task.task: first}
    for other in inputs[1:]:
        same_base = (
            other.base_sha256 == first.base_sha256
            if other.base_sha256 and first.base_sha256
            else other.base == first.base
        )
        if same_base and other.base_arch and first.base_arch:
            same_base = other.base_arch == first.base_arch
        if not same_base:
            raise CftoolError(
                f"{other.source}: made for base {other.base!r} (weights sha256 {_short(other.base_sha256)}) but "
                f"{first.source} for base {first.base!r} (weights sha256 {_short(first.base_sha256)}); "
                "unify deltas of one base model"
            )
        if other.lora != first.lora:
            raise CftoolError(
                f"{other.source}: its LoRA ({_describe_lora(other.lora)}) differs from that of {first.source} "
                f"({_describe_lora(first.lora)}); unify LoRA factors of one rank, alpha and set of targets"
            )
        difference = _layout_difference(first.layout, other.layout)
        if difference:
            raise CftoolError(
                f"{other.source}: its tensors differ from those of {first.source} ({difference}); "
                "unify deltas of the same model"
            )
        if other.task.task in seen:
            raise CftoolError(
                f"{other.source}: task {other.task.task!r} is also the task of {seen[other.task.task].source}; "
                "unify one delta per task"
            )
        seen[other.task.task] = other


def _describe_lora(lora: LoRAShape | None) -> str:
    if lora is None:
        return "none: weight deltas"
    return f"rank {lora.rank}, alpha {lora.alpha:g}, {len(lora.targets)} targets"


def _layout_difference(expected: Layout, found: Layout) -> str:
    missing = [name for name in expected if name not in found]
    if missing:
        return f"{len(missing)} missing, e.g. {missing[0]!r}"
    extra = [name for name in found if name not in expected]
    if extra:
        return f"{len(extra)} extra, e.g. {extra[0]!r}"
    for name, (dtype, shape) in expected.items():
        if found[name][1] != shape:
            return f"{name!r} has shape {list(found[name][1])}, not {list(shape)}"
        if found[name][0] != dtype:
            return f"{name!r} is {found[name][0]}, not {dtype}"
    return ""


def _stream(
    plan: list[TensorPlan], inputs: Sequence[TaskInput], check_finite: bool, advance: Callable[..., None]
) -> Iterator[tuple[TensorPlan, Chunk, bool]]:
    """(tensor, chunk, is the tensor's last chunk) for every slice of the model, in order."""
    for tensor in plan:
        row_numel = math.prod(tensor.shape[1:]) if tensor.shape else 1
        for position, (start, stop) in enumerate(tensor.rows):
            deltas = [task.rows(tensor.name, start, stop) for task in inputs]
            if check_finite:
                for task, delta in zip(inputs, deltas, strict=True):
                    refuse_non_finite(delta, task.source, tensor.name)
            chunk = Chunk(tensor.name, deltas, start, stop, start * row_numel, tensor.numel)
            yield tensor, chunk, position == len(tensor.rows) - 1
            advance()


def _overflow_remedy(options: Any) -> str:
    """Only a scale takes a merge of finite deltas beyond their range: the other steps keep or average entries."""
    scale = getattr(options, "scale", None)
    if scale is not None:
        return f"use a --lambda smaller in magnitude than {scale}"
    return "check the deltas' values with `cftool inspect`"


@dataclass
class UnifyResult:
    output: Path
    kind: str
    method: str
    tasks: list[str]
    parameters: int
    passes: int
    rescalers: list[float] | None = None
    mask_density: list[float] | None = None  # fraction of the parameters each task's mask keeps

    def to_json(self) -> dict:
        return {**asdict(self), "output": str(self.output)}


def unify(
    inputs: Sequence[TaskInput],
    method: MergeMethod,
    options: Any,
    output: Path,
    overwrite: bool = False,
    chunk_elements: int | None = DEFAULT_CHUNK_ELEMENTS,
    progress: Progress = no_progress,
    factor_base: Mapping[str, torch.Tensor] | None = None,
) -> UnifyResult:
    """Merge the inputs' deltas with ``method`` into ``output``: a unified set for a method with triggers (ConDU),
    else a `delta`. ``chunk_elements=None`` merges whole tensors (the fully loaded baseline). Factor deltas
    (ConDU-LoRA) record their LoRA in the set, with ``factor_base``, the factors they are relative to, if any."""
    check_outputs({"-o": output}, sorted({task.source for task in inputs}), overwrite)  # before the passes
    check_compatible(inputs)
    first = inputs[0]
    lora_inputs = first.lora is not None
    if lora_inputs != (method.inputs == LORA_KIND) or (lora_inputs and not method.writes_triggers):
        raise CftoolError(
            f"{first.source}: --method {method.name} merges {method.inputs} inputs, not "
            f"{'LoRA factors' if lora_inputs else 'weight deltas'}; use --method "
            f"{CONDU_LORA.name if lora_inputs else CONDU.name} (or `cftool delta` the lora checkpoints: ΔW-space)"
        )
    plan = plan_tensors(first.layout, chunk_elements)
    if getattr(options, "scale", None) is not None:
        refuse_scale_overflow("--lambda", options.scale, {tensor.dtype for tensor in plan}, output)
    n_chunks = sum(len(tensor.rows) for tensor in plan)

    values: dict[str, Any] = {}
    passes = 0
    for name, factory in method.statistics:
        statistic = factory(options, plan, values)
        done = False
        while not done:
            passes += 1
            advance = progress(f"pass {passes}: {name}", n_chunks)
            for tensor, chunk, last in _stream(plan, inputs, check_finite=passes == 1, advance=advance):
                statistic.update(chunk)
                if last:
                    statistic.end_tensor(tensor.name)
            done = statistic.end_pass()
        values[name] = statistic.value()

    tasks = [task.task for task in inputs]
    delta_layout = {tensor.name: (tensor.dtype, tensor.shape) for tensor in plan}
    config = {
        "method": method.name,
        **asdict(options),
        "tasks": [task.task for task in tasks],
        "sources": [task.source.name for task in inputs],
    }
    if first.lora is not None:
        config[LORA_KEY] = first.lora.to_json()
    if method.writes_triggers:
        layout = unified_layout(delta_layout, len(inputs), factor_base)
        extra = tasks_metadata(tasks)
        header = Header(
            UNIFIED_KIND, first.base, first.base_sha256, first.base_arch, method=method.name, config=config, extra=extra
        )
    else:
        layout = delta_layout
        header = Header(DELTA_KIND, first.base, first.base_sha256, first.base_arch, method=method.name, config=config)

    passes += 1
    sums: dict[str, torch.Tensor] = {}
    mask_counts = [0] * len(inputs)
    advance = progress(f"pass {passes}: {method.name}", n_chunks)
    with CheckpointWriter(output, layout, header, overwrite=overwrite) as writer:
        for tensor, chunk, _ in _stream(plan, inputs, check_finite=passes == 1, advance=advance):
            merged = method.function(chunk, options, values)
            refuse_overflow(merged.delta, output, chunk.name, _overflow_remedy(options))
            write_part(writer, tensor, chunk.name, chunk.start, merged.delta)
            for index, mask in enumerate(merged.masks or []):
                mask_counts[index] += int(mask.sum())
                write_part(writer, tensor, mask_name(index, chunk.name), chunk.first_element // 8, pack_bits(mask))
            for key, value in merged.sums.items():
                sums[key] = sums[key] + value if key in sums else value
        for name, tensor in (factor_base or {}).items():
            writer.write(factor_base_name(name), tensor)
        rescalers = None
        if method.writes_triggers:
            rescalers = method.rescalers(sums)
            refuse_overflow(rescalers, output, RESCALERS, "the deltas are too small for float32 rescalers")
            writer.write(RESCALERS, rescalers)

    parameters = sum(tensor.numel for tensor in plan)
    return UnifyResult(
        output=output,
        kind=header.kind,
        method=method.name,
        tasks=[task.task for task in tasks],
        parameters=parameters,
        passes=passes,
        rescalers=rescalers.tolist() if rescalers is not None else None,
        mask_density=[count / parameters for count in mask_counts] if method.writes_triggers and parameters else None,
    )
