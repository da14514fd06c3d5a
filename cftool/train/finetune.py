"""`finetune` end to end: base model and task in, an adapted checkpoint and the task's prototypes out.

`continue` runs the same path from a fine-tuned checkpoint with another objective (``Continuation``), so resume,
the feature cache, DDP and the written files behave the same. Under ``torchrun`` every process trains its share of
each batch (DDP: Gloo on CPU, NCCL on GPU) and only rank 0 writes files.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from cftool.data import DatasetSpec, TaskData, TaskSplit, load_task, recorded_data
from cftool.data.augment import training_transform
from cftool.data.validation import val_shots
from cftool.encode.features import image_features
from cftool.encode.zero_shot import class_text_means, encode_images, evaluate_zero_shot
from cftool.errors import CftoolError
from cftool.io.checkpoint import CheckpointReader, Header, check_base, save_checkpoint, tensors_sha256
from cftool.io.command_files import metrics_path, prototypes_path, state_path
from cftool.io.header import PROTOTYPES_KIND, PROTOTYPES_TENSOR
from cftool.io.outputs import atomic_output, check_outputs, check_writable, check_writable_folder, refuse_existing
from cftool.kinds.apply import METHODS, build_method
from cftool.kinds.method import Method, class_features_of_means
from cftool.kinds.prototypes import task_prototypes
from cftool.merge.precision import fits_float32
from cftool.metrics import top1_accuracy
from cftool.options import EVAL_BATCH_SIZE, FEW_SHOT_VAL, NO_AUGMENT, SELECT_BEST_VAL, WORKERS
from cftool.train.loop import Progress, Ranks, TrainLog, TrainOptions, no_progress, train
from cftool.train.objectives import CrossEntropy, MergeTune, MergeTuneOptions, Objective, ZeroShotPoint
from cftool.zoo import ZooModel, load_model, parse_model_spec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneJob:
    zs: str
    data: DatasetSpec
    method: str
    output: Path
    train: TrainOptions
    method_options: dict[str, Any] = field(default_factory=dict)  # n_ctx/ctx_init, rank/alpha/towers, towers
    device: torch.device = torch.device("cpu")
    data_root: Path | None = None
    force: bool = False
    resume: bool = False
    checkpoint_every: int = 0  # steps between trainer-state checkpoints (0: only on Ctrl-C)
    feature_cache: bool = True  # frozen image tower: encode the training images once
    cache_dir: Path | None = None  # keep those features in files here, across runs
    workers: int = WORKERS
    eval_batch_size: int = EVAL_BATCH_SIZE
    evaluate: bool = False  # also measure test accuracy of the result
    recipe: str | None = None  # the official recipe (`--recipe`) the options came from, recorded
    # ConDU's router reads them; they cost a pass over the whole training split (ImageNet's 1.28M images for a
    # 16-shot prompt), which base-to-novel work does not need.
    prototypes: bool = True

    def __post_init__(self) -> None:
        alpha = self.method_options.get("alpha")
        if alpha is not None and not fits_float32(alpha):  # LoRA's alpha/rank scales every update of the weights
            raise CftoolError(f"--alpha must be a finite number (at most 3.4e38, float32's largest), got {alpha}")


@dataclass(frozen=True)
class Continuation:
    """Training that starts from a fine-tuned checkpoint and minimises MergeTune's objective (`continue`)."""

    checkpoint: CheckpointReader  # open, its header read once by `continue` and checked against the base here
    checkpoint_sha256: str
    options: MergeTuneOptions
    recorded_data: bool = True  # the data spec comes from the checkpoint's metadata, not from --data
    recipe: str = "source"  # the training options' origin: the source's, or mergetune-coop (continued.py)


class BestValidation:
    """``--select best-val``: after each epoch, the validation accuracy of the current parameters; the run ends on
    those of the first epoch whose accuracy beat every earlier one. That is Dassl's rule: ``is_best = curr_result >
    self.best_result`` (a strict ``>``, so a later tie does not replace the earlier epoch), ``model-best.pth.tar``
    saved then and loaded for testing (Dassl.ProGrad.pytorch/dassl/engine/trainer.py:476-485,
    mergetune/trainers/kgcoop_coop_LMC.py:591-598, mergetune/train.py:165)."""

    def __init__(self, method: Method, zoo: ZooModel, task: TaskData, val: TaskSplit, batch_size: int, workers: int):
        self.method, self.zoo, self.task, self.val = method, zoo, task, val
        self.batch_size, self.workers = batch_size, workers
        self.trainable = method.trainable_parameters()
        # A frozen image tower gives the same val features every epoch: encoded once.
        self._features = self._encode() if method.image_tower_frozen else None
        self.best_accuracy, self.best_epoch = float("-inf"), -1
        self.best: dict[str, torch.Tensor] = {}

    def _encode(self) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_images(self.zoo, self.val, self.batch_size, self.workers)

    def accuracy(self) -> float:
        features, labels = self._features if self._features is not None else self._encode()
        head = self.method.eval_head(self.zoo, self.task.classnames, self.task.templates)
        return top1_accuracy(features @ head, labels)

    def __call__(self, epoch: int) -> None:
        accuracy = self.accuracy()
        if accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch = accuracy, epoch
            self.best = {name: parameter.detach().cpu().clone() for name, parameter in self.trainable.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"accuracy": self.best_accuracy, "epoch": self.best_epoch, "parameters": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        parameters = state["parameters"]
        if parameters.keys() != self.trainable.keys():
            raise ValueError("other parameters than this run trains")
        self.best_accuracy, self.best_epoch, self.best = float(state["accuracy"]), int(state["epoch"]), parameters

    def restore(self) -> dict[str, Any]:
        """Put the selected epoch's parameters back; returns the selection as the output's metadata records it."""
        with torch.no_grad():
            for name, parameter in self.trainable.items():
                parameter.copy_(self.best[name])
        return {
            "rule": SELECT_BEST_VAL,
            "epoch": self.best_epoch + 1,  # counted from 1, as Dassl's checkpoints and logs count epochs
            "val_accuracy": self.best_accuracy,
            "val_images": len(self.val),
            "val_shots": val_shots(self.task.spec.shots) if self.task.spec.val_images == FEW_SHOT_VAL else None,
        }


@dataclass
class FinetuneResult:
    output: Path | None  # None on ranks other than 0, which write nothing
    prototypes: Path | None
    kind: str
    task: str
    steps: int
    losses: list[float]
    images_per_second: float | None  # None when this process ran no step (a resumed run that had finished)
    test_accuracy: float | None
    selection: dict[str, Any] | None = None  # --select best-val: the epoch kept and its validation accuracy
    metrics: Path | None = None  # the per-step metrics written beside the output


@contextmanager
def distributed(device: torch.device) -> Iterator[tuple[Ranks, torch.device]]:
    """Join the process group torchrun describes (if any); yields this process's ranks and device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 or dist.is_initialized():
        yield (Ranks(dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else Ranks()), device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size()), device
    finally:
        dist.destroy_process_group()


def finetune(
    job: FinetuneJob, progress: Progress = no_progress, continuation: Continuation | None = None
) -> FinetuneResult:
    if job.method not in METHODS:
        raise CftoolError(f"unknown method {job.method!r}; choose one of {', '.join(METHODS)}")
    # Found now, not after training.
    inputs = [] if continuation is None else [continuation.checkpoint.path]
    zs_file = parse_model_spec(job.zs).weights_file
    if zs_file is not None:
        inputs.append(zs_file)
    check_outputs({"-o": job.output}, inputs, job.force)
    # The prototypes and metrics are written first and the checkpoint last, so companions without their checkpoint are
    # what a killed run left behind: they are replaced without --force.
    companions = {"its prototypes": prototypes_path(job.output), "its metrics": metrics_path(job.output)}
    check_outputs(companions, inputs, job.force or not job.output.exists())
    check_writable(state_path(job.output))
    if job.cache_dir is not None:  # the training images' features are stored there once encoded
        check_writable_folder(job.cache_dir, "--cache-dir")
    with distributed(job.device) as (ranks, device):
        return _finetune(job, ranks, device, progress if ranks.is_main else no_progress, continuation)


def _finetune(
    job: FinetuneJob, ranks: Ranks, device: torch.device, progress: Progress, continuation: Continuation | None
) -> FinetuneResult:
    torch.manual_seed(job.train.seed)  # everything random from here on (initialisations included) follows --seed
    task = _load_training_task(job, continuation)  # data that is not there fails before the model loads
    zoo = load_model(job.zs, device)
    base_sha256 = zoo.weights_sha256  # hashed now: the methods change the model's weights (or their names) in place
    train_split = task.split("train", zoo.preprocess)  # what the prototypes (and a feature cache) see
    labels = torch.tensor(train_split.labels, dtype=torch.long)
    _check_every_class_has_images(task, labels)
    _check_batch_fits_in_memory(job.train.batch_size, zoo)
    if continuation is not None:  # refuse a checkpoint of another base before any work
        source = continuation.checkpoint
        check_base(source.path, source.header, base_sha256, zoo.spec.canonical, zoo.architecture)

    # A new method scores exactly as the zero-shot model does (LoRA's B starts at zero), so the features and the
    # head below are zero-shot ones.
    method = build_method(job.method, zoo, task.classnames, task.templates, **job.method_options)
    cached = _uses_feature_cache(job, method)
    if method.image_tower_frozen and job.feature_cache and not cached and ranks.is_main:
        logger.warning(
            f"--augment {job.train.augment}: image features are recomputed every epoch "
            "(the feature cache applies to unaugmented images)"
        )
    features = None
    if cached:
        bar = progress("encode training images", len(train_split))
        features, _ = image_features(zoo, train_split, job.cache_dir, job.eval_batch_size, job.workers, bar)
    # The zero-shot text of the task's classes over its templates, encoded once for the prototypes and MergeTune's
    # zero-shot point (where its anchor is made of the same templates); where neither is wanted, nothing is encoded
    # (on ImageNet, 1000 classes by 80 templates).
    writes_prototypes = ranks.is_main and job.prototypes  # rank 0 alone writes
    text_means = None
    if writes_prototypes or continuation is not None:
        text_means = class_text_means(zoo, task.classnames, task.templates)
    prototypes = None
    if writes_prototypes:
        prototypes = _prototypes(job, zoo, task, text_means, None if features is None else (features, labels), progress)
    objective = _objective(job, method, zoo, task, continuation, text_means)
    selection = None
    if job.train.select == SELECT_BEST_VAL and ranks.is_main:  # rank 0 alone writes, so it alone selects
        selection = BestValidation(method, zoo, task, _validation_split(task, zoo), job.eval_batch_size, job.workers)

    config = _config(job, method, task, zoo, continuation)
    fingerprint = {**config, "base": zoo.spec.canonical, "base_sha256": base_sha256, "classnames": task.classnames}
    # The model stays in eval mode (as load_model leaves it), the mode cached features are computed in, so that
    # training with and without the cache agree.
    log = train(
        objective,
        features.to(device) if cached else task.split("train", training_transform(job.train.augment, zoo)),
        labels,
        job.train,
        ranks=ranks,
        state_file=state_path(job.output),
        checkpoint_every=job.checkpoint_every,
        resume=job.resume,
        fingerprint=fingerprint,
        workers=job.workers,
        progress=progress,
        after_epoch=selection,
    )
    result = FinetuneResult(None, None, method.kind, task.name, log.steps, log.losses, log.images_per_second, None)
    if not ranks.is_main:
        return result
    if selection is not None:
        result.selection = selection.restore()
        config = {**config, "selection": result.selection}
    if job.evaluate:
        bar = progress("evaluate test split", len(task.split("test")))
        [test] = evaluate_zero_shot(zoo, [task], "test", job.eval_batch_size, job.workers, bar, method.eval_head)
        result.test_accuracy = test.accuracy
    header = Header(
        method.kind,
        zoo.spec.canonical,
        base_sha256,  # not zoo.base_header: continuing a `model` checkpoint loaded its weights into the zoo model
        zoo.architecture,
        base_preprocess=zoo.hub_preprocess,
        task=task.name,
        classnames=task.classnames,
        template=method.template,
        method=objective.name if continuation else method.name,
        config=config,
    )
    result.output, result.prototypes, result.metrics = _write_outputs(job, method.export(), header, prototypes, log)
    state_path(job.output).unlink(missing_ok=True)
    return result


def _prototypes(
    job: FinetuneJob,
    zoo: ZooModel,
    task: TaskData,
    text_means: torch.Tensor,
    eval_features: tuple[torch.Tensor, torch.Tensor] | None,
    progress: Progress,
) -> torch.Tensor:
    """ConDU's prototypes of the task: the whole training split through the training transform."""
    bar = progress("prototypes", len(task.full_training_split()))
    return task_prototypes(
        zoo, task, text_means, job.train.augment, job.cache_dir, job.eval_batch_size, job.workers, bar, eval_features
    )


def _write_outputs(
    job: FinetuneJob, trained: dict[str, torch.Tensor], header: Header, prototypes: torch.Tensor | None, log: TrainLog
) -> tuple[Path, Path | None, Path]:
    """Write the checkpoint, its prototypes (unless ``prototypes`` is None) and its metrics as a pair or not at all;
    returns their paths."""
    header = replace(
        header, run=tensors_sha256(trained)
    )  # the pair's mark: a rerun that trains the same marks the same
    # An old pair goes checkpoint first: killed from here on, the run leaves its new prototypes alone (which the next
    # run replaces), never new prototypes beside the old checkpoint, which routing would take for a pair. Checked
    # again, with every input read since known: an input is never removed.
    refuse_existing(job.output, job.force)
    job.output.unlink(missing_ok=True)
    metrics = _write_metrics(metrics_path(job.output), log.metrics)  # replaced as the prototypes are
    written = None
    if prototypes is None:  # --no-prototypes: an older run's would be taken for this checkpoint's
        prototypes_path(job.output).unlink(missing_ok=True)
    else:
        written = save_checkpoint(
            prototypes_path(job.output),
            {PROTOTYPES_TENSOR: prototypes},
            replace(header, kind=PROTOTYPES_KIND, template=None),
            overwrite=True,  # checked above
        )
    try:
        output = save_checkpoint(job.output, trained, header, overwrite=job.force)
    except BaseException:
        if written is not None:
            written.unlink(missing_ok=True)  # a pair or nothing
        metrics.unlink(missing_ok=True)
        raise
    return output, written, metrics


def _write_metrics(path: Path, rows: list[dict[str, float]]) -> Path:
    """The run's metrics as JSON Lines, one object per optimisation step (`TrainLog.metrics`), written atomically."""
    with atomic_output(path, overwrite=True) as temp:  # checked before training, like the prototypes
        temp.write_text("".join(json.dumps(row, allow_nan=False) + "\n" for row in rows), encoding="utf-8")
    return path


def _validation_split(task: TaskData, zoo: ZooModel) -> TaskSplit:
    try:
        return task.split("val", zoo.preprocess)
    except CftoolError as err:
        raise CftoolError(
            f"--select best-val needs a validation split: {err}; use --select last for this data"
        ) from None


def _uses_feature_cache(job: FinetuneJob, method: Method) -> bool:
    """Whether training runs on the cached features of the eval-preprocessed images: an augmented image differs
    at every draw, so the frozen image tower then encodes each batch."""
    return method.image_tower_frozen and job.feature_cache and job.train.augment == NO_AUGMENT


def _load_training_task(job: FinetuneJob, continuation: Continuation | None) -> TaskData:
    try:
        return load_task(job.data, job.data_root)
    except CftoolError as err:
        if continuation is None or not continuation.recorded_data:
            raise
        raise CftoolError(
            f"{continuation.checkpoint.path}: cannot read the training data its metadata records ({err}); pass --data "
            "(and --data-root) to train on data that is here"
        ) from None


def _check_batch_fits_in_memory(batch_size: int, zoo: ZooModel) -> None:
    """A batch is held as preprocessed images: one larger than the machine's memory could only hang or be killed."""
    side = zoo.model.visual.image_size
    height, width = (side, side) if isinstance(side, int) else side
    image_bytes = 3 * height * width * 4  # float32 RGB
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    needed = batch_size * image_bytes
    if needed > memory:
        raise CftoolError(
            f"--batch-size {batch_size}: a batch of {height}×{width} images needs {needed / 2**30:.0f} GiB, more than "
            f"this machine's {memory / 2**30:.0f} GiB; use at most {memory // image_bytes}"
        )


def _check_every_class_has_images(task: TaskData, labels: torch.Tensor) -> None:
    counts = torch.bincount(labels, minlength=len(task.classnames))
    empty = [name for name, count in zip(task.classnames, counts.tolist(), strict=True) if count == 0]
    if empty:
        raise CftoolError(
            f"--data {task.spec.source}: {len(empty)} class(es) have no training images ({', '.join(empty[:3])}); "
            f"add images for them or choose another --classes subset"
        )


def _objective(
    job: FinetuneJob,
    method: Method,
    zoo: ZooModel,
    task: TaskData,
    continuation: Continuation | None,
    text_means: torch.Tensor | None,
) -> Objective:
    """Cross-entropy for a fresh fine-tune; for a continuation, MergeTune from the checkpoint's solution, with the
    freshly built method (and the base weights, before the checkpoint replaces them) as the zero-shot point.
    ``text_means`` (given for a continuation): the ``class_text_means`` of the task's templates, which are the
    anchor's but for a source that names its own (`coop:` data: KgCoOp's)."""
    if continuation is None:
        return CrossEntropy(method, job.train.label_smoothing)
    anchor = task.anchor_templates(method.training_templates)
    if anchor != task.templates:
        text_means = class_text_means(zoo, task.classnames, anchor)
    zero_shot = ZeroShotPoint.of(method, class_features_of_means(text_means))
    method.load_trained(continuation.checkpoint)
    try:
        return MergeTune(method, zero_shot, continuation.options, job.train.label_smoothing)
    except CftoolError as err:
        raise CftoolError(f"{continuation.checkpoint.path}: {err}") from None


def _config(
    job: FinetuneJob, method: Method, task: TaskData, zoo: ZooModel, continuation: Continuation | None
) -> dict[str, Any]:
    """Everything that produced the checkpoint: `continue FILE --zs X` rebuilds the training data from it alone.
    ``method`` stays the fine-tuning method (what the tensors are); a continuation adds its objective and input."""
    continued = {}
    if continuation is not None:
        continued = {
            "objective": "mergetune",
            "mergetune": {
                **continuation.options.to_dict(),
                "anchor_templates": task.anchor_templates(method.training_templates),
            },
            "recipe": continuation.recipe,
            "continued_from": {"file": continuation.checkpoint.path.name, "sha256": continuation.checkpoint_sha256},
        }
    data, data_root = recorded_data(job.data, job.data_root)
    return {
        "method": method.name,
        **method.options(),
        **job.train.to_dict(),
        "data": json.loads(data.to_json()),
        "data_root": data_root,
        "zs": zoo.spec.canonical,
        "templates": task.templates,
        "feature_cache": _uses_feature_cache(job, method),
        **({"recipe": job.recipe} if job.recipe else {}),
        **continued,
    }
