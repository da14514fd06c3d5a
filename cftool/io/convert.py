"""Conversions between cftool files and foreign formats, and file summaries for `cftool inspect`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from cftool.errors import CftoolError
from cftool.io.checkpoint import (
    CheckpointWriter,
    Header,
    atomic_output,
    check_shapes,
    open_checkpoint,
    read_header,
    save_checkpoint,
)
from cftool.io.foreign import read_coop_prompt, read_state_dict
from cftool.zoo import ZooModel

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


def import_full_model(source: Path, zoo: ZooModel, output: Path, task: str | None, overwrite: bool) -> Path:
    """An open_clip/OpenAI state dict fine-tuned from ``zoo`` → a `model` file (names and shapes checked)."""
    state_dict = read_state_dict(source)
    expected = {name: tuple(t.shape) for name, t in zoo.model.state_dict().items()}
    check_shapes(source, {name: tuple(t.shape) for name, t in state_dict.items()}, expected)
    header = zoo.base_header("model", task=task, method="import", config={"imported_from": source.name})
    return save_checkpoint(output, {name: state_dict[name] for name in expected}, header, overwrite=overwrite)


def import_coop_prompt(source: Path, zoo: ZooModel, output: Path, task: str | None, overwrite: bool) -> Path:
    """A Dassl/CoOp prompt learner checkpoint → a `prompt` file holding the learned context ``ctx``."""
    ctx, info = read_coop_prompt(source)
    width = zoo.model.token_embedding.weight.shape[1]
    if ctx.shape[-1] != width:
        raise CftoolError(
            f"{source}: context vectors have width {ctx.shape[-1]} but the text tower of {zoo.spec.canonical} has "
            f"width {width}; pass the --zs the prompts were trained with"
        )
    config = {"n_ctx": ctx.shape[-2], "class_specific": info["class_specific"], "imported_from": source.name}
    if info.get("epoch") is not None:
        config["epoch"] = info["epoch"]
    header = zoo.base_header("prompt", task=task, method="coop", config=config)
    return save_checkpoint(output, {"ctx": ctx}, header, overwrite=overwrite)


def export_zoo_model(zoo: ZooModel, output: Path, overwrite: bool) -> Path:
    """A zoo model's weights as a `model` file, so a base can be materialised, hashed and shared."""
    return save_checkpoint(output, zoo.model.state_dict(), zoo.base_header("model"), overwrite=overwrite)


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
