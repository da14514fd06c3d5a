"""Issue 20, round 2: a cache folder a command fills as it works is an output too, checked before any work like the
files it writes (the other outputs: tests/test_outputs.py)."""

import importlib

import pytest
from conftest import never_runs, one_line_error

DATA = ["--zs", "tiny", "--data", "toy:mnist"]
TINY_RUN = ["--classes", "base", "--shots", "2", "--iterations", "1", "--batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A session file of a continual method: the tiny base's own weights, as a `model` checkpoint."""
    from cftool.cli import main

    model = tmp_path_factory.mktemp("session") / "session1.safetensors"
    assert main(["export", "--zs", "tiny", "-o", str(model)]) == 0
    return model


@pytest.fixture
def blocked(tmp_path):
    """A folder path no one can create, root included (chmod does not stop root): a file stands where it should be."""
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the cache folder should be")
    return blocker


@pytest.mark.parametrize(
    "flags",
    [
        ["--cache-dir", "{blocked}/cache"],
        ["--sessions", "{session}", "--cache-dir", "{blocked}/cache"],
        ["--sessions", "{session}"],  # the default folder, under $XDG_CACHE_HOME
    ],
    ids=["features", "cells", "default-cells"],
)
def test_an_unwritable_cache_folder_of_eval_is_found_before_any_work(
    cli, tmp_path, session, blocked, monkeypatch, flags
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    monkeypatch.setattr("cftool.zoo.load_model", never_runs("the evaluation"))
    error = one_line_error(cli("eval", *DATA, *[flag.format(blocked=blocked, session=session) for flag in flags]))
    assert error.startswith("error: --cache-dir") and str(blocked) in error and "cannot write" in error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs"]


def test_an_unwritable_cache_folder_of_finetune_is_found_before_training(cli, tmp_path, blocked, monkeypatch):
    # The module, which `cftool.train` shadows with its function of the same name.
    monkeypatch.setattr(importlib.import_module("cftool.train.finetune"), "_finetune", never_runs("training"))
    output = tmp_path / "coop.safetensors"
    error = one_line_error(cli("finetune", *DATA, *TINY_RUN, "--cache-dir", blocked / "cache", "-o", output))
    assert f"--cache-dir {blocked}/cache: cannot write" in error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs"]
