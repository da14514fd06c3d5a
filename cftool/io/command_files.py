"""The files one command reads and writes: none of its outputs may replace one of its inputs (with --force or
without), and an interrupted command says which outputs it had finished.

Every reader checks its file through `cftool.io.header.check_input_file` and every writer goes through
`cftool.io.outputs.refuse_existing` and `atomic_output`, so recording there covers every command and every file.
A file's companions (the prototypes and trainer state finetune writes beside a checkpoint) count as read with it:
commands look them up beside their inputs, and replacing them would part them from their checkpoint.
Recording is scoped to one command (`command_files`, entered by the CLI): a library caller, or the next command in
the same process, starts with none. Kept free of torch, so that the CLI imports it for nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

SUFFIX = ".safetensors"


def beside(checkpoint: Path, suffix: str) -> Path:
    """A file next to ``checkpoint`` named after it: ``coop.safetensors`` → ``coop.prototypes.safetensors``."""
    return checkpoint.with_name(checkpoint.name.removesuffix(SUFFIX) + suffix)


def prototypes_path(checkpoint: Path) -> Path:
    return beside(checkpoint, ".prototypes" + SUFFIX)


def task_prototypes_path(folder: Path, task: str) -> Path:
    """Where an imported ConDU session's prototypes of ``task`` go: ``folder/{task}.prototypes.safetensors``."""
    return prototypes_path(folder / f"{task}{SUFFIX}")


def state_path(checkpoint: Path) -> Path:
    return beside(checkpoint, ".state.pt")


def metrics_path(checkpoint: Path) -> Path:
    """The per-step metrics of the training run that wrote ``checkpoint`` (JSON Lines)."""
    return beside(checkpoint, ".metrics.jsonl")


def read_together(path: Path) -> tuple[Path, ...]:
    """``path`` and its companions: what a command that reads ``path`` may read, and so must not replace (its
    metrics are not read, but belong to it as its prototypes do)."""
    return path, prototypes_path(path), state_path(path), metrics_path(path)


@dataclass
class CommandFiles:
    inputs: set[str] = field(default_factory=set)  # real paths
    written: list[Path] = field(default_factory=list)  # outputs complete on disk, in the order they were finished


_current: ContextVar[CommandFiles | None] = ContextVar("command_files", default=None)


@contextmanager
def command_files() -> Iterator[CommandFiles]:
    """Within the block (one command), record the files read and written, and refuse to write over an input."""
    files = CommandFiles()
    token = _current.set(files)
    try:
        yield files
    finally:
        _current.reset(token)


def note_input(path: Path) -> None:
    """Record ``path`` as read, with its companions."""
    files = _current.get()
    if files is not None:
        for read in read_together(path):
            files.inputs.add(os.path.realpath(read))


def note_written(path: Path) -> None:
    files = _current.get()
    if files is not None:
        files.written.append(path)


def inputs_read() -> set[str]:
    """The real paths the current command has read, with their companions; none outside a command."""
    files = _current.get()
    return files.inputs if files is not None else set()
