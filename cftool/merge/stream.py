"""How tensors are streamed: the row slices a tensor is read, merged and written in (docs/design.md §4)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from cftool.errors import CftoolError
from cftool.io.checkpoint import CheckpointWriter, finite

# 2^18 elements (1 MiB of float32) per input and slice: the slices of eleven inputs and the method's temporaries
# stay within the CPU's caches, which makes streaming faster than working on whole tensors, not only smaller.
DEFAULT_CHUNK_ELEMENTS = 1 << 18

# (description, total) -> advance(n=1): how long work reports progress without knowing about rich.
Progress = Callable[[str, int], Callable[..., None]]


def no_progress(description: str, total: int) -> Callable[..., None]:
    return lambda n=1: None


@dataclass(frozen=True)
class TensorPlan:
    """One tensor of the deltas and the row ranges the engine streams it in."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    rows: list[tuple[int, int]]

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())


Layout = Mapping[str, tuple[torch.dtype, tuple[int, ...]]]


def plan_tensors(layout: Layout, chunk_elements: int | None) -> list[TensorPlan]:
    """Every tensor with the row ranges it is streamed in: slices of about ``chunk_elements`` (None: whole).

    A slice begins at an element whose index is a multiple of 8, so that its bit-packed mask begins at a byte.
    """
    plan = []
    for name, (dtype, shape) in layout.items():
        shape = tuple(shape)
        row_numel = math.prod(shape[1:])
        if not shape:
            rows = [(0, 1)]
        elif chunk_elements is None or not row_numel or shape[0] * row_numel <= chunk_elements:
            rows = [(0, shape[0])]
        else:
            step = 8 // math.gcd(row_numel, 8)
            per_slice = max(step, chunk_elements // row_numel // step * step)
            rows = [(start, min(start + per_slice, shape[0])) for start in range(0, shape[0], per_slice)]
        plan.append(TensorPlan(name, dtype, shape, rows))
    return plan


def write_part(writer: CheckpointWriter, tensor: TensorPlan, name: str, start: int, rows: torch.Tensor) -> None:
    """Write rows of a tensor (or the packed bytes of its mask, ``start`` then counting bytes) at their place;
    a 0-d tensor's whole value (or its one-byte mask) is written at once."""
    if tensor.shape:
        writer.write_rows(name, start, rows)
    else:
        writer.write(name, rows)


def refuse_overflow(rows: torch.Tensor, output: Path, name: str, remedy: str) -> None:
    """Checked on the slices as they are written: finite inputs can still give a result beyond its dtype's range."""
    if not finite(rows):
        raise CftoolError(f"{output}: tensor {name!r} would overflow {rows.dtype} to Inf; {remedy}")
