"""Decouple: a task's expert rebuilt from a unified set, ``δ̃_i = λ_i · M_i ⊙ u`` (docs/design.md §5.2).

Rebuilding reads only ``u`` and the chosen tasks' masks, some rows of one tensor at a time; with a base, the
expert is written as a full `model` file (``θ̃_i = θ_0 + δ̃_i``) that `eval` and `export` take as it is.

A set unified in LoRA factor space (ConDU-LoRA) rebuilds each factor the same way and adds it to the factors the
deltas are relative to, ``P + λ_i · M_i ⊙ u`` (P = 0 unless imported), as ConDU does (``src/main.py:72-74``:
``unified · mask · rescaler`` added to ``pretrained.pth``'s state, factors included): its expert is a `lora`
checkpoint, or with a base the `model` ``W + scale · B̃ Ã``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import torch

from cftool.errors import CftoolError
from cftool.io.base_model import BaseModel
from cftool.io.checkpoint import CheckpointWriter, Header, check_base, refuse_non_finite, save_checkpoint
from cftool.io.header import DELTA_KIND, LORA_KIND, MODEL_KIND
from cftool.io.outputs import check_outputs
from cftool.io.unified import UnifiedSet
from cftool.merge.delta import check_base_fits
from cftool.merge.lora import LoRAShape, lora_shape, merged_factors
from cftool.merge.precision import work_dtype
from cftool.merge.stream import (
    DEFAULT_CHUNK_ELEMENTS,
    Progress,
    no_progress,
    plan_tensors,
    refuse_overflow,
    write_part,
)


def expert_rows(unified: UnifiedSet, index: int, name: str, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of task ``index``'s expert delta of tensor ``name``, in the unified delta's dtype."""
    u = unified.unified_rows(name, start, stop)
    refuse_non_finite(u, unified.path, name)  # even where no mask keeps it: the set is damaged
    mask = unified.mask_rows(index, name, start, stop)
    work = work_dtype(u.dtype)
    return torch.where(mask, u.to(work) * unified.rescalers[index].to(work), 0).to(u.dtype)


def expert_tensors(unified: UnifiedSet, index: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Task ``index``'s whole expert delta, one tensor at a time (to apply it to a model in memory)."""
    for name, info in unified.delta.items():
        yield name, expert_rows(unified, index, name, 0, info.shape[0] if info.shape else 1)


def factor_space(unified: UnifiedSet) -> LoRAShape | None:
    """The rank, alpha and targets of a set unified in LoRA factor space; None for a set of weight deltas."""
    if unified.lora_config is None:
        return None
    shape = lora_shape(unified.path, unified.lora_config, {name: info.shape for name, info in unified.delta.items()})
    extra = sorted(set(unified.delta) - set(shape.factor_names()))
    if extra:
        raise CftoolError(
            f"{unified.path}: damaged unified file ({extra[0]!r} is not a factor of its LoRA targets); "
            "re-create it with `cftool unify --method condu-lora`"
        )
    return shape


def expert_factors(unified: UnifiedSet, index: int) -> dict[str, torch.Tensor]:
    """Task ``index``'s LoRA factors of a factor-space set: ``P + λ_i · M_i ⊙ u`` for every factor."""
    factors = {}
    for name, step in expert_tensors(unified, index):
        base = unified.factor_base(name)
        if base is not None:
            work = work_dtype(torch.promote_types(base.dtype, step.dtype))
            step = (base.to(work) + step.to(work)).to(step.dtype)
        factors[name] = step
    return factors


def decouple(
    unified: UnifiedSet,
    tasks: Sequence[str],
    outputs: Sequence[Path],
    base: BaseModel | None = None,
    overwrite: bool = False,
    chunk_elements: int | None = DEFAULT_CHUNK_ELEMENTS,
    progress: Progress = no_progress,
) -> list[Path]:
    """Write each task's expert to its output: a `delta`, or with ``base`` a `model`."""
    indices = [unified.task_index(task) for task in tasks]
    experts = {f"expert {task!r}": output for task, output in zip(tasks, outputs, strict=True)}
    check_outputs(experts, [unified.path], overwrite)
    shape = factor_space(unified)
    if shape is not None:
        return _decouple_factors(unified, shape, indices, outputs, base, overwrite, progress)
    delta_layout = {name: (info.torch_dtype, info.shape) for name, info in unified.delta.items()}
    if base is not None:
        check_base(unified.path, unified.header, base.sha256, base.canonical, base.architecture)
        check_base_fits(unified.path, delta_layout, base)
    plan = {tensor.name: tensor for tensor in plan_tensors(delta_layout, chunk_elements)}
    layout = base.layout if base is not None else delta_layout
    headers = [_expert_header(unified, index, base) for index in indices]

    advance = progress(f"decouple {len(indices)} task(s)", len(layout))
    with ExitStack() as stack:
        writers = [
            stack.enter_context(CheckpointWriter(output, layout, header, overwrite=overwrite))
            for output, header in zip(outputs, headers, strict=True)
        ]
        for name in layout:
            base_tensor = base[name] if base is not None else None
            if name not in plan:  # a tensor no delta holds: the base's, unchanged
                for writer in writers:
                    writer.write(name, base_tensor)
                advance()
                continue
            tensor = plan[name]
            for start, stop in tensor.rows:
                for writer, index in zip(writers, indices, strict=True):
                    rows = expert_rows(unified, index, name, start, stop)
                    if base_tensor is not None:
                        base_rows = base_tensor[start:stop] if tensor.shape else base_tensor
                        work = work_dtype(torch.promote_types(base_rows.dtype, rows.dtype))
                        rows = (base_rows.to(work) + rows.to(work)).to(base_rows.dtype)
                    refuse_overflow(rows, writer.path, name, f"{unified.path} holds values too large for {rows.dtype}")
                    write_part(writer, tensor, name, start, rows)
            advance()
    return list(outputs)


def _decouple_factors(
    unified: UnifiedSet,
    shape: LoRAShape,
    indices: Sequence[int],
    outputs: Sequence[Path],
    base: BaseModel | None,
    overwrite: bool,
    progress: Progress,
) -> list[Path]:
    """Each task's expert of a factor-space set: its factors as a `lora` file, or with ``base`` the `model` they make.
    Factors are LoRA-sized, so each task's are rebuilt whole."""
    if base is not None:
        check_base(unified.path, unified.header, base.sha256, base.canonical, base.architecture)
    advance = progress(f"decouple {len(indices)} task(s)", len(indices))
    for index, output in zip(indices, outputs, strict=True):
        factors = expert_factors(unified, index)
        if base is None:
            header = _expert_header(unified, index, None, kind=LORA_KIND, config=shape.to_json())
            save_checkpoint(output, factors, header, overwrite=overwrite)
        else:
            targets = {name: base[name] for name in shape.targets if name in base.layout}
            merged = merged_factors(targets, unified.path, shape, factors.__getitem__)
            with CheckpointWriter(output, base.layout, _expert_header(unified, index, base), overwrite) as writer:
                for name in base.layout:
                    writer.write(name, merged[name] if name in merged else base[name])
        advance()
    return list(outputs)


def _expert_header(
    unified: UnifiedSet, index: int, base: BaseModel | None, kind: str = DELTA_KIND, config: dict | None = None
) -> Header:
    task = unified.tasks[index]
    fields = {
        "task": task.task,
        "classnames": task.classnames,
        "template": task.template,
        "run": task.run,
        "method": unified.header.method,
        "config": {
            **(config or {}),
            "decoupled_from": unified.path.name,
            "rescaler": float(unified.rescalers[index]),
        },
    }
    if base is not None:
        return base.header(MODEL_KIND, **fields)
    return Header(kind, unified.header.base, unified.header.base_sha256, unified.header.base_arch, **fields)
