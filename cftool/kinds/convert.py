"""Conversions that need the base model: foreign checkpoints into cftool files (names and shapes checked against
the base), and a zoo model out as a `model` file."""

from __future__ import annotations

from pathlib import Path

import torch

from cftool.errors import CftoolError
from cftool.io.checkpoint import check_shapes, save_checkpoint
from cftool.io.convert import as_dtype
from cftool.io.foreign import read_coop_prompt, read_state_dict, refuse_non_finite
from cftool.io.header import MODEL_KIND
from cftool.kinds.prompt import CoOp
from cftool.zoo.base import openai_extras_removed
from cftool.zoo.base_weights import BaseWeights
from cftool.zoo.models import ZooModel


def import_full_model(
    source: Path, base: BaseWeights, output: Path, task: str | None, overwrite: bool, dtype: torch.dtype | None = None
) -> Path:
    """An open_clip/OpenAI state dict fine-tuned from ``base`` → a `model` file (names and shapes checked), in the
    file's dtypes unless ``dtype`` names one."""
    state_dict, _ = openai_extras_removed(read_state_dict(source))
    refuse_non_finite(source, state_dict)
    state_dict = {name: as_dtype(tensor, dtype) for name, tensor in state_dict.items()}
    expected = {name: shape for name, (_, shape) in base.layout.items()}
    check_shapes(source, {name: tuple(t.shape) for name, t in state_dict.items()}, expected)
    header = base.header(MODEL_KIND, task=task, method="import", config={"imported_from": source.name})
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
    # The start token, the context, at least one class-name token, the period and the end token.
    if ctx.shape[-2] + 4 > zoo.model.context_length:
        raise CftoolError(
            f"{source}: {ctx.shape[-2]} context vectors leave no room for a class name in the "
            f"{zoo.model.context_length}-token context of {zoo.spec.canonical}; pass the --zs they were trained with"
        )
    _check_saved_token_embeddings(source, zoo, info["token_prefix"], info["token_suffix"])
    # What continuing it needs and the file does not say: its shape, and where its training started (inferred).
    config = {
        "n_ctx": ctx.shape[-2],
        "class_specific": info["class_specific"],
        "ctx_init": CoOp.inferred_init(zoo, ctx),
        "imported_from": source.name,
    }
    if info.get("epoch") is not None:
        config["epoch"] = info["epoch"]
    header = zoo.base_header(CoOp.kind, task=task, method=CoOp.name, config=config)
    return save_checkpoint(output, {"ctx": ctx}, header, overwrite=overwrite)


def _check_saved_token_embeddings(
    source: Path, zoo: ZooModel, prefix: torch.Tensor | None, suffix: torch.Tensor | None
) -> None:
    """CoOp saves the base's embedding of the start token (``token_prefix``) and of the class names, end and padding
    (``token_suffix``): equal widths but other values mean the prompt was trained on other weights."""
    table = zoo.model.token_embedding.weight.detach().float().cpu()
    start_token, padding_token = int(zoo.tokenizer([""])[0][0]), 0
    # (name, saved tensor, which of its positions to check, the token that position holds)
    checks = (("token_prefix", prefix, 0, start_token), ("token_suffix", suffix, -1, padding_token))
    for name, tensor, position, token in checks:
        if tensor is None or tensor.dim() < 2 or not tensor.numel() or tensor.shape[-1] != table.shape[1]:
            continue
        found = tensor.reshape(-1, tensor.shape[-1])[position].float()
        # CoOp computes them in the model's fp16; the base here holds the same values in fp32.
        if not torch.allclose(found, table[token], rtol=1e-2, atol=1e-3):
            raise CftoolError(
                f"{source}: its saved {name} is not the token embedding of the --zs model {zoo.spec.canonical}; the "
                "prompt was trained on other weights: pass the --zs it was trained with"
            )


def export_base(base: BaseWeights, output: Path, overwrite: bool, dtype: torch.dtype | None = None) -> Path:
    """A base's weights as a `model` file, so a base can be materialised, hashed and shared."""
    state = {name: as_dtype(tensor, dtype) for name, tensor in base.items()}
    return save_checkpoint(output, state, base.header(MODEL_KIND), overwrite=overwrite)
