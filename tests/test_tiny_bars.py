"""The shipped `tiny` weights: provenance, the zero-shot accuracies benchmarks/RESULTS.md records, and that
pretraining reproduces them."""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import safetensors
import safetensors.torch
import torch

from cftool.data.toy import HELDOUT_TASK, TOY_TASKS
from cftool.zoo import load_model

WEIGHTS = Path(__file__).parents[1] / "cftool" / "zoo" / "weights" / "tiny.safetensors"
PRETRAIN_SCRIPT = Path(__file__).parents[1] / "scripts" / "pretrain_tiny.py"
RESNET_TINY = PRETRAIN_SCRIPT.parent / "cftool-tiny-resnet.json"  # the `tiny` that shipped before the ViT
# The pretraining script lives outside the package (it trains and evaluates, above everything cftool holds): loaded
# from its file, as `python scripts/pretrain_tiny.py` runs it.
_spec = importlib.util.spec_from_file_location("pretrain_tiny", PRETRAIN_SCRIPT)
pretrain_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pretrain_tiny)
pretrain, pretrain_main = pretrain_tiny.pretrain, pretrain_tiny.main
save_weights, zero_shot_report = pretrain_tiny.save_weights, pretrain_tiny.zero_shot_report
MAX_WEIGHTS_MB = 20.0
# Zero-shot top-1 (%) of the shipped weights, as benchmarks/RESULTS.md reports them.
RECORDED_ZERO_SHOT = {
    "aircraft": 41.4,
    "caltech101": 41.1,
    "cifar100": 28.8,
    "dtd": 10.5,
    "eurosat": 100.0,
    "flowers": 88.2,
    "food": 50.6,
    "mnist": 39.7,
    "oxfordpet": 71.9,
    "cars": 22.8,
    "sun397": 31.9,
    "heldout-combos": 33.8,
}
# Other CPUs may round a few logits differently; a handful of flipped predictions is 0.5 points at most.
TOLERANCE = 0.5
# The testbed's bars: zero-shot imperfect on every task yet well above chance, and a middling mean, so that
# fine-tuning has something to learn and something to forget.
MIN_POINTS_ABOVE_CHANCE = 15.0
MAX_TASK_ACCURACY = 90.0
MEAN_RANGE = (35.0, 80.0)
MIN_HELDOUT_POINTS_ABOVE_CHANCE = 10.0
# The bars the ViT `tiny` misses (benchmarks/RESULTS.md, "A ViT `tiny`": no pretraining lever this CPU allows gives it
# textures and items together): `dtd` at chance, `cars` under chance + 15, `eurosat` perfect. Named here so that a
# retrained `tiny` that meets one fails this test until the record says so.
MISSED_BARS = {"dtd", "cars", "eurosat"}


def chance(task) -> float:
    return 100.0 / len(task.classnames)


@pytest.fixture(scope="module")
def shipped_report() -> dict[str, float]:
    return zero_shot_report(load_model("tiny"))


def test_shipped_weights_are_small_float16_with_provenance():
    assert WEIGHTS.stat().st_size <= MAX_WEIGHTS_MB * 1e6
    with safetensors.safe_open(WEIGHTS, "pt") as weights:
        metadata = weights.metadata()
        assert all(weights.get_slice(name).get_dtype() == "F16" for name in weights.keys())
    assert {"cftool.pretrain.seed", "cftool.pretrain.steps", "cftool.pretrain.torch"} <= metadata.keys()
    assert metadata["cftool.pretrain.steps"] == metadata["cftool.pretrain.step_budget"], "stopped on wall clock"


def test_shipped_weights_score_the_recorded_zero_shot_accuracies(shipped_report):
    assert shipped_report == pytest.approx(RECORDED_ZERO_SHOT, abs=TOLERANCE)


def test_zero_shot_meets_the_testbed_bars_but_the_recorded_misses(shipped_report):
    meets = {
        name
        for name, task in TOY_TASKS.items()
        if chance(task) + MIN_POINTS_ABOVE_CHANCE <= shipped_report[name] <= MAX_TASK_ACCURACY
    }
    assert meets == TOY_TASKS.keys() - MISSED_BARS
    mean = sum(shipped_report[name] for name in TOY_TASKS) / len(TOY_TASKS)
    assert MEAN_RANGE[0] <= mean <= MEAN_RANGE[1]
    assert shipped_report[HELDOUT_TASK.name] >= chance(HELDOUT_TASK) + MIN_HELDOUT_POINTS_ABOVE_CHANCE


def test_pretraining_is_deterministic_for_a_seed_and_step_count():
    runs = [
        pretrain(seed=3, steps=2, minutes=5, batch_size=16, peak_lr=1e-3, weight_decay=0.1, log_every=1)[0]
        for _ in range(2)
    ]
    first, second = (run.state_dict() for run in runs)
    assert all(torch.equal(first[name], second[name]) for name in first)


@pytest.mark.slow
def test_rerunning_the_recorded_pretraining_reproduces_the_shipped_weights(tmp_path):
    """Re-runs the recorded pretraining (about 46 minutes on 2 CPU cores): `pytest -m slow`."""
    with safetensors.safe_open(WEIGHTS, "pt") as weights:
        recorded = weights.metadata()
    model, _, _ = pretrain(
        seed=int(recorded["cftool.pretrain.seed"]),
        steps=int(recorded["cftool.pretrain.steps"]),
        minutes=120,
        batch_size=int(recorded["cftool.pretrain.batch_size"]),
        peak_lr=float(recorded["cftool.pretrain.lr"]),
        weight_decay=float(recorded["cftool.pretrain.weight_decay"]),
        log_every=100,
    )
    rerun_path = tmp_path / "tiny.safetensors"
    save_weights(model, rerun_path, recorded)
    report = zero_shot_report(load_model(f"cftool-tiny:{rerun_path}"))
    assert report == pytest.approx(RECORDED_ZERO_SHOT, abs=TOLERANCE)
    # Bit-identical only where the CPU kernels match the machine that made the shipped file.
    shipped, rerun = safetensors.torch.load_file(WEIGHTS), safetensors.torch.load_file(rerun_path)
    mismatched = [name for name in shipped if not torch.equal(shipped[name], rerun[name])]
    assert not mismatched, f"{len(mismatched)} tensors differ from the shipped weights, e.g. {mismatched[:3]}"


@pytest.mark.parametrize("output", ["folder", "a-file/tiny.safetensors"])
def test_pretraining_refuses_an_unwritable_output_before_training(tmp_path, capsys, output):
    (tmp_path / "folder").mkdir()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        pretrain_main(["--steps", "1", "-o", str(tmp_path / output)])
    assert exit_info.value.code == 2
    assert "not a writable file path" in capsys.readouterr().err


def test_saved_weights_get_the_umask_file_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        save_weights(load_model("tiny").model, tmp_path / "tiny.safetensors", {"cftool.pretrain.seed": "0"})
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "tiny.safetensors").stat().st_mode) == 0o644


def test_the_pretraining_script_runs_from_a_checkout():
    """`python scripts/pretrain_tiny.py` finds cftool as an installed package, outside the package's own folder."""
    run = subprocess.run([sys.executable, str(PRETRAIN_SCRIPT), "--help"], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "python scripts/pretrain_tiny.py --seed 0 --steps 4000 --lr 1e-3" in run.stdout


def test_the_vit_starts_with_sin_cos_positions_that_training_moves():
    model, _, _ = pretrain_tiny.create_tiny(seed=0)
    positions = model.visual.positional_embedding
    grid = model.visual.grid_size[0]
    assert positions.requires_grad  # learned, as in ViT-B/16
    # Row 0 is the class token's (zeros); a patch's row holds sines and cosines of its column and row.
    assert torch.count_nonzero(positions[0]) == 0
    assert positions[1:].abs().max() <= 1.0 and positions.std() > 0.5
    assert not torch.equal(positions[1], positions[2]) and not torch.equal(positions[1], positions[1 + grid])
    trained, steps, _ = pretrain(seed=0, steps=1, minutes=5, batch_size=8, peak_lr=1e-3, weight_decay=0.1, log_every=1)
    assert steps == 1 and not torch.equal(trained.visual.positional_embedding, positions)


def test_another_model_config_pretrains_its_own_architecture():
    open_clip.add_model_config(RESNET_TINY)
    trained, steps, _ = pretrain(
        seed=0, steps=1, minutes=5, batch_size=8, peak_lr=1e-3, weight_decay=0.1, log_every=1, arch=RESNET_TINY.stem
    )
    assert steps == 1 and hasattr(trained.visual, "attnpool")  # open_clip's ModifiedResNet


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "config.json: no such file"),
        ('{"embed_dim": 1', "config.json: not a JSON model config"),
        ("[1]", "config.json: an open_clip model config has embed_dim, vision_cfg and text_cfg"),
    ],
)
def test_pretraining_refuses_a_bad_model_config_before_training(tmp_path, capsys, content, message):
    config = tmp_path / "config.json"
    if content is not None:
        config.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        pretrain_main(["--model-config", str(config), "-o", str(tmp_path / "t.safetensors")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
