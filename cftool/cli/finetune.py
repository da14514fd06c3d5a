"""`cftool finetune`: adapt a zero-shot model to a task with CoOp prompts, a linear head, LoRA or full weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import Progress

from cftool.cli.common import (
    DEFAULT_LOG_EVERY,
    BatchSizeOption,
    ConfigOption,
    DataRootOption,
    DeviceOption,
    ForceOption,
    JsonOption,
    LogEveryOption,
    PrototypesOption,
    QuietOption,
    RecipeOption,
    SeedOption,
    WorkersOption,
    console,
    defaults_by,
    emit_json,
    given,
    one_of,
    progress_bar,
    rate,
    recipe_lr,
    resolve_device,
    seed_everything,
)
from cftool.errors import CftoolError
from cftool.options import (
    AUGMENTATION,
    AUGMENTATIONS,
    CLASS_SUBSET,
    CLASS_SUBSETS,
    COOP_INIT,
    DATA_SPEC_FORMS,
    DEVICE,
    DROP_LAST,
    FINETUNE_METHOD,
    FINETUNE_METHODS,
    LABEL_SMOOTHING,
    LORA_ALPHA,
    LORA_INIT,
    LORA_INITS,
    LORA_RANK,
    LORA_TARGET_GROUPS,
    LORA_TARGETS,
    OPTIMIZERS,
    PRECISION,
    PRECISIONS,
    PROTOCOL_AUGMENTATION,
    PROTOCOL_TRAIN_TEMPLATES,
    RANDOM_INIT,
    SCHEDULE,
    SCHEDULES,
    SEED,
    SELECTION,
    SELECTIONS,
    TOWERS,
    TRAIN_BATCH_SIZE,
    TRAIN_TEMPLATE,
    TRAIN_TEMPLATES,
    VAL_IMAGE_SET,
    VAL_IMAGES,
    WARMUP_EPOCHS,
    WARMUP_LR,
    WARMUP_STEPS,
    WEIGHT_DECAY,
    WORKERS,
)

if TYPE_CHECKING:
    from cftool.train import FinetuneResult

# The options of one method or a few (FINETUNE_METHODS[method].options): given to another method, they are refused.
METHOD_SPECIFIC = tuple(dict.fromkeys(name for defaults in FINETUNE_METHODS.values() for name in defaults.options))


def _by_protocol(choices: dict[str, str], otherwise: str) -> str:
    """A default that depends on --data's protocol, as `--help` shows it: ``coop for coop:NAME, …, else none``."""
    return ", ".join(f"{value} for {prefix}:NAME" for prefix, value in choices.items()) + f", else {otherwise}"


# Shared with `continue`, whose unset options keep what the checkpoint records.
Optimizer = one_of(OPTIMIZERS)
Precision = one_of(PRECISIONS)
Schedule = one_of(SCHEDULES)
Selection = one_of(SELECTIONS)
ValImages = one_of(VAL_IMAGES)
Augmentation = one_of(AUGMENTATIONS)
ClassSubset = one_of(CLASS_SUBSETS)
ScheduleHelp = (
    "cosine-step: one cosine over the steps, after --warmup linear steps; cosine-epoch (Dassl's): the lr changes once "
    "per epoch, after --warmup-epochs epochs at --warmup-lr."
)
SelectHelp = (
    "Which epoch's parameters to write: the last, or best-val: after each epoch, accuracy on the validation split, "
    "and the first best epoch is kept."
)
ValImagesHelp = (
    "best-val on a few-shot task: few-shot (min(shots, 4) images per class, drawn as CoOp does) or all (the whole "
    "split, as MergeTune validates)."
)
DropLastHelp = "Leave out each epoch's last partial batch, as Dassl's training loader does."
PrecisionHelp = "auto: bf16 autocast on a GPU, fp32 on the CPU."
AugmentHelp = (
    "Training images: none (the eval preprocessing), or the training transforms of coop (random resized crop at "
    "scale 0.08-1, flip) or zscl (random resized crop at scale 0.9-1)."
)
ClassesHelp = "Train on all classes, or the base or novel half (the first half of the class list is base)."


def finetune_command(
    ctx: typer.Context,
    zs: Annotated[str, typer.Option("--zs", help="Base model: tiny, ViT-B/16, NAME:TAG, hf-hub:ORG/NAME or a file.")],
    data: Annotated[str, typer.Option("--data", help=f"Training task: {DATA_SPEC_FORMS}.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Checkpoint to write (prototypes go beside it).")],
    method: Annotated[one_of(FINETUNE_METHODS), typer.Option("--method", help="What to train.")] = FINETUNE_METHOD,
    classes: Annotated[ClassSubset, typer.Option("--classes", help=ClassesHelp)] = CLASS_SUBSET,
    shots: Annotated[int | None, typer.Option("--shots", help="Training images per class (few-shot).")] = None,
    iterations: Annotated[int | None, typer.Option("--iterations", help="Optimiser steps.")] = None,
    epochs: Annotated[float | None, typer.Option("--epochs", help="Passes over the training images.")] = None,
    batch_size: BatchSizeOption = TRAIN_BATCH_SIZE,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr",
            help="Peak learning rate.",
            show_default=defaults_by({name: defaults.lr for name, defaults in FINETUNE_METHODS.items()}),
        ),
    ] = None,
    optimizer: Annotated[
        Optimizer | None,
        typer.Option(
            "--optimizer",
            help="The optimiser.",
            show_default=defaults_by({name: defaults.optimizer for name, defaults in FINETUNE_METHODS.items()}),
        ),
    ] = None,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="Weight decay.")] = WEIGHT_DECAY,
    warmup: Annotated[
        int, typer.Option("--warmup", min=0, help="Linear warm-up steps before cosine decay.")
    ] = WARMUP_STEPS,
    schedule: Annotated[Schedule, typer.Option("--schedule", help=ScheduleHelp)] = SCHEDULE,
    warmup_epochs: Annotated[
        int, typer.Option("--warmup-epochs", min=0, help="cosine-epoch: epochs at the constant --warmup-lr first.")
    ] = WARMUP_EPOCHS,
    warmup_lr: Annotated[float, typer.Option("--warmup-lr", help="cosine-epoch: the warm-up epochs' lr.")] = WARMUP_LR,
    drop_last: Annotated[bool, typer.Option("--drop-last/--no-drop-last", help=DropLastHelp)] = DROP_LAST,
    select: Annotated[Selection, typer.Option("--select", help=SelectHelp)] = SELECTION,
    val_images: Annotated[ValImages, typer.Option("--val-images", help=ValImagesHelp)] = VAL_IMAGE_SET,
    label_smoothing: Annotated[
        float, typer.Option("--label-smoothing", help="Label smoothing in [0, 1).")
    ] = LABEL_SMOOTHING,
    precision: Annotated[Precision, typer.Option("--precision", help=PrecisionHelp)] = PRECISION,
    augment: Annotated[
        Augmentation | None,
        typer.Option("--augment", help=AugmentHelp, show_default=_by_protocol(PROTOCOL_AUGMENTATION, AUGMENTATION)),
    ] = None,
    n_ctx: Annotated[
        int | None,
        typer.Option(
            "--n-ctx",
            min=1,
            help="coop: context vectors.",
            show_default=f"as many as --ctx-init's tokens, {len(COOP_INIT.split())} for {RANDOM_INIT}",
        ),
    ] = None,
    ctx_init: Annotated[
        str, typer.Option("--ctx-init", help=f"coop: words the context starts from, or '{RANDOM_INIT}'.")
    ] = COOP_INIT,
    rank: Annotated[int, typer.Option("--rank", min=1, help="lora: rank.")] = LORA_RANK,
    alpha: Annotated[
        float, typer.Option("--alpha", help="lora: the update's scale is alpha/rank (ConDU's 1/√rank is alpha √rank).")
    ] = LORA_ALPHA,
    lora_targets: Annotated[
        one_of(LORA_TARGET_GROUPS),
        typer.Option(
            "--lora-targets",
            help="lora: the adapted weights, attention+mlp (attention and MLP projections) or mlp (the MLP's c_fc "
            "and c_proj only, as ConDU-LoRA).",
        ),
    ] = LORA_TARGETS,
    lora_init: Annotated[
        one_of(LORA_INITS),
        typer.Option(
            "--lora-init",
            help="lora: zero-b (A Kaiming, B zero: training starts at the base) or condu (A and B random, standard "
            "deviation 0.01, as ConDU-LoRA).",
        ),
    ] = LORA_INIT,
    towers: Annotated[
        str,
        typer.Option(
            "--towers", help=f"lora, full: the towers to train, {', '.join(TOWERS)} or both ({','.join(TOWERS)})."
        ),
    ] = ",".join(TOWERS),
    train_templates: Annotated[
        one_of(TRAIN_TEMPLATES) | None,
        typer.Option(
            "--train-templates",
            help="lora, full: the training loss's class text features from the first template (ZSCL's MTIL training) "
            "or the mean of all; evaluation always uses all.",
            show_default=_by_protocol(PROTOCOL_TRAIN_TEMPLATES, TRAIN_TEMPLATE),
        ),
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
    seed: SeedOption = SEED,
    force: ForceOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    config: ConfigOption = None,
    recipe: RecipeOption = None,
) -> None:
    """Fine-tune a zero-shot model on a task; writes the checkpoint and, beside it, the task's prototypes (for ConDU's
    routing; --no-prototypes skips their pass over the whole training split).

    Kinds written: coop → prompt, head → head, lora → lora, full → model. Under `torchrun --nproc_per_node=N` the
    same command trains with DDP (--batch-size is global). Ctrl-C saves the trainer state; --resume continues it.

    Example: cftool finetune --zs tiny --data toy:flowers --classes base --shots 16 --method coop --epochs 50 --lr 0.05
    -o coop.safetensors

    Example (ConDU-LoRA's LoRA): cftool finetune --zs ViT-B/16 --data mtil:DTD --method lora --lora-targets mlp
    --lora-init condu --rank 64 --alpha 8 --lr 2e-3 --iterations 1000 -o dtd-lora.safetensors
    """
    from cftool.data import DatasetSpec
    from cftool.data.augment import default_augmentation
    from cftool.train import FinetuneJob, TrainOptions, finetune

    method_options = _method_options(ctx, method, data)
    train_options = TrainOptions(
        iterations=iterations,
        epochs=epochs,
        batch_size=batch_size,
        lr=recipe_lr(ctx, data, lr) if lr is not None else FINETUNE_METHODS[method].lr,
        optimizer=optimizer or FINETUNE_METHODS[method].optimizer,
        weight_decay=weight_decay,
        warmup=warmup,
        label_smoothing=label_smoothing,
        seed=seed,
        precision=precision,
        augment=augment or default_augmentation(data),
        schedule=schedule,
        warmup_epochs=warmup_epochs,
        warmup_lr=warmup_lr,
        drop_last=drop_last,
        select=select,
    )
    seed_everything(seed)
    job = FinetuneJob(
        zs=zs,
        data=DatasetSpec(data, classes=classes, shots=shots, seed=seed, val_images=val_images),
        method=method,
        output=output,
        train=train_options,
        method_options=method_options,
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
        recipe=recipe,
    )
    with progress_bar(log_every) as progress:
        result = finetune(job, training_reporter(progress))
    if result.output is None:  # a DDP rank other than 0
        return
    print_result(result)
    if json_output:
        emit_json(result_summary(result))


def _method_options(ctx: typer.Context, method: str, data: str) -> dict[str, Any]:
    """``method``'s own options (FINETUNE_METHODS[method].options) from the command's parameters; another method's
    option, given, is refused rather than ignored."""
    from cftool.kinds.method import default_train_templates

    own = FINETUNE_METHODS[method].options
    misplaced = [name for name in given(ctx, METHOD_SPECIFIC) if name not in own]
    if misplaced:
        flag = "--" + misplaced[0].replace("_", "-")
        methods = " or ".join(name for name, defaults in FINETUNE_METHODS.items() if misplaced[0] in defaults.options)
        raise CftoolError(f"{flag} applies to --method {methods} only, not {method}")
    options = {name: ctx.params[name] for name in own}
    if "towers" in options:
        options["towers"] = tuple(tower.strip() for tower in options["towers"].split(",") if tower.strip())
    if "train_templates" in options:
        options["train_templates"] = options["train_templates"] or default_train_templates(data)
    return options


def training_reporter(progress: Progress) -> Callable[[str, int], Callable[..., None]]:
    """The library's progress callback on ``progress``: the training phase advances by steps with their loss and
    images per second, the others (encoding, prototypes, evaluation) by images."""

    def begin(description: str, total: int) -> Callable[..., None]:
        task = progress.add_task(description, total=total, unit="images")

        def advance(n: int = 1, loss: float | None = None, speed: float | None = None) -> None:
            if loss is None:
                progress.update(task, advance=n)
                return
            status = f"{description}  loss {loss:.4f}  {rate(speed)} img/s"
            progress.update(task, advance=n, description=status, unit="step", loss=loss, speed=speed)

        return advance

    return begin


def result_summary(result: FinetuneResult) -> dict[str, Any]:
    return {
        "output": str(result.output),
        "prototypes": None if result.prototypes is None else str(result.prototypes),
        "kind": result.kind,
        "task": result.task,
        "steps": result.steps,
        "first_loss": result.losses[0] if result.losses else None,
        "final_loss": result.losses[-1] if result.losses else None,
        "images_per_second": result.images_per_second,
        "metrics": str(result.metrics),
        "test_accuracy": result.test_accuracy,
        "selection": result.selection,
    }


def print_result(result: FinetuneResult) -> None:
    done = [f"{result.steps} step{'s' if result.steps != 1 else ''}"]
    if len(result.losses) == 1:
        done.append(f"loss {result.losses[0]:.4f}")
    elif result.losses:
        done.append(f"loss {result.losses[0]:.4f} → {result.losses[-1]:.4f}")
    if result.images_per_second is not None:  # None: this process ran no step (a finished run resumed)
        done.append(f"{rate(result.images_per_second)} img/s")
    written = [f"{result.output} ({result.kind})", *([] if result.prototypes is None else [str(result.prototypes)])]
    console.print(f"{result.task}: {', '.join(done)}; wrote {', '.join(written)} and {result.metrics}")
    if result.selection is not None:
        chosen = result.selection
        console.print(f"kept epoch {chosen['epoch']}: best validation accuracy {chosen['val_accuracy']:.1f} %")
    if result.test_accuracy is not None:
        console.print(f"test accuracy on {result.task}: {result.test_accuracy:.1f} %")
