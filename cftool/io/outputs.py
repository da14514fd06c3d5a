"""Output safety, for every file a command writes (checkpoints, JSON and CSV reports, plots, caches): outputs appear
whole or not at all (`atomic_output`), an existing file is replaced only with --force, an input never (one check,
`refuse_input_overwrite`), outputs are checked writable before the work that fills them, and a failed write (a full
disk above all) is one line naming the file.
"""

from __future__ import annotations

import errno
import glob
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from cftool.errors import CftoolError
from cftool.io.command_files import inputs_read, note_written, read_together


def refuse_existing(path: Path, overwrite: bool, inputs: Sequence[Path] = ()) -> None:
    """Commands call this before any work too, so that a long run never ends in a refusal to write."""
    refuse_input_overwrite(path, inputs)
    if path.is_dir():
        raise CftoolError(f"{path} is a folder; name an output file")
    if not overwrite and (path.exists() or path.is_symlink()):
        raise CftoolError(f"{path} exists; pass --force to overwrite")


def refuse_input_overwrite(output: Path, inputs: Sequence[Path] = ()) -> None:
    """An output that is one of the inputs, or one of their companions (`read_together`), would be replaced while
    it is still being read, or part a checkpoint from its prototypes: refuse it, with --force or without. The inputs
    are those given, named before any is read, and those the command has read so far (`command_files`)."""
    target = os.path.realpath(output)
    named = (os.path.realpath(read) for source in inputs for read in read_together(Path(source)))
    if target in inputs_read() or target in named:
        raise CftoolError(
            f"{output}: is also an input of this command (one of its inputs, or a file read beside one); "
            "name a different output file (--force never replaces an input)"
        )


def check_outputs(outputs: Mapping[str, Path | None], inputs: Sequence[Path], overwrite: bool) -> None:
    """Every output a command will write (by its option, ``{"-o": path}``), checked before any work: none named twice,
    none an existing file without ``overwrite`` or one of ``inputs``, each writable now."""
    named: dict[str, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        target = os.path.realpath(path)
        if target in named:
            raise CftoolError(f"{option} {path}: is also the file of {named[target]}; give each output its own file")
        named[target] = option
        refuse_existing(path, overwrite, inputs)
        check_writable(path)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def write_error(path: Path, exc: OSError) -> CftoolError:
    if exc.errno in _DISK_FULL:
        return CftoolError(f"{path}: the disk is full ({exc.strerror}); nothing was written: free space and rerun")
    return CftoolError(f"{path}: cannot write ({exc.strerror or exc}); check free space and permissions")


class _WriteErrorKept:
    """A file whose write errors are kept: torch's zip writer turns a failed write into an unrelated RuntimeError."""

    def __init__(self, file: BinaryIO):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def torch_save(obj: Any, temp: Path) -> None:
    """``torch.save`` into a temporary file of ``atomic_output``, a failed write raised as the OSError it was."""
    import torch  # here only: JSON reports, plots and the CLI's checks write without torch

    with open(temp, "wb") as file:
        kept = _WriteErrorKept(file)
        try:
            torch.save(obj, kept)
        except RuntimeError:
            if kept.error is not None:
                raise kept.error from None
            raise


def check_writable(path: Path) -> None:
    """Fail now, in one line, if ``path`` could not be written later: its folder is created and a file is made and
    removed in it. Commands call this before long work, so that no run is lost to its output."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_temp_file(path.parent, path.name).unlink()
    except OSError as exc:
        raise write_error(path, exc) from None


def check_writable_folder(folder: Path, option: str) -> None:
    """`check_writable` for a folder that a command fills as it works (a cache): the first file it stores there comes
    after work that a refusal would lose."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _create_temp_file(folder, "write-check").unlink()
    except OSError as exc:
        raise CftoolError(
            f"{option} {folder}: cannot write files there ({exc.strerror or exc}); name a writable folder"
        ) from None


@contextmanager
def atomic_output(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends it is synced and renamed to ``path``.

    An existing ``path`` without ``overwrite`` is refused before anything is written; a missing
    folder is created. On any exception (KeyboardInterrupt included) the temporary file is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    refuse_existing(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(path)
        temp = _create_temp_file(path.parent, path.name)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        try:
            yield temp
        except OSError as exc:
            if exc.errno in _DISK_FULL:  # whatever wrote into the temporary file; other errors are the block's own
                raise write_error(path, exc) from None
            raise
        try:
            _fsync_path(temp)
            # Checked again because the target may have appeared while we were writing.
            refuse_existing(path, overwrite)
            os.replace(temp, path)
            _fsync_path(path.parent)  # makes the rename itself durable
            note_written(path)
        except OSError as exc:
            raise write_error(path, exc) from None
    finally:
        temp.unlink(missing_ok=True)


def _remove_orphans(path: Path) -> None:
    """Temporary files of ``path`` that a killed run left behind: the next write of ``path`` replaces them."""
    for orphan in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        if orphan.is_file() and not orphan.is_symlink():
            orphan.unlink(missing_ok=True)


def _create_temp_file(folder: Path, target_name: str) -> Path:
    # Not tempfile.mkstemp: its 0600 mode would stick to the final file; os.open honours the umask.
    while True:
        candidate = folder / f".{target_name}.tmp-{secrets.token_hex(4)}"
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return candidate


def _fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
