"""`continue` end to end: MergeTune continued fine-tuning of an already fine-tuned checkpoint (docs/design.md §5.1).

Everything a fresh fine-tune was given (method and its options, training data, class names, templates, recipe) is
read from the checkpoint's metadata; the caller's overrides win. A CoOp prompt is continued with MergeTune's own
recipe instead of CoOp's (`mergetune_coop_recipe`), unless ``inherit_recipe`` asks for the recorded one. The run is
`finetune`'s own path, started from the checkpoint's solution with MergeTune's objective, so resume, the feature cache,
DDP and the written files (the checkpoint, of the input's kind, and its prototypes) behave exactly as there.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from cftool.data import DatasetSpec, find_data
from cftool.errors import CftoolError
from cftool.io.checkpoint import CheckpointReader, file_sha256, open_checkpoint
from cftool.io.command_files import SUFFIX, beside
from cftool.io.header import DELTA_KIND, PROTOTYPES_KIND
from cftool.kinds.apply import TRAINED_KINDS, trainable_method
from cftool.kinds.method import Method
from cftool.kinds.prompt import ZERO_SHOT_WEIGHT
from cftool.options import COOP, COOP_INIT, FINETUNE_METHODS, RANDOM_INIT, WORKERS, ZS_PARAM
from cftool.recipes import load_recipe
from cftool.train.finetune import Continuation, FinetuneJob, FinetuneResult, finetune
from cftool.train.loop import Progress, TrainOptions, no_progress
from cftool.train.objectives import MergeTuneOptions
from cftool.zoo.base import TINY_ARCH, arch_of, resolve_base

TRAIN_OPTION_KEYS = tuple(f.name for f in fields(TrainOptions))


def mergetune_coop_recipe() -> dict[str, Any]:
    """How MergeTune continues a CoOp prompt: the training options of the `mergetune-coop` recipe, whose file cites
    the official lines of each value. The training transform (random resized crop and flip) is --augment coop, which
    a prompt fine-tuned on coop: data records already."""
    options = load_recipe("mergetune-coop").options
    return {
        key: value for key, value in ((k.replace("-", "_"), v) for k, v in options.items()) if key in TRAIN_OPTION_KEYS
    }


def default_output(source: Path) -> Path:
    """``coop.safetensors`` → ``coop.mergetune.safetensors``, beside the input."""
    return beside(source, ".mergetune" + SUFFIX)


@dataclass(frozen=True)
class ContinueJob:
    source: Path
    zs: str | None = None  # default: the base the source records
    mergetune: MergeTuneOptions = MergeTuneOptions()
    output: Path | None = None  # default: beside the source, see default_output
    data: str | None = None  # another --data than the one the source was trained on
    data_overrides: dict[str, Any] = field(default_factory=dict)  # classes, shots
    train_overrides: dict[str, Any] = field(default_factory=dict)  # TrainOptions fields given on the command line
    device: torch.device = torch.device("cpu")
    data_root: Path | None = None
    force: bool = False
    resume: bool = False
    checkpoint_every: int = 0
    feature_cache: bool = True
    cache_dir: Path | None = None
    workers: int = WORKERS
    evaluate: bool = False
    prototypes: bool = True  # the task's prototypes beside the output (FinetuneJob.prototypes)
    inherit_recipe: bool = False  # a CoOp prompt: train with its recorded recipe, not MergeTune's
    recipe: str | None = None  # the official recipe (`--recipe`) the overrides came from, recorded instead

    @property
    def output_path(self) -> Path:
        return self.output or default_output(self.source)


def continue_training(job: ContinueJob, progress: Progress = no_progress) -> FinetuneResult:
    # Opened once: the plan reads its header, the run checks that against the base and loads its tensors.
    with open_checkpoint(job.source) as source:
        finetune_job, continuation = plan(job, source)
        return finetune(finetune_job, progress, continuation)


def plan(job: ContinueJob, source: CheckpointReader) -> tuple[FinetuneJob, Continuation]:
    """The fine-tuning job that continues ``job.source`` (``source``, open), from its metadata and the overrides."""
    output = job.output_path
    if output.resolve() == job.source.resolve():
        raise CftoolError(
            f"-o {output}: is the input checkpoint; continue never overwrites its input, name another file"
        )
    _check_continuable(source)
    zs = resolve_base(job.zs, job.source, source.header)
    method = trainable_method(source)
    config = source.header.config or {}
    data = replace(_data_spec(source, config, job.data), **job.data_overrides)
    train_options, recipe = _recipe(job, config, method)
    if recipe == "mergetune-coop" and "val_images" not in job.data_overrides:
        data = replace(data, val_images=load_recipe(recipe).options["val-images"])
    method_options = _method_options(source, method, config, job.mergetune)
    data_root = _data_root(job, data, config.get("data_root"))
    finetune_job = FinetuneJob(
        zs=zs,
        data=data,
        method=method.name,
        output=output,
        train=train_options,
        method_options=method_options,
        device=job.device,
        data_root=data_root,
        force=job.force,
        resume=job.resume,
        checkpoint_every=job.checkpoint_every,
        feature_cache=job.feature_cache,
        cache_dir=job.cache_dir,
        workers=job.workers,
        evaluate=job.evaluate,
        prototypes=job.prototypes,
    )
    continuation = Continuation(
        source, file_sha256(job.source), job.mergetune, recorded_data=job.data is None, recipe=recipe
    )
    return finetune_job, continuation


def _recipe(job: ContinueJob, config: dict[str, Any], method: type[Method]) -> tuple[TrainOptions, str]:
    """The source's training options (its config records every field, one of iterations/epochs as None), or for a
    CoOp prompt MergeTune's continuation recipe over them, with the overrides on top; a length given on the command
    line replaces the recorded one, whichever unit it is in. Also the recipe's name, which the output records."""
    recipe = {key: config[key] for key in TRAIN_OPTION_KEYS if config.get(key) is not None}
    name = job.recipe or "source"
    # A CoOp prompt fine-tuned by cftool or imported (not already a continuation, whose config records the recipe it
    # ran with).
    if method.name == COOP.name and "objective" not in config and not job.inherit_recipe:
        recipe.pop("iterations", None)
        recipe, name = {**recipe, **mergetune_coop_recipe()}, job.recipe or "mergetune-coop"
    if {"iterations", "epochs"} & job.train_overrides.keys():
        recipe.pop("iterations", None)
        recipe.pop("epochs", None)
    defaults = FINETUNE_METHODS[method.name]
    recipe = {"lr": defaults.lr, "optimizer": defaults.optimizer, **recipe, **job.train_overrides}
    if "iterations" not in recipe and "epochs" not in recipe:
        raise CftoolError(
            f"{job.source}: its metadata records no training length (was it imported?); pass --epochs or --iterations"
        )
    return TrainOptions(**recipe), name


def _check_continuable(ckpt: CheckpointReader) -> None:
    kind = ckpt.header.kind
    if ZERO_SHOT_WEIGHT in (ckpt.header.config or {}):
        raise CftoolError(
            f"{ckpt.path}: a prompt mixed with the zero-shot head (`cftool interpolate`) has no parameters of its "
            "own to train; continue the prompt it was made from"
        )
    if kind in TRAINED_KINDS:
        return
    why = {
        PROTOTYPES_KIND: "it holds a task's class prototypes, not trained parameters; pass the checkpoint beside it",
        DELTA_KIND: "it holds a task vector; `cftool delta apply` turns it into a model file that continue takes",
    }.get(kind, f"continue takes {', '.join(TRAINED_KINDS)} checkpoints")
    raise CftoolError(f"{ckpt.path}: cannot continue a {kind!r} checkpoint: {why}")


def _data_spec(ckpt: CheckpointReader, config: dict[str, Any], data: str | None) -> DatasetSpec:
    recorded = config.get("data")
    if data is not None:
        # Other images, the same protocol: the class subset and shots the checkpoint was trained with.
        base = DatasetSpec(**recorded) if isinstance(recorded, dict) else DatasetSpec(data)
        return replace(base, source=data)
    if not isinstance(recorded, dict):
        # The embedded tiny model knows the toy world; a real base, real data such as CoOp's.
        example = "toy:flowers" if arch_of(ckpt.header.base) == TINY_ARCH else "coop:OxfordFlowers"
        raise CftoolError(
            f"{ckpt.path}: its metadata names no training data (was it imported?); pass --data TASK "
            f"(e.g. --data {example} --classes base)"
        )
    try:
        return DatasetSpec(**recorded)
    except TypeError:
        raise CftoolError(
            f"{ckpt.path}: its recorded training data {recorded} is not a dataset spec; pass --data"
        ) from None


def _data_root(job: ContinueJob, data: DatasetSpec, recorded_root: str | None) -> Path | None:
    """The data root that holds the training data, found before the model loads: the flag's or the variable's, else
    the one the source recorded while it still holds the data."""
    try:
        return find_data(data, job.data_root, recorded_root)
    except CftoolError as err:
        if job.data is not None:
            raise
        raise CftoolError(
            f"{job.source}: cannot read the training data its metadata records ({err}); pass --data "
            "(and --data-root) to train on data that is here"
        ) from None


def _method_options(
    ckpt: CheckpointReader, method: type[Method], config: dict[str, Any], mergetune: MergeTuneOptions
) -> dict[str, Any]:
    options = {key: config[key] for key in FINETUNE_METHODS[method.name].options if key in config}
    if "towers" in options:
        options["towers"] = tuple(options["towers"])
    if method.name == COOP.name:
        if "ctx" in ckpt:  # the prompt's own shape: [n_ctx, width], or [n_classes, n_ctx, width] (CoOp's CSC)
            shape = ckpt.tensors["ctx"].shape
            options.update(n_ctx=shape[-2], class_specific=len(shape) == 3)
        # A file imported before imports recorded its start: from the words if it has their length, as CoOp's does.
        words = len(COOP_INIT.split())
        options.setdefault("ctx_init", COOP_INIT if options.get("n_ctx", words) == words else RANDOM_INIT)
        if options["ctx_init"] == RANDOM_INIT and mergetune.zs_reg == ZS_PARAM:
            # The parameter-space zero-shot counterpart of a prompt is the hand-written context (docs/design.md §5.1).
            if options["n_ctx"] != words:
                raise CftoolError(
                    f"{ckpt.path}: the prompt has {options['n_ctx']} context vectors from a random start, and the "
                    f"hand-written zero-shot context {COOP_INIT!r} has {words}; use --zs-reg feature"
                )
            options["ctx_init"] = COOP_INIT
    return options
