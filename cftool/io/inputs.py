"""The files a command reads as inputs, so that none of its outputs replaces one, with --force or without.

Every reader checks its file through `cftool.io.checkpoint.check_input_file` and every writer through
`refuse_existing`, so recording in one and refusing in the other covers every command and every output it writes.
Recording is scoped to one command (`inputs_protected`, entered by the CLI): a library caller, or the next command
in the same process, starts with none. Kept free of torch, so that the CLI imports it for nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from cftool.errors import CftoolError

_inputs_read: ContextVar[set[str] | None] = ContextVar("inputs_read", default=None)


@contextmanager
def inputs_protected() -> Iterator[None]:
    """Within the block (one command), record every file read as an input and refuse to write over any of them."""
    token = _inputs_read.set(set())
    try:
        yield
    finally:
        _inputs_read.reset(token)


def note_input(path: Path) -> None:
    inputs = _inputs_read.get()
    if inputs is not None:
        inputs.add(os.path.realpath(path))


def refuse_input_overwrite(path: Path) -> None:
    if os.path.realpath(path) in (_inputs_read.get() or ()):
        raise CftoolError(
            f"{path}: is also an input of this command; name a different output file (--force never replaces an input)"
        )
