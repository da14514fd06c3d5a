"""The `unified` file of a ConDU set (docs/design.md §4, §5.2): one self-contained safetensors file.

Tensors, in this order for every floating tensor ``NAME`` of the model:

  ``NAME``            the unified delta ``u``, in the deltas' dtype and shape
  ``mask/I/NAME``     task ``I``'s mask ``M_I`` of that tensor, bit-packed (``cftool.io.bitpack``: 1 bit per
                      element, a flat uint8 tensor)

and last ``rescalers``, float32 ``[n_tasks]``: every task's ``λ_I``. A set unified in LoRA factor space
(``unify --method condu-lora``, ConDU-LoRA) holds factors ``TARGET.lora_A`` [rank, in] and ``TARGET.lora_B`` [out, rank]
as its tensors, records ``{"rank", "alpha", "targets"}`` under the key ``lora`` of its config, and, where its deltas
are relative to factors other than zero (an imported ConDU session: the factors of its ``pretrained.pth``), holds
those as ``lora_base/NAME`` before the rescalers. Besides the usual ``cftool.*`` keys (kind
``unified``, base, base_sha256, method ``condu``, config), the metadata key ``cftool.tasks`` holds the JSON list,
in task order, of ``{"task", "classnames", "template"}`` (and ``"run"``, the fine-tune the task's delta came from,
where its checkpoint recorded one). Masks are named by task index, not task name, so that any
task name is allowed. Reading keeps to what one step needs: some rows of ``u`` and of one task's mask.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cftool.errors import CftoolError
from cftool.io.bitpack import count_set_bits, packed_length, unpack_bits
from cftool.io.checkpoint import CheckpointReader, TensorInfo, open_checkpoint
from cftool.io.header import UNIFIED_KIND

TASKS_KEY = "cftool.tasks"
RESCALERS = "rescalers"
_MASK_PREFIX = "mask/"
FACTOR_BASE_PREFIX = "lora_base/"
LORA_KEY = "lora"  # of a factor-space set's config


def mask_name(index: int, name: str) -> str:
    return f"{_MASK_PREFIX}{index}/{name}"


@dataclass(frozen=True)
class TaskEntry:
    """What a unified set records of one task: its name, and the class names and template its delta carried."""

    task: str
    classnames: list[str] | None = None
    template: str | None = None
    run: str | None = None  # `Header.run` of the task's delta

    def to_json(self) -> dict:
        entry = {"task": self.task, "classnames": self.classnames, "template": self.template}
        return entry if self.run is None else {**entry, "run": self.run}


def tasks_metadata(tasks: Sequence[TaskEntry]) -> dict[str, str]:
    """The ``Header.extra`` entry that lists a unified set's tasks."""
    return {TASKS_KEY: json.dumps([task.to_json() for task in tasks], ensure_ascii=False)}


def factor_base_name(name: str) -> str:
    return f"{FACTOR_BASE_PREFIX}{name}"


def unified_layout(
    delta_layout: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
    n_tasks: int,
    factor_base: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """The tensors of a unified file for deltas of this layout: each tensor's masks right after it (decoupling
    reads them together), the factors the deltas are relative to (if any), the rescalers last (they are known only
    once every tensor has been merged)."""
    layout: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for name, (dtype, shape) in delta_layout.items():
        layout[name] = (dtype, tuple(shape))
        for index in range(n_tasks):
            layout[mask_name(index, name)] = (torch.uint8, (packed_length(shape),))
    for name, tensor in (factor_base or {}).items():
        layout[factor_base_name(name)] = (tensor.dtype, tuple(tensor.shape))
    layout[RESCALERS] = (torch.float32, (n_tasks,))
    return layout


def _damaged(path: Path, what: str) -> CftoolError:
    return CftoolError(f"{path}: damaged unified file ({what}); re-create it with `cftool unify`")


def parse_tasks(path: Path, text: str | None) -> list[TaskEntry]:
    if text is None:
        raise _damaged(path, f"no {TASKS_KEY} in metadata")
    try:
        entries = json.loads(text)
    except ValueError:
        raise _damaged(path, f"{TASKS_KEY} is not valid JSON") from None
    if not isinstance(entries, list) or not entries:
        raise _damaged(path, f"{TASKS_KEY} is not a non-empty JSON list")
    tasks = []
    for entry in entries:
        classnames = entry.get("classnames") if isinstance(entry, dict) else None
        valid = (
            isinstance(entry, dict)
            and isinstance(entry.get("task"), str)
            and (classnames is None or (isinstance(classnames, list) and all(isinstance(c, str) for c in classnames)))
            and isinstance(entry.get("template"), str | None)
            and isinstance(entry.get("run"), str | None)
        )
        if not valid:
            raise _damaged(path, f"{TASKS_KEY} has an entry that is not {{task, classnames, template, run}}")
        tasks.append(TaskEntry(entry["task"], classnames, entry.get("template"), entry.get("run")))
    names = [task.task for task in tasks]
    if len(set(names)) != len(names):
        raise _damaged(path, f"{TASKS_KEY} names a task twice")
    return tasks


class UnifiedSet:
    """An open unified file: its tasks and rescalers, and the unified delta and masks, read some rows at a time."""

    def __init__(self, reader: CheckpointReader):
        self.reader = reader
        self.path = reader.path
        self.header = reader.header
        self.tasks = parse_tasks(self.path, reader.header.extra.get(TASKS_KEY))
        n_tasks = len(self.tasks)
        masks = {name for name in reader.tensors if name.startswith(_MASK_PREFIX)}
        bases = {name for name in reader.tensors if name.startswith(FACTOR_BASE_PREFIX)}
        self.delta: dict[str, TensorInfo] = {
            name: info
            for name, info in reader.tensors.items()
            if name not in masks and name not in bases and name != RESCALERS
        }
        lora = (self.header.config or {}).get(LORA_KEY)
        if lora is not None and not isinstance(lora, dict):
            raise _damaged(self.path, f"config {LORA_KEY!r} is not {{rank, alpha, targets}}")
        self.lora_config: dict | None = lora  # a factor-space set's rank, alpha and targets; None: weight space
        for name in bases:
            factor = name.removeprefix(FACTOR_BASE_PREFIX)
            if lora is None or factor not in self.delta or reader.tensors[name].shape != self.delta[factor].shape:
                raise _damaged(self.path, f"{name!r} is not the base of one of its LoRA factors")
        rescalers = reader.tensors.get(RESCALERS)
        if rescalers is None or rescalers.dtype != "F32" or rescalers.shape != (n_tasks,):
            found = f"{rescalers.dtype} {list(rescalers.shape)}" if rescalers else "none"
            raise _damaged(self.path, f"expected rescalers F32 [{n_tasks}], found {found}")
        expected = {
            mask_name(index, name): packed_length(info.shape)
            for name, info in self.delta.items()
            for index in range(n_tasks)
        }
        for name in sorted(masks | expected.keys()):
            info = reader.tensors.get(name)
            if info is None or name not in expected or info.dtype != "U8" or info.shape != (expected[name],):
                what = "missing" if info is None else "unexpected" if name not in expected else "of the wrong size"
                raise _damaged(self.path, f"mask {name!r} is {what}")
        self.rescalers = reader[RESCALERS]  # refused there if one is not finite
        self._last_rows: tuple[tuple[str, int, int], torch.Tensor] | None = None

    @property
    def task_names(self) -> list[str]:
        return [task.task for task in self.tasks]

    def task_index(self, task: str) -> int:
        names = self.task_names
        if task not in names:
            raise CftoolError(f"{self.path}: has no task {task!r} (its tasks: {', '.join(names)}); pick one of them")
        return names.index(task)

    def unified_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of ``u`` for tensor ``name`` (the whole tensor if it is 0-d).

        The last rows read are kept: rebuilding every task's expert of one slice reads them once.
        """
        key = (name, start, stop)
        if self._last_rows is None or self._last_rows[0] != key:
            rows = self.reader.read_rows(name, start, stop) if self.delta[name].shape else self.reader[name]
            self._last_rows = (key, rows)
        return self._last_rows[1]

    def mask_rows(self, index: int, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of task ``index``'s mask of tensor ``name``, unpacked to bool.

        ``start`` times the row size must be a multiple of 8, so that the rows begin at a byte of the packed mask.
        """
        shape = self.delta[name].shape
        packed_name = mask_name(index, name)
        if not shape:
            return unpack_bits(self.reader[packed_name], (), self.path)
        row_numel = math.prod(shape[1:])
        first, last = start * row_numel, stop * row_numel
        if first % 8:
            raise ValueError(f"rows from {start} of {name!r} do not begin at a byte of its packed mask")
        packed = self.reader.read_rows(packed_name, first // 8, (last + 7) // 8)
        return unpack_bits(packed, (stop - start, *shape[1:]), self.path)

    def factor_base(self, name: str) -> torch.Tensor | None:
        """The factors the deltas of ``name`` are relative to (None: zero, as in every set cftool unifies)."""
        base = factor_base_name(name)
        return self.reader[base] if base in self.reader.tensors else None

    def factor_bases(self) -> dict[str, torch.Tensor]:
        return {name: base for name in self.delta if (base := self.factor_base(name)) is not None}

    def mask_counts(self, index: int) -> Iterator[tuple[str, int, int]]:
        """(tensor name, set bits, elements) of task ``index``'s mask, one tensor at a time."""
        for name, info in self.delta.items():
            yield name, count_set_bits(self.reader[mask_name(index, name)]), info.numel

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> UnifiedSet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_unified(
    path: str | os.PathLike[str], base_sha256: str | None = None, base: str | None = None, base_arch: dict | None = None
) -> UnifiedSet:
    """Open a unified file after checking its kind (and base, as ``open_checkpoint`` does) and its structure."""
    reader = open_checkpoint(path, kind=UNIFIED_KIND, base_sha256=base_sha256, base=base, base_arch=base_arch)
    try:
        return UnifiedSet(reader)
    except BaseException:
        reader.close()
        raise
