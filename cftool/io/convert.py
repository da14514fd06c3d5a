"""`export` of a `model` file as a plain open_clip state dict, and `import` of a ConDU session folder as a unified
set."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cftool.errors import CftoolError
from cftool.io.bitpack import pack_bits
from cftool.io.checkpoint import (
    CheckpointWriter,
    atomic_output,
    open_checkpoint,
    refuse_existing,
    save_checkpoint,
    torch_save,
)
from cftool.io.foreign import condu_task_names, read_condu_prototypes, read_condu_triggers, read_condu_unified

if TYPE_CHECKING:  # the protocol of the base weights; io itself imports nothing above it
    from cftool.merge.stream import BaseModel
from cftool.io.unified import (
    RESCALERS,
    TaskEntry,
    mask_name,
    tasks_metadata,
    unified_layout,
)


def as_dtype(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """A floating tensor in ``dtype`` (None keeps it); integer tensors (BatchNorm's counters) are left as they are."""
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def export_plain(source: Path, output: Path, overwrite: bool, dtype: torch.dtype | None = None) -> Path:
    """A `model` file → a plain open_clip state dict: safetensors without cftool metadata, or a torch pickle, in the
    file's dtypes unless ``dtype`` names one for its floating tensors."""
    with open_checkpoint(source, kind="model") as ckpt:
        if output.suffix == ".safetensors":
            layout = {
                name: (as_dtype(torch.empty(0, dtype=info.torch_dtype), dtype).dtype, info.shape)
                for name, info in ckpt.tensors.items()
            }
            with CheckpointWriter(output, layout, header=None, overwrite=overwrite) as writer:
                for name in layout:
                    writer.write(name, as_dtype(ckpt[name], dtype))
            return output
        if output.suffix in (".pt", ".pth", ".bin"):
            state_dict = {name: as_dtype(tensor, dtype) for name, tensor in ckpt.load_all().items()}
            with atomic_output(output, overwrite) as tmp:
                torch_save(state_dict, tmp)
            return output
    raise CftoolError(f"{output}: unknown output format; use .safetensors, .pt, .pth or .bin")


def import_condu_session(
    folder: Path,
    base: BaseModel,
    output: Path,
    prototypes_dir: Path,
    overwrite: bool = False,
) -> list[Path]:
    """A ConDU session folder (``unified.pth``, ``{task}.pth``, ``prototypes.pth``) → one unified file, plus a
    `prototypes` file per task that has prototypes, named ``{task}.prototypes.safetensors`` in ``prototypes_dir``.

    The folder records no class names, templates or base hash: ``base`` names the model it was made from, and the
    tasks' class names stay unknown. The unified delta keeps its dtype; each mask is bit-packed as it is written,
    one task file in memory at a time.
    """
    tasks = condu_task_names(folder)
    unified = read_condu_unified(folder)
    for name, tensor in unified.items():
        dtype, shape = base.layout.get(name, (None, None))
        fits = dtype is not None and tuple(shape) == tuple(tensor.shape) and dtype.is_floating_point
        if not (fits and tensor.is_floating_point()):
            found = "absent" if dtype is None else f"{dtype} {list(shape)}"
            raise CftoolError(
                f"{folder / 'unified.pth'}: tensor {name!r} ({tensor.dtype} {list(tensor.shape)}) does not fit the "
                f"base model {base.canonical} (there: {found}); pass the --zs the session was trained from"
            )
    prototypes = read_condu_prototypes(folder)
    prototype_files = {task: prototypes_dir / f"{task}.prototypes.safetensors" for task in tasks if task in prototypes}
    for path in [output, *prototype_files.values()]:
        refuse_existing(path, overwrite)

    layout = unified_layout({name: (tensor.dtype, tuple(tensor.shape)) for name, tensor in unified.items()}, len(tasks))
    config = {"imported_from": str(folder)}
    extra = tasks_metadata([TaskEntry(task) for task in tasks])
    header = base.header("unified", method="condu", config=config, extra=extra)
    with CheckpointWriter(output, layout, header, overwrite=overwrite) as writer:
        for name, tensor in unified.items():
            writer.write(name, tensor.detach().contiguous())
        rescalers = []
        for index, task in enumerate(tasks):
            masks, rescaler = read_condu_triggers(folder, task, unified)
            for name, mask in masks.items():
                writer.write(mask_name(index, name), pack_bits(mask))
            rescalers.append(rescaler)
        writer.write(RESCALERS, torch.tensor(rescalers, dtype=torch.float32))
    for task, path in prototype_files.items():
        prototype_header = base.header("prototypes", task=task, method="condu", config=config)
        save_checkpoint(path, {"prototypes": prototypes[task]}, prototype_header, overwrite=overwrite)
    return [output, *prototype_files.values()]
