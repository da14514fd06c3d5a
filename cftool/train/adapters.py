"""Checkpoints applied to a base model: one registry by kind, which eval, continue and routing all use.

An adapter applies a checkpoint of its kind to a ``ZooModel`` for inference and returns the head function that
scores classes with it (a `model` or `lora` checkpoint replaces the zoo model's weights; a `prompt` or `head`
leaves them and scores with what it learned). The kinds that fine-tuning writes are adapted by their methods,
which `continue` also moves to the checkpoint's solution to train further.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

from cftool.errors import CftoolError
from cftool.evaluate import HeadFn
from cftool.io.checkpoint import CheckpointReader
from cftool.train.methods import METHODS, Method
from cftool.zoo import ZooModel


class Adapter(Protocol):
    kind: ClassVar[str]
    changes_weights: ClassVar[bool]  # False: the encoders stay the base's, so their image features can be reused

    @classmethod
    def apply(cls, zoo: ZooModel, ckpt: CheckpointReader) -> HeadFn: ...


ADAPTERS: dict[str, type[Adapter]] = {method.kind: method for method in METHODS.values()}


def adapter_of(ckpt: CheckpointReader) -> type[Adapter]:
    kind = ckpt.header.kind
    if kind not in ADAPTERS:
        raise CftoolError(
            f"{ckpt.path}: a {kind!r} checkpoint cannot be applied to a model; expected {', '.join(ADAPTERS)}"
        )
    return ADAPTERS[kind]


def apply_checkpoint(zoo: ZooModel, ckpt: CheckpointReader) -> HeadFn:
    """Apply ``ckpt`` to ``zoo`` (which must hold the base weights) and return the head function that scores with it."""
    return adapter_of(ckpt).apply(zoo, ckpt)


def trainable_method(ckpt: CheckpointReader) -> type[Method]:
    """The method that trained a checkpoint of this kind, to continue training it."""
    adapter = adapter_of(ckpt)
    if not (isinstance(adapter, type) and issubclass(adapter, Method)):
        raise CftoolError(f"{ckpt.path}: a {ckpt.header.kind!r} checkpoint holds no trainable parameters")
    return adapter
