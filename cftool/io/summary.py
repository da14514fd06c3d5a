"""What `cftool inspect` shows about a file: its header, read without importing torch (only a unified set's masks
and the `--check` scan of the values need it), so that inspecting a file takes a fraction of a second."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cftool.io.header import UNIFIED_KIND, Header, is_cftool_metadata, read_header

if TYPE_CHECKING:
    from cftool.io.unified import UnifiedSet

# What can hold NaN or Inf and torch can load: floating and complex tensors.
CHECKED_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "C64"}


def summarize(path: Path) -> dict:
    """Everything `inspect` shows about a file, from its header alone."""
    tensors, metadata = read_header(path)
    header = Header.from_metadata(metadata, path) if is_cftool_metadata(metadata) else None
    tasks = None
    if header and header.kind == UNIFIED_KIND:
        from cftool.io.unified import open_unified  # torch, for the masks: only unified sets pay for it

        with open_unified(path) as unified:
            tasks = unified_tasks(unified)
            tensors = unified.delta  # a unified set's parameters are its unified delta's, not its masks' bytes
    return {
        "file": str(path),
        "kind": header.kind if header else None,
        "base": header.base if header else None,
        "task": header.task if header else None,
        "tensors": len(tensors),
        "parameters": sum(info.numel for info in tensors.values()),
        "dtypes": sorted({info.dtype for info in tensors.values()}),
        "bytes": path.stat().st_size,
        "metadata": metadata,
        **({"tasks": tasks} if tasks is not None else {}),
    }


def unified_tasks(unified: UnifiedSet) -> list[dict]:
    """Every task of a unified set: its class count, rescaler and mask density (the fraction of parameters its
    mask keeps), reading one packed mask at a time."""
    summaries = []
    for index, task in enumerate(unified.tasks):
        counts = list(unified.mask_counts(index))
        elements = sum(total for _, _, total in counts)
        summaries.append(
            {
                "task": task.task,
                "classes": len(task.classnames) if task.classnames is not None else None,
                "rescaler": float(unified.rescalers[index]),
                "mask_density": sum(ones for _, ones, _ in counts) / elements if elements else 0.0,
            }
        )
    return summaries


def non_finite_counts(path: Path, advance: Callable[[], None] = lambda: None) -> dict[str, int]:
    """NaN/Inf count of every floating-point tensor that has any, reading one tensor at a time."""
    import torch
    from safetensors import safe_open

    tensors, _ = read_header(path)
    counts = {}
    with safe_open(path, framework="pt") as handle:
        for name, info in tensors.items():
            if info.dtype in CHECKED_DTYPES:
                values = handle.get_tensor(name)
                # torch has no isfinite for its 8-bit floats; every one of their values is exact in float32.
                values = values if values.is_complex() else values.float()
                bad = int((~torch.isfinite(values)).sum())
                if bad:
                    counts[name] = bad
            advance()
    return counts
