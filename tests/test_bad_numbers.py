"""Bad numbers in input (issue 20): non-finite options and tensors, results that overflow, hand-edited caches and
trainer states, and outputs that would replace an input's companion files. Each is one line and writes nothing."""

# ruff: noqa: F811 (the fixtures imported from other test modules are the tests' parameters)

import json

import pytest
import torch
from conftest import files_in, one_line_error
from test_finetune import DATA, METHOD_FLAGS, TRAIN, interrupted_once, interrupted_run  # noqa: F401 (fixtures)
from test_merge_cli import base, deltas, models, unified  # noqa: F401 (fixtures)

from cftool.io.checkpoint import open_checkpoint, save_checkpoint
from cftool.io.command_files import metrics_path
from cftool.io.unified import open_unified
from cftool.train import prototypes_path, state_path


def _copy_with(path, folder, name, edit):
    """A copy of checkpoint ``path`` named ``name`` in ``folder``, with tensor ``edit[0]`` replaced by ``edit[1]``
    applied to it, under the same header."""
    with open_checkpoint(path) as checkpoint:
        tensors, header = checkpoint.load_all(), checkpoint.header
    tensor_name, change = edit
    tensors[tensor_name] = change(tensors[tensor_name].clone())
    return save_checkpoint(folder / name, tensors, header)


def _with_one(value):
    def change(tensor):
        tensor.view(-1)[0] = value
        return tensor

    return change


def _refused(cli, folder, args, *fragments):
    """The command fails in one line holding every fragment, and leaves ``folder`` as it was (no temporary file)."""
    before = files_in(folder)
    line = one_line_error(cli(*args))
    for fragment in fragments:
        assert fragment in line, (args, line)
    assert files_in(folder) == before, args
    return line


# A. NaN, Inf and overflow ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_delta_apply_refuses_a_scale_that_is_not_finite(cli, deltas, tmp_path, value):
    args = ("delta", "apply", deltas["food"], "--zs", "tiny", "--scale", value, "-o", tmp_path / "m.safetensors")
    _refused(cli, tmp_path, args, f"--scale {value}", "finite")


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (("--method", "task-arithmetic", "--lambda", "nan"), "--lambda nan"),
        (("--method", "task-arithmetic", "--lambda", "inf"), "--lambda inf"),
        (("--method", "ties", "--lambda", "-inf"), "--lambda -inf"),
        (("--method", "dare", "--lambda", "nan"), "--lambda nan"),
    ],
)
def test_unify_refuses_a_lambda_that_is_not_finite(cli, deltas, tmp_path, flags, fragment):
    _refused(cli, tmp_path, ("unify", deltas["food"], deltas["mnist"], *flags, "-o", tmp_path / "u.st"), fragment)


def test_a_scale_that_overflows_float32_is_refused(cli, deltas, tmp_path):
    # 1e39 is a finite Python float, but Inf once multiplied into float32 weights.
    apply = ("delta", "apply", deltas["food"], "--zs", "tiny", "--scale", "1e39", "-o", tmp_path / "m.safetensors")
    _refused(cli, tmp_path, apply, str(tmp_path / "m.safetensors"), "overflow", "--scale")
    unify = ("unify", deltas["food"], deltas["mnist"], "--method", "task-arithmetic", "--lambda", "1e39")
    _refused(cli, tmp_path, (*unify, "-o", tmp_path / "u.st"), str(tmp_path / "u.st"), "overflow", "--lambda")


def test_a_merge_of_finite_deltas_that_overflows_is_refused(cli, deltas, tmp_path):
    large = _copy_with(deltas["food"], tmp_path, "large.safetensors", ("text_projection", _with_one(1e37)))
    out = tmp_path / "out.safetensors"
    _refused(cli, tmp_path, ("delta", "apply", large, "--scale", "100", "-o", out), "'text_projection'", "overflow")
    args = ("unify", large, deltas["mnist"], "--method", "task-arithmetic", "--lambda", "100", "-o", out)
    _refused(cli, tmp_path, args, str(out), "'text_projection'", "overflow")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_delta_apply_refuses_a_delta_holding_nan_or_inf(cli, deltas, tmp_path, value):
    bad = _copy_with(deltas["food"], tmp_path, "bad.safetensors", ("text_projection", _with_one(value)))
    args = ("delta", "apply", bad, "-o", tmp_path / "m.safetensors")
    _refused(cli, tmp_path, args, str(bad), "'text_projection'", "NaN or Inf")


def _unified_holding_nan(unified, folder):
    """A unified set whose u holds a NaN where no task's mask keeps it (in a tensor the stand-in fine-tunes left
    unmoved), so that no expert shows it; returns the file and the tensor's name."""
    with open_unified(unified) as unified_set:
        for name, info in unified_set.delta.items():
            rows = info.shape[0] if info.shape else 1
            kept = torch.zeros(info.shape, dtype=torch.bool)
            for index in range(len(unified_set.tasks)):
                kept |= unified_set.mask_rows(index, name, 0, rows)
            if not kept.all():
                break
    hidden = int((~kept).view(-1).nonzero()[0])

    def change(tensor):
        tensor.view(-1)[hidden] = float("nan")
        return tensor

    return _copy_with(unified, folder, "nan.st", (name, change)), name


@pytest.mark.parametrize("as_kind", ["delta", "model"])
def test_decouple_refuses_a_unified_set_holding_nan(cli, unified, tmp_path, as_kind):
    bad, name = _unified_holding_nan(unified, tmp_path)
    args = ("decouple", bad, "--task", "food", "--as", as_kind, "-o", tmp_path / "e.safetensors")
    _refused(cli, tmp_path, args, str(bad), repr(name), "NaN or Inf")


def test_a_continual_session_refuses_a_previous_set_holding_nan(cli, unified, deltas, tmp_path):
    bad, name = _unified_holding_nan(unified, tmp_path)
    args = ("unify", "--into", bad, deltas["food"], "--replace", "-o", tmp_path / "next.st")
    _refused(cli, tmp_path, args, str(bad), repr(name), "NaN or Inf")


# B. The eval --sessions cell cache ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit",
    [
        lambda stored: {"key": stored["key"]},
        lambda stored: {**stored, "accuracy": "87.5"},
        lambda stored: {**stored, "accuracy": True},
        lambda stored: {**stored, "accuracy": float("nan")},
        lambda stored: {**stored, "accuracy": 187.5},
        lambda stored: {**stored, "accuracy": -1},
    ],
    ids=["no-accuracy", "string", "bool", "nan", "over-100", "negative"],
)
def test_a_hand_edited_cell_is_measured_again(tmp_path, edit):
    from cftool.eval.mtil import CellCache

    key = {"checkpoint": "ab" * 32, "task": "toy:food", "split": "test"}
    CellCache(tmp_path).put(key, 87.5)
    [cell] = tmp_path.iterdir()
    cell.write_text(json.dumps(edit(json.loads(cell.read_text()))))
    cache = CellCache(tmp_path)
    assert cache.get(key) is None and cache.found == 0
    cache.put(key, 62.5)
    assert CellCache(tmp_path).get(key) == 62.5


# C. The optimizer state of a trainer state ----------------------------------------------------------------------


def _first_moments(state):
    """The saved Adam state of the first parameter that has one."""
    return next(entries for entries in state["optimizer"]["state"].values() if "exp_avg" in entries)


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda moments: moments.update(exp_avg=moments["exp_avg"][:1]), "exp_avg of"),
        (lambda moments: moments.update(exp_avg_sq=torch.full_like(moments["exp_avg_sq"], float("nan"))), "finite"),
        (lambda moments: moments.update(exp_avg=moments["exp_avg"].to(torch.int64)), "torch.int64"),
    ],
    ids=["shape", "nan", "dtype"],
)
def test_a_trainer_state_whose_optimizer_moments_do_not_fit_is_refused(cli, interrupted_run, edit, fragment):
    path = state_path(interrupted_run)
    state = torch.load(path, weights_only=True)
    edit(_first_moments(state))
    torch.save(state, path)
    args = [*DATA, *TRAIN, "--method", "lora", *METHOD_FLAGS["lora"], "-o", interrupted_run, "--resume"]
    line = one_line_error(cli("finetune", *args))
    assert str(path) in line and "optimizer state does not fit" in line and fragment in line, line
    assert not interrupted_run.exists()


# D. An input's companion files are inputs too ---------------------------------------------------------------


@pytest.fixture(scope="module")
def coop(tmp_path_factory):
    """A `prompt` checkpoint with its prototypes beside it, as finetune writes them."""
    from cftool.cli import main

    output = tmp_path_factory.mktemp("coop") / "coop.safetensors"
    args = [*DATA, "--batch-size", "20", "--iterations", "2", "--method", "coop", *METHOD_FLAGS["coop"]]
    assert main(["finetune", *map(str, args), "-o", str(output)]) == 0
    assert prototypes_path(output).is_file()
    return output


def test_continue_never_replaces_its_inputs_prototypes(cli, coop):
    prototypes = prototypes_path(coop)
    before = prototypes.read_bytes()
    args = ("continue", coop, "--iterations", "1", "--device", "cpu", "-o", prototypes, "--force")
    _refused(cli, coop.parent, args, str(prototypes), "is also an input")
    assert prototypes.read_bytes() == before


def test_no_output_replaces_a_companion_of_an_input(cli, deltas, tmp_path):
    food = _copy_with(deltas["food"], tmp_path, "food.safetensors", ("logit_scale", lambda tensor: tensor))
    (tmp_path / "food.prototypes.safetensors").write_bytes(b"the prototypes")
    apply = ("delta", "apply", food, "--zs", "tiny", "-o", prototypes_path(food), "--force")
    _refused(cli, tmp_path, apply, "is also an input")
    unify = ("unify", food, deltas["mnist"], "--method", "mean", "-o", state_path(food))
    _refused(cli, tmp_path, unify, "is also an input")
    (tmp_path / "food.metrics.jsonl").write_text("{}\n")  # its training curve belongs to it too
    _refused(cli, tmp_path, (*apply[:-3], "-o", metrics_path(food), "--force"), "is also an input")
    assert (tmp_path / "food.metrics.jsonl").read_text() == "{}\n"
    assert (tmp_path / "food.prototypes.safetensors").read_bytes() == b"the prototypes"
