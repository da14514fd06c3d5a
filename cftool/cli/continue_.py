"""`cftool continue`: MergeTune continued fine-tuning of an already fine-tuned checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cftool.cli.common import (
    DEFAULT_LOG_EVERY,
    ConfigOption,
    DataRootOption,
    DeviceOption,
    ForceOption,
    JsonOption,
    LogEveryOption,
    QuietOption,
    RecipeOption,
    WorkersOption,
    emit_json,
    progress_bar,
    resolve_device,
)
from cftool.cli.finetune import (
    AugmentOption,
    DropLastHelp,
    ScheduleHelp,
    SelectHelp,
    ValImagesHelp,
    print_result,
    result_summary,
    training_reporter,
)

# MergeTuneOptions' defaults, spelled out so that `--help` does not import torch (a test keeps them equal).
DEFAULT_LAMBDA_LMC = 1.0
DEFAULT_LAMBDA_ZS = 10.0
DEFAULT_ZS_REG = "feature"
DEFAULT_ZS_LOSS = "cosine"
DEFAULT_LMC_SAMPLES = "0.1,0.3,0.5,0.7,0.9"


def continue_command(
    source: Annotated[Path, typer.Argument(help="Fine-tuned checkpoint: prompt, head, lora or model.")],
    zs: Annotated[
        str | None,
        typer.Option("--zs", help="Base model the checkpoint was made from (default: the one it records)."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Checkpoint to write (default: SOURCE.mergetune.safetensors).")
    ] = None,
    lambda_lmc: Annotated[
        float, typer.Option("--lambda-lmc", help="Weight of the low-loss path to the fine-tuned solution.")
    ] = DEFAULT_LAMBDA_LMC,
    lambda_zs: Annotated[
        float, typer.Option("--lambda-zs", help="Weight of the surrogate of the path to the zero-shot model.")
    ] = DEFAULT_LAMBDA_ZS,
    zs_reg: Annotated[
        str,
        typer.Option("--zs-reg", help="param: ‖w − ŵ1‖²; feature: compare class text features (--zs-loss)."),
    ] = DEFAULT_ZS_REG,
    zs_loss: Annotated[
        str,
        typer.Option(
            "--zs-loss", help="With --zs-reg feature: cosine (1 − mean cosine) or l2 (mean L2 distance), as KgCoOp."
        ),
    ] = DEFAULT_ZS_LOSS,
    lmc_samples: Annotated[
        str,
        typer.Option(
            "--lmc-samples",
            help="α values of the path, comma-separated, or the reference's count N (0.1, 0.1 + 1/N, … ≤ 1).",
        ),
    ] = DEFAULT_LMC_SAMPLES,
    data: Annotated[
        str | None, typer.Option("--data", help="Train on other data than the checkpoint records: toy:TASK, ...")
    ] = None,
    classes: Annotated[str | None, typer.Option("--classes", help="Class subset (default: as recorded).")] = None,
    shots: Annotated[
        int | None, typer.Option("--shots", help="Training images per class (default: as recorded).")
    ] = None,
    iterations: Annotated[
        int | None, typer.Option("--iterations", help="Optimiser steps (default: as recorded).")
    ] = None,
    epochs: Annotated[
        float | None, typer.Option("--epochs", help="Passes over the training images (default: as recorded).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Global batch (default: as recorded).")
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate (default: as recorded).")] = None,
    optimizer: Annotated[str | None, typer.Option("--optimizer", help="sgd or adamw (default: as recorded).")] = None,
    weight_decay: Annotated[
        float | None, typer.Option("--weight-decay", help="Weight decay (default: as recorded).")
    ] = None,
    warmup: Annotated[int | None, typer.Option("--warmup", min=0, help="Warm-up steps (default: as recorded).")] = None,
    schedule: Annotated[str | None, typer.Option("--schedule", help=ScheduleHelp + " (default: the recipe's).")] = None,
    warmup_epochs: Annotated[
        int | None, typer.Option("--warmup-epochs", min=0, help="cosine-epoch: constant-lr epochs first.")
    ] = None,
    warmup_lr: Annotated[float | None, typer.Option("--warmup-lr", help="cosine-epoch: the warm-up lr.")] = None,
    drop_last: Annotated[bool | None, typer.Option("--drop-last/--no-drop-last", help=DropLastHelp)] = None,
    select: Annotated[str | None, typer.Option("--select", help=SelectHelp + " (default: the recipe's).")] = None,
    val_images: Annotated[
        str | None, typer.Option("--val-images", help=ValImagesHelp + " (default: the recipe's).")
    ] = None,
    inherit_recipe: Annotated[
        bool,
        typer.Option(
            "--inherit-recipe",
            help="A CoOp prompt: train with the recipe it records instead of MergeTune's continuation recipe.",
        ),
    ] = False,
    label_smoothing: Annotated[
        float | None, typer.Option("--label-smoothing", help="Label smoothing (default: as recorded).")
    ] = None,
    precision: Annotated[
        str | None, typer.Option("--precision", help="auto, fp32, bf16 or fp16 (default: as recorded).")
    ] = None,
    augment: AugmentOption = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Training seed (default: as recorded; the few-shot draw stays as recorded)."),
    ] = None,
    feature_cache: Annotated[
        bool, typer.Option("--feature-cache/--no-feature-cache", help="Frozen image tower: encode images once.")
    ] = True,
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="Keep cached image features in this folder across runs.")
    ] = None,
    checkpoint_every: Annotated[
        int, typer.Option("--checkpoint-every", min=0, help="Save trainer state every N steps (always on Ctrl-C).")
    ] = 0,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the trainer state beside the output.")
    ] = False,
    evaluate: Annotated[bool, typer.Option("--eval", help="Also report test accuracy of the result.")] = False,
    log_every: LogEveryOption = DEFAULT_LOG_EVERY,
    data_root: DataRootOption = None,
    workers: WorkersOption = 0,
    device: DeviceOption = "auto",
    force: ForceOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    config: ConfigOption = None,
    recipe: RecipeOption = None,
) -> None:
    """MergeTune: continue training a fine-tuned checkpoint so that it regains zero-shot knowledge.

    Training data, class names, templates, method and recipe come from the checkpoint's metadata; flags (and
    --config keys) override them, and options left unset keep the recorded value. A CoOp prompt is trained with
    MergeTune's continuation recipe instead (100 epochs, batch 128, SGD 2e-3, weight decay 5e-4, one warm-up epoch at
    1e-5, cosine per epoch, fp16, drop-last, best-val selection), unless --inherit-recipe. The output has the input's
    kind and is written beside it unless -o says otherwise; the input is never overwritten. Under `torchrun
    --nproc_per_node=N` it trains with DDP. Ctrl-C saves the trainer state; --resume continues it.

    Example: cftool continue coop.safetensors --zs tiny
    """
    from cftool.data import DatasetSpec
    from cftool.train.continued import ContinueJob, continue_training
    from cftool.train.objectives import MergeTuneOptions, parse_lmc_samples
    from cftool.zoo.base import resolve_base

    zs = resolve_base(zs, source)
    train_overrides = _given(
        {
            "iterations": iterations,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "optimizer": optimizer,
            "weight_decay": weight_decay,
            "warmup": warmup,
            "label_smoothing": label_smoothing,
            "precision": precision,
            "seed": seed,
            "augment": augment,
            "schedule": schedule,
            "warmup_epochs": warmup_epochs,
            "warmup_lr": warmup_lr,
            "drop_last": drop_last,
            "select": select,
        }
    )
    data_overrides = _given({"classes": classes, "shots": shots, "val_images": val_images})
    if data_overrides:
        DatasetSpec("check", **data_overrides)  # validates the values before any work
    options = MergeTuneOptions(lambda_lmc, lambda_zs, zs_reg, parse_lmc_samples(lmc_samples), zs_loss)
    job = ContinueJob(
        source=source,
        zs=zs,
        mergetune=options,
        output=output,
        data=data,
        data_overrides=data_overrides,
        train_overrides=train_overrides,
        device=resolve_device(device),
        data_root=data_root,
        force=force,
        resume=resume,
        checkpoint_every=checkpoint_every,
        feature_cache=feature_cache,
        cache_dir=cache_dir,
        workers=workers,
        evaluate=evaluate,
        inherit_recipe=inherit_recipe,
        recipe=recipe,
    )
    with progress_bar(log_every) as progress:
        result = continue_training(job, training_reporter(progress))
    if result.output is None:  # a DDP rank other than 0
        return
    print_result(result)
    if json_output:
        emit_json(result_summary(result))


def _given(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags given on the command line (or in --config): the others keep the checkpoint's recorded values."""
    return {name: value for name, value in flags.items() if value is not None}
