"""Task deltas: ``δ = θ − θ_0`` over the floating-point tensors of a fine-tuned checkpoint, and back
(docs/design.md §5.2).

Integer tensors (BatchNorm's ``num_batches_tracked`` counters) are not weights and have no delta: a model rebuilt
from a delta takes them from the base. Tensors are handled one at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from cftool.errors import CftoolError
from cftool.io.base_model import BaseModel
from cftool.io.checkpoint import CheckpointReader, CheckpointWriter, Header, check_base, check_shapes
from cftool.io.header import DELTA_KIND, HEAD_KIND, LORA_KIND, MODEL_KIND, PROMPT_KIND
from cftool.io.outputs import check_outputs
from cftool.merge.lora import merged_lora_state
from cftool.merge.precision import check_scale, refuse_scale_overflow, work_dtype
from cftool.merge.stream import refuse_overflow

# What a checkpoint of a kind that has no delta holds instead, for the refusal.
_NOT_WEIGHTS = {
    PROMPT_KIND: "learned prompt context vectors, not weights of the model",
    HEAD_KIND: "a linear classifier on image features, not weights of the model",
}


def check_base_fits(source: Path, layout: dict, base: BaseModel) -> None:
    """Every tensor of a delta is a floating-point tensor of the base, of the same shape."""
    for name, (_, shape) in layout.items():
        if name not in base.layout:
            raise CftoolError(
                f"{source}: tensor {name!r} is not in the base model {base.canonical}; pass the --zs it was made from"
            )
        base_dtype, base_shape = base.layout[name]
        if tuple(base_shape) != tuple(shape) or not base_dtype.is_floating_point:
            raise CftoolError(
                f"{source}: tensor {name!r} is {list(shape)} here but {base_dtype} {list(base_shape)} in the base "
                f"model {base.canonical}; pass the --zs it was made from"
            )


def make_delta(
    source: CheckpointReader, base: BaseModel, output: Path, dtype: torch.dtype | None = None, overwrite: bool = False
) -> Path:
    """A `model` or `lora` checkpoint minus its base, as a `delta` file in the checkpoint's dtype (or ``dtype``)."""
    header = source.header
    if header.kind in _NOT_WEIGHTS:
        raise CftoolError(
            f"{source.path}: a {header.kind!r} checkpoint holds {_NOT_WEIGHTS[header.kind]}, so it has no delta; "
            "fine-tune with --method full or lora to make one"
        )
    if header.kind not in (MODEL_KIND, LORA_KIND):
        raise CftoolError(
            f"{source.path}: expected a {MODEL_KIND!r} or {LORA_KIND!r} checkpoint, found {header.kind!r}"
        )
    check_outputs({"-o": output}, [source.path], overwrite)
    check_base(source.path, header, base.sha256, base.canonical, base.architecture)
    if header.kind == MODEL_KIND:
        check_shapes(source.path, source.tensors, {name: shape for name, (_, shape) in base.layout.items()})
        tuned = source.__getitem__
    else:
        targets = (header.config or {}).get("targets", [])
        merged = merged_lora_state({name: base[name] for name in targets if name in base.layout}, source)

        def tuned(name: str) -> torch.Tensor:
            return merged[name] if name in merged else base[name]

    floating = [name for name, (base_dtype, _) in base.layout.items() if base_dtype.is_floating_point]
    layout = {name: (dtype or _dtype_of(source, name, base), base.layout[name][1]) for name in floating}
    config = {"source": source.path.name, "source_kind": header.kind}
    out_header = base.header(DELTA_KIND, **_carried(header), config=config)
    with CheckpointWriter(output, layout, out_header, overwrite=overwrite) as writer:
        for name in floating:
            theta, theta0 = tuned(name), base[name]
            work = work_dtype(torch.promote_types(theta.dtype, theta0.dtype))
            step = (theta.to(work) - theta0.to(work)).to(layout[name][0])
            refuse_overflow(step, output, name, "write the delta in a wider --dtype")
            writer.write(name, step)
    return output


def _carried(header: Header) -> dict:
    """What a delta carries over from its checkpoint, and a model from its delta."""
    return {
        "task": header.task,
        "classnames": header.classnames,
        "template": header.template,
        "method": header.method,
        "run": header.run,
    }


def _dtype_of(source: CheckpointReader, name: str, base: BaseModel) -> torch.dtype:
    """The dtype the fine-tuned tensor has: the file's for a `model`, the base's for weights a `lora` merges into."""
    return source.tensors[name].torch_dtype if source.header.kind == MODEL_KIND else base.layout[name][0]


def added_delta(
    state: Mapping[str, torch.Tensor], delta: Iterable[tuple[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """``θ0 + δ`` in memory: the base weights ``state`` with each delta tensor added (in a float work dtype, kept in
    the base's dtype); tensors the delta lacks stay the base's."""
    weights = dict(state)
    for name, step in delta:
        theta0 = weights[name]
        work = work_dtype(torch.promote_types(theta0.dtype, step.dtype))
        weights[name] = (theta0.to(work) + step.to(work)).to(theta0.dtype)
    return weights


def apply_delta(
    delta: CheckpointReader, base: BaseModel, output: Path, scale: float = 1.0, overwrite: bool = False
) -> Path:
    """``θ_0 + scale · δ`` as a `model` file, in the base's dtypes; tensors the delta lacks are the base's."""
    check_scale("--scale", scale)
    check_outputs({"-o": output}, [delta.path], overwrite)
    floating = [dtype for dtype, _ in base.layout.values() if dtype.is_floating_point]
    refuse_scale_overflow("--scale", scale, floating, output)
    check_base(delta.path, delta.header, base.sha256, base.canonical, base.architecture)
    check_base_fits(delta.path, {name: (info.torch_dtype, info.shape) for name, info in delta.tensors.items()}, base)
    header = delta.header
    out_header = base.header(MODEL_KIND, **_carried(header), config={"delta": delta.path.name, "scale": scale})
    with CheckpointWriter(output, base.layout, out_header, overwrite=overwrite) as writer:
        for name, (base_dtype, _) in base.layout.items():
            theta0 = base[name]
            if name in delta:
                step = delta[name]
                work = work_dtype(torch.promote_types(theta0.dtype, step.dtype))
                theta0 = (theta0.to(work) + scale * step.to(work)).to(base_dtype)
                refuse_overflow(theta0, output, name, f"use a --scale smaller in magnitude than {scale}")
            writer.write(name, theta0)
    return output
