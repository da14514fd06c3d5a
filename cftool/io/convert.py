"""File summaries for `cftool inspect`, and `export` of a `model` file as a plain open_clip state dict."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from cftool.errors import CftoolError
from cftool.io.checkpoint import CheckpointWriter, Header, atomic_output, open_checkpoint, read_header

FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def summarize(path: Path) -> dict:
    """Everything `inspect` shows about a file, from its header alone."""
    tensors, metadata = read_header(path)
    header = Header.from_metadata(metadata, path) if "cftool.format" in metadata else None
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
    }


def non_finite_counts(path: Path, advance: Callable[[], None] = lambda: None) -> dict[str, int]:
    """NaN/Inf count of every floating-point tensor that has any, reading one tensor at a time."""
    tensors, _ = read_header(path)
    counts = {}
    with safe_open(path, framework="pt") as handle:
        for name, info in tensors.items():
            if info.dtype in FLOAT_DTYPES:
                bad = int((~torch.isfinite(handle.get_tensor(name))).sum())
                if bad:
                    counts[name] = bad
            advance()
    return counts


def export_plain(source: Path, output: Path, overwrite: bool) -> Path:
    """A `model` file → a plain open_clip state dict: safetensors without cftool metadata, or a torch pickle."""
    with open_checkpoint(source, kind="model") as ckpt:
        if output.suffix == ".safetensors":
            layout = {name: (info.torch_dtype, info.shape) for name, info in ckpt.tensors.items()}
            with CheckpointWriter(output, layout, header=None, overwrite=overwrite) as writer:
                for name in layout:
                    writer.write(name, ckpt[name])
            return output
        if output.suffix in (".pt", ".pth", ".bin"):
            state_dict = ckpt.load_all()
            with atomic_output(output, overwrite) as tmp:
                torch.save(state_dict, tmp)
            return output
    raise CftoolError(f"{output}: unknown output format; use .safetensors, .pt, .pth or .bin")
