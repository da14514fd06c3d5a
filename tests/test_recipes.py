"""`--recipe`: the official recipes as defaults beneath --config and the command line, recorded in the output."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import one_line_error

from cftool.io.checkpoint import open_checkpoint
from cftool.recipes import load_recipe, recipe_names
from tests.test_mtil_datasets import mnist_images, write_idx

SHORT = ("--zs", "tiny", "--iterations", "1", "--batch-size", "2", "--precision", "fp32", "--no-prototypes")


def recorded_config(path):
    with open_checkpoint(path) as ckpt:
        return ckpt.header.config


def test_every_recipe_loads_and_its_commands_help_lists_it(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    for name in recipe_names():
        recipe = load_recipe(name)
        assert recipe.command in ("finetune", "continue") and recipe.reference
        assert name in cli(recipe.command, "--help").stdout


def test_a_recipe_sets_the_defaults_and_is_recorded(cli, tmp_path):
    output = tmp_path / "food.safetensors"
    assert cli("finetune", "--recipe", "zscl-mtil", "--data", "toy:food", *SHORT, "-o", output).code == 0
    config = recorded_config(output)
    assert config["recipe"] == "zscl-mtil"
    assert (config["method"], config["optimizer"], config["lr"]) == ("full", "adamw", 1e-5)
    assert (config["warmup"], config["label_smoothing"], config["seed"]) == (100, 0.2, 42)
    assert (config["iterations"], config["batch_size"]) == (1, 2)  # the command line wins


def test_config_wins_over_the_recipe_in_either_order(cli, tmp_path):
    config_file = tmp_path / "mine.yaml"
    config_file.write_text(yaml.safe_dump({"lr": 3e-4, "label-smoothing": 0.0}))
    for order in (
        ("--config", config_file, "--recipe", "zscl-mtil"),
        ("--recipe", "zscl-mtil", "--config", config_file),
    ):
        output = tmp_path / f"food-{order[0].strip('-')}.safetensors"
        assert cli("finetune", *order, "--data", "toy:food", *SHORT, "-o", output).code == 0
        config = recorded_config(output)
        assert (config["lr"], config["label_smoothing"], config["warmup"]) == (3e-4, 0.0, 100)


@pytest.mark.parametrize(("lr_flag", "expected"), [((), 5e-5), (("--lr", "2e-3"), 2e-3)])
def test_the_official_per_dataset_rate_applies_where_the_rate_is_the_recipes(cli, tmp_path, lr_flag, expected):
    raw, labels = tmp_path / "data" / "MNIST" / "raw", np.arange(10)  # one image of each digit
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", mnist_images(list(labels)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    # ZSCL trains MNIST and Aircraft at 5e-5, the other MTIL datasets at 1e-5
    output = tmp_path / "mnist.safetensors"
    args = ("--recipe", "zscl-mtil", "--data", "mtil:MNIST", "--data-root", tmp_path / "data", *lr_flag)
    assert cli("finetune", *args, *SHORT, "-o", output).code == 0
    assert recorded_config(output)["lr"] == expected


def test_an_unknown_recipe_is_one_line_naming_the_known_ones(cli, tmp_path):
    output = tmp_path / "x.safetensors"
    message = one_line_error(cli("finetune", "--recipe", "nope", "--data", "toy:food", *SHORT, "-o", output))
    assert "'nope'" in message and "zscl-mtil" in message
    assert not output.exists()


def test_recipes_lists_and_prints(cli):
    listing = cli("recipes")
    assert listing.code == 0 and all(name in listing.stdout for name in recipe_names())
    printed = cli("recipes", "zscl-mtil-few-shot")
    assert printed.code == 0 and yaml.safe_load(printed.stdout)["options"]["shots"] == 5


def test_continue_takes_the_mergetune_recipe_on_any_kind_and_records_it(cli, tmp_path):
    head = tmp_path / "head.safetensors"
    assert (
        cli(
            "finetune",
            "--zs",
            "tiny",
            "--data",
            "toy:food",
            "--shots",
            "4",
            "--method",
            "head",
            "--iterations",
            "1",
            "--no-prototypes",
            "-o",
            head,
        ).code
        == 0
    )
    output = tmp_path / "head.mt.safetensors"
    assert (
        cli("continue", head, "--recipe", "mergetune-coop", "--epochs", "2", "--no-prototypes", "-o", output).code == 0
    )
    config = recorded_config(output)
    assert config["recipe"] == "mergetune-coop"
    assert (config["batch_size"], config["weight_decay"], config["schedule"], config["select"]) == (
        128,
        5e-4,
        "cosine-epoch",
        "best-val",
    )
    assert config["mergetune"]["lmc_samples"] == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    assert config["epochs"] == 2  # the command line wins


def test_a_recipe_of_another_command_is_refused(cli, tmp_path):
    output = tmp_path / "x.safetensors"
    message = one_line_error(cli("finetune", "--recipe", "mergetune-coop", "--data", "toy:food", *SHORT, "-o", output))
    assert "cftool continue" in message


@pytest.mark.parametrize("name", [name for name in recipe_names() if load_recipe(name).command == "finetune"])
def test_every_finetune_recipe_trains_with_its_options_recorded(cli, tmp_path, name):
    output = tmp_path / f"{name}.safetensors"
    assert cli("finetune", "--recipe", name, "--data", "toy:food", *SHORT, "-o", output).code == 0
    config = recorded_config(output)
    overridden = {"zs", "iterations", "batch-size", "precision"}
    for key, value in load_recipe(name).options.items():
        if key not in overridden:
            recorded = config["data"]["shots"] if key == "shots" else config[key.replace("-", "_")]
            assert (list(recorded) if key == "towers" else recorded) == (
                value.split(",") if key == "towers" else value
            ), key
