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
    PrototypesOption,
    QuietOption,
    RecipeOption,
    WorkersOption,
    emit_json,
    one_of,
    progress_bar,
    resolve_device,
)
from cftool.cli.finetune import (
    Augmentation,
    AugmentHelp,
    ClassesHelp,
    ClassSubset,
    DropLastHelp,
    Optimizer,
    Precision,
    PrecisionHelp,
    Schedule,
    ScheduleHelp,
    SelectHelp,
    Selection,
    ValImages,
    ValImagesHelp,
    print_result,
    result_summary,
    training_reporter,
)
from cftool.options import (
    DATA_SPEC_FORMS,
    DEVICE,
    LAMBDA_LMC,
    LAMBDA_ZS,
    REFERENCE_LMC_COUNT,
    WORKERS,
    ZS_LOSS,
    ZS_LOSSES,
    ZS_REGULARISER,
    ZS_REGULARISERS,
)

RECORDED = "as recorded"  # an unset training option keeps the value the checkpoint records


def continue_command(
    source: Annotated[Path, typer.Argument(help="Fine-tuned checkpoint: prompt, head, lora or model.")],
    zs: Annotated[
        str | None,
        typer.Option(
            "--zs", help="Base model the checkpoint was made from.", show_default="the one the checkpoint records"
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Checkpoint to write.", show_default="SOURCE.mergetune.safetensors"),
    ] = None,
    lambda_lmc: Annotated[
        float, typer.Option("--lambda-lmc", help="Weight of the low-loss path to the fine-tuned solution.")
    ] = LAMBDA_LMC,
    lambda_zs: Annotated[
        float, typer.Option("--lambda-zs", help="Weight of the surrogate of the path to the zero-shot model.")
    ] = LAMBDA_ZS,
    zs_reg: Annotated[
        one_of(ZS_REGULARISERS),
        typer.Option(
            "--zs-reg",
            help="The surrogate of the zero-shot path. param: the squared distance of the trained parameters to "
            "their zero-shot counterparts (the hand-written context, the zero-shot head, the base weights); feature: "
            "how far the class text features are from the zero-shot model's (--zs-loss).",
        ),
    ] = ZS_REGULARISER,
    zs_loss: Annotated[
        one_of(ZS_LOSSES),
        typer.Option(
            "--zs-loss",
            help="With --zs-reg feature: cosine (1 minus the mean cosine) or l2 (the mean L2 distance), as KgCoOp.",
        ),
    ] = ZS_LOSS,
    lmc_samples: Annotated[
        str,
        typer.Option(
            "--lmc-samples",
            help="Where the path is sampled: α values, comma-separated, or a count N for the reference's grid (0.1, "
            "0.1 + 1/N, … up to 1).",
        ),
    ] = str(REFERENCE_LMC_COUNT),
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help=f"Train on other data than the checkpoint records: {DATA_SPEC_FORMS}.",
            show_default=RECORDED,
        ),
    ] = None,
    classes: Annotated[ClassSubset | None, typer.Option("--classes", help=ClassesHelp, show_default=RECORDED)] = None,
    shots: Annotated[
        int | None, typer.Option("--shots", help="Training images per class.", show_default=RECORDED)
    ] = None,
    iterations: Annotated[
        int | None, typer.Option("--iterations", help="Optimiser steps.", show_default=RECORDED)
    ] = None,
    epochs: Annotated[
        float | None, typer.Option("--epochs", help="Passes over the training images.", show_default=RECORDED)
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Global batch.", show_default=RECORDED)
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate.", show_default=RECORDED)] = None,
    optimizer: Annotated[
        Optimizer | None, typer.Option("--optimizer", help="The optimiser.", show_default=RECORDED)
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option("--weight-decay", help="Weight decay.", show_default=RECORDED)
    ] = None,
    warmup: Annotated[
        int | None, typer.Option("--warmup", min=0, help="Linear warm-up steps.", show_default=RECORDED)
    ] = None,
    schedule: Annotated[Schedule | None, typer.Option("--schedule", help=ScheduleHelp, show_default=RECORDED)] = None,
    warmup_epochs: Annotated[
        int | None,
        typer.Option("--warmup-epochs", min=0, help="cosine-epoch: constant-lr epochs first.", show_default=RECORDED),
    ] = None,
    warmup_lr: Annotated[
        float | None, typer.Option("--warmup-lr", help="cosine-epoch: the warm-up lr.", show_default=RECORDED)
    ] = None,
    drop_last: Annotated[
        bool | None, typer.Option("--drop-last/--no-drop-last", help=DropLastHelp, show_default=RECORDED)
    ] = None,
    select: Annotated[Selection | None, typer.Option("--select", help=SelectHelp, show_default=RECORDED)] = None,
    val_images: Annotated[
        ValImages | None, typer.Option("--val-images", help=ValImagesHelp, show_default=RECORDED)
    ] = None,
    inherit_recipe: Annotated[
        bool,
        typer.Option(
            "--inherit-recipe",
            help="A CoOp prompt: train with the recipe it records instead of MergeTune's continuation recipe.",
        ),
    ] = False,
    label_smoothing: Annotated[
        float | None, typer.Option("--label-smoothing", help="Label smoothing in [0, 1).", show_default=RECORDED)
    ] = None,
    precision: Annotated[
        Precision | None, typer.Option("--precision", help=PrecisionHelp, show_default=RECORDED)
    ] = None,
    augment: Annotated[Augmentation | None, typer.Option("--augment", help=AugmentHelp, show_default=RECORDED)] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Training seed (the few-shot draw stays as recorded).", show_default=RECORDED),
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
    prototypes: PrototypesOption = True,
    log_every: LogEveryOption = DEFAULT_LOG_EVERY,
    data_root: DataRootOption = None,
    workers: WorkersOption = WORKERS,
    device: DeviceOption = DEVICE,
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
        prototypes=prototypes,
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
