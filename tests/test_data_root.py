"""The data root a file was trained from is recorded, and `continue` finds its data there again in a shell without
$CFTOOL_DATA_ROOT; data that has moved fails in a line naming the roots tried, before any model is loaded."""

import importlib
from pathlib import Path

import pytest
from conftest import one_line_error
from test_coop_datasets import write_split_file

from cftool.io.checkpoint import open_checkpoint

PETS = ["abyssinian", "american_bulldog", "basset_hound"]
QUICK = ["--iterations", "1", "--batch-size", "3"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_continue_finds_its_data_under_the_recorded_root_and_fails_early_once_it_moved(cli, tmp_path, monkeypatch):
    root = tmp_path / "datasets"
    write_split_file(
        root / "oxford_pets", "OxfordPets", "images", [(f"{name}_{{split}}{{i}}.jpg", name) for name in PETS]
    )
    shell = tmp_path / "elsewhere"  # a working folder without ./data
    shell.mkdir()
    monkeypatch.chdir(shell)
    monkeypatch.setenv("CFTOOL_DATA_ROOT", str(root))
    prompt = tmp_path / "coop.safetensors"
    result = cli("finetune", "--zs", "tiny", "--data", "coop:OxfordPets", "--method", "coop", *QUICK, "-o", prompt)
    assert result.code == 0, result.stderr
    with open_checkpoint(prompt) as ckpt:
        assert ckpt.header.config["data_root"] == str(root)

    monkeypatch.delenv("CFTOOL_DATA_ROOT")  # a new shell
    assert f"add --data coop:OxfordPets --data-root {root}" in one_line_error(cli("eval", prompt))
    continued = tmp_path / "continued.safetensors"
    result = cli("continue", prompt, *QUICK, "-o", continued)
    assert result.code == 0, result.stderr
    with open_checkpoint(continued) as ckpt:
        assert ckpt.header.config["data_root"] == str(root)

    moved = root.rename(tmp_path / "moved")
    finetune_module = importlib.import_module("cftool.train.finetune")  # the package exports a function of that name
    loaded = []
    monkeypatch.setattr(finetune_module, "load_model", lambda *args: loaded.append(args) or pytest.fail("loaded"))
    line = one_line_error(cli("continue", prompt, *QUICK, "-o", tmp_path / "again.safetensors"))
    assert str(prompt) in line and str(root) in line and str(shell / "data") in line
    assert "--data-root" in line and "CFTOOL_DATA_ROOT" in line
    assert loaded == []  # refused before the model was loaded

    monkeypatch.undo()  # the model loads again; the variable (and --data-root) still override the recorded root
    monkeypatch.setenv("CFTOOL_DATA_ROOT", str(moved))
    result = cli("continue", prompt, *QUICK, "-o", tmp_path / "found.safetensors")
    assert result.code == 0, result.stderr
    with open_checkpoint(tmp_path / "found.safetensors") as ckpt:
        assert ckpt.header.config["data_root"] == str(moved)


def test_a_folder_spec_is_recorded_absolute(cli, tmp_path, monkeypatch, toy_folders):
    monkeypatch.chdir(toy_folders["food"].parent)
    prompt = tmp_path / "folder.safetensors"
    result = cli("finetune", "--zs", "tiny", "--data", "folder:food", "--method", "coop", *QUICK, "-o", prompt)
    assert result.code == 0, result.stderr
    with open_checkpoint(prompt) as ckpt:
        assert ckpt.header.config["data"]["source"] == f"folder:{toy_folders['food']}"
        assert ckpt.header.config["data_root"] is None
    monkeypatch.chdir(tmp_path)
    result = cli("continue", prompt, *QUICK, "--select", "last", "-o", tmp_path / "continued.safetensors")
    assert result.code == 0, result.stderr
    assert Path(tmp_path / "continued.safetensors").is_file()
