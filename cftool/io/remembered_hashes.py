"""Hashes of base weights files, remembered from one command to the next while the file is unchanged.

Every file cftool writes records the sha256 of its base's weights, and every command that reads such a file hashes
the base again to check that the two belong together: 0.5 s for ViT-B/16 on a CPU (1.7 s for ViT-L/14) in each
command of a pipeline. The hash is remembered as git's index remembers a file's status: under the file's path,
device, inode, size, and modification and change times in nanoseconds. Writing to a file changes its change time
(ctime), which no tool can set back, so an entry is never found for changed contents, even after ``cp -p`` or
``touch -d``. A file changed less than ``SETTLED_S`` seconds before it was hashed is not remembered: file systems stamp
times from a coarse clock, and a second write within the same tick would leave every field of the key as it was.

Entries are small JSON files under ``$XDG_CACHE_HOME/cftool/sha256``; a folder that cannot be read or written only
means hashing again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

SETTLED_S = 2.0
_SHA256 = re.compile(r"[0-9a-f]{64}")
# What an entry's hash is of; a change to how files are read or hashed changes it and so every key.
_FORMAT = "tensors_sha256/1"


def cache_root() -> Path:
    """cftool's cache folder: ``$XDG_CACHE_HOME/cftool``, ``~/.cache/cftool`` where the variable is not set."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cftool"


def remembered_sha256(file: Path, reading: str, compute: Callable[[], str]) -> str:
    """``compute()``, the hash of ``file`` as ``reading`` (the spec that loads it) reads it, or the hash remembered for
    the file as it is now."""
    try:
        before = os.stat(file)
    except OSError:
        return compute()
    entry = cache_root() / "sha256" / f"{_key(file, reading, before)}.json"
    try:
        recorded = json.loads(entry.read_text())
        if isinstance(recorded, dict) and _SHA256.fullmatch(str(recorded.get("sha256"))):
            return recorded["sha256"]
    except (OSError, ValueError):
        pass
    digest = compute()
    try:
        after = os.stat(file)
    except OSError:
        return digest
    settled = time.time() - max(after.st_mtime, after.st_ctime) > SETTLED_S
    if settled and _identity(after) == _identity(before):
        _write(entry, {"sha256": digest, "file": str(file), "reading": reading})
    return digest


def _identity(stat: os.stat_result) -> tuple[int, ...]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def _key(file: Path, reading: str, stat: os.stat_result) -> str:
    fields = [_FORMAT, str(Path(file).resolve()), reading, *_identity(stat)]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:32]


def _write(entry: Path, record: dict) -> None:
    """Written whole or not at all (a temporary file renamed over it); a failure is no one's concern."""
    temporary = entry.with_name(f".{entry.name}.{secrets.token_hex(4)}")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(record))
        os.replace(temporary, entry)
    except OSError:
        with suppress(OSError):
            temporary.unlink(missing_ok=True)
