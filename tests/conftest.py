import atexit
import math
import os
import shutil
import tempfile

# Tests never touch the network: open_clip / huggingface_hub must fail fast instead of downloading.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Under pytest-xdist the workers share the cores: each (and every cftool it starts) gets its share of threads
# instead of all of them. Set before anything imports torch, which reads it once.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))

# What cftool keeps across commands (remembered hashes of base weights, MTIL cells) goes to the run's own folder.
_cache = tempfile.mkdtemp(prefix="cftool-tests-cache-")
atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ["XDG_CACHE_HOME"] = _cache

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from cftool.cli import main


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup` (make test) a file's tests share a worker, as under `loadfile`, unless they name their
    own group: the example scripts, minutes each, each take one, and go first so that no worker starts one last."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    items.sort(key=lambda item: item.get_closest_marker("xdist_group").args[0] == item.module.__name__)  # own first


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def one_line_error(result: CliResult) -> str:
    """The single stderr line of a command that failed as the tool fails: one line, no traceback."""
    assert result.code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def assert_one_line_about(error: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    """A refusal (``pytest.raises``) in one line that names ``path`` and says each of ``fragments``."""
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def never_runs(work: str):
    """A stand-in for ``work`` (monkeypatched over it) that fails the test if a command reaches it: outputs are
    checked before any work."""

    def ran(*args, **kwargs):
        raise AssertionError(f"{work} ran before the outputs were checked")

    return ran


@contextmanager
def torch_threads(count: int):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """Bitwise comparisons between runs need the same threading, and the machine is shared: test modules that
    compare runs use it for every test (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tiny():
    """The embedded `tiny` model, loaded once per test module."""
    from cftool.zoo import load_model

    return load_model("tiny")


def stand_in_finetune(state, seed, scale=3e-3):
    """A full fine-tune's stand-in: every floating tensor of ``state`` moved by seeded noise."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return {
        name: tensor + scale * torch.randn(tensor.shape, generator=generator) if tensor.is_floating_point() else tensor
        for name, tensor in state.items()
    }


@pytest.fixture(autouse=True)
def no_progress_lines_by_the_clock(monkeypatch):
    """Off a terminal, a command prints a progress line every LOG_SECONDS; on a loaded machine a test's command can
    outlast that, and the line would join the one line a failing command prints. Lines by step count still print."""
    import cftool.cli.common

    monkeypatch.setattr(cftool.cli.common, "LOG_SECONDS", math.inf)


@pytest.fixture
def cli(capsys):
    """Run `cftool ARGS…` in-process; returns exit code, stdout and stderr."""

    def run(*args) -> CliResult:
        code = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def toy_folders(tmp_path_factory):
    """Small image folders (folder:PATH, train/ and test/) of three toy tasks, named after them: 3 training and 6
    test images per class, so that protocols over several tasks and sessions run in seconds."""
    from cftool.data.toy import write_toy_folder

    root = tmp_path_factory.mktemp("toy-folders")
    folders = {}
    for name in ("food", "mnist", "cars"):
        write_toy_folder(name, root / name, {"train": 3, "test": 6})
        folders[name] = root / name
    return folders
