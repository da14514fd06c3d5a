"""The `unify` methods, registered by name: each is one pure function over one tensor's deltas (STYLE: mergekit).

A method sees a ``Chunk`` (some rows of one tensor, from every task's delta) and returns a ``Merged``. Every step
of docs/design.md §5.2 is elementwise, so the engine may hand a large tensor over in slices. What a method needs of the
whole model it declares: ``statistics`` that the engine computes in streamed passes before merging (TIES's
thresholds and majority sign), and per-task ``sums`` it returns for the engine to add up over the model, from which
``rescalers`` computes the triggers' scales (ConDU). Adding a method is adding one decorated function.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from cftool.errors import CftoolError
from cftool.io.header import DELTA_KIND
from cftool.merge.stream import TensorPlan
from cftool.options import MERGE_OPTION_FLAGS, MergeMethodDefaults


@dataclass(frozen=True)
class Chunk:
    """Rows ``start:stop`` of tensor ``name``, from every task's delta (the whole tensor if it is 0-d)."""

    name: str
    deltas: list[torch.Tensor]  # one per task, all of one dtype and shape
    start: int
    stop: int
    first_element: int  # where the rows begin in the flattened tensor
    tensor_numel: int  # of the whole tensor: a per-tensor mean is a sum over its chunks divided by it


@dataclass
class Merged:
    """A method's result for one chunk."""

    delta: torch.Tensor  # the merged (ConDU: unified) delta's rows, in the inputs' dtype
    masks: list[torch.Tensor] | None = None  # ConDU: every task's bool mask of these rows
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> float64 [n_tasks], added up over the model


class Statistic(ABC):
    """A whole-model quantity that a method needs before it merges, computed by the engine in streamed passes.

    The engine calls ``update`` with every chunk of the model in order, ``end_tensor`` after each tensor's last
    chunk, and ``end_pass`` after the last tensor; it starts another pass until ``end_pass`` returns True.
    """

    @abstractmethod
    def update(self, chunk: Chunk) -> None: ...

    def end_tensor(self, name: str) -> None:  # noqa: B027 (most statistics need no per-tensor step)
        return None

    @abstractmethod
    def end_pass(self) -> bool: ...

    @abstractmethod
    def value(self) -> Any: ...


# (options, the model's tensors, values of the statistics declared before it) -> a fresh statistic
StatisticFactory = Callable[[Any, list[TensorPlan], Mapping[str, Any]], Statistic]
MethodFunction = Callable[[Chunk, Any, Mapping[str, Any]], Merged]


@dataclass(frozen=True)
class MergeMethod:
    name: str
    function: MethodFunction
    reference: str
    options: type  # a frozen dataclass of the method's options, with defaults, validated when built
    statistics: tuple[tuple[str, StatisticFactory], ...] = ()
    rescalers: Callable[[Mapping[str, torch.Tensor]], torch.Tensor] | None = None  # set: writes a unified set
    inputs: str = DELTA_KIND  # what it merges: `delta` files, or the factors of `lora` checkpoints (factor space)

    @property
    def writes_triggers(self) -> bool:
        return self.rescalers is not None

    def make_options(self, **given: Any) -> Any:
        """The method's options from the given ones (None: the default); one that the method lacks is refused."""
        fields = {f.name for f in dataclasses.fields(self.options)}
        given = {key: value for key, value in given.items() if value is not None}
        unknown = sorted(given.keys() - fields)
        if unknown:
            raise CftoolError(
                f"--method {self.name} takes no {', '.join(_flag(key) for key in unknown)}"
                f" (its options: {', '.join(_flag(key) for key in sorted(fields)) or 'none'})"
            )
        return self.options(**given)


def _flag(option: str) -> str:
    return MERGE_OPTION_FLAGS[option].flag if option in MERGE_OPTION_FLAGS else option


METHODS: dict[str, MergeMethod] = {}


def merge_method(
    declared: MergeMethodDefaults,
    *,
    reference: str,
    options: type,
    statistics: tuple[tuple[str, StatisticFactory], ...] = (),
    rescalers: Callable[[Mapping[str, torch.Tensor]], torch.Tensor] | None = None,
    inputs: str = DELTA_KIND,
) -> Callable[[MethodFunction], MethodFunction]:
    """Register ``function`` as the `unify --method NAME` method that cftool.options declares (its name, and the
    defaults of ``options``' fields)."""

    def register(function: MethodFunction) -> MethodFunction:
        if declared.name in METHODS:
            raise ValueError(f"merge method {declared.name!r} is registered twice")
        METHODS[declared.name] = MergeMethod(declared.name, function, reference, options, statistics, rescalers, inputs)
        return function

    return register
