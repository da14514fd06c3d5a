"""The one training loop every method shares: deterministic batches, cosine schedule with warm-up, mixed precision,
DDP, a hook after each epoch (checkpoint selection), and trainer-state checkpoints that make an interrupted run resume
to the same result.

Batches are a pure function of (seed, step): step ``s`` takes the next ``batch_size`` indices of a stream of
per-epoch permutations (or, with ``drop_last``, the next full batch of the current epoch's permutation, as Dassl's
training loader does). A resumed run therefore sees exactly the batches the uninterrupted one would, and under
DDP each rank takes its slice of the same global batch. Each image of a batch is loaded with a seed of its own, also
a function of (seed, step), so that random augmentation is as reproducible as the batches, whatever the number of
processes and data-loading workers.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from cftool.data.augment import check_augmentation
from cftool.data.specs import check_seed
from cftool.errors import CftoolError
from cftool.io.checkpoint import finite
from cftool.io.outputs import atomic_output, torch_save
from cftool.merge.precision import fits_float32
from cftool.options import (
    ADAMW,
    AUGMENTATION,
    AUTO_PRECISION,
    BF16,
    COSINE_EPOCH,
    COSINE_STEP,
    DROP_LAST,
    FINETUNE_METHOD,
    FINETUNE_METHODS,
    FP16,
    FP32,
    LABEL_SMOOTHING,
    OPTIMIZERS,
    PRECISION,
    PRECISIONS,
    SCHEDULE,
    SCHEDULES,
    SEED,
    SELECTION,
    SELECTIONS,
    SGD,
    TRAIN_BATCH_SIZE,
    WARMUP_EPOCHS,
    WARMUP_LR,
    WARMUP_STEPS,
    WEIGHT_DECAY,
)
from cftool.train.objectives import Objective

SGD_MOMENTUM = 0.9
ADAMW_BETA1 = 0.9  # torch's default, which _optimizer keeps
# Far beyond any recipe (the official ones run 10^3 to 10^4 steps): a typo (--epochs 1e12) fails at once, not after
# years of training.
MAX_STEPS = 100_000_000

# (phase description, total) -> advance(n, **fields); how the loop reports progress without knowing about rich.
Progress = Callable[[str, int], Callable[..., None]]


def no_progress(description: str, total: int) -> Callable[..., None]:
    return lambda n=1, **fields: None


class EpochHook(Protocol):
    """Called after the last step of each epoch (and after the run's last step); its state travels with the trainer
    state, so that a resumed run selects as the uninterrupted one would."""

    def __call__(self, epoch: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TrainingInterrupted(CftoolError):
    """Ctrl-C during training: the trainer state was saved and ``--resume`` continues from it."""

    exit_code = 130


@dataclass(frozen=True)
class TrainOptions:
    iterations: int | None = None  # optimiser steps; exclusive with epochs
    epochs: float | None = None  # passes over the training images, rounded up to whole steps
    batch_size: int = TRAIN_BATCH_SIZE  # global: split over DDP ranks
    lr: float = FINETUNE_METHODS[FINETUNE_METHOD].lr
    optimizer: str = FINETUNE_METHODS[FINETUNE_METHOD].optimizer
    weight_decay: float = WEIGHT_DECAY
    warmup: int = WARMUP_STEPS  # steps of linear warm-up before the cosine decay
    label_smoothing: float = LABEL_SMOOTHING
    seed: int = SEED
    precision: str = PRECISION  # see PRECISIONS
    augment: str = AUGMENTATION  # the training images' transform (cftool.data.augment); none = the eval preprocessing
    schedule: str = SCHEDULE  # see SCHEDULES
    warmup_epochs: int = WARMUP_EPOCHS  # cosine-epoch: epochs at the constant warmup_lr before the cosine
    warmup_lr: float = WARMUP_LR
    drop_last: bool = (
        DROP_LAST  # each epoch's last partial batch is left out (unless the epoch is smaller than a batch)
    )
    select: str = SELECTION  # see SELECTIONS; best-val needs a validation split

    def __post_init__(self):
        if (self.iterations is None) == (self.epochs is None):
            raise CftoolError("give exactly one of --iterations N or --epochs N")
        if (self.iterations is not None and self.iterations < 1) or (
            self.epochs is not None and not (math.isfinite(self.epochs) and self.epochs > 0)
        ):
            raise CftoolError("--iterations / --epochs must be positive (and finite)")
        if (self.iterations or 0) > MAX_STEPS or (self.epochs or 0) > MAX_STEPS:
            raise CftoolError(
                f"--iterations / --epochs must be at most {MAX_STEPS:,}, got {self.iterations or self.epochs:g}"
            )
        if self.batch_size < 1 or self.warmup < 0:
            raise CftoolError(f"--batch-size must be ≥ 1 and --warmup ≥ 0, got {self.batch_size} and {self.warmup}")
        # Each multiplies float32 parameters or gradients: one larger than float32 holds is Inf there.
        largest = "at most 3.4e38, float32's largest"
        if not (fits_float32(self.lr) and self.lr > 0):
            raise CftoolError(f"--lr must be a finite positive number ({largest}), got {self.lr}")
        if not (fits_float32(self.weight_decay) and self.weight_decay >= 0):
            raise CftoolError(f"--weight-decay must be a finite number ≥ 0 ({largest}), got {self.weight_decay}")
        check_seed(self.seed)
        if self.optimizer not in OPTIMIZERS:
            raise CftoolError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise CftoolError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not 0 <= self.label_smoothing < 1:
            raise CftoolError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        check_augmentation(self.augment)
        if self.schedule not in SCHEDULES:
            raise CftoolError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.select not in SELECTIONS:
            raise CftoolError(f"--select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")
        if self.warmup_epochs < 0 or not (fits_float32(self.warmup_lr) and self.warmup_lr > 0):
            raise CftoolError(
                f"--warmup-epochs must be ≥ 0 and --warmup-lr a finite positive number, got {self.warmup_epochs} "
                f"and {self.warmup_lr}"
            )
        if self.schedule == COSINE_EPOCH and self.warmup:
            raise CftoolError(
                f"--warmup counts steps of --schedule {COSINE_STEP}; {COSINE_EPOCH} warms up with --warmup-epochs"
            )
        if self.schedule == COSINE_STEP and self.warmup_epochs:
            raise CftoolError(
                f"--warmup-epochs applies to --schedule {COSINE_EPOCH}; {COSINE_STEP} warms up with --warmup"
            )
        if self.optimizer == ADAMW:
            # AdamW's first step moves each weight by up to lr / (1 - β1) and scales it by 1 - lr·weight_decay; torch
            # turns both into float32 and raises, deep in the step, where they do not fit.
            for lr in (self.lr, self.warmup_lr):
                if not (fits_float32(lr / (1 - ADAMW_BETA1)) and fits_float32(lr * self.weight_decay)):
                    raise CftoolError(
                        f"--lr {lr:g} is too large for AdamW: its first step moves weights by up to lr/(1-β1) = "
                        f"{lr / (1 - ADAMW_BETA1):g} and scales them by 1 - lr·weight_decay, beyond float32's 3.4e38; "
                        "lower --lr (a rate this large diverges at once)"
                    )

    def steps_per_epoch(self, n_images: int) -> float:
        """Optimiser steps in one pass over the images: whole batches with ``drop_last`` (one batch of them all when
        they are fewer than a batch: Dassl drops only when ``len(data) >= batch_size``, dassl/data/data_manager.py:49),
        else a fraction where the last batch runs on into the next epoch."""
        if self.drop_last:
            return max(1, n_images // self.batch_size)
        return n_images / self.batch_size

    def total_steps(self, n_images: int) -> int:
        if self.iterations is not None:
            return self.iterations
        steps = math.ceil(self.epochs * self.steps_per_epoch(n_images))
        if steps > MAX_STEPS:
            raise CftoolError(
                f"--epochs {self.epochs:g} over {n_images} images in batches of {self.batch_size} is {steps:,} steps, "
                f"more than {MAX_STEPS:,}; give fewer --epochs"
            )
        return steps

    def epoch_of(self, step: int, n_images: int) -> int:
        """The epoch (from 0) that optimiser step ``step`` belongs to; without ``drop_last``, the one its batch starts
        in."""
        if self.drop_last:
            return step // int(self.steps_per_epoch(n_images))
        return step * self.batch_size // n_images

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def learning_rate(options: TrainOptions, step: int, total: int, n_images: int) -> float:
    if options.schedule == COSINE_EPOCH:
        return _epoch_cosine(options, options.epoch_of(step, n_images), options.epoch_of(total - 1, n_images) + 1)
    if step < options.warmup:
        return options.lr * (step + 1) / options.warmup
    progress = (step - options.warmup) / max(1, total - options.warmup)
    return options.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _epoch_cosine(options: TrainOptions, epoch: int, epochs: int) -> float:
    """The lr Dassl's scheduler gives epoch ``epoch`` of ``epochs``: it is stepped once after each epoch
    (trainers/kgcoop_coop_LMC.py:570-572), and its ConstantWarmupScheduler holds ``warmup_lr`` for the first
    ``warmup_epochs`` epochs, then hands over to a CosineAnnealingLR(T_max = all the epochs, warm-up included) that
    stood still meanwhile (WARMUP_RECOUNT True: dassl/optim/lr_scheduler.py:27-54, 141-149; dassl/config/defaults.py
    :181). So epoch W runs at the peak and epoch e ≥ W at lr·(1 + cos(π(e − W)/epochs))/2: the cosine never reaches 0.
    """
    if epoch < options.warmup_epochs:
        return options.warmup_lr
    return options.lr * 0.5 * (1 + math.cos(math.pi * (epoch - options.warmup_epochs) / epochs))


class BatchPlan:
    """Global batch ``step`` = positions [step·B, (step+1)·B) of the concatenated per-epoch permutations; with
    ``drop_last``, batch ``j`` of its epoch's permutation, each epoch's remainder left out."""

    def __init__(self, n_images: int, batch_size: int, seed: int, drop_last: bool = False):
        self.n_images, self.batch_size, self.seed, self.drop_last = n_images, batch_size, seed, drop_last
        self._generator = torch.Generator().manual_seed(seed)
        self._permutations: list[torch.Tensor] = []

    def _permutation(self, epoch: int) -> torch.Tensor:
        while len(self._permutations) <= epoch:
            self._permutations.append(torch.randperm(self.n_images, generator=self._generator))
        return self._permutations[epoch]

    def global_batch(self, step: int) -> torch.Tensor:
        if self.drop_last:
            if self.n_images < self.batch_size:  # Dassl keeps a training set smaller than a batch whole
                return self._permutation(step)
            per_epoch = self.n_images // self.batch_size
            epoch, position = divmod(step, per_epoch)
            return self._permutation(epoch)[position * self.batch_size : (position + 1) * self.batch_size]
        first = step * self.batch_size
        first_epoch, last_epoch = first // self.n_images, (first + self.batch_size - 1) // self.n_images
        stream = torch.cat([self._permutation(epoch) for epoch in range(first_epoch, last_epoch + 1)])
        offset = first - first_epoch * self.n_images
        return stream[offset : offset + self.batch_size]

    def draw_seeds(self, step: int) -> torch.Tensor:
        """A seed for each image of global batch ``step``, for the random transforms it is loaded with."""
        # SeedSequence takes non-negative entropy; --seed may be negative.
        draws = np.random.SeedSequence(self.seed % 2**64, spawn_key=(step,))
        size = min(self.batch_size, self.n_images) if self.drop_last else self.batch_size
        return torch.from_numpy(draws.generate_state(size).astype(np.int64))


@dataclass(frozen=True)
class Ranks:
    """This process's place in a DDP group (rank 0 of 1 without torch.distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local(self, global_batch: torch.Tensor) -> torch.Tensor:
        return global_batch.tensor_split(self.world_size)[self.rank]


@dataclass
class TrainLog:
    steps: int
    start_step: int
    losses: list[float] = field(default_factory=list)  # loss over the global batch, per step run in this process
    images_per_second: float | None = None  # over the steps run in this process; None when it ran none
    # One row per optimisation step from the first (a resumed run's earlier steps come with its trainer state): the
    # step (from 1), its epoch (from 1), lr, each term of the objective by name, the loss, the step's images per second
    # and the seconds since training began.
    metrics: list[dict[str, float]] = field(default_factory=list)


def precision_context(device: torch.device, precision: str):
    if precision == AUTO_PRECISION:
        precision = BF16 if device.type == "cuda" else FP32
    if precision == FP32:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == BF16 else torch.float16)


def train(
    objective: Objective,
    inputs: torch.Tensor | Dataset,
    labels: torch.Tensor,
    options: TrainOptions,
    *,
    ranks: Ranks = Ranks(),
    state_file: Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    fingerprint: dict[str, Any] | None = None,
    workers: int = 0,
    progress: Progress = no_progress,
    after_epoch: EpochHook | None = None,
) -> TrainLog:
    """Minimise ``objective`` over its method's trainable parameters on ``inputs`` (cached normalised image features,
    or a dataset of preprocessed images).

    ``fingerprint`` (what must not change between an interrupted run and its resumption) is stored in the trainer
    state and checked on ``resume``.
    """
    method = objective.method
    device = method.device
    if options.batch_size % ranks.world_size:
        raise CftoolError(
            f"--batch-size {options.batch_size} must be a multiple of the {ranks.world_size} processes, "
            f"so that every process takes the same share of each batch"
        )
    total = options.total_steps(len(labels))
    n_images = len(labels)
    plan = BatchPlan(n_images, options.batch_size, options.seed, options.drop_last)
    trainable = method.trainable_parameters()
    optimizer = _optimizer(list(trainable.values()), options)
    scaler = torch.amp.GradScaler(device.type, enabled=options.precision == FP16)
    start, metrics = 0, []
    if resume:
        start, metrics = _load_state(
            _require(state_file), trainable, optimizer, scaler, fingerprint or {}, device, total, after_epoch
        )
    if ranks.world_size > 1:
        # The whole objective is the wrapped module, so the gradients of all its terms are synchronised.
        loss_of = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        loss_of = objective
    log = TrainLog(steps=total, start_step=start, metrics=metrics)
    advance = progress(f"train {method.name} ({objective.name})", total)
    advance(start)
    cached = isinstance(inputs, torch.Tensor)
    batches = _batches(inputs, labels, plan, ranks, range(start, total), workers)
    images_seen, began = 0, time.perf_counter()
    step_began, elapsed_before = began, metrics[-1].get("elapsed_s", 0.0) if metrics else 0.0
    with _interrupt_deferred() as interrupted:
        for step, (batch_inputs, batch_labels) in zip(range(start, total), batches, strict=True):
            batch_inputs, batch_labels = batch_inputs.to(device), batch_labels.to(device)
            lr = learning_rate(options, step, total, n_images)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if method.image_tower_frozen and not cached:
                with precision_context(device, options.precision), torch.no_grad():
                    batch_inputs = method.model.encode_image(batch_inputs, normalize=True).float()
            optimizer.zero_grad(set_to_none=True)
            # One process backpropagates the objective part by part; DDP synchronises the gradients of the one
            # forward of its wrapper, so there the loss is one part.
            parts = (
                objective.parts(batch_inputs, batch_labels)
                if ranks.world_size == 1
                else (loss_of(batch_inputs, batch_labels) for _ in range(1))
            )
            loss = _backward_in_parts(parts, scaler, device, options.precision)
            scaler.step(optimizer)
            scaler.update()
            terms, stop = _all_ranks({**objective.terms, "loss": loss.detach()}, interrupted(), ranks)
            mean_loss = terms["loss"]
            if not math.isfinite(mean_loss):  # every rank sees the same mean, so all stop here together
                raise CftoolError(
                    f"the loss became {mean_loss} at step {step + 1} of {total}: training diverged and nothing was "
                    "written; lower --lr (or raise --warmup) and rerun"
                )
            log.losses.append(mean_loss)
            batch_images, now = len(batch_labels) * ranks.world_size, time.perf_counter()
            images_seen += batch_images
            log.images_per_second = images_seen / (now - began)
            done = step + 1
            epoch = options.epoch_of(step, n_images)
            log.metrics.append(
                {
                    "step": done,
                    "epoch": epoch + 1,
                    "lr": lr,
                    **terms,
                    "images_per_second": batch_images / (now - step_began),
                    "elapsed_s": elapsed_before + now - began,
                }
            )
            step_began = now
            advance(1, loss=mean_loss, speed=log.images_per_second)
            if after_epoch is not None and (done == total or options.epoch_of(done, n_images) > epoch):
                after_epoch(epoch)
            if state_file is not None and ranks.is_main and done < total:
                if stop or (checkpoint_every and done % checkpoint_every == 0):
                    _save_state(
                        state_file, done, trainable, optimizer, scaler, fingerprint or {}, after_epoch, log.metrics
                    )
            if stop and done < total:
                where = f"trainer state saved to {state_file}; " if state_file is not None else ""
                raise TrainingInterrupted(f"interrupted after step {done} of {total}: {where}rerun with --resume")
    # The loss checked above was computed before each step's update: only the weights show the last update's.
    if not all(finite(parameter.detach()) for parameter in trainable.values()):
        raise CftoolError(
            f"the weights became NaN or Inf at step {total} of {total}: training diverged and nothing was written; "
            "lower --lr (or --weight-decay) and rerun"
        )
    return log


def _optimizer(parameters: list[torch.nn.Parameter], options: TrainOptions) -> torch.optim.Optimizer:
    if options.optimizer == SGD:
        return torch.optim.SGD(parameters, lr=options.lr, momentum=SGD_MOMENTUM, weight_decay=options.weight_decay)
    return torch.optim.AdamW(parameters, lr=options.lr, weight_decay=options.weight_decay)


def _batches(
    inputs: torch.Tensor | Dataset,
    labels: torch.Tensor,
    plan: BatchPlan,
    ranks: Ranks,
    steps: range,
    workers: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    # Lazily: a long run's batches as Python lists would take more memory than its images' features.
    if isinstance(inputs, torch.Tensor):
        local = (ranks.local(plan.global_batch(step)) for step in steps)
        return ((inputs[indices], labels[indices]) for indices in local)
    keys = (_seeded_keys(plan, ranks, step) for step in steps)
    return iter(DataLoader(_SeededDraws(inputs), batch_sampler=keys, num_workers=workers))


def _seeded_keys(plan: BatchPlan, ranks: Ranks, step: int) -> list[tuple[int, int]]:
    """This rank's (image index, draw seed) pairs of global batch ``step``."""
    indices, seeds = ranks.local(plan.global_batch(step)), ranks.local(plan.draw_seeds(step))
    return list(zip(indices.tolist(), seeds.tolist(), strict=True))


class _SeededDraws(Dataset):
    """``dataset[index]`` drawn with torch's generator seeded by the key's seed: what a random transform makes of an
    image depends on that seed alone, not on which process or worker loads it, nor on what was loaded before."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):  # the CPU generator only, restored afterwards; CUDA's stays as is
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]


def _backward_in_parts(
    parts: Iterator[torch.Tensor], scaler: torch.amp.GradScaler, device: torch.device, precision: str
) -> torch.Tensor:
    """Backpropagate a loss's parts (``Objective.parts``) one at a time, each built under the run's precision and
    freed before the next is built; returns the loss, their sum."""
    loss = None
    while True:
        with precision_context(device, precision):
            part = next(parts, None)
        if part is None:
            return loss
        scaler.scale(part).backward()
        loss = part.detach() if loss is None else loss + part.detach()


def _all_ranks(losses: dict[str, torch.Tensor], stop: bool, ranks: Ranks) -> tuple[dict[str, float], bool]:
    """Each loss (term) over the global batch, and whether any rank was asked to stop: Ctrl-C reaches every rank, but
    not at the same step, so all stop after the step any of them saw it in."""
    device = losses["loss"].device
    values = torch.stack([*(value.float() for value in losses.values()), torch.tensor(float(stop), device=device)])
    if ranks.world_size > 1:
        dist.all_reduce(values)
    *means, stopped = (values / ranks.world_size).tolist()
    return dict(zip(losses, means, strict=True)), stopped > 0


@contextmanager
def _interrupt_deferred() -> Iterator[Callable[[], bool]]:
    """Turn the first Ctrl-C into a request to stop at the end of the current step (so the saved state is a
    consistent one); a second Ctrl-C interrupts at once."""
    requested = False

    def request_stop(signum, frame):
        nonlocal requested
        requested = True
        signal.signal(signal.SIGINT, previous)

    try:
        previous = signal.signal(signal.SIGINT, request_stop)
    except ValueError:  # not the main thread: signals cannot be caught here
        yield lambda: False
        return
    try:
        yield lambda: requested
    finally:
        signal.signal(signal.SIGINT, previous)


def _require(state_file: Path | None) -> Path:
    if state_file is None or not state_file.is_file():
        raise CftoolError(f"--resume: no trainer state at {state_file}; run without --resume to start afresh")
    return state_file


def _save_state(
    path: Path,
    step: int,
    trainable: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    fingerprint: dict[str, Any],
    after_epoch: EpochHook | None,
    metrics: list[dict[str, float]],
) -> None:
    state = {
        "step": step,
        "fingerprint": fingerprint,
        "trainable": {name: p.detach().cpu() for name, p in trainable.items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "after_epoch": after_epoch.state_dict() if after_epoch is not None else {},
        "metrics": metrics,
    }
    with atomic_output(path, overwrite=True) as temp:
        torch_save(state, temp)


def _load_state(
    path: Path,
    trainable: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    fingerprint: dict[str, Any],
    device: torch.device,
    total: int,
    after_epoch: EpochHook | None,
) -> tuple[int, list[dict[str, float]]]:
    """Restore a trainer state, checked entry by entry: it is a file on disk that may have been edited or damaged.
    Returns its step and the metrics of the steps before it."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # a pickle that is not plain tensors, or a damaged file
        raise CftoolError(f"{path}: not a readable trainer state ({err.__class__.__name__}); delete it") from None
    expected = {"step": int, "fingerprint": dict, "trainable": dict, "optimizer": dict, "scaler": dict}
    entries = state if isinstance(state, dict) else {}
    wrong = [key for key, kind in expected.items() if not isinstance(entries.get(key), kind)]
    if wrong:
        raise CftoolError(f"{path}: not a cftool trainer state ({wrong[0]!r} missing or of the wrong type); delete it")
    _check_fingerprint(path, state["fingerprint"], fingerprint)
    if state["trainable"].keys() != trainable.keys():
        raise CftoolError(f"{path}: trainer state holds other parameters than this run trains; delete it")
    for name, parameter in trainable.items():
        saved = state["trainable"][name]
        if not isinstance(saved, torch.Tensor) or saved.shape != parameter.shape:
            raise CftoolError(
                f"{path}: trainer state's {name!r} does not have the shape {list(parameter.shape)}; delete it"
            )
    if not 0 <= state["step"] <= total:
        raise CftoolError(f"{path}: trainer state is at step {state['step']}, outside this run's 0..{total}; delete it")
    metrics = state.get("metrics", [])  # a state saved before metrics were kept has none
    if not (
        isinstance(metrics, list) and len(metrics) in (0, state["step"]) and all(isinstance(m, dict) for m in metrics)
    ):
        raise CftoolError(
            f"{path}: trainer state's metrics are not one row per step before step {state['step']}; delete it"
        )
    _check_optimizer_state(path, state["optimizer"], optimizer, trainable)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise CftoolError(f"{path}: trainer state's optimizer state does not fit this run ({err}); delete it") from None
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(state["trainable"][name])
    if after_epoch is not None:
        saved = state.get("after_epoch")
        try:
            after_epoch.load_state_dict(saved if isinstance(saved, dict) else {})
        except (KeyError, ValueError, TypeError) as err:
            raise CftoolError(
                f"{path}: trainer state's checkpoint selection does not fit this run ({err}); delete it"
            ) from None
    return state["step"], metrics


def _check_optimizer_state(
    path: Path, saved: Any, optimizer: torch.optim.Optimizer, trainable: dict[str, torch.nn.Parameter]
) -> None:
    """Every moment (SGD's momentum buffer, Adam's exp_avg and exp_avg_sq) a finite float tensor of its parameter's
    shape: `load_state_dict` checks only the groups' sizes (and casts dtypes silently), so a misfit would otherwise
    fail at the first step, deep inside torch, or train on NaN."""

    def misfit(what: str) -> CftoolError:
        return CftoolError(f"{path}: trainer state's optimizer state does not fit this run ({what}); delete it")

    groups, saved_groups = optimizer.param_groups, saved.get("param_groups")
    states = saved.get("state")
    if not (isinstance(saved_groups, list) and isinstance(states, dict)):
        raise misfit("no 'state' and 'param_groups'")
    if len(saved_groups) != len(groups):
        raise misfit(f"{len(saved_groups)} parameter groups, not {len(groups)}")
    names = {id(parameter): name for name, parameter in trainable.items()}
    for group, saved_group in zip(groups, saved_groups, strict=True):
        ids = saved_group.get("params") if isinstance(saved_group, dict) else None
        if not isinstance(ids, list) or len(ids) != len(group["params"]):
            raise misfit("a parameter group of another size")
        for index, parameter in zip(ids, group["params"], strict=True):
            entries = states.get(index, {})
            if not isinstance(entries, dict):
                raise misfit(f"the state of {names[id(parameter)]!r} is not a dictionary")
            for key, value in entries.items():
                if key == "step" or (key == "momentum_buffer" and value is None):
                    continue  # a count torch checks itself; SGD without momentum keeps no buffer
                fits = (
                    isinstance(value, torch.Tensor)
                    and value.is_floating_point()
                    and value.shape == parameter.shape
                    and bool(torch.isfinite(value).all())
                )
                if not fits:
                    found = f"{value.dtype} {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value)
                    raise misfit(
                        f"{key} of {names[id(parameter)]!r} is {found}, not finite floats of shape "
                        f"{list(parameter.shape)}"
                    )


def _check_fingerprint(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    if saved.get("base_sha256") != current.get("base_sha256"):
        raise CftoolError(
            f"{path}: trainer state was made with base model {saved.get('base')!r} "
            f"(sha256 {str(saved.get('base_sha256'))[:12]}), not the --zs in use ({current.get('base')!r}); "
            f"use the same --zs, or run without --resume"
        )
    if saved.get("classnames") != current.get("classnames"):
        raise CftoolError(
            f"{path}: trainer state was trained on classes {saved.get('classnames')}, but the data has "
            f"{current.get('classnames')}; use the same --data, or run without --resume"
        )
    changed = sorted(key for key in saved.keys() | current.keys() if saved.get(key) != current.get(key))
    if changed:
        details = ", ".join(f"{key}: {saved.get(key)!r} then, {current.get(key)!r} now" for key in changed[:3])
        raise CftoolError(f"{path}: cannot resume with changed options ({details}); run without --resume")
