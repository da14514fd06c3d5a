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
    QuietOption,
    RecipeOption,
    SeedOption,
    WorkersOption,
    console,
    emit_json,
    progress_bar,
    rate,
    recipe_lr,
    resolve_device,
    seed_everything,
)
from cftool.errors import CftoolError

if TYPE_CHECKING:
    from cftool.train import FinetuneResult

# The names of cftool.kinds.apply.METHODS, spelled out so that `--help` does not import torch (a test keeps them equal).
METHOD_NAMES = ("coop", "head", "lora", "full")

# Which method each method-specific option belongs to, so that a misplaced option is refused, not ignored.
METHOD_OPTIONS = {
    "n_ctx": ("coop",),
    "rank": ("lora",),
    "alpha": ("lora",),
    "lora_targets": ("lora",),
    "lora_init": ("lora",),
    "towers": ("lora", "full"),
    "train_templates": ("lora", "full"),
}
# cftool.kinds.lora's defaults and choices, spelled out so that `--help` does not import torch (a test keeps them
# equal).
LORA_DEFAULTS = {"rank": 8, "alpha": 16.0, "lora_targets": "attention+mlp", "lora_init": "zero-b"}
DEFAULT_TOWERS = "image,text"

# The names of cftool.data.augment.AUGMENTATIONS, spelled out so that `--help` does not import torch (a test keeps
# them equal). `continue` takes the option too, where unset means the one the checkpoint records.
AUGMENTATION_NAMES = ("none", "coop", "zscl")
# cftool.train.loop's SCHEDULES and SELECTIONS, spelled out for the same reason (a test keeps them equal).
SCHEDULE_NAMES = ("cosine-step", "cosine-epoch")
SELECTION_NAMES = ("last", "best-val")
ScheduleHelp = (
    "cosine-step (one cosine over the steps, after --warmup linear steps) or cosine-epoch (Dassl's: the lr changes "
    "once per epoch, after --warmup-epochs epochs at --warmup-lr)"
)
SelectHelp = (
    "Which epoch's parameters to write: last, or best-val (after each epoch, accuracy on the validation split, and "
    "the first best epoch is kept)"
)
ValImagesHelp = (
    "best-val on a few-shot task: few-shot (min(shots, 4) images per class, drawn as CoOp does) or all (the whole "
    "split, as MergeTune validates)"
)
DropLastHelp = "Leave out each epoch's last partial batch, as Dassl's training loader does."
AugmentOption = Annotated[
    str | None,
    typer.Option(
        "--augment",
        help="Training images: none (the eval preprocessing), coop or zscl, which reproduce the training transforms "
        "of CoOp (random resized crop at scale 0.08-1, flip) and ZSCL (random resized crop at scale 0.9-1). "
        "Default: the reference's for its data (coop for coop:NAME, zscl for mtil:NAME), else none.",
    ),
]


def finetune_command(
    ctx: typer.Context,
    zs: Annotated[str, typer.Option("--zs", help="Base model: tiny, ViT-B/16, NAME:TAG, hf-hub:ORG/NAME or a file.")],
    data: Annotated[str, typer.Option("--data", help="Training task: toy:TASK, folder:PATH, coop:NAME or mtil:NAME.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Checkpoint to write (prototypes go beside it).")],
    method: Annotated[str, typer.Option("--method", help=f"{', '.join(METHOD_NAMES)}.")] = "coop",
    classes: Annotated[str, typer.Option("--classes", help="Train on all classes, or the base/novel half.")] = "all",
    shots: Annotated[int | None, typer.Option("--shots", help="Training images per class (few-shot).")] = None,
    iterations: Annotated[int | None, typer.Option("--iterations", help="Optimiser steps.")] = None,
    epochs: Annotated[float | None, typer.Option("--epochs", help="Passes over the training images.")] = None,
    batch_size: BatchSizeOption = 32,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate (default: per method).")] = None,
    optimizer: Annotated[str | None, typer.Option("--optimizer", help="sgd or adamw (default: per method).")] = None,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="Weight decay.")] = 0.0,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Linear warm-up steps before cosine decay.")] = 0,
    schedule: Annotated[str, typer.Option("--schedule", help=ScheduleHelp)] = "cosine-step",
    warmup_epochs: Annotated[
        int, typer.Option("--warmup-epochs", min=0, help="cosine-epoch: epochs at the constant --warmup-lr first.")
    ] = 0,
    warmup_lr: Annotated[float, typer.Option("--warmup-lr", help="cosine-epoch: the warm-up epochs' lr.")] = 1e-5,
    drop_last: Annotated[bool, typer.Option("--drop-last/--no-drop-last", help=DropLastHelp)] = False,
    select: Annotated[str, typer.Option("--select", help=SelectHelp)] = "last",
    val_images: Annotated[str, typer.Option("--val-images", help=ValImagesHelp)] = "few-shot",
    label_smoothing: Annotated[float, typer.Option("--label-smoothing", help="Label smoothing in [0, 1).")] = 0.0,
    precision: Annotated[
        str, typer.Option("--precision", help="auto (bf16 autocast on GPU, fp32 on CPU), fp32, bf16 or fp16.")
    ] = "auto",
    augment: AugmentOption = None,
    n_ctx: Annotated[int | None, typer.Option("--n-ctx", min=1, help="coop: context vectors (default 4).")] = None,
    ctx_init: Annotated[
        str, typer.Option("--ctx-init", help="coop: words the context starts from, or 'random'.")
    ] = "a photo of a",
    rank: Annotated[int | None, typer.Option("--rank", min=1, help="lora: rank (default 8).")] = None,
    alpha: Annotated[
        float | None,
        typer.Option("--alpha", help="lora: scale alpha/rank (default alpha 16; ConDU's 1/√rank is alpha √rank)."),
    ] = None,
    lora_targets: Annotated[
        str | None,
        typer.Option(
            "--lora-targets",
            help="lora: attention+mlp (default: attention and MLP projections) or mlp (the MLP's c_fc and c_proj "
            "only, as ConDU-LoRA).",
        ),
    ] = None,
    lora_init: Annotated[
        str | None,
        typer.Option(
            "--lora-init",
            help="lora: zero-b (default: A Kaiming, B = 0, starts at the base) or condu (A and B randn·0.01, as "
            "ConDU-LoRA).",
        ),
    ] = None,
    towers: Annotated[
        str | None, typer.Option("--towers", help="lora, full: towers to train, image, text or image,text (default).")
    ] = None,
    train_templates: Annotated[
        str | None,
        typer.Option(
            "--train-templates",
            help="lora, full: the training loss's class text features from the first template (ZSCL's MTIL training) "
            "or the mean of all; evaluation always uses all. Default: first for mtil:NAME, else all.",
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
    log_every: LogEveryOption = DEFAULT_LOG_EVERY,
    data_root: DataRootOption = None,
    workers: WorkersOption = 0,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
    force: ForceOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    config: ConfigOption = None,
    recipe: RecipeOption = None,
) -> None:
    """Fine-tune a zero-shot model on a task; writes the checkpoint and, beside it, the task's prototypes.

    Kinds written: coop → prompt, head → head, lora → lora, full → model. Under `torchrun --nproc_per_node=N` the
    same command trains with DDP (--batch-size is global). Ctrl-C saves the trainer state; --resume continues it.

    Example: cftool finetune --zs tiny --data toy:flowers --classes base --shots 16 --method coop --epochs 50 --lr 0.05
    -o coop.safetensors

    Example (ConDU-LoRA's LoRA): cftool finetune --zs ViT-B/16 --data mtil:DTD --method lora --lora-targets mlp
    --lora-init condu --rank 64 --alpha 8 --lr 2e-3 --iterations 1000 -o dtd-lora.safetensors
    """
    from cftool.data import DatasetSpec
    from cftool.data.augment import default_augmentation
    from cftool.kinds.apply import METHODS
    from cftool.train import FinetuneJob, TrainOptions, finetune

    given = {
        "n_ctx": n_ctx,
        "rank": rank,
        "alpha": alpha,
        "lora_targets": lora_targets,
        "lora_init": lora_init,
        "towers": towers,
        "train_templates": train_templates,
    }
    method_options = _method_options(method, data, ctx_init, given)
    method_cls = METHODS[method]
    train_options = TrainOptions(
        iterations=iterations,
        epochs=epochs,
        batch_size=batch_size,
        lr=recipe_lr(ctx, data, lr) if lr is not None else method_cls.default_lr,
        optimizer=optimizer or method_cls.default_optimizer,
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
        recipe=recipe,
    )
    with progress_bar(log_every) as progress:
        result = finetune(job, training_reporter(progress))
    if result.output is None:  # a DDP rank other than 0
        return
    print_result(result)
    if json_output:
        emit_json(result_summary(result))


def _method_options(method: str, data: str, ctx_init: str, given: dict[str, Any]) -> dict[str, Any]:
    """The method's options from the flags ``given`` (None where not given), refused where they belong to another
    method."""
    from cftool.kinds.apply import METHODS
    from cftool.kinds.method import default_train_templates

    if method not in METHODS:
        raise CftoolError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    misplaced = [name for name, value in given.items() if value is not None and method not in METHOD_OPTIONS[name]]
    if misplaced:
        flag, methods = "--" + misplaced[0].replace("_", "-"), " or ".join(METHOD_OPTIONS[misplaced[0]])
        raise CftoolError(f"{flag} applies to --method {methods} only, not {method}")
    n_ctx, towers = given["n_ctx"], given["towers"]
    train_templates = given["train_templates"] or default_train_templates(data)
    if method == "coop":
        return {"n_ctx": n_ctx, "ctx_init": ctx_init}
    if method == "head":
        return {}
    tower_list = {
        "towers": tuple(t.strip() for t in (towers or DEFAULT_TOWERS).split(",") if t.strip()),
        "train_templates": train_templates,
    }
    if method == "lora":
        # 0 is a value of --alpha (a LoRA that adds nothing): only None takes the default.
        lora = {key: default if given[key] is None else given[key] for key, default in LORA_DEFAULTS.items()}
        return {**lora, **tower_list}
    return tower_list


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
        "prototypes": str(result.prototypes),
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
    console.print(
        f"{result.task}: {', '.join(done)}; wrote {result.output} ({result.kind}), {result.prototypes} and "
        f"{result.metrics}"
    )
    if result.selection is not None:
        chosen = result.selection
        console.print(f"kept epoch {chosen['epoch']}: best validation accuracy {chosen['val_accuracy']:.1f} %")
    if result.test_accuracy is not None:
        console.print(f"test accuracy on {result.task}: {result.test_accuracy:.1f} %")
