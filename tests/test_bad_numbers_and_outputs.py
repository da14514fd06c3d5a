"""Bad input, round 2 (issue 20): numbers float32 cannot hold, NaN read from any checkpoint, a checkpoint and its
prototypes from two runs, and every output of every command checked before any work. Each refusal is one line and
writes nothing."""

# ruff: noqa: F811 (the fixtures imported from other test modules are the tests' parameters)

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import never_runs, stand_in_finetune
from test_bad_numbers import _copy_with, _refused, _with_one, coop  # noqa: F401 (a fixture)
from test_bad_weights_files import condu_session
from test_merge_cli import base, deltas, models  # noqa: F401 (fixtures)

from cftool.errors import CftoolError
from cftool.eval.route import TaskPrototypes, prototypes_of
from cftool.io.checkpoint import open_checkpoint, save_checkpoint
from cftool.io.unified import TaskEntry, open_unified
from cftool.train import prototypes_path, state_path
from cftool.zoo.base_weights import open_base

DATA = ["--zs", "tiny", "--data", "toy:mnist", "--classes", "base", "--device", "cpu"]
TINY_RUN = ["--shots", "2", "--iterations", "1", "--batch-size", "4"]
LORA = ["--method", "lora", "--rank", "2", "--towers", "image"]


def _blocked(folder):
    """A folder path that cannot be made, whoever runs the tests (root writes into read-only folders): a file is
    where the folder should be."""
    blocker = folder / "blocked"
    blocker.write_text("a file where the output folder should be")
    return blocker


# A. Numbers float32 cannot hold, and NaN in any checkpoint read --------------------------------------------------


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (("--lr", "1e39"), "--lr must be a finite positive number (at most 3.4e38"),
        (("--weight-decay", "1e39"), "--weight-decay must be a finite number ≥ 0 (at most 3.4e38"),
        ((*LORA, "--alpha", "nan"), "--alpha must be a finite number (at most 3.4e38, float32's largest), got nan"),
        ((*LORA, "--alpha", "1e39"), "--alpha must be a finite number (at most 3.4e38, float32's largest), got 1e+39"),
    ],
    ids=["lr", "weight-decay", "lora-alpha-nan", "lora-alpha-huge"],
)
def test_finetune_refuses_a_number_float32_cannot_hold(cli, tmp_path, monkeypatch, flags, fragment):
    import importlib

    monkeypatch.setattr(importlib.import_module("cftool.train.finetune"), "_finetune", never_runs("training"))
    _refused(cli, tmp_path, ("finetune", *DATA, *TINY_RUN, *flags, "-o", tmp_path / "out.safetensors"), fragment)


def test_continue_refuses_a_lambda_float32_cannot_hold(cli, coop, tmp_path):
    args = ("continue", coop, "--iterations", "1", "--lambda-zs", "1e39", "-o", tmp_path / "c.safetensors")
    _refused(cli, tmp_path, args, "--lambda-zs must be a finite number", "1e+39")


def test_interpolate_refuses_an_alpha_float32_cannot_hold_and_a_point_beyond_its_range(cli, models, tmp_path):
    out = tmp_path / "point.safetensors"
    _refused(cli, tmp_path, ("interpolate", "zs", models["food"], "--alpha", "1e39", "-o", out), "--alpha 1e+39")
    far = _copy_with(models["food"], tmp_path, "far.safetensors", ("text_projection", _with_one(1e4)))
    line = _refused(cli, tmp_path, ("interpolate", "zs", far, "--alpha", "1e36", "-o", out), str(out), "overflow")
    assert "'text_projection'" in line and "--alpha" in line


@pytest.fixture(scope="module")
def nan_files(models, coop, tmp_path_factory):
    """A `model` and a `prompt` file each holding one NaN."""
    folder = tmp_path_factory.mktemp("nan")
    return {
        "model": _copy_with(models["food"], folder, "model.safetensors", ("text_projection", _with_one(float("nan")))),
        "prompt": _copy_with(coop, folder, "prompt.safetensors", ("ctx", _with_one(float("inf")))),
    }


@pytest.mark.parametrize(
    "command, kind, tensor",
    [
        (("eval", "{file}", "--data", "toy:mnist", "-o", "{out}/r.json"), "prompt", "ctx"),
        (("eval", "{file}", "--data", "toy:food", "-o", "{out}/r.json"), "model", "text_projection"),
        (("eval", "--path", "zs", "{file}", "--data", "toy:mnist", "--steps", "2"), "prompt", "ctx"),
        (("interpolate", "zs", "{file}", "--alpha", "0.5", "-o", "{out}/i.safetensors"), "model", "text_projection"),
        (("interpolate", "zs", "{file}", "--alpha", "0.5", "-o", "{out}/i.safetensors"), "prompt", "ctx"),
        (("export", "{file}", "-o", "{out}/plain.safetensors"), "model", "text_projection"),
        (("continue", "{file}", "--iterations", "1", "-o", "{out}/c.safetensors"), "prompt", "ctx"),
        (("finetune", "--zs", "{file}", *DATA[2:], *TINY_RUN, "-o", "{out}/f.safetensors"), "model", "text_projection"),
    ],
    ids=[
        "eval-prompt",
        "eval-model",
        "eval-path",
        "interpolate-model",
        "interpolate-prompt",
        "export",
        "continue",
        "finetune-zs",
    ],
)
def test_a_checkpoint_holding_nan_or_inf_is_refused_where_it_is_read(cli, nan_files, tmp_path, command, kind, tensor):
    file = nan_files[kind]
    args = [arg.format(file=file, out=tmp_path) for arg in command]
    _refused(cli, tmp_path, args, str(file), repr(tensor), "NaN or Inf")


# B. A checkpoint and its prototypes are one run's -------------------------------------------------------------


@pytest.fixture(scope="module")
def routable(toy_folders, tmp_path_factory):
    """A stand-in fine-tune of the food folder with its prototypes, marked with one run as finetune marks them, and
    the unified set of its delta, session 1 of a continual run."""
    from cftool.cli import main
    from cftool.data import load_task

    folder = tmp_path_factory.mktemp("routable")
    task = load_task(f"folder:{toy_folders['food']}")
    with open_base("tiny") as weights:
        state = {name: weights[name] for name in weights}
        header = weights.header(
            "model", task="food", classnames=task.classnames, template="a photo of a {}.", run="0" * 64
        )
        model = save_checkpoint(folder / "food.safetensors", stand_in_finetune(state, 0), header)
        prototypes = torch.nn.functional.normalize(torch.randn(len(task.classnames), 128), dim=-1)
        prototypes_header = weights.header("prototypes", task="food", classnames=task.classnames, run="0" * 64)
        save_checkpoint(prototypes_path(model), {"prototypes": prototypes}, prototypes_header)
    assert main(["delta", str(model), "-o", str(folder / "food.delta.safetensors")]) == 0
    assert main(["unify", str(folder / "food.delta.safetensors"), "-o", str(folder / "session1.st")]) == 0
    return folder


def _run_of(path):
    with open_checkpoint(path) as checkpoint:
        return checkpoint.header.run


def test_finetune_marks_its_checkpoint_and_prototypes_with_one_run(coop):
    run = _run_of(coop)
    assert run is not None and _run_of(prototypes_path(coop)) == run


def test_a_run_killed_between_its_two_files_is_refused_by_route_and_eval(
    cli, routable, toy_folders, tmp_path, monkeypatch
):
    import importlib

    runs = tmp_path / "runs"
    runs.mkdir()
    for name in ("food.safetensors", "food.prototypes.safetensors"):
        shutil.copyfile(routable / name, runs / name)
    output, session = runs / "food.safetensors", routable / "session1.st"
    run = _run_of(output)
    with open_unified(session) as unified_set:
        assert unified_set.tasks[0].run == run  # carried by the delta into the unified set
    # The pair again, killed once its new prototypes are written: what the kill leaves on disk is those prototypes,
    # which the session's expert (of the first run) must not be paired with.
    module = importlib.import_module("cftool.train.finetune")
    real_save = module.save_checkpoint
    left = tmp_path / "left-by-the-kill"

    def killed_after_the_prototypes(path, tensors, header, overwrite=False):
        if header.kind != "prototypes":
            shutil.copytree(runs, left)  # a kill cleans nothing up
            raise KeyboardInterrupt
        return real_save(path, tensors, header, overwrite=overwrite)

    monkeypatch.setattr(module, "save_checkpoint", killed_after_the_prototypes)
    food, mnist = (f"folder:{toy_folders[name]}" for name in ("food", "mnist"))
    killed = cli("finetune", "--zs", "tiny", "--data", food, "--device", "cpu", *TINY_RUN, "-o", output, "--force")
    assert killed.code == 130
    shutil.rmtree(runs)
    left.rename(runs)
    assert not output.exists() and _run_of(prototypes_path(output)) not in (None, run)

    prototypes = str(runs / "*.prototypes.safetensors")
    route = ("route", session, "--prototypes", prototypes, "--data", food, "-o", tmp_path / "routed.csv")
    _refused(cli, tmp_path, route, str(prototypes_path(output)), "another fine-tune of task 'food'", "rerun")
    evaluate = (
        "eval",
        "--zs",
        "tiny",
        "--data",
        food,
        "--data",
        mnist,
        "--sessions",
        session,
        "--prototypes",
        prototypes,
        "--cache-dir",
        runs / "cells",
        "-o",
        tmp_path / "r.json",
    )
    _refused(cli, tmp_path, evaluate, str(prototypes_path(output)), "another fine-tune of task 'food'")


@pytest.mark.parametrize(
    "expert_run, prototypes_run, classnames, refusal",
    [
        (None, None, ["a", "b", "c"], None),  # both written before runs were recorded
        ("a" * 64, None, ["a", "b", "c"], None),  # imported prototypes (a ConDU session's) record no run
        (None, "b" * 64, ["a", "b", "c"], None),  # an imported expert records none either
        ("a" * 64, "a" * 64, ["a", "b", "c"], None),
        ("a" * 64, "b" * 64, ["a", "b", "c"], "another fine-tune"),
        (None, None, ["a", "x", "c"], "other classes of task 'food'"),
    ],
)
def test_prototypes_pair_with_an_expert_by_run_where_both_record_one(expert_run, prototypes_run, classnames, refusal):
    unified_set = SimpleNamespace(
        path="session.st", task_names=["food"], tasks=[TaskEntry("food", ["a", "b", "c"], None, expert_run)]
    )
    known = {"food": TaskPrototypes(Path("food.prototypes.safetensors"), torch.ones(3, 4), classnames, prototypes_run)}
    if refusal is None:
        assert prototypes_of(unified_set, known)[0] is known["food"].prototypes
    else:
        with pytest.raises(CftoolError, match=refusal):
            prototypes_of(unified_set, known)


def test_finetune_never_removes_or_replaces_its_own_input(cli, models, tmp_path, monkeypatch):
    import importlib

    monkeypatch.setattr(importlib.import_module("cftool.train.finetune"), "_finetune", never_runs("training"))
    model = tmp_path / "model.safetensors"
    shutil.copyfile(models["food"], model)
    before = model.read_bytes()
    for output in (model, prototypes_path(model)):
        args = ("finetune", "--zs", model, *DATA[2:], *TINY_RUN, "-o", output, "--force")
        _refused(cli, tmp_path, args, str(output), "is also an input")
    assert model.read_bytes() == before


# C. Every output checked before any work ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("unify", "{food}", "{mnist}", "--method", "ties", "-o", "{blocked}/u.st"),
        ("interpolate", "zs", "{model}", "--alpha", "0.5", "-o", "{blocked}/i.safetensors"),
        ("export", "{model}", "-o", "{blocked}/plain.pt"),
        ("import", "{model}", "--zs", "tiny", "-o", "{blocked}/imported.safetensors"),
    ],
    ids=["unify", "interpolate", "export", "import"],
)
def test_an_unwritable_output_is_found_before_any_work(cli, deltas, models, tmp_path, monkeypatch, command):
    for module, work in (
        ("cftool.merge.engine", "_stream"),
        ("cftool.zoo", "load_model"),
        ("cftool.io.convert", "export_plain"),
    ):
        monkeypatch.setattr(f"{module}.{work}", never_runs(work))
    blocked = _blocked(tmp_path)
    args = [
        arg.format(blocked=blocked, food=deltas["food"], mnist=deltas["mnist"], model=models["food"]) for arg in command
    ]
    _refused(cli, tmp_path, args, f"{blocked}/", "cannot write")


def test_eval_refuses_a_path_of_too_few_steps_before_any_work(cli, coop, monkeypatch):
    monkeypatch.setattr("cftool.zoo.load_model", never_runs("loading the model"))
    line = _refused(cli, coop.parent, ("eval", "--path", "zs", coop, "--data", "toy:mnist", "--steps", "1"), "--steps")
    assert "at least 2" in line


def test_an_import_of_a_condu_session_checks_all_its_outputs_first(cli, base, tmp_path, monkeypatch):
    monkeypatch.setattr("cftool.io.convert.read_condu_unified", never_runs("reading unified.pth"))
    _, state = base
    session = condu_session(tmp_path / "session", state)
    out = tmp_path / "out"
    out.mkdir()
    # The unified file would be replaced by the prototypes of its task Food, written beside it.
    collide = ("import", session, "--zs", "tiny", "-o", out / "Food.prototypes.safetensors")
    _refused(cli, out, collide, "is also the file of -o")
    _refused(
        cli, out, ("import", session, "--zs", "tiny", "-o", session / "unified.pth", "--force"), "is also an input"
    )
    blocked = ("import", session, "--zs", "tiny", "-o", out / "u.st", "--prototypes-dir", _blocked(tmp_path))
    _refused(cli, out, blocked, "Food.prototypes.safetensors: cannot write")


def test_no_report_of_eval_or_route_replaces_a_file_it_reads(cli, routable, toy_folders, tmp_path, monkeypatch):
    monkeypatch.setattr("cftool.zoo.load_model", never_runs("loading the model"))
    prototypes = routable / "food.prototypes.safetensors"
    before = prototypes.read_bytes()
    data = ("--data", f"folder:{toy_folders['food']}")
    pattern = str(routable / "*.prototypes.safetensors")
    for command in (
        ("route", routable / "session1.st", "--prototypes", pattern, *data, "-o", prototypes, "--force"),
        (
            "eval",
            "--zs",
            "tiny",
            *data,
            "--sessions",
            routable / "session{t}.st",
            "--prototypes",
            pattern,
            "-o",
            prototypes,
            "--force",
        ),
        (
            "eval",
            "--zs",
            "tiny",
            *data,
            "--sessions",
            routable / "session{t}.st",
            "--prototypes",
            pattern,
            "-o",
            routable / "session1.st",
            "--force",
        ),
        ("eval", routable / "food.safetensors", *data, "-o", state_path(routable / "food.safetensors"), "--force"),
    ):
        _refused(cli, routable, command, "is also an input")
    assert prototypes.read_bytes() == before
