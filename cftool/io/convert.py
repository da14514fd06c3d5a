"""`export` of a `model` file as a plain open_clip state dict, and `import` of a ConDU session folder as a unified
set."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from cftool.errors import CftoolError
from cftool.io.base_model import BaseModel
from cftool.io.bitpack import pack_bits
from cftool.io.checkpoint import CheckpointWriter, open_checkpoint, save_checkpoint
from cftool.io.command_files import task_prototypes_path
from cftool.io.foreign import (
    condu_task_names,
    read_condu_prototypes,
    read_condu_triggers,
    read_condu_unified,
    read_state_dict,
    refuse_non_finite,
)
from cftool.io.header import MODEL_KIND, PROTOTYPES_KIND, PROTOTYPES_TENSOR, UNIFIED_KIND
from cftool.io.outputs import atomic_output, refuse_existing, torch_save
from cftool.io.unified import (
    LORA_KEY,
    RESCALERS,
    TaskEntry,
    factor_base_name,
    mask_name,
    tasks_metadata,
    unified_layout,
)
from cftool.options import CONDU, CONDU_LORA


def as_dtype(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """A floating tensor in ``dtype`` (None keeps it); integer tensors (BatchNorm's counters) are left as they are."""
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def export_plain(source: Path, output: Path, overwrite: bool, dtype: torch.dtype | None = None) -> Path:
    """A `model` file → a plain open_clip state dict: safetensors without cftool metadata, or a torch pickle, in the
    file's dtypes unless ``dtype`` names one for its floating tensors."""
    with open_checkpoint(source, kind=MODEL_KIND) as ckpt:
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
    lora_base: Path | None = None,
) -> list[Path]:
    """A ConDU session folder (``unified.pth``, ``{task}.pth``, ``prototypes.pth``) → one unified file, plus a
    `prototypes` file per task that has prototypes, named ``{task}.prototypes.safetensors`` in ``prototypes_dir``.

    The folder records no class names, templates or base hash: ``base`` names the model it was made from, and the
    tasks' class names stay unknown. The unified delta keeps its dtype; each mask is bit-packed as it is written,
    one task file in memory at a time.
    """
    tasks = condu_task_names(folder)
    unified = read_condu_unified(folder)
    lora = _condu_lora_factors(folder, unified, base, lora_base)
    for name, tensor in unified.items():
        if lora is not None and name in lora.reference_names:
            continue
        dtype, shape = base.layout.get(name, (None, None))
        fits = dtype is not None and tuple(shape) == tuple(tensor.shape) and dtype.is_floating_point
        if not (fits and tensor.is_floating_point()):
            found = "absent" if dtype is None else f"{dtype} {list(shape)}"
            raise CftoolError(
                f"{folder / 'unified.pth'}: tensor {name!r} ({tensor.dtype} {list(tensor.shape)}) does not fit the "
                f"base model {base.canonical} (there: {found}); pass the --zs the session was trained from"
            )
    prototypes = read_condu_prototypes(folder)
    prototype_files = {task: task_prototypes_path(prototypes_dir, task) for task in tasks if task in prototypes}
    for path in [output, *prototype_files.values()]:
        refuse_existing(path, overwrite)

    config: dict = {"imported_from": str(folder)}
    if lora is None:
        kept = {name: tensor.detach().contiguous() for name, tensor in unified.items()}
        layout = unified_layout({name: (t.dtype, tuple(t.shape)) for name, t in kept.items()}, len(tasks))
    else:
        config[LORA_KEY] = lora.config
        kept = {ours: unified[theirs].detach().T.contiguous() for ours, theirs in lora.names.items()}
        factor_base = {ours: lora.base[theirs].detach().T.contiguous() for ours, theirs in lora.names.items()}
        layout = unified_layout({name: (t.dtype, tuple(t.shape)) for name, t in kept.items()}, len(tasks), factor_base)
    extra = tasks_metadata([TaskEntry(task) for task in tasks])
    method = CONDU.name if lora is None else CONDU_LORA.name
    header = base.header(UNIFIED_KIND, method=method, config=config, extra=extra)
    with CheckpointWriter(output, layout, header, overwrite=overwrite) as writer:
        for name, tensor in kept.items():
            writer.write(name, tensor)
        if lora is not None:
            for name, tensor in factor_base.items():
                writer.write(factor_base_name(name), tensor)
        rescalers = []
        for index, task in enumerate(tasks):
            masks, rescaler = read_condu_triggers(folder, task, unified)
            if lora is None:
                for name, mask in masks.items():
                    writer.write(mask_name(index, name), pack_bits(mask))
            else:
                lora.refuse_weight_updates(folder / f"{task}.pth", unified, masks)
                for ours, theirs in lora.names.items():
                    writer.write(mask_name(index, ours), pack_bits(masks[theirs].T.contiguous()))
            rescalers.append(rescaler)
        writer.write(RESCALERS, torch.tensor(rescalers, dtype=torch.float32))
    for task, path in prototype_files.items():
        prototype_header = base.header(PROTOTYPES_KIND, task=task, method=CONDU.name, config=config)
        save_checkpoint(path, {PROTOTYPES_TENSOR: prototypes[task]}, prototype_header, overwrite=overwrite)
    return [output, *prototype_files.values()]


# ConDU-LoRA's factors (clip/model_lora.py:15-16): lora_A [in, rank] and lora_B [rank, out] of each LoRALinear, named
# after the module (``...mlp.c_fc.lora_A``); cftool stores A [rank, in] and B [out, rank] under the weight's name.
_REFERENCE_FACTORS = {".lora_A": "lora_A", ".lora_B": "lora_B"}


@dataclass(frozen=True)
class _CondULoRA:
    names: dict[str, str]  # cftool factor name -> the reference's
    base: dict[str, torch.Tensor]  # the reference's name -> pretrained.pth's factor
    config: dict  # rank, alpha and targets

    @property
    def reference_names(self) -> set[str]:
        return set(self.names.values())

    def refuse_weight_updates(self, path: Path, unified: dict[str, torch.Tensor], masks: dict) -> None:
        """The reference's unified.pth holds every tensor of the LoRA model; its weights are frozen (finetune.py
        trains only the factors), so their deltas are zero. A task whose expert changes one is not a LoRA session."""
        for name, tensor in unified.items():
            if name not in self.reference_names and bool((masks[name] & (tensor != 0)).any()):
                raise CftoolError(
                    f"{path}: the expert changes {name!r}, a weight and not a LoRA factor; a ConDU-LoRA session "
                    "trains only lora_A and lora_B: import a session of one kind"
                )


def _condu_lora_factors(
    folder: Path, unified: dict[str, torch.Tensor], base: BaseModel, lora_base: Path | None
) -> _CondULoRA | None:
    """The factors of a ConDU-LoRA session (None: a session of full weights), checked against the base model, with the
    factors of the run's pretrained model its deltas are relative to (ConDU src/main.py:57-82)."""
    reference = sorted(name for name in unified if name.endswith(tuple(_REFERENCE_FACTORS)))
    if not reference:
        if lora_base is not None:
            raise CftoolError(f"--lora-base: {folder} holds no LoRA factors (lora_A, lora_B); drop --lora-base")
        return None
    if lora_base is None:
        raise CftoolError(
            f"{folder}: a ConDU-LoRA session, whose factor deltas are relative to the factors of the run's "
            "pretrained.pth (a pickled model, which cftool does not unpickle); pass --lora-base FILE, that model's "
            "state dict, saved in a trusted Python: torch.save(torch.load('pretrained.pth', weights_only=False)"
            ".state_dict(), 'pretrained-state.pth')"
        )
    pretrained = read_state_dict(lora_base)
    modules = sorted({name.rsplit(".", 1)[0] for name in reference})
    names, rank = {}, None
    for module in modules:
        a, b = unified.get(f"{module}.lora_A"), unified.get(f"{module}.lora_B")
        target = f"{module}.weight"
        if a is None or b is None:
            raise CftoolError(f"{folder / 'unified.pth'}: {module!r} has only one of lora_A and lora_B")
        weight = base.layout.get(target)
        fits = a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[0]
        if not fits or weight is None or tuple(weight[1]) != (b.shape[1], a.shape[0]):
            raise CftoolError(
                f"{folder / 'unified.pth'}: the factors of {module!r} ({list(a.shape)}, {list(b.shape)}) do not adapt "
                f"a weight of the base model {base.canonical}; pass the --zs the session was trained from"
            )
        if rank is not None and a.shape[1] != rank:
            raise CftoolError(f"{folder / 'unified.pth'}: {module!r} has rank {a.shape[1]}, other factors {rank}")
        rank = a.shape[1]
        for suffix, factor in _REFERENCE_FACTORS.items():
            theirs = f"{module}{suffix}"
            found = pretrained.get(theirs)
            if found is None or found.shape != unified[theirs].shape or not found.is_floating_point():
                raise CftoolError(
                    f"{lora_base}: has no factor {theirs!r} of shape {list(unified[theirs].shape)}; pass the state "
                    "dict of the run's pretrained.pth"
                )
            names[f"{target}.{factor}"] = theirs
    order = {name: index for index, name in enumerate(base.layout)}
    targets = sorted((f"{module}.weight" for module in modules), key=order.__getitem__)
    names = {f"{target}.{factor}": names[f"{target}.{factor}"] for target in targets for factor in ("lora_A", "lora_B")}
    refuse_non_finite(lora_base, {theirs: pretrained[theirs] for theirs in names.values()})
    # The reference scales by 1/√rank (clip/model_lora.py:17), which is alpha / rank for alpha = √rank.
    config = {"rank": rank, "alpha": math.sqrt(rank), "targets": targets}
    return _CondULoRA(names, {theirs: pretrained[theirs] for theirs in names.values()}, config)
