"""The registry of checkpoint kinds, and checkpoints applied to a base model: one registry by kind, which eval,
continue, decouple and route all use, and the methods that train the kinds fine-tuning writes (``METHODS``).

An adapter applies a checkpoint of its kind to a ``ZooModel`` for inference and returns the head function that
scores classes with it (a `model`, `lora` or `delta` checkpoint replaces the zoo model's weights; a `prompt` or
`head` leaves them and scores with what it learned). The kinds that fine-tuning writes are adapted by their
methods, which `continue` also moves to the checkpoint's solution to train further. A `unified` set holds one
expert per task, so applying it needs the task whose expert to rebuild (``λ_i · M_i ⊙ u`` added to the base).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, Protocol

import torch

from cftool.encode.zero_shot import HeadFn, zero_shot_head
from cftool.errors import CftoolError
from cftool.io.checkpoint import CheckpointReader, TensorInfo, check_shapes, open_checkpoint
from cftool.io.header import DELTA_KIND, UNIFIED_KIND, read_cftool_header
from cftool.io.unified import UnifiedSet
from cftool.kinds.head import LinearHead
from cftool.kinds.lora import LoRA
from cftool.kinds.method import Method
from cftool.kinds.model import Full
from cftool.kinds.prompt import CoOp
from cftool.merge.decouple import expert_factors, expert_tensors, factor_space
from cftool.merge.delta import added_delta
from cftool.merge.lora import merged_factors
from cftool.zoo import ZooModel

# The fine-tuning methods by name, each training the checkpoint kind its module is named for.
METHODS: dict[str, type[Method]] = {m.name: m for m in (CoOp, LinearHead, LoRA, Full)}


def build_method(name: str, zoo: ZooModel, classnames: Sequence[str], templates: Sequence[str], **options) -> Method:
    if name not in METHODS:
        raise CftoolError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](zoo, classnames, templates, **options)


# The kinds fine-tuning writes, each with the method that trains it: the kinds `continue` takes and a path joins.
TRAINED_KINDS: dict[str, type[Method]] = {method.kind: method for method in METHODS.values()}


class Adapter(Protocol):
    kind: ClassVar[str]
    changes_weights: ClassVar[bool]  # False: the encoders stay the base's, so their image features can be reused
    self_contained: ClassVar[bool]  # True: it applies to any base of its architecture, not only its own

    @classmethod
    def apply(cls, zoo: ZooModel, ckpt: CheckpointReader, task: str | None = None) -> HeadFn:
        """``task``: the task a checkpoint of several tasks' experts (a unified set) picks; others ignore it."""


def _load_delta(
    zoo: ZooModel, path: Path, layout: Mapping[str, TensorInfo], delta: Iterable[tuple[str, torch.Tensor]]
) -> None:
    """Add a delta (every tensor of ``layout`` a floating-point tensor of the base, of its shape) to the zoo's base
    weights."""
    state = zoo.model.state_dict()
    floating = {name: tuple(t.shape) for name, t in state.items() if t.is_floating_point()}
    check_shapes(path, layout, {name: floating[name] for name in layout if name in floating})
    zoo.load_state_dict(added_delta(state, delta), path)


class DeltaAdapter:
    """A task delta ``δ``: the model ``θ0 + δ``, scored by its own text tower."""

    kind, changes_weights, self_contained = DELTA_KIND, True, False

    @classmethod
    def apply(cls, zoo: ZooModel, ckpt: CheckpointReader, task: str | None = None) -> HeadFn:
        _load_delta(zoo, ckpt.path, ckpt.tensors, ((name, ckpt[name]) for name in ckpt.tensors))
        return zero_shot_head


class UnifiedAdapter:
    """One task's expert of a ConDU unified set, ``θ0 + λ_i · M_i ⊙ u`` (in LoRA factor space: ``W + scale · B̃ Ã``
    with ``B̃, Ã = P + λ_i · M_i ⊙ u``), rebuilt by decouple's own rule."""

    kind, changes_weights, self_contained = UNIFIED_KIND, True, False

    @classmethod
    def apply(cls, zoo: ZooModel, ckpt: CheckpointReader, task: str | None = None) -> HeadFn:
        return apply_expert(zoo, UnifiedSet(ckpt), task)


def apply_expert(zoo: ZooModel, unified: UnifiedSet, task: str | None) -> HeadFn:
    """``task``'s expert of an open unified set applied to ``zoo`` (which must hold the base weights)."""
    if task is None:
        raise CftoolError(
            f"{unified.path}: a unified set holds one expert per task ({', '.join(unified.task_names)}); "
            "name the task whose expert to use"
        )
    index, shape = unified.task_index(task), factor_space(unified)
    if shape is None:
        _load_delta(zoo, unified.path, unified.delta, expert_tensors(unified, index))
    else:  # ConDU-LoRA: the expert's factors merged into the weights they adapt
        factors = expert_factors(unified, index)
        zoo.load_state_dict(
            merged_factors(zoo.model.state_dict(), unified.path, shape, factors.__getitem__), unified.path
        )
    return zero_shot_head


ADAPTERS: dict[str, type[Adapter]] = {
    **TRAINED_KINDS,
    DeltaAdapter.kind: DeltaAdapter,
    UnifiedAdapter.kind: UnifiedAdapter,
}


def adapter_of(ckpt: CheckpointReader) -> type[Adapter]:
    kind = ckpt.header.kind
    if kind not in ADAPTERS:
        raise CftoolError(
            f"{ckpt.path}: a {kind!r} checkpoint cannot be applied to a model; expected {', '.join(ADAPTERS)}"
        )
    return ADAPTERS[kind]


def open_applicable(path: str | Path, zoo: ZooModel, base_sha256: str) -> CheckpointReader:
    """Open a checkpoint of any adapted kind to apply to ``zoo``, whose base weights hash to ``base_sha256``; every
    kind but a self-contained one must have been made from that base, and every kind for its architecture."""
    kind = read_cftool_header(path).kind
    own_base = not (kind in ADAPTERS and ADAPTERS[kind].self_contained)
    return open_checkpoint(
        path,
        kind=tuple(ADAPTERS),
        base_sha256=base_sha256 if own_base else None,
        base=zoo.spec.canonical,
        base_arch=zoo.architecture,
    )


def apply_checkpoint(zoo: ZooModel, ckpt: CheckpointReader, task: str | None = None) -> HeadFn:
    """Apply ``ckpt`` to ``zoo`` (which must hold the base weights) and return the head function that scores with it;
    ``task`` picks a unified set's expert."""
    return adapter_of(ckpt).apply(zoo, ckpt, task)


class BaseState:
    """The zoo's base weights, copied the first time a checkpoint is about to replace them, to be restored after it:
    evaluating the zero-shot model, prompts and heads copies nothing (a ViT-B/16 copy is 0.6 GB)."""

    def __init__(self, zoo: ZooModel):
        self.zoo = zoo
        self._copy: dict[str, torch.Tensor] | None = None

    def keep(self) -> None:
        if self._copy is None:
            self._copy = {name: tensor.clone() for name, tensor in self.zoo.model.state_dict().items()}

    def restore(self) -> None:
        self.zoo.load_state_dict(dict(self._copy), self.zoo.spec.canonical)


@contextmanager
def applied(
    zoo: ZooModel, ckpt: CheckpointReader, base_state: BaseState, task: str | None = None
) -> Iterator[tuple[HeadFn, bool]]:
    """``ckpt`` applied to ``zoo`` for the block: its head function, and whether the encoders are still the base's;
    weights it replaced are restored from ``base_state`` afterwards."""
    changes_weights = adapter_of(ckpt).changes_weights
    with _restored(base_state, changes_weights, lambda: apply_checkpoint(zoo, ckpt, task)) as head:
        yield head, not changes_weights


@contextmanager
def expert_applied(zoo: ZooModel, unified: UnifiedSet, base_state: BaseState, task: str) -> Iterator[HeadFn]:
    """``applied`` for one expert of a unified set already open, whose structure is then checked once for all the
    experts a command rebuilds."""
    with _restored(base_state, True, lambda: apply_expert(zoo, unified, task)) as head:
        yield head


@contextmanager
def _restored(base_state: BaseState, changes_weights: bool, apply: Callable[[], HeadFn]) -> Iterator[HeadFn]:
    """The head function ``apply`` returns, for the block; where it changes the weights, they are restored from
    ``base_state`` afterwards."""
    if changes_weights:
        base_state.keep()
    head = apply()
    try:
        yield head
    finally:
        if changes_weights:
            base_state.restore()


def trainable_method(ckpt: CheckpointReader) -> type[Method]:
    """The method that trained a checkpoint of this kind, to continue training it."""
    adapter = adapter_of(ckpt)
    if not (isinstance(adapter, type) and issubclass(adapter, Method)):
        raise CftoolError(f"{ckpt.path}: a {ckpt.header.kind!r} checkpoint holds no trainable parameters")
    return adapter
