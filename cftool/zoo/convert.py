"""Conversions that need the base model: foreign checkpoints into cftool files (names and shapes checked against
the base), and a zoo model out as a `model` file."""

from __future__ import annotations

from pathlib import Path

from cftool.errors import CftoolError
from cftool.io.checkpoint import check_shapes, save_checkpoint
from cftool.io.foreign import read_coop_prompt, read_state_dict
from cftool.zoo.models import ZooModel


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
